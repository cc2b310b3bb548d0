//! Turns a request and its outcome, or its failure, into a
//! [`DecisionRecord`]. Only runs when the decision log is on, so the hot path
//! pays nothing otherwise.

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value as Json};

use super::delegation;
use super::error::DecisionError;
use super::request::{Call, DecisionRequest, Uid};
use super::span;
use super::verified::{TokenFacts, Verified};
use crate::decision_log::{
    Caller, DecisionRecord, EntityRef, EntitySet, RECORD_VERSION, RecordDroppedProperty,
    RecordError, RecordFailure, ShadowRecord,
};
use crate::engine::Decision;
use crate::policy_store::Snapshot;

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

/// The verified tokens, as the record names them; `null` without any.
fn tokens(tokens: &[TokenFacts]) -> Json {
    if tokens.is_empty() {
        return Json::Null;
    }
    Json::Array(
        tokens
            .iter()
            .map(|t| {
                let mut facts = serde_json::json!({
                    "kind": t.kind, "issuer": t.issuer, "subject": t.subject, "kid": t.kid,
                });
                if let Some(jti) = &t.jti {
                    facts["jti"] = Json::String(jti.clone());
                }
                if let Some(scopes) = &t.scopes {
                    facts["scopes"] = serde_json::json!(scopes);
                }
                if let Some(binding) = t.binding {
                    facts["binding"] = Json::String(binding.name().into());
                }
                facts
            })
            .collect(),
    )
}

/// The request side of a record, captured before the request is consumed.
#[derive(Clone, Debug)]
pub(super) struct Subject {
    principal: EntityRef,
    action: EntityRef,
    resource: EntityRef,
    request_id: String,
    context: Json,
    workload: Json,
    delegation: Json,
    purpose: String,
    tokens: Json,
    properties: Json,
    entities: Option<EntitySet>,
    shared: Option<EntitySet>,
    /// The instant the request's tokens, chain and grants were judged at:
    /// the record's timestamp, so that an allow is never stamped after the
    /// grant that allowed it expired.
    judged_at: Option<SystemTime>,
}

fn entity_ref(uid: Option<&Uid>) -> EntityRef {
    let uid = uid.cloned().unwrap_or_default();
    EntityRef {
        type_name: uid.type_name,
        id: uid.id,
    }
}

impl Subject {
    /// The uids of `req`, and what screening `verified` of it; the context
    /// is filled in once it is converted.
    pub(super) fn of(req: &DecisionRequest, verified: &Verified) -> Self {
        let chain = verified.chain(req);
        Self {
            principal: entity_ref(req.principal.as_ref()),
            action: entity_ref(req.action.as_ref()),
            resource: entity_ref(req.resource.as_ref()),
            request_id: req.request_id.clone(),
            context: Json::Object(Map::new()),
            workload: req.workload.as_ref().map_or(Json::Null, |w| w.to_json()),
            delegation: if chain.is_empty() {
                Json::Null
            } else {
                delegation::record(chain)
            },
            purpose: req.purpose.clone(),
            tokens: tokens(&verified.tokens),
            properties: if req.properties.is_empty() {
                Json::Null
            } else {
                Json::Array(
                    req.properties
                        .iter()
                        .map(|(uid, attrs)| {
                            serde_json::json!({
                                "uid": {"type": uid.type_name, "id": uid.id}, "attrs": attrs,
                            })
                        })
                        .collect(),
                )
            },
            entities: None,
            shared: None,
            judged_at: verified.now,
        }
    }

    /// Records the converted query: its context (the workload's key is also
    /// the record's own `workload` field) and its entities.
    pub(super) fn with_query(
        mut self,
        context: &Map<String, Json>,
        entities: &[Json],
        workload_key: Option<&str>,
    ) -> Self {
        if let Some(key) = workload_key {
            self.workload = context.get(key).cloned().unwrap_or(Json::Null);
        }
        self.context = Json::Object(context.clone());
        self.entities = Some(EntitySet::Inline(Arc::new(entities.to_vec())));
        self
    }

    /// The instant evaluation judged time-bound links at, when the request
    /// had not read the clock before.
    pub(super) fn judged(&mut self, at: Option<SystemTime>) {
        self.judged_at = self.judged_at.or(at);
    }

