//! Which evaluations stay on the async worker that received them.
//!
//! Crossing to the evaluation pool and back costs two thread wake-ups,
//! several times a small decision's own cost one call at a time. So a
//! request whose caller-supplied values are small (`limits.inline_evaluation_bytes`)
//! is evaluated where it arrived. What the caller sends is then bounded; what
//! the policies and stored entities cost is not, so the gate also watches
//! the clock: once [`STRIKES`] inline evaluations against one snapshot take
//! longer than [`BUDGET`] of CPU, every later evaluation of that snapshot
//! goes to the pool, and a reload starts afresh. A slow policy set thus
//! stalls the async workers for a bounded number of evaluations, never for
//! good. The time that counts is the worker thread's CPU time, not the wall
//! clock's: a worker descheduled mid-evaluation is not slow.
//!
//! Inline only pays while the async workers have time to spare. Under load
//! the pool costs less CPU per call, not more: the evaluation threads run
//! decision after decision with Cedar's code and the snapshot hot in their
//! caches, while the workers batch many calls' reads and writes. So the
//! gate watches how busy the workers were over the last [`WINDOW`]: past
//! [`BUSY`], evaluations go to the pool, and they come back inline once the
//! workers are under [`IDLE`] (lower, because the pool itself takes work off
//! them). See `BENCHMARKS.md`, "Inline only while the workers have time".

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

use serde_json::Value as Json;

use super::request::{Context, DecisionRequest};
use super::verified::Verified;
use crate::policy_store::Snapshot;

/// An inline evaluation slower than this is a strike against its snapshot.
pub(super) const BUDGET: Duration = Duration::from_millis(1);
/// Strikes after which a snapshot's evaluations all go to the pool.
pub(super) const STRIKES: u32 = 8;
/// How often the workers' busy time is read.
pub(super) const WINDOW: Duration = Duration::from_millis(50);
/// Workers busier than this (a fraction of the window, on average) send
/// evaluations to the pool...
pub(super) const BUSY: f64 = 0.85;
/// ...until they are less busy than this.
pub(super) const IDLE: f64 = 0.45;

/// Decides, per request, whether it is evaluated inline.
#[derive(Debug)]
pub(super) struct InlineGate {
    max_bytes: usize,
    load: WorkerLoad,
    /// The uid of the snapshot sent to the pool for good (0: none; snapshot
    /// uids start at 1).
    barred: AtomicU64,
    /// Strikes so far, against the snapshot whose uid is first.
    strikes: Mutex<(u64, u32)>,
}

/// What one inline evaluation's time did to its snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Within budget, or a strike short of the limit.
    Fine,
    /// The last strike: the snapshot's evaluations now go to the pool.
    Barred,
}

impl InlineGate {
    /// A gate for requests up to `max_bytes` (0: every evaluation on the
    /// pool), watching the workers of the runtime it is built on (none
    /// outside one: then only size and strikes count).
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            load: WorkerLoad::new(tokio::runtime::Handle::try_current().ok()),
            barred: AtomicU64::new(0),
            strikes: Mutex::new((0, 0)),
        }
    }

    /// Whether `req` is evaluated inline against `snapshot`.
    pub(super) fn admits<'a>(&self, snapshot: &Snapshot, req: impl Into<Measured<'a>>) -> bool {
        self.max_bytes > 0
            && self.barred.load(Ordering::Relaxed) != snapshot.engine.uid()
            && req.into().is_within(self.max_bytes)
            && !self.load.busy()
    }

    /// Counts an inline evaluation against `snapshot` that `took` this long.
    pub(super) fn account(&self, snapshot: &Snapshot, took: Duration) -> Verdict {
        if took <= BUDGET {
            return Verdict::Fine;
        }
        // A poisoned lock only means a panic elsewhere mid-update; the
        // count is still a count.
        let mut strikes = self
            .strikes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if strikes.0 != snapshot.engine.uid() {
            *strikes = (snapshot.engine.uid(), 0);
        }
        strikes.1 += 1;
        if strikes.1 == STRIKES {
            self.barred.store(snapshot.engine.uid(), Ordering::Relaxed);
            return Verdict::Barred;
        }
        Verdict::Fine
    }
}

/// Whether the async workers are busy, read from tokio's count of each
/// worker's busy time at most once per [`WINDOW`], by whichever call finds
/// the window over; every other call reads one flag.
#[derive(Debug)]
struct WorkerLoad {
    runtime: Option<tokio::runtime::Handle>,
    busy: AtomicBool,
    /// Nanoseconds after `since` at which the next reading is due.
    due: AtomicU64,
    since: Instant,
    /// The last reading: when, and the workers' busy time summed.
    last: Mutex<(Instant, Duration)>,
}

impl WorkerLoad {
    fn new(runtime: Option<tokio::runtime::Handle>) -> Self {
        let now = Instant::now();
        let busy = runtime.as_ref().map_or(Duration::ZERO, busy_time);
        Self {
            runtime,
            busy: AtomicBool::new(false),
            due: AtomicU64::new(nanos(WINDOW)),
            since: now,
            last: Mutex::new((now, busy)),
        }
    }

