//! The decision log: the only writer of decision records.
//!
//! The request path never writes. It reserves queue space *before* deciding
//! (in `block` mode), so a decision that was made always has a slot, even if
//! the client cancels the call afterwards; a writer thread drains the queue
//! into the sink. Closing every handle drains the queue and flushes the sink.
//!
//! Records of refused requests (overload, deadline, bad input) never wait:
//! they take room from a second budget of the same size, so a flood of
//! decisions cannot crowd out the evidence of refusals, and a refusal never
//! blocks the call it refuses. With both budgets spent a record is dropped
//! and counted.
//!
//! Room is counted in records and in bytes (`queue_bytes`): a record is
//! serialized when it is queued, so the queue holds exactly its lines. A
//! record whose call reserved room is always queued, so the bytes can pass
//! the budget by the records of calls already admitted; new reservations
//! wait (in `block` mode) until the bytes are back under it.
//!
//! The writer links every record into a hash chain in the order it writes
//! them, and signs checkpoints of the chain's head (`chain`); `verify` checks
//! a log's files against both. See `docs/audit.md`.
//!
//! With `export = "otlp"` the writer also offers every line the sink took
//! to a best-effort OTLP export (`export`), which never makes it wait.

mod canonical;
pub mod chain;
mod export;
mod fsync;
mod record;
mod sink;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::{DecisionLogConfig, LogSink, OnFull};
use chain::{Body, KeyError, ResumeError, Resumed, Signer};
pub use export::ExportCounters;
pub use record::{
    Caller, DecisionRecord, EntityRef, EntitySet, MASKED, Masker, RECORD_VERSION,
    RecordDroppedProperty, RecordError, RecordFailure, ShadowRecord,
};

/// Side files of a log at `decisions.log` go in `decisions.log.entities/`.
pub const SIDE_DIR_SUFFIX: &str = ".entities";

/// Why the decision log could not start.
#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    #[error("cannot open decision log `{path}`: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the decision log writer: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot continue the decision log's hash chain: {0}")]
    Resume(#[from] ResumeError),
    #[error("`decision_log.signing_key`: {0}")]
    SigningKey(#[from] KeyError),
    #[error(
        "`decision_log.instance_id` is `{configured}`, but the log at `{path}` is instance `{found}`: move the log aside, or set `instance_id = \"{found}\"` to continue it"
    )]
    Instance {
        path: String,
        found: String,
        configured: String,
    },
}

/// A record in the queue, serialized, holding its room until the writer is
/// done with it.
struct Queued {
    body: Body,
    _room: OwnedSemaphorePermit,
    _bytes: Charge,
}

/// Bytes queued against one budget; see the module docs.
#[derive(Debug)]
struct Bytes {
    used: AtomicUsize,
    limit: usize,
    /// Woken when `used` falls back under `limit`.
    below: Notify,
}

impl Bytes {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
            below: Notify::new(),
        })
    }

    /// Charges `n` bytes if they fit, or always when `force`.
    fn charge(self: &Arc<Self>, n: usize, force: bool) -> Option<Charge> {
        let fits = |used: usize| used.checked_add(n).filter(|&t| t <= self.limit || force);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, fits)
            .ok()?;
        Some(Charge(Arc::clone(self), n))
    }

    /// Waits until the queued bytes are under the budget.
    async fn wait_below(&self) {
        loop {
            let below = self.below.notified();
            tokio::pin!(below);
            below.as_mut().enable();
            if self.used.load(Ordering::Acquire) < self.limit {
                return;
            }
            below.await;
        }
    }
}

/// `n` bytes of a budget, given back on drop.
#[derive(Debug)]
struct Charge(Arc<Bytes>, usize);

impl Drop for Charge {
    fn drop(&mut self) {
        let before = self.0.used.fetch_sub(self.1, Ordering::AcqRel);
        if before >= self.0.limit && before - self.1 < self.0.limit {
            self.0.below.notify_waiters();
        }
    }
}

/// A cheap, cloneable handle that queues records for the writer.
#[derive(Clone, Debug)]
pub struct DecisionLog {
    // INVARIANT: every record sent holds a permit of `decisions` or
    // `refusals`, so the unbounded channel holds at most their sum.
    tx: crossbeam_channel::Sender<Queued>,
    decisions: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    decision_bytes: Arc<Bytes>,
    refusal_bytes: Arc<Bytes>,
    capacity: usize,
    on_full: OnFull,
    masker: Arc<Masker>,
    /// Entity sets whose canonical JSON is larger go to side files;
    /// `usize::MAX` for a sink without a directory.
    max_inline: usize,
    dropped: Arc<AtomicU64>,
    /// What the OTLP export did with the lines offered to it, when on.
    export: Option<Arc<ExportCounters>>,
}

/// Queue room reserved for the records of one call.
#[derive(Debug)]
pub struct Slots {
    log: DecisionLog,
    room: Option<OwnedSemaphorePermit>,
}

/// The writer thread; [`LogWriter::finish`] waits for it to drain.
#[derive(Debug)]
pub struct LogWriter {
    thread: JoinHandle<Result<u64, (u64, std::io::Error)>>,
    export: Option<export::ExportWorker>,
}

