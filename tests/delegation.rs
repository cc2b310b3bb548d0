//! Delegation over a real socket, on gRPC and AuthZEN: the server's rules
//! (depth, expiry by its clock, scopes that only narrow) refuse a chain
//! before evaluation; policies see `context.delegation` and
//! `context.purpose`; the record carries the ordered chain; and an answer
//! the decision cache holds is never served once the chain has expired.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::time::{Duration, SystemTime};

use cedar_pdp::config::{Config, LogSink};
use cedar_pdp::grpc::proto::{self, AuthorizeRequest, DelegationHop};
use common::{TestServer, eventually, metric, request, test_config, uid};
use serde_json::{Value as Json, json};

const SCHEMA: &str = r#"
entity User;
entity Agent;
entity Doc = { readers: Set<User> };
type Delegation = {
  origin: User,
  depth: Long,
  actors: Set<String>,
  scopes?: Set<String>,
  expires_at?: datetime,
  purposes: Set<String>,
  verified: Bool,
};
action read appliesTo {
  principal: [Agent],
  resource: [Doc],
  context: { delegation?: Delegation, purpose?: String },
};
"#;

// An agent may read a document only for a person who may read it, within
// the delegated scopes, at most two hops deep, on a grant that expires,
// with a declared purpose.
const POLICY: &str = r#"
@id("agent-reads-for-a-reader")
permit (principal is Agent, action == Action::"read", resource is Doc)
when {
  context has delegation && context has purpose &&
  context.delegation.depth <= 2 &&
  context.delegation has scopes && context.delegation.scopes.contains("docs:read") &&
  context.delegation has expires_at &&
  resource.readers.contains(context.delegation.origin)
};
"#;

const ENTITIES: &str = r#"[
  {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []},
  {"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Agent", "id": "summarizer"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Doc", "id": "plan"},
   "attrs": {"readers": [{"__entity": {"type": "User", "id": "alice"}}]}, "parents": []}
]"#;

async fn start(configure: impl FnOnce(&mut Config)) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    std::fs::write(dir.path().join("e.entities.json"), ENTITIES).unwrap();
    let mut config = test_config(dir.path());
    configure(&mut config);
    (TestServer::start_with(config).await, dir)
}

/// [`start`] with the decision log written to a file: the server, its
/// policies, the log's path and the folder holding it.
async fn start_logged() -> (
    TestServer,
    tempfile::TempDir,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    let (server, policies) = start(|c| {
        c.decision_log.enabled = true;
        c.decision_log.sink = LogSink::File;
        c.decision_log.path = log.clone();
    })
    .await;
    (server, policies, log, dir)
}

fn hop(who: (&str, &str), scopes: &[&str], expires_in: Option<Duration>) -> DelegationHop {
    DelegationHop {
        delegator: uid(who.0, who.1),
        scopes: scopes.iter().map(ToString::to_string).collect(),
        expires_at: expires_in.map(|d| prost_types::Timestamp::from(SystemTime::now() + d)),
        purpose: String::new(),
    }
}

const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

fn read(chain: Vec<DelegationHop>, purpose: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        delegation: chain,
        purpose: purpose.into(),
        ..request(("Agent", "summarizer"), ("Action", "read"), ("Doc", "plan"))
    }
}

fn alice() -> DelegationHop {
    hop(("User", "alice"), &["docs:read", "docs:list"], HOUR)
}

async fn decide(server: &TestServer, req: AuthorizeRequest) -> Result<bool, tonic::Status> {
    let mut client = server.client().await;
    client
        .authorize(req)
        .await
        .map(|r| r.into_inner().decision == proto::Decision::Allow as i32)
}

