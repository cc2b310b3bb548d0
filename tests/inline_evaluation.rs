//! Small requests are evaluated on the async worker that received them;
//! large ones, every request once a policy set proves slow, and every request
//! while the async workers are busy, go to the evaluation threads. The
//! answers are the same either way.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use std::fmt::Write as _;

use cedar_pdp::grpc::proto::{AuthorizeRequest, Decision};
use common::{TestServer, request, test_config, wait_for_generation, write_atomic};

const FAST: &str = "permit (principal == User::\"alice\", action == Action::\"read\", resource) when { context.s like \"*a*\" };\n";

async fn evaluations(server: &TestServer, thread: &str) -> f64 {
    common::metric(
        server.admin_addr,
        "cedar_pdp_evaluations_total",
        &[("thread", thread)],
    )
    .await
}

/// Both counters at once: (inline, pool).
async fn counts(server: &TestServer) -> (f64, f64) {
    (
        evaluations(server, "inline").await,
        evaluations(server, "pool").await,
    )
}

fn alice_reads(s: &str) -> AuthorizeRequest {
    let mut req = request(("User", "alice"), ("Action", "read"), ("Doc", "d"));
    req.context_json = serde_json::json!({ "s": s }).to_string();
    req
}

async fn start(dir: &std::path::Path, inline_bytes: usize) -> TestServer {
    let mut config = test_config(dir);
    // Every request is evaluated, so every one is counted.
    config.limits.decision_cache_bytes = 0;
    config.limits.inline_evaluation_bytes = inline_bytes;
    TestServer::start_with(config).await
}

#[tokio::test]
async fn a_small_request_stays_inline_and_a_large_one_goes_to_the_pool_with_the_same_answer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), FAST).unwrap();
    let server = start(dir.path(), 4096).await;
    let mut client = server.client().await;

    // A small request stays inline while the workers are idle; a machine
    // busy with other tests may keep them busy for a moment, so ask again
    // until one does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let small = loop {
        let small = client.authorize(alice_reads("abc")).await.unwrap();
        assert_eq!(small.get_ref().decision, Decision::Allow as i32);
        if counts(&server).await.0 >= 1.0 {
            break small;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no small request ran inline: {:?}",
            counts(&server).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let (inline, pool) = counts(&server).await;

    // A large one goes to the pool, however idle the workers are.
    let large = client
        .authorize(alice_reads(&format!("a{}", "b".repeat(5000))))
        .await
        .unwrap();
    assert_eq!(large.get_ref().decision, Decision::Allow as i32);
    assert_eq!(
        large.get_ref().determining_policies,
        small.get_ref().determining_policies
    );
    assert_eq!(counts(&server).await, (inline, pool + 1.0));

    let denied = client.authorize(alice_reads("xyz")).await.unwrap();
    assert_eq!(denied.get_ref().decision, Decision::Deny as i32);
    let (i, p) = counts(&server).await;
    assert_eq!(i + p, inline + pool + 2.0);
}

#[tokio::test]
async fn zero_sends_every_evaluation_to_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), FAST).unwrap();
    let server = start(dir.path(), 0).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        let answer = client.authorize(alice_reads("abc")).await.unwrap();
        assert_eq!(answer.get_ref().decision, Decision::Allow as i32);
    }
    assert_eq!(counts(&server).await, (0.0, 3.0));
}

/// A set that costs milliseconds per decision whatever the request: many
/// unscoped policies, each matching a long pattern.
fn slow_set() -> String {
    let mut text = String::new();
    for i in 0..6000 {
        writeln!(
            text,
            "permit (principal, action, resource) when {{ context.s like \"*a*b*c*d*e*f*g*{i}\" }};"
        )
        .unwrap();
    }
    text
}

#[tokio::test]
async fn a_slow_policy_set_moves_to_the_pool_and_a_reload_brings_inline_back() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), slow_set()).unwrap();
    let server = start(dir.path(), 4096).await;
    let mut client = server.client().await;
    let s = "abcdefg".repeat(12);

    // At most eight strikes (each decision over 1 ms of CPU) inline, then
    // the pool. The workers' load may send some there sooner: a worker
    // busy with these decisions is busy.
    for _ in 0..11 {
        let started = std::time::Instant::now();
        let answer = client.authorize(alice_reads(&s)).await.unwrap();
        assert_eq!(answer.get_ref().decision, Decision::Deny as i32);
        assert!(
            started.elapsed() > std::time::Duration::from_millis(1),
            "the slow set must take over 1 ms to prove anything"
        );
    }
    let (inline, pool) = counts(&server).await;
    assert!(inline <= 8.0, "{inline} slow evaluations ran inline");
    assert_eq!(inline + pool, 11.0);

    // A new snapshot starts with no strikes: once the workers are idle, its
    // evaluations are inline again.
    write_atomic(dir.path(), "p.cedar", FAST);
    wait_for_generation(&mut client, 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let answer = client.authorize(alice_reads("abc")).await.unwrap();
        assert_eq!(answer.get_ref().decision, Decision::Allow as i32);
        if counts(&server).await.0 > inline {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new snapshot's evaluations never ran inline"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
