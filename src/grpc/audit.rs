//! Turns a call and its decision into a [`DecisionRecord`]. Only runs when
//! the decision log is on, so the hot path pays nothing otherwise.

use std::time::{Instant, SystemTime};

use serde_json::{Map, Value as Json};
use tonic::metadata::MetadataMap;

use super::proto;
use crate::decision_log::{Caller, DecisionRecord, EntityRef, RECORD_VERSION, RecordError};
use crate::identity::PeerFacts;
use crate::policy_store::Snapshot;

/// What the transport knows about one call.
#[derive(Clone, Debug)]
pub struct CallInfo {
    pub peer: PeerFacts,
    /// From the caller's W3C `traceparent`, when it sent a valid one.
    pub trace_id: String,
    /// The decision span's id, when spans are exported.
    pub span_id: String,
    pub started: Instant,
}

impl CallInfo {
    /// Reads the peer address and trace context of a request.
    pub fn of(peer: PeerFacts, metadata: &MetadataMap) -> Self {
        let trace_id = metadata
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id_of)
            .unwrap_or_default();
        Self {
            peer,
            trace_id,
            span_id: String::new(),
            started: Instant::now(),
        }
    }

    /// Only the start time, for calls whose decisions are not logged.
    pub fn started_now() -> Self {
        Self {
            peer: PeerFacts::default(),
            trace_id: String::new(),
            span_id: String::new(),
            started: Instant::now(),
        }
    }

    /// Uses the exported span's ids, which continue the caller's trace.
    pub fn with_span(mut self, ids: Option<(String, String)>) -> Self {
        if let Some((trace_id, span_id)) = ids {
            self.trace_id = trace_id;
            self.span_id = span_id;
        }
        self
    }
}

/// `00-<trace-id>-<parent-id>-<flags>`; an all-zero trace id is invalid.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, trace, parent) = (parts.next()?, parts.next()?, parts.next()?);
    let valid = trace.len() == 32
        && parent.len() == 16
        && trace.bytes().all(|b| b.is_ascii_hexdigit())
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_ascii_lowercase())
}

/// The request side of a record, captured before the request is consumed.
#[derive(Clone, Debug)]
pub struct Subject {
    principal: EntityRef,
    action: EntityRef,
    resource: EntityRef,
    context: Json,
    workload: Json,
}

fn entity_ref(uid: Option<&proto::EntityUid>) -> EntityRef {
    let uid = uid.cloned().unwrap_or_default();
    EntityRef {
        type_name: uid.r#type,
        id: uid.id,
    }
}

impl Subject {
    /// The uids of `req`; the context is filled in once it is converted.
    pub fn of(req: &proto::AuthorizeRequest) -> Self {
        Self {
            principal: entity_ref(req.principal.as_ref()),
            action: entity_ref(req.action.as_ref()),
            resource: entity_ref(req.resource.as_ref()),
            context: Json::Object(Map::new()),
            workload: Json::Null,
        }
    }

    /// Records the converted context; `context.workload` is reported as the
    /// record's own `workload` field.
    pub fn with_context(mut self, context: &Map<String, Json>, has_workload: bool) -> Self {
        let mut context = context.clone();
        if has_workload {
            self.workload = context.remove("workload").unwrap_or(Json::Null);
        }
        self.context = Json::Object(context);
        self
    }

    /// The finished record for `response`.
    pub fn into_record(
        self,
        response: &proto::AuthorizeResponse,
        call: &CallInfo,
        snapshot: &Snapshot,
    ) -> DecisionRecord {
        let allow = response.decision == proto::Decision::Allow as i32;
        DecisionRecord {
            record_version: RECORD_VERSION,
            decision_id: response.decision_id.clone(),
            timestamp: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            trace_id: call.trace_id.clone(),
            span_id: call.span_id.clone(),
            request_id: response.request_id.clone(),
            caller: Caller {
                peer_addr: call.peer.addr.map(|a| a.to_string()),
                spiffe_id: call.peer.spiffe.as_ref().map(|s| s.id.clone()),
                uid: call.peer.unix.map(|u| u.uid),
                gid: call.peer.unix.map(|u| u.gid),
                pid: call.peer.unix.and_then(|u| u.pid),
            },
            principal: self.principal,
            action: self.action,
            resource: self.resource,
            context: self.context,
            workload: self.workload,
            decision: if allow { "allow" } else { "deny" },
            determining_policies: response.determining_policies.clone(),
            errors: response
                .errors
                .iter()
                .map(|e| RecordError {
                    policy_id: e.policy_id.clone(),
                    message: e.message.clone(),
                })
                .collect(),
            policy_revision: snapshot.revision.clone(),
            policy_commit: snapshot.git_commit.as_ref().map(|g| g.id.clone()),
            policy_generation: snapshot.generation,
            latency_us: u64::try_from(call.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_w3c_trace_ids() {
        assert_eq!(
            trace_id_of("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("garbage"), None);
    }
}
