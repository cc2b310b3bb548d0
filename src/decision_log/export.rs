//! Export of written lines as OpenTelemetry log records (OTLP), best effort.
//!
//! The sink and its chain stay the source of truth; this is a copy for the
//! collector people already run. The writer offers each line once the sink
//! took it (records and checkpoints, byte for byte as chained) to a bounded
//! queue with `try_send`: a full queue drops the line and counts it, so the
//! writer never waits and never parses. An export thread turns each line
//! into a log record and emits it into the SDK's `BatchLogProcessor`, which
//! batches and exports over OTLP on its own thread.
//!
//! That processor drops silently when its queue is full, so the export
//! thread keeps it from filling: it emits only while fewer records are in
//! the processor than its queue holds, counting them out as the exporter
//! (wrapped in [`Counted`]) finishes each batch, and otherwise waits, while
//! new lines pile up in the bounded queue before it. A stuck collector
//! therefore costs dropped lines, counted, and nothing else.
//!
//! At shutdown the thread has a bounded time to emit what is queued and
//! flush the processor; what is left then is counted as dropped.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchConfigBuilder, BatchLogProcessor, LogBatch, LogExporter, SdkLogger, SdkLoggerProvider,
};
use serde::Deserialize;

/// The instrumentation scope of exported records.
const SCOPE: &str = "cedar-pdp.decision_log";

/// How often failures and drops are logged, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What happened to lines offered for export, since start.
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Records the collector accepted.
    pub exported: AtomicU64,
    /// Records in batches the exporter could not deliver.
    pub failed: AtomicU64,
    /// Lines never sent: the queue was full, a line did not parse, or
    /// shutdown came first.
    pub dropped: AtomicU64,
}

impl ExportCounters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The writer's end: offers lines, never waits.
#[derive(Debug)]
pub(super) struct Feed {
    tx: Sender<Vec<u8>>,
    counters: Arc<ExportCounters>,
}

impl Feed {
    /// Queues `line` for export, or counts it as dropped.
    pub(super) fn offer(&self, line: Vec<u8>) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                ExportCounters::add(&self.counters.dropped, 1);
            }
        }
    }
}

#[cfg(test)]
impl Feed {
    /// A feed whose lines `rx` receives, for the writer's tests.
    pub(super) fn channel(capacity: usize) -> (Self, Receiver<Vec<u8>>, Arc<ExportCounters>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let counters = Arc::new(ExportCounters::default());
        let feed = Self {
            tx,
            counters: Arc::clone(&counters),
        };
        (feed, rx, counters)
    }
}

/// Records emitted into the processor and not yet through its exporter.
#[derive(Debug)]
struct Flow {
    state: Mutex<FlowState>,
    changed: Condvar,
    capacity: usize,
}

#[derive(Debug, Default)]
struct FlowState {
    in_flight: usize,
    /// Set at shutdown: waiting for room ends then.
    deadline: Option<Instant>,
}

impl Flow {
    /// Takes room for one record, waiting while the processor is full;
    /// `false` once the shutdown deadline passed.
    fn acquire(&self, warn: &mut Warner) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.in_flight >= self.capacity {
            let wait = match state.deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(Duration::from_millis(100)),
                    _ => return false,
                },
                None => Duration::from_millis(100),
            };
            state = self
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            warn.check();
        }
        state.in_flight += 1;
        true
    }

    fn release(&self, n: usize) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_flight = state.in_flight.saturating_sub(n);
        self.changed.notify_all();
    }

    /// Sets the shutdown deadline, unless one is set already.
    fn stop_by(&self, deadline: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.deadline.get_or_insert(deadline);
        self.changed.notify_all();
    }

    fn deadline(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .deadline
    }
}

/// An exporter that counts what each batch came to and gives its room back.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    flow: Arc<Flow>,
    counters: Arc<ExportCounters>,
}

impl<E: LogExporter> LogExporter for Counted<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let n = batch.iter().count();
        let result = self.inner.export(batch).await;
        let counter = match result {
            Ok(()) => &self.counters.exported,
            Err(_) => &self.counters.failed,
        };
        ExportCounters::add(counter, n as u64);
        self.flow.release(n);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Logs drops and failures, at most every [`WARN_EVERY`].
#[derive(Debug)]
struct Warner {
    counters: Arc<ExportCounters>,
    seen: (u64, u64),
    last: Option<Instant>,
}

impl Warner {
    fn check(&mut self) {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        let now = (
            self.counters.dropped.load(Ordering::Relaxed),
            self.counters.failed.load(Ordering::Relaxed),
        );
        if now != self.seen {
            tracing::warn!(
                dropped = now.0 - self.seen.0,
                failed = now.1 - self.seen.1,
                "OTLP export of decision records is losing records (the decision log itself is intact)"
            );
            self.seen = now;
            self.last = Some(Instant::now());
        }
    }
}

