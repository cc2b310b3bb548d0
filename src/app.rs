//! Composition: config -> policy store -> services -> listener.
//!
//! [`App::run`] takes the listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and run exactly the production path.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, Readiness};
use crate::authzen::{self, Authzen};
use crate::config::{Config, LogExport};
use crate::decision_log::{DecisionLog, DecisionLogError, FinishError, LogWriter, warn_on_drops};
use crate::grpc::proto::{self, authorizer_server::AuthorizerServer};
use crate::grpc::{AuthorizerService, ExtAuthzService};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::policy_store::{LoadError, LoadOptions, PolicyStore, WatchOptions, spawn_watcher};
use crate::policy_tests;
use crate::state_metrics::StateCollector;
use crate::telemetry::{self, TelemetryError};
use crate::tokens::{JwksError, TokenVerifier};
use crate::transport::http::HttpLimits;
use crate::transport::{self, Listener, ReloadingTls, TlsAccept, TlsError};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("policy directory `{dir}` did not load:\n{source}")]
    InitialLoad {
        dir: String,
        #[source]
        source: LoadError,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    DecisionLog(#[from] DecisionLogError),
    #[error(transparent)]
    DecisionLogEnd(#[from] FinishError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("tokens: {0}")]
    Tokens(#[from] JwksError),
    #[error("cannot start the evaluation threads: {0}")]
    Evaluation(#[source] std::io::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A configured server whose first policy set has loaded.
#[derive(Debug)]
pub struct App {
    config: Config,
    store: Arc<PolicyStore>,
    log: Option<(DecisionLog, LogWriter)>,
    admin: Option<TcpListener>,
    authzen: Option<TcpListener>,
    tls: Option<Arc<ReloadingTls>>,
    tokens: Option<Arc<TokenVerifier>>,
}

/// How long shutdown waits for the decision log to drain. With the default
/// `limits.shutdown_grace` (10 s) the whole stop fits in Kubernetes'
/// default 30 s `terminationGracePeriodSeconds`.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// The service name health reports under, besides the empty (whole-server) one.
const AUTHORIZER_SERVICE: &str = "cedar_pdp.v1.Authorizer";

impl App {
    /// Loads the policy directory once. A set that does not load is an error
    /// here: the server never starts without a good set. Must run inside a
    /// Tokio runtime when decision records are exported over OTLP gRPC.
    pub fn build(config: Config) -> Result<Self, AppError> {
        let store = Arc::new(
            PolicyStore::new(config.policies.clone(), LoadOptions::from_config(&config)).test_gate(
                config.reload.require_tests.then(|| {
                    policy_tests::gate(
                        PipelineOptions::from_config(&config),
                        config.reload.test_timeout,
                    )
                }),
            ),
        );
        store.reload().map_err(|source| AppError::InitialLoad {
            dir: config.policies.display().to_string(),
            source,
        })?;
        let tls = if config.tls.enabled() {
            Some(Arc::new(ReloadingTls::load(&config.tls)?))
        } else {
            None
        };
        let tokens = TokenVerifier::load(&config.tokens)?.map(Arc::new);
        let log = if config.decision_log.enabled {
            let export = match config.decision_log.export {
                LogExport::None => None,
                LogExport::Otlp => match telemetry::log_exporter(&config.otel)? {
                    Some(exporter) => Some((exporter, telemetry::resource(&config.otel))),
                    None => {
                        tracing::warn!(
                            "`decision_log.export = \"otlp\"` is off: OTEL_SDK_DISABLED=true"
                        );
                        None
                    }
                },
            };
            Some(DecisionLog::start_exporting(&config.decision_log, export)?)
        } else {
            None
        };
        Ok(Self {
            config,
            store,
            log,
            admin: None,
            authzen: None,
            tls,
            tokens,
        })
    }

    /// The configured admin address, if the admin listener is on.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.config.admin_listen.parse().ok()
    }

    /// Also serves `/metrics`, `/healthz` and `/readyz` on `listener`.
    pub fn with_admin_listener(mut self, listener: TcpListener) -> Self {
        self.admin = Some(listener);
        self
    }

    /// Also serves the AuthZEN API on `listener`.
    pub fn with_authzen_listener(mut self, listener: TcpListener) -> Self {
        self.authzen = Some(listener);
        self
    }

    /// Serves on `listener` until `shutdown` completes, then drains in-flight
    /// calls for at most `limits.shutdown_grace`.
    pub async fn run(
        self,
        listener: impl Into<Listener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let listener = listener.into();
        let (reporter, health) = tonic_health::server::health_reporter();
        set_health(&reporter, ServingStatus::NotServing).await;
        let readiness = Readiness::new(self.store.clone(), self.config.reload.max_policy_age);
        let follow_health = tokio::spawn(follow_readiness(readiness.clone(), reporter.clone()));
        let _watcher = spawn_watcher(
            self.store.clone(),
            WatchOptions {
                debounce: self.config.reload.debounce,
                rescan_interval: Some(self.config.reload.rescan_interval).filter(|d| !d.is_zero()),
            },
        );

        let ext_authz_on = self.config.ext_authz.enabled;
        let reflection = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            // Reflection lists exactly the services this server answers.
            if ext_authz_on {
                builder.register_encoded_file_descriptor_set(proto::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET)
            } else {
                builder
            }
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let limit = self.config.limits.max_message_bytes;
        let mut metrics = Metrics::new();
        metrics.register_collector(Box::new(StateCollector {
            store: self.store.clone(),
            log_dropped: self.log.as_ref().map(|(log, _)| log.dropped_counter()),
            log_export: self.log.as_ref().and_then(|(log, _)| log.export_counters()),
        }));
        let metrics = Arc::new(metrics);
        let options = PipelineOptions {
            tokens: self.tokens.clone(),
            ..PipelineOptions::from_config(&self.config)
        };
        let mut pipeline = Pipeline::new(self.store.clone(), options, metrics.clone())
            .map_err(AppError::Evaluation)?;
        let stream_closer = pipeline.stream_closer();
        let (writer, drop_warnings) = match self.log {
            Some((log, writer)) => {
                pipeline = pipeline.with_decision_log(log.clone());
                let warnings = tokio::spawn(warn_on_drops(log, Duration::from_secs(10)));
                (Some(writer), Some(warnings))
            }
            None => (None, None),
        };
        let ext_authz = self.config.ext_authz.enabled.then(|| {
            AuthorizationServer::new(ExtAuthzService::new(
                pipeline.clone(),
                &self.config.ext_authz,
            ))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
        });
        let (authzen_stop, authzen_stopped) = tokio::sync::oneshot::channel::<()>();
        // The `[tls]` material serves AuthZEN too, and its reloads reach both.
        let authzen_tls = self.tls.as_ref().map(|tls| TlsAccept {
            tls: tls.clone(),
            handshake_timeout: self.config.tls.handshake_timeout,
            metrics: metrics.clone(),
        });
        let authzen = self.authzen.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, tls = authzen_tls.is_some(), "AuthZEN listener: /access/v1/evaluation(s)");
            }
            let a = &self.config.authzen;
            let limits = HttpLimits {
                header_read_timeout: a.header_read_timeout,
                idle_timeout: a.idle_timeout,
                max_connections: a.max_connections,
                http2_max_streams: Some(self.config.limits.max_concurrent_streams_per_connection),
                name: "authzen",
            };
            tokio::spawn(authzen::serve(
                listener,
                limits,
                Authzen::new(pipeline.clone(), &self.config),
                authzen_tls,
                async move {
                    let _ = authzen_stopped.await;
                },
            ))
        });
        let authorizer = AuthorizerServer::new(AuthorizerService::over(pipeline))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);

        tracing::info!(
            addr = %listener.describe(),
            tls = self.tls.is_some(),
            ext_authz = ext_authz.is_some(),
            policies = %self.config.policies.display(),
            "serving"
        );
        let tokens_watcher = self.tokens.as_ref().map(|tokens| {
            tokens
                .clone()
                .spawn_watcher(self.config.tokens.reload_interval)
        });
        let tls_watcher = self.tls.as_ref().map(|tls| {
            tls.clone()
                .spawn_watcher(self.config.tls.reload_interval, metrics.clone())
        });
        let incoming = transport::incoming(
            listener,
            self.tls.map(|tls| TlsAccept {
                tls,
                handshake_timeout: self.config.tls.handshake_timeout,
                metrics: metrics.clone(),
            }),
        );
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admin listener: /metrics /healthz /readyz");
            }
            let limits = HttpLimits {
                header_read_timeout: self.config.admin.header_read_timeout,
                idle_timeout: self.config.admin.idle_timeout,
                max_connections: self.config.admin.max_connections,
                http2_max_streams: None,
                name: "admin",
            };
            tokio::spawn(admin::serve(
                listener,
                limits,
                metrics,
                readiness,
                async move {
                    let _ = admin_stopped.await;
                },
            ))
        });
        let draining = Arc::new(Notify::new());
        let streams = stream_closer;
        // When the stop began: gRPC and AuthZEN share one grace.
        let stop_began = Arc::new(std::sync::OnceLock::new());
        let signal = {
            let draining = draining.clone();
            let stop_began = Arc::clone(&stop_began);
            async move {
                shutdown.await;
                let _ = stop_began.set(tokio::time::Instant::now());
                // AuthZEN stops taking requests, and drains, with gRPC.
                let _ = authzen_stop.send(());
                follow_health.abort();
                set_health(&reporter, ServingStatus::NotServing).await;
                tracing::info!("shutting down: draining in-flight calls, closing streams");
                // Streams would hold their connections (and the log) open
                // until the grace ends: they close now, recorded.
                streams.close();
                draining.notify_one();
            }
        };
        let l = &self.config.limits;
        // No `max_connection_age_grace`: in tonic 0.14 setting it skips the
        // graceful GOAWAY at `max_connection_age` and only closes the
        // connection hard after age + grace. Without it, an aged connection
        // drains its open calls, which `request_timeout` and
        // `stream_max_age` bound.
        let server = Server::builder()
            .max_concurrent_streams(l.max_concurrent_streams_per_connection)
            .http2_keepalive_interval(Some(l.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(l.http2_keepalive_timeout))
            .max_connection_age(l.max_connection_age)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(authorizer)
            .add_optional_service(ext_authz)
            .serve_with_incoming_shutdown(incoming, signal);
        let grace = self.config.limits.shutdown_grace;
        tokio::select! {
            result = server => result?,
            () = grace_elapsed(&draining, grace) => {
                tracing::warn!(?grace, "shutdown grace elapsed; dropping unfinished calls");
            }
        }
        if let Some(task) = tls_watcher {
            task.abort();
        }
        if let Some(task) = tokens_watcher {
            task.abort();
        }
        if let Some(mut task) = authzen {
            let left = stop_began
                .get()
                .map_or(grace, |began| grace.saturating_sub(began.elapsed()));
            match tokio::time::timeout(left, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("AuthZEN listener failed: {e}"),
                Err(_) => {
                    tracing::warn!(
                        ?grace,
                        "shutdown grace elapsed; dropping unfinished AuthZEN requests"
                    );
                    task.abort();
                }
            }
        }
        // Probes and scrapes keep answering through the drain, then stop.
        let _ = admin_stop.send(());
        if let Some(admin) = admin
            && let Err(e) = admin.await
        {
            tracing::warn!("admin listener failed: {e}");
        }
        // The server and its services are gone; the last log handle goes with
        // the warning task, so the writer drains the queue and stops.
        if let Some(task) = drop_warnings {
            task.abort();
            let _ = task.await;
        }
        if let Some(writer) = writer {
            match writer.finish(LOG_FLUSH_TIMEOUT).await {
                Ok(written) => tracing::info!(written, "decision log flushed and synced"),
                // Records may be lost: the stop is not clean.
                Err(e) => {
                    tracing::error!("{e}");
                    return Err(AppError::DecisionLogEnd(e));
                }
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn grace_elapsed(draining: &Notify, grace: Duration) {
    draining.notified().await;
    tokio::time::sleep(grace).await;
}

/// gRPC health follows readiness, re-checked on every reload and every
/// second, so a stale set (`reload.max_policy_age`) turns it NOT_SERVING too.
async fn follow_readiness(readiness: Readiness, reporter: HealthReporter) {
    let mut generation = readiness.store().subscribe();
    let mut last = None;
    loop {
        let status = match readiness.check() {
            Ok(()) => ServingStatus::Serving,
            Err(reason) => {
                if last == Some(ServingStatus::Serving) {
                    match reason.reload_error() {
                        Some(error) => tracing::warn!(error, "not ready: {reason}"),
                        None => tracing::warn!("not ready: {reason}"),
                    }
                }
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            set_health(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            changed = generation.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(AUTHORIZER_SERVICE, status)
        .await;
}
