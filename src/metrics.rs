//! Prometheus metrics. Request-path metrics are atomics updated inline;
//! policy and decision-log state is read from its owners at scrape time, so
//! there is one source of truth for each number.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::policy_store::PolicyStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Request-path metrics, shared by the gRPC service.
#[derive(Debug)]
pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    duration: Histogram,
    errors: Family<CodeLabels, Counter>,
    inflight: Gauge,
    tls_reloads: Family<ResultLabels, Counter>,
    cache: Family<ResultLabels, Counter>,
    tls_handshake_failures: Counter,
    registry: Registry,
}

/// Decrements the in-flight gauge when a call ends, however it ends.
pub struct InflightGuard(Gauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Registers every metric; `store` and `log` are read at scrape time.
    pub fn new(store: Arc<PolicyStore>, log_dropped: Option<Arc<AtomicU64>>) -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        // Sub-millisecond buckets: a decision usually takes tens of µs.
        let duration = Histogram::new([
            0.000_025, 0.000_05, 0.0001, 0.000_25, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
        ]);
        let errors = Family::<CodeLabels, Counter>::default();
        let inflight = Gauge::default();
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        let cache = Family::<ResultLabels, Counter>::default();
        let tls_handshake_failures = Counter::default();
        let mut registry = Registry::default();
        registry.register(
            "cedar_pdp_decisions",
            "Decisions made, by decision",
            decisions.clone(),
        );
        registry.register(
            "cedar_pdp_decision_duration_seconds",
            "Time from receiving a call to its decision",
            duration.clone(),
        );
        registry.register(
            "cedar_pdp_request_errors",
            "Calls answered with a non-OK status, by gRPC code",
            errors.clone(),
        );
        registry.register(
            "cedar_pdp_inflight_requests",
            "Calls being evaluated now",
            inflight.clone(),
        );
        registry.register(
            "cedar_pdp_tls_reloads",
            "Reloads of the TLS certificate, key and client trust bundle that changed something, by result",
            tls_reloads.clone(),
        );
        registry.register(
            "cedar_pdp_tls_handshake_failures",
            "TLS handshakes that failed (no or untrusted client certificate, protocol errors) or timed out",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "cedar_pdp_decision_cache_lookups",
            "Decision-cache lookups, by result (hit or miss)",
            cache.clone(),
        );
        registry.register_collector(Box::new(StateCollector { store, log_dropped }));
        Self {
            decisions,
            duration,
            errors,
            inflight,
            tls_reloads,
            cache,
            tls_handshake_failures,
            registry,
        }
    }

    /// Counts a call in flight until the guard drops.
    pub fn inflight(&self) -> InflightGuard {
        self.inflight.inc();
        InflightGuard(self.inflight.clone())
    }

    /// Records one decision.
    pub fn decision(&self, allow: bool, took: Duration) {
        let decision = if allow { "allow" } else { "deny" };
        self.decisions
            .get_or_create(&DecisionLabels { decision })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Records a TLS material reload attempt that found changed files.
    pub fn tls_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records a TLS handshake that failed or timed out.
    pub fn tls_handshake_failure(&self) {
        self.tls_handshake_failures.inc();
    }

    /// Records a decision-cache lookup.
    pub fn decision_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache.get_or_create(&ResultLabels { result }).inc();
    }

    /// Records a call that failed with `code`.
    pub fn request_error(&self, code: tonic::Code) {
        self.errors
            .get_or_create(&CodeLabels {
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        out
    }
}

#[derive(Debug)]
struct StateCollector {
    store: Arc<PolicyStore>,
    log_dropped: Option<Arc<AtomicU64>>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (snapshot, status) = self.store.state();
        let reloads = encoder.encode_descriptor(
            "cedar_pdp_policy_reloads",
            "Policy load attempts, by result",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        let mut reloads = reloads;
        for (result, n) in [
            ("success", status.successes),
            ("unchanged", status.unchanged),
            ("error", status.failures),
        ] {
            let labels = [("result", result)];
            ConstCounter::new(n).encode(reloads.encode_family(&labels)?)?;
        }
        let generation = snapshot.as_ref().map_or(0, |s| s.generation);
        let count = snapshot.as_ref().map_or(0, |s| s.policy_count);
        let last_success = status
            .last_success_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        gauge(
            &mut encoder,
            "cedar_pdp_policy_generation",
            "Successful policy loads since start",
            ConstGauge::new(i64::try_from(generation).unwrap_or(i64::MAX)),
        )?;
        gauge(
            &mut encoder,
            "cedar_pdp_policy_last_success_timestamp_seconds",
            "Unix time of the last successful policy load",
            ConstGauge::new(last_success),
        )?;
        gauge(
            &mut encoder,
            "cedar_pdp_policies",
            "Policies in the live set",
            ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX)),
        )?;
        if let Some(snapshot) = &snapshot {
            let mut info = encoder.encode_descriptor(
                "cedar_pdp_policy_info",
                "The live policy revision",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            let labels = [("revision", snapshot.revision.as_str())];
            ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        }
        let dropped = self
            .log_dropped
            .as_ref()
            .map_or(0, |d| d.load(Ordering::Relaxed));
        let counter = ConstCounter::new(dropped);
        let m = encoder.encode_descriptor(
            "cedar_pdp_decision_log_dropped",
            "Decision records dropped (queue full in drop mode, or a failed write)",
            None,
            counter.metric_type(),
        )?;
        counter.encode(m)
    }
}

fn gauge<T: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: T,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, value.metric_type())?;
    value.encode(m)
}
