//! What the audit trail costs, in one run so the figures compare:
//! - the pipeline without a log, with the chained log, and with the chained
//!   log signed every 100 ms (the writer thread hashes off the request path,
//!   but shares the cores);
//! - one record serialized as plain JSON (before the chain) and canonically,
//!   linked and hashed (with it); one checkpoint signature;
//! - replay: one recorded decision evaluated again from its record;
//! - shadow policies: the decision path with a shadow `forbid` whose scope
//!   matches every request (the worst case), against the same path without.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cedar_pdp::config::{Config, LogSink, OnForbidError};
use cedar_pdp::decision_log::chain::{Body, Chain, Head, Signer};
use cedar_pdp::decision_log::{DecisionLog, DecisionRecord};
use cedar_pdp::engine;
use cedar_pdp::grpc::convert::decision_request;
use cedar_pdp::grpc::proto;
use cedar_pdp::metrics::Metrics;
use cedar_pdp::pipeline::{Admission, Call, Pipeline, PipelineOptions};
use cedar_pdp::policy_store::{LoadOptions, PolicyStore};
use cedar_pdp::replay::{self, PolicySource, Replayed, Replayer};
use criterion::{Criterion, criterion_group, criterion_main};

fn uid(t: &str, id: &str) -> Option<proto::EntityUid> {
    Some(proto::EntityUid {
        r#type: t.into(),
        id: id.into(),
    })
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let policies = root.join("policies");
    let work = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let key_path = work.path().join("signing.pem");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let req = proto::AuthorizeRequest {
        principal: uid("Mesh::Workload", "spiffe://example.org/ns/shop/sa/frontend"),
        action: uid("Mesh::Action", "call"),
        resource: uid("Mesh::Service", "shop/checkout"),
        context_json: r#"{"source_ip": "10.0.1.7"}"#.into(),
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admission = Admission::Acquire {
        timeout: Duration::from_secs(5),
    };
    let pipeline_of = |log: Option<DecisionLog>| {
        let store = Arc::new(PolicyStore::new(&policies, LoadOptions::default()));
        store.reload().unwrap();
        let opts = PipelineOptions {
            decision_cache_bytes: 0,
            ..PipelineOptions::default()
        };
        let p = Pipeline::new(store, opts, Arc::new(Metrics::new())).unwrap();
        match log {
            Some(log) => p.with_decision_log(log),
            None => p,
        }
    };
    let mut run = |name: &str, log: Option<DecisionLog>| {
        let pipeline = pipeline_of(log);
        c.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let call = Call::new(Default::default(), None, tracing::Span::none());
                pipeline
                    .authorize(decision_request(req.clone()), &call, admission)
                    .await
                    .unwrap()
            });
        });
    };
    run("write_path/pipeline_no_log", None);

    let log_config = |name: &str, signed: bool| {
        let mut config = Config::default().decision_log;
        config.enabled = true;
        config.sink = LogSink::File;
        config.path = work.path().join(name);
        config.max_file_bytes = 1 << 30;
        if signed {
            config.signing_key = key_path.clone();
            config.checkpoint_interval = Duration::from_millis(100);
        }
        config
    };
    let mut writers = Vec::new();
    for (name, signed) in [("chained.log", false), ("signed.log", true)] {
        let (log, writer) = DecisionLog::start(&log_config(name, signed)).unwrap();
        run(
            &format!("write_path/pipeline_log_{}", &name[..name.len() - 4]),
            Some(log),
        );
        writers.push(writer);
    }
    for writer in writers {
        runtime
            .block_on(writer.finish(Duration::from_secs(60)))
            .unwrap();
    }

    // One real record, as the pipeline wrote it.
    let text = std::fs::read_to_string(work.path().join("chained.log")).unwrap();
    let line = text.lines().next().unwrap();
    let recorded: serde_json::Value = serde_json::from_str(line).unwrap();
    let record = record_of(&recorded);
    c.bench_function("write_path/record_plain_json", |b| {
        b.iter(|| {
            let mut line = serde_json::to_vec(&record).unwrap();
            line.push(b'\n');
            line
        });
    });
    let mut chain = Chain::new(Head::genesis());
    c.bench_function("write_path/record_canonical_linked", |b| {
        b.iter(|| {
            let body = Body::of(&record).unwrap();
            chain.link(&body).len()
        });
    });
    let signer = Signer::from_pem_file(&key_path).unwrap();
    let head = chain.head().clone();
    c.bench_function("write_path/checkpoint_signature", |b| {
        b.iter(|| signer.checkpoint(&head, "2026-12-02T00:00:00.000000Z", "bench"));
    });

    let snapshot = replay::load(&policies, &LoadOptions::default()).unwrap();
    let mut replayer = Replayer::new(
        PolicySource::Candidate(Arc::new(snapshot)),
        OnForbidError::Deny,
    );
    let log = work.path().join("chained.log");
    assert_eq!(replayer.replay(&recorded, &log), Replayed::Same);
    c.bench_function("replay/record", |b| {
        b.iter(|| replayer.replay(&recorded, &log));
    });

    // The example set, and the same with a shadow forbid on every request.
    let plain = replay::load(&policies, &LoadOptions::default()).unwrap();
    let shadowed_dir = work.path().join("shadowed");
    std::fs::create_dir(&shadowed_dir).unwrap();
    for entry in std::fs::read_dir(&policies).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), shadowed_dir.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(
        shadowed_dir.join("rollout.cedar"),
        "@id(\"rollout.office-hours\")\n@shadow\nforbid (principal, action, resource)\nwhen { context.source_ip.isInRange(ip(\"10.0.0.0/8\")) };\n",
    )
    .unwrap();
    let shadowed = replay::load(&shadowed_dir, &LoadOptions::default()).unwrap();
    let query = || cedar_pdp::grpc::convert::query_from_request(req.clone(), &[]).unwrap();
    let d = shadowed
        .engine
        .decide(query(), &mut engine::Scratch::new(OnForbidError::Deny))
        .unwrap();
    assert!(
        d.allow && d.shadow.as_ref().is_some_and(|s| !s.allow),
        "{d:?}"
    );
    c.bench_function("shadow/decision_without", |b| {
        b.iter(|| {
            plain
                .engine
                .decide(query(), &mut engine::Scratch::new(OnForbidError::Deny))
                .unwrap()
        });
    });
    c.bench_function("shadow/decision_with_matching_shadow_forbid", |b| {
        b.iter(|| {
            shadowed
                .engine
                .decide(query(), &mut engine::Scratch::new(OnForbidError::Deny))
                .unwrap()
        });
    });
}

