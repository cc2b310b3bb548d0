//! The sliced evaluation path (policy index + per-request entities) against
//! the whole-set reference: every answer must be identical: decision,
//! determining policies, errors, and request errors.
//!
//! The reference is what `authorize` did before slicing: every policy, and
//! the request's entities merged into a copy of the whole store. Each answer
//! is also taken twice through the entity cache (parsed, then remembered),
//! which must change nothing either.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;
use crate::corpus;
use crate::tenants;

use std::path::Path;
use std::str::FromStr;

use cedar_pdp::config::OnForbidError;
use cedar_pdp::engine::{
    AuthorizeError, Clock, CompileOptions, Decision, Engine, EntityCache, PolicyError, Query,
    Scratch, Target,
};
use cedar_pdp::policy_store::{LoadOptions, build, read_dir};
use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Context, Entities, EntityUid, Request};
use common::cedar_corpus;
use corpus::{CorpusTest, entity_ref, json_files_under};
use serde_json::{Value as Json, json};
use tenants::{Rng, uid};

/// How many mismatches a failure report spells out.
const REPORT_LIMIT: usize = 10;
/// Corpus requests, as stated in the corpus README (hand-written + generated).
const MIN_CORPUS_REQUESTS: usize = 74 + 12_496;

/// The answer with every policy and a full merge of the entities.
fn reference(snapshot: &Engine, q: &Query) -> Result<Decision, AuthorizeError> {
    let schema = snapshot.schema();
    let entities = if q.entities.is_empty() {
        snapshot.entities().clone()
    } else {
        let extra = Entities::from_json_value(Json::Array(q.entities.clone()), schema)
            .map_err(|e| AuthorizeError::Entities(Box::new(e)))?;
        // What a request may not define, whichever way it is evaluated.
        for e in extra.iter() {
            let uid = e.uid();
            if snapshot.dangling().contains(&uid) {
                return Err(AuthorizeError::StoredReference(uid.to_string()));
            }
            if schema.is_none() && uid.type_name().basename() == "Action" {
                return Err(AuthorizeError::ActionEntity(uid.to_string()));
            }
        }
        snapshot
            .entities()
            .clone()
            .add_entities(extra, schema)
            .map_err(|e| match e {
                EntitiesError::Duplicate(_) => AuthorizeError::EntityConflict(Box::new(e)),
                other => AuthorizeError::Entities(Box::new(other)),
            })?
    };
    let context = Context::from_json_value(
        Json::Object(q.context.clone()),
        schema.map(|s| (s, &q.action)),
    )
    .map_err(|e| AuthorizeError::Context(Box::new(e)))?;
    let request = Request::new(
        q.principal.clone(),
        q.action.clone(),
        q.resource.clone(),
        context,
        schema,
    )
    .map_err(|e| AuthorizeError::Schema(Box::new(e)))?;
    let response =
        cedar_policy::Authorizer::new().is_authorized(&request, snapshot.policies(), &entities);
    let mut determining_policies: Vec<String> = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    determining_policies.sort_unstable();
    let mut errors: Vec<PolicyError> = response
        .diagnostics()
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(e) => PolicyError {
                policy_id: e.policy_id().to_string(),
                message: e.inner().to_string(),
            },
        })
        .collect();
    errors.sort_by(|a, b| a.policy_id.cmp(&b.policy_id));
    Ok(Decision {
        allow: response.decision() == cedar_policy::Decision::Allow,
        determining_policies,
        errors,
        dropped_properties: Vec::new(),
        shadow: None,
        changes_at: None,
    })
}

type Answer = Result<Decision, String>;

/// Tallies over the compared answers, so a test can show it exercised what
/// it claims to.
#[derive(Debug, Default)]
struct Tally {
    compared: usize,
    allow: usize,
    deny: usize,
    with_policy_errors: usize,
    conflicts: usize,
    /// Request entities the entity cache answered.
    entity_hits: u64,
    set_hits: u64,
    slice_hits: u64,
    /// Non-empty contexts the schema-typed reading built and `Request::new`
    /// accepted, so Cedar's parse was not needed.
    typed_contexts: usize,
    mismatches: Vec<String>,
}

