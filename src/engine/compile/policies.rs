//! The policies: every policy file parsed and given its final id, template
//! links linked, strict validation against the schema, and the shadow
//! policies split off the live ones.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::SystemTime;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::{CompileError, Input, Inputs, Origins};
use crate::engine::ShadowSet;
use crate::engine::index::{PolicyIndex, copy_policy};
use crate::engine::links::{self, GrantState, Window};
use crate::engine::source::{SourceProblem, line_column, problem, render_diagnostic};

/// The index of `policies`; a link that cannot be linked again fails the load.
pub(super) fn indexed(
    policies: &PolicySet,
    windows: &HashMap<PolicyId, Window>,
) -> Result<PolicyIndex, CompileError> {
    PolicyIndex::new(policies, windows).map_err(|e| {
        CompileError(vec![SourceProblem {
            file: String::new(),
            line: 1,
            column: 1,
            message: format!("cannot index the template links: {e}"),
        }])
    })
}

/// The links of every `*.links.json` file, as linked into the policy set.
#[derive(Debug, Default)]
pub(super) struct Linked<'a> {
    /// Every link's window (unbounded for a standing link), by link id.
    pub(super) windows: HashMap<PolicyId, Window>,
    /// Each link's file, line and column.
    pub(super) at: HashMap<PolicyId, (Input<'a>, usize, usize)>,
}

