//! Memory is bounded before bodies are read, on the real binary: 100
//! clients (50 over gRPC, 50 over AuthZEN) each send all but the last byte
//! of a large body and hold, and the server's own peak RSS (`VmHWM` in
//! `/proc/<pid>/status`) stays within its RSS at start plus
//! `limits.max_buffered_bytes` (32 MiB) plus [`SLACK`]. The clients past
//! the budget are refused, and counted. Before the budget, the same run
//! peaked near 300 MiB.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::binary::{Served, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;
/// Under the default `limits.max_message_bytes` (4 MiB).
const GRPC_BODY: usize = 4 * 1024 * 1024 - 64;
/// The default `authzen.max_body_bytes` (1 MiB).
const AUTHZEN_BODY: usize = 1024 * 1024;
const CLIENTS: usize = 50;
/// The default `limits.max_buffered_bytes`.
const BUDGET: u64 = 32 * MIB;
/// Room beyond the budget: the allocator's retained pages, and the HTTP/1
/// read buffers and HTTP/2 windows of 100 connections (64 KiB and 256 KiB
/// each). Measured: about 12 MiB.
const SLACK: u64 = 32 * MIB;

/// `VmRSS` and `VmHWM` of `pid`, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .map(|v| v.trim().parse::<u64>().unwrap() * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How a client's body ended: held (all but its last byte sent), or
/// refused with this HTTP status or gRPC code.
#[derive(Debug, PartialEq, Eq)]
enum Held {
    Held,
    Refused(String),
}

/// A gRPC `Authorize` whose message lacks its last byte; the connection
/// is kept in the returned handle.
async fn grpc_client(addr: SocketAddr, payload: Bytes) -> (Held, Box<dyn Send>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    let request =
        axum::http::Request::post(format!("http://{addr}/cedar_pdp.v1.Authorizer/Authorize"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    let mut response = Box::pin(response);
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&u32::try_from(GRPC_BODY).unwrap().to_be_bytes());
    let mut rest = Bytes::from(prefix);
    let mut left = payload.slice(..GRPC_BODY - 1);
    let sending = async {
        // Only what the server's window takes: nothing waits in this process.
        loop {
            if rest.is_empty() {
                if left.is_empty() {
                    return;
                }
                rest = left.split_to(left.len().min(64 * 1024));
            }
            body.reserve_capacity(rest.len());
            match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(Ok(n)) if n > 0 => {
                    let chunk = rest.split_to(n.min(rest.len()));
                    if body.send_data(chunk, false).is_err() {
                        return std::future::pending().await;
                    }
                }
                Some(Ok(_)) => {}
                _ => return std::future::pending().await,
            }
        }
    };
    let held = tokio::select! {
        () = sending => Held::Held,
        answered = &mut response => {
            let code = answered
                .ok()
                .and_then(|r| r.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string()))
                .unwrap_or_else(|| "reset".into());
            Held::Refused(format!("grpc-status {code}"))
        }
    };
    (held, Box::new((send, body, response)))
}

