//! Builds a [`Snapshot`] from a directory's [`Sources`]: the one boundary
//! where files turn into Cedar values. Loading is all or nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{Entities, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;

use super::entity_json::EntityFileError;
use super::index::{PolicyIndex, copy_policy};
use super::links::{self, GrantState, Window};
use super::reader::{FileKind, Sources};
use super::snapshot::{ShadowSet, Snapshot};
use super::typed_entity::EntityShapes;
use crate::config::{Config, SchemaRequirement};
use crate::context_types::ContextTypes;
use crate::schema_types::Resolved;

/// Options that change how a directory is turned into a snapshot.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Validate policies strictly against the schema when one is present.
    pub validate_policies: bool,
    /// Refuse a reload that drops the live set's schema.
    pub keep_schema: bool,
    /// Entity types (full names) no request may define.
    pub stored_only_types: HashSet<String>,
}

impl LoadOptions {
    /// The options `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        Self {
            validate_policies: config.validation.policies,
            keep_schema: config.validation.schema == SchemaRequirement::RequiredOnceLoaded,
            stored_only_types: config
                .validation
                .stored_only_types
                .iter()
                .cloned()
                .collect(),
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// Why a policy directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory, or a file in it, could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no `.cedar` file; serving an empty set would deny
    /// everything, which is never what a half-synced volume means.
    #[error("no `.cedar` policy files under `{}`", .0.display())]
    NoPolicies(PathBuf),
    /// Files were read but do not form a valid policy set.
    #[error("{}", Problems(.0))]
    Invalid(Vec<SourceProblem>),
    /// The new set has no schema but the live one has: requests would parse
    /// untyped, so an `ipaddr` stays a string and network `forbid`s stop
    /// matching.
    #[error(
        "the new set has no schema, but the live set (revision {live_revision}) has one; restore the `.cedarschema` file, or set `[validation] schema = \"optional\"` to allow dropping it"
    )]
    SchemaRemoved { live_revision: String },
}

/// One problem in one file, located as `file:line:column`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceProblem {
    /// Path relative to the policy directory.
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SourceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

