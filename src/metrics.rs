//! Prometheus metrics. Request-path metrics are atomics updated inline.
//! A leaf: state owned elsewhere (the policy store, the decision log) is
//! read at scrape time by collectors that `app` registers, so there is one
//! source of truth for each number.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    api: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    api: &'static str,
    code: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SearchLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    live: &'static str,
    shadow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabels {
    thread: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
    cedar: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Request-path metrics, shared by every front-end.
#[derive(Debug)]
pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    duration: Histogram,
    errors: Family<ErrorLabels, Counter>,
    inflight: Gauge,
    tls_reloads: Family<ResultLabels, Counter>,
    cache: Family<ResultLabels, Counter>,
    entity_cache: Family<ResultLabels, Counter>,
    entity_reuses: Family<KindLabels, Counter>,
    evaluations: Family<ThreadLabels, Counter>,
    searches: Family<SearchLabels, Counter>,
    tls_handshake_failures: Counter,
    shadow_disagreements: Family<ShadowLabels, Counter>,
    connections_closed: Family<ConnectionLabels, Counter>,
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
    /// Registers every request-path metric.
    pub fn new() -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        // Sub-millisecond buckets: a decision usually takes tens of µs.
        let duration = Histogram::new([
            0.000_025, 0.000_05, 0.0001, 0.000_25, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
        ]);
        let errors = Family::<ErrorLabels, Counter>::default();
        let inflight = Gauge::default();
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        let cache = Family::<ResultLabels, Counter>::default();
        let entity_cache = Family::<ResultLabels, Counter>::default();
        let entity_reuses = Family::<KindLabels, Counter>::default();
        let evaluations = Family::<ThreadLabels, Counter>::default();
        let searches = Family::<SearchLabels, Counter>::default();
        let tls_handshake_failures = Counter::default();
        let shadow_disagreements = Family::<ShadowLabels, Counter>::default();
        let connections_closed = Family::<ConnectionLabels, Counter>::default();
        let mut registry = Registry::default();
        // Set by build.rs; read here so this module stays a leaf.
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("CEDAR_PDP_GIT_COMMIT"),
                cedar: env!("CEDAR_PDP_CEDAR_VERSION"),
            })
            .set(1);
        registry.register(
            "cedar_pdp_build_info",
            "Always 1: the build's version, the git commit it was built from (unknown outside a checkout) and its cedar-policy version",
            build_info,
        );
        registry.register(
            "cedar_pdp_decisions",
            "Decisions made, by API and decision",
            decisions.clone(),
        );
        registry.register(
            "cedar_pdp_decision_duration_seconds",
            "Time from receiving a call to its decision",
            duration.clone(),
        );
        registry.register(
            "cedar_pdp_request_errors",
            "Requests that got no decision (each batch or stream item counts), by API, gRPC code and stable reason",
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
        registry.register(
            "cedar_pdp_entity_cache_lookups",
            "Request entities looked up among those parsed before (same JSON, same policy snapshot), by result (hit or miss)",
            entity_cache.clone(),
        );
        registry.register(
            "cedar_pdp_entity_cache_reuses",
            "Requests whose whole entity set was found checked before, by kind: set (the request's own entities) or slice (with the schema actions the request reached)",
            entity_reuses.clone(),
        );
        registry.register(
            "cedar_pdp_evaluations",
            "Single decisions that needed Cedar, by the thread they ran on: inline (the async worker that received them) or pool (the evaluation threads)",
            evaluations.clone(),
        );
        registry.register(
            "cedar_pdp_searches",
            "AuthZEN searches, by kind (subject, resource, action) and outcome (results, empty, unknown_type, refused), each candidate also counted as a decision",
            searches.clone(),
        );
        registry.register(
            "cedar_pdp_connections_closed",
            "Connections the server closed or refused, by listener (grpc, authzen, admin) and reason: no_request (none within the first-request timeout), idle (none open for the idle timeout, PINGs aside), evicted (the idlest, for a new one at the cap), refused (at the cap with every connection busy)",
            connections_closed.clone(),
        );
        registry.register(
            "cedar_pdp_shadow_disagreements",
            "Decisions the shadow policies would have answered differently, by live and shadow decision",
            shadow_disagreements.clone(),
        );
        Self {
            decisions,
            duration,
            errors,
            inflight,
            tls_reloads,
            cache,
            entity_cache,
            entity_reuses,
            evaluations,
            searches,
            tls_handshake_failures,
            shadow_disagreements,
            connections_closed,
            registry,
        }
    }

    /// Counts a call in flight until the guard drops.
    pub fn inflight(&self) -> InflightGuard {
        self.inflight.inc();
        InflightGuard(self.inflight.clone())
    }

    /// Records one decision made through `api` (`grpc`, `authzen`).
    pub fn decision(&self, api: &'static str, allow: bool, took: Duration) {
        let decision = if allow { "allow" } else { "deny" };
        self.decisions
            .get_or_create(&DecisionLabels { api, decision })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Records a decision the shadow policies would have answered otherwise.
    pub fn shadow_disagreement(&self, live: bool, shadow: bool) {
        let name = |allow: bool| if allow { "allow" } else { "deny" };
        self.shadow_disagreements
            .get_or_create(&ShadowLabels {
                live: name(live),
                shadow: name(shadow),
            })
            .inc();
    }

    /// Records a TLS material reload attempt that found changed files.
    pub fn tls_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records a connection the server closed (or refused) on `listener`.
    pub fn connection_closed(&self, listener: &'static str, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ConnectionLabels { listener, reason })
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

    /// Records how one request's entities used the entity cache.
    pub fn entity_cache(&self, hits: u64, misses: u64) {
        for (result, n) in [("hit", hits), ("miss", misses)] {
            if n > 0 {
                self.entity_cache
                    .get_or_create(&ResultLabels { result })
                    .inc_by(n);
            }
        }
    }

    /// Records whole entity sets (and slices) one request reused.
    pub fn entity_reuses(&self, sets: u64, slices: u64) {
        for (kind, n) in [("set", sets), ("slice", slices)] {
            if n > 0 {
                self.entity_reuses
                    .get_or_create(&KindLabels { kind })
                    .inc_by(n);
            }
        }
    }

    /// Records a single decision evaluated inline or on the pool.
    pub fn evaluation(&self, inline: bool) {
        let thread = if inline { "inline" } else { "pool" };
        self.evaluations
            .get_or_create(&ThreadLabels { thread })
            .inc();
    }

    /// Records one search: its kind and how it ended.
    pub fn search(&self, kind: &'static str, outcome: &'static str) {
        self.searches
            .get_or_create(&SearchLabels { kind, outcome })
            .inc();
    }

    /// Also encodes what `collector` reads at scrape time.
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// Records a request that got no decision: the API it came through, its
    /// status code label (e.g. `InvalidArgument`) and stable reason.
    pub fn request_error(&self, api: &'static str, code: &'static str, reason: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { api, code, reason })
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
