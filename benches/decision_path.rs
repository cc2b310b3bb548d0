//! In-process decision path: proto request -> Cedar query -> decision, on one
//! live snapshot. No socket, no logging: the floor every call pays.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cedar_pdp::config::OnForbidError;
use cedar_pdp::engine;
use cedar_pdp::grpc::convert::decision_request;
use cedar_pdp::grpc::convert::query_from_request;
use cedar_pdp::grpc::proto;
use cedar_pdp::metrics::Metrics;
use cedar_pdp::pipeline::{Admission, Call, Pipeline, PipelineOptions};
use cedar_pdp::policy_store::{LoadOptions, PolicyStore, build, read_dir};
use criterion::{Criterion, criterion_group, criterion_main};

fn uid(t: &str, id: &str) -> Option<proto::EntityUid> {
    Some(proto::EntityUid {
        r#type: t.into(),
        id: id.into(),
    })
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let options = LoadOptions::default();

    // The shipped example: schema-checked context, entities from disk.
    let example = build(read_dir(&root.join("policies")).unwrap(), &options, 1).unwrap();
    let example_req = proto::AuthorizeRequest {
        principal: uid("Mesh::Workload", "spiffe://example.org/ns/shop/sa/frontend"),
        action: uid("Mesh::Action", "call"),
        resource: uid("Mesh::Service", "shop/checkout"),
        context_json: r#"{"source_ip": "10.0.1.7"}"#.into(),
        ..Default::default()
    };
    let q = query_from_request(example_req.clone(), &[]).unwrap();
    assert!(
        example
            .engine
            .decide(q, &mut engine::Scratch::new(OnForbidError::Deny))
            .unwrap()
            .allow
    );
    c.bench_function("example_policies/call_same_namespace", |b| {
        b.iter(|| {
            let q = query_from_request(example_req.clone(), &[]).unwrap();
            example
                .engine
                .decide(q, &mut engine::Scratch::new(OnForbidError::Deny))
                .unwrap()
        });
    });

    // The whole pipeline (admission, limits, cache off, span and metrics,
    // no decision log) around the same conversion and evaluation.
    let store = Arc::new(PolicyStore::new(root.join("policies"), options.clone()));
    store.reload().unwrap();
    let opts = PipelineOptions {
        decision_cache_bytes: 0,
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::new(store, opts, Arc::new(Metrics::new())).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admission = Admission::Acquire {
        timeout: Duration::from_secs(1),
    };
    c.bench_function("pipeline/example_call_uncached", |b| {
        b.to_async(&runtime).iter(|| async {
            let call = Call::new(Default::default(), None, tracing::Span::none());
            let req = decision_request(example_req.clone());
            pipeline.authorize(req, &call, admission).await.unwrap()
        });
    });

    // The Cerbos-equivalent request: attributes travel in the request.
    let peer_dir = root.join("tests/vendor/peers/cedar-equivalent");
    if peer_dir.is_dir() {
        let peer = build(read_dir(&peer_dir).unwrap(), &options, 1).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(peer_dir.join("request.json")).unwrap())
                .unwrap();
        let peer_req = proto::AuthorizeRequest {
            principal: uid("Workload", "spiffe://example.org/ns/payments/sa/api"),
            action: uid("Action", "read"),
            resource: uid("Document", "doc-1"),
            entities_json: json["entities"].to_string(),
            ..Default::default()
        };
        let q = query_from_request(peer_req.clone(), &[]).unwrap();
        assert!(
            peer.engine
                .decide(q, &mut engine::Scratch::new(OnForbidError::Deny))
                .unwrap()
                .allow
        );
        c.bench_function("cerbos_equivalent/read_document", |b| {
            b.iter(|| {
                let q = query_from_request(peer_req.clone(), &[]).unwrap();
                peer.engine
                    .decide(q, &mut engine::Scratch::new(OnForbidError::Deny))
                    .unwrap()
            });
        });
        // The same, with the request's entities found in the entity cache
        // (what the server does by default when entities repeat).
        let cache = engine::EntityCache::new(1 << 20).unwrap();
        c.bench_function("cerbos_equivalent/read_document_entities_cached", |b| {
            b.iter(|| {
                let q = query_from_request(peer_req.clone(), &[]).unwrap();
                let mut scratch = engine::Scratch::new(OnForbidError::Deny).cached(Some(&cache));
                let d = peer.engine.decide(q, &mut scratch).unwrap();
                let lookups = scratch.lookups();
                assert!(d.allow && lookups.misses + lookups.hits == 2);
                d
            });
        });

        // The pipeline on a decision-cache hit: what a repeated request costs
        // besides the transport.
        let store = Arc::new(PolicyStore::new(peer_dir.clone(), options.clone()));
        store.reload().unwrap();
        let pipeline =
            Pipeline::new(store, PipelineOptions::default(), Arc::new(Metrics::new())).unwrap();
        c.bench_function("pipeline/cerbos_equivalent_cached", |b| {
            b.to_async(&runtime).iter(|| async {
                let call = Call::new(Default::default(), None, tracing::Span::none());
                let req = decision_request(peer_req.clone());
                pipeline.authorize(req, &call, admission).await.unwrap()
            });
        });
    }
}

