//! Process logs and OpenTelemetry spans.
//!
//! Logs go to stderr, so stdout stays free for decision records. Decision
//! spans use their own target, [`SPAN_TARGET`], which only the OpenTelemetry
//! layer enables: with no exporter configured their callsites are disabled
//! and the request path pays nothing for them.
//!
//! The OTLP exporter of decision records (`decision_log.export`) is built
//! here too, from the same `[otel]` settings and `OTEL_*` variables; the
//! decision log runs it.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use std::io::IsTerminal as _;

use crate::config::{LogColor, LogFormat, OtelConfig};

/// Target of the `cedar.authorize` and `cedar.policy_reload` spans.
pub const SPAN_TARGET: &str = "cedar_pdp::spans";

/// Why span or decision-record export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot start OTLP span export: {0}")]
    Spans(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot start OTLP export of decision records: {0}")]
    Logs(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error(
        "`decision_log.export = \"otlp\"` needs an endpoint: `otel.endpoint`, `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`"
    )]
    NoLogsEndpoint,
}

/// Flushes and stops span export when shut down.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered now. Blocking.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!("span export flush failed: {e}");
        }
    }

    /// Exports what is still buffered, then stops.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!("span export did not shut down cleanly: {e}");
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `OTEL_SDK_DISABLED=true`: no OpenTelemetry export at all.
pub fn sdk_disabled() -> bool {
    env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Where one signal (`TRACES`, `LOGS`) goes, by the standard variables
/// first (the signal's own, then the general one), then `[otel]`.
struct Target {
    /// An endpoint from the environment, which the exporter reads itself.
    env_endpoint: Option<String>,
    grpc: bool,
}

impl Target {
    fn of(signal: &str, config: &OtelConfig) -> Self {
        let env_endpoint = env(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let protocol = env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| config.protocol.clone());
        Self {
            env_endpoint,
            grpc: protocol == "grpc",
        }
    }

    fn configured(&self, config: &OtelConfig) -> bool {
        self.env_endpoint.is_some() || !config.endpoint.is_empty()
    }

    /// `[otel] endpoint` with the signal's HTTP path, when the environment
    /// names no endpoint: builder settings beat the environment, so only
    /// what the environment lacks is set.
    fn http_endpoint(&self, config: &OtelConfig, path: &str) -> Option<String> {
        self.env_endpoint
            .is_none()
            .then(|| format!("{}{path}", config.endpoint.trim_end_matches('/')))
    }

    fn grpc_endpoint(&self, config: &OtelConfig) -> Option<String> {
        self.env_endpoint.is_none().then(|| config.endpoint.clone())
    }
}

/// The resource spans and decision records are exported under.
pub fn resource(config: &OtelConfig) -> Resource {
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(config.service_name.clone());
    }
    resource.build()
}

/// The OTLP exporter of decision records (`decision_log.export = "otlp"`),
/// to the endpoint and protocol spans use, with
/// `OTEL_EXPORTER_OTLP_LOGS_*` honoured; `None` when
/// `OTEL_SDK_DISABLED=true`. Must run inside a Tokio runtime (gRPC export).
pub fn log_exporter(
    config: &OtelConfig,
) -> Result<Option<opentelemetry_otlp::LogExporter>, TelemetryError> {
    if sdk_disabled() {
        return Ok(None);
    }
    let target = Target::of("LOGS", config);
    if !target.configured(config) {
        return Err(TelemetryError::NoLogsEndpoint);
    }
    let exporter = if target.grpc {
        let builder = opentelemetry_otlp::LogExporter::builder().with_tonic();
        match target.grpc_endpoint(config) {
            Some(endpoint) => builder.with_endpoint(endpoint).build(),
            None => builder.build(),
        }
    } else {
        let builder = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        match target.http_endpoint(config, "/v1/logs") {
            Some(endpoint) => builder.with_endpoint(endpoint).build(),
            None => builder.build(),
        }
    };
    exporter.map(Some).map_err(TelemetryError::Logs)
}

/// The tracer provider, or `None` when no endpoint is configured or
/// `OTEL_SDK_DISABLED=true`. Must run inside a Tokio runtime (gRPC export).
fn tracer_provider(config: &OtelConfig) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if sdk_disabled() {
        return Ok(None);
    }
    let target = Target::of("TRACES", config);
    if !target.configured(config) {
        return Ok(None);
    }
    let exporter = if target.grpc {
        let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        match target.grpc_endpoint(config) {
            Some(endpoint) => builder.with_endpoint(endpoint).build(),
            None => builder.build(),
        }
    } else {
        let builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        match target.http_endpoint(config, "/v1/traces") {
            Some(endpoint) => builder.with_endpoint(endpoint).build(),
            None => builder.build(),
        }
    }
    .map_err(TelemetryError::Spans)?;
    // The default sampler is parent-based, and reads OTEL_TRACES_SAMPLER(_ARG).
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource(config))
            .with_batch_exporter(exporter)
            .build(),
    ))
}

/// Whether log lines to stderr carry ANSI colour: `auto` only on a terminal
/// and without `NO_COLOR` (no-color.org), so redirected logs stay plain.
fn colored(color: LogColor) -> bool {
    match color {
        LogColor::Always => true,
        LogColor::Never => false,
        LogColor::Auto => std::io::stderr().is_terminal() && env("NO_COLOR").is_none(),
    }
}

/// Installs the global subscriber: logs, plus span export when configured.
/// `RUST_LOG`, when set, overrides `level`. A second call changes nothing.
/// Colour as `log.color = "auto"`.
pub fn init(
    format: LogFormat,
    level: &str,
    otel: &OtelConfig,
) -> Result<Telemetry, TelemetryError> {
    init_with_color(format, level, LogColor::Auto, otel)
}

/// [`init`], with colour as asked (see [`colored`]).
pub fn init_with_color(
    format: LogFormat,
    level: &str,
    color: LogColor,
    otel: &OtelConfig,
) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Decision spans are for the exporter only, never printed as logs.
    let filter = match format!("{SPAN_TARGET}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colored(color));
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let provider = tracer_provider(otel)?;
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("cedar-pdp"))
            .with_filter(Targets::new().with_target(SPAN_TARGET, tracing::Level::INFO))
    });
    let _already_set = Registry::default()
        .with(fmt.with_filter(filter))
        .with(spans)
        .try_init();
    Ok(Telemetry { provider })
}
