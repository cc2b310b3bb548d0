//! The decision log: the only writer of decision records.
//!
//! The request path never writes. It reserves queue space *before* deciding
//! (in `block` mode), so a decision that was made always has a slot, even if
//! the client cancels the call afterwards; a writer thread drains the queue
//! into the sink. Closing every handle drains the queue and flushes the sink.

mod record;
mod sink;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{DecisionLogConfig, LogSink, OnFull};
pub use record::{Caller, DecisionRecord, EntityRef, MASKED, Masker, RECORD_VERSION, RecordError};

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

/// A cheap, cloneable handle that queues records for the writer.
#[derive(Clone, Debug)]
pub struct DecisionLog {
    tx: mpsc::Sender<DecisionRecord>,
    on_full: OnFull,
    masker: Arc<Masker>,
    dropped: Arc<AtomicU64>,
}

/// Queue slots reserved for the records of one call.
pub struct Slots<'a> {
    log: &'a DecisionLog,
    permits: Option<mpsc::PermitIterator<'a, DecisionRecord>>,
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
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer_dropped = Arc::clone(&dropped);
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || sink::drain(rx, sink, &writer_dropped))
            .map_err(DecisionLogError::Spawn)?;
        let log = Self {
            tx,
            on_full: config.on_full,
            masker: Arc::new(Masker::new(&config.mask, &config.remove)),
            dropped,
        };
        Ok((log, LogWriter { thread }))
    }

    /// Reserves room for `n` records. In `block` mode this waits for space
    /// (backpressure); in `drop` mode it returns at once.
    pub async fn reserve(&self, n: usize) -> Slots<'_> {
        let permits = match self.on_full {
            OnFull::Block => self.tx.reserve_many(n).await.ok(),
            OnFull::Drop => None,
        };
        Slots { log: self, permits }
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

    fn enqueue(&self, record: DecisionRecord) {
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Slots<'_> {
    /// Masks `record` and queues it. Never waits.
    pub fn submit(&mut self, mut record: DecisionRecord) {
        self.log.masker.apply(&mut record);
        match self.permits.as_mut().and_then(Iterator::next) {
            Some(permit) => permit.send(record),
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
