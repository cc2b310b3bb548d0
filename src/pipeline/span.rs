//! The `cedar.authorize` spans. Their target is only enabled when spans are
//! exported, so with export off every call here is a no-op on a disabled span.

use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::error::DecisionError;
use super::request::{DecisionRequest, Uid};
use crate::engine::Decision;
use crate::identity::PeerFacts;
use crate::telemetry::SPAN_TARGET;

/// A `cedar.authorize` span; a child of `parent` for batch items, otherwise
/// a root whose remote parent the front-end sets from the caller's trace.
pub(crate) fn authorize(parent: Option<&Span>) -> Span {
    tracing::info_span!(target: SPAN_TARGET, parent: parent.and_then(Span::id), "cedar.authorize",
        cedar.principal = Empty, cedar.action = Empty, cedar.resource = Empty,
        cedar.decision = Empty, cedar.determining_policies = Empty, cedar.error_count = Empty,
        cedar.policy_revision = Empty, cedar.decision_id = Empty, cedar.request_id = Empty,
        cedar.workload.spiffe_id = Empty, cedar.caller.spiffe_id = Empty, cedar.caller.uid = Empty,
        cedar.caller.pid = Empty, cedar.error.reason = Empty,
        cedar.shadow.decision = Empty, cedar.shadow.determining_policies = Empty,
        otel.status_code = Empty, otel.status_description = Empty)
}

/// The span of a whole `BatchAuthorize` call.
pub(crate) fn batch() -> Span {
    tracing::info_span!(target: SPAN_TARGET, "cedar.batch_authorize",
        cedar.batch_size = Empty, cedar.policy_revision = Empty, cedar.error.reason = Empty,
        otel.status_code = Empty, otel.status_description = Empty)
}

/// The span of a whole AuthZEN search: what it looked for, how many
/// candidates it decided (each in its own `cedar.authorize` span) and how
/// many it found, so an empty search leaves its trace too.
pub(crate) fn search(kind: &'static str) -> Span {
    tracing::info_span!(target: SPAN_TARGET, "cedar.search",
        cedar.search.kind = kind, cedar.search.candidates = Empty, cedar.search.results = Empty,
        cedar.search.unknown_type = Empty,
        cedar.policy_revision = Empty, cedar.error.reason = Empty,
        otel.status_code = Empty, otel.status_description = Empty)
}

/// `(trace_id, span_id)` of an exported span, as lowercase hex.
pub(crate) fn ids(span: &Span) -> Option<(String, String)> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

fn uid(uid: Option<&Uid>) -> String {
    uid.map(Uid::display).unwrap_or_default()
}

/// Records what was asked.
pub(super) fn record_request(span: &Span, req: &DecisionRequest) {
    if span.is_disabled() {
        return;
    }
    span.record("cedar.principal", uid(req.principal.as_ref()));
    span.record("cedar.action", uid(req.action.as_ref()));
    span.record("cedar.resource", uid(req.resource.as_ref()));
    span.record("cedar.request_id", req.request_id.as_str());
    if let Some(w) = &req.workload {
        span.record("cedar.workload.spiffe_id", w.spiffe_id.as_str());
    }
}

/// Records what the transport proved about the caller.
pub(super) fn record_peer(span: &Span, peer: &PeerFacts) {
    if span.is_disabled() {
        return;
    }
    if let Some(s) = &peer.spiffe {
        span.record("cedar.caller.spiffe_id", s.id.as_str());
    }
    if let Some(u) = &peer.unix {
        span.record("cedar.caller.uid", u64::from(u.uid));
        if let Some(pid) = u.pid {
            span.record("cedar.caller.pid", i64::from(pid));
        }
    }
}

/// Records the answer. A deny is not an error.
pub(super) fn record_decision(span: &Span, d: &Decision, decision_id: &str, revision: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("cedar.decision", if d.allow { "allow" } else { "deny" });
    span.record(
        "cedar.determining_policies",
        d.determining_policies.join(","),
    );
    span.record("cedar.error_count", d.errors.len() as u64);
    span.record("cedar.policy_revision", revision);
    span.record("cedar.decision_id", decision_id);
    if let Some(shadow) = d.shadow.as_ref().filter(|s| s.allow != d.allow) {
        span.record(
            "cedar.shadow.decision",
            if shadow.allow { "allow" } else { "deny" },
        );
        span.record(
            "cedar.shadow.determining_policies",
            shadow.determining_policies.join(","),
        );
    }
}

/// Marks the span failed: the request itself could not be evaluated.
pub(crate) fn record_failure(span: &Span, error: &DecisionError) {
    record_failure_as(span, error, &error.message);
}

/// [`record_failure`] with `message` (the masked one) for the status.
pub(super) fn record_failure_as(span: &Span, error: &DecisionError, message: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("cedar.error.reason", error.reason.as_str());
    span.record("otel.status_code", "error");
    span.record("otel.status_description", message);
}
