//! `reload.require_tests`: a new set goes live only when the directory's
//! policy tests pass on it.
//!
//! The store knows nothing of the test format: the composition root installs
//! a [`TestGate`] (the policy tests' runner) with [`PolicyStore::test_gate`].
//! The gate runs on the built snapshot, before the swap; on failure the
//! reload fails like an invalid set does, so the last good set keeps serving
//! and the failing cases become the reload error. Test files are not part of
//! the policy revision, so the store remembers the digest of the tests (and
//! fixtures) the live set passed: a change to the tests alone re-runs them
//! (and a failure is reported), without swapping or bumping the generation.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::{LoadError, PolicyStore, Snapshot, TestFiles, build};

/// How often a read is retried when the directory changes under it.
const READ_ATTEMPTS: usize = 8;

/// The check a new snapshot must pass before it goes live: given the
/// snapshot and the directory's test files (fixtures are read through them),
/// `Ok` to activate it, or the problems that refuse it.
type Check = dyn Fn(&Snapshot, &mut TestFiles) -> Result<(), LoadError> + Send + Sync;

/// Runs a directory's policy tests on each new snapshot; see the module docs.
#[derive(Clone)]
pub struct TestGate {
    check: Arc<Check>,
    /// A run that takes longer refuses the reload (`reload.test_timeout`).
    timeout: Duration,
    /// Set while a run is under way, even one that outlived its timeout: a
    /// thread cannot be stopped, so a late run must finish before the next.
    running: Arc<AtomicBool>,
}

impl TestGate {
    /// A gate that runs `check`, for at most `timeout` a run.
    pub fn new(
        check: impl Fn(&Snapshot, &mut TestFiles) -> Result<(), LoadError> + Send + Sync + 'static,
        timeout: Duration,
    ) -> Self {
        Self {
            check: Arc::new(check),
            timeout,
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Runs the check on its own thread, so a run that never ends refuses
    /// the reload instead of stalling the watcher. Gives the files back.
    fn run(
        &self,
        snapshot: &Arc<Snapshot>,
        tests: TestFiles,
    ) -> Result<(TestFiles, Result<(), LoadError>), LoadError> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(gate_error(format!(
                "the previous policy test run, which took longer than `reload.test_timeout` ({}), is still running; the set was not activated",
                humantime::format_duration(self.timeout)
            )));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (check, running, snapshot) = (
            Arc::clone(&self.check),
            Arc::clone(&self.running),
            Arc::clone(snapshot),
        );
        let spawned = std::thread::Builder::new()
            .name("policy-tests".into())
            .spawn(move || {
                let mut tests = tests;
                let result = check(&snapshot, &mut tests);
                running.store(false, Ordering::Release);
                // The reload may have stopped waiting.
                let _ = tx.send((tests, result));
            });
        if let Err(e) = spawned {
            self.running.store(false, Ordering::Release);
            return Err(gate_error(format!("cannot start the policy tests: {e}")));
        }
        rx.recv_timeout(self.timeout).map_err(|_| {
            gate_error(format!(
                "policy tests did not finish within `reload.test_timeout` ({}); the set was not activated",
                humantime::format_duration(self.timeout)
            ))
        })
    }
}

/// A refusal of the gate as a whole.
fn gate_error(message: String) -> LoadError {
    LoadError::Invalid(vec![crate::engine::SourceProblem {
        file: "<tests>".into(),
        line: 1,
        column: 1,
        message,
    }])
}

impl fmt::Debug for TestGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TestGate")
    }
}

/// What the live set last passed: the tests' digest, and the fixtures they
/// read, so the same digest can be taken again before deciding to skip.
#[derive(Debug)]
pub(super) struct Tested {
    digest: String,
    fixtures: Vec<String>,
}

/// One attempt's outcome.
enum Attempt {
    Done(Option<Arc<Snapshot>>),
    /// A symlink swap happened mid-read; read again.
    Moved,
}

