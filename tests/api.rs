//! The gRPC API over a real loopback socket, through the generated tonic
//! client: decisions, policy ids, evaluation errors, typed and JSON context,
//! every `INVALID_ARGUMENT` case, batches, status, health and reflection.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cedar_pdp::grpc::AuthorizerService;
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::authorizer_server::AuthorizerServer;
use cedar_pdp::grpc::proto::value::Value as V;
use cedar_pdp::grpc::proto::{
    self, AuthorizeRequest, AuthorizeResponse, BatchAuthorizeRequest, Decision,
    GetPolicyStatusRequest, PolicyStatus,
};
use cedar_pdp::policy_store::{LoadOptions, PolicyStore};
use common::{TestServer, eventually, request, test_config, uid};
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A policy directory holding `files` (relative paths; folders are created).
fn fixture(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn value(v: V) -> proto::Value {
    proto::Value { value: Some(v) }
}

fn string(s: &str) -> proto::Value {
    value(V::StringValue(s.to_string()))
}

fn long(n: i64) -> proto::Value {
    value(V::LongValue(n))
}

fn ext(f: &str, arg: &str) -> proto::Value {
    value(V::Extension(proto::ExtensionValue {
        r#fn: f.to_string(),
        arg: arg.to_string(),
    }))
}

fn entity_ref(t: &str, id: &str) -> proto::Value {
    value(V::Entity(uid(t, id).unwrap()))
}

fn set(values: Vec<proto::Value>) -> proto::Value {
    value(V::Set(proto::ValueSet { values }))
}

fn record(fields: &[(&str, proto::Value)]) -> proto::Value {
    value(V::Record(proto::ValueRecord {
        fields: map(fields),
    }))
}

fn map(fields: &[(&str, proto::Value)]) -> BTreeMap<String, proto::Value> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect()
}

fn entity(
    t: &str,
    id: &str,
    attrs: &[(&str, proto::Value)],
    parents: &[(&str, &str)],
) -> proto::Entity {
    proto::Entity {
        uid: uid(t, id),
        attrs: map(attrs),
        parents: parents.iter().map(|(t, id)| uid(t, id).unwrap()).collect(),
        tags: BTreeMap::new(),
    }
}

/// A plain channel to `server`, for the health and reflection clients.
async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `User::"<who>"` reads `Doc::"<doc>"`.
fn read(who: &str, doc: &str) -> AuthorizeRequest {
    request(("User", who), ("Action", "read"), ("Doc", doc))
}

async fn authorize(
    client: &mut AuthorizerClient<Channel>,
    req: AuthorizeRequest,
) -> AuthorizeResponse {
    client.authorize(req).await.unwrap().into_inner()
}

async fn policy_status(client: &mut AuthorizerClient<Channel>) -> PolicyStatus {
    client
        .get_policy_status(GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Asserts a decision and its determining policies, with no errors.
#[track_caller]
fn assert_decision(resp: &AuthorizeResponse, decision: Decision, determining: &[&str]) {
    assert_eq!(resp.decision(), decision, "{resp:?}");
    assert_eq!(resp.determining_policies, determining, "{resp:?}");
    assert!(
        resp.errors.is_empty(),
        "unexpected errors: {:?}",
        resp.errors
    );
}

/// Sends `req`, expects `INVALID_ARGUMENT`, and checks that the message
/// contains every one of `needles`.
async fn invalid(
    client: &mut AuthorizerClient<Channel>,
    req: AuthorizeRequest,
    needles: &[&str],
) -> Status {
    let status = match client.authorize(req).await {
        Ok(resp) => panic!("expected INVALID_ARGUMENT, got {:?}", resp.into_inner()),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "message `{}` does not contain `{needle}`",
            status.message()
        );
    }
    status
}

const SIMPLE_POLICIES: &str = r#"
@id("alice-reads")
permit (principal == User::"alice", action == Action::"read", resource);

@id("team-reads")
permit (principal in Group::"team", action == Action::"read", resource);
"#;

/// A schema-backed fixture: users with levels, docs, one `read` action whose
/// context has an `ipaddr`.
const SCHEMA: &str = r#"
entity Group;
entity User in [Group] = { level: Long };
entity Doc = { owner: User };
action read appliesTo {
  principal: [User],
  resource: [Doc],
  context: { addr: ipaddr, tags?: Set<String> },
};
"#;

const SCHEMA_POLICIES: &str = r#"
@id("office-reads")
permit (principal, action == Action::"read", resource)
when { context.addr.isInRange(ip("10.0.0.0/8")) && principal.level >= 1 };
"#;

const SCHEMA_ENTITIES: &str = r#"[
  {"uid": {"type": "User", "id": "alice"}, "attrs": {"level": 2}, "parents": []},
  {"uid": {"type": "Doc", "id": "plan"}, "attrs": {"owner": {"type": "User", "id": "alice"}}, "parents": []}
]"#;

fn schema_fixture() -> TempDir {
    fixture(&[
        ("schema.cedarschema", SCHEMA),
        ("policies.cedar", SCHEMA_POLICIES),
        ("data.entities.json", SCHEMA_ENTITIES),
    ])
}