impl Linked<'_> {
    /// A warning for each link already past its `expires_at` at `now`: it
    /// is harmless, but it is dead weight in the repository.
    pub(super) fn expired(&self, now: SystemTime) -> Vec<SourceProblem> {
        let mut found: Vec<SourceProblem> = self
            .windows
            .iter()
            .filter(|(_, w)| w.state(now) == GrantState::Expired)
            .filter_map(|(id, w)| {
                let &(file, line, column) = self.at.get(id)?;
                let until = w.expires_at.map(humantime::format_rfc3339_seconds)?;
                Some(SourceProblem {
                    file: file.name.to_string(),
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
pub(super) fn link_all<'a>(
    inputs: &Inputs<'a>,
    set: &mut PolicySet,
    origins: &mut Origins<'a>,
    problems: &mut Vec<SourceProblem>,
) -> Linked<'a> {
    let mut linked = Linked::default();
    for &file in &inputs.links {
        let (found, bad) = links::parse_file(file.text);
        problems.extend(bad.into_iter().map(|(e, line, column)| SourceProblem {
            file: file.name.to_string(),
            line,
            column,
            message: e.to_string(),
        }));
        for link in found {
            let at = |message: String| SourceProblem {
                file: file.name.to_string(),
                line: link.line,
                column: link.column,
                message,
            };
            let id = &link.id;
            if let Some(first) = origins.get(id) {
                let other = first.name;
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
            origins.insert(id.clone(), file);
            linked.at.insert(id.clone(), (file, link.line, link.column));
            linked.windows.insert(id.clone(), link.window);
        }
    }
    linked
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
pub(super) fn split_shadow(
    policies: PolicySet,
    origins: &Origins<'_>,
    windows: &HashMap<PolicyId, Window>,
) -> Result<(PolicySet, Option<ShadowSet>), CompileError> {
    let file_of = |id: &PolicyId| {
        origins
            .get(id)
            .map_or(String::new(), |f| f.name.to_string())
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
            CompileError(vec![SourceProblem {
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
pub(super) fn parse<'a>(
    inputs: &Inputs<'a>,
    problems: &mut Vec<SourceProblem>,
    warnings: &mut Vec<SourceProblem>,
) -> (PolicySet, Origins<'a>) {
    let mut set = PolicySet::new();
    let mut origins: Origins<'a> = HashMap::new();
    for &file in &inputs.policies {
        let parsed = match PolicySet::from_str(file.text) {
            Ok(parsed) => parsed,
            Err(errs) => {
                problems.extend(errs.iter().map(|e| problem(file.name, file.text, e)));
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
        let starts = policy_starts(file.text);
        for (index, policy) in in_file {
            let id = match policy.annotation("id") {
                Some(id) => PolicyId::new(id),
                None => {
                    let id = format!("{}#{index}", file.name);
                    let (line, column) = starts
                        .get(index)
                        .map_or((1, 1), |&o| line_column(file.text, o));
                    warnings.push(SourceProblem {
                        file: file.name.to_string(),
                        line,
                        column,
                        message: format!(
                            "policy has no `@id` annotation; its id is `{id}`, which changes when policies above it move (help: add `@id(\"...\")`)"
                        ),
                    });
                    PolicyId::new(id)
                }
            };
            // Any other value (`@shadow("false")`) would read as its opposite.
            if let Some(value) = policy.annotation("shadow")
                && !matches!(value, "" | "true")
            {
                let (line, column) = starts
                    .get(index)
                    .map_or((1, 1), |&o| line_column(file.text, o));
                problems.push(SourceProblem {
                    file: file.name.to_string(),
                    line,
                    column,
                    message: format!(
                        "policy `{id}`: `@shadow(\"{value}\")` is not a shadow marker; write `@shadow` (or `@shadow(\"true\")`) to make it a shadow policy, or remove the annotation to make it live"
                    ),
                });
                continue;
            }
            if let Some(first) = origins.get(&id) {
                let (line, column) = find_id_annotation(file.text, id.as_ref());
                problems.push(SourceProblem {
                    file: file.name.to_string(),
                    line,
                    column,
                    message: format!(
                        "duplicate policy id `{id}`: already used in `{}`",
                        first.name
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
                    file: file.name.to_string(),
                    line: 1,
                    column: 1,
                    message: e.to_string(),
                });
                continue;
            }
            origins.insert(id, file);
        }
    }
    (set, origins)
}

/// Strict validation against the schema. A link's problems are placed at
/// the link, and a link the schema says can never apply is an error: its
/// slots do not fit the template's actions.
pub(super) fn validate(
    schema: &Schema,
    policies: &PolicySet,
    origins: &Origins<'_>,
    links_at: &HashMap<PolicyId, (Input<'_>, usize, usize)>,
    problems: &mut Vec<SourceProblem>,
    warnings: &mut Vec<SourceProblem>,
) {
    let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    let at_link = |id: &PolicyId, diag: &dyn Fn() -> String| {
        let &(file, line, column) = links_at.get(id)?;
        Some(SourceProblem {
            file: file.name.to_string(),
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
            Some(file) => {
                problems.push(problem(file.name, file.text, err));
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
            Some(file) => {
                warnings.push(problem(file.name, file.text, warning));
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

    #[test]
    fn shadow_takes_no_value_but_true() {
        let options = crate::engine::CompileOptions::default();
        let load = |text: &str| {
            crate::engine::compile(&crate::engine::test_inputs(&[("p.cedar", text)]), &options)
        };
        for marker in ["@shadow", "@shadow(\"true\")"] {
            let text = format!("@id(\"a\") {marker} forbid (principal, action, resource);");
            let compiled = load(&text).unwrap();
            assert!(compiled.engine.shadow_policies().is_some(), "{marker}");
            assert_eq!(compiled.engine.policy_count(), 0, "{marker}");
        }
        let text = "permit (principal, action, resource);\n@id(\"a\") @shadow(\"false\") forbid (principal, action, resource);";
        let Err(crate::engine::CompileError(found)) = load(text) else {
            panic!("`@shadow(\"false\")` loaded");
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].column), (2, 1), "{found:?}");
        assert!(
            found[0]
                .message
                .starts_with("policy `a`: `@shadow(\"false\")` is not a shadow marker"),
            "{found:?}"
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
    fn finds_id_annotation() {
        let text =
            "permit(principal,action,resource);\n  @id(\"x\")\nforbid(principal,action,resource);";
        assert_eq!(find_id_annotation(text, "x"), (2, 3));
        assert_eq!(find_id_annotation(text, "y"), (1, 1));
    }
}