struct Problems<'a>(&'a [SourceProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Parses and validates `sources` into a snapshot. Reports every problem
/// found, not just the first.
pub fn build(
    sources: Sources,
    options: &LoadOptions,
    generation: u64,
) -> Result<Snapshot, LoadError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let schema = parse_schema(&sources, &mut problems, &mut warnings);
    if !sources.files.iter().any(|f| f.kind == FileKind::Policies) {
        return Err(LoadError::NoPolicies(sources.root));
    }
    let schema_file = schema.as_ref().and_then(|_| {
        sources
            .files
            .iter()
            .find(|f| matches!(f.kind, FileKind::CedarSchema | FileKind::JsonSchema))
    });
    // The schema's types, for reading contexts and stored entities by them.
    let (context_types, entity_shapes) = match schema_file {
        None => (ContextTypes::schemaless(), EntityShapes::schemaless()),
        Some(f) => {
            let resolved = if f.kind == FileKind::JsonSchema {
                Resolved::json_schema(&f.text)
            } else {
                Resolved::cedarschema(&f.text)
            };
            (
                ContextTypes::from_resolved(resolved.as_ref()),
                EntityShapes::from_resolved(resolved.as_ref()),
            )
        }
    };
    // Entities need only the schema: parse them on a second thread while
    // this one parses and validates the policies. Each is about half of a
    // large reload.
    let (policies, origins, entities, linked) = std::thread::scope(|scope| {
        let entities = scope.spawn(|| {
            let mut found = Vec::new();
            let entities = parse_entities(&sources, schema.as_ref(), &entity_shapes, &mut found);
            (entities, found)
        });
        let (mut policies, mut origins) = parse_policies(&sources, &mut problems, &mut warnings);
        let linked = link_all(&sources, &mut policies, &mut origins, &mut problems);
        if let (Some(schema), true) = (&schema, options.validate_policies) {
            validate(
                schema,
                &policies,
                &origins,
                &linked.at,
                &sources,
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
        return Err(LoadError::Invalid(problems));
    }
    warnings.extend(linked.expired(&sources, SystemTime::now()));

    let (policies, shadow) = split_shadow(policies, &origins, &linked.windows, &sources)?;
    let policy_count = policies.num_of_policies();
    let entity_count = entities.len();
    let index = indexed(&policies, &linked.windows)?;
    let dangling = super::entity_refs::dangling(&entities);
    let schema_digest = schema_file.map(|file| {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(file.text.as_bytes());
        format!("sha256:{}", hex::encode(digest))
    });
    Ok(Snapshot {
        revision: sources.revision(),
        git_commit: sources.git.clone(),
        digest: sources.digest,
        generation,
        uid: next_snapshot_uid(),
        loaded_at: SystemTime::now(),
        policy_count,
        entity_count,
        policies,
        index,
        shadow,
        schema,
        schema_digest,
        entities,
        dangling,
        stored_only_types: options.stored_only_types.clone(),
        context_types,
        entity_shapes,
        grants: linked.windows.into_values().collect(),
        warnings,
    })
}

/// The index of `policies`; a link that cannot be linked again fails the load.
fn indexed(
    policies: &PolicySet,
    windows: &HashMap<PolicyId, Window>,
) -> Result<PolicyIndex, LoadError> {
    PolicyIndex::new(policies, windows).map_err(|e| {
        LoadError::Invalid(vec![SourceProblem {
            file: String::new(),
            line: 1,
            column: 1,
            message: format!("cannot index the template links: {e}"),
        }])
    })
}

/// The links of every `*.links.json` file, as linked into the policy set.
#[derive(Debug, Default)]
struct Linked {
    /// Every link's window (unbounded for a standing link), by link id.
    windows: HashMap<PolicyId, Window>,
    /// Each link's file index, line and column.
    at: HashMap<PolicyId, (usize, usize, usize)>,
}

impl Linked {
    /// A warning for each link already past its `expires_at` at `now`: it
    /// is harmless, but it is dead weight in the repository.
    fn expired(&self, sources: &Sources, now: SystemTime) -> Vec<SourceProblem> {
        let mut found: Vec<SourceProblem> = self
            .windows
            .iter()
            .filter(|(_, w)| w.state(now) == GrantState::Expired)
            .filter_map(|(id, w)| {
                let &(file, line, column) = self.at.get(id)?;
                let until = w.expires_at.map(humantime::format_rfc3339_seconds)?;
                Some(SourceProblem {
                    file: sources.files.get(file)?.rel.clone(),
                    line,
                    column,
                    message: format!(
                        "link `{id}` expired at {until}; it no longer applies (help: remove it from the repository)"
                    ),
                })
            })
            .collect();
        found.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        found
    }
}

/// Reads every `*.links.json` file and links each entry into `set` under
/// its own id: the template must exist, its slots must be exactly the ones
/// the link fills, and the id must be new among policies, templates and
/// links. Problems are located at the link's `id` in its file.
fn link_all(
    sources: &Sources,
    set: &mut PolicySet,
    origins: &mut HashMap<PolicyId, usize>,
    problems: &mut Vec<SourceProblem>,
) -> Linked {
    let mut linked = Linked::default();
    for (file_idx, file) in sources.files.iter().enumerate() {
        if file.kind != FileKind::Links {
            continue;
        }
        let (found, bad) = links::parse_file(&file.text);
        problems.extend(bad.into_iter().map(|(e, line, column)| SourceProblem {
            file: file.rel.clone(),
            line,
            column,
            message: e.to_string(),
        }));
        for link in found {
            let at = |message: String| SourceProblem {
                file: file.rel.clone(),
                line: link.line,
                column: link.column,
                message,
            };
            let id = &link.id;
            if let Some(&first) = origins.get(id) {
                let other = sources.files.get(first).map_or("", |f| f.rel.as_str());
                let what = if linked.at.contains_key(id) {
                    "link"
                } else {
                    "policy or template"
                };
                problems.push(at(format!(
                    "duplicate link id `{id}`: already the id of a {what} in `{other}`"
                )));
                continue;
            }
            let Some(template) = set.template(&link.template) else {
                let message = if set.policy(&link.template).is_some() {
                    format!(
                        "link `{id}`: `{}` is a static policy, not a template (a template has a `?principal` or `?resource` slot)",
                        link.template
                    )
                } else {
                    let mut known: Vec<String> =
                        set.templates().map(|t| format!("`{}`", t.id())).collect();
                    known.sort_unstable();
                    let known = if known.is_empty() {
                        "there are none".to_string()
                    } else {
                        known.join(", ")
                    };
                    format!(
                        "link `{id}`: no template `{}` (templates: {known})",
                        link.template
                    )
                };
                problems.push(at(message));
                continue;
            };
            let mut wanted: Vec<String> = template.slots().map(ToString::to_string).collect();
            wanted.sort_unstable();
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|w| !link.slots.keys().any(|k| &k.to_string() == *w))
                .collect();
            let extra: Vec<String> = link
                .slots
                .keys()
                .map(ToString::to_string)
                .filter(|k| !wanted.contains(k))
                .collect();
            if !missing.is_empty() || !extra.is_empty() {
                let list = |v: Vec<String>| {
                    v.iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!(
                        "does not fill {}",
                        list(missing.into_iter().cloned().collect())
                    ));
                }
                if !extra.is_empty() {
                    parts.push(format!(
                        "fills {}, which the template does not have",
                        list(extra)
                    ));
                }
                problems.push(at(format!(
                    "link `{id}`: template `{}` has slots {}; the link {}",
                    link.template,
                    if wanted.is_empty() {
                        "none".to_string()
                    } else {
                        list(wanted)
                    },
                    parts.join(" and ")
                )));
                continue;
            }
            if let Err(e) = set.link(link.template.clone(), id.clone(), link.slots.clone()) {
                problems.push(at(format!(
                    "link `{id}`: {}",
                    crate::error_chain::chain(&e)
                )));
                continue;
            }
            origins.insert(id.clone(), file_idx);
            linked
                .at
                .insert(id.clone(), (file_idx, link.line, link.column));
            linked.windows.insert(id.clone(), link.window);
        }
    }
    linked
}

/// A process-wide counter: no two snapshots share a uid.
fn next_snapshot_uid() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Whether a policy is a shadow: annotated `@shadow`, or in a file under
/// the directory's `shadow/` folder. A link is a shadow when its template
/// is (a link carries its template's annotations) or its links file is
/// under `shadow/`.
fn is_shadow(policy: &cedar_policy::Policy, file_of: impl Fn(&PolicyId) -> String) -> bool {
    annotation(policy.annotations(), "shadow").is_some()
        || file_of(policy.id()).starts_with("shadow/")
        || policy
            .template_id()
            .is_some_and(|t| file_of(t).starts_with("shadow/"))
}

/// Splits the shadow policies off the live ones.
fn split_shadow(
    policies: PolicySet,
    origins: &HashMap<PolicyId, usize>,
    windows: &HashMap<PolicyId, Window>,
    sources: &Sources,
) -> Result<(PolicySet, Option<ShadowSet>), LoadError> {
    let file_of = |id: &PolicyId| {
        origins
            .get(id)
            .and_then(|&i| sources.files.get(i))
            .map_or(String::new(), |f| f.rel.clone())
    };
    if !policies.policies().any(|p| is_shadow(p, file_of)) {
        return Ok((policies, None));
    }
    let templates: HashMap<PolicyId, cedar_policy::Template> = policies
        .templates()
        .map(|t| (t.id().clone(), t.clone()))
        .collect();
    let (mut live, mut shadow) = (PolicySet::new(), PolicySet::new());
    for p in policies.policies() {
        let into = if is_shadow(p, file_of) {
            &mut shadow
        } else {
            &mut live
        };
        copy_policy(into, p, &templates).map_err(|e| {
            LoadError::Invalid(vec![SourceProblem {
                file: String::new(),
                line: 1,
                column: 1,
                message: format!("cannot split the shadow policies off: {e}"),
            }])
        })?;
    }
    let index = indexed(&shadow, windows)?;
    Ok((
        live,
        Some(ShadowSet {
            policies: shadow,
            index,
        }),
    ))
}

fn parse_schema(
    sources: &Sources,
    problems: &mut Vec<SourceProblem>,
    warnings: &mut Vec<SourceProblem>,
) -> Option<Schema> {
    let files: Vec<_> = sources
        .files
        .iter()
        .filter(|f| matches!(f.kind, FileKind::CedarSchema | FileKind::JsonSchema))
        .collect();
    if files.len() > 1 {
        let names: Vec<_> = files.iter().map(|f| format!("`{}`", f.rel)).collect();
        problems.push(SourceProblem {
            file: files[1].rel.clone(),
            line: 1,
            column: 1,
            message: format!("more than one schema file: {}", names.join(", ")),
        });
        return None;
    }
    let file = files.first()?;
    if file.kind == FileKind::JsonSchema {
        return Schema::from_json_str(&file.text)
            .map_err(|e| problems.push(problem(&file.rel, &file.text, &e)))
            .ok();
    }
    match Schema::from_cedarschema_str(&file.text) {
        Ok((schema, found)) => {
            warnings.extend(found.map(|w| problem(&file.rel, &file.text, &w)));
            Some(schema)
        }
        Err(e) => {
            problems.push(problem(&file.rel, &file.text, &e));
            None
        }
    }
}

/// A static policy or a template, as parsed from one file.
#[derive(Clone, Copy)]
enum Parsed<'a> {
    Policy(&'a cedar_policy::Policy),
    Template(&'a cedar_policy::Template),
}

impl Parsed<'_> {
    fn annotation(&self, key: &str) -> Option<&str> {
        match self {
            Self::Policy(p) => annotation(p.annotations(), key),
            Self::Template(t) => annotation(t.annotations(), key),
        }
    }
}

/// The value of annotation `key`. Cedar's own `annotation(key)` runs its
/// full parser on `key` on every call, which was an eighth of loading
/// 10,000 policies.
fn annotation<'a>(
    mut annotations: impl Iterator<Item = (&'a str, &'a str)>,
    key: &str,
) -> Option<&'a str> {
    annotations.find_map(|(k, v)| (k == key).then_some(v))
}

