//! `[evaluation] on_forbid_error`: a `forbid` whose evaluation errors denies
//! by default, over gRPC and ext_authz on real sockets; `"skip"` keeps
//! Cedar's semantics. A property test drives generated requests through the
//! pipeline's own path.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::Path;
use std::sync::LazyLock;

use cedar_pdp::config::{Config, OnForbidError};
use cedar_pdp::grpc::proto::{self, Decision};
use cedar_pdp::identity::PeerFacts;
use cedar_pdp::pipeline::{self, Context, DecisionRequest, PipelineOptions, Uid};
use cedar_pdp::policy_store::{LoadOptions, Snapshot, build, read_dir};
use common::{TestServer, request, test_config};
use envoy_types::pb::envoy::config::core::v3::Address as CoreAddress;
use envoy_types::pb::envoy::config::core::v3::SocketAddress;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Map, Value as Json, json};

/// Everything is permitted unless a network or tenant `forbid` matches; each
/// `forbid` can error on input of the wrong type or a missing key.
const POLICIES: &str = r#"
@id("everyone")
permit (principal, action, resource);

@id("quarantine")
forbid (principal, action, resource)
when { context.src.isInRange(ip("10.66.0.0/16")) };

@id("blocked-tenant")
forbid (principal, action, resource)
when { context.headers["x-tenant"] == "blocked" };

@id("over-quota")
forbid (principal, action == Action::"write", resource)
when { context.used + 1 > 100 };

@id("suspended-owner")
forbid (principal, action, resource)
when { resource.owner.suspended };

@id("flag-guard")
permit (principal, action == Action::"read", resource)
when { context.flag };
"#;

fn config(dir: &Path, rule: OnForbidError) -> Config {
    let mut config = test_config(dir);
    config.evaluation.on_forbid_error = rule;
    config.ext_authz.headers = vec!["x-tenant".into()];
    config
}

async fn server(rule: OnForbidError) -> (TestServer, tempfile::TempDir) {
    server_of(POLICIES, rule).await
}

async fn server_of(policies: &str, rule: OnForbidError) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), policies).unwrap();
    (TestServer::start_with(config(dir.path(), rule)).await, dir)
}

/// A call whose source address is a string, not an `ipaddr`: without a
/// schema the quarantine `forbid` errors.
fn string_source() -> proto::AuthorizeRequest {
    let mut req = request(("User", "u"), ("Action", "list"), ("Doc", "d"));
    req.context_json = r#"{"src": "10.66.1.1", "headers": {"x-tenant": "acme"}}"#.into();
    req.entities_json = r#"[{"uid": {"type": "Doc", "id": "d"}, "attrs": {"owner": {"suspended": false}}, "parents": []}]"#.into();
    req
}

#[tokio::test]
async fn an_erroring_forbid_denies_over_grpc_by_default() {
    let (server, _dir) = server(OnForbidError::Deny).await;
    let mut client = server.client().await;
    let resp = client
        .authorize(string_source())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision, Decision::Deny as i32, "{resp:?}");
    assert_eq!(resp.determining_policies, ["quarantine"]);
    // The error still says why.
    let quarantine: Vec<_> = resp
        .errors
        .iter()
        .filter(|e| e.policy_id == "quarantine")
        .collect();
    assert_eq!(quarantine.len(), 1, "{:?}", resp.errors);

    // With well-typed input the same set allows.
    let mut ok = string_source();
    ok.context_json =
        r#"{"src": {"__extn": {"fn": "ip", "arg": "10.1.0.1"}}, "headers": {"x-tenant": "acme"}}"#
            .into();
    let resp = client.authorize(ok).await.unwrap().into_inner();
    assert_eq!(resp.decision, Decision::Allow as i32, "{resp:?}");
    assert!(resp.errors.is_empty(), "{:?}", resp.errors);
}

#[tokio::test]
async fn skip_keeps_cedars_semantics() {
    let (server, _dir) = server(OnForbidError::Skip).await;
    let mut client = server.client().await;
    let resp = client
        .authorize(string_source())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision, Decision::Allow as i32, "{resp:?}");
    assert_eq!(resp.determining_policies, ["everyone"]);
    assert!(resp.errors.iter().any(|e| e.policy_id == "quarantine"));
}

