//! `reload.require_tests`: a new set goes live only when the directory's
//! policy tests pass on it.
//!
//! The tests run on the built snapshot, before the swap; on failure the
//! reload fails like an invalid set does, so the last good set keeps serving
//! and the failing cases become the reload error. Test files are not part of
//! the policy revision, so the store remembers the digest of the tests the
//! live set passed: a change to the tests alone re-runs them (and a failure
//! is reported), without swapping or bumping the generation.

use std::sync::{Arc, PoisonError};

use super::{LoadError, PolicyStore, Snapshot, SourceProblem, Sources, build, read_dir};
use crate::policy_tests::{self, Suite};

/// How often a read is retried when the directory changes under it.
const READ_ATTEMPTS: usize = 8;
/// Failing cases listed in a reload error; the rest are counted.
const MAX_LISTED: usize = 20;

impl PolicyStore {
    /// [`PolicyStore::build_if_changed`] with the test gate: a new snapshot
    /// whose tests passed, or `None` when nothing changed or only the tests
    /// changed and still pass on the live set.
    pub(super) fn build_tested(&self) -> Result<Option<Arc<Snapshot>>, LoadError> {
        let (sources, suite) = read_together(self)?;
        let current = self.live.load_full();
        let generation = current.as_ref().map_or(0, |s| s.generation) + 1;
        let mut tested = self.tested.lock().unwrap_or_else(PoisonError::into_inner);
        // The same test as `build_if_changed`: same contents, same commit.
        let live = current
            .filter(|s| s.digest == sources.digest() && s.git_commit.as_ref() == sources.git());
        if live.is_some() && tested.as_deref() == Some(suite.digest()) {
            return Ok(None);
        }
        let (snapshot, is_new) = match live {
            Some(live) => (live, false),
            None => (Arc::new(build(sources, &self.options, generation)?), true),
        };
        check(&snapshot, &suite)?;
        *tested = Some(suite.digest().to_string());
        Ok(is_new.then_some(snapshot))
    }
}

/// The policy files and the test files of one version of the directory: the
/// tests are read first, and kept only if no file they came from was swapped
/// while the policies were read.
fn read_together(store: &PolicyStore) -> Result<(Sources, Suite), LoadError> {
    for _ in 1..READ_ATTEMPTS {
        let suite = policy_tests::read_suite(store.dir())?;
        let sources = read_dir(store.dir())?;
        if suite.still_resolves() {
            return Ok((sources, suite));
        }
    }
    let suite = policy_tests::read_suite(store.dir())?;
    Ok((read_dir(store.dir())?, suite))
}

/// Runs `suite` on `snapshot`; every failing case becomes a problem located
/// at the case.
fn check(snapshot: &Snapshot, suite: &Suite) -> Result<(), LoadError> {
    if suite.case_count() == 0 {
        return Err(LoadError::Invalid(vec![SourceProblem {
            file: "<tests>".to_string(),
            line: 1,
            column: 1,
            message: "`reload.require_tests` is on, but the directory has no \
                      `*.test.yaml` / `*.test.json` cases"
                .to_string(),
        }]));
    }
    let report = policy_tests::run(snapshot, suite);
    let mut failures = report.failures();
    if failures.is_empty() {
        return Ok(());
    }
    let total = failures.len();
    if total > MAX_LISTED {
        failures.truncate(MAX_LISTED);
        failures.push(SourceProblem {
            file: "<tests>".to_string(),
            line: 1,
            column: 1,
            message: format!("and {} more failing tests", total - MAX_LISTED),
        });
    }
    failures.push(SourceProblem {
        file: "<tests>".to_string(),
        line: 1,
        column: 1,
        message: format!(
            "policy tests failed ({}); the set was not activated",
            report.summary()
        ),
    });
    Err(LoadError::Invalid(failures))
}