/// One cache for every snapshot the tests build: keys carry the snapshot.
static ENTITY_CACHE: std::sync::LazyLock<EntityCache> =
    std::sync::LazyLock::new(|| EntityCache::new(64 << 20).unwrap());

impl Tally {
    fn compare(&mut self, label: &str, snapshot: &Engine, q: &Query) {
        let want: Answer = reference(snapshot, q).map_err(|e| e.to_string());
        let got: Answer = snapshot
            .decide(q.clone(), &mut Scratch::new(OnForbidError::Skip))
            .map_err(|e| e.to_string());
        self.compared += 1;
        match &want {
            Ok(d) if d.allow => self.allow += 1,
            Ok(_) => self.deny += 1,
            Err(e) if e.contains("cannot be redefined") => self.conflicts += 1,
            Err(_) => {}
        }
        if want.as_ref().is_ok_and(|d| !d.errors.is_empty()) {
            self.with_policy_errors += 1;
        }
        if got != want {
            self.mismatches.push(format!(
                "{label} {} {} {}\n    full:   {want:?}\n    sliced: {got:?}",
                q.principal, q.action, q.resource
            ));
        }
        if let Some(mismatch) = self.typed_context(snapshot, q) {
            self.mismatches.push(format!("{label}: {mismatch}"));
        }
        for pass in ["cold", "warm", "remembered"] {
            let mut scratch = Scratch::new(OnForbidError::Skip).cached(Some(&ENTITY_CACHE));
            let cached: Answer = snapshot
                .decide(q.clone(), &mut scratch)
                .map_err(|e| e.to_string());
            let lookups = scratch.lookups();
            self.entity_hits += lookups.hits;
            self.set_hits += lookups.set_hits;
            self.slice_hits += lookups.slice_hits;
            if cached != want {
                self.mismatches.push(format!(
                    "{label} {} {} {} (entity cache, {pass})\n    full:   {want:?}\n    cached: {cached:?}",
                    q.principal, q.action, q.resource
                ));
            }
        }
    }

    /// Where the typed reading of the context is used, it must be the
    /// value Cedar's parse gives.
    fn typed_context(&mut self, snapshot: &Engine, q: &Query) -> Option<String> {
        if q.context.is_empty() {
            return None;
        }
        let typed = snapshot.context_types().build(&q.action, &q.context)?;
        let schema = snapshot.schema();
        let uid = |u: &EntityUid| (u.clone().into(), None);
        cedar_policy_core::ast::Request::new(
            uid(&q.principal),
            uid(&q.action),
            uid(&q.resource),
            typed.clone(),
            schema.map(AsRef::as_ref),
            cedar_policy_core::extensions::Extensions::all_available(),
        )
        .ok()?;
        self.typed_contexts += 1;
        let cedar = Context::from_json_value(
            Json::Object(q.context.clone()),
            schema.map(|s| (s, &q.action)),
        );
        let typed = typed.to_json_value().unwrap();
        match cedar.map(|c| c.to_json_value().unwrap()) {
            Ok(cedar) if cedar == typed => None,
            other => Some(format!(
                "typed context {typed} but Cedar's parse gives {other:?}"
            )),
        }
    }

    fn merge(&mut self, other: Self) {
        self.compared += other.compared;
        self.allow += other.allow;
        self.deny += other.deny;
        self.with_policy_errors += other.with_policy_errors;
        self.conflicts += other.conflicts;
        self.entity_hits += other.entity_hits;
        self.set_hits += other.set_hits;
        self.slice_hits += other.slice_hits;
        self.typed_contexts += other.typed_contexts;
        self.mismatches.extend(other.mismatches);
    }

