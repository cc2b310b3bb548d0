//! The admin listener: Prometheus metrics, liveness and readiness.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

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
    assert!(body.contains("stale") && body.contains("p.cedar"), "{body}");
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