impl PolicyStore {
    /// [`PolicyStore::build_if_changed`] with the test gate: a new snapshot
    /// whose tests passed, or `None` when nothing changed or only the tests
    /// changed and still pass on the live set.
    pub(super) fn build_tested(&self, gate: &TestGate) -> Result<Option<Arc<Snapshot>>, LoadError> {
        for _ in 0..READ_ATTEMPTS {
            if let Attempt::Done(built) = self.attempt_tested(gate)? {
                return Ok(built);
            }
        }
        Err(LoadError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other("directory kept changing while it was read"),
        })
    }

    fn attempt_tested(&self, gate: &TestGate) -> Result<Attempt, LoadError> {
        let sources = self.read()?;
        let current = self.live.load_full();
        let generation = current.as_ref().map_or(0, |s| s.generation) + 1;
        let mut tested = self.tested.lock().unwrap_or_else(PoisonError::into_inner);
        // The same test as `build_if_changed`: same contents, same commit.
        let live = current
            .filter(|s| s.digest == sources.digest() && s.git_commit.as_ref() == sources.git());
        if let (Some(_), Some(memo)) = (&live, tested.as_ref()) {
            let mut again = sources.tests();
            for rel in &memo.fixtures {
                again.fixture(rel)?;
            }
            if again.digest() == memo.digest && again.still_resolves() {
                return Ok(Attempt::Done(None));
            }
        }
        let tests = sources.tests();
        let (snapshot, is_new) = match live {
            Some(live) => (live, false),
            None => {
                let next = build(sources, &self.options, generation)?;
                self.keeps_schema(self.live.load().as_deref(), &next)?;
                (Arc::new(next), true)
            }
        };
        let (tests, checked) = gate.run(&snapshot, tests)?;
        // Fixtures are read after the rest: a swap since means they may be
        // of another version than the set they were checked against.
        if !tests.still_resolves() {
            return Ok(Attempt::Moved);
        }
        checked?;
        *tested = Some(Tested {
            digest: tests.digest(),
            fixtures: tests.fixture_names().map(str::to_string).collect(),
        });
        Ok(Attempt::Done(is_new.then_some(snapshot)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use std::path::Path;
    use std::sync::atomic::AtomicUsize;

    use super::super::{LoadOptions, Reloaded};
    use super::*;
    use crate::engine::SourceProblem;

    fn write(dir: &Path, rel: &str, text: &str) {
        std::fs::write(dir.join(rel), text).unwrap();
    }

    /// A gate that passes while `pass.test.yaml` exists and reads the
    /// fixture `f.fixture.json`, counting its runs.
    fn counting_gate(runs: Arc<AtomicUsize>) -> TestGate {
        TestGate::new(
            move |_snapshot, tests| {
                runs.fetch_add(1, Ordering::SeqCst);
                tests.fixture("f.fixture.json")?;
                if tests.files().any(|(rel, _)| rel == "pass.test.yaml") {
                    Ok(())
                } else {
                    Err(LoadError::Invalid(vec![SourceProblem {
                        file: "<tests>".into(),
                        line: 1,
                        column: 1,
                        message: "no passing test".into(),
                    }]))
                }
            },
            Duration::from_secs(30),
        )
    }

    #[test]
    fn a_run_that_never_ends_refuses_the_reload_and_blocks_none_after_it() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "permit(principal, action, resource);",
        );
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(wait);
        let stuck = TestGate::new(
            move |_, _| {
                // Stands for a run that hangs, until the test lets it go.
                let _ = wait.lock().unwrap().recv();
                Ok(())
            },
            Duration::from_millis(200),
        );
        let store = PolicyStore::new(dir.path(), LoadOptions::default()).test_gate(Some(stuck));
        let started = std::time::Instant::now();
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("reload.test_timeout"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(store.snapshot().is_none(), "nothing was activated");
        // While the late run goes on, a new reload says so rather than
        // starting a second one.
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("still running"), "{err}");
        // Let it go; runs from now on end at once.
        release.send(()).unwrap();
        drop(release);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match store.reload() {
                Ok(Reloaded::Swapped(_)) => break,
                Err(e) if e.to_string().contains("still running") => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the late run never ended"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reruns_only_when_tests_or_fixtures_change() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "permit(principal, action, resource);",
        );
        write(dir.path(), "pass.test.yaml", "one");
        write(dir.path(), "f.fixture.json", "[]");
        let runs = Arc::new(AtomicUsize::new(0));
        let store = PolicyStore::new(dir.path(), LoadOptions::default())
            .test_gate(Some(counting_gate(Arc::clone(&runs))));
        assert!(matches!(store.reload(), Ok(Reloaded::Swapped(_))));
        assert!(matches!(store.reload(), Ok(Reloaded::Unchanged)));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "nothing changed");

        // A fixture change alone re-runs the tests on the live set.
        write(dir.path(), "f.fixture.json", "[ ]");
        assert!(matches!(store.reload(), Ok(Reloaded::Unchanged)));
        assert_eq!(runs.load(Ordering::SeqCst), 2);

        // Tests that now fail are reported; the live set stays.
        std::fs::rename(
            dir.path().join("pass.test.yaml"),
            dir.path().join("x.test.yaml"),
        )
        .unwrap();
        let err = store.reload().unwrap_err();
        assert!(err.to_string().contains("no passing test"), "{err}");
        assert_eq!(store.snapshot().unwrap().generation, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn without_a_gate_tests_are_not_run() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "permit(principal, action, resource);",
        );
        let runs = Arc::new(AtomicUsize::new(0));
        let store = PolicyStore::new(dir.path(), LoadOptions::default()).test_gate(None);
        assert!(matches!(store.reload(), Ok(Reloaded::Swapped(_))));
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        let gated = PolicyStore::new(dir.path(), LoadOptions::default())
            .test_gate(Some(counting_gate(Arc::clone(&runs))));
        assert!(gated.reload().is_err(), "no passing test file");
        assert!(gated.snapshot().is_none());
    }
}
