//! Property tests: arbitrary requests through conversion, limits and
//! evaluation never panic, and every failure is an error value with a field
//! path; arbitrary Envoy `CheckRequest`s always get a well-formed answer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use cedar_pdp::config::OnForbidError;
use cedar_pdp::engine;
use cedar_pdp::grpc::convert::query_from_request;
use cedar_pdp::grpc::proto::{self, value::Value as V};
use cedar_pdp::pipeline::limits::Limits;
use cedar_pdp::policy_store::{LoadOptions, PolicyStore, Snapshot};
use common::{TestServer, test_config};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value as Json, json};

fn example_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
}

/// Loads `dir` once per process.
fn load(dir: &Path) -> Arc<Snapshot> {
    let store = PolicyStore::new(dir, LoadOptions::default());
    store.reload().expect("policies load");
    store.snapshot().expect("a snapshot after reload")
}

/// The shipped example (with a schema) and a schema-less set.
fn snapshots() -> &'static [Arc<Snapshot>; 2] {
    static SNAPSHOTS: OnceLock<[Arc<Snapshot>; 2]> = OnceLock::new();
    SNAPSHOTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            r#"
            @id("ctx")
            permit (principal, action, resource)
            when { context has x && context.x == principal };
            @id("in")
            permit (principal in Group::"g", action, resource);
            @id("ip")
            forbid (principal, action, resource)
            when { context has ip && context.ip.isInRange(ip("10.0.0.0/8")) };
            "#,
        )
        .unwrap();
        [load(example_dir()), load(dir.path())]
    })
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Entity type names: valid, namespaced, from the example schema, and junk.
fn type_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("User".to_string()),
        Just("Group".to_string()),
        Just("Mesh::Workload".to_string()),
        Just("Mesh::Action".to_string()),
        Just("Mesh::Service".to_string()),
        Just(String::new()),
        Just("::".to_string()),
        Just("A::".to_string()),
        "[A-Za-z_][A-Za-z0-9_]{0,8}(::[A-Za-z_][A-Za-z0-9_]{0,8}){0,2}",
        ".{0,12}",
    ]
}

fn entity_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("spiffe://example.org/ns/shop/sa/frontend".to_string()),
        Just("call".to_string()),
        Just("shop/checkout".to_string()),
        Just("g".to_string()),
        ".{0,16}",
    ]
}

