//! Decision cost of a request that carries entities, as the stored entity set
//! grows from 1,000 to 100,000 entities loaded from disk. `sliced` is the
//! server's path; `whole_store_merge` copies the store and merges the
//! request's entities into it, as the server did before.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

#[path = "../tests/tenants/mod.rs"]
mod tenants;

use std::str::FromStr;
use std::time::Duration;

use cedar_pdp::config::OnForbidError;
use cedar_pdp::engine::{self, Query};
use cedar_pdp::policy_store::{LoadOptions, build, read_dir};
use cedar_policy::{Context, Entities, EntityUid, Request};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;

const SIZES: [usize; 2] = [1_000, 100_000];

fn uid(s: &str) -> EntityUid {
    EntityUid::from_str(s).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("entity_scaling");
    for n in SIZES {
        let mut generated = tenants::scaling(10);
        let entities = generated.entities.as_array_mut().unwrap();
        let padding = n - entities.len();
        entities.extend(tenants::padding_users(0, padding));
        let dir = tempfile::tempdir().unwrap();
        generated.write_to(dir.path());
        let snapshot = build(read_dir(dir.path()).unwrap(), &LoadOptions::default(), 1).unwrap();
        assert_eq!(snapshot.engine.entity_count(), n);
        // A principal the store does not know, described by the request.
        let query = Query {
            principal: uid(r#"User::"visitor""#),
            action: uid(r#"Action::"read""#),
            resource: uid(r#"Doc::"t0-d1""#),
            context: serde_json::Map::new(),
            entities: vec![json!({
                "uid": tenants::uid("User", "visitor"),
                "attrs": {"level": 5},
                "parents": [tenants::uid("Tenant", "t0")],
            })],
            properties: Vec::new(),
        };
        let decision = snapshot
            .engine
            .decide(
                query.clone(),
                &mut engine::Scratch::new(OnForbidError::Deny),
            )
            .unwrap();
        assert!(decision.allow, "{decision:?}");

        group.bench_with_input(BenchmarkId::new("sliced", n), &query, |b, q| {
            b.iter(|| {
                snapshot
                    .engine
                    .decide(q.clone(), &mut engine::Scratch::new(OnForbidError::Deny))
                    .unwrap()
            });
        });
        group.bench_with_input(BenchmarkId::new("whole_store_merge", n), &query, |b, q| {
            b.iter(|| {
                let extra =
                    Entities::from_json_value(serde_json::Value::Array(q.entities.clone()), None)
                        .unwrap();
                let merged = snapshot
                    .engine
                    .entities()
                    .clone()
                    .add_entities(extra, None)
                    .unwrap();
                let request = Request::new(
                    q.principal.clone(),
                    q.action.clone(),
                    q.resource.clone(),
                    Context::empty(),
                    None,
                )
                .unwrap();
                let r = cedar_policy::Authorizer::new().is_authorized(
                    &request,
                    snapshot.engine.policies(),
                    &merged,
                );
                assert_eq!(r.decision(), cedar_policy::Decision::Allow);
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