/// An AuthZEN evaluation whose body lacks its last byte.
async fn authzen_client(addr: SocketAddr, payload: Bytes) -> (Held, Box<dyn Send>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let head = format!(
        "POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {AUTHZEN_BODY}\r\n\r\n"
    );
    let sending = async {
        write.write_all(head.as_bytes()).await?;
        write.write_all(&payload[..AUTHZEN_BODY - 1]).await
    };
    let mut answer = [0u8; 12];
    let ended = tokio::select! {
        sent = sending => Err(sent),
        read = read.read_exact(&mut answer) => Ok(read),
    };
    let held = match ended {
        Err(Ok(())) => Held::Held,
        // The server answered and closed while this client still wrote:
        // its answer is waiting to be read.
        Err(Err(e)) => match read.read_exact(&mut answer).await {
            Ok(_) => Held::Refused(String::from_utf8_lossy(&answer[9..12]).to_string()),
            Err(_) => Held::Refused(format!("write: {e}")),
        },
        Ok(Ok(_)) => Held::Refused(String::from_utf8_lossy(&answer[9..12]).to_string()),
        Ok(Err(e)) => Held::Refused(format!("read: {e}")),
    };
    (held, Box::new((read, write)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_bodies_hold_at_most_the_buffer_budget() {
    let work = tempfile::tempdir().unwrap();
    let policies = work.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("p.cedar"),
        "permit (principal, action, resource);",
    )
    .unwrap();
    let authzen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Every key here is one the server had before the budget; the long
    // timeout keeps the bodies held while the test measures.
    let config = format!(
        "policies = \"{}\"\nauthzen_listen = \"{authzen}\"\nadmin_listen = \"{admin}\"\n[limits]\nrequest_timeout = \"60s\"\n",
        policies.display()
    );
    let server = Served::start_with_config(work.path(), &config, Duration::from_secs(60)).await;
    let grpc: SocketAddr = server.addr.parse().unwrap();
    let pid = server.pid();
    let (start_rss, _) = rss(pid);

    let payload = Bytes::from(vec![b' '; GRPC_BODY]);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let p = payload.clone();
        clients.spawn(async move {
            let (h, c) = grpc_client(grpc, p).await;
            eprintln!("grpc {h:?}");
            (h, c)
        });
        let p = payload.clone();
        clients.spawn(async move {
            let (h, c) = authzen_client(authzen, p).await;
            eprintln!("authzen {h:?}");
            (h, c)
        });
    }
    let mut outcomes = Vec::new();
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = 0;
    while !clients.is_empty() {
        let joined = tokio::time::timeout_at(
            deadline.into(),
            tokio::time::timeout(Duration::from_millis(100), clients.join_next()),
        )
        .await
        .expect("every client sent its body or was refused within 120s");
        peak = peak.max(rss(pid).1);
        if let Ok(Some(joined)) = joined {
            let (outcome, connection) = joined.unwrap();
            outcomes.push(outcome);
            held.push(connection);
        }
    }
    // The server reads what is in flight; its RSS settles.
    let mut last = rss(pid).0;
    let mut steady_since = Instant::now();
    while steady_since.elapsed() < Duration::from_secs(2) {
        assert!(Instant::now() < deadline, "the server's RSS never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (now, hwm) = rss(pid);
        peak = peak.max(hwm);
        if now > last + MIB {
            steady_since = Instant::now();
        }
        last = last.max(now);
    }
    let bound = start_rss + BUDGET + SLACK;
    eprintln!(
        "RSS at start {} MiB, peak {} MiB, bound {} MiB; outcomes: {} held, {} refused",
        start_rss / MIB,
        peak / MIB,
        bound / MIB,
        outcomes.iter().filter(|o| **o == Held::Held).count(),
        outcomes.iter().filter(|o| **o != Held::Held).count(),
    );
    assert!(
        peak <= bound,
        "peak RSS {} MiB is over {} MiB (RSS at start {} MiB + the 32 MiB budget + {} MiB)",
        peak / MIB,
        bound / MIB,
        start_rss / MIB,
        SLACK / MIB
    );
    // The clients past the budget were refused as such, and counted.
    for outcome in &outcomes {
        if let Held::Refused(how) = outcome {
            assert!(
                how == "429" || how == "grpc-status 8",
                "refused otherwise than for the budget: {how}"
            );
        }
    }
    let refused = common::metric(
        admin,
        "cedar_pdp_request_errors_total",
        &[("reason", "buffer_budget")],
    )
    .await;
    assert!(refused > 0.0, "no refusal was counted");
    drop(held);
}

/// Past the budget, an AuthZEN body is refused before it is read (429
/// `buffer_budget`), recorded and counted; a gRPC message is refused with
/// `RESOURCE_EXHAUSTED`, naming the setting. Smaller requests go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_requests_are_refused_recorded_and_counted() {
    use cedar_pdp::config::LogSink;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "permit (principal, action, resource);",
    )
    .unwrap();
    let log = dir.path().join("decisions.log");
    let mut config = common::test_config(dir.path());
    config.decision_log.enabled = true;
    config.decision_log.sink = LogSink::File;
    config.decision_log.path = log.clone();
    // Below what `settings()` allows, to reach the budget with small bodies.
    config.limits.max_buffered_bytes = 16 * 1024;
    let server = common::TestServer::start_with(config).await;

    let big = serde_json::json!({
        "subject": {"type": "User", "id": "alice"},
        "action": {"name": "read"},
        "resource": {"type": "Doc", "id": "d"},
        "context": {"pad": "x".repeat(32 * 1024)},
    });
    // A refused body is never read, so the server closes its connection:
    // each request on a connection of its own.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://{}/access/v1/evaluation", server.authzen_addr);
    let post = |body: String, id: &'static str| {
        client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-request-id", id)
            .body(body)
            .send()
    };
    let refused = post(big.to_string(), "too-big").await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "buffer_budget", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_buffered_bytes"),
        "{body}"
    );
    let mut small = big.clone();
    small["context"] = serde_json::json!({});
    let served = post(small.to_string(), "small").await.unwrap();
    assert_eq!(served.status(), 200);

    let mut grpc = server.client().await;
    let mut request = common::request(("User", "alice"), ("Action", "read"), ("Doc", "d"));
    request.context_json = serde_json::json!({"pad": "x".repeat(32 * 1024)}).to_string();
    let status = grpc.authorize(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limits.max_buffered_bytes"),
        "{status:?}"
    );

    let record = common::eventually("the refusal's record", Duration::from_secs(10), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|r| r["request_id"] == "too-big")
        }
    })
    .await;
    assert_eq!(record["error"]["reason"], "buffer_budget", "{record}");
    for api in ["authzen", "grpc"] {
        let labels = [("api", api), ("reason", "buffer_budget")];
        let counted =
            common::metric(server.admin_addr, "cedar_pdp_request_errors_total", &labels).await;
        assert_eq!(counted, 1.0, "{api}");
    }
}

