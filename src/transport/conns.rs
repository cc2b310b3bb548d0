//! Open connections of one listener, and when each must close: no request
//! within the first-request timeout, none open for the idle timeout, or
//! evicted (the idlest) to make room for a new connection at the cap.
//! Activity is requests, never bytes: HTTP/2 PINGs and SETTINGS keep no
//! connection alive.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::metrics::Metrics;

/// How long a connection may do nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// From accept (after any TLS handshake) to the first request.
    pub first_request: Duration,
    /// With no request open, once one was served.
    pub idle: Duration,
}

/// Why a connection was closed by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// No request arrived within the first-request timeout.
    NoRequest,
    /// No request was open for the idle timeout.
    Idle,
    /// The idlest connection, closed to admit a new one at the cap.
    Evicted,
}

impl Closed {
    /// The `reason` label of `cedar_pdp_connections_closed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRequest => "no_request",
            Self::Idle => "idle",
            Self::Evicted => "evicted",
        }
    }
}

/// The open connections of one listener, at most `max`.
#[derive(Debug)]
pub struct Registry {
    max: usize,
    timeouts: ConnTimeouts,
    /// `grpc`, `authzen`, `admin`: the metric label.
    listener: &'static str,
    metrics: Arc<Metrics>,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    next: u64,
    conns: HashMap<u64, Arc<Activity>>,
}

impl Registry {
    /// Room for `max` connections of `listener`, each bounded by
    /// `timeouts`; what is closed or refused is counted in `metrics`.
    pub fn new(
        max: usize,
        timeouts: ConnTimeouts,
        listener: &'static str,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            timeouts,
            listener,
            metrics,
            open: Mutex::new(Open::default()),
        })
    }

    /// Registers a new connection. At the cap, the connection idle longest
    /// (no request open) is evicted to make room; `None` when every open
    /// connection is busy, and the new one must be refused.
    pub fn admit(self: &Arc<Self>) -> Option<Registration> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.conns.len() >= self.max {
            let now = Instant::now();
            let victim = open
                .conns
                .iter()
                .filter(|(_, a)| a.active.load(Ordering::Acquire) == 0)
                // Idle longest; of equals, the oldest.
                .max_by_key(|(id, a)| (now.saturating_duration_since(a.last()), Reverse(**id)))
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                self.metrics.connection_closed(self.listener, "refused");
                return None;
            };
            if let Some(evicted) = open.conns.remove(&victim) {
                evicted.evict();
            }
        }
        let id = open.next;
        open.next += 1;
        let activity = Arc::new(Activity::new(self.timeouts));
        open.conns.insert(id, Arc::clone(&activity));
        Some(Registration {
            registry: Arc::clone(self),
            id,
            activity,
        })
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conns
            .len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One open connection's place in its [`Registry`]; dropping it frees the
/// place.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    activity: Arc<Activity>,
}

impl Registration {
    /// What the connection's requests report to.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Counts the connection as closed by the server, for `why`.
    pub fn closed(&self, why: Closed) {
        self.registry
            .metrics
            .connection_closed(self.registry.listener, why.as_str());
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self
            .registry
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.conns.remove(&self.id);
    }
}

/// A connection's requests: how many are open, and when one last started
/// or ended.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    timeouts: ConnTimeouts,
    /// Microseconds after `opened`.
    last: AtomicU64,
    active: AtomicUsize,
    served: AtomicBool,
    /// The idle limit once a request was served; HTTP/1.1 uses its header
    /// timeout between requests.
    idle_ms: AtomicU64,
    evicted: AtomicBool,
    wake: Notify,
}

impl Activity {
    fn new(timeouts: ConnTimeouts) -> Self {
        Self {
            opened: Instant::now(),
            timeouts,
            last: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_ms: AtomicU64::new(millis(timeouts.idle)),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_micros(self.last.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let micros = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last.store(micros, Ordering::Relaxed);
    }

    /// A request opened; it counts until the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.opened_one();
        RequestGuard(Arc::clone(self))
    }

    /// A request opened, closed by [`Activity::closed_one`].
    pub fn opened_one(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Relaxed);
        self.touch();
    }

    /// A request closed.
    pub fn closed_one(&self) {
        self.touch();
        let _ = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.wake.notify_one();
    }

    /// A request moved (a frame of an open one): the idle clock restarts.
    pub fn moved(&self) {
        self.touch();
    }

    /// Between requests, wait at most `limit` (HTTP/1.1: its header timeout).
    pub fn set_idle_limit(&self, limit: Duration) {
        self.idle_ms.store(millis(limit), Ordering::Relaxed);
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// When the connection must close if nothing happens (`Ok`), or why it
    /// must close now.
    pub fn verdict(&self, now: Instant) -> Result<Instant, Closed> {
        if self.evicted.load(Ordering::Acquire) {
            return Err(Closed::Evicted);
        }
        let served = self.served.load(Ordering::Relaxed);
        let limit = if served {
            Duration::from_millis(self.idle_ms.load(Ordering::Relaxed))
        } else {
            self.timeouts.first_request
        };
        if self.active.load(Ordering::Acquire) > 0 {
            return Ok(now + limit);
        }
        let due = self.last() + limit;
        if now >= due {
            Err(if served {
                Closed::Idle
            } else {
                Closed::NoRequest
            })
        } else {
            Ok(due)
        }
    }

    /// Completes when the connection must close.
    pub async fn closing(&self) -> Closed {
        loop {
            let due = match self.verdict(Instant::now()) {
                Ok(due) => due,
                Err(closed) => return closed,
            };
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}

/// One open request of a connection.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.closed_one();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    const T: ConnTimeouts = ConnTimeouts {
        first_request: Duration::from_secs(5),
        idle: Duration::from_secs(60),
    };

    #[test]
    fn at_the_cap_the_idlest_goes_and_busy_ones_stay() {
        let registry = Registry::new(2, T, "test", Arc::new(Metrics::new()));
        let a = registry.admit().unwrap();
        let b = registry.admit().unwrap();
        let _busy = a.activity().request();
        let c = registry.admit().unwrap();
        assert_eq!(b.activity().verdict(Instant::now()), Err(Closed::Evicted));
        assert!(a.activity().verdict(Instant::now()).is_ok());
        let _busy_too = c.activity().request();
        assert!(registry.admit().is_none(), "every connection is busy");
        drop(b);
        assert_eq!(registry.len(), 2);
    }

    #[test]
    fn a_silent_connection_has_the_first_request_timeout() {
        let registry = Registry::new(4, T, "test", Arc::new(Metrics::new()));
        let r = registry.admit().unwrap();
        let a = r.activity();
        let later = Instant::now() + Duration::from_secs(6);
        assert_eq!(a.verdict(later), Err(Closed::NoRequest));
        drop(a.request());
        assert!(a.verdict(later).is_ok());
        let much_later = Instant::now() + Duration::from_secs(61);
        assert_eq!(a.verdict(much_later), Err(Closed::Idle));
        let _open = a.request();
        assert!(a.verdict(much_later).is_ok(), "an open request is not idle");
    }
}
