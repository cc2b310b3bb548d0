//! The admin listener: Prometheus metrics, liveness and readiness.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use common::{
    TestServer, http_get, request, sample, test_config, wait_for_reload_error, write_atomic,
};

const POLICY: &str = r#"@id("allow-alice")
permit (principal == User::"alice", action, resource);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_and_failed_reloads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        client
            .authorize(request(("User", "alice"), ("Action", "a"), ("R", "r")))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        client
            .authorize(request(("User", "bob"), ("Action", "a"), ("R", "r")))
            .await
            .unwrap();
    }
    let bad = client
        .authorize(request(("not a type", "x"), ("Action", "a"), ("R", "r")))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let (status, scrape) = http_get(server.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &scrape,
            "cedar_pdp_decisions_total",
            &[("decision", "allow")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "cedar_pdp_decisions_total",
            &[("decision", "deny")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "cedar_pdp_request_errors_total",
            &[("code", "InvalidArgument")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "cedar_pdp_decision_duration_seconds_count", &[]),
        Some(5.0)
    );
    assert_eq!(sample(&scrape, "cedar_pdp_policies", &[]), Some(1.0));
    assert_eq!(
        sample(&scrape, "cedar_pdp_policy_generation", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "cedar_pdp_inflight_requests", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&scrape, "cedar_pdp_decision_log_dropped_total", &[]),
        Some(0.0)
    );
    assert!(
        sample(
            &scrape,
            "cedar_pdp_policy_last_success_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1.7e9
    );
    // The build: version, commit and Cedar version, always 1.
    let (commit, cedar) = common::expected_build();
    assert_eq!(
        sample(
            &scrape,
            "cedar_pdp_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", &commit),
                ("cedar", &cedar)
            ]
        ),
        Some(1.0),
        "{scrape}"
    );
    let revision = client
        .get_policy_status(cedar_pdp::grpc::proto::GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(
        sample(&scrape, "cedar_pdp_policy_info", &[("revision", &revision)]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "cedar_pdp_policy_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "cedar_pdp_policy_reloads_total",
            &[("result", "error")]
        ),
        Some(0.0)
    );

    write_atomic(dir.path(), "p.cedar", "permit (principal,");
    wait_for_reload_error(&mut client).await;
    let (_, scrape) = http_get(server.admin_addr, "/metrics").await;
    assert!(
        sample(
            &scrape,
            "cedar_pdp_policy_reloads_total",
            &[("result", "error")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&scrape, "cedar_pdp_policy_generation", &[]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_stale_after_max_policy_age_of_failed_reloads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let mut config = test_config(dir.path());
    config.reload.max_policy_age = Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    assert_eq!(http_get(server.admin_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(server.admin_addr, "/readyz").await.0, 200);

    // A good set that is merely old stays ready: staleness needs failures.
    write_atomic(dir.path(), "p.cedar", "permit (principal,");
    wait_for_reload_error(&mut client).await;
    let (status, body) =
        common::eventually("readyz to turn 503", Duration::from_secs(15), || async {
            let (status, body) = http_get(server.admin_addr, "/readyz").await;
            (status == 503).then_some((status, body))
        })
        .await;
    assert_eq!(status, 503);
    // A short reason only: the reload error (file names, policy text) goes to
    // the log and to GetPolicyStatus, not to an unauthenticated port.
    assert!(body.starts_with("not ready: policy set is stale"), "{body}");
    assert_eq!(body.lines().count(), 1, "{body}");
    for detail in ["p.cedar", "permit", "principal", "unexpected", "/"] {
        assert!(!body.contains(detail), "`{detail}` in {body}");
    }
    let full = client
        .get_policy_status(cedar_pdp::grpc::proto::GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_reload_error;
    assert!(full.contains("p.cedar"), "{full}");
    // gRPC health follows the same rule.
    let health = HealthClient::new(
        tonic::transport::Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    common::eventually("gRPC health NOT_SERVING", Duration::from_secs(15), || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(HealthCheckRequest {
                    service: "cedar_pdp.v1.Authorizer".into(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (status == ServingStatus::NotServing as i32).then_some(())
        }
    })
    .await;
    // Liveness is unaffected, and the last good set still answers.
    assert_eq!(http_get(server.admin_addr, "/healthz").await.0, 200);
    client
        .authorize(request(("User", "alice"), ("Action", "a"), ("R", "r")))
        .await
        .unwrap();

    write_atomic(dir.path(), "p.cedar", POLICY);
    common::eventually("readyz to recover", Duration::from_secs(15), || async {
        (http_get(server.admin_addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    common::eventually("gRPC health SERVING again", Duration::from_secs(15), || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (status == ServingStatus::Serving as i32).then_some(())
        }
    })
    .await;
}

async fn get(stream: &mut tokio::net::TcpStream, path: &str) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    tokio::time::timeout(Duration::from_secs(10), common::http_response(stream))
        .await
        .expect("an answer or a close within 10s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_disconnected_within_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let mut config = test_config(dir.path());
    config.admin.header_read_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;

    // Half a request, then nothing more.
    let mut slow = tokio::net::TcpStream::connect(server.admin_addr)
        .await
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest))
        .await
        .expect("the server closes a slow client within 10s");
    // Closed (an error reply, or a reset, or a plain EOF), never served.
    assert!(
        read.is_err() || !String::from_utf8_lossy(&rest).contains("200 OK"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // An idle kept-alive connection is closed the same way.
    let mut idle = tokio::net::TcpStream::connect(server.admin_addr)
        .await
        .unwrap();
    assert_eq!(get(&mut idle, "/healthz").await, Some(200));
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
        .await
        .expect("an idle kept-alive connection is closed within 10s")
        .ok();
    assert_eq!(http_get(server.admin_addr, "/healthz").await.0, 200);
}

/// At the cap, the idlest connection is closed so that a new client (a
/// probe) is served; the other open one keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_idlest_connection_makes_room() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let mut config = test_config(dir.path());
    config.admin.max_connections = 2;
    config.admin.header_read_timeout = Duration::from_secs(30);
    let server = TestServer::start_with(config).await;
    let connect = || tokio::net::TcpStream::connect(server.admin_addr);

    // Two kept-alive connections, each answered once, hold the two places.
    let mut first = connect().await.unwrap();
    let mut second = connect().await.unwrap();
    assert_eq!(get(&mut first, "/healthz").await, Some(200));
    assert_eq!(get(&mut second, "/readyz").await, Some(200));

    // A third is served at once: the first, idle longest, made room.
    let mut third = connect().await.unwrap();
    assert_eq!(get(&mut third, "/healthz").await, Some(200));
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
        .await
        .expect("the idlest connection is closed")
        .ok();
    assert_eq!(get(&mut second, "/metrics").await, Some(200));
    assert_eq!(get(&mut third, "/healthz").await, Some(200));
}