fn schema_read(who: &str, addr: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        context_json: format!(r#"{{"addr": "{addr}"}}"#),
        ..read(who, "plan")
    }
}

// ---------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn allow_and_deny() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let resp = authorize(&mut client, read("alice", "d")).await;
    assert_decision(&resp, Decision::Allow, &["alice-reads"]);

    // No policy applies to bob: a deny is a normal response, not an error.
    let resp = authorize(&mut client, read("bob", "d")).await;
    assert_decision(&resp, Decision::Deny, &[]);

    // A permit that does not match the action does not apply either.
    let resp = authorize(
        &mut client,
        request(("User", "alice"), ("Action", "write"), ("Doc", "d")),
    )
    .await;
    assert_decision(&resp, Decision::Deny, &[]);
}

#[tokio::test]
async fn forbid_overrides_permit() {
    let dir = fixture(&[(
        "policies.cedar",
        r#"
@id("everyone-reads")
permit (principal, action == Action::"read", resource);

@id("no-secrets")
forbid (principal, action, resource == Doc::"secret");
"#,
    )]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let resp = authorize(&mut client, read("alice", "public")).await;
    assert_decision(&resp, Decision::Allow, &["everyone-reads"]);
    let resp = authorize(&mut client, read("alice", "secret")).await;
    assert_decision(&resp, Decision::Deny, &["no-secrets"]);
}

#[tokio::test]
async fn determining_policies_use_id_annotation_or_path_and_index() {
    let dir = fixture(&[
        (
            "a.cedar",
            r#"
@id("named")
permit (principal, action, resource);

permit (principal, action, resource);
"#,
        ),
        (
            "sub/x.cedar",
            r#"
forbid (principal == User::"mallory", action, resource);
permit (principal, action, resource);
"#,
        ),
    ]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let resp = authorize(&mut client, read("alice", "d")).await;
    assert_decision(
        &resp,
        Decision::Allow,
        &["a.cedar#1", "named", "sub/x.cedar#1"],
    );
    let resp = authorize(&mut client, read("mallory", "d")).await;
    assert_decision(&resp, Decision::Deny, &["sub/x.cedar#0"]);
}

#[tokio::test]
async fn evaluation_errors_name_the_policy_and_fail_closed() {
    let dir = fixture(&[
        (
            "policies.cedar",
            r#"
@id("needs-attr")
permit (principal, action, resource) when { principal.clearance >= 1 };

@id("bad-ip")
permit (principal, action, resource) when { ip(context.cidr).isIpv4() };

@id("bob-reads")
permit (principal == User::"bob", action, resource);
"#,
        ),
        (
            "users.entities.json",
            r#"[
  {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []},
  {"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": []}
]"#,
        ),
    ]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    // Both erroring policies are skipped; nothing else permits alice.
    let req = AuthorizeRequest {
        context_json: r#"{"cidr": "nope"}"#.to_string(),
        ..read("alice", "d")
    };
    let resp = authorize(&mut client, req).await;
    assert_eq!(resp.decision(), Decision::Deny);
    assert!(resp.determining_policies.is_empty(), "{resp:?}");
    let ids: Vec<_> = resp.errors.iter().map(|e| e.policy_id.as_str()).collect();
    assert_eq!(ids, ["bad-ip", "needs-attr"]);
    assert!(
        resp.errors[0].message.contains("nope"),
        "{:?}",
        resp.errors[0]
    );
    assert!(
        resp.errors[1].message.contains("clearance"),
        "{:?}",
        resp.errors[1]
    );

    // Errors are reported alongside an allow that another policy makes.
    let req = AuthorizeRequest {
        context_json: r#"{"cidr": "nope"}"#.to_string(),
        ..read("bob", "d")
    };
    let resp = authorize(&mut client, req).await;
    assert_eq!(resp.decision(), Decision::Allow);
    assert_eq!(resp.determining_policies, ["bob-reads"]);
    let ids: Vec<_> = resp.errors.iter().map(|e| e.policy_id.as_str()).collect();
    assert_eq!(ids, ["bad-ip", "needs-attr"]);
}

// ---------------------------------------------------------------------------
// Context
// ---------------------------------------------------------------------------

const TYPED_POLICY: &str = r#"
@id("typed")
permit (principal, action == Action::"check", resource)
when {
  context.addr.isInRange(ip("10.0.0.0/8")) &&
  context.price.lessThan(decimal("10.50")) &&
  context.at < datetime("2030-01-01") &&
  context.ttl < duration("1h") &&
  context.owner == User::"alice" &&
  context.tags.contains("blue") &&
  context.meta.depth >= 2 &&
  context.meta.ok &&
  context.name == "n"
};
"#;

fn typed_context(addr: &str) -> BTreeMap<String, proto::Value> {
    map(&[
        ("addr", ext("ip", addr)),
        ("price", ext("decimal", "9.99")),
        ("at", ext("datetime", "2026-05-04T12:00:00Z")),
        ("ttl", ext("duration", "30m")),
        ("owner", entity_ref("User", "alice")),
        ("tags", set(vec![string("blue"), string("red")])),
        (
            "meta",
            record(&[("depth", long(3)), ("ok", value(V::BoolValue(true)))]),
        ),
        ("name", string("n")),
    ])
}

fn json_context(addr: &str) -> String {
    serde_json::json!({
        "addr": {"__extn": {"fn": "ip", "arg": addr}},
        "price": {"__extn": {"fn": "decimal", "arg": "9.99"}},
        "at": {"__extn": {"fn": "datetime", "arg": "2026-05-04T12:00:00Z"}},
        "ttl": {"__extn": {"fn": "duration", "arg": "30m"}},
        "owner": {"__entity": {"type": "User", "id": "alice"}},
        "tags": ["blue", "red"],
        "meta": {"depth": 3, "ok": true},
        "name": "n",
    })
    .to_string()
}

#[tokio::test]
async fn typed_context_and_context_json_agree() {
    let dir = fixture(&[("policies.cedar", TYPED_POLICY)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let check = || request(("User", "alice"), ("Action", "check"), ("Doc", "d"));

    for (addr, decision, determining) in [
        ("10.1.2.3", Decision::Allow, &["typed"][..]),
        ("192.168.0.1", Decision::Deny, &[][..]),
    ] {
        let typed = AuthorizeRequest {
            context: typed_context(addr),
            ..check()
        };
        let json = AuthorizeRequest {
            context_json: json_context(addr),
            ..check()
        };
        let typed = authorize(&mut client, typed).await;
        let json = authorize(&mut client, json).await;
        assert_decision(&typed, decision, determining);
        assert_decision(&json, decision, determining);
    }

    // Without a schema a plain string stays a string, so `isInRange` errors.
    let mut context = typed_context("10.1.2.3");
    context.insert("addr".to_string(), string("10.1.2.3"));
    let resp = authorize(&mut client, AuthorizeRequest { context, ..check() }).await;
    assert_eq!(resp.decision(), Decision::Deny);
    assert_eq!(resp.errors.len(), 1, "{resp:?}");
    assert_eq!(resp.errors[0].policy_id, "typed");
}

#[tokio::test]
async fn schema_lets_ipaddr_be_sent_as_a_string() {
    let dir = schema_fixture();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let resp = authorize(&mut client, schema_read("alice", "10.1.2.3")).await;
    assert_decision(&resp, Decision::Allow, &["office-reads"]);
    let resp = authorize(&mut client, schema_read("alice", "192.168.1.1")).await;
    assert_decision(&resp, Decision::Deny, &[]);

    // The typed form: a plain string_value, and the explicit extension.
    for addr in [string("10.1.2.3"), ext("ip", "10.1.2.3")] {
        let req = AuthorizeRequest {
            context: map(&[("addr", addr)]),
            ..read("alice", "plan")
        };
        let resp = authorize(&mut client, req).await;
        assert_decision(&resp, Decision::Allow, &["office-reads"]);
    }
}

#[tokio::test]
async fn workload_reaches_context_as_a_record() {
    let dir = fixture(&[(
        "policies.cedar",
        r#"
@id("web-in-shop")
permit (principal, action, resource)
when {
  context.workload.spiffe_id == "spiffe://example.org/ns/shop/sa/web" &&
  context.workload.namespace == "shop" &&
  context.workload.service_account == "web" &&
  context.workload.labels.contains("app=web") &&
  context.workload.labels.contains("tier=front")
};
"#,
    )]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let workload = |ns: &str| proto::Workload {
        spiffe_id: format!("spiffe://example.org/ns/{ns}/sa/web"),
        namespace: ns.to_string(),
        service_account: "web".to_string(),
        labels: [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };

    let req = AuthorizeRequest {
        workload: Some(workload("shop")),
        ..read("alice", "d")
    };
    assert_decision(
        &authorize(&mut client, req).await,
        Decision::Allow,
        &["web-in-shop"],
    );
    let req = AuthorizeRequest {
        workload: Some(workload("dev")),
        ..read("alice", "d")
    };
    assert_decision(&authorize(&mut client, req).await, Decision::Deny, &[]);
}

// ---------------------------------------------------------------------------
// INVALID_ARGUMENT
// ---------------------------------------------------------------------------

#[tokio::test]
async fn missing_or_malformed_uids_are_invalid() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let req = AuthorizeRequest {
        principal: None,
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`principal`", "is required"]).await;
    let req = AuthorizeRequest {
        action: None,
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`action`", "is required"]).await;
    let req = AuthorizeRequest {
        resource: None,
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`resource`", "is required"]).await;
    let req = AuthorizeRequest {
        resource: uid("", "d"),
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`resource.type`", "is required"]).await;

    let req = AuthorizeRequest {
        principal: uid("not a type", "x"),
        ..read("alice", "d")
    };
    let status = invalid(
        &mut client,
        req,
        &[
            "`principal.type`",
            "`not a type` is not a valid Cedar entity type",
        ],
    )
    .await;
    // The status carries a google.rpc.BadRequest naming the field.
    let bad_request = status
        .get_details_bad_request()
        .expect("a BadRequest detail");
    assert_eq!(bad_request.field_violations.len(), 1);
    assert_eq!(bad_request.field_violations[0].field, "principal.type");
    assert_eq!(
        bad_request.field_violations[0].description,
        status.message()
    );

    // Entity references inside context and entities are checked too.
    let req = AuthorizeRequest {
        context: map(&[("who", entity_ref("not a type", "x"))]),
        ..read("alice", "d")
    };
    invalid(
        &mut client,
        req,
        &["`context.who.type`", "not a valid Cedar entity type"],
    )
    .await;
}

#[tokio::test]
async fn bad_values_are_invalid() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let with_context = |fields: &[(&str, proto::Value)]| AuthorizeRequest {
        context: map(fields),
        ..read("alice", "d")
    };

    invalid(
        &mut client,
        with_context(&[("addr", ext("ip", "nope"))]),
        &["nope"],
    )
    .await;
    invalid(
        &mut client,
        with_context(&[("x", ext("sqrt", "4"))]),
        &["`context.x`", "unknown extension function `sqrt`"],
    )
    .await;
    invalid(
        &mut client,
        with_context(&[("x", proto::Value { value: None })]),
        &["`context.x`", "value is empty"],
    )
    .await;
    invalid(
        &mut client,
        with_context(&[("s", set(vec![long(1), proto::Value { value: None }]))]),
        &["`context.s[1]`", "value is empty"],
    )
    .await;
}

#[tokio::test]
async fn bad_context_or_entities_encoding_is_invalid() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let req = AuthorizeRequest {
        context: map(&[("a", long(1))]),
        context_json: r#"{"a": 1}"#.to_string(),
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`context_json`", "both set"]).await;

    let req = AuthorizeRequest {
        context_json: "[1, 2]".to_string(),
        ..read("alice", "d")
    };
    invalid(
        &mut client,
        req,
        &["`context_json`", "must be a JSON object"],
    )
    .await;

    let req = AuthorizeRequest {
        context_json: "{not json".to_string(),
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`context_json`", "invalid JSON"]).await;

    let req = AuthorizeRequest {
        entities_json: r#"{"uid": {"type": "User", "id": "alice"}}"#.to_string(),
        ..read("alice", "d")
    };
    invalid(
        &mut client,
        req,
        &["`entities_json`", "must be a JSON array"],
    )
    .await;

    let req = AuthorizeRequest {
        entities_json: "[{".to_string(),
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`entities_json`", "invalid JSON"]).await;

    // An entity without a uid.
    let req = AuthorizeRequest {
        entities: vec![proto::Entity::default()],
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`entities[0].uid`", "is required"]).await;
}

#[tokio::test]
async fn workload_and_context_workload_conflict() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let workload = proto::Workload {
        spiffe_id: "spiffe://example.org/ns/a/sa/b".to_string(),
        ..Default::default()
    };

    let req = AuthorizeRequest {
        workload: Some(workload.clone()),
        context: map(&[("workload", string("mine"))]),
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`context.workload`", "reserved"]).await;
    let req = AuthorizeRequest {
        workload: Some(workload),
        context_json: r#"{"workload": "mine"}"#.to_string(),
        ..read("alice", "d")
    };
    invalid(&mut client, req, &["`context.workload`", "reserved"]).await;
}

#[tokio::test]
async fn requests_that_break_the_schema_are_invalid() {
    let dir = schema_fixture();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    // An action the schema does not declare.
    let req = AuthorizeRequest {
        action: uid("Action", "delete"),
        ..schema_read("alice", "10.1.2.3")
    };
    invalid(&mut client, req, &["delete"]).await;

    // A principal type the action does not apply to.
    let req = AuthorizeRequest {
        principal: uid("Doc", "plan"),
        ..schema_read("alice", "10.1.2.3")
    };
    let status = invalid(&mut client, req, &["`Doc`", "principal"]).await;
    let bad_request = status.get_details_bad_request().unwrap();
    assert_eq!(bad_request.field_violations[0].field, "request");

    // A context attribute of the wrong type, in both encodings. (Cedar's
    // message for a non-string `ipaddr` does not name the attribute.)
    let req = AuthorizeRequest {
        context_json: r#"{"addr": 5}"#.to_string(),
        ..read("alice", "plan")
    };
    invalid(
        &mut client,
        req,
        &["invalid context", "expected string, got long"],
    )
    .await;
    let req = AuthorizeRequest {
        context: map(&[("addr", value(V::BoolValue(true)))]),
        ..read("alice", "plan")
    };
    invalid(
        &mut client,
        req,
        &["invalid context", "expected string, got bool"],
    )
    .await;
    let req = AuthorizeRequest {
        context: map(&[("addr", string("10.1.2.3")), ("tags", string("x"))]),
        ..read("alice", "plan")
    };
    invalid(
        &mut client,
        req,
        &["invalid context", "type mismatch", "[string]", "\"x\""],
    )
    .await;
    // A set of the wrong element type gets past parsing, and fails the
    // request's check against the schema.
    let req = AuthorizeRequest {
        context: map(&[("addr", string("10.1.2.3")), ("tags", set(vec![long(1)]))]),
        ..read("alice", "plan")
    };
    let status = invalid(
        &mut client,
        req,
        &[
            "request does not match the schema",
            "is not valid for `Action::\"read\"`",
        ],
    )
    .await;
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "request"
    );
    // An attribute the schema does not declare.
    let req = AuthorizeRequest {
        context_json: r#"{"addr": "10.1.2.3", "extra": 1}"#.to_string(),
        ..read("alice", "plan")
    };
    invalid(
        &mut client,
        req,
        &["invalid context", "`extra` should not exist"],
    )
    .await;
    // A context missing a required attribute.
    let req = AuthorizeRequest {
        context_json: r#"{"tags": []}"#.to_string(),
        ..read("alice", "plan")
    };
    invalid(&mut client, req, &["invalid context", "addr"]).await;
}

/// The message must say which attribute is wrong, not only that the entities
/// did not deserialize.
#[tokio::test]
async fn request_entity_with_an_undeclared_attribute_is_invalid() {
    let dir = schema_fixture();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    // A well-formed entity that is not stored is accepted and used.
    let req = AuthorizeRequest {
        entities: vec![entity("User", "carol", &[("level", long(1))], &[])],
        ..schema_read("carol", "10.1.2.3")
    };
    let resp = authorize(&mut client, req).await;
    assert_decision(&resp, Decision::Allow, &["office-reads"]);

    // The same entity with an attribute the schema does not declare.
    let req = AuthorizeRequest {
        entities: vec![entity(
            "User",
            "carol",
            &[("level", long(1)), ("nickname", string("c"))],
            &[],
        )],
        ..schema_read("carol", "10.1.2.3")
    };
    invalid(&mut client, req, &["invalid entities", "nickname"]).await;
}

#[tokio::test]
async fn request_entities_cannot_redefine_stored_ones() {
    let dir = schema_fixture();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    // alice is stored with level 2; a request cannot lower it to 0 ...
    let req = AuthorizeRequest {
        entities: vec![entity("User", "alice", &[("level", long(0))], &[])],
        ..schema_read("alice", "10.1.2.3")
    };
    let status = invalid(
        &mut client,
        req,
        &["cannot be redefined by a request", "alice"],
    )
    .await;
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "entities"
    );
    // ... nor give it a new parent, in the JSON encoding.
    let req = AuthorizeRequest {
        entities_json: r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {"level": 2},
                           "parents": [{"type": "Group", "id": "admins"}]}]"#
            .to_string(),
        ..schema_read("alice", "10.1.2.3")
    };
    invalid(&mut client, req, &["cannot be redefined by a request"]).await;

    // An identical copy is fine, typed or as JSON.
    let req = AuthorizeRequest {
        entities: vec![entity("User", "alice", &[("level", long(2))], &[])],
        ..schema_read("alice", "10.1.2.3")
    };
    assert_decision(
        &authorize(&mut client, req).await,
        Decision::Allow,
        &["office-reads"],
    );
    let req = AuthorizeRequest {
        entities_json:
            r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {"level": 2}, "parents": []}]"#
                .to_string(),
        ..schema_read("alice", "10.1.2.3")
    };
    assert_decision(
        &authorize(&mut client, req).await,
        Decision::Allow,
        &["office-reads"],
    );
}

// ---------------------------------------------------------------------------
// Readiness, ids and status
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unavailable_before_any_set_is_loaded() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    // Never reloaded, so no snapshot is live.
    let store = PolicyStore::new(dir.path(), LoadOptions::default());
    let store = Arc::new(store);
    let metrics = Arc::new(cedar_pdp::metrics::Metrics::new());
    let service = AuthorizerService::new(store, Default::default(), metrics).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizerServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stopped.await;
                },
            ),
    );
    let mut client = AuthorizerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let status = client.authorize(read("alice", "d")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "no policy set is loaded yet");
    let batch = BatchAuthorizeRequest {
        requests: vec![read("alice", "d")],
        ..Default::default()
    };
    let status = client.batch_authorize(batch).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Status still answers, showing that nothing has loaded.
    let s = policy_status(&mut client).await;
    assert_eq!(s.generation, 0);
    assert_eq!(s.revision, "");
    assert!(s.loaded_at.is_none());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn ids_and_revision_in_responses() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let revision = policy_status(&mut client).await.revision;
    assert!(revision.starts_with("sha256:"), "{revision}");
    assert_eq!(revision.len(), "sha256:".len() + 16, "{revision}");

    let mut decision_ids = HashSet::new();
    for i in 0..5 {
        let req = AuthorizeRequest {
            request_id: format!("req-{i}"),
            ..read(if i % 2 == 0 { "alice" } else { "bob" }, "d")
        };
        let resp = authorize(&mut client, req).await;
        assert_eq!(resp.request_id, format!("req-{i}"));
        assert_eq!(resp.policy_revision, revision);
        let id = uuid::Uuid::parse_str(&resp.decision_id).expect("decision_id is a UUID");
        assert_eq!(id.get_version_num(), 7, "{id}");
        assert!(decision_ids.insert(resp.decision_id), "decision ids repeat");
    }

    // No request id: an empty echo.
    let resp = authorize(&mut client, read("alice", "d")).await;
    assert_eq!(resp.request_id, "");
}

#[tokio::test]
async fn policy_status_describes_the_live_set() {
    let before = SystemTime::now();
    let dir = schema_fixture();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let s = policy_status(&mut client).await;
    assert_eq!(s.generation, 1);
    assert_eq!(s.policy_count, 1);
    // Two entities from the file, plus the schema's one action entity.
    assert_eq!(s.entity_count, 3);
    assert!(s.schema_loaded);
    assert_eq!(s.last_reload_error, "");
    let loaded_at = SystemTime::try_from(s.loaded_at.expect("loaded_at")).unwrap();
    let attempt_at = SystemTime::try_from(s.last_reload_attempt_at.expect("attempt_at")).unwrap();
    let slack = Duration::from_secs(1);
    assert!(
        loaded_at + slack >= before && loaded_at <= SystemTime::now(),
        "{s:?}"
    );
    assert!(attempt_at >= loaded_at, "{s:?}");

    // Without a schema.
    let dir = fixture(&[("a.cedar", SIMPLE_POLICIES), ("b/c.cedar", SCHEMA_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let s = policy_status(&mut server.client().await).await;
    assert_eq!(s.generation, 1);
    assert_eq!(s.policy_count, 3);
    assert_eq!(s.entity_count, 0);
    assert!(!s.schema_loaded);
}

// ---------------------------------------------------------------------------
// BatchAuthorize
// ---------------------------------------------------------------------------

#[tokio::test]
async fn batch_answers_in_order_with_shared_entities() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let revision = policy_status(&mut client).await.revision;

    let with_id = |req: AuthorizeRequest, id: &str| AuthorizeRequest {
        request_id: id.to_string(),
        ..req
    };
    let batch = BatchAuthorizeRequest {
        requests: vec![
            with_id(read("alice", "d"), "0"),
            with_id(read("bob", "d"), "1"),
            // carol and dave are in the team only through the shared entities.
            with_id(read("carol", "d"), "2"),
            with_id(
                AuthorizeRequest {
                    principal: None,
                    ..read("alice", "d")
                },
                "3",
            ),
            with_id(read("dave", "d"), "4"),
            with_id(
                AuthorizeRequest {
                    context_json: "[]".to_string(),
                    ..read("alice", "d")
                },
                "5",
            ),
        ],
        entities: vec![entity("User", "carol", &[], &[("Group", "team")])],
        entities_json: r#"[{"uid": {"type": "User", "id": "dave"}, "attrs": {},
                            "parents": [{"type": "Group", "id": "team"}]}]"#
            .to_string(),
    };
    let responses = client
        .batch_authorize(batch)
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert_eq!(responses.len(), 6);

    let ids: Vec<_> = responses.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4", "5"]);
    assert_decision(&responses[0], Decision::Allow, &["alice-reads"]);
    assert_decision(&responses[1], Decision::Deny, &[]);
    assert_decision(&responses[2], Decision::Allow, &["team-reads"]);
    assert_decision(&responses[4], Decision::Allow, &["team-reads"]);

    // Invalid items fail closed on their own, with the reason.
    for (i, message) in [
        (3, "`requests[3].principal`: is required"),
        (5, "`requests[5].context_json`: must be a JSON object"),
    ] {
        let r = &responses[i];
        assert_eq!(r.decision(), Decision::Deny);
        assert!(r.determining_policies.is_empty());
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert_eq!(r.errors[0].policy_id, "");
        assert_eq!(r.errors[0].message, message);
    }

    // One revision for the whole batch, and a fresh decision id per item.
    assert!(responses.iter().all(|r| r.policy_revision == revision));
    let unique: HashSet<_> = responses.iter().map(|r| &r.decision_id).collect();
    assert_eq!(unique.len(), responses.len());

    // An item that breaks entity merging is named by index, too.
    let batch = BatchAuthorizeRequest {
        requests: vec![
            read("alice", "d"),
            AuthorizeRequest {
                entities_json: r#"[{"uid": {"type": "User", "id": "carol"}, "attrs": {"x": 1}, "parents": []}]"#
                    .to_string(),
                ..read("carol", "d")
            },
        ],
        entities: vec![entity("User", "carol", &[], &[("Group", "team")])],
        ..Default::default()
    };
    let responses = client
        .batch_authorize(batch)
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert_decision(&responses[0], Decision::Allow, &["alice-reads"]);
    assert_eq!(responses[1].decision(), Decision::Deny);
    assert!(
        responses[1].errors[0]
            .message
            .starts_with("`requests[1]`: "),
        "{:?}",
        responses[1]
    );
}

#[tokio::test]
async fn batch_invalid_shared_entities_or_too_many_items_are_invalid() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let mut config = test_config(dir.path());
    config.limits.max_batch_size = 3;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let batch = |n: usize| BatchAuthorizeRequest {
        requests: (0..n).map(|_| read("alice", "d")).collect(),
        ..Default::default()
    };
    let ok = client.batch_authorize(batch(3)).await.unwrap().into_inner();
    assert_eq!(ok.responses.len(), 3);

    let status = client.batch_authorize(batch(4)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "batch has 4 requests; the limit is 3 (`limits.max_batch_size`)"
    );
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "requests"
    );

    // Shared entities that do not parse fail the whole batch.
    let bad_shared = BatchAuthorizeRequest {
        entities_json: "{}".to_string(),
        ..batch(2)
    };
    let status = client.batch_authorize(bad_shared).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("`entities_json`"), "{status:?}");

    // An empty batch is answered with no responses.
    let empty = client.batch_authorize(batch(0)).await.unwrap().into_inner();
    assert!(empty.responses.is_empty());
}

