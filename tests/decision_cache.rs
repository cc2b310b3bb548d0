//! The decision cache: identical requests reuse a decision, a reload never
//! serves the old set's answer, and turning it off turns it off.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use crate::common;

use cedar_pdp::grpc::proto::Decision;
use common::{TestServer, request, test_config, wait_for_generation, write_atomic};

const ALLOW: &str = "@id(\"alice-reads\")\npermit (principal == User::\"alice\", action == Action::\"read\", resource);\n";
const DENY: &str =
    "@id(\"no-one-reads\")\nforbid (principal, action == Action::\"read\", resource);\n";

async fn lookups(server: &TestServer, result: &str) -> f64 {
    common::metric(
        server.admin_addr,
        "cedar_pdp_decision_cache_lookups_total",
        &[("result", result)],
    )
    .await
}

fn alice_reads(id: &str) -> cedar_pdp::grpc::proto::AuthorizeRequest {
    let mut req = request(("User", "alice"), ("Action", "read"), ("Doc", "d"));
    req.request_id = id.into();
    req
}

#[tokio::test]
async fn identical_requests_hit_and_a_reload_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), ALLOW).unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let first = client
        .authorize(alice_reads("1"))
        .await
        .unwrap()
        .into_inner();
    let second = client
        .authorize(alice_reads("2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.decision, Decision::Allow as i32);
    assert_eq!(
        (second.decision, &second.determining_policies),
        (first.decision, &first.determining_policies)
    );
    assert_ne!(
        first.decision_id, second.decision_id,
        "each answer is its own decision"
    );
    assert_eq!(
        second.request_id, "2",
        "the request id is not part of the key"
    );
    assert_eq!(
        (
            lookups(&server, "miss").await,
            lookups(&server, "hit").await
        ),
        (1.0, 1.0)
    );

    // The same request after a reload is judged by the new set.
    write_atomic(dir.path(), "p.cedar", DENY);
    wait_for_generation(&mut client, 1).await;
    let third = client
        .authorize(alice_reads("3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(third.decision, Decision::Deny as i32);
    assert_eq!(third.determining_policies, ["no-one-reads"]);
    assert_eq!(lookups(&server, "miss").await, 2.0);
}

#[tokio::test]
async fn zero_bytes_turns_the_cache_off() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), ALLOW).unwrap();
    let mut config = test_config(dir.path());
    config.limits.decision_cache_bytes = 0;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    for id in ["1", "2"] {
        let resp = client
            .authorize(alice_reads(id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.decision, Decision::Allow as i32);
    }
    assert_eq!(
        (
            lookups(&server, "miss").await,
            lookups(&server, "hit").await
        ),
        (0.0, 0.0)
    );
}

async fn reuses(server: &TestServer, kind: &str) -> f64 {
    common::metric(
        server.admin_addr,
        "cedar_pdp_entity_cache_reuses_total",
        &[("kind", kind)],
    )
    .await
}

/// With the decision cache off, a repeated request still reuses its
/// entities: one by one on the second call, then the whole set, and the
/// set with the schema action it reached; the answer stays the same.
#[tokio::test]
async fn repeated_request_entities_are_reused_whole_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        "entity User { level: Long }; entity Doc; action read appliesTo { principal: [User], resource: [Doc] };",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "@id(\"high-reads\")\npermit (principal, action == Action::\"read\", resource) when { principal.level > 2 };\n",
    )
    .unwrap();
    let mut config = test_config(dir.path());
    config.limits.decision_cache_bytes = 0;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let mut seen = Vec::new();
    for id in ["1", "2", "3", "4"] {
        let mut req = alice_reads(id);
        req.entities_json =
            r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {"level": 3}, "parents": []}]"#
                .into();
        let resp = client.authorize(req).await.unwrap().into_inner();
        assert_eq!(
            (resp.decision, resp.determining_policies),
            (Decision::Allow as i32, vec!["high-reads".to_string()])
        );
        seen.push((reuses(&server, "set").await, reuses(&server, "slice").await));
    }
    // Both are let in on their second sighting and served from the third.
    assert_eq!(seen, [(0.0, 0.0), (0.0, 0.0), (1.0, 1.0), (2.0, 2.0)]);
}
