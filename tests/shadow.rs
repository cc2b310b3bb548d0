//! Shadow policies: a `@shadow` forbid (and one under `shadow/`) is
//! evaluated on every request, counted and recorded where it disagrees, and
//! never changes an answer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use cedar_pdp::config::LogSink;
use cedar_pdp::grpc::proto;
use common::{TestServer, metric, request, test_config};
use serde_json::Value as Json;

const LIVE: &str = r#"
@id("readers")
permit (principal, action == Action::"read", resource);
"#;

const SHADOW: &str = r#"
@id("no-secret")
@shadow
forbid (principal, action, resource == Doc::"secret");
"#;

/// Under `shadow/`: a permit the live set lacks.
const SHADOW_DIR: &str = r#"
@id("writers")
permit (principal == User::"admin", action == Action::"write", resource);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_policies_are_counted_and_recorded_and_never_answer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("live.cedar"), LIVE).unwrap();
    std::fs::write(dir.path().join("shadow.cedar"), SHADOW).unwrap();
    std::fs::create_dir(dir.path().join("shadow")).unwrap();
    std::fs::write(dir.path().join("shadow/writers.cedar"), SHADOW_DIR).unwrap();
    let log = dir.path().join("decisions.log");
    let mut config = test_config(dir.path());
    config.decision_log.enabled = true;
    config.decision_log.sink = LogSink::File;
    config.decision_log.path = log.clone();
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let ask = |p: &str, a: &str, r: &str| request(("User", p), ("Action", a), ("Doc", r));
    let cases = [
        // (request, live answer, shadow answer)
        (ask("alice", "read", "secret"), true, false),
        (ask("alice", "read", "public"), true, true),
        (ask("admin", "write", "public"), false, true),
        (ask("admin", "write", "secret"), false, false),
        (ask("bob", "write", "public"), false, false),
    ];
    let mut ids = Vec::new();
    for _ in 0..2 {
        for (req, live, _) in &cases {
            let resp = client.authorize(req.clone()).await.unwrap().into_inner();
            let want = if *live {
                proto::Decision::Allow
            } else {
                proto::Decision::Deny
            };
            assert_eq!(resp.decision, want as i32, "the live set answers: {req:?}");
            assert!(
                !resp
                    .determining_policies
                    .iter()
                    .any(|p| p == "no-secret" || p == "writers"),
                "a shadow policy never determines an answer: {resp:?}"
            );
            ids.push(resp.decision_id);
        }
    }
    let admin = server.admin_addr;
    let name = "cedar_pdp_shadow_disagreements_total";
    assert_eq!(
        metric(admin, name, &[("live", "allow"), ("shadow", "deny")]).await,
        2.0
    );
    assert_eq!(
        metric(admin, name, &[("live", "deny"), ("shadow", "allow")]).await,
        2.0
    );
    drop(client);
    server.stop().await.unwrap();

    let records: Vec<Json> = common::records_in(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(records.len(), 10);
    for (i, id) in ids.iter().enumerate() {
        let (_, live, shadow) = &cases[i % cases.len()];
        let at = records
            .iter()
            .find(|x| x["decision_id"] == id.as_str())
            .unwrap();
        assert_eq!(at["decision"], if *live { "allow" } else { "deny" });
        if live == shadow {
            assert!(
                at.get("shadow").is_none(),
                "agreement is not recorded: {at}"
            );
        } else {
            let want = if *shadow { "allow" } else { "deny" };
            assert_eq!(at["shadow"]["decision"], want, "{at}");
            let by = if *shadow { "writers" } else { "no-secret" };
            assert_eq!(
                at["shadow"]["determining_policies"],
                serde_json::json!([by])
            );
        }
    }
}
