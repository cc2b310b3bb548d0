//! Builds a [`Snapshot`] from a directory's [`Sources`]: the one boundary
//! where files turn into Cedar values. Loading is all or nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{Entities, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;

use super::index::PolicyIndex;
use super::reader::{FileKind, Sources};
use super::snapshot::{ShadowSet, Snapshot};
use crate::config::{Config, SchemaRequirement};

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
    // Entities need only the schema: parse them on a second thread while
    // this one parses and validates the policies. Each is about half of a
    // large reload.
    let (policies, origins, entities) = std::thread::scope(|scope| {
        let entities = scope.spawn(|| {
            let mut found = Vec::new();
            let entities = parse_entities(&sources, schema.as_ref(), &mut found);
            (entities, found)
        });
        let (policies, origins) = parse_policies(&sources, &mut problems, &mut warnings);
        if let (Some(schema), true) = (&schema, options.validate_policies) {
            validate(
                schema,
                &policies,
                &origins,
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
        (policies, origins, entities)
    });
    if !problems.is_empty() {
        return Err(LoadError::Invalid(problems));
    }

    let (policies, shadow) = split_shadow(policies, &origins, &sources)?;
    let policy_count = policies.num_of_policies();
    let entity_count = entities.len();
    let index = PolicyIndex::new(&policies);
    let dangling = super::entity_refs::dangling(&entities);
    let schema_digest = schema.as_ref().and_then(|_| {
        let file = sources
            .files
            .iter()
            .find(|f| matches!(f.kind, FileKind::CedarSchema | FileKind::JsonSchema))?;
        let digest = <sha2::Sha256 as sha2::Digest>::digest(file.text.as_bytes());
        Some(format!("sha256:{}", hex::encode(digest)))
    });
    Ok(Snapshot {
        revision: sources.revision(),
        git_commit: sources.git.clone(),
        digest: sources.digest,
        generation,
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
        warnings,
    })
}

/// Whether a policy is a shadow: annotated `@shadow`, or in a file under
/// the directory's `shadow/` folder.
fn is_shadow(policy: &cedar_policy::Policy, file: &str) -> bool {
    policy.annotation("shadow").is_some() || file.starts_with("shadow/")
}

/// Splits the shadow policies off the live ones.
fn split_shadow(
    policies: PolicySet,
    origins: &HashMap<PolicyId, usize>,
    sources: &Sources,
) -> Result<(PolicySet, Option<ShadowSet>), LoadError> {
    let file_of = |id: &PolicyId| {
        origins
            .get(id)
            .and_then(|&i| sources.files.get(i))
            .map_or("", |f| f.rel.as_str())
    };
    if !policies.policies().any(|p| is_shadow(p, file_of(p.id()))) {
        return Ok((policies, None));
    }
    let (shadow, live): (Vec<_>, Vec<_>) = policies
        .policies()
        .cloned()
        .partition(|p| is_shadow(p, file_of(p.id())));
    let set = |list: Vec<cedar_policy::Policy>| {
        PolicySet::from_policies(list).map_err(|e| {
            LoadError::Invalid(vec![SourceProblem {
                file: String::new(),
                line: 1,
                column: 1,
                message: format!("cannot split the shadow policies off: {e}"),
            }])
        })
    };
    let shadow = set(shadow)?;
    let index = PolicyIndex::new(&shadow);
    Ok((
        set(live)?,
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

/// Parses every `.cedar` file and gives each policy its final id: the `@id`
/// annotation, or `<file>#<index>`. Returns where each id came from.
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
        if let Some(t) = parsed.templates().next() {
            problems.push(SourceProblem {
                file: file.rel.clone(),
                line: 1,
                column: 1,
                message: format!(
                    "policy templates are not supported: `{}` has a slot; write a static policy",
                    t.id()
                ),
            });
            continue;
        }
        // The parser names policies `policy<N>` in file order.
        let mut in_file: Vec<_> = parsed
            .policies()
            .map(|p| {
                let index = p
                    .id()
                    .to_string()
                    .strip_prefix("policy")
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                (index, p)
            })
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
            if let Err(e) = set.add(policy.new_id(id.clone())) {
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

fn validate(
    schema: &Schema,
    policies: &PolicySet,
    origins: &HashMap<PolicyId, usize>,
    sources: &Sources,
    problems: &mut Vec<SourceProblem>,
    warnings: &mut Vec<SourceProblem>,
) {
    let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    for err in result.validation_errors() {
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
    problems: &mut Vec<SourceProblem>,
) -> Entities {
    let mut merged = match schema.map(Schema::action_entities) {
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
    for file in sources
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Entities)
    {
        let json: serde_json::Value = match serde_json::from_str(&file.text) {
            Ok(json) => json,
            Err(e) => {
                problems.push(SourceProblem {
                    file: file.rel.clone(),
                    line: e.line(),
                    column: e.column(),
                    message: format!("invalid JSON: {e}"),
                });
                continue;
            }
        };
        // `from_json_value` has already checked the entities against the
        // schema, so the merge does not check them again; with nothing to
        // merge into, the parsed set is the result (a merge re-walks the
        // whole hierarchy).
        let added = match Entities::from_json_value(json, schema) {
            Ok(parsed) if merged.is_empty() => Ok(parsed),
            Ok(parsed) => merged.clone().add_entities(parsed, None),
            Err(e) => Err(e),
        };
        match added {
            Ok(all) => merged = all,
            Err(e) => problems.push(SourceProblem {
                file: file.rel.clone(),
                line: 1,
                column: 1,
                message: render_diagnostic(&e),
            }),
        }
    }
    merged
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
fn line_column(text: &str, offset: usize) -> (usize, usize) {
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
    use super::*;

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
