//! Property tests of the conversions that feed the decision path, run
//! through the pipeline with its decision record: gRPC requests whose
//! delegation hops expire at the extremes of time, tokens (arbitrary text,
//! and signed tokens whose claims are arbitrary JSON, times at the
//! extremes included), and AuthZEN bodies of arbitrary JSON over the real
//! listener. None may panic: a panic on the decision path is refused as
//! `internal`, so no answer may be `internal` (or, over HTTP, a 500).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cedar_pdp::config::{DecisionLogConfig, IssuerConfig, LogSink, TokensConfig};
use cedar_pdp::decision_log::DecisionLog;
use cedar_pdp::grpc::convert::decision_request;
use cedar_pdp::grpc::proto;
use cedar_pdp::identity::PeerFacts;
use cedar_pdp::metrics::Metrics;
use cedar_pdp::pipeline::{Admission, Call, Pipeline, PipelineOptions, Reason};
use cedar_pdp::policy_store::{LoadOptions, PolicyStore};
use cedar_pdp::tokens::TokenVerifier;
use common::{TestServer, test_config};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Map, Value as Json, json};

const IDP: &str = "https://idp.example.com";
const CASES: u32 = 256;

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Seconds since the epoch: the edges of `i64`, of RFC 3339 (years 1 and
/// 9999), around now, and anything.
fn seconds() -> impl Strategy<Value = i64> {
    let now = now();
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-62_135_596_801),
        Just(-62_135_596_800),
        Just(-1),
        Just(0),
        Just(253_402_300_799),
        Just(253_402_300_800),
        (now - 100_000)..(now + 100_000),
        any::<i64>(),
    ]
}

fn nanos() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0),
        Just(999_999_999),
        Just(1_000_000_000),
        Just(-1),
        Just(i32::MAX),
        Just(i32::MIN),
        any::<i32>(),
    ]
}

/// Text: short, with quotes, escapes, controls and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z:/._\"\\\\ -]{0,12}",
        ".{0,8}",
        Just(String::new()),
        Just("alice".to_string()),
    ]
}

/// Any JSON value, nested a few levels, numbers at their edges.
fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        prop_oneof![
            Just(f64::MAX),
            Just(f64::MIN),
            Just(-0.0),
            Just(1e-300),
            any::<f64>()
        ]
        .prop_filter_map("finite", |f| f.is_finite().then_some(Json::from(f))),
        seconds().prop_map(Json::from),
        text().prop_map(Json::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::from),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// A time claim: soon (so the token verifies and its claims are read), a
/// number at the edges, or a value of the wrong kind.
fn time_claim(soon: i64) -> impl Strategy<Value = Json> {
    let now = now();
    prop_oneof![
        8 => Just(json!(now + soon)),
        2 => seconds().prop_map(Json::from),
        1 => json_value(),
    ]
}

/// Claims that mostly pass the issuer's checks, with the rest arbitrary.
fn claims() -> impl Strategy<Value = Json> {
    (
        prop_oneof![12 => Just(json!(IDP)), 1 => json_value()],
        prop_oneof![12 => Just(json!("alice")), 1 => json_value()],
        prop_oneof![12 => Just(json!(["cedar-pdp"])), 1 => json_value()],
        prop::option::weighted(0.9, time_claim(600)),
        prop::option::weighted(0.3, time_claim(-60)),
        prop::option::weighted(0.5, time_claim(-60)),
        prop::option::weighted(0.6, json_value()),
        prop::option::weighted(0.3, json_value()),
        prop::collection::btree_map(
            prop_oneof![
                Just("groups".to_string()),
                Just("client_id".to_string()),
                Just("azp".to_string()),
                text()
            ],
            json_value(),
            0..3,
        ),
    )
        .prop_map(|(iss, sub, aud, exp, nbf, iat, scope, act, extra)| {
            let mut claims: Map<String, Json> = extra.into_iter().collect();
            claims.insert("iss".into(), iss);
            claims.insert("sub".into(), sub);
            claims.insert("aud".into(), aud);
            for (key, value) in [
                ("exp", exp),
                ("nbf", nbf),
                ("iat", iat),
                ("scope", scope),
                ("act", act),
            ] {
                if let Some(value) = value {
                    claims.insert(key.into(), value);
                }
            }
            Json::Object(claims)
        })
}