fn check(headers: &[(&str, &str)]) -> CheckRequest {
    let peer = |principal: &str, ip: &str| Peer {
        principal: principal.into(),
        address: Some(CoreAddress {
            address: Some(Address::SocketAddress(SocketAddress {
                address: ip.into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("spiffe://td/ns/shop/sa/web", "10.0.1.7")),
            destination: Some(peer("spiffe://td/ns/shop/sa/api", "10.0.2.1")),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "api".into(),
                    path: "/items".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// For ext_authz, whose context has `headers` but only the allowed ones.
const EXT_AUTHZ_POLICIES: &str = r#"
@id("everyone")
permit (principal, action, resource);

@id("blocked-tenant")
forbid (principal, action, resource)
when { context.headers["x-tenant"] == "blocked" };
"#;

/// ext_authz decides on the same pipeline: a missing header makes the tenant
/// `forbid` error, and that is a deny unless `skip` is asked for.
#[tokio::test]
async fn ext_authz_follows_the_same_rule() {
    const OK: i32 = 0;
    const PERMISSION_DENIED: i32 = 7;
    let code = |resp: &envoy_types::pb::envoy::service::auth::v3::CheckResponse| {
        resp.status.as_ref().map_or(OK, |s| s.code)
    };
    for (rule, want) in [
        (OnForbidError::Deny, PERMISSION_DENIED),
        (OnForbidError::Skip, OK),
    ] {
        let (server, _dir) = server_of(EXT_AUTHZ_POLICIES, rule).await;
        let mut c = AuthorizationClient::connect(server.url()).await.unwrap();
        let resp = c.check(check(&[])).await.unwrap().into_inner();
        assert_eq!(code(&resp), want, "{rule:?}: {resp:?}");
        // The header present, nothing errors: allowed either way.
        let resp = c
            .check(check(&[("x-tenant", "acme")]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&resp), OK, "{rule:?}: {resp:?}");
    }
}

/// The policies, read from a real directory once.
fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
        build(read_dir(dir.path()).unwrap(), &LoadOptions::default(), 1).unwrap()
    });
    &SNAPSHOT
}

/// Context values of every shape the policies read, including the wrong ones.
fn value() -> impl Strategy<Value = Option<Json>> {
    prop_oneof![
        Just(None),
        Just(Some(json!({"__extn": {"fn": "ip", "arg": "10.66.3.4"}}))),
        Just(Some(json!({"__extn": {"fn": "ip", "arg": "192.168.0.1"}}))),
        Just(Some(json!("10.66.3.4"))),
        Just(Some(json!(true))),
        Just(Some(json!(false))),
        any::<i64>().prop_map(|n| Some(json!(n))),
        Just(Some(json!(i64::MAX))),
        Just(Some(json!({"x-tenant": "blocked"}))),
        Just(Some(json!({"x-tenant": "acme"}))),
        Just(Some(json!({}))),
    ]
}

prop_compose! {
    fn generated()(
        src in value(), headers in value(), used in value(), flag in value(),
        action in prop_oneof![Just("read"), Just("write"), Just("list")],
        owner in prop_oneof![
            Just(None),
            Just(Some(json!({"suspended": true}))),
            Just(Some(json!({"suspended": false}))),
            Just(Some(json!({"suspended": "no"}))),
            Just(Some(json!({}))),
        ],
    ) -> DecisionRequest {
        let mut context = Map::new();
        for (k, v) in [("src", src), ("headers", headers), ("used", used), ("flag", flag)] {
            if let Some(v) = v {
                context.insert(k.into(), v);
            }
        }
        let mut entities = Vec::new();
        if let Some(owner) = owner {
            entities.push(json!({
                "uid": {"type": "Doc", "id": "d"},
                "attrs": {"owner": owner},
                "parents": [],
            }));
        }
        DecisionRequest {
            principal: Some(Uid::new("User", "u")),
            action: Some(Uid::new("Action", action)),
            resource: Some(Uid::new("Doc", "d")),
            context: Context::Record(context),
            entities,
            ..DecisionRequest::default()
        }
    }
}

const FORBIDS: [&str; 4] = [
    "quarantine",
    "blocked-tenant",
    "over-quota",
    "suspended-owner",
];

fn options(rule: OnForbidError) -> PipelineOptions {
    let mut config = Config::default();
    config.evaluation.on_forbid_error = rule;
    PipelineOptions::from_config(&config)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No request is allowed while a matching `forbid` errors; and where no
    /// `forbid` errors, `deny` answers exactly as Cedar does.
    #[test]
    fn no_allow_while_a_forbid_errors(req in generated()) {
        let snapshot = snapshot();
        let peer = PeerFacts::default();
        let strict = pipeline::judge(&options(OnForbidError::Deny), snapshot, req.clone(), &peer);
        let cedar = pipeline::judge(&options(OnForbidError::Skip), snapshot, req, &peer);
        let (strict, cedar) = match (strict, cedar) {
            (Ok(s), Ok(c)) => (s, c),
            (Err(s), Err(c)) => {
                prop_assert_eq!(s.reason, c.reason);
                return Ok(());
            }
            other => panic!("the rule changed whether a request is refused: {other:?}"),
        };
        prop_assert_eq!(&strict.errors, &cedar.errors);
        let forbid_erred = cedar.errors.iter().any(|e| FORBIDS.contains(&e.policy_id.as_str()));
        if forbid_erred {
            prop_assert!(!strict.allow, "allowed while a forbid errored: {strict:?}");
            if cedar.allow {
                prop_assert!(strict.determining_policies.iter().all(|p| FORBIDS.contains(&p.as_str())));
            }
        } else {
            prop_assert_eq!(strict, cedar);
        }
    }
}

/// The generator does reach the case the property is about: erroring
/// forbids that Cedar alone would let through.
#[test]
fn the_generator_reaches_erroring_forbids_under_a_permit() {
    let snapshot = snapshot();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = generated();
    let mut lifted = 0;
    for _ in 0..500 {
        let req = strategy.new_tree(&mut runner).unwrap().current();
        let Ok(d) = pipeline::judge(
            &options(OnForbidError::Skip),
            snapshot,
            req,
            &PeerFacts::default(),
        ) else {
            continue;
        };
        if d.allow
            && d.errors
                .iter()
                .any(|e| FORBIDS.contains(&e.policy_id.as_str()))
        {
            lifted += 1;
        }
    }
    assert!(
        lifted > 20,
        "only {lifted} of 500 generated requests exercise the rule"
    );
}
