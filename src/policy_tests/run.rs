//! Runs a [`Suite`] against a snapshot, through the decision pipeline's
//! checks and evaluation ([`pipeline::judge`]): conversion, limits, caller
//! binding, the server's `workload` and `caller` context, and Cedar, as
//! every server request takes them.

use std::time::{Duration, Instant};

use crate::engine::Decision;
use crate::engine::SourceProblem;
use crate::pipeline::{self, DecisionError, PipelineOptions};
use crate::policy_store::Snapshot;

use super::spec::{Case, Expect, Suite};

/// What one case did.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: String,
    pub line: usize,
    /// One line per expectation that did not hold; empty when it passed.
    pub mismatches: Vec<String>,
    pub elapsed: Duration,
}

impl CaseResult {
    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// The results of one test file.
#[derive(Clone, Debug)]
pub struct FileResult {
    /// Relative to the policy directory.
    pub rel: String,
    pub cases: Vec<CaseResult>,
}

/// The results of a whole suite, in file and case order.
#[derive(Clone, Debug)]
pub struct Report {
    pub files: Vec<FileResult>,
}

impl Report {
    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.cases().filter(|(_, c)| c.passed()).count()
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.cases().filter(|(_, c)| !c.passed()).count()
    }

    /// Every case with the file it is in.
    pub fn cases(&self) -> impl Iterator<Item = (&str, &CaseResult)> {
        self.files
            .iter()
            .flat_map(|f| f.cases.iter().map(move |c| (f.rel.as_str(), c)))
    }

    /// The summary line: `N passed, N failed`.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed", self.passed(), self.failed())
    }

    /// Each failing case as a problem located at the case, for a reload error.
    pub fn failures(&self) -> Vec<SourceProblem> {
        self.cases()
            .filter(|(_, c)| !c.passed())
            .map(|(file, c)| SourceProblem {
                file: file.to_string(),
                line: c.line,
                column: 1,
                message: format!("test `{}` failed: {}", c.name, c.mismatches.join("; ")),
            })
            .collect()
    }
}

/// Runs every case of `suite` against `snapshot`, judged with `opts` (the
/// server's limits and caller settings).
pub fn run(snapshot: &Snapshot, suite: &Suite, opts: &PipelineOptions) -> Report {
    Report {
        files: suite
            .files
            .iter()
            .map(|file| FileResult {
                rel: file.rel.clone(),
                cases: file
                    .cases
                    .iter()
                    .map(|c| run_case(snapshot, c, opts))
                    .collect(),
            })
            .collect(),
    }
}

fn run_case(snapshot: &Snapshot, case: &Case, opts: &PipelineOptions) -> CaseResult {
    let start = Instant::now();
    let judged = pipeline::judge_at(opts, snapshot, case.request.clone(), &case.caller, case.at);
    let mismatches = match (judged, case.expect.refused) {
        (Ok(decision), None) => compare(&case.expect, &decision),
        (Ok(decision), Some(reason)) => vec![format!(
            "expected the request to be refused with `{}`, but it was decided: {} (determining policies {})",
            reason.as_str(),
            word(decision.allow),
            list(&decision.determining_policies)
        )],
        (Err(e), Some(reason)) if e.reason == reason => Vec::new(),
        (Err(e), Some(reason)) => vec![format!(
            "expected the request to be refused with `{}`, but it was refused with `{}`: {}",
            reason.as_str(),
            e.reason.as_str(),
            e.message
        )],
        (Err(e), None) => vec![refused(&e)],
    };
    CaseResult {
        name: case.name.clone(),
        line: case.line,
        mismatches,
        elapsed: start.elapsed(),
    }
}

fn refused(e: &DecisionError) -> String {
    format!(
        "the request could not be evaluated (the server answers {}, reason `{}`): {}",
        e.code().name(),
        e.reason.as_str(),
        e.message
    )
}

fn word(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// Every way `actual` differs from `expect`, one line each.
fn compare(expect: &Expect, actual: &Decision) -> Vec<String> {
    let mut out = Vec::new();
    if expect.allow != actual.allow {
        out.push(format!(
            "decision: expected {}, got {} (determining policies {})",
            word(expect.allow),
            word(actual.allow),
            list(&actual.determining_policies)
        ));
    }
    if let Some(expected) = &expect.determining_policies
        && *expected != actual.determining_policies
    {
        out.push(format!(
            "determining policies: expected {}, got {}",
            list(expected),
            list(&actual.determining_policies)
        ));
    }
    if let Some(expected) = &expect.errors {
        let actual_errors: Vec<String> = actual
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.policy_id, e.message))
            .collect();
        // Each expected entry takes the first actual error it matches.
        let mut unmatched: Vec<_> = actual.errors.iter().collect();
        let mut missing = Vec::new();
        for e in expected {
            match unmatched.iter().position(|a| e.matches(a)) {
                Some(i) => {
                    unmatched.remove(i);
                }
                None => missing.push(e.to_string()),
            }
        }
        if !missing.is_empty() || !unmatched.is_empty() {
            let expected: Vec<String> = expected.iter().map(ToString::to_string).collect();
            out.push(format!(
                "errors: expected {}, got {}",
                list(&expected),
                list(&actual_errors)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::spec::ExpectedError;
    use super::*;
    use crate::engine::PolicyError;

    fn decision(allow: bool, policies: &[&str], errors: &[(&str, &str)]) -> Decision {
        Decision {
            allow,
            determining_policies: policies.iter().map(ToString::to_string).collect(),
            errors: errors
                .iter()
                .map(|(p, m)| PolicyError {
                    policy_id: p.to_string(),
                    message: m.to_string(),
                })
                .collect(),
            dropped_properties: Vec::new(),
            shadow: None,
            changes_at: None,
            inactive_grants: Vec::new(),
        }
    }

    #[test]
    fn only_what_is_given_is_compared() {
        let expect = Expect {
            allow: false,
            refused: None,
            determining_policies: None,
            errors: None,
        };
        assert!(compare(&expect, &decision(false, &["f"], &[("p", "boom")])).is_empty());
        let got = compare(&expect, &decision(true, &["p"], &[]));
        assert_eq!(
            got,
            ["decision: expected deny, got allow (determining policies [p])"]
        );
    }

    #[test]
    fn errors_match_by_policy_or_substring_and_must_all_be_accounted_for() {
        let expect = Expect {
            allow: false,
            refused: None,
            determining_policies: Some(vec![]),
            errors: Some(vec![
                ExpectedError {
                    policy_id: Some("a".into()),
                    message: None,
                },
                ExpectedError {
                    policy_id: None,
                    message: Some("overflow".into()),
                },
            ]),
        };
        let both = decision(false, &[], &[("a", "x"), ("b", "integer overflow")]);
        assert!(compare(&expect, &both).is_empty());
        let extra = decision(false, &[], &[("a", "x"), ("b", "overflow"), ("c", "y")]);
        assert_eq!(compare(&expect, &extra).len(), 1);
        let missing = decision(false, &[], &[("a", "x")]);
        assert_eq!(
            compare(&expect, &missing),
            ["errors: expected [a, …overflow…], got [a: x]"]
        );
    }
}