/// A gRPC message must arrive whole within `limits.request_timeout` of its
/// first byte: a client that withholds its end does not keep its share of
/// the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_grpc_message_is_refused_at_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "permit (principal, action, resource);",
    )
    .unwrap();
    let mut config = common::test_config(dir.path());
    config.limits.request_timeout = Duration::from_millis(500);
    let server = common::TestServer::start_with(config).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send.ready().await.unwrap();
    let request = axum::http::Request::post(format!(
        "http://{}/cedar_pdp.v1.Authorizer/Authorize",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let started = Instant::now();
    let (response, mut body) = send.send_request(request, false).unwrap();
    // A message of 1000 bytes, of which 10 come.
    let mut partial = vec![0u8, 0, 0, 0x03, 0xe8];
    partial.extend_from_slice(&[b' '; 10]);
    body.send_data(Bytes::from(partial), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("refused within 10s")
        .unwrap();
    let took = started.elapsed();
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        status.as_deref(),
        Some("4"),
        "DEADLINE_EXCEEDED: {response:?}"
    );
    assert!(took >= Duration::from_millis(400), "refused after {took:?}");
    drop(body);
}

/// `Max open files` of `pid`: (soft, hard).
fn open_files(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

/// Every connection is a file: started with a soft open-file limit of 256,
/// the server raises it to the hard limit, and logs both.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "permit (principal, action, resource);",
    )
    .unwrap();
    let stderr = dir.path().join("stderr.log");
    let mut child = std::process::Command::new("sh")
        .args(["-c", "ulimit -S -n 256 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_cedar-pdp"))
        .args(["serve", "--policies"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", "", "--authzen-listen", ""])
        .env_remove("RUST_LOG")
        .env_remove("CEDAR_PDP_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        if log.contains("RLIMIT_NOFILE") {
            break log;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the server exited:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "no RLIMIT_NOFILE line in 60s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (soft, hard) = open_files(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, hard, "{log}");
    assert!(
        log.contains("Some(256)"),
        "the limit it was raised from: {log}"
    );
}