    /// Adds a key the server put in the context after conversion.
    pub(super) fn add_context(&mut self, key: &str, value: &Json) {
        if let Json::Object(map) = &mut self.context {
            map.insert(key.to_string(), value.clone());
        }
    }

    /// Records a batch's shared entities.
    pub(super) fn with_shared(mut self, shared: Option<&EntitySet>) -> Self {
        self.shared = shared.cloned();
        self
    }

    fn record(
        self,
        call: &Call,
        span: &tracing::Span,
        decision_id: String,
        snapshot: Option<&Snapshot>,
    ) -> DecisionRecord {
        let (trace_id, span_id) = match span::ids(span) {
            Some(ids) => ids,
            None => (
                call.traceparent
                    .as_deref()
                    .and_then(trace_id_of)
                    .unwrap_or_default(),
                String::new(),
            ),
        };
        let peer = &call.peer;
        DecisionRecord {
            record_version: RECORD_VERSION,
            decision_id,
            timestamp: humantime::format_rfc3339_micros(
                self.judged_at.unwrap_or_else(SystemTime::now),
            )
            .to_string(),
            trace_id,
            span_id,
            request_id: self.request_id,
            api: call.api.as_str(),
            caller: Caller {
                peer_addr: peer.addr.map(|a| a.to_string()),
                spiffe_id: peer.spiffe.as_ref().map(|s| s.id.clone()),
                uid: peer.unix.map(|u| u.uid),
                gid: peer.unix.map(|u| u.gid),
                pid: peer.unix.and_then(|u| u.pid),
            },
            principal: self.principal,
            action: self.action,
            resource: self.resource,
            context: self.context,
            workload: self.workload,
            delegation: self.delegation,
            purpose: self.purpose,
            tokens: self.tokens,
            properties: self.properties,
            search: Json::Null,
            entities: self.entities,
            shared_entities: self.shared,
            schema_digest: snapshot.and_then(|s| s.schema_digest.clone()),
            replayable: true,
            decision: "deny",
            determining_policies: Vec::new(),
            errors: Vec::new(),
            dropped_properties: Vec::new(),
            shadow: None,
            error: None,
            policy_revision: snapshot.map(|s| s.revision.clone()).unwrap_or_default(),
            policy_commit: snapshot.and_then(|s| s.git_commit.as_ref().map(|g| g.id.clone())),
            policy_generation: snapshot.map_or(0, |s| s.generation),
            latency_us: u64::try_from(call.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// The record of a decision.
    pub(super) fn decided(
        self,
        decision: &Decision,
        decision_id: &str,
        call: &Call,
        span: &tracing::Span,
        snapshot: &Snapshot,
    ) -> DecisionRecord {
        let mut record = self.record(call, span, decision_id.to_string(), Some(snapshot));
        record.decision = if decision.allow { "allow" } else { "deny" };
        record.determining_policies = decision.determining_policies.clone();
        record.shadow = decision
            .shadow
            .as_ref()
            .filter(|s| s.allow != decision.allow)
            .map(|s| ShadowRecord {
                decision: if s.allow { "allow" } else { "deny" },
                determining_policies: s.determining_policies.clone(),
            });
        record.errors = decision
            .errors
            .iter()
            .map(|e| RecordError {
                policy_id: e.policy_id.clone(),
                message: e.message.clone(),
            })
            .collect();
        record.dropped_properties = decision
            .dropped_properties
            .iter()
            .map(|d| RecordDroppedProperty {
                entity: d.entity.clone(),
                property: d.property.clone(),
                why: d.why.as_str(),
            })
            .collect();
        record
    }

    /// The record of a request that got no decision: a deny, with why.
    pub(super) fn failed(
        self,
        error: &DecisionError,
        decision_id: &str,
        call: &Call,
        span: &tracing::Span,
        snapshot: Option<&Snapshot>,
    ) -> DecisionRecord {
        let mut record = self.record(call, span, decision_id.to_string(), snapshot);
        record.error = Some(RecordFailure {
            code: error.code().name(),
            reason: error.reason.as_str(),
            message: error.message.clone(),
        });
        record
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