// ---------------------------------------------------------------------------
// Health, reflection, limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let health = HealthClient::new(channel(&server).await);

    for service in ["", "cedar_pdp.v1.Authorizer"] {
        // Health turns SERVING from a task that follows the store.
        eventually(
            &format!("health of `{service}` to be SERVING"),
            Duration::from_secs(10),
            || {
                let mut health = health.clone();
                async move {
                    let resp = health
                        .check(HealthCheckRequest {
                            service: service.to_string(),
                        })
                        .await
                        .ok()?
                        .into_inner();
                    (resp.status() == ServingStatus::Serving).then_some(())
                }
            },
        )
        .await;
    }

    let status = health
        .clone()
        .check(HealthCheckRequest {
            service: "no.such.Service".to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_the_authorizer() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let server = TestServer::start(dir.path()).await;
    let mut reflection = ServerReflectionClient::new(channel(&server).await);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a reflection response within 10s")
        .unwrap()
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: HashSet<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains("cedar_pdp.v1.Authorizer"), "{names:?}");
    assert!(names.contains("grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test]
async fn oversized_message_is_rejected() {
    let dir = fixture(&[("policies.cedar", SIMPLE_POLICIES)]);
    let mut config = test_config(dir.path());
    config.limits.max_message_bytes = 1024;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let big = AuthorizeRequest {
        request_id: "x".repeat(4096),
        ..read("alice", "d")
    };
    let status = client.authorize(big).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // The server is unharmed: a small request still gets its answer.
    let resp = authorize(&mut client, read("alice", "d")).await;
    assert_decision(&resp, Decision::Allow, &["alice-reads"]);
}

// ---------------------------------------------------------------------------
// The shipped example in policies/
// ---------------------------------------------------------------------------

fn example_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
}

const FRONTEND: &str = "spiffe://example.org/ns/shop/sa/frontend";
const CHECKOUT: &str = "spiffe://example.org/ns/shop/sa/checkout";
const BATCH: &str = "spiffe://example.org/ns/legacy/sa/batch";
const PAYMENTS_API: &str = "spiffe://example.org/ns/payments/sa/api";
const ASSISTANT: &str = "spiffe://example.org/ns/support/sa/assistant";

fn mesh_call(workload: &str, resource: (&str, &str), context: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        context_json: context.to_string(),
        ..request(
            ("Mesh::Workload", workload),
            ("Mesh::Action", "call"),
            resource,
        )
    }
}

/// The agent reads `secret` for `user` along a chain the caller sends:
/// not verified, since no token issuer is configured for the example.
fn agent_read(secret: &str, user: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        context_json: serde_json::json!({"source_ip": "10.0.7.1"}).to_string(),
        delegation: vec![proto::DelegationHop {
            delegator: uid("Mesh::User", user),
            scopes: vec!["secrets:read".into()],
            expires_at: Some(prost_types::Timestamp {
                seconds: 4_070_908_800, // 2099-01-01
                nanos: 0,
            }),
            purpose: String::new(),
        }],
        purpose: "export for ticket 4711".into(),
        ..request(
            ("Mesh::Agent", ASSISTANT),
            ("Mesh::Action", "read_secret"),
            ("Mesh::Secret", secret),
        )
    }
}