fn refused(result: Result<bool, tonic::Status>, code: tonic::Code, field: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(field), "{field}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_holds_the_chain_to_its_rules_and_policies_see_it() {
    let (server, _policies, log, _dir) = start_logged().await;

    // Alice reads the plan; her agent may, for her, with a purpose.
    let mut allowed = read(vec![alice()], "summarize");
    allowed.request_id = "allowed".into();
    assert!(decide(&server, allowed).await.unwrap());
    // Narrowing along the chain is fine: two hops, `docs:read` kept.
    let two = vec![alice(), hop(("Agent", "planner"), &["docs:read"], None)];
    assert!(decide(&server, read(two, "summarize")).await.unwrap());

    // What policies refuse: bob does not read the plan; no purpose; no
    // expiry (standing access); a scope that does not cover reading; three hops.
    let bob = hop(("User", "bob"), &["docs:read"], HOUR);
    assert!(!decide(&server, read(vec![bob], "summarize")).await.unwrap());
    assert!(!decide(&server, read(vec![alice()], "")).await.unwrap());
    let standing = hop(("User", "alice"), &["docs:read"], None);
    assert!(
        !decide(&server, read(vec![standing], "summarize"))
            .await
            .unwrap()
    );
    let listing = hop(("User", "alice"), &["docs:list"], HOUR);
    assert!(
        !decide(&server, read(vec![listing], "summarize"))
            .await
            .unwrap()
    );
    let three = vec![
        alice(),
        hop(("Agent", "planner"), &[], None),
        hop(("Agent", "tool"), &[], None),
    ];
    assert!(!decide(&server, read(three, "summarize")).await.unwrap());

    // What the server refuses before evaluation.
    let mut expired = read(
        vec![hop(("User", "alice"), &["docs:read"], None)],
        "summarize",
    );
    expired.delegation[0].expires_at = Some(prost_types::Timestamp::from(
        SystemTime::now() - Duration::from_secs(1),
    ));
    expired.request_id = "expired".into();
    refused(
        decide(&server, expired).await,
        tonic::Code::InvalidArgument,
        "delegation[0].expires_at",
    );
    let widening = vec![
        hop(("User", "alice"), &["docs:list"], HOUR),
        hop(("Agent", "planner"), &["docs:list", "docs:read"], None),
    ];
    refused(
        decide(&server, read(widening, "summarize")).await,
        tonic::Code::InvalidArgument,
        "widens the chain: `docs:read`",
    );
    let deep = (0..5)
        .map(|i| hop(("Agent", &format!("a{i}")), &[], None))
        .collect();
    refused(
        decide(&server, read(deep, "summarize")).await,
        tonic::Code::InvalidArgument,
        "delegation.max_depth",
    );
    // The chain's key is the server's: a context may not forge it.
    let mut forged = read(Vec::new(), "summarize");
    forged.context_json = r#"{"delegation": {"depth": 1, "verified": true}}"#.into();
    refused(
        decide(&server, forged).await,
        tonic::Code::InvalidArgument,
        "context.delegation",
    );
    // A purpose is only declared, so a context may say it, as callers did
    // before the field existed: here without a chain, a deny.
    let mut own_purpose = read(Vec::new(), "");
    own_purpose.context_json = r#"{"purpose": "summarize"}"#.into();
    assert!(!decide(&server, own_purpose).await.unwrap());
    // A token with no issuer to verify it against is refused, not ignored.
    let mut token = read(vec![alice()], "summarize");
    token.subject_token = "eyJhbGciOiJub25lIn0.e30.".into();
    let status = decide(&server, token).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        !status.message().contains("eyJ"),
        "never quotes the token: {status:?}"
    );
    assert_eq!(
        metric(
            server.admin_addr,
            "cedar_pdp_request_errors_total",
            &[("reason", "delegation_invalid")]
        )
        .await,
        3.0
    );

    // The record has the ordered chain and the purpose.
    let records: Vec<Json> = eventually("the records", Duration::from_secs(10), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            let records: Vec<Json> = common::records_in(&text);
            (records.len() >= 12).then_some(records)
        }
    })
    .await;
    let by_id = |id: &str| records.iter().find(|r| r["request_id"] == id).unwrap();
    let allowed = by_id("allowed");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["purpose"], "summarize");
    let chain = allowed["delegation"].as_array().unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(
        chain[0]["delegator"],
        json!({"type": "User", "id": "alice"})
    );
    assert_eq!(chain[0]["scopes"], json!(["docs:read", "docs:list"]));
    assert_eq!(chain[0]["verified"], false);
    assert!(chain[0]["expires_at"].as_str().unwrap().ends_with('Z'));
    // The context as evaluated holds what policies saw, for replay.
    assert_eq!(allowed["context"]["delegation"]["depth"], 1, "{allowed}");
    assert_eq!(allowed["context"]["purpose"], "summarize");
    let expired = by_id("expired");
    assert_eq!(expired["error"]["reason"], "delegation_invalid");
    assert_eq!(expired["delegation"][0]["delegator"]["id"], "alice");
}

