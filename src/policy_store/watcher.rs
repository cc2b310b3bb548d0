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
            off_the_workers(move || reload_span.in_scope(|| reload_store.reload())).await;
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
                policies = snapshot.engine.policy_count(),
                entities = snapshot.engine.entity_count(),
                "policy set reloaded"
            ),
            Ok(Ok(Reloaded::Unchanged)) => tracing::debug!("policy directory unchanged"),
            Ok(Err(err)) => tracing::error!(
                dir = %store.dir().display(),
                kept_revision = store.snapshot().map(|s| s.revision.clone()).unwrap_or_default(),
                "policy reload failed; keeping the last good set:\n{err}"
            ),
            Err(thread) => tracing::error!("policy reload failed: {thread}"),
        }
        // git-sync re-points a symlink at a new worktree; follow it.
        fs.follow(store.dir());
    }
}

/// How much lower than the serving threads' the reload thread's priority
/// is, in nice steps. On a host whose cores are all busy deciding, Linux's
/// scheduler gives a thread at +10 about a tenth of the CPU of one at 0: a
/// reload then takes longer, and decisions keep their latency
/// (BENCHMARKS.md, "The reload thread's priority").
const RELOAD_NICENESS: i32 = 10;

/// Why a reload gave no answer.
#[derive(Debug, thiserror::Error)]
enum ReloadThreadError {
    #[error("cannot start the reload thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the reload thread ended without an answer (it panicked)")]
    Ended,
}

/// Runs `work` on a thread of its own, at [`RELOAD_NICENESS`] below the
/// caller's priority where the OS allows it, and waits for its answer.
async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReloadThreadError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cedar-pdp-reload".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        })
        .map_err(ReloadThreadError::Spawn)?;
    rx.await.map_err(|_| ReloadThreadError::Ended)
}

/// Lowers the calling thread's priority by [`RELOAD_NICENESS`] (on Linux
/// the nice value is per thread); where that is refused, the thread keeps
/// its priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let lowered = getpriority_process(me)
            .and_then(|nice| setpriority_process(me, (nice + RELOAD_NICENESS).min(19)));
        if let Err(e) = lowered {
            tracing::debug!("the reload thread keeps its priority: {e}");
        }
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

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_reload_runs_on_its_own_thread_at_a_lower_priority() {
        use rustix::process::getpriority_process;
        let mine = getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let (name, nice) = off_the_workers(|| {
            let name = std::thread::current().name().map(str::to_owned);
            let nice = getpriority_process(Some(rustix::thread::gettid())).unwrap();
            (name, nice)
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("cedar-pdp-reload"));
        assert_eq!(nice, (mine + RELOAD_NICENESS).min(19));
        // The caller's own priority is untouched.
        assert_eq!(
            getpriority_process(Some(rustix::thread::gettid())).unwrap(),
            mine
        );
    }

    #[tokio::test]
    async fn a_reload_that_panics_is_an_error_not_a_hang() {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            off_the_workers(|| -> u8 { panic!("reload panicked") }),
        )
        .await
        .expect("answered in time");
        assert!(
            matches!(answer, Err(ReloadThreadError::Ended)),
            "{answer:?}"
        );
    }
}
