//! `[evaluation] server_time_key`: the server's time reaches policies as a
//! `datetime`, a request cannot set it, and the decision cache never serves
//! an answer computed at another second.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::time::{Duration, SystemTime};

use cedar_pdp::grpc::proto::{self, AuthorizeRequest};
use common::{TestServer, eventually, metric, request, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_see_the_server_time_and_the_cache_keys_on_it() {
    let dir = tempfile::tempdir().unwrap();
    // Open until two seconds from now, by the server's clock.
    let until = SystemTime::now() + Duration::from_secs(2);
    let until_text = humantime::format_rfc3339_seconds(until).to_string();
    std::fs::write(
        dir.path().join("p.cedar"),
        format!(
            r#"@id("until") permit (principal, action, resource)
               when {{ context.now < datetime("{until_text}") }};"#
        ),
    )
    .unwrap();
    let mut config = test_config(dir.path());
    config.evaluation.server_time_key = "now".into();
    let server = TestServer::start_with(config).await;
    let req = || request(("User", "a"), ("Action", "read"), ("Doc", "d"));
    let decide = |req: AuthorizeRequest| {
        let server = &server;
        async move {
            let mut client = server.client().await;
            client.authorize(req).await.map(|r| r.into_inner().decision)
        }
    };
    assert_eq!(decide(req()).await.unwrap(), proto::Decision::Allow as i32);
    assert_eq!(decide(req()).await.unwrap(), proto::Decision::Allow as i32);
    // The same request, once the second has passed, is denied: the cached
    // allow belonged to its second.
    eventually("the deadline to pass", Duration::from_secs(10), || async {
        (decide(req()).await.unwrap() == proto::Decision::Deny as i32).then_some(())
    })
    .await;
    assert!(SystemTime::now() + Duration::from_secs(1) >= until);
    let hits = metric(
        server.admin_addr,
        "cedar_pdp_decision_cache_lookups_total",
        &[("result", "hit")],
    )
    .await;
    let misses = metric(
        server.admin_addr,
        "cedar_pdp_decision_cache_lookups_total",
        &[("result", "miss")],
    )
    .await;
    assert!(misses >= 2.0, "a new second misses: {misses}");
    assert!(
        hits >= 1.0,
        "within a second the cache still answers: {hits}"
    );

    // The key is the server's.
    let mut forged = req();
    forged.context_json = r#"{"now": {"__extn": {"fn": "datetime", "arg": "2000-01-01"}}}"#.into();
    let status = decide(forged).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("context.now"), "{status:?}");
}
