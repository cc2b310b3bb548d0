//! The policy store: the only reader of the policy directory (`reader.rs`
//! holds the rules), and the owner of the live snapshot. It knows files,
//! not Cedar: `load.rs` hands the texts to [`crate::engine::compile()`].
//!
//! It holds the live [`Snapshot`] behind an [`ArcSwapOption`], so a request
//! takes one snapshot with a single atomic load and never sees a partial set.
//! A reload builds a new snapshot apart from the live one and swaps it in only
//! when the whole directory is valid; on failure the last good one stays.

mod load;
mod reader;
mod snapshot;
mod test_gate;
mod watcher;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use sha2::Digest;
use tokio::sync::watch;

pub use load::{LoadError, LoadOptions, build, load_dir};
pub use reader::{
    FileKind, GitCommit, MAX_DEPTH, MAX_FILE_BYTES, ReadError, SourceFile, Sources, TestFiles,
    fingerprint, is_test_file, read_dir, read_settled,
};
pub use snapshot::Snapshot;
pub use test_gate::TestGate;
pub use watcher::{WatchOptions, WatcherGuard, spawn_watcher};

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
    /// Periodic rescans that found the files as they were: no read, no load.
    pub rescans: u64,
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
    /// Each file's target, inode and text digest at the last read, to tell
    /// an in-place write from an atomic swap.
    seen: Mutex<HashMap<String, (PathBuf, u64, String)>>,
    /// Files already warned about as written in place.
    warned: Mutex<HashSet<String>>,
    /// The directory's [`fingerprint`] taken before the last read, whatever
    /// that read's outcome: a rescan that finds it unchanged reads nothing.
    fingerprint: Mutex<Option<String>>,
}

/// The pause between the two reads of a reload; see [`read_settled`].
const SETTLE_GAP: Duration = Duration::from_millis(20);

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
            seen: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            fingerprint: Mutex::new(None),
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
        // Taken before the read, so a change during it shows at the next rescan.
        let fingerprint = fingerprint(&self.dir).ok();
        let built = self.build_if_changed();
        *self
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fingerprint;
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
        let engine = &snapshot.engine;
        let grants = engine.grant_counts(SystemTime::now());
        tracing::info!(
            revision = %snapshot.revision,
            generation = snapshot.generation,
            commit = snapshot.git_commit.as_ref().map_or("", |c| c.id.as_str()),
            policies = engine.policy_count(),
            templates = engine.policies().templates().count(),
            links = grants.active + grants.pending + grants.expired,
            entities = engine.entity_count(),
            schema = snapshot.schema_digest.as_deref().unwrap_or("none"),
            warnings = snapshot.warnings.len(),
            "policy set loaded"
        );
        for w in &snapshot.warnings {
            tracing::warn!(revision = %snapshot.revision, "policy warning: {w}");
        }
        self.generation.send_replace(snapshot.generation);
        Ok(Reloaded::Swapped(snapshot))
    }

    /// Whether a periodic rescan should reload: the directory may have
    /// changed since the last read (a walk and a `stat` per file), or the
    /// last attempt failed and is retried once a rescan. An unreadable
    /// directory counts as changed, so the reload reports why.
    pub fn changed_since_last_read(&self) -> bool {
        let failed = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_error
            .is_some();
        if failed {
            return true;
        }
        let now = fingerprint(&self.dir).ok();
        let before = self
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let changed = now.is_none() || now != before;
        if !changed {
            self.status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .rescans += 1;
        }
        changed
    }

    /// The directory, read twice to settle (see [`read_settled`]); warns,
    /// once per file, about files written in place.
    fn read(&self) -> Result<Sources, LoadError> {
        let sources = read_settled(&self.dir, || std::thread::sleep(SETTLE_GAP))?;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        for f in &sources.files {
            let digest = hex::encode(sha2::Sha256::digest(f.text.as_bytes()));
            let now = (f.target.clone(), f.inode, digest);
            if let Some(before) = seen.insert(f.rel.clone(), now.clone())
                && before.0 == now.0
                && before.1 == now.1
                && before.2 != now.2
                && warned.insert(f.rel.clone())
            {
                tracing::warn!(
                    file = %f.rel,
                    "policy file changed in place; a reader can see it half-written. Deliver policies by an atomic swap (rename, ConfigMap, git-sync)"
                );
            }
        }
        Ok(sources)
    }

    /// The files seen written in place (rather than swapped), sorted.
    pub fn changed_in_place(&self) -> Vec<String> {
        let warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        let mut files: Vec<String> = warned.iter().cloned().collect();
        files.sort_unstable();
        files
    }

    /// A new snapshot, or `None` when the files hash to the live revision.
    fn build_if_changed(&self) -> Result<Option<Arc<Snapshot>>, LoadError> {
        if let Some(gate) = &self.gate {
            return self.build_tested(gate);
        }
        let sources = self.read()?;
        let current = self.live.load();
        if current
            .as_ref()
            .is_some_and(|s| s.digest == sources.digest() && s.git_commit.as_ref() == sources.git())
        {
            return Ok(None);
        }
        let generation = current.as_ref().map_or(0, |s| s.generation) + 1;
        let next = build(sources, &self.options, generation)?;
        self.keeps_schema(current.as_deref(), &next)?;
        Ok(Some(Arc::new(next)))
    }

    /// `[validation] schema`: once a set with a schema is live, a set
    /// without one is refused.
    fn keeps_schema(&self, live: Option<&Snapshot>, next: &Snapshot) -> Result<(), LoadError> {
        match live {
            Some(live)
                if self.options.keep_schema
                    && live.engine.schema().is_some()
                    && next.engine.schema().is_none() =>
            {
                Err(LoadError::SchemaRemoved {
                    live_revision: live.revision.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn in_place_writes_are_named_once_and_swaps_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("a.cedar", "permit(principal, action, resource);");
        write("b.cedar", "forbid(principal, action, resource);");
        let store = PolicyStore::new(dir.path(), LoadOptions::default());
        store.reload().unwrap();
        assert!(store.changed_in_place().is_empty());

        // A rename over `b.cedar` is an atomic swap: a new inode.
        write(
            ".b.tmp",
            "forbid(principal, action, resource) when { true };",
        );
        std::fs::rename(dir.path().join(".b.tmp"), dir.path().join("b.cedar")).unwrap();
        store.reload().unwrap();
        assert!(store.changed_in_place().is_empty());

        // Rewriting `a.cedar` keeps its inode.
        write(
            "a.cedar",
            "permit(principal, action, resource) when { true };",
        );
        store.reload().unwrap();
        assert_eq!(store.changed_in_place(), ["a.cedar"]);
        write("a.cedar", "permit(principal, action, resource);");
        store.reload().unwrap();
        assert_eq!(store.changed_in_place(), ["a.cedar"]);
    }
}
