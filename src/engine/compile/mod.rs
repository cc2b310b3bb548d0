//! Compiling: a policy set's texts turned into Cedar values, once per load.
//! All or nothing: every problem is reported, not just the first, and a
//! set with any problem yields no engine.
//!
//! One file per Cedar artifact: `schema`, `policies` (with template
//! links and the shadow split) and `entities`.

mod entities;
mod policies;
mod schema;

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use cedar_policy::{Entities, PolicyId};

use super::source::{Problems, SourceProblem};
use super::{Engine, entity_refs};

/// One input text, named as the problems found in it will be.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The name problems carry, e.g. the path relative to the directory.
    pub name: &'a str,
    pub text: &'a str,
}

/// The syntax a schema is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaFormat {
    /// `.cedarschema`.
    Cedar,
    /// `.cedarschema.json`.
    Json,
}

/// A policy set's texts, grouped by kind, each group in a stable order.
#[derive(Clone, Debug, Default)]
pub struct Inputs<'a> {
    /// More than one is a problem.
    pub schemas: Vec<(SchemaFormat, Input<'a>)>,
    pub policies: Vec<Input<'a>>,
    /// Template links (`*.links.json`).
    pub links: Vec<Input<'a>>,
    /// Cedar JSON entities (`*.entities.json`).
    pub entities: Vec<Input<'a>>,
}

/// Options that change how inputs compile.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Validate policies strictly against the schema when one is present.
    pub validate_policies: bool,
    /// Entity types (full names) no request may define.
    pub stored_only_types: HashSet<String>,
    /// Per entity type (full name), the attributes a query's offered
    /// properties may add to a stored entity; other stored entities are
    /// closed.
    pub open_properties: HashMap<String, HashSet<String>>,
}

/// Why inputs did not compile: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}", Problems(.0))]
pub struct CompileError(pub Vec<SourceProblem>);

/// A compiled set, and the problems that did not stop it: policies
/// without `@id`, policies that can never apply, schema warnings, expired
/// links.
#[derive(Debug)]
pub struct Compiled {
    pub engine: Engine,
    pub warnings: Vec<SourceProblem>,
}

/// Where each policy, template and link id came from.
type Origins<'a> = HashMap<PolicyId, Input<'a>>;

/// Parses, links and validates `inputs` into an engine.
pub fn compile(inputs: &Inputs<'_>, options: &CompileOptions) -> Result<Compiled, CompileError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let schema = schema::parse(inputs, &mut problems, &mut warnings);
    let (context_types, entity_shapes) = schema::types(inputs, schema.as_ref());
    // Entities need only the schema: parse them on a second thread while
    // this one parses and validates the policies. Each is about half of a
    // large reload.
    let (policies, origins, entities, linked) = std::thread::scope(|scope| {
        let entities = scope.spawn(|| {
            let mut found = Vec::new();
            let entities = entities::parse(inputs, schema.as_ref(), &entity_shapes, &mut found);
            (entities, found)
        });
        let (mut policies, mut origins) = policies::parse(inputs, &mut problems, &mut warnings);
        let linked = policies::link_all(inputs, &mut policies, &mut origins, &mut problems);
        if let (Some(schema), true) = (&schema, options.validate_policies) {
            policies::validate(
                schema,
                &policies,
                &origins,
                &linked.at,
                &mut problems,
                &mut warnings,
            );
        }
        // Problems keep their order: schema, policies, validation, entities.
        let entities = match entities.join() {
            Ok((entities, found)) => {
                problems.extend(found);
                entities
            }
            Err(_) => {
                problems.push(SourceProblem {
                    file: String::new(),
                    line: 1,
                    column: 1,
                    message: "entity parsing failed unexpectedly".to_string(),
                });
                Entities::empty()
            }
        };
        (policies, origins, entities, linked)
    });
    if !problems.is_empty() {
        return Err(CompileError(problems));
    }
    warnings.extend(linked.expired(SystemTime::now()));

    let (policies, shadow) = policies::split_shadow(policies, &origins, &linked.windows)?;
    let index = policies::indexed(&policies, &linked.windows)?;
    let dangling = entity_refs::dangling(&entities);
    let engine = Engine {
        uid: next_engine_uid(),
        policies,
        index,
        shadow,
        schema,
        entities,
        dangling,
        stored_only_types: options.stored_only_types.clone(),
        open_properties: options.open_properties.clone(),
        context_types,
        entity_shapes,
        grants: linked.windows.into_values().collect(),
    };
    Ok(Compiled { engine, warnings })
}

