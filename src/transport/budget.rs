//! One process-wide budget on request bytes held before they are decoded:
//! AuthZEN bodies being read, and gRPC messages not yet complete. Bytes are
//! charged as they arrive, so that many clients each withholding the last
//! byte of a large body hold at most the budget between them, and a request
//! past it is refused rather than read.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The budget, shared by every listener.
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
}

/// The budget has no room for the bytes that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the server is holding {limit} bytes of request bodies already (`limits.max_buffered_bytes`); retry with backoff"
)]
pub struct Exhausted {
    pub limit: usize,
}

impl BufferBudget {
    /// Room for `limit` bytes at once.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// A new request's charge, holding nothing yet.
    pub fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: Arc::clone(self),
            held: 0,
        }
    }

    /// Bytes charged now, across every request.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The configured budget.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// What one request holds of the budget; it gives it all back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<BufferBudget>,
    held: usize,
}

impl Charge {
    /// Takes `n` more bytes, or nothing when they do not fit.
    pub fn take(&mut self, n: usize) -> Result<(), Exhausted> {
        let limit = self.budget.limit;
        self.budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= limit)
            })
            .map_err(|_| Exhausted { limit })?;
        self.held += n;
        Ok(())
    }

    /// Gives back what is held beyond `keep` bytes.
    pub fn release_to(&mut self, keep: usize) {
        if self.held > keep {
            let back = self.held - keep;
            self.budget.used.fetch_sub(back, Ordering::AcqRel);
            self.held = keep;
        }
    }

    /// Bytes this request holds.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release_to(0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn charges_share_the_budget_and_give_it_back() {
        let budget = BufferBudget::new(100);
        let mut a = budget.charge();
        let mut b = budget.charge();
        a.take(60).unwrap();
        assert_eq!(b.take(41), Err(Exhausted { limit: 100 }));
        assert_eq!(b.held(), 0, "a refused take holds nothing");
        b.take(40).unwrap();
        a.release_to(10);
        assert_eq!(budget.in_use(), 50);
        drop(a);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.charge().take(usize::MAX).is_err());
    }
}