/// An agent three hops from a person, by a verified RS256 subject token
/// whose `act` chain names the hops, against the same chain sent as plain
/// (unverified) hops: what verification costs, fresh and remembered.
fn tokens(c: &mut Criterion) {
    use cedar_pdp::config::{IssuerConfig, TokensConfig};
    use cedar_pdp::tokens::TokenVerifier;
    use criterion::BatchSize;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"permit (principal, action == Action::"read", resource)
           when { context.delegation.depth <= 3 && context.delegation.origin == User::"alice" };"#,
    )
    .unwrap();
    let jwk: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("rsa-test-key.jwk.json")).unwrap(),
    )
    .unwrap();
    let jwks_file = dir.path().join("idp.jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [jwk.clone()]}).to_string()).unwrap();
    let issuer = "https://idp.example.org";
    let config = TokensConfig {
        issuers: vec![IssuerConfig {
            issuer: issuer.into(),
            jwks_file,
            audiences: vec!["cedar-pdp".into()],
            principal_type: "User".into(),
            actor_type: "Agent".into(),
        }],
        ..TokensConfig::default()
    };
    let verifier = Arc::new(TokenVerifier::load(&config).unwrap().unwrap());
    let key =
        EncodingKey::from_rsa_der(&std::fs::read(fixtures.join("rsa-test-key.pkcs1.der")).unwrap());
    let mut header = Header::new(Algorithm::RS256);
    header.kid = jwk["kid"].as_str().map(String::from);
    let serial = std::sync::atomic::AtomicU64::new(0);
    let token = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jti = serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let claims = json!({"iss": issuer, "sub": "alice", "aud": "cedar-pdp", "exp": now + 3600,
                            "iat": now, "jti": format!("t-{jti}"), "scope": "docs:read",
                            "act": {"sub": "agent-c", "act": {"sub": "agent-b", "act": {"sub": "agent-a"}}}});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let store = Arc::new(PolicyStore::new(
        dir.path().to_path_buf(),
        LoadOptions::default(),
    ));
    store.reload().unwrap();
    let opts = PipelineOptions {
        decision_cache_bytes: 0,
        tokens: Some(verifier),
        ..PipelineOptions::default()
    };
    let pipeline = Pipeline::new(store, opts, Arc::new(Metrics::new())).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admission = Admission::Acquire {
        timeout: Duration::from_secs(1),
    };
    let request =
        |subject_token: String, delegation: Vec<proto::DelegationHop>| proto::AuthorizeRequest {
            principal: uid("Agent", "agent-c"),
            action: uid("Action", "read"),
            resource: uid("Doc", "q3-plan"),
            subject_token,
            delegation,
            ..Default::default()
        };
    let decide = |req: proto::AuthorizeRequest| {
        let call = Call::new(Default::default(), None, tracing::Span::none());
        let outcome = runtime
            .block_on(pipeline.authorize(decision_request(req), &call, admission))
            .unwrap();
        assert!(outcome.decision.allow, "{outcome:?}");
        outcome
    };
    let same = token();
    decide(request(same.clone(), Vec::new()));
    c.bench_function("tokens/three_hops_fresh_token", |b| {
        b.iter_batched(
            || request(token(), Vec::new()),
            &decide,
            BatchSize::SmallInput,
        );
    });
    c.bench_function("tokens/three_hops_repeated_token", |b| {
        b.iter(|| decide(request(same.clone(), Vec::new())));
    });
    let hop = |t: &str, id: &str| proto::DelegationHop {
        delegator: uid(t, id),
        ..Default::default()
    };
    let plain = vec![
        hop("User", "alice"),
        hop("Agent", "agent-a"),
        hop("Agent", "agent-b"),
    ];
    c.bench_function("tokens/three_hops_unverified", |b| {
        b.iter(|| decide(request(String::new(), plain.clone())));
    });
}

criterion_group!(benches, bench, tokens);
criterion_main!(benches);