    fn busy(&self) -> bool {
        let Some(runtime) = &self.runtime else {
            return false;
        };
        let now = Instant::now();
        if nanos(now - self.since) >= self.due.load(Ordering::Relaxed)
            && let Ok(mut last) = self.last.try_lock()
        {
            let busy = busy_time(runtime);
            let workers = runtime.metrics().num_workers().max(1);
            let share = fraction(busy.saturating_sub(last.1), now - last.0, workers);
            let was = self.busy.load(Ordering::Relaxed);
            self.busy.store(next_state(was, share), Ordering::Relaxed);
            *last = (now, busy);
            self.due
                .store(nanos(now - self.since + WINDOW), Ordering::Relaxed);
        }
        self.busy.load(Ordering::Relaxed)
    }
}

/// The workers' busy time, summed.
fn busy_time(runtime: &tokio::runtime::Handle) -> Duration {
    let m = runtime.metrics();
    (0..m.num_workers())
        .map(|w| m.worker_total_busy_duration(w))
        .sum()
}

/// `busy` as a fraction of `workers` workers' time over `wall`.
fn fraction(busy: Duration, wall: Duration, workers: usize) -> f64 {
    let capacity = wall.as_secs_f64() * workers as f64;
    if capacity > 0.0 {
        busy.as_secs_f64() / capacity
    } else {
        0.0
    }
}

