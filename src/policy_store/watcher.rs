//! Reloads the store when its directory changes: debounced filesystem events,
//! plus a periodic rescan because inotify misses changes on some volumes
//! (NFS, some FUSE and overlay mounts).
//!
//! Only events that can change what a read sees wake it: reads, opens and
//! metadata changes (a reload's own reads, a `cat`, `validate` run beside
//! the server, atime updates) do not. A rescan compares the directory's
//! [`fingerprint`](super::fingerprint) with the one taken before the last
//! read, and reloads only when it differs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
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
    let mut fs = FsWatch::start(store.dir(), Arc::clone(&changed));
    let period = options
        .rescan_interval
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let rescanned = tokio::select! {
            () = changed.notified() => {
                quiet(&changed, options.debounce).await;
                false
            }
            _ = rescan.tick(), if options.rescan_interval.is_some() => true,
        };
        if rescanned {
            let check = Arc::clone(&store);
            if let Ok(false) = off_the_workers(move || check.changed_since_last_read()).await {
                continue;
            }
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

/// Returns once `debounce` passes with no new event.
async fn quiet(changed: &Notify, debounce: Duration) {
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(debounce) => return,
        }
    }
}

/// Whether an event can change what a read of the directory sees. A file
/// closed after writing can; one opened, read or closed after reading
/// cannot, nor a change of its metadata (`touch`, `chmod`, atime).
fn wakes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => false,
        _ => true,
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
    watcher: Option<RecommendedWatcher>,
    target: Option<PathBuf>,
    changed: Arc<Notify>,
}

impl FsWatch {
    fn start(dir: &Path, changed: Arc<Notify>) -> Self {
        let mut this = Self {
            watcher: None,
            target: None,
            changed,
        };
        this.follow(dir);
        this
    }

    fn follow(&mut self, dir: &Path) {
        let target = std::fs::canonicalize(dir).ok();
        if self.watcher.is_some() && target == self.target {
            return;
        }
        self.target = target;
        let changed = Arc::clone(&self.changed);
        // An error from the watcher may hide a change: it wakes the loop too.
        // The parent is watched for a swap of the directory itself; its
        // other entries' events are not this store's.
        let watched: Vec<PathBuf> = std::iter::once(dir.to_path_buf())
            .chain(self.target.clone())
            .collect();
        let handler = move |event: notify::Result<notify::Event>| {
            let wake = event.map_or(true, |e| {
                wakes(&e.kind)
                    && (e.paths.is_empty()
                        || e.paths
                            .iter()
                            .any(|p| watched.iter().any(|w| p.starts_with(w))))
            });
            if wake {
                changed.notify_one();
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::warn!("cannot watch policy directory, relying on rescans: {err}");
                self.watcher = None;
                return;
            }
        };
        if let Err(err) = watcher.watch(dir, RecursiveMode::Recursive) {
            tracing::warn!(dir = %dir.display(), "cannot watch policy directory, relying on rescans: {err}");
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(err) = watcher.watch(parent, RecursiveMode::NonRecursive)
        {
            tracing::debug!(dir = %parent.display(), "cannot watch parent directory: {err}");
        }
        self.watcher = Some(watcher);
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

    #[test]
    fn reads_and_metadata_do_not_wake_a_reload_and_writes_do() {
        use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};
        for quiet in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(!wakes(&quiet), "{quiet:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
            EventKind::Other,
        ] {
            assert!(wakes(&change), "{change:?}");
        }
    }

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