fn euid() -> impl Strategy<Value = proto::EntityUid> {
    (type_name(), entity_id()).prop_map(|(t, id)| proto::EntityUid { r#type: t, id })
}

fn extension() -> impl Strategy<Value = proto::ExtensionValue> {
    let f = prop_oneof![
        Just("ip".to_string()),
        Just("decimal".to_string()),
        Just("datetime".to_string()),
        Just("duration".to_string()),
        ".{0,8}",
    ];
    let arg = prop_oneof![
        Just("10.1.2.3".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("::1".to_string()),
        Just("1.2345".to_string()),
        Just("2024-01-01T00:00:00Z".to_string()),
        Just("1h30m".to_string()),
        "[0-9./:a-fTZhms-]{0,20}",
        ".{0,12}",
    ];
    (f, arg).prop_map(|(f, arg)| proto::ExtensionValue { r#fn: f, arg })
}

/// Proto values up to 5 levels deep, with empty (unset) values too.
fn value() -> impl Strategy<Value = proto::Value> {
    let leaf = prop_oneof![
        Just(proto::Value { value: None }),
        any::<bool>().prop_map(|b| proto::Value {
            value: Some(V::BoolValue(b))
        }),
        any::<i64>().prop_map(|n| proto::Value {
            value: Some(V::LongValue(n))
        }),
        ".{0,12}".prop_map(|s| proto::Value {
            value: Some(V::StringValue(s))
        }),
        euid().prop_map(|u| proto::Value {
            value: Some(V::Entity(u))
        }),
        extension().prop_map(|e| proto::Value {
            value: Some(V::Extension(e))
        }),
    ];
    leaf.prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|values| proto::Value {
                value: Some(V::Set(proto::ValueSet { values }))
            }),
            prop::collection::btree_map(key(), inner, 0..4).prop_map(|fields| proto::Value {
                value: Some(V::Record(proto::ValueRecord { fields }))
            }),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x".to_string()),
        Just("ip".to_string()),
        Just("source_ip".to_string()),
        Just("workload".to_string()),
        Just("__entity".to_string()),
        Just("__extn".to_string()),
        ".{0,8}",
    ]
}

/// Arbitrary JSON up to 5 levels, including Cedar's escapes in odd shapes.
fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Json::String),
        (type_name(), entity_id()).prop_map(|(t, id)| json!({"__entity": {"type": t, "id": id}})),
        extension().prop_map(|e| json!({"__extn": {"fn": e.r#fn, "arg": e.arg}})),
    ];
    leaf.prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// `context_json`: empty, arbitrary text, any JSON, or an object.
fn context_json() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        ".{0,40}",
        json().prop_map(|j| j.to_string()),
        prop::collection::btree_map(key(), json(), 0..4)
            .prop_map(|m| Json::Object(m.into_iter().collect()).to_string()),
    ]
}

/// One entity in JSON, with fields of the right and wrong shapes.
fn entity_json() -> impl Strategy<Value = Json> {
    let uid = prop_oneof![
        (type_name(), entity_id()).prop_map(|(t, id)| json!({"type": t, "id": id})),
        json(),
    ];
    let parents = prop_oneof![
        prop::collection::vec(
            (type_name(), entity_id()).prop_map(|(t, id)| json!({"type": t, "id": id})),
            0..3
        )
        .prop_map(Json::Array),
        json(),
    ];
    let attrs = prop_oneof![
        prop::collection::btree_map(key(), json(), 0..3)
            .prop_map(|m| Json::Object(m.into_iter().collect())),
        json(),
    ];
    (uid, parents, attrs, any::<u8>()).prop_map(|(uid, parents, attrs, drop)| {
        let mut e = serde_json::Map::new();
        if drop & 1 == 0 {
            e.insert("uid".into(), uid);
        }
        if drop & 2 == 0 {
            e.insert("parents".into(), parents);
        }
        if drop & 4 == 0 {
            e.insert("attrs".into(), attrs);
        }
        if drop & 8 != 0 {
            e.insert("tags".into(), json!({"t": 1}));
        }
        Json::Object(e)
    })
}

/// `entities_json`: empty, arbitrary text, any JSON, or an array of entities.
fn entities_json() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        ".{0,40}",
        json().prop_map(|j| j.to_string()),
        prop::collection::vec(entity_json(), 0..4).prop_map(|v| Json::Array(v).to_string()),
    ]
}

fn entity() -> impl Strategy<Value = proto::Entity> {
    (
        prop::option::weighted(0.9, euid()),
        prop::collection::btree_map(key(), value(), 0..3),
        prop::collection::vec(euid(), 0..3),
        prop::collection::btree_map(key(), value(), 0..2),
    )
        .prop_map(|(uid, attrs, parents, tags)| proto::Entity {
            uid,
            attrs,
            parents,
            tags,
        })
}

fn workload() -> impl Strategy<Value = proto::Workload> {
    (
        ".{0,20}",
        ".{0,8}",
        ".{0,8}",
        prop::collection::btree_map(".{0,6}", ".{0,6}", 0..3),
    )
        .prop_map(
            |(spiffe_id, namespace, service_account, labels)| proto::Workload {
                spiffe_id,
                namespace,
                service_account,
                labels,
            },
        )
}

fn authorize_request() -> impl Strategy<Value = proto::AuthorizeRequest> {
    (
        (
            prop::option::weighted(0.9, euid()),
            prop::option::weighted(0.9, euid()),
            prop::option::weighted(0.9, euid()),
        ),
        prop::collection::btree_map(key(), value(), 0..4),
        context_json(),
        prop::collection::vec(entity(), 0..3),
        entities_json(),
        prop::option::weighted(0.2, workload()),
    )
        .prop_map(
            |(
                (principal, action, resource),
                context,
                context_json,
                entities,
                entities_json,
                workload,
            )| {
                proto::AuthorizeRequest {
                    principal,
                    action,
                    resource,
                    context,
                    entities,
                    context_json,
                    entities_json,
                    workload,
                    request_id: String::new(),
                    ..Default::default()
                }
            },
        )
}

// ---------------------------------------------------------------------------
// Conversion, limits, evaluation
// ---------------------------------------------------------------------------

/// The service's path for one request, minus the transport: every failure
/// must be an error value that says where and what.
fn check_one(req: proto::AuthorizeRequest, shared: &[Json]) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    if let Err(e) = limits.check_context_json(&req.context_json) {
        prop_assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
        return Ok(());
    }
    let query = match query_from_request(req, shared) {
        Ok(q) => q,
        Err(e) => {
            prop_assert!(
                !e.field.is_empty(),
                "conversion error without a field: {e:?}"
            );
            prop_assert!(!e.message.is_empty(), "{e:?}");
            let prefix = format!("`{}`", e.field);
            prop_assert!(e.to_string().starts_with(&prefix), "{e}");
            return Ok(());
        }
    };
    if let Err(e) = limits.check_query(&query, &[]) {
        prop_assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
        return Ok(());
    }
    for snapshot in snapshots() {
        match snapshot.engine.decide(
            query.clone(),
            &mut engine::Scratch::new(OnForbidError::Skip),
        ) {
            Ok(d) => {
                prop_assert_eq!(d.allow, !d.determining_policies.is_empty() && d.allow);
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(["entities", "context", "request"].contains(&e.field()));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests_convert_or_fail_with_a_field(req in authorize_request()) {
        check_one(req, &[])?;
    }

    #[test]
    fn arbitrary_shared_entities_never_panic(
        req in authorize_request(),
        shared in prop::collection::vec(entity_json(), 0..4),
    ) {
        check_one(req, &shared)?;
    }

    /// Well-formed uids from the example with arbitrary context: the
    /// schema-backed parse is exercised rather than failing early.
    #[test]
    fn arbitrary_context_against_the_schema(
        context in prop::collection::btree_map(key(), value(), 0..4),
        context_json in context_json(),
        use_json in any::<bool>(),
    ) {
        let uid = |t: &str, id: &str| Some(proto::EntityUid { r#type: t.into(), id: id.into() });
        let req = proto::AuthorizeRequest {
            principal: uid("Mesh::Workload", "spiffe://example.org/ns/shop/sa/frontend"),
            action: uid("Mesh::Action", "call"),
            resource: uid("Mesh::Service", "shop/checkout"),
            context: if use_json { BTreeMap::new() } else { context },
            context_json: if use_json { context_json } else { String::new() },
            ..Default::default()
        };
        check_one(req, &[])?;
    }
}

// ---------------------------------------------------------------------------
// ext_authz over a real server
// ---------------------------------------------------------------------------

fn principal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("spiffe://example.org/ns/shop/sa/frontend".to_string()),
        Just("spiffe://example.org/ns/legacy/sa/batch".to_string()),
        Just("spiffe://other.org/ns/shop/sa/frontend".to_string()),
        Just("spiffe://Example.org/ns/a/sa/b".to_string()),
        Just("spiffe:///ns/a/sa/b".to_string()),
        Just("spiffe://example.org/ns//sa/b".to_string()),
        Just("spiffe://example.org/".to_string()),
        Just("https://example.org/x".to_string()),
        "spiffe://[a-z.]{0,10}(/[a-z0-9.]{0,6}){0,4}",
        ".{0,30}",
    ]
}

fn ip() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("10.99.0.1".to_string()),
        Just("10.0.1.7".to_string()),
        Just("::1".to_string()),
        Just("not-an-ip".to_string()),
        Just(String::new()),
        any::<[u8; 4]>().prop_map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])),
        ".{0,16}",
    ]
}

