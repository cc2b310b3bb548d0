//! `cedar-pdp bench` against a real server: counts, summary, refusals
//! counted and failing the run, and the h2load body it emits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use cedar_pdp::grpc::proto::AuthorizeRequest;
use common::binary::{self, Ran, bin};
use common::{TestServer, vendor_dir};
use prost::Message;

const DEADLINE: Duration = Duration::from_secs(60);

/// Runs the binary off the runtime, so the in-process server keeps serving.
async fn bench(args: Vec<String>) -> Ran {
    tokio::task::spawn_blocking(move || {
        let mut cmd = bin();
        cmd.arg("bench").args(args);
        binary::run(cmd, DEADLINE)
    })
    .await
    .unwrap()
}

fn peer_dir() -> std::path::PathBuf {
    vendor_dir().join("peers/cedar-equivalent")
}

fn args(addr: &str, request: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--addr".to_string(),
        addr.to_string(),
        "--request".to_string(),
        request.display().to_string(),
    ];
    v.extend(extra.iter().map(ToString::to_string));
    v
}

/// The number after `label` on its line of the summary.
fn figure(out: &str, label: &str) -> f64 {
    let at = out
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {out}"));
    out[at + label.len()..]
        .trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{label}` in {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_batch_runs_report_every_call() {
    let server = TestServer::start(&peer_dir()).await;
    let addr = server.addr.to_string();
    let request = peer_dir().join("request.json");

    let ran = bench(args(
        &addr,
        &request,
        &[
            "--connections",
            "2",
            "--concurrency",
            "3",
            "--requests",
            "150",
        ],
    ))
    .await;
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.contains("calls: 150, errors: 0"), "{ran:?}");
    assert!(figure(&ran.stdout, "requests/s:") > 0.0, "{ran:?}");
    for label in ["p50:", "p90:", "p99:", "p99.9:", "max:"] {
        assert!(ran.stdout.contains(label), "no `{label}`: {ran:?}");
    }

    let ran = bench(args(
        &addr,
        &request,
        &["--mode", "batch", "--batch-size", "4", "--requests", "20"],
    ))
    .await;
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.contains("calls: 20, errors: 0"), "{ran:?}");
    let calls = figure(&ran.stdout, "requests/s:");
    let decisions = figure(&ran.stdout, "decisions/s:");
    assert!((decisions / calls - 4.0).abs() < 0.01, "{ran:?}");

    // A stream per connection, eight requests in flight on each.
    let ran = bench(args(
        &addr,
        &request,
        &[
            "--mode",
            "stream",
            "--connections",
            "2",
            "--concurrency",
            "8",
            "--requests",
            "200",
        ],
    ))
    .await;
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.contains("calls: 200, errors: 0"), "{ran:?}");

    // A duration bounds the run instead of a count.
    let ran = bench(args(&addr, &request, &["--duration", "300ms"])).await;
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(figure(&ran.stdout, "calls:") >= 1.0, "{ran:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_items_fail_the_run_in_every_mode_and_read_plainly() {
    let server = TestServer::start(&peer_dir()).await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    // `fly` is not an action in the schema: every item is refused
    // (INVALID_ARGUMENT), in a unary status or as a batch or stream item.
    let request = dir.path().join("bad.json");
    std::fs::write(
        &request,
        r#"{"principal": {"type": "Workload", "id": "w"},
            "action": {"type": "Action", "id": "fly"},
            "resource": {"type": "Document", "id": "d"}}"#,
    )
    .unwrap();
    // Per mode: its flags, the items sent, and how its first error begins.
    let modes: [(&[&str], u64, &str); 3] = [
        (&["--requests", "7"], 7, "first error: INVALID_ARGUMENT: "),
        (
            &["--mode", "batch", "--batch-size", "3", "--requests", "2"],
            6,
            "first error: refused: ",
        ),
        (
            &["--mode", "stream", "--concurrency", "2", "--requests", "5"],
            5,
            "first error: INVALID_ARGUMENT: ",
        ),
    ];
    for (extra, items, first) in modes {
        let ran = bench(args(&addr, &request, extra)).await;
        assert_eq!(ran.code(), Some(1), "{ran:?}");
        let calls = figure(&ran.stdout, "calls:");
        assert!(
            ran.stdout
                .contains(&format!("calls: {calls}, errors: {calls}")),
            "every call is an error: {ran:?}"
        );
        assert!(
            ran.stdout.contains(&format!(
                "decisions: 0, allowed: 0, refused: {items} (100.0%)"
            )),
            "{ran:?}"
        );
        // The reason as a person reads it: the status name, the message
        // decoded, no Rust debug output.
        let line = ran
            .stdout
            .lines()
            .find(|l| l.starts_with("first error: "))
            .unwrap_or_else(|| panic!("no first error: {ran:?}"));
        assert!(line.starts_with(first), "{line}");
        assert!(line.contains("`Action::\"fly\"`"), "{line}");
        for noise in ["%20", "%60", "EvaluationError", "InvalidArgument", "\\\""] {
            assert!(!line.contains(noise), "`{noise}` in {line}");
        }
        assert!(
            ran.stderr.contains(&format!(
                "{items} of {items} items got an error instead of a decision (100.0%), more than --max-error-rate 0"
            )),
            "{ran:?}"
        );
    }

    // A stated share lets a run with that many errors pass, and not more.
    let ran = bench(args(
        &addr,
        &request,
        &["--requests", "3", "--max-error-rate", "1"],
    ))
    .await;
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    let ran = bench(args(
        &addr,
        &request,
        &["--requests", "3", "--max-error-rate", "0.99"],
    ))
    .await;
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    let ran = bench(args(&addr, &request, &["--max-error-rate", "2"])).await;
    assert_eq!(ran.code(), Some(64), "{ran:?}");
    assert!(ran.stderr.contains("not a share from 0 to 1"), "{ran:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_client_threads_send_every_call() {
    let server = TestServer::start(&peer_dir()).await;
    let request = peer_dir().join("request.json");
    let ran = bench(args(
        &server.addr.to_string(),
        &request,
        &[
            "--threads",
            "2",
            "--connections",
            "3",
            "--concurrency",
            "4",
            "--requests",
            "120",
        ],
    ))
    .await;
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.contains("calls: 120, errors: 0"), "{ran:?}");
    assert!(
        ran.stdout.contains("decisions: 120, allowed: 120"),
        "{ran:?}"
    );
    assert!(!ran.stdout.contains("first error"), "{ran:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_address_it_cannot_use_is_refused_with_the_reason() {
    let request = peer_dir().join("request.json");
    // TLS is not spoken by the load client: refused before any connection.
    let ran = bench(args("https://127.0.0.1:9", &request, &["--requests", "1"])).await;
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("plaintext HTTP/2 only"), "{ran:?}");
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ran = bench(args(
        &format!("127.0.0.1:{port}"),
        &request,
        &["--requests", "1"],
    ))
    .await;
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(
        ran.stderr
            .contains(&format!("cannot connect to `127.0.0.1:{port}`")),
        "{ran:?}"
    );
}