/// How long shutdown gives the OTLP export, after the writer finished, to
/// ship what is queued. Best effort: what is left is counted as dropped.
const EXPORT_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the log did not end cleanly at shutdown.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("the decision log did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the decision log writer stopped unexpectedly")]
    Crashed,
    #[error(
        "the decision log could not flush and sync its last records ({written} written): {source}"
    )]
    Write {
        written: u64,
        #[source]
        source: std::io::Error,
    },
}

impl DecisionLog {
    /// Opens the sink, continues the chain of what it holds, and starts
    /// the writer thread.
    pub fn start(config: &DecisionLogConfig) -> Result<(Self, LogWriter), DecisionLogError> {
        Self::start_exporting::<opentelemetry_otlp::LogExporter>(config, None)
    }

    /// As [`DecisionLog::start`], also shipping every line written to
    /// `export` (an OTLP log exporter, and the resource it reports), best
    /// effort, with room for `export_queue_capacity` lines.
    pub fn start_exporting<E: opentelemetry_sdk::logs::LogExporter + 'static>(
        config: &DecisionLogConfig,
        export: Option<(E, opentelemetry_sdk::Resource)>,
    ) -> Result<(Self, LogWriter), DecisionLogError> {
        let signer = match config.signing_key.as_os_str().is_empty() {
            true => None,
            false => Some(Signer::from_pem_file(&config.signing_key)?),
        };
        let (sink, resumed): (Box<dyn sink::Sink>, Resumed) = match config.sink {
            // Standard output has no tail to read: each run is a new chain.
            LogSink::Stdout => (Box::new(std::io::stdout()), Resumed::genesis()),
            LogSink::File => {
                // Before the file opens for appending: a cut-off last line
                // is removed.
                let resumed = chain::resume(&config.path)?;
                let file = sink::RotatingFile::open(
                    &config.path,
                    config.max_file_bytes,
                    config.max_files,
                )?;
                (Box::new(file), resumed)
            }
        };
        let (feed, export_worker, export_counters) = match export {
            Some((exporter, resource)) => {
                let (feed, worker, counters) = export::start(
                    exporter,
                    resource,
                    config.export_queue_capacity,
                    EXPORT_FLUSH_TIMEOUT,
                )
                .map_err(DecisionLogError::Spawn)?;
                (Some(feed), Some(worker), Some(counters))
            }
            None => (None, None, None),
        };
        let instance = match (config.instance_id.as_str(), resumed.instance.clone()) {
            ("", found) => found.unwrap_or_else(chain::new_instance),
            (configured, Some(found)) if found != configured => {
                return Err(DecisionLogError::Instance {
                    path: config.path.display().to_string(),
                    found,
                    configured: configured.to_string(),
                });
            }
            (configured, _) => configured.to_string(),
        };
        tracing::info!(%instance, "decision log instance");
        let writer = sink::Writer::new(
            sink,
            resumed,
            signer,
            config.checkpoint_interval,
            feed,
            instance,
        );
        let (tx, rx) = crossbeam_channel::unbounded::<Queued>();
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = Arc::clone(&dropped);
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer.drain(&rx, &writer_dropped))
            .map_err(DecisionLogError::Spawn)?;
        let log = Self {
            tx,
            decisions: Arc::new(Semaphore::new(config.queue_capacity)),
            refusals: Arc::new(Semaphore::new(config.queue_capacity)),
            decision_bytes: Bytes::new(config.queue_bytes),
            refusal_bytes: Bytes::new(config.queue_bytes),
            capacity: config.queue_capacity,
            on_full: config.on_full,
            masker: Arc::new(Masker::new(&config.mask, &config.remove)),
            max_inline: match config.sink {
                LogSink::Stdout => usize::MAX,
                LogSink::File => config.max_inline_entities_bytes,
            },
            dropped,
            export: export_counters,
        };
        let writer = LogWriter {
            thread,
            export: export_worker,
        };
        Ok((log, writer))
    }

    /// Reserves room for `n` records. In `block` mode this waits for space
    /// (backpressure); in `drop` mode it returns at once.
    /// A call that needs more room than the whole queue gets none, and its
    /// records are queued as room allows.
    pub async fn reserve(&self, n: usize) -> Slots {
        let room = match (self.on_full, u32::try_from(n)) {
            (OnFull::Block, Ok(n)) if n > 0 && n as usize <= self.capacity => {
                self.decision_bytes.wait_below().await;
                Arc::clone(&self.decisions).acquire_many_owned(n).await.ok()
            }
            _ => None,
        };
        Slots {
            log: self.clone(),
            room,
        }
    }

    /// Applies the masking rules to `record` (queueing applies them again;
    /// they are idempotent).
    pub fn mask(&self, record: &mut DecisionRecord) {
        self.masker.apply(record);
    }

    /// Masks and queues the record of a refused request. Never waits: it
    /// takes room from the refusals' budget, then from the decisions'.
    pub fn submit_refusal(&self, mut record: DecisionRecord) {
        self.masker.apply(&mut record);
        let Some(line) = self.line(&mut record) else {
            return;
        };
        let refusal = Arc::clone(&self.refusals)
            .try_acquire_owned()
            .ok()
            .and_then(|room| Some((room, self.refusal_bytes.charge(line.len(), false)?)));
        let room = refusal.or_else(|| {
            let room = Arc::clone(&self.decisions).try_acquire_owned().ok()?;
            Some((room, self.decision_bytes.charge(line.len(), false)?))
        });
        match room {
            Some((room, bytes)) => self.send(line, room, bytes),
            None => self.drop_one(),
        }
    }

    /// Records lost since start: queue full in `drop` mode, or writer gone.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The drop counter alone, for readers (metrics) that must not keep the
    /// queue open: a live handle would stop the writer from finishing.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }

    /// The OTLP export's counters, when it is on; like
    /// [`DecisionLog::dropped_counter`], for readers that must not keep the
    /// queue open.
    pub fn export_counters(&self) -> Option<Arc<ExportCounters>> {
        self.export.clone()
    }

    /// `entities` as a record holds them: inline, or stored by digest when
    /// larger than `max_inline_entities_bytes`.
    pub fn entity_set(&self, entities: &[serde_json::Value]) -> EntitySet {
        let inline = || EntitySet::Inline(Arc::new(entities.to_vec()));
        if entities.is_empty() || self.max_inline == usize::MAX {
            return inline();
        }
        let array = serde_json::Value::Array(entities.to_vec());
        match canonical::to_vec(&array) {
            Ok(bytes) if bytes.len() > self.max_inline => EntitySet::Stored {
                sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
                bytes: Arc::new(bytes),
            },
            _ => EntitySet::Inline(Arc::new(match array {
                serde_json::Value::Array(items) => items,
                _ => Vec::new(),
            })),
        }
    }

    /// The record in canonical JSON, or `None` (counted) if it cannot be.
    /// Large entity sets are moved to side files first.
    fn line(&self, record: &mut DecisionRecord) -> Option<Body> {
        if let Some(EntitySet::Inline(entities)) = &record.entities
            && !entities.is_empty()
        {
            record.entities = Some(self.entity_set(entities));
        }
        match Body::of(record) {
            Ok(body) => Some(body),
            Err(e) => {
                tracing::error!("decision record cannot be serialized: {e}");
                self.drop_one();
                None
            }
        }
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn send(&self, body: Body, room: OwnedSemaphorePermit, bytes: Charge) {
        let queued = Queued {
            body,
            _room: room,
            _bytes: bytes,
        };
        if self.tx.send(queued).is_err() {
            self.drop_one();
        }
    }

    /// Queues a record no reservation covers, if both budgets have room.
    fn enqueue(&self, line: Body) {
        let room = Arc::clone(&self.decisions).try_acquire_owned().ok();
        match room.and_then(|r| Some((r, self.decision_bytes.charge(line.len(), false)?))) {
            Some((room, bytes)) => self.send(line, room, bytes),
            None => self.drop_one(),
        }
    }
}

