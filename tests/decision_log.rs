//! The decision log end to end: a real server writing to a real file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::collections::HashSet;
use std::path::Path;

use cedar_pdp::config::{Config, LogSink};
use cedar_pdp::grpc::proto;
use common::{TestServer, request, test_config};
use serde_json::Value as Json;

const POLICY: &str = r#"
@id("allow-alice")
permit (principal == User::"alice", action, resource);
"#;

fn logging_config(dir: &Path, log: &Path) -> Config {
    let mut config = test_config(dir);
    config.decision_log.enabled = true;
    config.decision_log.sink = LogSink::File;
    config.decision_log.path = log.to_path_buf();
    config.decision_log.mask = vec!["context.token".into(), "context.user.ssn".into()];
    config.decision_log.remove = vec!["context.password".into()];
    config
}

fn read_records(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !common::is_mark(l))
        .map(|l| serde_json::from_str(l).expect("each line is one JSON record"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_carry_every_field_and_masked_values_never_reach_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let log = dir.path().join("out").join("decisions.log");
    std::fs::create_dir(log.parent().unwrap()).unwrap();
    let server = TestServer::start_with(logging_config(dir.path(), &log)).await;
    let mut client = server.client().await;

    let mut req = request(("User", "alice"), ("Action", "read"), ("Doc", "d1"));
    req.request_id = "req-42".into();
    req.context_json = r#"{"token": "s3cr3t-token", "password": "hunter2", "user": {"ssn": "123-45-6789", "name": "al"}, "keep": 7}"#.into();
    req.workload = Some(proto::Workload {
        spiffe_id: "spiffe://example.org/ns/a/sa/b".into(),
        namespace: "a".into(),
        service_account: "b".into(),
        labels: Default::default(),
    });
    let mut call = tonic::Request::new(req);
    call.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let allow = client.authorize(call).await.unwrap().into_inner();
    let deny = client
        .authorize(request(("User", "bob"), ("Action", "read"), ("Doc", "d1")))
        .await
        .unwrap()
        .into_inner();
    drop(client);
    server.stop().await.unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in ["s3cr3t-token", "hunter2", "123-45-6789"] {
        assert!(!text.contains(secret), "`{secret}` reached the sink");
    }
    let records = read_records(&log);
    assert_eq!(records.len(), 2, "{text}");
    let r = records
        .iter()
        .find(|r| r["decision_id"] == allow.decision_id.as_str())
        .expect("the allow is logged");
    assert_eq!(r["record_version"], 2);
    assert_eq!(r["request_id"], "req-42");
    assert_eq!(r["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        r["caller"]["peer_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{r}"
    );
    assert_eq!(
        r["principal"],
        serde_json::json!({"type": "User", "id": "alice"})
    );
    assert_eq!(
        r["action"],
        serde_json::json!({"type": "Action", "id": "read"})
    );
    assert_eq!(
        r["resource"],
        serde_json::json!({"type": "Doc", "id": "d1"})
    );
    // The context as evaluated: the workload is in it, as the server put it.
    assert_eq!(
        r["context"],
        serde_json::json!({"token": "***", "user": {"ssn": "***", "name": "al"}, "keep": 7,
            "workload": r["workload"]})
    );
    assert_eq!(r["workload"]["spiffe_id"], "spiffe://example.org/ns/a/sa/b");
    assert_eq!(r["entities"], serde_json::json!([]));
    // Masking hid what the evaluation saw.
    assert_eq!(r["replayable"], false);
    assert_eq!(r["decision"], "allow");
    assert_eq!(
        r["determining_policies"],
        serde_json::json!(["allow-alice"])
    );
    assert_eq!(r["errors"], serde_json::json!([]));
    assert_eq!(r["policy_revision"], allow.policy_revision.as_str());
    assert_eq!(r["policy_generation"], 1);
    assert!(r["latency_us"].is_u64());
    let ts = r["timestamp"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(ts).is_ok() && ts.contains('.'),
        "{ts}"
    );

    let d = records
        .iter()
        .find(|r| r["decision_id"] == deny.decision_id.as_str())
        .expect("the deny is logged");
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["trace_id"], "");
    assert_eq!(d["replayable"], true);
}

const SCHEMA: &str = r#"
entity User { level: Long };
entity Doc;
action read appliesTo { principal: [User], resource: [Doc], context: { n: Long } };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_hold_what_evaluation_saw_and_large_sets_go_to_side_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"@id("level") permit (principal, action, resource) when { principal.level > context.n };"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("s.cedarschema"), SCHEMA).unwrap();
    let log = dir.path().join("decisions.log");
    let mut config = logging_config(dir.path(), &log);
    config.decision_log.max_inline_entities_bytes = 4096;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let user = |id: &str, level: i64| serde_json::json!({"uid": {"type": "User", "id": id}, "attrs": {"level": level}, "parents": []});
    let mut one = request(("User", "u1"), ("Action", "read"), ("Doc", "d"));
    one.entities_json = serde_json::json!([user("u1", 5)]).to_string();
    one.context_json = r#"{"n": 3}"#.into();
    let small = client.authorize(one).await.unwrap().into_inner();
    assert_eq!(small.decision, proto::Decision::Allow as i32);

    // Shared entities over the inline limit: one side file for the batch.
    let shared: Vec<Json> = (0..100).map(|i| user(&format!("s{i}"), i)).collect();
    let items = (0..3)
        .map(|i| {
            let mut r = request(
                ("User", &format!("s{}", 10 * i)),
                ("Action", "read"),
                ("Doc", "d"),
            );
            r.context_json = r#"{"n": 15}"#.into();
            r
        })
        .collect();
    let batch = proto::BatchAuthorizeRequest {
        requests: items,
        entities_json: Json::Array(shared.clone()).to_string(),
        ..Default::default()
    };
    let answers = client.batch_authorize(batch).await.unwrap().into_inner();
    assert_eq!(answers.responses.len(), 3);
    drop(client);
    server.stop().await.unwrap();

    let records = read_records(&log);
    let r = records
        .iter()
        .find(|r| r["decision_id"] == small.decision_id.as_str())
        .unwrap();
    assert_eq!(r["entities"], serde_json::json!([user("u1", 5)]));
    assert_eq!(r["context"], serde_json::json!({"n": 3}));
    let schema_digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(SCHEMA.as_bytes()))
    );
    assert_eq!(r["schema_digest"], schema_digest.as_str());
    assert!(r.get("shared_entities").is_none());

    let items: Vec<&Json> = records
        .iter()
        .filter(|r| {
            answers
                .responses
                .iter()
                .any(|a| r["decision_id"] == a.decision_id.as_str())
        })
        .collect();
    assert_eq!(items.len(), 3);
    let digest = items[0]["shared_entities"]["sha256"].as_str().unwrap();
    for item in &items {
        assert_eq!(
            item["shared_entities"]["sha256"], digest,
            "one set, one digest"
        );
        assert_eq!(item["entities"], serde_json::json!([]));
    }
    let side = dir
        .path()
        .join(format!("decisions.log.entities/{digest}.json"));
    let bytes = std::fs::read(&side).unwrap();
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        digest,
        "content-addressed"
    );
    let stored: Json = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(stored, Json::Array(shared));
    let files = std::fs::read_dir(side.parent().unwrap()).unwrap().count();
    assert_eq!(files, 1, "stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_returned_under_load_is_in_the_log_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let log = dir.path().join("decisions.log");
    let mut config = logging_config(dir.path(), &log);
    // A small queue, so callers really wait on the writer.
    config.decision_log.queue_capacity = 100;
    let server = TestServer::start_with(config).await;

    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let mut client = server.client().await;
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..150 {
                let who = if (t + i) % 2 == 0 { "alice" } else { "bob" };
                if i % 10 == 0 {
                    let batch = proto::BatchAuthorizeRequest {
                        requests: vec![
                            request((("User"), who), ("Action", "read"), ("Doc", "x"));
                            5
                        ],
                        ..Default::default()
                    };
                    let resp = client.batch_authorize(batch).await.unwrap().into_inner();
                    ids.extend(resp.responses.into_iter().map(|r| r.decision_id));
                } else {
                    let resp = client
                        .authorize(request(("User", who), ("Action", "read"), ("Doc", "x")))
                        .await
                        .unwrap()
                        .into_inner();
                    ids.push(resp.decision_id);
                }
            }
            ids
        });
    }
    let mut returned = HashSet::new();
    while let Some(ids) = tasks.join_next().await {
        returned.extend(ids.unwrap());
    }
    server.stop().await.unwrap();

    let logged: HashSet<String> = read_records(&log)
        .into_iter()
        .map(|r| r["decision_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(returned.len(), 8 * (135 + 15 * 5));
    let missing: Vec<_> = returned.difference(&logged).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} decisions missing, e.g. {missing:?}",
        returned.len() - returned.intersection(&logged).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_sink_rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let log = dir.path().join("decisions.log");
    let mut config = logging_config(dir.path(), &log);
    config.decision_log.max_file_bytes = 4096;
    config.decision_log.max_files = 3;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let resp = client
            .authorize(request(
                ("User", "alice"),
                ("Action", "read"),
                ("Doc", "d1"),
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push(resp.decision_id);
    }
    drop(client);
    server.stop().await.unwrap();

    let rotated = log.with_file_name("decisions.log.1");
    assert!(rotated.is_file(), "no rotated file next to the log");
    for path in [&log, &rotated] {
        let len = std::fs::metadata(path).unwrap().len();
        // A file passes the limit by at most the record that crossed it.
        assert!(len < 4096 + 2048, "`{}` is {len} bytes", path.display());
    }
    // The newest records are in the live file, whole and parseable.
    let newest = read_records(&log);
    let last = newest.last().unwrap();
    assert_eq!(last["decision_id"], ids.last().unwrap().as_str());
}

/// A policy directory that allows everything, and a config that logs
/// beside it.
fn allow_all() -> (tempfile::TempDir, std::path::PathBuf, Config) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"@id("any") permit (principal, action, resource);"#,
    )
    .unwrap();
    let log = dir.path().join("decisions.log");
    let config = logging_config(dir.path(), &log);
    (dir, log, config)
}

