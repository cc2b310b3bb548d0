//! The admin HTTP listener: `/metrics`, `/healthz` (liveness) and `/readyz`
//! (readiness), kept off the gRPC port so probes and scrapes never queue
//! behind authorization traffic. `/readyz` gives a short reason only: the
//! port is unauthenticated, and reload errors quote files and policy text.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::policy_store::PolicyStore;
use crate::transport::http::{self, HttpLimits};

/// Whether the server should receive traffic.
#[derive(Clone, Debug)]
pub(crate) struct Readiness {
    store: Arc<PolicyStore>,
    /// Zero disables the staleness check.
    max_policy_age: Duration,
    /// With `decision_log.required`: the log's drop count, and when it
    /// last grew.
    log: Option<Arc<LogDrops>>,
}

/// How long after the last dropped record a required log keeps the server
/// not ready: long enough for probes (every 10 s by default) to see it.
pub(crate) const DROP_WINDOW: Duration = Duration::from_secs(15);

#[derive(Debug)]
struct LogDrops {
    dropped: Arc<AtomicU64>,
    /// The count last seen, and when it last grew.
    seen: Mutex<(u64, Option<Instant>)>,
}

impl Readiness {
    /// Readiness of `store`, stale after `max_policy_age` of failing reloads.
    pub(crate) fn new(store: Arc<PolicyStore>, max_policy_age: Duration) -> Self {
        Self {
            store,
            max_policy_age,
            log: None,
        }
    }

    /// Not ready while the decision log drops records (`dropped`, its
    /// counter): for a log the config says is required.
    pub(crate) fn requiring_log(mut self, dropped: Arc<AtomicU64>) -> Self {
        let seen = dropped.load(Ordering::Relaxed);
        self.log = Some(Arc::new(LogDrops {
            dropped,
            seen: Mutex::new((seen, None)),
        }));
        self
    }

    /// Whether a required log dropped a record in the last [`DROP_WINDOW`].
    fn dropping(&self) -> bool {
        let Some(log) = &self.log else {
            return false;
        };
        let now = log.dropped.load(Ordering::Relaxed);
        let Ok(mut seen) = log.seen.lock() else {
            // A poisoned lock: say not ready rather than guess.
            return true;
        };
        if now > seen.0 {
            *seen = (now, Some(Instant::now()));
        }
        seen.1.is_some_and(|at| at.elapsed() < DROP_WINDOW)
    }

    /// The store whose readiness this is.
    pub(crate) fn store(&self) -> &Arc<PolicyStore> {
        &self.store
    }

    /// `Ok` when a set is live and not stale; otherwise why not.
    pub(crate) fn check(&self) -> Result<(), NotReady> {
        let (snapshot, status) = self.store.state();
        if snapshot.is_none() {
            return Err(NotReady::NoPolicySet);
        }
        if self.dropping() {
            return Err(NotReady::LogDropping);
        }
        if self.max_policy_age.is_zero() {
            return Ok(());
        }
        let (Some(error), Some(success)) = (status.last_error, status.last_success_at) else {
            return Ok(());
        };
        let age = SystemTime::now()
            .duration_since(success)
            .unwrap_or_default();
        if age > self.max_policy_age {
            return Err(NotReady::Stale {
                age,
                max: self.max_policy_age,
                error,
            });
        }
        Ok(())
    }
}

/// Why the server is not ready. Its `Display` is the short reason `/readyz`
/// shows; the reload error is only for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NotReady {
    NoPolicySet,
    /// `decision_log.required`, and records were dropped in the last
    /// [`DROP_WINDOW`].
    LogDropping,
    Stale {
        age: Duration,
        max: Duration,
        /// The last reload error, which can quote file names and policy text.
        error: String,
    },
}

impl NotReady {
    /// The full reload error, when there is one.
    pub(crate) fn reload_error(&self) -> Option<&str> {
        match self {
            Self::NoPolicySet | Self::LogDropping => None,
            Self::Stale { error, .. } => Some(error),
        }
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoPolicySet => f.write_str("no policy set is loaded yet"),
            Self::LogDropping => f.write_str(
                "the decision log is dropping records, and `decision_log.required` is on",
            ),
            Self::Stale { age, max, .. } => write!(
                f,
                "policy set is stale: reloads fail, and the last good load was {}s ago (`reload.max_policy_age` {}s)",
                age.as_secs(),
                max.as_secs()
            ),
        }
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// Serves the admin endpoints on `listener` until `shutdown` completes,
/// each client bounded by `limits`.
pub(crate) async fn serve(
    listener: TcpListener,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_page))
        .with_state(AdminState {
            metrics: metrics.clone(),
            readiness,
        });
    http::serve(listener, app, limits, None, metrics, shutdown).await;
}

async fn metrics_page(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn ready_page(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_reason_never_quotes_the_reload_error() {
        let stale = NotReady::Stale {
            age: Duration::from_secs(90),
            max: Duration::from_secs(60),
            error: "`/etc/policies/p.cedar`: unexpected token `permit (principal,`".into(),
        };
        let short = stale.to_string();
        assert!(short.starts_with("policy set is stale"), "{short}");
        assert!(
            !short.contains("p.cedar") && !short.contains("permit"),
            "{short}"
        );
        assert!(stale.reload_error().is_some_and(|e| e.contains("p.cedar")));
    }
}