#[tokio::test]
async fn shipped_example_decides_as_documented() {
    let server = TestServer::start(example_dir()).await;
    let mut client = server.client().await;
    let checkout = ("Mesh::Service", "shop/checkout");
    let payments = ("Mesh::Service", "payments/api");

    let s = policy_status(&mut client).await;
    assert!(s.schema_loaded);
    assert_eq!(s.policy_count, 16);
    // 24 entities in mesh.entities.json plus the nine action entities (`call`,
    // `read_secret` and the seven HTTP methods).
    assert_eq!(s.entity_count, 33);

    let cases: Vec<(&str, AuthorizeRequest, Decision, &[&str])> = vec![
        (
            "1: same namespace",
            mesh_call(FRONTEND, checkout, r#"{"source_ip": "10.0.1.7"}"#),
            Decision::Allow,
            &["mesh.same-namespace"],
        ),
        (
            "2: the quarantine network overrides the permit",
            mesh_call(FRONTEND, checkout, r#"{"source_ip": "10.99.0.12"}"#),
            Decision::Deny,
            &["network.quarantine-cidr"],
        ),
        (
            "3: a namespace the service opens to, from inside its zone",
            mesh_call(CHECKOUT, payments, r#"{"source_ip": "10.20.3.4"}"#),
            Decision::Allow,
            &["mesh.allowed-namespaces"],
        ),
        (
            "3: the same from outside the zone",
            mesh_call(FRONTEND, payments, r#"{"source_ip": "10.0.1.7"}"#),
            Decision::Deny,
            &["network.outside-service-zone"],
        ),
        (
            "4: a quarantined namespace",
            mesh_call(
                BATCH,
                ("Mesh::Service", "legacy/reports"),
                r#"{"source_ip": "10.0.4.2"}"#,
            ),
            Decision::Deny,
            &["network.quarantined-namespace"],
        ),
        (
            "5: a chain the caller asserts is not verified, even for a cleared user",
            agent_read("support/customer-export", "alice"),
            Decision::Deny,
            &[],
        ),
        (
            "6: restricted secrets never go to agents",
            agent_read("support/signing-key", "alice"),
            Decision::Deny,
            &["agents.no-restricted-secrets"],
        ),
        (
            "a route of a same-namespace service",
            mesh_call(
                FRONTEND,
                ("Mesh::HttpRoute", "shop/checkout:POST /orders"),
                r#"{"source_ip": "10.0.1.7"}"#,
            ),
            Decision::Allow,
            &["mesh.same-namespace"],
        ),
        (
            "a workload listed as a secret's reader",
            AuthorizeRequest {
                context_json:
                    r#"{"source_ip": "10.20.0.9", "request_time": "2026-05-04T12:03:00Z"}"#
                        .to_string(),
                ..request(
                    ("Mesh::Workload", PAYMENTS_API),
                    ("Mesh::Action", "read_secret"),
                    ("Mesh::Secret", "payments/stripe-key"),
                )
            },
            Decision::Allow,
            &["mesh.secret-readers"],
        ),
        (
            "an identity outside the trust domain",
            mesh_call(
                "spiffe://evil.example/ns/shop/sa/frontend",
                checkout,
                r#"{"source_ip": "10.0.1.7"}"#,
            ),
            Decision::Deny,
            &["network.foreign-trust-domain"],
        ),
    ];
    for (name, req, decision, determining) in cases {
        let resp = authorize(&mut client, req).await;
        assert_eq!(resp.decision(), decision, "{name}: {resp:?}");
        assert_eq!(resp.determining_policies, determining, "{name}: {resp:?}");
        assert!(
            name.starts_with("an identity") || resp.errors.is_empty(),
            "{name}: {resp:?}"
        );
    }

    // The `workload` field reaches `context.workload`, typed by the schema:
    // the peer's certificate must name the principal.
    let workload = |spiffe_id: &str, ns: &str, sa: &str| proto::Workload {
        spiffe_id: spiffe_id.to_string(),
        namespace: ns.to_string(),
        service_account: sa.to_string(),
        labels: [("app".to_string(), "web".to_string())].into(),
    };
    let typed_call = |w: proto::Workload| AuthorizeRequest {
        context: map(&[("source_ip", string("10.0.1.7"))]),
        workload: Some(w),
        ..request(
            ("Mesh::Workload", FRONTEND),
            ("Mesh::Action", "call"),
            checkout,
        )
    };
    let resp = authorize(
        &mut client,
        typed_call(workload(FRONTEND, "shop", "frontend")),
    )
    .await;
    assert_decision(&resp, Decision::Allow, &["mesh.same-namespace"]);
    let resp = authorize(&mut client, typed_call(workload(BATCH, "legacy", "batch"))).await;
    assert_decision(&resp, Decision::Deny, &["network.spiffe-id-mismatch"]);

    // The schema applies to requests: `source_ip` must be an address.
    let req = mesh_call(FRONTEND, checkout, r#"{"source_ip": "not-an-ip"}"#);
    invalid(&mut client, req, &["invalid context"]).await;
}

/// An empty context skips the parse only where the load found Cedar accepts
/// `{}` for the action: an action whose context needs an attribute still
/// gets the parse's error, word for word, and one whose attributes are all
/// optional decides as with the parse.
#[tokio::test]
async fn an_empty_context_is_refused_or_decided_exactly_as_the_parse_would() {
    let schema = r#"
entity User;
entity Doc;
action read appliesTo { principal: [User], resource: [Doc], context: { addr: ipaddr } };
action list appliesTo { principal: [User], resource: [Doc], context: { tags?: Set<String> } };
action peek appliesTo { principal: [User], resource: [Doc] };
"#;
    let policies = r#"
@id("list-without-tags")
permit (principal, action == Action::"list", resource) when { !(context has tags) };
@id("peek")
permit (principal, action == Action::"peek", resource);
"#;
    let dir = fixture(&[("schema.cedarschema", schema), ("policies.cedar", policies)]);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let ask = |action: &str, context: &str| AuthorizeRequest {
        context_json: context.to_string(),
        ..request(("User", "alice"), ("Action", action), ("Doc", "d"))
    };

    // `read` needs `addr`: refused, and the same message for `{}` as for
    // no context at all (the shortcut's path) and for a context that
    // carries only something else.
    let none = invalid(&mut client, ask("read", ""), &["addr"]).await;
    let empty = invalid(&mut client, ask("read", "{}"), &["addr"]).await;
    assert_eq!(none.message(), empty.message());
    // The context's own error (`invalid_context`), not the request check's.
    for status in [&none, &empty] {
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, "context", "{status:?}");
    }

    for context in ["", "{}"] {
        let resp = authorize(&mut client, ask("list", context)).await;
        assert_decision(&resp, Decision::Allow, &["list-without-tags"]);
        let resp = authorize(&mut client, ask("peek", context)).await;
        assert_decision(&resp, Decision::Allow, &["peek"]);
    }
    let resp = authorize(&mut client, ask("list", r#"{"tags": ["a"]}"#)).await;
    assert_decision(&resp, Decision::Deny, &[]);
    server.stop().await.unwrap();
}
