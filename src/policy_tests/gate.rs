//! The reload test gate: the directory's policy tests as the check a new set
//! must pass before the policy store activates it.

use std::time::Duration;

use crate::engine::SourceProblem;
use crate::pipeline::PipelineOptions;
use crate::policy_store::{LoadError, Snapshot, TestFiles, TestGate};

use super::{parse_suite, run};

/// Failing cases listed in a reload error; the rest are counted.
const MAX_LISTED: usize = 20;

/// The gate for `reload.require_tests`: every case of the directory must
/// pass on the new set, judged with the server's `opts`, and a directory
/// without cases is refused.
/// A run longer than `timeout` refuses the set.
pub fn gate(opts: PipelineOptions, timeout: Duration) -> TestGate {
    TestGate::new(
        move |snapshot, tests| check(snapshot, tests, &opts),
        timeout,
    )
}

/// Parses the tests of `tests` and runs them on `snapshot`; every failing
/// case becomes a problem located at the case.
fn check(
    snapshot: &Snapshot,
    tests: &mut TestFiles,
    opts: &PipelineOptions,
) -> Result<(), LoadError> {
    let suite = parse_suite(tests)?;
    if suite.case_count() == 0 {
        return Err(LoadError::Invalid(vec![problem(
            "`reload.require_tests` is on, but the directory has no \
             `*.test.yaml` / `*.test.json` cases"
                .to_string(),
        )]));
    }
    let report = run(snapshot, &suite, opts);
    let mut failures = report.failures();
    if failures.is_empty() {
        return Ok(());
    }
    let total = failures.len();
    if total > MAX_LISTED {
        failures.truncate(MAX_LISTED);
        failures.push(problem(format!(
            "and {} more failing tests",
            total - MAX_LISTED
        )));
    }
    failures.push(problem(format!(
        "policy tests failed ({}); the set was not activated",
        report.summary()
    )));
    Err(LoadError::Invalid(failures))
}

/// A problem of the suite as a whole.
fn problem(message: String) -> SourceProblem {
    SourceProblem {
        file: "<tests>".to_string(),
        line: 1,
        column: 1,
        message,
    }
}