/// Busy past [`BUSY`]; idle again only under [`IDLE`].
fn next_state(was_busy: bool, share: f64) -> bool {
    if was_busy {
        share >= IDLE
    } else {
        share > BUSY
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Times one inline evaluation. The wall clock is read at both ends (cheap);
/// the thread's CPU clock, a system call, at the start and only again when
/// the wall time is over [`BUDGET`].
#[derive(Debug)]
pub(super) struct Stopwatch {
    wall: Instant,
    cpu: Duration,
}

impl Stopwatch {
    /// Starts timing on the calling thread.
    pub(super) fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// The CPU time this thread has spent since [`Stopwatch::start`], or the
    /// wall time when that is within [`BUDGET`] (CPU time never exceeds it).
    /// Call it on the thread that started it.
    pub(super) fn took(&self) -> Duration {
        let wall = self.wall.elapsed();
        if wall <= BUDGET {
            return wall;
        }
        thread_cpu_time().saturating_sub(self.cpu)
    }
}

fn thread_cpu_time() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(t.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// Nothing verified, for a request measured as it was sent.
static UNVERIFIED: Verified = Verified::NONE;

/// A request as the gate measures it: with what screening verified of it
/// (the chain the tokens made, the subject token's claims), since those
/// reach the evaluation too.
#[derive(Clone, Copy, Debug)]
pub(super) struct Measured<'a> {
    req: &'a DecisionRequest,
    verified: &'a Verified,
}

impl<'a> From<(&'a DecisionRequest, &'a Verified)> for Measured<'a> {
    fn from((req, verified): (&'a DecisionRequest, &'a Verified)) -> Self {
        Self { req, verified }
    }
}

impl<'a> From<&'a DecisionRequest> for Measured<'a> {
    fn from(req: &'a DecisionRequest) -> Self {
        Self {
            req,
            verified: &UNVERIFIED,
        }
    }
}

impl Measured<'_> {
    /// Whether it comes to at most `max` bytes, counted roughly as JSON.
    /// Counting stops once past `max`, so a large request costs no more to
    /// judge than a small one.
    fn is_within(&self, max: usize) -> bool {
        let Self { req, verified } = *self;
        let mut left = max;
        let mut spend = |n: usize| match left.checked_sub(n) {
            Some(rest) => {
                left = rest;
                true
            }
            None => false,
        };
        let uids = [&req.principal, &req.action, &req.resource];
        let uid_bytes: usize = uids
            .iter()
            .flat_map(|u| u.iter())
            .map(|u| u.type_name.len() + u.id.len())
            .sum();
        let strings = uid_bytes
            + req.context_json().len()
            + req.entities_json.len()
            + req.purpose.len()
            + req.subject_token.len()
            + req.actor_token.len()
            + req.request_id.len();
        if !spend(strings) {
            return false;
        }
        if let Some(w) = &req.workload {
            let labels: usize = w.labels.iter().map(String::len).sum();
            if !spend(w.spiffe_id.len() + w.namespace.len() + w.service_account.len() + labels) {
                return false;
            }
        }
        for hop in verified.chain(req) {
            let scopes: usize = hop.scopes.iter().map(String::len).sum();
            let ids = hop.delegator.type_name.len() + hop.delegator.id.len();
            if !spend(ids + scopes + hop.purpose.len() + 32) {
                return false;
            }
        }
        if !spend(req.entities.len() * 2) {
            return false;
        }
        let mut values: Vec<&Json> = req.entities.iter().collect();
        if let Context::Record(map) = &req.context {
            values.extend(map.values());
            if !spend(map.keys().map(String::len).sum()) {
                return false;
            }
        }
        for (uid, attrs) in &req.properties {
            values.extend(attrs.values());
            let keys: usize = attrs.keys().map(String::len).sum();
            if !spend(uid.type_name.len() + uid.id.len() + keys) {
                return false;
            }
        }
        if let Some(claims) = &verified.claims {
            values.extend(claims.values());
        }
        // Depth-first with a stack of our own: no recursion on caller input,
        // and a value is paid for before its children are stacked.
        while let Some(v) = values.pop() {
            let n = match v {
                Json::String(s) => s.len() + 2,
                Json::Array(items) => items.len() + 2,
                Json::Object(map) => map.keys().map(|k| k.len() + 4).sum::<usize>() + 2,
                Json::Number(_) => 8,
                Json::Bool(_) | Json::Null => 5,
            };
            if !spend(n) {
                return false;
            }
            match v {
                Json::Array(items) => values.extend(items),
                Json::Object(map) => values.extend(map.values()),
                _ => {}
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::pipeline::request::Context;

    fn snapshot() -> std::sync::Arc<Snapshot> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            "permit(principal, action, resource);",
        )
        .unwrap();
        let store = crate::policy_store::PolicyStore::new(
            dir.path(),
            crate::policy_store::LoadOptions::default(),
        );
        store.reload().unwrap();
        store.snapshot().unwrap()
    }

    #[test]
    fn only_small_requests_are_admitted_and_zero_admits_none() {
        let s = snapshot();
        let small = DecisionRequest {
            context: Context::Json(r#"{"a": 1}"#.into()),
            ..DecisionRequest::default()
        };
        let big = DecisionRequest {
            context: Context::Json(format!(r#"{{"a": "{}"}}"#, "x".repeat(5000))),
            ..DecisionRequest::default()
        };
        let gate = InlineGate::new(4096);
        assert!(gate.admits(&s, &small));
        assert!(!gate.admits(&s, &big));
        assert!(!InlineGate::new(0).admits(&s, &small));
    }

    #[test]
    fn a_snapshot_that_keeps_evaluating_slowly_goes_to_the_pool_and_a_new_one_does_not() {
        let (slow, fast) = (BUDGET * 2, BUDGET / 2);
        let (first, second) = (snapshot(), snapshot());
        assert_ne!(first.engine.uid(), second.engine.uid());
        let req = DecisionRequest::default();
        let gate = InlineGate::new(4096);
        for _ in 0..100 {
            assert_eq!(gate.account(&first, fast), Verdict::Fine);
        }
        for _ in 1..STRIKES {
            assert_eq!(gate.account(&first, slow), Verdict::Fine);
            assert!(gate.admits(&first, &req));
        }
        assert_eq!(gate.account(&first, slow), Verdict::Barred);
        assert!(!gate.admits(&first, &req));
        assert!(gate.admits(&second, &req));
        // Strikes count per snapshot: the second starts from none.
        for _ in 1..STRIKES {
            assert_eq!(gate.account(&second, slow), Verdict::Fine);
        }
        assert!(gate.admits(&second, &req));
    }

    #[test]
    fn time_off_the_cpu_is_no_strike_and_time_on_it_is() {
        // A descheduled worker: the wall clock runs, the thread does not.
        let off = Stopwatch::start();
        std::thread::sleep(BUDGET * 5);
        let took = off.took();
        assert!(
            took < BUDGET,
            "asleep for {:?}, counted {took:?}",
            BUDGET * 5
        );

        let on = Stopwatch::start();
        let spin = Instant::now();
        while spin.elapsed() < BUDGET * 3 {
            std::hint::black_box(0);
        }
        let took = on.took();
        assert!(took > BUDGET, "spun for {:?}, counted {took:?}", BUDGET * 3);
    }

    #[test]
    fn busy_workers_send_evaluations_to_the_pool_until_they_are_well_under() {
        // Inline until past BUSY; then the pool until under IDLE.
        assert!(!next_state(false, 0.5));
        assert!(!next_state(false, BUSY));
        assert!(next_state(false, 0.9));
        assert!(next_state(true, 0.6));
        assert!(next_state(true, IDLE));
        assert!(!next_state(true, 0.4));
        let ms = Duration::from_millis;
        assert!((fraction(ms(80), ms(50), 2) - 0.8).abs() < 1e-9);
        assert!(fraction(ms(1), Duration::ZERO, 2).abs() < 1e-9);
    }

    #[test]
    fn a_runtime_kept_busy_turns_the_gate_to_the_pool_and_back() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let s = snapshot();
        let req = DecisionRequest::default();
        let gate = runtime.block_on(async { InlineGate::new(4096) });
        assert!(gate.admits(&s, &req));
        // The one worker spins for a while: busy.
        let spin = runtime.spawn(async {
            let started = Instant::now();
            while started.elapsed() < WINDOW * 6 {
                std::hint::black_box(0);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.admits(&s, &req) {
            assert!(
                Instant::now() < deadline,
                "a spinning worker never counted as busy"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        runtime.block_on(spin).unwrap();
        // Idle again: back inline within a few windows.
        while !gate.admits(&s, &req) {
            assert!(
                Instant::now() < deadline,
                "an idle worker never counted as idle"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Outside a runtime nothing is watched.
        assert!(InlineGate::new(4096).admits(&s, &req));
    }
}
