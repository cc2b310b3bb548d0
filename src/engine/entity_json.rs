//! Parses an entities file into the [`Entities`] that Cedar's own parse
//! builds, on every core: most of a large load is Cedar parsing one entity
//! after another, and that part needs no other entity.
//!
//! Each entity is read on its own, by type where it can be
//! ([`typed_entity`]) and otherwise with `Entity::from_json_str`, the
//! per-entity step of Cedar's parse. The hierarchy is then closed on every
//! core ([`super::closure`]), and one `Entities::from_entities` does the
//! rest of that parse's last step: it checks every entity against the
//! schema and adds the schema's actions. Where anything fails, the whole
//! file takes Cedar's own parse, so what is reported is exactly what it
//! reports.

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entities, Entity, Schema};
use cedar_policy_core::ast;
use serde_json::value::RawValue;

use super::typed_entity::{self, EntityShapes};

/// Why a file is not an entity set.
#[derive(Debug)]
pub(super) enum EntityFileError {
    Json(serde_json::Error),
    Cedar(Box<EntitiesError>),
}

/// The entities of `text`, as `Entities::from_json_value` of its JSON value.
pub(super) fn parse(
    text: &str,
    schema: Option<&Schema>,
    shapes: &EntityShapes,
) -> Result<Entities, EntityFileError> {
    parse_on(text, schema, shapes, super::spread::cores())
}

fn parse_on(
    text: &str,
    schema: Option<&Schema>,
    shapes: &EntityShapes,
    threads: usize,
) -> Result<Entities, EntityFileError> {
    let each = serde_json::from_str::<Vec<&RawValue>>(text)
        .ok()
        .and_then(|raw| each_entity(&raw, schema, shapes, threads));
    match each.and_then(|entities| super::closure::entities(entities, schema, threads)) {
        Some(set) => Ok(set),
        // A bad entity, a cycle, a uid given twice, or a set the schema check
        // refuses: Cedar's parse of the whole file says which, in its words.
        None => cedar_parse(text, schema),
    }
}

/// Cedar's parse of the whole file, from the JSON value as the loader has
/// always done (a key given twice in an object keeps its last value).
fn cedar_parse(text: &str, schema: Option<&Schema>) -> Result<Entities, EntityFileError> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(EntityFileError::Json)?;
    Entities::from_json_value(json, schema).map_err(|e| EntityFileError::Cedar(Box::new(e)))
}