#[tokio::test]
async fn emits_a_grpc_framed_authorize_request() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.bin");
    let request = peer_dir().join("request.json");
    let mut extra = vec!["--emit-h2load-body".to_string(), body.display().to_string()];
    // No server listens here: emitting must not connect.
    extra.splice(0..0, args("127.0.0.1:9", &request, &[]));
    let ran = bench(extra).await;
    assert_eq!(ran.code(), Some(0), "{ran:?}");

    let bytes = std::fs::read(&body).unwrap();
    assert_eq!(bytes[0], 0, "compressed flag");
    let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 5);
    let decoded = AuthorizeRequest::decode(&bytes[5..]).unwrap();
    let principal = decoded.principal.unwrap();
    assert_eq!(
        (principal.r#type.as_str(), principal.id.as_str()),
        ("Workload", "spiffe://example.org/ns/payments/sa/api")
    );
    assert_eq!(decoded.action.unwrap().id, "read");
    assert_eq!(decoded.resource.unwrap().id, "doc-1");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&request).unwrap()).unwrap();
    let entities: serde_json::Value = serde_json::from_str(&decoded.entities_json).unwrap();
    assert_eq!(entities, file["entities"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_is_sent_in_turn_and_its_decisions_counted() {
    let server = TestServer::start(&peer_dir()).await;
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let line = |ns: &str, action: &str| {
        serde_json::json!({
            "principal": {"type": "Workload", "id": "w"},
            "action": {"type": "Action", "id": action},
            "resource": {"type": "Document", "id": "d"},
            "entities": [
                {"uid": {"type": "Workload", "id": "w"}, "attrs": {"roles": ["reader"], "namespace": "a"}, "parents": []},
                {"uid": {"type": "Document", "id": "d"}, "attrs": {"namespace": ns, "owner": {"__entity": {"type": "Workload", "id": "w"}}}, "parents": []}
            ]
        })
        .to_string()
    };
    // Two allowed (a reader in its own namespace), one denied (another
    // namespace), with a blank line that is skipped.
    let corpus = dir.path().join("corpus.jsonl");
    std::fs::write(
        &corpus,
        format!(
            "{}\n\n{}\n{}\n",
            line("a", "read"),
            line("b", "read"),
            line("a", "read").replace("\"d\"", "\"d2\"")
        ),
    )
    .unwrap();
    let corpus_args = |extra: &[&str]| {
        let mut v = vec![
            "--addr".to_string(),
            addr.clone(),
            "--corpus".to_string(),
            corpus.display().to_string(),
        ];
        v.extend(extra.iter().map(ToString::to_string));
        v
    };
    for order in [
        &["--order", "sequential"][..],
        &["--order", "shuffle", "--seed", "7"],
    ] {
        let mut extra = vec!["--concurrency", "3", "--requests", "30"];
        extra.extend_from_slice(order);
        let ran = bench(corpus_args(&extra)).await;
        assert_eq!(ran.code(), Some(0), "{ran:?}");
        assert!(ran.stdout.contains("calls: 30, errors: 0"), "{ran:?}");
        // Every request is sent ten times, whatever the order.
        assert!(
            ran.stdout
                .contains("decisions: 30, allowed: 20, refused: 0 (0.0%), corpus size: 3"),
            "{ran:?}"
        );
    }
    // Batches take consecutive corpus items.
    let ran = bench(corpus_args(&[
        "--order",
        "sequential",
        "--mode",
        "batch",
        "--batch-size",
        "3",
        "--requests",
        "5",
    ]))
    .await;
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.contains("decisions: 15, allowed: 10"), "{ran:?}");

    // A line that is not a request names its line, and nothing is sent.
    std::fs::write(
        &corpus,
        format!("{}\n{{\"principal\": 1}}\n", line("a", "read")),
    )
    .unwrap();
    let ran = bench(corpus_args(&["--requests", "3"])).await;
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("line 2"), "{ran:?}");
    std::fs::write(&corpus, "\n\n").unwrap();
    let ran = bench(corpus_args(&["--requests", "3"])).await;
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("holds no requests"), "{ran:?}");
    server.stop().await.unwrap();
}