/// The record `json` holds, rebuilt as the pipeline builds it.
fn record_of(json: &serde_json::Value) -> DecisionRecord {
    let e = |v: &serde_json::Value| cedar_pdp::decision_log::EntityRef {
        type_name: v["type"].as_str().unwrap().into(),
        id: v["id"].as_str().unwrap().into(),
    };
    let entities: Vec<serde_json::Value> = json["entities"].as_array().unwrap().clone();
    DecisionRecord {
        record_version: cedar_pdp::decision_log::RECORD_VERSION,
        decision_id: json["decision_id"].as_str().unwrap().into(),
        timestamp: json["timestamp"].as_str().unwrap().into(),
        trace_id: String::new(),
        span_id: String::new(),
        request_id: String::new(),
        api: "grpc",
        caller: cedar_pdp::decision_log::Caller::default(),
        principal: e(&json["principal"]),
        action: e(&json["action"]),
        resource: e(&json["resource"]),
        context: json["context"].clone(),
        workload: serde_json::Value::Null,
        delegation: serde_json::Value::Null,
        purpose: String::new(),
        tokens: serde_json::Value::Null,
        properties: serde_json::Value::Null,
        search: serde_json::Value::Null,
        entities: Some(cedar_pdp::decision_log::EntitySet::Inline(Arc::new(
            entities,
        ))),
        shared_entities: None,
        schema_digest: json["schema_digest"].as_str().map(str::to_string),
        replayable: true,
        decision: "allow",
        determining_policies: json["determining_policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect(),
        errors: vec![],
        dropped_properties: vec![],
        shadow: None,
        error: None,
        policy_revision: json["policy_revision"].as_str().unwrap().into(),
        policy_commit: None,
        policy_generation: 1,
        latency_us: 12,
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
