//! Connections cannot lock anyone out, on every listener, over real
//! sockets: silent connections do not stop `/healthz`; a gRPC connection
//! that never sends its preface, or sends nothing but PINGs, is closed; an
//! h2c AuthZEN connection that only PINGs is closed at its idle timeout; a
//! silent HTTP/1.1 connection lasts `header_read_timeout`; and at the cap
//! an idle connection makes room for a new client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cedar_pdp::config::Config;
use common::{TestServer, http_get, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POLICY: &str = r#"permit (principal == User::"alice", action, resource);"#;

async fn start(configure: impl FnOnce(&mut Config)) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let mut config = test_config(dir.path());
    configure(&mut config);
    (TestServer::start_with(config).await, dir)
}

/// Waits (at most `deadline`) for the server to close `stream`; how long
/// after `started` that was. Anything the server wrote first is ignored.
async fn closed_within(stream: &mut TcpStream, started: Instant, deadline: Duration) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + deadline).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("the connection was still open after {deadline:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// An HTTP/2 client connection to `addr` that sends nothing but PINGs
/// after `first` (a request, or none); how long until the server closed it.
async fn pings_until_closed(
    addr: SocketAddr,
    first: Option<axum::http::Request<()>>,
    deadline: Duration,
) -> Duration {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    // The client closes a connection nobody holds a handle of.
    let _held = send.clone();
    let mut pings = connection.ping_pong().unwrap();
    let mut driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let started = Instant::now();
    if let Some(request) = first {
        let mut send = send.ready().await.unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .unwrap()
            .unwrap();
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.unwrap().len());
        }
    }
    let pinging = async {
        loop {
            if pings.ping(h2::Ping::opaque()).await.is_err() {
                // The connection is going; the driver says when it is gone.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = pinging => unreachable!(),
        _ = &mut driver => started.elapsed(),
        () = tokio::time::sleep(deadline) => panic!("a PING-only connection was open after {deadline:?}"),
    }
}

/// 40 connections that never send a byte do not make `/healthz` fail or
/// wait: the admin cap (32) evicts the idlest for each new probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_stop_health_answers() {
    let (server, _dir) = start(|c| {
        // Longer than the test: only eviction can make room.
        c.admin.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(server.admin_addr).await.unwrap());
    }
    for path in ["/healthz", "/readyz", "/healthz", "/metrics", "/healthz"] {
        let started = Instant::now();
        let (status, _) = http_get(server.admin_addr, path).await;
        assert_eq!(status, 200, "{path} with 40 silent connections open");
        assert!(started.elapsed() < Duration::from_secs(5), "{path} waited");
    }
    let labels = [("listener", "admin"), ("reason", "evicted")];
    let evicted = common::metric(
        server.admin_addr,
        "cedar_pdp_connections_closed_total",
        &labels,
    )
    .await;
    assert!(evicted >= 5.0, "{evicted} evictions counted");
}

/// A gRPC connection that never finishes the HTTP/2 preface, or finishes
/// it and opens no call, is closed after `limits.first_request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_connection_without_a_call_is_closed() {
    let (server, _dir) = start(|c| {
        c.limits.first_request_timeout = Duration::from_millis(500);
    })
    .await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut preface_only = TcpStream::connect(server.addr).await.unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    for (what, stream) in [
        ("silent", &mut silent),
        ("half a preface", &mut half),
        ("a preface and no call", &mut preface_only),
    ] {
        let took = closed_within(stream, opened, Duration::from_secs(10)).await;
        assert!(
            took >= Duration::from_millis(400),
            "{what}: closed after {took:?}"
        );
    }
    // Clients that call are served as before.
    let mut client = server.client().await;
    client
        .get_policy_status(cedar_pdp::grpc::proto::GetPolicyStatusRequest {})
        .await
        .unwrap();
}

/// PINGs keep no gRPC connection open: after one call, a client that only
/// PINGs is closed at `limits.connection_idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_connection_that_only_pings_is_closed_when_idle() {
    let (server, _dir) = start(|c| {
        c.limits.connection_idle_timeout = Duration::from_millis(800);
        c.limits.first_request_timeout = Duration::from_millis(800);
    })
    .await;
    let health = health_check(server.addr);
    for first in [Some(health), None] {
        let took = pings_until_closed(server.addr, first, Duration::from_secs(10)).await;
        assert!(took >= Duration::from_millis(600), "closed after {took:?}");
    }
}