/// An Ed25519 key, and its JWKS.
struct Signer {
    key: EncodingKey,
    jwks: String,
}

fn signer() -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k1",
                     "x": B64.encode(pair.public_key_raw())});
    Signer {
        key: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwks: json!({"keys": [jwk]}).to_string(),
    }
}

/// A token: arbitrary text, or `claims` signed by the issuer's key.
#[derive(Clone, Debug)]
enum Token {
    None,
    Text(String),
    Signed(Json),
}

fn token(none: u32) -> impl Strategy<Value = Token> {
    prop_oneof![
        none => Just(Token::None),
        1 => text().prop_map(Token::Text),
        1 => "[A-Za-z0-9_-]{1,10}\\.[A-Za-z0-9_-]{0,10}\\.[A-Za-z0-9_-]{0,10}".prop_map(Token::Text),
        12 => claims().prop_map(Token::Signed),
    ]
}

fn encode(token: &Token, key: &EncodingKey) -> String {
    match token {
        Token::None => String::new(),
        Token::Text(t) => t.clone(),
        Token::Signed(claims) => {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some("k1".into());
            jsonwebtoken::encode(&header, claims, key).unwrap()
        }
    }
}

fn euid(t: &str, id: String) -> Option<proto::EntityUid> {
    Some(proto::EntityUid {
        r#type: t.into(),
        id,
    })
}

fn hop() -> impl Strategy<Value = proto::DelegationHop> {
    (
        prop_oneof![3 => Just("bob".to_string()), 1 => text()],
        prop::collection::vec(text(), 0..3),
        prop::option::weighted(0.8, (seconds(), nanos())),
        text(),
    )
        .prop_map(|(id, scopes, expires, purpose)| proto::DelegationHop {
            delegator: euid("User", id),
            scopes,
            expires_at: expires.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            purpose,
        })
}

/// A gRPC request as its caller sends it: hops, purpose, tokens, context.
fn grpc_request() -> impl Strategy<Value = (proto::AuthorizeRequest, Token, Token)> {
    (
        prop::collection::vec(hop(), 0..3),
        text(),
        token(2),
        token(16),
        prop::option::weighted(0.4, json_value()),
    )
        .prop_map(|(delegation, purpose, subject, actor, context)| {
            let request = proto::AuthorizeRequest {
                principal: euid("User", "alice".into()),
                action: euid("Action", "read".into()),
                resource: euid("Doc", "d".into()),
                delegation,
                purpose,
                context_json: context.map(|c| c.to_string()).unwrap_or_default(),
                ..Default::default()
            };
            (request, subject, actor)
        })
}