/// A process-wide counter: no two engines share a uid.
fn next_engine_uid() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use super::*;

    const TEMPLATES: &str = r#"@id("reads")
permit (principal == ?principal, action == Action::"read", resource == ?resource);
permit (principal in ?principal, action, resource);
@id("static") permit (principal == User::"admin", action, resource);
"#;

    const SCHEMA: &str = r#"entity User; entity Agent; entity Doc;
action read appliesTo { principal: [Agent], resource: Doc };"#;

    fn load(files: &[(&str, &str)]) -> Result<Compiled, CompileError> {
        let options = CompileOptions {
            validate_policies: true,
            ..CompileOptions::default()
        };
        compile(&crate::engine::test_inputs(files), &options)
    }

    fn problems(files: &[(&str, &str)]) -> Vec<String> {
        match load(files) {
            Err(CompileError(problems)) => problems.iter().map(|p| p.to_string()).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn templates_load_and_links_become_policies_with_their_own_ids() {
        let links = r#"[
 {"id": "g1", "template": "reads", "slots": {"?principal": "Agent::\"a\"", "?resource": "Doc::\"d\""},
  "expires_at": "2999-01-01T00:00:00Z"},
 {"id": "g2", "template": "t.cedar#1", "slots": {"?principal": "User::\"group\""}}
]"#;
        let s = load(&[("t.cedar", TEMPLATES), ("a.links.json", links)]).unwrap();
        assert_eq!(s.engine.policies.num_of_templates(), 2);
        assert_eq!(
            s.engine.policy_count(),
            3,
            "the static policy and two links"
        );
        let g1 = s.engine.policies.policy(&PolicyId::new("g1")).unwrap();
        assert_eq!(g1.template_id().unwrap().to_string(), "reads");
        assert_eq!(s.engine.index.len(), 3);
        assert_eq!(s.engine.grants.len(), 2);
        // Only the template without `@id` is worth a warning.
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(
            s.warnings[0].message.contains("`t.cedar#1`"),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn bad_links_fail_the_load_at_the_link() {
        let one = |links: &str| problems(&[("t.cedar", TEMPLATES), ("a.links.json", links)]);
        let got = one(r#"[{"id": "g", "template": "nope", "slots": {}}]"#);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(
                "a.links.json:1:9: link `g`: no template `nope` (templates: `reads`, `t.cedar#1`)"
            ),
            "{got:?}"
        );
        let got = one(r#"[{"id": "g", "template": "static"}]"#);
        assert!(
            got[0].contains("`static` is a static policy, not a template"),
            "{got:?}"
        );
        let got =
            one(r#"[{"id": "g", "template": "reads", "slots": {"?principal": "Agent::\"a\""}}]"#);
        assert!(
            got[0].contains("template `reads` has slots `?principal`, `?resource`; the link does not fill `?resource`"),
            "{got:?}"
        );
        let got = one(
            r#"[{"id": "g", "template": "t.cedar#1", "slots": {"?principal": "User::\"a\"", "?resource": "Doc::\"d\""}}]"#,
        );
        assert!(
            got[0].contains("fills `?resource`, which the template does not have"),
            "{got:?}"
        );
        // Ids are unique across links, policies and templates, in any file.
        let got = problems(&[
            ("t.cedar", TEMPLATES),
            (
                "a.links.json",
                r#"[{"id": "g", "template": "t.cedar#1", "slots": {"?principal": "User::\"a\""}}]"#,
            ),
            (
                "b.links.json",
                r#"[{"id": "g", "template": "t.cedar#1", "slots": {"?principal": "User::\"b\""}},
                    {"id": "static", "template": "t.cedar#1", "slots": {"?principal": "User::\"c\""}},
                    {"id": "reads", "template": "t.cedar#1", "slots": {"?principal": "User::\"c\""}}]"#,
            ),
        ]);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].contains("b.links.json:1:9: duplicate link id `g`: already the id of a link in `a.links.json`"), "{got:?}");
        assert!(
            got[1].contains(
                "duplicate link id `static`: already the id of a policy or template in `t.cedar`"
            ),
            "{got:?}"
        );
        assert!(got[2].contains("duplicate link id `reads`"), "{got:?}");
    }

    #[test]
    fn with_a_schema_slots_must_fit_it() {
        let load_links = |links: &str| {
            load(&[
                (
                    "t.cedar",
                    "@id(\"reads\") permit (principal == ?principal, action == Action::\"read\", resource == ?resource);",
                ),
                ("s.cedarschema", SCHEMA),
                ("a.links.json", links),
            ])
        };
        let fits = r#"[{"id": "g", "template": "reads", "slots": {"?principal": "Agent::\"a\"", "?resource": "Doc::\"d\""}}]"#;
        load_links(fits).unwrap();
        for (slot, why) in [(r#"Robot::\"r\""#, "Robot"), (r#"User::\"u\""#, "")] {
            let links = fits.replace(r#"Agent::\"a\""#, slot);
            let Err(CompileError(found)) = load_links(&links) else {
                panic!("`{slot}` fits the schema");
            };
            // An unknown type also leaves the template's action without an
            // applicable principal: one or two problems, all at the link.
            assert!(!found.is_empty());
            assert!(
                found
                    .iter()
                    .all(|p| p.file == "a.links.json" && p.line == 1)
            );
            assert!(
                found[0]
                    .message
                    .starts_with("link `g` does not fit the schema: ")
                    && found[0].message.contains(why),
                "{found:?}"
            );
        }
    }

    #[test]
    fn expired_links_are_warnings_and_a_shadow_template_links_into_the_shadow_set() {
        let s = load(&[
            ("t.cedar", TEMPLATES),
            (
                "shadow/new.cedar",
                "@id(\"trial\") permit (principal == ?principal, action, resource);",
            ),
            (
                "a.links.json",
                r#"[{"id": "old", "template": "t.cedar#1", "slots": {"?principal": "User::\"a\""},
                     "expires_at": "2020-01-01T00:00:00Z"},
                    {"id": "try", "template": "trial", "slots": {"?principal": "User::\"a\""}}]"#,
            ),
        ])
        .unwrap();
        let expired: Vec<_> = s
            .warnings
            .iter()
            .filter(|w| w.file.ends_with(".links.json"))
            .collect();
        assert_eq!(expired.len(), 1, "{:?}", s.warnings);
        assert_eq!(
            expired[0].to_string(),
            "a.links.json:1:9: link `old` expired at 2020-01-01T00:00:00Z; it no longer applies (help: remove it from the repository)"
        );
        let shadow = s.engine.shadow.as_ref().unwrap();
        assert!(shadow.policies.policy(&PolicyId::new("try")).is_some());
        assert!(s.engine.policies.policy(&PolicyId::new("try")).is_none());
        assert!(s.engine.policies.policy(&PolicyId::new("old")).is_some());
        assert_eq!(
            s.engine.grant_counts(SystemTime::now()),
            crate::engine::GrantCounts {
                active: 1,
                pending: 0,
                expired: 1
            }
        );
    }
}
