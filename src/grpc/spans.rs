//! The `cedar.authorize` spans. Their target is only enabled when spans are
//! exported, so with export off every call here is a no-op on a disabled span.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataMap};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::proto;
use crate::identity::PeerFacts;
use crate::telemetry::SPAN_TARGET;

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// A `cedar.authorize` span; a child of `parent` for batch items, otherwise
/// a root whose remote parent is set by [`continue_trace`].
pub fn authorize(parent: Option<&Span>) -> Span {
    tracing::info_span!(target: SPAN_TARGET, parent: parent.and_then(Span::id), "cedar.authorize",
        cedar.principal = Empty, cedar.action = Empty, cedar.resource = Empty,
        cedar.decision = Empty, cedar.determining_policies = Empty, cedar.error_count = Empty,
        cedar.policy_revision = Empty, cedar.decision_id = Empty, cedar.request_id = Empty,
        cedar.workload.spiffe_id = Empty, cedar.caller.spiffe_id = Empty, cedar.caller.uid = Empty,
        cedar.caller.pid = Empty, otel.status_code = Empty, otel.status_message = Empty)
}

/// The span of a whole `BatchAuthorize` call.
pub fn batch() -> Span {
    tracing::info_span!(target: SPAN_TARGET, "cedar.batch_authorize",
        cedar.batch_size = Empty, cedar.policy_revision = Empty,
        otel.status_code = Empty, otel.status_message = Empty)
}

/// Continues the caller's W3C trace, so this span is a child of its span.
pub fn continue_trace(span: &Span, metadata: &MetadataMap) {
    if span.is_disabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Metadata(metadata));
    let _ = span.set_parent(parent);
}

/// `(trace_id, span_id)` of an exported span, as lowercase hex.
pub fn ids(span: &Span) -> Option<(String, String)> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

fn uid(uid: Option<&proto::EntityUid>) -> String {
    uid.map(|u| format!("{}::{:?}", u.r#type, u.id))
        .unwrap_or_default()
}

/// Records what was asked.
pub fn record_request(span: &Span, req: &proto::AuthorizeRequest) {
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
pub fn record_peer(span: &Span, peer: Option<&PeerFacts>) {
    let Some(peer) = peer.filter(|_| !span.is_disabled()) else {
        return;
    };
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
pub fn record_response(span: &Span, resp: &proto::AuthorizeResponse) {
    if span.is_disabled() {
        return;
    }
    let allow = resp.decision == proto::Decision::Allow as i32;
    span.record("cedar.decision", if allow { "allow" } else { "deny" });
    span.record(
        "cedar.determining_policies",
        resp.determining_policies.join(","),
    );
    span.record("cedar.error_count", resp.errors.len() as u64);
    span.record("cedar.policy_revision", resp.policy_revision.as_str());
    span.record("cedar.decision_id", resp.decision_id.as_str());
}

/// Marks the span failed: the request itself could not be evaluated.
pub fn record_failure(span: &Span, status: &tonic::Status) {
    span.record("otel.status_code", "error");
    span.record("otel.status_message", status.message());
}