/// An h2c AuthZEN connection that sends only PINGs is closed: at
/// `authzen.header_read_timeout` before any request, at
/// `authzen.idle_timeout` after one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_authzen_connection_that_only_pings_is_closed() {
    let (server, _dir) = start(|c| {
        c.authzen.header_read_timeout = Duration::from_millis(600);
        c.authzen.idle_timeout = Duration::from_millis(1200);
    })
    .await;
    let metadata = || {
        axum::http::Request::get(format!(
            "http://{}/.well-known/authzen-configuration",
            server.authzen_addr
        ))
        .body(())
        .unwrap()
    };
    let took = pings_until_closed(server.authzen_addr, None, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");
    let took = pings_until_closed(
        server.authzen_addr,
        Some(metadata()),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        took >= Duration::from_millis(1000),
        "closed after {took:?}, before the idle timeout"
    );
}

/// A silent HTTP/1.1 connection lasts `header_read_timeout`, not
/// `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http1_connection_lasts_the_header_timeout() {
    let (server, _dir) = start(|c| {
        c.authzen.header_read_timeout = Duration::from_millis(500);
        c.authzen.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect(server.authzen_addr).await.unwrap();
    let took = closed_within(&mut silent, opened, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
}

/// One HTTP/1.1 request on a kept-alive connection: its status, or `None`
/// when the connection was closed instead.
async fn get(stream: &mut TcpStream, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let read = common::http_response(stream);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer or a close within 10s")
}

/// At the cap, an idle connection is closed so that a new client is
/// served; only when every open connection is busy is a new one refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_an_idle_connection_makes_room() {
    let (server, _dir) = start(|c| {
        c.authzen.max_connections = 2;
        // Longer than the test: only eviction can make room.
        c.authzen.header_read_timeout = Duration::from_secs(60);
        c.authzen.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = server.authzen_addr;
    let metadata = "/.well-known/authzen-configuration";
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get(&mut first, metadata).await, Some(200));
    assert_eq!(get(&mut second, metadata).await, Some(200));

    // A third client is served; the idlest (first) made room.
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get(&mut third, metadata).await, Some(200));
    closed_within(&mut first, Instant::now(), Duration::from_secs(5)).await;
    assert_eq!(get(&mut second, metadata).await, Some(200));

    // Busy connections (a body still on its way) are never evicted.
    let busy = |mut s: TcpStream| async move {
        s.write_all(
            b"POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
        s
    };
    let _busy_a = busy(second).await;
    let _busy_b = busy(third).await;
    common::eventually("both requests open", Duration::from_secs(5), || async {
        let open = common::metric(server.admin_addr, "cedar_pdp_inflight_requests", &[]).await;
        (open == 2.0).then_some(())
    })
    .await;
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let got = get(&mut refused, metadata).await;
    assert!(matches!(got, None | Some(503)), "{got:?}");
}

/// The gRPC listener's cap evicts the idlest connection for a new client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_grpc_cap_an_idle_connection_makes_room() {
    let (server, _dir) = start(|c| {
        c.limits.max_connections = 2;
    })
    .await;
    // Two connections, each with one call answered, then idle.
    let mut idle = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (send, connection) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let health = health_check(server.addr);
        let mut ready = send.clone().ready().await.unwrap();
        let (response, _) = ready.send_request(health, true).unwrap();
        let mut body = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .unwrap()
            .unwrap()
            .into_body();
        while let Some(chunk) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.unwrap().len());
        }
        idle.push((send, driver));
    }
    // A third client is served at once, and the first connection made room.
    let mut client = server.client().await;
    tokio::time::timeout(
        Duration::from_secs(10),
        client.get_policy_status(cedar_pdp::grpc::proto::GetPolicyStatusRequest {}),
    )
    .await
    .expect("a third client is served at the cap")
    .unwrap();
    let (_send, first) = idle.remove(0);
    tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the idlest connection is closed")
        .unwrap();
    let (_send, second) = idle.remove(0);
    assert!(
        !second.is_finished(),
        "only the idlest connection is closed"
    );
}

/// The headers of a gRPC health check on `addr`, its body to follow.
fn health_check(addr: std::net::SocketAddr) -> axum::http::Request<()> {
    axum::http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}