/// Parses every `.cedar` file and gives each policy and template its final
/// id: the `@id` annotation, or `<file>#<index>`. Returns where each id
/// came from.
fn parse_policies(
    sources: &Sources,
    problems: &mut Vec<SourceProblem>,
    warnings: &mut Vec<SourceProblem>,
) -> (PolicySet, HashMap<PolicyId, usize>) {
    let mut set = PolicySet::new();
    let mut origins: HashMap<PolicyId, usize> = HashMap::new();
    for (file_idx, file) in sources.files.iter().enumerate() {
        if file.kind != FileKind::Policies {
            continue;
        }
        let parsed = match PolicySet::from_str(&file.text) {
            Ok(parsed) => parsed,
            Err(errs) => {
                problems.extend(errs.iter().map(|e| problem(&file.rel, &file.text, e)));
                continue;
            }
        };
        // The parser names policies and templates `policy<N>` in file
        // order, with one counter.
        let order = |id: &PolicyId| {
            id.to_string()
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        };
        let mut in_file: Vec<_> = parsed
            .policies()
            .map(|p| (order(p.id()), Parsed::Policy(p)))
            .chain(
                parsed
                    .templates()
                    .map(|t| (order(t.id()), Parsed::Template(t))),
            )
            .collect();
        in_file.sort_by_key(|(index, _)| *index);
        let starts = policy_starts(&file.text);
        for (index, policy) in in_file {
            let id = match policy.annotation("id") {
                Some(id) => PolicyId::new(id),
                None => {
                    let id = format!("{}#{index}", file.rel);
                    let (line, column) = starts
                        .get(index)
                        .map_or((1, 1), |&o| line_column(&file.text, o));
                    warnings.push(SourceProblem {
                        file: file.rel.clone(),
                        line,
                        column,
                        message: format!(
                            "policy has no `@id` annotation; its id is `{id}`, which changes when policies above it move (help: add `@id(\"...\")`)"
                        ),
                    });
                    PolicyId::new(id)
                }
            };
            if let Some(&first) = origins.get(&id) {
                let (line, column) = find_id_annotation(&file.text, id.as_ref());
                problems.push(SourceProblem {
                    file: file.rel.clone(),
                    line,
                    column,
                    message: format!(
                        "duplicate policy id `{id}`: already used in `{}`",
                        sources.files[first].rel
                    ),
                });
                continue;
            }
            let added = match policy {
                Parsed::Policy(p) => set.add(p.new_id(id.clone())),
                Parsed::Template(t) => set.add_template(t.new_id(id.clone())),
            };
            if let Err(e) = added {
                problems.push(SourceProblem {
                    file: file.rel.clone(),
                    line: 1,
                    column: 1,
                    message: e.to_string(),
                });
                continue;
            }
            origins.insert(id, file_idx);
        }
    }
    (set, origins)
}