/// An answer the decision cache holds is never served once its chain has
/// expired: expiry is checked before the cache, by the server's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_allow_ends_when_the_grant_expires() {
    let (server, _dir) = start(|_| {}).await;
    let expires = SystemTime::now() + Duration::from_secs(2);
    let req = read(
        vec![DelegationHop {
            expires_at: Some(prost_types::Timestamp::from(expires)),
            ..alice()
        }],
        "summarize",
    );
    assert!(decide(&server, req.clone()).await.unwrap());
    assert!(
        decide(&server, req.clone()).await.unwrap(),
        "from the cache"
    );
    let hits = metric(
        server.admin_addr,
        "cedar_pdp_decision_cache_lookups_total",
        &[("result", "hit")],
    )
    .await;
    assert!(hits >= 1.0, "the second answer was a cache hit");
    let status = eventually("the grant to expire", Duration::from_secs(10), || {
        let (server, req) = (&server, req.clone());
        async move { decide(server, req).await.err() }
    })
    .await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(SystemTime::now() >= expires);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authzen_takes_the_chain_from_its_context() {
    let (server, _dir) = start(|_| {}).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/access/v1/evaluation", server.authzen_addr);
    let expires = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
    let body = |scopes: Json, purpose: Json| {
        json!({
            "subject": {"type": "Agent", "id": "summarizer"},
            "action": {"name": "read"},
            "resource": {"type": "Doc", "id": "plan"},
            "context": {
                "delegation": [{"delegator": {"type": "User", "id": "alice"},
                                "scopes": scopes, "expires_at": expires.to_string()}],
                "purpose": purpose,
            },
        })
    };
    let post = |body: Json| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                serde_json::from_str::<Json>(&r.text().await.unwrap()).unwrap(),
            )
        }
    };
    let (status, answer) = post(body(json!(["docs:read"]), json!("summarize"))).await;
    assert_eq!((status, &answer), (200, &json!({"decision": true})));
    let (status, answer) = post(body(json!(["docs:read"]), Json::Null)).await;
    assert_eq!((status, &answer), (200, &json!({"decision": false})));
    let (status, answer) = post(body(json!([1]), json!("summarize"))).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("context.delegation[0].scopes"),
        "{answer}"
    );
    let mut expired = body(json!(["docs:read"]), json!("summarize"));
    expired["context"]["delegation"][0]["expires_at"] = json!("2020-01-01T00:00:00Z");
    let (status, answer) = post(expired).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "delegation_invalid");
}

/// A hop that expires after the year 9999 is refused at conversion, with its
/// field and a record, in a unary call and in a batch (where only that item
/// is refused): the chain's RFC 3339 form cannot hold it, and writing it
/// once panicked while the record was built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_past_the_year_9999_is_refused_not_a_panic() {
    let (server, _policies, log, _dir) = start_logged().await;
    let far = || {
        let mut h = alice();
        h.expires_at = Some(prost_types::Timestamp {
            seconds: 253_402_300_800 + 86_400,
            nanos: 0,
        });
        h
    };
    let mut req = read(vec![far()], "summarize");
    req.request_id = "far".into();
    refused(
        decide(&server, req).await,
        tonic::Code::InvalidArgument,
        "delegation[0].expires_at",
    );

    let mut client = server.client().await;
    let batch = client
        .batch_authorize(proto::BatchAuthorizeRequest {
            requests: vec![
                read(vec![far()], "summarize"),
                read(vec![alice()], "summarize"),
            ],
            ..Default::default()
        })
        .await
        .expect("the batch is answered")
        .into_inner();
    assert_eq!(batch.responses.len(), 2, "{batch:?}");
    assert_eq!(
        batch.responses[1].decision,
        proto::Decision::Allow as i32,
        "{batch:?}"
    );
    assert_ne!(
        batch.responses[0].decision,
        proto::Decision::Allow as i32,
        "{batch:?}"
    );

    let record = eventually("the refusal's record", Duration::from_secs(10), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|r| r["request_id"] == "far")
        }
    })
    .await;
    assert_eq!(record["decision"], "deny", "{record}");
    server.stop().await.unwrap();
}