fn peer() -> impl Strategy<Value = Option<Peer>> {
    prop::option::weighted(
        0.8,
        (principal(), prop::option::weighted(0.7, ip())).prop_map(|(principal, ip)| Peer {
            principal,
            address: ip.map(|address| Address {
                address: Some(AddressKind::SocketAddress(SocketAddress {
                    address,
                    ..Default::default()
                })),
            }),
            ..Default::default()
        }),
    )
}

fn check_request() -> impl Strategy<Value = CheckRequest> {
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("DELETE".to_string()),
        Just(String::new()),
        ".{0,10}",
    ];
    let path = prop_oneof![
        Just("/".to_string()),
        Just("/orders/1?x=y#f".to_string()),
        "/[a-z0-9/?#&=%.]{0,20}",
        ".{0,20}",
    ];
    let host = prop_oneof![
        Just("checkout.shop.svc:8080".to_string()),
        Just("[::1]:80".to_string()),
        Just(String::new()),
        ".{0,20}",
    ];
    let http = (
        method,
        path,
        host,
        prop::collection::btree_map("[a-z-]{1,12}", ".{0,12}", 0..4),
        ".{0,8}",
    )
        .prop_map(|(method, path, host, headers, id)| HttpRequest {
            id,
            method,
            path,
            host,
            headers: headers.into_iter().collect(),
            ..Default::default()
        });
    let request = prop::option::weighted(
        0.9,
        prop::option::weighted(0.95, http).prop_map(|http| Request {
            http,
            ..Default::default()
        }),
    );
    let attributes = prop::option::weighted(
        0.95,
        (
            peer(),
            peer(),
            request,
            prop::collection::btree_map(".{0,6}", ".{0,6}", 0..3),
        )
            .prop_map(|(source, destination, request, context_extensions)| {
                AttributeContext {
                    source,
                    destination,
                    request,
                    context_extensions: context_extensions.into_iter().collect(),
                    ..Default::default()
                }
            }),
    );
    attributes.prop_map(|attributes| CheckRequest { attributes })
}

