//! Reloads the store when its directory changes: debounced filesystem events,
//! plus a periodic rescan because inotify misses changes on some volumes
//! (NFS, some FUSE and overlay mounts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{Debouncer, new_debouncer};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{PolicyStore, Reloaded};

/// When the watcher reloads.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// Quiet time after the last filesystem event before reloading.
    pub debounce: Duration,
    /// Rescan this often even without events; `None` disables rescans.
    pub rescan_interval: Option<Duration>,
}

/// Stops the watcher when dropped.
#[derive(Debug)]
pub struct WatcherGuard {
    task: JoinHandle<()>,
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `store`'s directory. Must be called inside a Tokio runtime.
pub fn spawn_watcher(store: Arc<PolicyStore>, options: WatchOptions) -> WatcherGuard {
    let task = tokio::spawn(run(store, options));
    WatcherGuard { task }
}

async fn run(store: Arc<PolicyStore>, options: WatchOptions) {
    let changed = Arc::new(Notify::new());
    let mut fs = FsWatch::start(store.dir(), options.debounce, Arc::clone(&changed));
    let period = options
        .rescan_interval
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = changed.notified() => {}
            _ = rescan.tick(), if options.rescan_interval.is_some() => {}
        }
        let reload_store = Arc::clone(&store);
        let span = tracing::info_span!(
            target: crate::telemetry::SPAN_TARGET,
            "cedar.policy_reload",
            cedar.result = tracing::field::Empty,
            cedar.policy_revision = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let reload_span = span.clone();
        let reloaded =
            tokio::task::spawn_blocking(move || reload_span.in_scope(|| reload_store.reload()))
                .await;
        match &reloaded {
            Ok(Ok(Reloaded::Swapped(s))) => {
                span.record("cedar.result", "success");
                span.record("cedar.policy_revision", s.revision.as_str());
            }
            Ok(Ok(Reloaded::Unchanged)) => {
                span.record("cedar.result", "unchanged");
            }
            Ok(Err(e)) => {
                span.record("cedar.result", "error");
                span.record("otel.status_code", "error");
                span.record("otel.status_description", e.to_string());
            }
            Err(_) => {
                span.record("otel.status_code", "error");
            }
        }
        drop(span);
        match reloaded {
            Ok(Ok(Reloaded::Swapped(snapshot))) => tracing::info!(
                revision = %snapshot.revision,
                generation = snapshot.generation,
                policies = snapshot.policy_count,
                entities = snapshot.entity_count,
                "policy set reloaded"
            ),
            Ok(Ok(Reloaded::Unchanged)) => tracing::debug!("policy directory unchanged"),
            Ok(Err(err)) => tracing::error!(
                dir = %store.dir().display(),
                kept_revision = store.snapshot().map(|s| s.revision.clone()).unwrap_or_default(),
                "policy reload failed; keeping the last good set:\n{err}"
            ),
            Err(join) => tracing::error!("policy reload task failed: {join}"),
        }
        // git-sync re-points a symlink at a new worktree; follow it.
        fs.follow(store.dir());
    }
}

/// The notify side: watches the directory (recursively) and its parent, so
/// that swapping a symlinked directory is seen too.
struct FsWatch {
    debouncer: Option<Debouncer<RecommendedWatcher>>,
    target: Option<PathBuf>,
    changed: Arc<Notify>,
    debounce: Duration,
}

impl FsWatch {
    fn start(dir: &Path, debounce: Duration, changed: Arc<Notify>) -> Self {
        let mut this = Self {
            debouncer: None,
            target: None,
            changed,
            debounce,
        };
        this.follow(dir);
        this
    }

    fn follow(&mut self, dir: &Path) {
        let target = std::fs::canonicalize(dir).ok();
        if self.debouncer.is_some() && target == self.target {
            return;
        }
        self.target = target;
        let changed = Arc::clone(&self.changed);
        let mut debouncer = match new_debouncer(self.debounce, move |_events| changed.notify_one())
        {
            Ok(debouncer) => debouncer,
            Err(err) => {
                tracing::warn!("cannot watch policy directory, relying on rescans: {err}");
                self.debouncer = None;
                return;
            }
        };
        let watcher = debouncer.watcher();
        if let Err(err) = watcher.watch(dir, RecursiveMode::Recursive) {
            tracing::warn!(dir = %dir.display(), "cannot watch policy directory, relying on rescans: {err}");
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(err) = watcher.watch(parent, RecursiveMode::NonRecursive)
        {
            tracing::debug!(dir = %parent.display(), "cannot watch parent directory: {err}");
        }
        self.debouncer = Some(debouncer);
    }
}
