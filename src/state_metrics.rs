//! Gauges and counters read at scrape time from the state's owners: the
//! policy store's reloads and live set (its grants' states by the clock),
//! and the decision log's drops and export.
//! Registered by `app`, so `metrics` stays a leaf.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::decision_log::ExportCounters;
use crate::engine::GrantState;
use crate::policy_store::PolicyStore;

/// Reads the store and the decision log's drop counter at scrape time.
#[derive(Debug)]
pub(crate) struct StateCollector {
    pub store: Arc<PolicyStore>,
    pub log_dropped: Option<Arc<AtomicU64>>,
    /// The OTLP export of records, when on.
    pub log_export: Option<Arc<ExportCounters>>,
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
        let rescans = encoder.encode_descriptor(
            "cedar_pdp_policy_rescans",
            "Periodic rescans that found the policy files unchanged, so read nothing",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        ConstCounter::new(status.rescans).encode(rescans)?;
        let generation = snapshot.as_ref().map_or(0, |s| s.generation);
        let count = snapshot.as_ref().map_or(0, |s| s.engine.policy_count());
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
        // By the clock at scrape time: a link expires without a reload.
        let grants = snapshot
            .as_ref()
            .map(|s| s.engine.grant_counts(SystemTime::now()))
            .unwrap_or_default();
        let mut family = encoder.encode_descriptor(
            "cedar_pdp_grants",
            "Template links (time-bound grants) of the live policy set, shadow ones included, by where the clock falls in their window",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, n) in [
            (GrantState::Active, grants.active),
            (GrantState::Pending, grants.pending),
            (GrantState::Expired, grants.expired),
        ] {
            let labels = [("state", state.as_str())];
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
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
        counter.encode(m)?;
        let export = |read: fn(&ExportCounters) -> &AtomicU64| {
            self.log_export
                .as_ref()
                .map_or(0, |c| read(c).load(Ordering::Relaxed))
        };
        for (name, help, value) in [
            (
                "cedar_pdp_decision_log_exported",
                "Decision records and checkpoints the OTLP collector accepted (`decision_log.export`)",
                export(|c| &c.exported),
            ),
            (
                "cedar_pdp_decision_log_export_failed",
                "Decision records and checkpoints in OTLP export batches that failed",
                export(|c| &c.failed),
            ),
            (
                "cedar_pdp_decision_log_export_dropped",
                "Decision records and checkpoints never exported: the export queue was full, or shutdown came first",
                export(|c| &c.dropped),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(m)?;
        }
        Ok(())
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
