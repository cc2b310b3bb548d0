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

mod record;
mod sink;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::config::{DecisionLogConfig, LogSink, OnFull};
pub use record::{
    Caller, DecisionRecord, EntityRef, MASKED, Masker, RECORD_VERSION, RecordError, RecordFailure,
};

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
}

/// A record in the queue, holding its room until the writer takes it.
struct Queued {
    record: DecisionRecord,
    _room: OwnedSemaphorePermit,
}

impl Queued {
    /// The record; its room is released as the writer takes it.
    fn open(self) -> DecisionRecord {
        self.record
    }
}

/// A cheap, cloneable handle that queues records for the writer.
#[derive(Clone, Debug)]
pub struct DecisionLog {
    // INVARIANT: every record sent holds a permit of `decisions` or
    // `refusals`, so the unbounded channel holds at most their sum.
    tx: mpsc::UnboundedSender<Queued>,
    decisions: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    capacity: usize,
    on_full: OnFull,
    masker: Arc<Masker>,
    dropped: Arc<AtomicU64>,
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
    thread: JoinHandle<u64>,
}

impl DecisionLog {
    /// Opens the sink and starts the writer thread.
    pub fn start(config: &DecisionLogConfig) -> Result<(Self, LogWriter), DecisionLogError> {
        let sink: Box<dyn Write + Send> = match config.sink {
            LogSink::Stdout => Box::new(std::io::stdout()),
            LogSink::File => Box::new(sink::rotating_file(
                &config.path,
                config.max_file_bytes,
                config.max_files,
            )?),
        };
        let (tx, rx) = mpsc::unbounded_channel::<Queued>();
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = Arc::clone(&dropped);
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || sink::drain(rx, sink, &writer_dropped))
            .map_err(DecisionLogError::Spawn)?;
        let log = Self {
            tx,
            decisions: Arc::new(Semaphore::new(config.queue_capacity)),
            refusals: Arc::new(Semaphore::new(config.queue_capacity)),
            capacity: config.queue_capacity,
            on_full: config.on_full,
            masker: Arc::new(Masker::new(&config.mask, &config.remove)),
            dropped,
        };
        Ok((log, LogWriter { thread }))
    }

    /// Reserves room for `n` records. In `block` mode this waits for space
    /// (backpressure); in `drop` mode it returns at once.
    /// A call that needs more room than the whole queue gets none, and its
    /// records are queued as room allows.
    pub async fn reserve(&self, n: usize) -> Slots {
        let room = match (self.on_full, u32::try_from(n)) {
            (OnFull::Block, Ok(n)) if n > 0 && n as usize <= self.capacity => {
                Arc::clone(&self.decisions).acquire_many_owned(n).await.ok()
            }
            _ => None,
        };
        Slots {
            log: self.clone(),
            room,
        }
    }

    /// Masks and queues the record of a refused request. Never waits: it
    /// takes room from the refusals' budget, then from the decisions'.
    pub fn submit_refusal(&self, mut record: DecisionRecord) {
        self.masker.apply(&mut record);
        let room = Arc::clone(&self.refusals)
            .try_acquire_owned()
            .or_else(|_| Arc::clone(&self.decisions).try_acquire_owned());
        match room {
            Ok(room) => self.send(record, room),
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
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

    fn send(&self, record: DecisionRecord, room: OwnedSemaphorePermit) {
        let queued = Queued {
            record,
            _room: room,
        };
        if self.tx.send(queued).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn enqueue(&self, record: DecisionRecord) {
        match Arc::clone(&self.decisions).try_acquire_owned() {
            Ok(room) => self.send(record, room),
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Slots {
    /// Masks `record` and queues it, in reserved room if any is left. Never
    /// waits.
    pub fn submit(&mut self, mut record: DecisionRecord) {
        self.log.masker.apply(&mut record);
        let reserved = match &mut self.room {
            Some(room) if room.num_permits() > 1 => room.split(1),
            Some(_) => self.room.take(),
            None => None,
        };
        match reserved {
            Some(room) => self.log.send(record, room),
            None => self.log.enqueue(record),
        }
    }
}

impl LogWriter {
    /// Waits up to `timeout` for the writer to drain and flush. Every handle
    /// must be dropped first, or the writer waits for more records.
    pub async fn finish(self, timeout: Duration) -> Option<u64> {
        let join = tokio::task::spawn_blocking(move || self.thread.join().ok());
        match tokio::time::timeout(timeout, join).await {
            Ok(Ok(written)) => written,
            _ => None,
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