    fn assert_no_mismatch(&self) {
        let shown: Vec<_> = self.mismatches.iter().take(REPORT_LIMIT).collect();
        assert!(
            self.mismatches.is_empty(),
            "{} of {} answers differ (first {}):\n{}",
            self.mismatches.len(),
            self.compared,
            shown.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn load(dir: &Path) -> Result<Engine, String> {
    let sources = read_dir(dir).map_err(|e| e.to_string())?;
    build(
        sources,
        &LoadOptions {
            compile: CompileOptions {
                validate_policies: false,
                ..LoadOptions::default().compile
            },
            ..LoadOptions::default()
        },
        1,
    )
    .map(|snapshot| snapshot.engine)
    .map_err(|e| e.to_string())
}

fn corpus_uid(json: &Json, rel: &str) -> EntityUid {
    let r = entity_ref(json, rel);
    EntityUid::from_type_name_and_id(
        cedar_policy::EntityTypeName::from_str(&r.r#type).unwrap(),
        cedar_policy::EntityId::new(&r.id),
    )
}

/// Runs every request of one corpus file twice: with the entities in the
/// request, and with them loaded from the directory.
fn corpus_case(root: &Path, rel: &str) -> Tally {
    let mut tally = Tally::default();
    let test: CorpusTest =
        serde_json::from_str(&std::fs::read_to_string(root.join(rel)).unwrap()).unwrap();
    let policies = std::fs::read_to_string(root.join(&test.policies)).unwrap();
    let entities_text = std::fs::read_to_string(root.join(&test.entities)).unwrap();
    let entities: Vec<Json> = serde_json::from_str(&entities_text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.cedar"), &policies).unwrap();
    if let Some(schema) = &test.schema {
        let name = if schema.ends_with(".json") {
            "schema.cedarschema.json"
        } else {
            "schema.cedarschema"
        };
        std::fs::copy(root.join(schema), dir.path().join(name)).unwrap();
    }
    let in_request = load(dir.path()).unwrap_or_else(|e| panic!("{rel}: {e}"));
    std::fs::write(dir.path().join("corpus.entities.json"), &entities_text).unwrap();
    // Entities that do not conform to the schema cannot be stored; those
    // requests are still compared with the entities in the request.
    let stored = load(dir.path()).ok();
    for req in &test.requests {
        let q = Query {
            principal: corpus_uid(&req.principal, rel),
            action: corpus_uid(&req.action, rel),
            resource: corpus_uid(&req.resource, rel),
            context: req.context.clone(),
            entities: entities.clone(),
            properties: Vec::new(),
        };
        tally.compare(
            &format!("{rel} [{}] in-request", req.description),
            &in_request,
            &q,
        );
        if let Some(stored) = &stored {
            let q = Query {
                entities: Vec::new(),
                properties: Vec::new(),
                ..q
            };
            tally.compare(&format!("{rel} [{}] stored", req.description), stored, &q);
        }
    }
    tally
}

#[test]
fn corpus_answers_match_the_whole_set() {
    let root = cedar_corpus();
    let mut files = json_files_under(&root.join("tests"));
    files.extend(json_files_under(&root.join("corpus-tests")));
    let (left, right) = files.split_at(files.len() / 2);
    // Two threads: the machine has two cores.
    let run = |part: &[String]| {
        let mut t = Tally::default();
        for rel in part {
            t.merge(corpus_case(&root, rel));
        }
        t
    };
    let tally = std::thread::scope(|s| {
        let a = s.spawn(|| run(left));
        let mut t = run(right);
        t.merge(a.join().unwrap());
        t
    });
    tally.assert_no_mismatch();
    println!("differential corpus: {tally:?}");
    assert!(
        tally.compared >= MIN_CORPUS_REQUESTS,
        "compared {} answers, expected at least {MIN_CORPUS_REQUESTS}",
        tally.compared
    );
    assert!(tally.allow > 1000 && tally.deny > 1000 && tally.with_policy_errors > 100);
    assert!(
        tally.entity_hits > 1000,
        "the entity cache was not exercised"
    );
    // A set is remembered on its second pass and served on its third.
    assert!(
        tally.set_hits > 1000,
        "the set cache was not exercised: {tally:?}"
    );
    assert!(
        tally.slice_hits > 1000,
        "remembered slices were not exercised: {tally:?}"
    );
    assert!(
        tally.typed_contexts > 1000,
        "typed contexts were not exercised: {tally:?}"
    );
}

fn gen_query(r: &tenants::GenRequest) -> Query {
    let u = |(t, id): &(String, String)| corpus_uid(&uid(t, id), "generated");
    Query {
        principal: u(&r.principal),
        action: u(&r.action),
        resource: u(&r.resource),
        context: r.context.clone(),
        entities: r.entities.clone(),
        properties: Vec::new(),
    }
}

#[test]
fn generated_multi_tenant_answers_match_the_whole_set() {
    let mut tally = Tally::default();
    let mut sliced = 0;
    for seed in 0..30 {
        let mut rng = Rng::new(seed);
        let tenants = 2 + rng.below(7);
        let (generated, stored) = tenants::varied(&mut rng, tenants);
        let dir = tempfile::tempdir().unwrap();
        generated.write_to(dir.path());
        let snapshot = load(dir.path()).unwrap();
        assert_eq!(snapshot.policy_count(), generated.policy_count);
        for _ in 0..400 {
            let r = tenants::varied_request(&mut rng, tenants, &stored);
            let q = gen_query(&r);
            tally.compare(&format!("seed {seed}"), &snapshot, &q);
            let anc = |u: &EntityUid| -> Vec<EntityUid> {
                snapshot
                    .entities()
                    .ancestors(u)
                    .map(|a| a.cloned().collect())
                    .unwrap_or_default()
            };
            let (pa, aa, ra) = (anc(&q.principal), anc(&q.action), anc(&q.resource));
            let candidates = snapshot.index().candidates(
                Target {
                    uid: &q.principal,
                    ancestors: &pa,
                },
                Target {
                    uid: &q.action,
                    ancestors: &aa,
                },
                Target {
                    uid: &q.resource,
                    ancestors: &ra,
                },
                &Clock::system(),
            );
            if candidates.len() < snapshot.policy_count() {
                sliced += 1;
            }
        }
    }
    tally.assert_no_mismatch();
    println!("differential generated: {tally:?}, {sliced} sliced");
    // The workload must exercise what it claims: both decisions, policy
    // errors, conflicting request entities, and real slicing.
    assert!(tally.allow > 500, "{tally:?}");
    assert!(tally.deny > 500, "{tally:?}");
    assert!(tally.with_policy_errors > 100, "{tally:?}");
    assert!(tally.conflicts > 50, "{tally:?}");
    assert!(tally.entity_hits > 1000, "{tally:?}");
    assert!(tally.set_hits > 1000, "{tally:?}");
    assert!(
        sliced > tally.compared / 2,
        "only {sliced} requests were sliced"
    );
}

/// The value at `path` (keys and indexes) inside `root`.
fn at<'a>(root: &'a mut Json, path: &[Json]) -> &'a mut Json {
    path.iter().fold(root, |v, step| match step {
        Json::String(k) => v.get_mut(k).unwrap(),
        Json::Number(i) => v
            .get_mut(usize::try_from(i.as_u64().unwrap()).unwrap())
            .unwrap(),
        _ => unreachable!("paths hold keys and indexes"),
    })
}

/// Every path to a value inside `v`.
fn paths(v: &Json, path: &mut Vec<Json>, out: &mut Vec<Vec<Json>>) {
    let children: Vec<(Json, &Json)> = match v {
        Json::Object(m) => m.iter().map(|(k, v)| (json!(k), v)).collect(),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (json!(i), v))
            .collect(),
        _ => Vec::new(),
    };
    for (step, child) in children {
        path.push(step);
        out.push(path.clone());
        paths(child, path, out);
        path.pop();
    }
}

/// Every way of breaking one value of a context, or adding one: each JSON
/// shape Cedar reads differently (escapes, entity shapes, `unknown`, wrong
/// and out-of-range types), for the typed reading to decline or match.
fn mutations(context: &Json) -> Vec<Json> {
    let replacements = [
        json!(null),
        json!(1),
        json!(1.5),
        json!(18_446_744_073_709_551_615_u64),
        json!("s"),
        json!("10.0.0.1"),
        json!("2026-12-03T10:00:00Z"),
        json!(true),
        json!([]),
        json!(["a", 1]),
        json!({}),
        json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}}),
        json!({"__extn": {"fn": "datetime", "arg": "2026-12-03"}}),
        json!({"__extn": {"fn": "unknown", "arg": "u"}}),
        json!({"__extn": {"fn": "nope", "arg": "u"}}),
        json!({"fn": "ip", "arg": "10.0.0.1"}),
        json!({"__entity": {"type": "Mesh::User", "id": "u"}}),
        json!({"type": "Mesh::User", "id": "u"}),
        json!({"type": "Mesh :: User", "id": "u"}),
        json!({"type": "Mesh::User", "id": "u", "x": 1}),
        json!({"__expr": "1"}),
    ];
    let mut all = Vec::new();
    paths(context, &mut Vec::new(), &mut all);
    let mut out = Vec::new();
    for path in &all {
        for r in &replacements {
            let mut c = context.clone();
            *at(&mut c, path) = r.clone();
            out.push(c);
        }
        let mut c = context.clone();
        let (parent, last) = path.split_at(path.len() - 1);
        match (at(&mut c, parent), &last[0]) {
            (Json::Object(m), Json::String(k)) => {
                m.remove(k);
            }
            (Json::Array(items), Json::Number(i)) => {
                items.remove(usize::try_from(i.as_u64().unwrap()).unwrap());
            }
            _ => unreachable!("a path ends in a key or an index"),
        }
        out.push(c);
    }
    for path in std::iter::once(&Vec::new()).chain(&all) {
        let mut c = context.clone();
        if let Json::Object(m) = at(&mut c, path) {
            m.insert("extra".into(), json!("x"));
            out.push(c);
        }
    }
    out
}