/// Strict validation against the schema. A link's problems are placed at
/// the link, and a link the schema says can never apply is an error: its
/// slots do not fit the template's actions.
fn validate(
    schema: &Schema,
    policies: &PolicySet,
    origins: &HashMap<PolicyId, usize>,
    links_at: &HashMap<PolicyId, (usize, usize, usize)>,
    sources: &Sources,
    problems: &mut Vec<SourceProblem>,
    warnings: &mut Vec<SourceProblem>,
) {
    let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    let at_link = |id: &PolicyId, diag: &dyn Fn() -> String| {
        let &(file, line, column) = links_at.get(id)?;
        Some(SourceProblem {
            file: sources.files.get(file)?.rel.clone(),
            line,
            column,
            message: format!("link `{id}` does not fit the schema: {}", diag()),
        })
    };
    for err in result.validation_errors() {
        if let Some(p) = at_link(err.policy_id(), &|| render_diagnostic(err)) {
            problems.push(p);
            continue;
        }
        match origins.get(err.policy_id()) {
            Some(&idx) => {
                let file = &sources.files[idx];
                problems.push(problem(&file.rel, &file.text, err));
            }
            None => problems.push(SourceProblem {
                file: "<schema>".to_string(),
                line: 1,
                column: 1,
                message: err.to_string(),
            }),
        }
    }
    // Among these: policies that can never apply under the schema.
    for warning in result.validation_warnings() {
        if let Some(p) = at_link(warning.policy_id(), &|| render_diagnostic(warning)) {
            problems.push(p);
            continue;
        }
        match origins.get(warning.policy_id()) {
            Some(&idx) => {
                let file = &sources.files[idx];
                warnings.push(problem(&file.rel, &file.text, warning));
            }
            None => warnings.push(SourceProblem {
                file: "<schema>".to_string(),
                line: 1,
                column: 1,
                message: warning.to_string(),
            }),
        }
    }
}