/// The export thread; [`ExportWorker::finish`] gives it a bounded time.
#[derive(Debug)]
pub(super) struct ExportWorker {
    thread: JoinHandle<()>,
    flow: Arc<Flow>,
    flush_timeout: Duration,
}

/// Starts the export thread over `exporter`, with room for `capacity`
/// lines queued and again `capacity` records in the processor, and
/// `flush_timeout` to ship what is left once the writer is gone.
pub(super) fn start<E: LogExporter + 'static>(
    exporter: E,
    resource: Resource,
    capacity: usize,
    flush_timeout: Duration,
) -> std::io::Result<(Feed, ExportWorker, Arc<ExportCounters>)> {
    let counters = Arc::new(ExportCounters::default());
    let flow = Arc::new(Flow {
        state: Mutex::new(FlowState::default()),
        changed: Condvar::new(),
        capacity,
    });
    let counted = Counted {
        inner: exporter,
        flow: Arc::clone(&flow),
        counters: Arc::clone(&counters),
    };
    // `OTEL_BLRP_SCHEDULE_DELAY` and `OTEL_BLRP_MAX_EXPORT_BATCH_SIZE` apply;
    // the queue is ours, so that the room counted here is the room there.
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(capacity)
        .build();
    let processor = BatchLogProcessor::builder(counted)
        .with_batch_config(config)
        .build();
    let provider = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_log_processor(processor)
        .build();
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let thread_flow = Arc::clone(&flow);
    let thread_counters = Arc::clone(&counters);
    let thread = std::thread::Builder::new()
        .name("decision-log-export".into())
        .spawn(move || {
            run(
                &rx,
                &provider,
                &thread_flow,
                &thread_counters,
                flush_timeout,
            );
        })?;
    let feed = Feed {
        tx,
        counters: Arc::clone(&counters),
    };
    let worker = ExportWorker {
        thread,
        flow,
        flush_timeout,
    };
    Ok((feed, worker, counters))
}

/// Emits lines until the writer is gone, then flushes within the deadline.
fn run(
    rx: &Receiver<Vec<u8>>,
    provider: &SdkLoggerProvider,
    flow: &Flow,
    counters: &Arc<ExportCounters>,
    flush_timeout: Duration,
) {
    let logger = provider.logger(SCOPE);
    let mut warn = Warner {
        counters: Arc::clone(counters),
        seen: (0, 0),
        last: None,
    };
    let mut emitted = 0u64;
    loop {
        // A writer that never stops would hold the feed open: the deadline
        // ends the export regardless.
        if flow.deadline().is_some_and(|d| Instant::now() >= d) {
            ExportCounters::add(&counters.dropped, rx.len() as u64);
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if !flow.acquire(&mut warn) {
                    ExportCounters::add(&counters.dropped, 1);
                    continue;
                }
                if emit(&logger, &line) {
                    emitted += 1;
                } else {
                    flow.release(1);
                    ExportCounters::add(&counters.dropped, 1);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        warn.check();
    }
    // The writer is gone: the flush gets its time from now at the latest.
    flow.stop_by(Instant::now() + flush_timeout);
    let left = flow
        .deadline()
        .and_then(|d| d.checked_duration_since(Instant::now()))
        .unwrap_or_default();
    if let Err(e) = provider.shutdown_with_timeout(left.max(Duration::from_millis(10))) {
        tracing::warn!("OTLP export of decision records did not flush: {e}");
    }
    // What the processor still held was never exported.
    let done = counters.exported.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed);
    ExportCounters::add(&counters.dropped, emitted.saturating_sub(done));
    warn.last = None;
    warn.check();
}

impl ExportWorker {
    /// Gives the thread its flush timeout to emit what is queued and flush,
    /// once the writer (its only feed) has stopped, or from when it saw the
    /// writer go. Never fails the shutdown: the export is best effort, and
    /// what it loses is counted.
    pub(super) async fn finish(self) {
        let timeout = self.flush_timeout;
        self.flow.stop_by(Instant::now() + timeout);
        let thread = self.thread;
        let join = tokio::task::spawn_blocking(move || thread.join());
        // The margin covers the thread's last counting after its deadline.
        match tokio::time::timeout(timeout + Duration::from_secs(1), join).await {
            Ok(Ok(Ok(()))) => {}
            Ok(_) => tracing::warn!("the decision record export thread stopped unexpectedly"),
            Err(_) => tracing::warn!(?timeout, "the decision record export did not finish"),
        }
    }
}

/// An entity as a record names it.
#[derive(Deserialize)]
struct Entity<'a> {
    #[serde(rename = "type", borrow)]
    type_name: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
}

