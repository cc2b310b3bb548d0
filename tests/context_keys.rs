//! The context keys the server does not vouch for stay the user's. A schema
//! written before the server had a `purpose` field, with its own
//! `context.purpose`, decides as Cedar's own authorizer does; the field and
//! the user's key may agree but not differ; and every server key can be
//! renamed so that a user's key of the same name is left alone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::str::FromStr;

use cedar_pdp::grpc::proto::{self, AuthorizeRequest};
use common::{TestServer, request, test_config};
use serde_json::{Value as Json, json};

const SCHEMA: &str = r#"
entity User;
entity Doc;
action read appliesTo {
  principal: [User],
  resource: [Doc],
  context: { purpose: String, ticket?: Long },
};
"#;

const POLICY: &str = r#"
@id("audits-read")
permit (principal, action == Action::"read", resource)
when { context.purpose == "audit" };
@id("no-negative-tickets")
forbid (principal, action, resource)
when { context has ticket && context.ticket < 0 };
"#;

const ENTITIES: &str = r#"[
  {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": []}
]"#;

/// What Cedar's own authorizer decides for alice reading `d` with `context`.
fn cedar_decides(context: &Json) -> bool {
    use cedar_policy::{
        Authorizer, Context, Decision, Entities, EntityUid, PolicySet, Request, Schema,
    };
    let (schema, _) = Schema::from_cedarschema_str(SCHEMA).unwrap();
    let policies = PolicySet::from_str(POLICY).unwrap();
    let entities = Entities::from_json_str(ENTITIES, Some(&schema)).unwrap();
    let action = EntityUid::from_str(r#"Action::"read""#).unwrap();
    let context = Context::from_json_value(context.clone(), Some((&schema, &action))).unwrap();
    let request = Request::new(
        EntityUid::from_str(r#"User::"alice""#).unwrap(),
        action,
        EntityUid::from_str(r#"Doc::"d""#).unwrap(),
        context,
        Some(&schema),
    )
    .unwrap();
    Authorizer::new()
        .is_authorized(&request, &policies, &entities)
        .decision()
        == Decision::Allow
}

fn read(context: &Json, purpose: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        context_json: context.to_string(),
        purpose: purpose.into(),
        ..request(("User", "alice"), ("Action", "read"), ("Doc", "d"))
    }
}

async fn decide(server: &TestServer, req: AuthorizeRequest) -> Result<bool, tonic::Status> {
    server
        .client()
        .await
        .authorize(req)
        .await
        .map(|r| r.into_inner().decision == proto::Decision::Allow as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_with_its_own_purpose_decides_as_cedar_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    std::fs::write(dir.path().join("e.entities.json"), ENTITIES).unwrap();
    let server = TestServer::start(dir.path()).await;
    let contexts = [
        json!({"purpose": "audit"}),
        json!({"purpose": "fun"}),
        json!({"purpose": "audit", "ticket": 7}),
        json!({"purpose": "audit", "ticket": -1}),
    ];
    let mut allowed = 0;
    for context in &contexts {
        let expected = cedar_decides(context);
        allowed += usize::from(expected);
        let got = decide(&server, read(context, ""))
            .await
            .unwrap_or_else(|s| panic!("{context}: refused: {s:?}"));
        assert_eq!(got, expected, "{context}");
    }
    assert_eq!(allowed, 2, "the cases cover both decisions");
    // The field and the user's key may say the same purpose.
    assert!(decide(&server, read(&contexts[0], "audit")).await.unwrap());
    // The field alone fills the key, as it always has.
    assert!(decide(&server, read(&json!({}), "audit")).await.unwrap());
    // Two different purposes are a contradiction, named.
    let status = decide(&server, read(&contexts[1], "audit"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("context.purpose") && status.message().contains("audit"),
        "{status:?}"
    );
    // AuthZEN carries the purpose in its context: the same decisions.
    for context in &contexts {
        let body = json!({
            "subject": {"type": "User", "id": "alice"},
            "action": {"name": "read"},
            "resource": {"type": "Doc", "id": "d"},
            "context": context,
        });
        let (_, text) = common::authzen_evaluation(server.authzen_addr, &body).await;
        let answer: Json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(
            answer["decision"],
            cedar_decides(context),
            "{context}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_server_keys_leave_the_users_own() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"@id("declared-audit-for-a-fun-ticket")
        permit (principal, action, resource)
        when { context has declared_purpose && context.declared_purpose == "audit" &&
               context has purpose && context.purpose == "fun" &&
               context has chain && context.chain.depth == 1 &&
               context has delegation && context.delegation == "mine" };"#,
    )
    .unwrap();
    let mut config = test_config(dir.path());
    config.context_keys.purpose = "declared_purpose".into();
    config.context_keys.delegation = "chain".into();
    let server = TestServer::start_with(config).await;
    let mut req = read(&json!({"purpose": "fun", "delegation": "mine"}), "audit");
    req.delegation = vec![proto::DelegationHop {
        delegator: common::uid("User", "bob"),
        ..Default::default()
    }];
    assert!(decide(&server, req.clone()).await.unwrap());
    // The renamed keys are the server's now.
    req.context_json = json!({"purpose": "fun", "chain": 1}).to_string();
    let status = decide(&server, req).await.unwrap_err();
    assert!(status.message().contains("context.chain"), "{status:?}");

    // A config whose keys collide is refused, every problem at once.
    let mut config = test_config(dir.path());
    config.context_keys.token = "delegation".into();
    config.caller.context_key = "workload".into();
    let problems = config.settings().unwrap_err().to_string();
    assert!(
        problems.contains("`context_keys.token`") && problems.contains("`caller.context_key`"),
        "{problems}"
    );
}