fn parse_entities(
    sources: &Sources,
    schema: Option<&Schema>,
    shapes: &EntityShapes,
    problems: &mut Vec<SourceProblem>,
) -> Entities {
    let actions = match schema.map(Schema::action_entities) {
        Some(Ok(actions)) => actions,
        Some(Err(e)) => {
            problems.push(SourceProblem {
                file: "<schema>".to_string(),
                line: 1,
                column: 1,
                message: format!("cannot build action entities: {e}"),
            });
            Entities::empty()
        }
        None => Entities::empty(),
    };
    // A parsed file already holds the schema's actions (Cedar's parse adds
    // them), so the first one is the set as it is.
    let mut merged: Option<Entities> = None;
    for file in sources
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Entities)
    {
        // The parse has already checked the entities against the schema, so
        // the merge does not check them again (a merge re-walks the whole
        // hierarchy, so the first file is not merged into the actions).
        let added = match super::entity_json::parse(&file.text, schema, shapes) {
            Ok(parsed) => match &merged {
                None => Ok(parsed),
                Some(so_far) => so_far.clone().add_entities(parsed, None),
            },
            Err(EntityFileError::Json(e)) => {
                problems.push(SourceProblem {
                    file: file.rel.clone(),
                    line: e.line(),
                    column: e.column(),
                    message: format!("invalid JSON: {e}"),
                });
                continue;
            }
            Err(EntityFileError::Cedar(e)) => Err(*e),
        };
        match added {
            Ok(all) => merged = Some(all),
            Err(e) => problems.push(SourceProblem {
                file: file.rel.clone(),
                line: 1,
                column: 1,
                message: render_diagnostic(&e),
            }),
        }
    }
    merged.unwrap_or(actions)
}