impl Entity<'_> {
    /// `Type::"id"`, as the decision span names it.
    fn display(&self) -> String {
        format!("{}::{:?}", self.type_name, self.id)
    }
}

#[derive(Deserialize)]
struct Failure<'a> {
    #[serde(borrow)]
    reason: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Checkpoint<'a> {
    seq: u64,
    #[serde(borrow)]
    hash: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    key_id: Cow<'a, str>,
}

/// The members of a line that become attributes; the rest is skipped.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    decision_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    trace_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    span_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    api: Option<Cow<'a, str>>,
    #[serde(borrow)]
    principal: Option<Entity<'a>>,
    #[serde(borrow)]
    action: Option<Entity<'a>>,
    #[serde(borrow)]
    resource: Option<Entity<'a>>,
    #[serde(borrow)]
    decision: Option<Cow<'a, str>>,
    #[serde(borrow)]
    policy_revision: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<Failure<'a>>,
    seq: Option<u64>,
    #[serde(borrow)]
    hash: Option<Cow<'a, str>>,
    #[serde(borrow)]
    checkpoint: Option<Checkpoint<'a>>,
    /// A file's start or a gap mark: shipped as its own event.
    start: Option<serde::de::IgnoredAny>,
    gap: Option<serde::de::IgnoredAny>,
}

/// Emits `line` as a log record: the body is the line itself, so a copy
/// off the box can still be checked against its `hash`; the attributes
/// name what collectors route and index on. `false` if it does not parse.
fn emit(logger: &SdkLogger, line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    let Ok(fields) = serde_json::from_str::<Fields<'_>>(text) else {
        return false;
    };
    let mut record = logger.create_log_record();
    let timestamp = match &fields.checkpoint {
        None if fields.start.is_some() || fields.gap.is_some() => {
            let name = if fields.start.is_some() {
                "cedar.start"
            } else {
                "cedar.gap"
            };
            record.set_event_name(name);
            None
        }
        Some(checkpoint) => {
            record.set_event_name("cedar.checkpoint");
            record.add_attribute("cedar.seq", seq_value(checkpoint.seq));
            record.add_attribute("cedar.hash", checkpoint.hash.to_string());
            record.add_attribute("cedar.key_id", checkpoint.key_id.to_string());
            Some(&checkpoint.timestamp)
        }
        None => {
            record.set_event_name("cedar.decision");
            let strings = [
                ("cedar.decision_id", &fields.decision_id),
                ("cedar.decision", &fields.decision),
                ("cedar.policy_revision", &fields.policy_revision),
                ("cedar.api", &fields.api),
                ("cedar.hash", &fields.hash),
            ];
            for (key, value) in strings {
                if let Some(value) = value {
                    record.add_attribute(key, value.to_string());
                }
            }
            for (key, entity) in [
                ("cedar.principal", &fields.principal),
                ("cedar.action", &fields.action),
                ("cedar.resource", &fields.resource),
            ] {
                if let Some(entity) = entity {
                    record.add_attribute(key, entity.display());
                }
            }
            if let Some(seq) = fields.seq {
                record.add_attribute("cedar.seq", seq_value(seq));
            }
            if let Some(error) = &fields.error {
                record.add_attribute("cedar.error.reason", error.reason.to_string());
            }
            fields.timestamp.as_ref()
        }
    };
    // A refused request is worth a second look; a deny is a result.
    let (severity, severity_text) = match &fields.error {
        Some(_) => (Severity::Warn, "WARN"),
        None => (Severity::Info, "INFO"),
    };
    record.set_severity_number(severity);
    record.set_severity_text(severity_text);
    if let Some(at) = timestamp.and_then(|t| humantime::parse_rfc3339(t).ok()) {
        record.set_timestamp(at);
    }
    let trace = fields
        .trace_id
        .as_deref()
        .and_then(|t| TraceId::from_hex(t).ok())
        .filter(|t| *t != TraceId::INVALID);
    if let Some(trace) = trace {
        let span = fields
            .span_id
            .as_deref()
            .and_then(|s| SpanId::from_hex(s).ok())
            .unwrap_or(SpanId::INVALID);
        record.set_trace_context(trace, span, None);
    }
    record.set_body(AnyValue::String(text.to_string().into()));
    logger.emit(record);
    true
}

