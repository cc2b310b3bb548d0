//! Composition, as linkerd2-proxy's `Config::build` -> `spawn`:
//! [`App::build`] constructs every component from the checked config,
//! [`App::run`] only serves them on the listeners it is handed, and
//! [`App::drain`] stops them in order. [`App::serve`] is run then drain:
//! what `cedar-pdp serve` does, and what tests do on `127.0.0.1:0`, so they
//! run exactly the production path.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_layer::{Identity, Stack};

use crate::admin::{self, Readiness};
use crate::authzen::{self, Authzen};
use crate::config::{Config, LogExport};
use crate::decision_log::{DecisionLog, DecisionLogError, FinishError, LogWriter, warn_on_drops};
use crate::grpc::proto::{self, authorizer_server::AuthorizerServer};
use crate::grpc::{AuthorizerService, BudgetLayer, ExtAuthzService};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineOptions, StreamCloser};
use crate::policy_store::{
    LoadError, LoadOptions, PolicyStore, WatchOptions, WatcherGuard, spawn_watcher,
};
use crate::policy_tests;
use crate::state_metrics::StateCollector;
use crate::telemetry::{self, Telemetry, TelemetryError};
use crate::tokens::{JwksError, TokenVerifier};
use crate::transport::budget::BufferBudget;
use crate::transport::conns::{ConnTimeouts, Registry};
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
    #[error("gRPC server stopped: {0}")]
    Stopped(#[source] JoinError),
    #[error("this server has already run; build a new one")]
    Ran,
}

/// The listeners a server serves on. The caller binds them (`serve` from
/// the settings, tests on `127.0.0.1:0`), so tests share the production path.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: TCP, or a Unix socket.
    pub grpc: Listener,
    /// `/metrics`, `/healthz` and `/readyz`; `None`: off.
    pub admin: Option<TcpListener>,
    /// The AuthZEN API; `None`: off.
    pub authzen: Option<TcpListener>,
}

impl Listeners {
    /// gRPC on `grpc`, and nothing else.
    pub fn new(grpc: impl Into<Listener>) -> Self {
        Self {
            grpc: grpc.into(),
            admin: None,
            authzen: None,
        }
    }

    /// Also serves `/metrics`, `/healthz` and `/readyz` on `listener`.
    pub fn with_admin(mut self, listener: TcpListener) -> Self {
        self.admin = Some(listener);
        self
    }

    /// Also serves the AuthZEN API on `listener`.
    pub fn with_authzen(mut self, listener: TcpListener) -> Self {
        self.authzen = Some(listener);
        self
    }
}

/// A configured server whose first policy set has loaded: every component
/// built and wired, serving nothing until [`App::run`].
#[derive(Debug)]
pub struct App {
    store: Arc<PolicyStore>,
    watch: WatchOptions,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    health: HealthReporter,
    /// What `run` serves; it takes them.
    services: Option<Services>,
    /// Certificate and token reloads, with their intervals.
    tls: Option<(Arc<ReloadingTls>, Duration)>,
    tokens: Option<(Arc<TokenVerifier>, Duration)>,
    streams: StreamCloser,
    /// The handle the drop warnings read; the services hold the others.
    log: Option<DecisionLog>,
    writer: Option<LogWriter>,
    /// Set up before the app, since building it logs; shut down last.
    telemetry: Option<Telemetry>,
    /// `limits.shutdown_grace`.
    grace: Duration,
    policies: PathBuf,
    running: Running,
}

/// The services `run` serves, with how each listener accepts.
#[derive(Debug)]
struct Services {
    grpc: Router<Stack<BudgetLayer, Identity>>,
    grpc_tls: Option<TlsAccept>,
    grpc_conns: Arc<Registry>,
    ext_authz: bool,
    authzen: Authzen,
    authzen_limits: HttpLimits,
    authzen_tls: Option<TlsAccept>,
    admin_limits: HttpLimits,
}

/// What `run` started, and `drain` stops.
#[derive(Debug, Default)]
struct Running {
    follow_health: Option<JoinHandle<()>>,
    grpc: Option<Stoppable<Result<(), tonic::transport::Error>>>,
    authzen: Option<Stoppable<()>>,
    admin: Option<Stoppable<()>>,
    /// The policy watcher; dropping it stops the watcher.
    watcher: Option<WatcherGuard>,
    /// The certificate and token reload tasks.
    reloads: Vec<JoinHandle<()>>,
    drop_warnings: Option<JoinHandle<()>>,
}