impl Slots {
    /// Masks `record` and queues it, in reserved room if any is left. Never
    /// waits.
    pub fn submit(&mut self, mut record: DecisionRecord) {
        self.log.masker.apply(&mut record);
        let Some(line) = self.log.line(&mut record) else {
            return;
        };
        let reserved = match &mut self.room {
            Some(room) if room.num_permits() > 1 => room.split(1),
            Some(_) => self.room.take(),
            None => None,
        };
        match reserved {
            // Reserved room is honoured even past the byte budget: the call
            // was admitted on it.
            Some(room) => {
                let bytes = self.log.decision_bytes.charge(line.len(), true);
                match bytes {
                    Some(bytes) => self.log.send(line, room, bytes),
                    None => self.log.drop_one(),
                }
            }
            None => self.log.enqueue(line),
        }
    }
}

impl LogWriter {
    /// Waits up to `timeout` for the writer to drain and flush. Every handle
    /// must be dropped first, or the writer waits for more records.
    /// The OTLP export, if on, then gets its own bounded time to ship what
    /// is queued; it never fails the finish.
    pub async fn finish(self, timeout: Duration) -> Result<u64, FinishError> {
        let thread = self.thread;
        let join = tokio::task::spawn_blocking(move || thread.join());
        let written = tokio::time::timeout(timeout, join).await;
        // The writer is gone (or stuck): the export's feed is closed, or
        // its deadline ends the wait.
        if let Some(export) = self.export {
            export.finish().await;
        }
        match written {
            Ok(Ok(Ok(Ok(written)))) => Ok(written),
            Ok(Ok(Ok(Err((written, source))))) => Err(FinishError::Write { written, source }),
            Ok(_) => Err(FinishError::Crashed),
            Err(_) => Err(FinishError::Timeout(timeout)),
        }
    }
}

/// Logs a warning every `period` while records are being dropped.
pub async fn warn_on_drops(log: DecisionLog, period: Duration) {
    let mut seen = 0;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let now = log.dropped();
        if now > seen {
            tracing::warn!(
                dropped = now - seen,
                total = now,
                "decision log queue full: records dropped (`decision_log.on_full = \"drop\"`)"
            );
            seen = now;
        }
    }
}