/// A sequence number as an OTLP integer (`i64`), saturating.
fn seq_value(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use opentelemetry::Key;
    use opentelemetry_sdk::logs::SdkLogRecord;

    /// Keeps what it is given; holds every export while `hold` is set.
    #[derive(Debug, Default, Clone)]
    struct Recorder {
        got: Arc<Mutex<Vec<SdkLogRecord>>>,
        hold: Arc<std::sync::atomic::AtomicBool>,
    }

    impl LogExporter for Recorder {
        async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
            while self.hold.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let mut got = self.got.lock().unwrap();
            got.extend(batch.iter().map(|(r, _)| r.clone()));
            Ok(())
        }
    }

    fn attr(record: &SdkLogRecord, key: &str) -> Option<AnyValue> {
        record
            .attributes_iter()
            .find(|(k, _)| *k == Key::from(key.to_string()))
            .map(|(_, v)| v.clone())
    }

    const RECORD: &str = concat!(
        r#"{"action":{"id":"read","type":"Action"},"decision":"deny","decision_id":"d-1","#,
        r#""error":{"code":"INVALID_ARGUMENT","message":"m","reason":"invalid_request"},"#,
        r#""policy_revision":"r1","prev_hash":"00","principal":{"id":"a\"b","type":"User"},"#,
        r#""resource":{"id":"x","type":"Doc"},"seq":7,"span_id":"00f067aa0ba902b7","#,
        r#""timestamp":"2026-01-02T03:04:05.000006Z","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","#,
        r#""hash":"ab"}"#,
        "\n"
    );
    const CHECKPOINT: &str = concat!(
        r#"{"checkpoint":{"hash":"ab","key_id":"k","seq":7,"timestamp":"2026-01-02T03:04:06Z"},"#,
        r#""signature":"s"}"#,
        "\n"
    );

    #[tokio::test]
    async fn lines_become_log_records_with_the_line_as_body() {
        let recorder = Recorder::default();
        let (feed, worker, counters) = start(
            recorder.clone(),
            Resource::builder().build(),
            16,
            Duration::from_secs(5),
        )
        .unwrap();
        feed.offer(RECORD.as_bytes().to_vec());
        feed.offer(CHECKPOINT.as_bytes().to_vec());
        feed.offer(b"not json\n".to_vec());
        drop(feed);
        worker.finish().await;
        let got = recorder.got.lock().unwrap();
        assert_eq!(got.len(), 2);
        let (record, checkpoint) = (&got[0], &got[1]);
        assert_eq!(record.event_name(), Some("cedar.decision"));
        assert_eq!(
            record.body(),
            Some(&AnyValue::String(RECORD.trim_end().to_string().into()))
        );
        let s = |v: &str| Some(AnyValue::String(v.to_string().into()));
        assert_eq!(attr(record, "cedar.decision"), s("deny"));
        assert_eq!(attr(record, "cedar.decision_id"), s("d-1"));
        assert_eq!(attr(record, "cedar.principal"), s("User::\"a\\\"b\""));
        assert_eq!(attr(record, "cedar.policy_revision"), s("r1"));
        assert_eq!(attr(record, "cedar.error.reason"), s("invalid_request"));
        assert_eq!(attr(record, "cedar.seq"), Some(AnyValue::Int(7)));
        assert_eq!(attr(record, "cedar.hash"), s("ab"));
        assert_eq!(record.severity_number(), Some(Severity::Warn));
        let cx = record.trace_context().unwrap();
        assert_eq!(cx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(
            record.timestamp(),
            humantime::parse_rfc3339("2026-01-02T03:04:05.000006Z").ok()
        );
        assert_eq!(checkpoint.event_name(), Some("cedar.checkpoint"));
        assert_eq!(attr(checkpoint, "cedar.seq"), Some(AnyValue::Int(7)));
        assert_eq!(attr(checkpoint, "cedar.key_id"), s("k"));
        assert!(checkpoint.trace_context().is_none());
        assert_eq!(counters.exported.load(Ordering::Relaxed), 2);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 1, "the bad line");
    }

    #[tokio::test]
    async fn a_stuck_exporter_drops_and_counts_and_the_end_is_bounded() {
        let recorder = Recorder::default();
        recorder.hold.store(true, Ordering::Relaxed);
        let (feed, worker, counters) = start(
            recorder.clone(),
            Resource::builder().build(),
            1,
            Duration::from_millis(300),
        )
        .unwrap();
        let started = Instant::now();
        for _ in 0..50 {
            feed.offer(RECORD.as_bytes().to_vec());
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "offering never waits"
        );
        drop(feed);
        worker.finish().await;
        assert!(started.elapsed() < Duration::from_secs(3));
        // Nothing was exported, and every line is accounted for.
        assert_eq!(counters.exported.load(Ordering::Relaxed), 0);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 50);
        recorder.hold.store(false, Ordering::Relaxed);
    }
}