/// A listener's task, and what tells it to stop accepting and drain.
#[derive(Debug)]
struct Stoppable<T> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<T>,
}

/// Completes when a listener is told to stop.
type Stopping = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<T: Send + 'static> Stoppable<T> {
    /// Spawns `serve`, handing it what completes on `stop`.
    fn spawn<F: Future<Output = T> + Send + 'static>(serve: impl FnOnce(Stopping) -> F) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let stopping = Box::pin(async move {
            let _ = stopped.await;
        });
        Self {
            stop,
            task: tokio::spawn(serve(stopping)),
        }
    }
}

/// How long shutdown waits for the decision log to drain. With the default
/// `limits.shutdown_grace` (10 s) the whole stop fits in Kubernetes'
/// default 30 s `terminationGracePeriodSeconds`.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// The service name health reports under, besides the empty (whole-server) one.
const AUTHORIZER_SERVICE: &str = "cedar_pdp.v1.Authorizer";

impl App {
    /// Builds every component from `config` (the one [`Config::settings`]
    /// checked; tests may pass one past its bounds to reach them sooner):
    /// the policy store with its first set loaded (a set that does not load
    /// is an error here: the server never starts without a good set), TLS,
    /// token issuers, the decision log and its export, metrics, the
    /// pipeline and the services over it. Must run inside a Tokio runtime
    /// when decision records are exported over OTLP gRPC.
    pub fn build(config: Config) -> Result<Self, AppError> {
        let otlp = [
            Some(config.otel.endpoint.clone()),
            std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok(),
            std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok(),
        ]
        .into_iter()
        .flatten()
        .find(|e| !e.is_empty())
        .unwrap_or_else(|| "off".to_string());
        tracing::info!(
            decision_log = if config.decision_log.enabled {
                match config.decision_log.sink {
                    crate::config::LogSink::Stdout => "stdout".to_string(),
                    crate::config::LogSink::File => config.decision_log.path.display().to_string(),
                }
            } else {
                "off".to_string()
            },
            signed = !config.decision_log.signing_key.as_os_str().is_empty(),
            %otlp,
            authzen = if config.authzen_listen.is_empty() {
                "off"
            } else {
                config.authzen_listen.as_str()
            },
            tls = config.tls.enabled(),
            token_issuers = config.tokens.issuers.len(),
            "features"
        );
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
        let watch = WatchOptions {
            debounce: config.reload.debounce,
            rescan_interval: Some(config.reload.rescan_interval).filter(|d| !d.is_zero()),
        };
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
        let (log, writer) = log.unzip();
        let log_for_readiness = log.as_ref().map(DecisionLog::dropped_counter);

        let mut metrics = Metrics::new();
        metrics.register_collector(Box::new(StateCollector {
            store: store.clone(),
            log_dropped: log_for_readiness.clone(),
            log_export: log.as_ref().and_then(DecisionLog::export_counters),
        }));
        let metrics = Arc::new(metrics);
        let options = PipelineOptions {
            tokens: tokens.clone(),
            ..PipelineOptions::from_config(&config)
        };
        let mut pipeline =
            Pipeline::new(store.clone(), options, metrics.clone()).map_err(AppError::Evaluation)?;
        if let Some(log) = &log {
            pipeline = pipeline.with_decision_log(log.clone());
        }
        let streams = pipeline.stream_closer();

        let ext_authz_on = config.ext_authz.enabled;
        let reflection = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(proto::GOOGLE_RPC_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            // Reflection lists exactly the services this server answers.
            if ext_authz_on {
                builder.register_encoded_file_descriptor_set(proto::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET)
            } else {
                builder
            }
        };
        let limit = config.limits.max_message_bytes;
        let ext_authz = ext_authz_on.then(|| {
            AuthorizationServer::new(ExtAuthzService::new(pipeline.clone(), &config.ext_authz))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        });
        let budget = BufferBudget::new(config.limits.max_buffered_bytes);
        let authzen = Authzen::new(pipeline.clone(), &config, Arc::clone(&budget));
        let authorizer = AuthorizerServer::new(AuthorizerService::over(pipeline))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        let (health, health_service) = tonic_health::server::health_reporter();
        let l = &config.limits;
        // No `max_connection_age_grace`: in tonic 0.14 setting it skips the
        // graceful GOAWAY at `max_connection_age` and only closes the
        // connection hard after age + grace. Without it, an aged connection
        // drains its open calls, which `request_timeout` and
        // `stream_max_age` bound.
        let grpc = Server::builder()
            .layer(BudgetLayer::new(budget, metrics.clone(), l.request_timeout))
            // Bytes received ahead of the budget, per stream and connection.
            .initial_stream_window_size(transport::H2_STREAM_WINDOW)
            .initial_connection_window_size(transport::H2_CONNECTION_WINDOW)
            .max_concurrent_streams(l.max_concurrent_streams_per_connection)
            .http2_keepalive_interval(Some(l.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(l.http2_keepalive_timeout))
            .max_connection_age(l.max_connection_age)
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(authorizer)
            .add_optional_service(ext_authz);
        // The `[tls]` material serves AuthZEN too, and its reloads reach both.
        let accept = |tls: &Arc<ReloadingTls>| TlsAccept {
            tls: tls.clone(),
            handshake_timeout: config.tls.handshake_timeout,
            metrics: metrics.clone(),
        };
        let a = &config.authzen;
        let services = Services {
            grpc,
            grpc_tls: tls.as_ref().map(accept),
            grpc_conns: Registry::new(
                l.max_connections,
                ConnTimeouts {
                    first_request: l.first_request_timeout,
                    idle: l.connection_idle_timeout,
                },
                "grpc",
                metrics.clone(),
            ),
            ext_authz: ext_authz_on,
            authzen,
            authzen_limits: HttpLimits {
                header_read_timeout: a.header_read_timeout,
                idle_timeout: a.idle_timeout,
                max_connections: a.max_connections,
                http2_max_streams: Some(l.max_concurrent_streams_per_connection),
                name: "authzen",
            },
            authzen_tls: tls.as_ref().map(accept),
            admin_limits: HttpLimits {
                header_read_timeout: config.admin.header_read_timeout,
                idle_timeout: config.admin.idle_timeout,
                max_connections: config.admin.max_connections,
                http2_max_streams: None,
                name: "admin",
            },
        };
        let mut readiness = Readiness::new(store.clone(), config.reload.max_policy_age);
        if config.decision_log.required
            && let Some(log) = &log_for_readiness
        {
            readiness = readiness.requiring_log(Arc::clone(log));
        }
        Ok(Self {
            readiness,
            store,
            watch,
            metrics,
            health,
            services: Some(services),
            tls: tls.map(|tls| (tls, config.tls.reload_interval)),
            tokens: tokens.map(|tokens| (tokens, config.tokens.reload_interval)),
            streams,
            log,
            writer,
            telemetry: None,
            grace: config.limits.shutdown_grace,
            policies: config.policies,
            running: Running::default(),
        })
    }

    /// Hands over the tracer, so [`App::drain`] shuts it down last.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// [`App::run`] until `shutdown` completes, then [`App::drain`].
    pub async fn serve(
        mut self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let served = self.run(listeners, shutdown).await;
        let drained = self.drain().await;
        served.and(drained)
    }

    /// Serves on `listeners` until `shutdown` completes (or the gRPC server
    /// fails), and only serves: what it started keeps running for
    /// [`App::drain`] to stop. A server runs once.
    pub async fn run(
        &mut self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let services = self.services.take().ok_or(AppError::Ran)?;
        let running = &mut self.running;
        set_health(&self.health, ServingStatus::NotServing).await;
        running.follow_health = Some(tokio::spawn(follow_readiness(
            self.readiness.clone(),
            self.health.clone(),
        )));
        running.watcher = Some(spawn_watcher(self.store.clone(), self.watch));
        // The task takes this handle: when it ends, only the services' remain.
        if let Some(log) = self.log.take() {
            running.drop_warnings = Some(tokio::spawn(warn_on_drops(log, Duration::from_secs(10))));
        }
        let metrics = self.metrics.clone();
        running.authzen = listeners.authzen.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, tls = services.authzen_tls.is_some(), "AuthZEN listener: /access/v1/evaluation(s)");
            }
            Stoppable::spawn(|stopping| {
                authzen::serve(
                    listener,
                    services.authzen_limits,
                    services.authzen,
                    services.authzen_tls,
                    metrics,
                    stopping,
                )
            })
        });
        tracing::info!(
            addr = %listeners.grpc.describe(),
            tls = self.tls.is_some(),
            ext_authz = services.ext_authz,
            policies = %self.policies.display(),
            "serving"
        );
        if let Some((tokens, interval)) = &self.tokens {
            running
                .reloads
                .push(tokens.clone().spawn_watcher(*interval));
        }
        if let Some((tls, interval)) = &self.tls {
            running
                .reloads
                .push(tls.clone().spawn_watcher(*interval, self.metrics.clone()));
        }
        let incoming = transport::incoming(listeners.grpc, services.grpc_tls, services.grpc_conns);
        running.admin = listeners.admin.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admin listener: /metrics /healthz /readyz");
            }
            Stoppable::spawn(|stopping| {
                admin::serve(
                    listener,
                    services.admin_limits,
                    self.metrics.clone(),
                    self.readiness.clone(),
                    stopping,
                )
            })
        });
        let mut grpc = Stoppable::spawn(|stopping| {
            services
                .grpc
                .serve_with_incoming_shutdown(incoming, stopping)
        });
        tokio::select! {
            () = shutdown => {
                running.grpc = Some(grpc);
                Ok(())
            }
            // Nobody asked it to stop: the server failed.
            ended = &mut grpc.task => match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(AppError::Serve(e)),
                Err(e) => Err(AppError::Stopped(e)),
            },
        }
    }

    /// Stops in order: health turns NOT_SERVING; the listeners stop
    /// accepting and open streams close; in-flight calls finish, for at most
    /// `limits.shutdown_grace`; the decision log flushes; the tracer shuts
    /// down. An error along the way is reported once the rest has stopped.
    pub async fn drain(self) -> Result<(), AppError> {
        let Self {
            health,
            services,
            streams,
            log,
            writer,
            telemetry,
            grace,
            running,
            ..
        } = self;
        // Never served: their log handles would keep the writer waiting.
        drop((services, log));
        let mut failed = None;

        if let Some(task) = running.follow_health {
            task.abort();
        }
        set_health(&health, ServingStatus::NotServing).await;
        tracing::info!("shutting down: draining in-flight calls, closing streams");

        // gRPC and AuthZEN stop taking requests together, and share one
        // grace. Streams would hold their connections (and the log) open
        // until the grace ends: they close now, recorded.
        let began = tokio::time::Instant::now();
        let grpc = running.grpc.map(|g| {
            let _ = g.stop.send(());
            g.task
        });
        let authzen = running.authzen.map(|a| {
            let _ = a.stop.send(());
            a.task
        });
        streams.close();

        if let Some(mut task) = grpc {
            match tokio::time::timeout(grace, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => failed = Some(AppError::Serve(e)),
                Ok(Err(e)) => failed = Some(AppError::Stopped(e)),
                Err(_) => {
                    tracing::warn!(?grace, "shutdown grace elapsed; dropping unfinished calls");
                    task.abort();
                }
            }
        }
        drop(running.watcher);
        for task in running.reloads {
            task.abort();
        }
        if let Some(mut task) = authzen {
            let left = grace.saturating_sub(began.elapsed());
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
        if let Some(admin) = running.admin {
            let _ = admin.stop.send(());
            if let Err(e) = admin.task.await {
                tracing::warn!("admin listener failed: {e}");
            }
        }

        // The server and its services are gone; the last log handle goes
        // with the warning task, so the writer drains the queue and stops.
        if let Some(task) = running.drop_warnings {
            task.abort();
            let _ = task.await;
        }
        if let Some(writer) = writer {
            match writer.finish(LOG_FLUSH_TIMEOUT).await {
                Ok(written) => tracing::info!(written, "decision log flushed and synced"),
                // Records may be lost: the stop is not clean.
                Err(e) => {
                    tracing::error!("{e}");
                    failed = failed.or(Some(AppError::DecisionLogEnd(e)));
                }
            }
        }
        if failed.is_none() {
            tracing::info!("stopped");
        }
        // The log's own export stopped with its writer; buffered spans go
        // last.
        if let Some(telemetry) = telemetry {
            telemetry.shutdown();
        }
        failed.map_or(Ok(()), Err)
    }
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