/// Locates a diagnostic in `text` (the contents of `file`) by its first
/// labelled span.
pub(crate) fn problem(file: &str, text: &str, diag: &(impl Diagnostic + 'static)) -> SourceProblem {
    let offset = first_offset(diag);
    let (line, column) = offset.map_or((1, 1), |o| line_column(text, o));
    SourceProblem {
        file: file.to_string(),
        line,
        column,
        message: render_diagnostic(diag),
    }
}

fn first_offset(diag: &(impl Diagnostic + ?Sized)) -> Option<usize> {
    if let Some(label) = diag.labels().and_then(|mut l| l.next()) {
        return Some(label.offset());
    }
    diag.related()
        .and_then(|mut related| related.find_map(|d| d.labels().and_then(|mut l| l.next())))
        .map(|label| label.offset())
}

fn render_diagnostic(diag: &(impl Diagnostic + 'static)) -> String {
    let mut message = crate::error_chain::chain(diag);
    if let Some(related) = diag.related() {
        for r in related {
            message.push_str("; ");
            message.push_str(&r.to_string());
        }
    }
    if let Some(help) = diag.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    message
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Byte offsets where each policy of a file starts (its first annotation or
/// its effect), in file order: the parser keeps no public location per
/// policy. Statements end at `;` outside strings and comments.
fn policy_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    let mut in_statement = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                if !in_statement {
                    starts.push(i);
                    in_statement = true;
                }
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b';' => in_statement = false,
            b if b.is_ascii_whitespace() => {}
            _ if !in_statement => {
                starts.push(i);
                in_statement = true;
            }
            _ => {}
        }
        i += 1;
    }
    starts
}

/// The parser keeps no public source location per policy, so a duplicate
/// `@id` is located by its annotation text.
fn find_id_annotation(text: &str, id: &str) -> (usize, usize) {
    let needle = format!("\"{id}\"");
    let mut search = 0;
    while let Some(at) = text[search..].find("@id") {
        let start = search + at;
        let rest = &text[start..];
        let end = rest.find(')').unwrap_or(rest.len());
        if rest[..end].contains(&needle) {
            return line_column(text, start);
        }
        search = start + 3;
    }
    (1, 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use super::*;
    use crate::policy_store::read_dir;

    const TEMPLATES: &str = r#"@id("reads")
permit (principal == ?principal, action == Action::"read", resource == ?resource);
permit (principal in ?principal, action, resource);
@id("static") permit (principal == User::"admin", action, resource);
"#;

    const SCHEMA: &str = r#"entity User; entity Agent; entity Doc;
action read appliesTo { principal: [Agent], resource: Doc };"#;

    fn load(files: &[(&str, &str)]) -> Result<Snapshot, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        build(read_dir(dir.path()).unwrap(), &LoadOptions::default(), 1)
    }

    fn problems(files: &[(&str, &str)]) -> Vec<String> {
        match load(files) {
            Err(LoadError::Invalid(problems)) => problems.iter().map(|p| p.to_string()).collect(),
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
        assert_eq!(s.policies.num_of_templates(), 2);
        assert_eq!(s.policy_count, 3, "the static policy and two links");
        let g1 = s.policies.policy(&PolicyId::new("g1")).unwrap();
        assert_eq!(g1.template_id().unwrap().to_string(), "reads");
        assert_eq!(s.index.len(), 3);
        assert_eq!(s.grants.len(), 2);
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
            let Err(LoadError::Invalid(found)) = load_links(&links) else {
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
        let shadow = s.shadow.as_ref().unwrap();
        assert!(shadow.policies.policy(&PolicyId::new("try")).is_some());
        assert!(s.policies.policy(&PolicyId::new("try")).is_none());
        assert!(s.policies.policy(&PolicyId::new("old")).is_some());
        assert_eq!(
            s.grant_counts(SystemTime::now()),
            super::super::GrantCounts {
                active: 1,
                pending: 0,
                expired: 1
            }
        );
    }

    #[test]
    fn finds_where_policies_start() {
        let text = "// a; comment\n@id(\"x;y\")\npermit(principal, action, resource);\n\n  forbid(principal, action, resource) when { \"a;\" == \"b\" };\n";
        let starts = policy_starts(text);
        assert_eq!(starts.len(), 2);
        assert_eq!(line_column(text, starts[0]), (2, 1));
        assert_eq!(line_column(text, starts[1]), (5, 3));
    }

    #[test]
    fn line_column_counts_from_one() {
        let text = "ab\ncd\né f";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (2, 2));
        assert_eq!(line_column(text, 9), (3, 3));
    }

    #[test]
    fn finds_id_annotation() {
        let text =
            "permit(principal,action,resource);\n  @id(\"x\")\nforbid(principal,action,resource);";
        assert_eq!(find_id_annotation(text, "x"), (2, 3));
        assert_eq!(find_id_annotation(text, "y"), (1, 1));
    }
}