#[test]
fn arbitrary_check_requests_always_get_an_allow_or_a_deny() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, client) = runtime.block_on(async {
        let mut config = test_config(example_dir());
        config.ext_authz.headers = vec!["x-request-id".into(), "authorization".into()];
        let server = TestServer::start_with(config).await;
        let client = AuthorizationClient::connect(server.url()).await.unwrap();
        (server, client)
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let allowed = std::cell::Cell::new(0);
    runner
        .run(&check_request(), |req| {
            let mut client = client.clone();
            let call = client.check(req.clone());
            let response = runtime
                .block_on(async {
                    tokio::time::timeout(std::time::Duration::from_secs(10), call).await
                })
                .map_err(|_| TestCaseError::fail("no answer within 10s"))?;
            let response = match response {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    return Err(TestCaseError::fail(format!(
                        "Check failed with a gRPC error, not a deny: {status:?} for {req:?}"
                    )));
                }
            };
            let code = response.status.as_ref().map_or(0, |s| s.code);
            match (code, &response.http_response) {
                (0, Some(HttpResponse::OkResponse(_))) => allowed.set(allowed.get() + 1),
                (7, Some(HttpResponse::DeniedResponse(denied))) => {
                    let status = denied.status.as_ref().map_or(0, |s| s.code);
                    prop_assert!((400..=599).contains(&status), "{response:?}");
                }
                _ => {
                    return Err(TestCaseError::fail(format!(
                        "malformed answer {response:?} to {req:?}"
                    )));
                }
            }
            Ok(())
        })
        .unwrap();
    // The same client and mapping do allow a request the example permits
    // (a workload reading a route of its own namespace; the schema needs a
    // source IP), so the property above is not vacuously about denies.
    let allow = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: "spiffe://example.org/ns/shop/sa/frontend".into(),
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: "10.0.1.7".into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            destination: Some(Peer {
                principal: "spiffe://example.org/ns/shop/sa/checkout".into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/".into(),
                    host: "checkout.shop.svc".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let response = runtime
        .block_on(client.clone().check(allow))
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status.as_ref().map(|s| s.code),
        Some(0),
        "{response:?}"
    );
    assert!(
        matches!(response.http_response, Some(HttpResponse::OkResponse(_))),
        "{response:?} ({} allowed in the run)",
        allowed.get()
    );
    runtime.block_on(async move { server.stop().await.unwrap() });
}