/// Every entity of `raw`, in order, in Cedar's own form; `None` when any
/// one fails.
fn each_entity(
    raw: &[&RawValue],
    schema: Option<&Schema>,
    shapes: &EntityShapes,
    threads: usize,
) -> Option<Vec<ast::Entity>> {
    let parse_all = |chunk: &[&RawValue]| -> Option<Vec<ast::Entity>> {
        // One pool per thread: equal values share within it, with no lock.
        let mut pool = typed_entity::ValuePool::default();
        chunk
            .iter()
            .map(|r| {
                typed_entity::read_core(r.get(), shapes, Some(&mut pool)).or_else(|| {
                    // Declined: Cedar's parse, copied out of its wrapper.
                    Entity::from_json_str(r.get(), schema)
                        .ok()
                        .map(|e| e.as_ref().clone())
                })
            })
            .collect()
    };
    let mut all = Vec::with_capacity(raw.len());
    for part in super::spread::over(raw, threads, parse_all) {
        // A panic in Cedar's parse fails this path only: the whole-file
        // parse decides.
        all.extend(part??);
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use std::str::FromStr;

    use cedar_policy::EntityUid;
    use serde_json::json;

    use super::*;
    use crate::engine::schema_types::Resolved;

    const SCHEMA: &str = r#"
        entity Tenant { name: String };
        entity User in [Tenant] { name: String, boss?: User, ip?: __cedar::ipaddr };
        action read appliesTo { principal: User, resource: Tenant };
        action list in [read] appliesTo { principal: User, resource: Tenant };
    "#;

    fn schema() -> Schema {
        Schema::from_cedarschema_str(SCHEMA).unwrap().0
    }

    /// The entity shapes of a Cedar-syntax schema, or for no schema.
    fn shapes(schema: Option<&str>) -> EntityShapes {
        match schema {
            Some(text) => EntityShapes::from_resolved(Resolved::cedarschema(text).as_ref()),
            None => EntityShapes::schemaless(),
        }
    }

    /// A file of `n` users under a few tenants, each user's boss the one
    /// before it, with implicit entity and extension escapes (schema only).
    fn users(n: usize, with_schema_escapes: bool) -> String {
        let mut all = vec![
            json!({"uid": {"type": "Tenant", "id": "t0"}, "attrs": {"name": "t0"}, "parents": []}),
        ];
        for i in 0..n {
            let boss = if with_schema_escapes {
                json!({"type": "User", "id": format!("u{}", i.saturating_sub(1))})
            } else {
                json!({"__entity": {"type": "User", "id": format!("u{}", i.saturating_sub(1))}})
            };
            let ip = if with_schema_escapes {
                json!({"fn": "ip", "arg": "10.0.0.1"})
            } else {
                json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}})
            };
            all.push(json!({
                "uid": {"type": "User", "id": format!("u{i}")},
                "attrs": {"name": format!("user {i}"), "boss": boss, "ip": ip},
                "parents": [{"type": "Tenant", "id": "t0"}],
            }));
        }
        serde_json::Value::Array(all).to_string()
    }

    fn error_of(result: Result<Entities, EntityFileError>) -> String {
        match result {
            Ok(_) => panic!("parsed"),
            Err(EntityFileError::Json(e)) => format!("json: {e}"),
            Err(EntityFileError::Cedar(e)) => format!("cedar: {e:?}"),
        }
    }

    #[test]
    fn every_thread_count_builds_the_set_cedar_builds() {
        let schema = schema();
        for (text, schema) in [
            (users(5_000, true), Some(&schema)),
            (users(5_000, false), None),
        ] {
            let cedar = cedar_parse(&text, schema).unwrap();
            let shapes = shapes(schema.map(|_| SCHEMA));
            for threads in [1, 2, 3, 8] {
                let ours = parse_on(&text, schema, &shapes, threads).unwrap();
                assert!(ours.deep_eq(&cedar), "{threads} threads");
            }
            // The hierarchy is closed and, with a schema, its actions are in.
            let u = EntityUid::from_str(r#"User::"u4999""#).unwrap();
            let t = EntityUid::from_str(r#"Tenant::"t0""#).unwrap();
            assert!(cedar.is_ancestor_of(&t, &u));
            let list = EntityUid::from_str(r#"Action::"list""#).unwrap();
            assert_eq!(cedar.get(&list).is_some(), schema.is_some());
        }
    }

    #[test]
    fn a_bad_entity_anywhere_gets_cedars_own_error() {
        let schema = schema();
        let good = users(5_000, true);
        let mut bad: serde_json::Value = serde_json::from_str(&good).unwrap();
        // Far into the last thread's part: a name of the wrong type.
        bad[4_900]["attrs"]["name"] = json!(7);
        let bad = bad.to_string();
        let cedar = error_of(cedar_parse(&bad, Some(&schema)));
        assert!(cedar.contains("u4899"), "{cedar}");
        for threads in [1, 2, 8] {
            let ours = parse_on(&bad, Some(&schema), &shapes(Some(SCHEMA)), threads);
            assert_eq!(error_of(ours), cedar);
        }
    }

    #[test]
    fn a_set_wrong_as_a_whole_gets_cedars_own_error() {
        let cycle = json!([
            {"uid": {"type": "Tenant", "id": "a"}, "attrs": {"name": "a"}, "parents": [{"type": "Tenant", "id": "b"}]},
            {"uid": {"type": "Tenant", "id": "b"}, "attrs": {"name": "b"}, "parents": [{"type": "Tenant", "id": "a"}]},
        ])
        .to_string();
        let twice = json!([
            {"uid": {"type": "Tenant", "id": "a"}, "attrs": {"name": "a"}, "parents": []},
            {"uid": {"type": "Tenant", "id": "a"}, "attrs": {"name": "other"}, "parents": []},
        ])
        .to_string();
        let undeclared_action = json!([
            {"uid": {"type": "Action", "id": "write"}, "attrs": {}, "parents": []},
        ])
        .to_string();
        let schema = schema();
        for text in [cycle, twice, undeclared_action] {
            let cedar = error_of(cedar_parse(&text, Some(&schema)));
            let ours = parse_on(&text, Some(&schema), &shapes(Some(SCHEMA)), 2);
            assert_eq!(error_of(ours), cedar);
        }
    }

    #[test]
    fn what_is_not_an_entity_list_is_refused_as_before() {
        for text in ["{", r#"{"uid": 1}"#, "[1, 2]", ""] {
            let before = error_of(cedar_parse(text, None));
            assert_eq!(error_of(parse(text, None, &shapes(None))), before, "{text}");
        }
        // A key given twice keeps its last value, as the JSON value did.
        let twice = r#"[{"uid": {"type": "Tenant", "id": "a"}, "attrs": {"name": "x", "name": "y"}, "parents": []}]"#;
        assert!(
            parse(twice, None, &shapes(None))
                .unwrap()
                .deep_eq(&cedar_parse(twice, None).unwrap())
        );
    }

    /// A hierarchy with long chains, diamonds and parents outside the set,
    /// large enough to be closed on several threads: the set Cedar builds.
    /// A cycle anywhere, or a uid given twice, gets Cedar's error.
    #[test]
    fn a_deep_hierarchy_is_closed_as_cedar_closes_it() {
        let mut all = Vec::new();
        for i in 0..6_000_usize {
            let mut parents = vec![json!({"type": "Tenant", "id": format!("t{}", i / 100)})];
            if i % 100 != 0 {
                // A chain of 100 under each tenant, with a diamond every 7.
                parents.push(json!({"type": "User", "id": format!("u{}", i - 1)}));
                if i % 7 == 0 && i % 100 > 1 {
                    parents.push(json!({"type": "User", "id": format!("u{}", i - 2)}));
                }
            }
            if i % 50 == 0 {
                // Defined nowhere in the file.
                parents.push(json!({"type": "Tenant", "id": "outside"}));
            }
            all.push(json!({"uid": {"type": "User", "id": format!("u{i}")}, "attrs": {"name": "n"}, "parents": parents}));
        }
        for t in 0..60 {
            all.push(
                json!({"uid": {"type": "Tenant", "id": format!("t{t}")}, "attrs": {"name": "t"},
                "parents": [{"type": "Tenant", "id": format!("t{}", t / 2)}]}),
            );
        }
        // t0's parent is itself (0 / 2). Without that, a DAG.
        let mut dag: Vec<serde_json::Value> = all.clone();
        dag[6_000]["parents"] = json!([]);
        let text = serde_json::Value::Array(dag.clone()).to_string();
        let cedar = cedar_parse(&text, None).unwrap();
        for threads in [1, 2, 8] {
            let ours = parse_on(&text, None, &shapes(None), threads).unwrap();
            assert!(ours.deep_eq(&cedar), "{threads} threads");
        }
        let u = EntityUid::from_str(r#"User::"u5999""#).unwrap();
        let outside = EntityUid::from_str(r#"Tenant::"outside""#).unwrap();
        assert!(cedar.is_ancestor_of(&outside, &u));

        let mut cycle = dag.clone();
        cycle[3_000]["parents"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "User", "id": "u3050"}));
        let mut twice = dag;
        twice.push(twice[10].clone());
        let text = serde_json::Value::Array(all).to_string();
        let cedar = error_of(cedar_parse(&text, None));
        assert_eq!(error_of(parse_on(&text, None, &shapes(None), 2)), cedar);
        // Cedar accepts an entity given twice alike, and refuses one given
        // twice differently; either way this path leaves it to Cedar.
        let text = serde_json::Value::Array(twice.clone()).to_string();
        let cedar = cedar_parse(&text, None).unwrap();
        assert!(
            parse_on(&text, None, &shapes(None), 2)
                .unwrap()
                .deep_eq(&cedar)
        );
        twice.last_mut().unwrap()["attrs"]["name"] = json!("other");
        let text = serde_json::Value::Array(twice).to_string();
        let cedar = error_of(cedar_parse(&text, None));
        assert_eq!(error_of(parse_on(&text, None, &shapes(None), 2)), cedar);
        // Which vertex of a longer cycle Cedar names depends on its hash
        // order, so two of its own parses may differ; the kind may not.
        let text = serde_json::Value::Array(cycle).to_string();
        for result in [
            cedar_parse(&text, None),
            parse_on(&text, None, &shapes(None), 2),
        ] {
            let err = error_of(result);
            assert!(err.starts_with("cedar: TransitiveClosureError"), "{err}");
        }
    }

    /// Every entities file of Cedar's integration corpus, with its schema
    /// and without one: the set, or the error, is the one Cedar's parse gives.
    /// The corpus tests' files, by name, read from the vendored archive
    /// (`tests/vendor/`) without unpacking it.
    fn corpus_files() -> std::collections::BTreeMap<String, String> {
        use std::io::Read as _;
        let archive = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vendor/cedar-integration-tests.tar.gz");
        let file = std::fs::File::open(&archive).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut files = std::collections::BTreeMap::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if let Some(name) = path.strip_prefix("cedar-integration-tests/corpus-tests/") {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                files.insert(name.to_string(), text);
            }
        }
        files
    }

    #[test]
    fn corpus_entity_files_parse_as_cedar_parses_them() {
        let corpus = corpus_files();
        let (mut files, mut entities, mut typed) = (0, 0, 0);
        for (name, text) in &corpus {
            let Some(stem) = name.strip_suffix(".entities.json") else {
                continue;
            };
            let path = std::path::Path::new(name);
            let schema_text = corpus[&format!("{stem}.cedarschema")].clone();
            let schema = Schema::from_cedarschema_str(&schema_text).unwrap().0;
            for (schema, schema_text) in [(Some(&schema), Some(schema_text.as_str())), (None, None)]
            {
                let shapes = shapes(schema_text);
                let cedar = cedar_parse(text, schema);
                let ours = parse_on(text, schema, &shapes, 2);
                match (&ours, &cedar) {
                    (Ok(o), Ok(c)) => assert!(o.deep_eq(c), "{}", path.display()),
                    _ => assert_eq!(error_of(ours), error_of(cedar), "{}", path.display()),
                }
                let raw = serde_json::from_str::<Vec<&RawValue>>(text).unwrap();
                entities += raw.len();
                typed += raw
                    .iter()
                    .filter(|r| typed_entity::read_core(r.get(), &shapes, None).is_some())
                    .count();
            }
            files += 1;
        }
        println!("{files} files, {entities} entities parsed, {typed} read by type");
        assert!(files > 1_000, "{files}");
        // The rest are actions, enumerated types, tags and the fuzzer's odd
        // shapes, which Cedar's parse reads.
        assert!(typed > entities / 3, "{typed} of {entities}");
    }
}
