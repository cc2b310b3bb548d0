//! Which evaluations stay on the async worker that received them.
//!
//! Crossing to the evaluation pool and back costs two thread wake-ups,
//! several times a small decision's own cost one call at a time. So a
//! request whose caller-supplied values are small (`limits.inline_evaluation_bytes`)
//! is evaluated where it arrived. What the caller sends is then bounded; what
//! the policies and stored entities cost is not, so the gate also watches
//! the clock: once [`STRIKES`] inline evaluations against one snapshot take
//! longer than [`BUDGET`], every later evaluation of that snapshot goes to
//! the pool, and a reload starts afresh. A slow policy set thus stalls the
//! async workers for a bounded number of evaluations, never for good.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::request::DecisionRequest;
use crate::policy_store::Snapshot;

/// An inline evaluation slower than this is a strike against its snapshot.
pub(super) const BUDGET: Duration = Duration::from_millis(1);
/// Strikes after which a snapshot's evaluations all go to the pool.
pub(super) const STRIKES: u32 = 8;

/// Decides, per request, whether it is evaluated inline.
#[derive(Debug)]
pub(super) struct InlineGate {
    max_bytes: usize,
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
    /// A gate for requests up to `max_bytes` (0: every evaluation on the pool).
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            barred: AtomicU64::new(0),
            strikes: Mutex::new((0, 0)),
        }
    }

    /// Whether `req` is evaluated inline against `snapshot`.
    pub(super) fn admits(&self, snapshot: &Snapshot, req: &DecisionRequest) -> bool {
        self.max_bytes > 0
            && self.barred.load(Ordering::Relaxed) != snapshot.uid
            && req.is_within(self.max_bytes)
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
        if strikes.0 != snapshot.uid {
            *strikes = (snapshot.uid, 0);
        }
        strikes.1 += 1;
        if strikes.1 == STRIKES {
            self.barred.store(snapshot.uid, Ordering::Relaxed);
            return Verdict::Barred;
        }
        Verdict::Fine
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
        assert_ne!(first.uid, second.uid);
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
}
