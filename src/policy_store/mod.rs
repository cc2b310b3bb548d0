//! The policy store: the only reader of the policy directory (`reader.rs`
//! holds the rules), and the owner of the live snapshot.
//!
//! It holds the live [`Snapshot`] behind an [`ArcSwapOption`], so a request
//! takes one snapshot with a single atomic load and never sees a partial set.
//! A reload builds a new snapshot apart from the live one and swaps it in only
//! when the whole directory is valid; on failure the last good one stays.

mod index;
mod loader;
mod reader;
mod snapshot;
mod test_gate;
mod watcher;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

pub use index::{Candidates, PolicyIndex, Target};
pub(crate) use loader::problem;
pub use loader::{LoadError, LoadOptions, SourceProblem, build};
pub use reader::{
    FileKind, GitCommit, MAX_DEPTH, MAX_FILE_BYTES, SourceFile, Sources, TestFiles, is_test_file,
    read_dir,
};
pub use snapshot::Snapshot;
pub use test_gate::TestGate;
pub use watcher::{WatchOptions, spawn_watcher};

/// The outcome of the most recent load attempt.
#[derive(Clone, Debug, Default)]
pub struct ReloadStatus {
    /// `None` when the last attempt succeeded (or changed nothing).
    pub last_error: Option<String>,
    pub last_attempt_at: Option<SystemTime>,
    pub last_success_at: Option<SystemTime>,
    /// Load attempts since start, by outcome.
    pub successes: u64,
    pub unchanged: u64,
    pub failures: u64,
}

/// What a successful [`PolicyStore::reload`] did.
#[derive(Debug)]
pub enum Reloaded {
    /// A new snapshot is live.
    Swapped(Arc<Snapshot>),
    /// The files hash to the live revision; nothing was rebuilt.
    Unchanged,
}

/// Owns the live snapshot of one policy directory.
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    options: LoadOptions,
    live: ArcSwapOption<Snapshot>,
    status: Mutex<ReloadStatus>,
    // INVARIANT: held for the whole of a reload, so loads never race and the
    // generation counts successful swaps exactly.
    reload_lock: Mutex<()>,
    generation: watch::Sender<u64>,
    /// `reload.require_tests`: checks a set must pass before it goes live.
    gate: Option<TestGate>,
    /// What the live set last passed; see `test_gate`.
    tested: Mutex<Option<test_gate::Tested>>,
}

impl PolicyStore {
    /// A store with nothing loaded yet; requests get `UNAVAILABLE` until the
    /// first successful [`reload`](Self::reload).
    pub fn new(dir: impl Into<PathBuf>, options: LoadOptions) -> Self {
        Self {
            dir: dir.into(),
            options,
            live: ArcSwapOption::empty(),
            status: Mutex::new(ReloadStatus::default()),
            reload_lock: Mutex::new(()),
            generation: watch::Sender::new(0),
            gate: None,
            tested: Mutex::new(None),
        }
    }

    /// With a gate, every load (the first too) runs it on the new set, and a
    /// set it refuses is not activated.
    pub fn test_gate(mut self, gate: Option<TestGate>) -> Self {
        self.gate = gate;
        self
    }

    /// The directory this store reads.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live snapshot, if any set has loaded yet.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.live.load_full()
    }

    /// Follows the live generation: 0 until the first load, then one more
    /// for each swap.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The live snapshot and the last attempt's outcome, read together so a
    /// caller never sees a new generation beside an old error.
    pub fn state(&self) -> (Option<Arc<Snapshot>>, ReloadStatus) {
        let status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        (self.live.load_full(), status.clone())
    }

    /// Reads the directory and, when its contents changed, builds and swaps in
    /// a new snapshot. Blocking: call it from a blocking thread.
    pub fn reload(&self) -> Result<Reloaded, LoadError> {
        let _serial = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let built = self.build_if_changed();
        // The swap and the status change happen under one lock; see `state`.
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.last_attempt_at = Some(SystemTime::now());
        status.last_error = built.as_ref().err().map(ToString::to_string);
        let snapshot = match built {
            Err(e) => {
                status.failures += 1;
                return Err(e);
            }
            Ok(None) => {
                status.unchanged += 1;
                return Ok(Reloaded::Unchanged);
            }
            Ok(Some(snapshot)) => snapshot,
        };
        status.successes += 1;
        status.last_success_at = Some(snapshot.loaded_at);
        self.live.store(Some(Arc::clone(&snapshot)));
        drop(status);
        for w in &snapshot.warnings {
            tracing::warn!(revision = %snapshot.revision, "policy warning: {w}");
        }
        self.generation.send_replace(snapshot.generation);
        Ok(Reloaded::Swapped(snapshot))
    }

    /// A new snapshot, or `None` when the files hash to the live revision.
    fn build_if_changed(&self) -> Result<Option<Arc<Snapshot>>, LoadError> {
        if let Some(gate) = &self.gate {
            return self.build_tested(gate);
        }
        let sources = read_dir(&self.dir)?;
        let current = self.live.load();
        if current
            .as_ref()
            .is_some_and(|s| s.digest == sources.digest() && s.git_commit.as_ref() == sources.git())
        {
            return Ok(None);
        }
        let generation = current.as_ref().map_or(0, |s| s.generation) + 1;
        drop(current);
        Ok(Some(Arc::new(build(sources, &self.options, generation)?)))
    }
}