/// gRPC conversion, token verification and claims, the delegation chain
/// and the decision record: never a panic.
#[test]
fn grpc_requests_tokens_and_hops_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("p.cedar"),
        "permit (principal, action, resource);\n\
         forbid (principal, action, resource) when { context has token && context.token has scope && context.token.scope == \"x\" };",
    )
    .unwrap();
    let signer = signer();
    let jwks = dir.path().join("idp.jwks.json");
    std::fs::write(&jwks, &signer.jwks).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = runtime.enter();
    let store = Arc::new(PolicyStore::new(&policies, LoadOptions::default()));
    store.reload().unwrap();
    let tokens = TokenVerifier::load(&TokensConfig {
        issuers: vec![IssuerConfig {
            issuer: IDP.into(),
            jwks_file: jwks,
            audiences: vec!["cedar-pdp".into()],
            principal_type: "User".into(),
            actor_type: String::new(),
        }],
        ..TokensConfig::default()
    })
    .unwrap()
    .map(Arc::new);
    let (log, writer) = DecisionLog::start(&DecisionLogConfig {
        enabled: true,
        sink: LogSink::File,
        path: dir.path().join("decisions.log"),
        ..DecisionLogConfig::default()
    })
    .unwrap();
    let options = PipelineOptions {
        tokens,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::new(store, options, Arc::new(Metrics::new()))
        .unwrap()
        .with_decision_log(log.clone());
    let admission = Admission::Acquire {
        timeout: Duration::from_secs(10),
    };

    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&grpc_request(), |(mut request, subject, actor)| {
            request.subject_token = encode(&subject, &signer.key);
            request.actor_token = encode(&actor, &signer.key);
            let call = Call::new(PeerFacts::default(), None, tracing::Span::none());
            let answer =
                runtime.block_on(pipeline.authorize(decision_request(request), &call, admission));
            if let Err(refusal) = answer {
                prop_assert_ne!(
                    refusal.error.reason,
                    Reason::Internal,
                    "{}",
                    refusal.error.message
                );
                prop_assert!(!refusal.error.message.is_empty());
            }
            Ok(())
        })
        .unwrap();
    drop((pipeline, log));
    runtime
        .block_on(writer.finish(Duration::from_secs(10)))
        .unwrap();
}

/// An AuthZEN entity: well formed, mostly, with arbitrary properties.
fn authzen_entity() -> impl Strategy<Value = Json> {
    prop_oneof![
        3 => (text(), text(), prop::option::weighted(0.5, json_value())).prop_map(|(t, id, props)| {
            let mut e = json!({"type": if t.is_empty() { "User".into() } else { t }, "id": id});
            if let Some(p) = props {
                e["properties"] = p;
            }
            e
        }),
        1 => json_value(),
    ]
}

fn authzen_body() -> impl Strategy<Value = Json> {
    (
        authzen_entity(),
        prop_oneof![3 => text().prop_map(|n| json!({"name": n})), 1 => json_value()],
        authzen_entity(),
        prop::option::weighted(0.5, json_value()),
        prop::option::weighted(0.3, json_value()),
        prop::option::weighted(
            0.3,
            prop::collection::vec(
                (authzen_entity(), authzen_entity())
                    .prop_map(|(s, r)| json!({"subject": s, "resource": r})),
                0..3,
            ),
        ),
    )
        .prop_map(
            |(subject, action, resource, context, options, evaluations)| {
                let mut body = json!({"subject": subject, "action": action, "resource": resource});
                if let Some(c) = context {
                    body["context"] = c;
                }
                if let Some(o) = options {
                    body["options"] = o;
                }
                if let Some(e) = evaluations {
                    body["evaluations"] = Json::from(e);
                }
                body
            },
        )
}

/// AuthZEN bodies of arbitrary JSON, over the real listener: every answer
/// is a status the API documents, with a JSON body, and never a 500.
#[test]
fn authzen_bodies_never_panic() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "permit (principal, action, resource) when { context has x && context.x == 1 };",
    )
    .unwrap();
    let server = runtime.block_on(TestServer::start_with(test_config(dir.path())));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(authzen_body(), any::<bool>()), |(body, batch)| {
            let path = if batch {
                "/access/v1/evaluations"
            } else {
                "/access/v1/evaluation"
            };
            let url = format!("http://{}{path}", server.authzen_addr);
            let (status, text) = runtime.block_on(async {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            });
            prop_assert!(
                matches!(status, 200 | 400 | 401 | 403),
                "{status} for {body}: {text}"
            );
            let answer: Json = serde_json::from_str(&text).unwrap();
            if status == 200 && batch {
                for item in answer["evaluations"].as_array().into_iter().flatten() {
                    let item_status = &item["context"]["error"]["status"];
                    prop_assert!(item_status != &json!(500), "{body}: {answer}");
                }
            }
            Ok(())
        })
        .unwrap();
    drop(server);
}
