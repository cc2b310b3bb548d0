//! Decision cost as the policy set grows: generated multi-tenant sets of 10,
//! 1,000 and 10,000 policies, each tenant with its own few policies over its
//! own resources. `sliced` is the server's path; `whole_set` evaluates every
//! policy, as the server did before the policy index. Also times a full
//! reload (read + parse + index) of the 10,000-policy directory.
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
use cedar_pdp::engine::PolicyIndex;
use cedar_pdp::engine::{self, Query};
use cedar_pdp::policy_store::{LoadOptions, Snapshot, build, read_dir};
use cedar_policy::{Context, EntityUid, Request};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn load(dir: &std::path::Path) -> Snapshot {
    build(read_dir(dir).unwrap(), &LoadOptions::default(), 1).unwrap()
}

fn uid(s: &str) -> EntityUid {
    EntityUid::from_str(s).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_scaling");
    let mut dirs = Vec::new();
    for n in SIZES {
        let generated = tenants::scaling(n);
        let dir = tempfile::tempdir().unwrap();
        generated.write_to(dir.path());
        let snapshot = load(dir.path());
        assert_eq!(snapshot.engine.policy_count(), n);
        // A tenant in the middle, so no bucket is favoured by position.
        let t = n / tenants::SCALING_POLICIES_PER_TENANT / 2;
        let query = Query {
            principal: uid(&format!(r#"User::"t{t}-u1""#)),
            action: uid(r#"Action::"read""#),
            resource: uid(&format!(r#"Doc::"t{t}-d1""#)),
            context: serde_json::Map::new(),
            entities: Vec::new(),
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
        assert_eq!(decision.determining_policies, [format!("t{t}-readers")]);

        group.bench_with_input(BenchmarkId::new("sliced", n), &query, |b, q| {
            b.iter(|| {
                snapshot
                    .engine
                    .decide(q.clone(), &mut engine::Scratch::new(OnForbidError::Deny))
                    .unwrap()
            });
        });
        group.bench_with_input(BenchmarkId::new("whole_set", n), &query, |b, q| {
            b.iter(|| {
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
                    snapshot.engine.entities(),
                );
                assert_eq!(r.decision(), cedar_policy::Decision::Allow);
            });
        });
        dirs.push((n, dir));
    }
    group.finish();

    let mut reload = c.benchmark_group("reload");
    reload.sample_size(10);
    for (n, dir) in dirs.iter().filter(|(n, _)| *n == 10_000) {
        reload.bench_with_input(BenchmarkId::from_parameter(n), dir.path(), |b, path| {
            b.iter(|| load(path));
        });
        reload.bench_with_input(BenchmarkId::new("read_only", n), dir.path(), |b, path| {
            b.iter(|| read_dir(path).unwrap());
        });
        let pol_only = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join("policies.cedar"),
            pol_only.path().join("policies.cedar"),
        )
        .unwrap();
        reload.bench_with_input(
            BenchmarkId::new("policies_only", n),
            pol_only.path(),
            |b, path| {
                b.iter(|| load(path));
            },
        );
        // Cedar's parser's share of a reload.
        let text = std::fs::read_to_string(dir.path().join("policies.cedar")).unwrap();
        reload.bench_with_input(BenchmarkId::new("parse_only", n), &text, |b, t| {
            b.iter(|| cedar_policy::PolicySet::from_str(t).unwrap());
        });
        // The index's share of a reload.
        let snapshot = load(dir.path());
        let windows = std::collections::HashMap::new();
        reload.bench_with_input(BenchmarkId::new("index_only", n), &snapshot, |b, s| {
            b.iter(|| PolicyIndex::new(s.engine.policies(), &windows).unwrap());
        });
    }
    reload.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
