//! The admin HTTP listener: `/metrics`, `/healthz` (liveness) and `/readyz`
//! (readiness), kept off the gRPC port so probes and scrapes never queue
//! behind authorization traffic.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::policy_store::PolicyStore;

/// Whether the server should receive traffic.
#[derive(Clone, Debug)]
pub(crate) struct Readiness {
    store: Arc<PolicyStore>,
    /// Zero disables the staleness check.
    max_policy_age: Duration,
}

impl Readiness {
    /// Readiness of `store`, stale after `max_policy_age` of failing reloads.
    pub(crate) fn new(store: Arc<PolicyStore>, max_policy_age: Duration) -> Self {
        Self {
            store,
            max_policy_age,
        }
    }

    /// The store whose readiness this is.
    pub(crate) fn store(&self) -> &Arc<PolicyStore> {
        &self.store
    }

    /// `Ok` when a set is live and not stale; otherwise the reason.
    pub(crate) fn check(&self) -> Result<(), String> {
        let (snapshot, status) = self.store.state();
        if snapshot.is_none() {
            return Err("no policy set is loaded yet".to_string());
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
            return Err(format!(
                "policy set is stale: last successful load {}s ago (max_policy_age {}s), and reloads fail: {error}",
                age.as_secs(),
                self.max_policy_age.as_secs()
            ));
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_page))
        .with_state(AdminState { metrics, readiness });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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