/// Side files rotate with the log files that name them: their bytes count
/// against the file, and those no kept file names are pruned, so the log
/// and its side files stay within (max_files + 1) files' worth. Every side
/// file a kept record names is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_files_rotate_and_are_pruned_with_the_log() {
    let (dir, log, mut config) = allow_all();
    config.decision_log.max_inline_entities_bytes = 1024;
    config.decision_log.max_file_bytes = 32 * 1024;
    config.decision_log.max_files = 1;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    for n in 0..60 {
        // A set of its own for every request, about 7 KiB.
        let set: Vec<Json> = (0..100)
            .map(|i| serde_json::json!({"uid": {"type": "User", "id": format!("u{n}-{i}")}, "attrs": {}, "parents": []}))
            .collect();
        let mut req = request(
            ("User", &format!("u{n}-0")),
            ("Action", "read"),
            ("Doc", "d"),
        );
        req.entities_json = Json::Array(set).to_string();
        client.authorize(req).await.unwrap();
    }
    drop(client);
    server.stop().await.unwrap();

    let side_dir = dir.path().join("decisions.log.entities");
    let side: Vec<(String, u64)> = std::fs::read_dir(&side_dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    let side_bytes: u64 = side.iter().map(|(_, len)| len).sum();
    assert!(
        side_bytes <= 3 * 32 * 1024,
        "{} side files, {side_bytes} bytes, beside a log of two 32 KiB files",
        side.len()
    );
    assert!(
        side.len() < 60,
        "old side files were pruned: {}",
        side.len()
    );
    let mut kept = read_records(&log);
    kept.extend(read_records(&dir.path().join("decisions.log.1")));
    let named: Vec<&str> = kept
        .iter()
        .filter_map(|r| r["entities"]["sha256"].as_str())
        .collect();
    assert!(!named.is_empty(), "the kept records name side files");
    for digest in named {
        assert!(
            side.iter()
                .any(|(name, _)| *name == format!("{digest}.json")),
            "{digest}, named by a kept record, was pruned"
        );
    }
}

