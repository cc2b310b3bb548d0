//! Process logs and OpenTelemetry spans.
//!
//! Logs go to stderr, so stdout stays free for decision records. Decision
//! spans use their own target, [`SPAN_TARGET`], which only the OpenTelemetry
//! layer enables: with no exporter configured their callsites are disabled
//! and the request path pays nothing for them.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, OtelConfig};

/// Target of the `cedar.authorize` and `cedar.policy_reload` spans.
pub const SPAN_TARGET: &str = "cedar_pdp::spans";

/// Why span export could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start OTLP span export: {0}")]
pub struct TelemetryError(#[from] opentelemetry_otlp::ExporterBuildError);

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

/// The tracer provider, or `None` when no endpoint is configured or
/// `OTEL_SDK_DISABLED=true`. Must run inside a Tokio runtime (gRPC export).
fn tracer_provider(config: &OtelConfig) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let env_endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if env_endpoint.is_none() && config.endpoint.is_empty() {
        return Ok(None);
    }
    let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| config.protocol.clone());
    let exporter = if protocol == "grpc" {
        let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        // Builder settings beat the environment; only set what the env lacks.
        match env_endpoint {
            Some(_) => builder.build()?,
            None => builder.with_endpoint(config.endpoint.clone()).build()?,
        }
    } else {
        let builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        match env_endpoint {
            Some(_) => builder.build()?,
            None => builder
                .with_endpoint(format!(
                    "{}/v1/traces",
                    config.endpoint.trim_end_matches('/')
                ))
                .build()?,
        }
    };
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(config.service_name.clone());
    }
    // The default sampler is parent-based, and reads OTEL_TRACES_SAMPLER(_ARG).
    Ok(Some(
        SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build(),
    ))
}

/// Installs the global subscriber: logs, plus span export when configured.
/// `RUST_LOG`, when set, overrides `level`. A second call changes nothing.
pub fn init(
    format: LogFormat,
    level: &str,
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
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
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