/// The example policies' three context types, each whole and then broken
/// every way [`mutations`] knows: the typed reading must answer exactly as
/// Cedar's parse, errors included.
#[test]
fn broken_contexts_answer_as_cedar_parses_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let snapshot = load(&root).unwrap();
    let uid = |t: &str, id: &str| {
        EntityUid::from_type_name_and_id(
            cedar_policy::EntityTypeName::from_str(t).unwrap(),
            cedar_policy::EntityId::new(id),
        )
    };
    let frontend = uid("Mesh::Workload", "spiffe://example.org/ns/shop/sa/frontend");
    let workload = json!({
        "spiffe_id": "spiffe://example.org/ns/shop/sa/frontend",
        "namespace": "shop", "service_account": "frontend", "labels": ["app=web"]
    });
    let caller = json!({"spiffe_id": "spiffe://example.org/ns/shop/sa/frontend", "uid": 1000});
    let cases = [
        (
            uid("Mesh::Action", "call"),
            uid("Mesh::Service", "shop/checkout"),
            json!({"source_ip": "10.0.1.7", "workload": workload, "caller": caller}),
        ),
        (
            uid("Mesh::Action", "GET"),
            uid("Mesh::HttpRoute", "shop/checkout:GET /cart"),
            json!({
                "method": "GET", "path": "/cart", "query": "", "host": "checkout",
                "headers": {"x-request-id": "r1"}, "source_ip": "10.0.1.7",
                "destination": "", "context_extensions": {"route": "cart"}
            }),
        ),
        (
            uid("Mesh::Action", "read_secret"),
            uid("Mesh::Secret", "shop/db-password"),
            json!({
                "source_ip": "10.0.1.7", "request_time": "2026-12-03T10:00:00Z",
                "delegation": {
                    "origin": {"type": "Mesh::User", "id": "alice"}, "depth": 1,
                    "actors": ["a"], "purposes": ["support"], "verified": true,
                    "expires_at": {"__extn": {"fn": "datetime", "arg": "2026-12-04T00:00:00Z"}}
                },
                "purpose": "support", "token": {"scope": ["read"]}
            }),
        ),
    ];
    let mut tally = Tally::default();
    let mut refused = 0;
    for (action, resource, whole) in &cases {
        for context in std::iter::once(whole.clone()).chain(mutations(whole)) {
            let q = Query {
                principal: frontend.clone(),
                action: action.clone(),
                resource: resource.clone(),
                context: context.as_object().unwrap().clone(),
                entities: Vec::new(),
                properties: Vec::new(),
            };
            refused += usize::from(reference(&snapshot, &q).is_err());
            tally.compare(&format!("{action} {context}"), &snapshot, &q);
        }
    }
    tally.assert_no_mismatch();
    println!("broken contexts: {tally:?}, {refused} refused");
    // Whole contexts and harmless changes take the typed reading; most
    // breaks are refused by Cedar's parse, with its message.
    assert!(tally.compared > 800, "{tally:?}");
    assert!(tally.typed_contexts > 50, "{tally:?}");
    assert!(refused > tally.compared / 2, "{refused} of {tally:?}");
}