/// With `decision_log.required`, a server whose log drops records says it
/// is not ready, so traffic moves to replicas that keep their evidence;
/// once drops stop, it is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_log_that_drops_records_makes_the_server_not_ready() {
    let (_dir, _log, mut config) = allow_all();
    config.decision_log.required = true;
    config.decision_log.on_full = cedar_pdp::config::OnFull::Drop;
    config.decision_log.queue_capacity = 1;
    // Each record's own large set costs the writer a synced side file.
    config.decision_log.max_inline_entities_bytes = 512;
    let server = TestServer::start_with(config).await;
    assert_eq!(common::http_get(server.admin_addr, "/readyz").await.0, 200);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let url = server.url();
        tasks.spawn(async move {
            let mut client =
                proto::authorizer_client::AuthorizerClient::connect(url).await.unwrap();
            for n in 0..40 {
                let set: Vec<Json> = (0..40)
                    .map(|i| serde_json::json!({"uid": {"type": "User", "id": format!("u{t}-{n}-{i}")}, "attrs": {}, "parents": []}))
                    .collect();
                let mut req = request(("User", "alice"), ("Action", "read"), ("Doc", "d"));
                req.entities_json = Json::Array(set).to_string();
                client.authorize(req).await.unwrap();
            }
        });
    }
    let (status, body) = common::eventually(
        "not ready while dropping",
        std::time::Duration::from_secs(60),
        || {
            let admin = server.admin_addr;
            async move {
                let (status, body) = common::http_get(admin, "/readyz").await;
                (status == 503).then_some((status, body))
            }
        },
    )
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("dropping records"), "{body}");
    while tasks.join_next().await.is_some() {}
    assert!(
        common::metric(
            server.admin_addr,
            "cedar_pdp_decision_log_dropped_total",
            &[]
        )
        .await
            > 0.0
    );
    common::eventually(
        "ready once drops stop",
        std::time::Duration::from_secs(40),
        || {
            let admin = server.admin_addr;
            async move { (common::http_get(admin, "/readyz").await.0 == 200).then_some(()) }
        },
    )
    .await;
}
