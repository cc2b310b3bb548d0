//! The decision record (one JSON line per decision) and field masking.

use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::Value as Json;

/// Bumped when a field changes meaning or is removed; adding fields is not a
/// breaking change. 2: `context` is the context as evaluated, with the
/// server's `workload` and caller keys.
pub const RECORD_VERSION: u32 = 2;

/// Entities (Cedar JSON) as a record holds them: inline, or, above
/// `decision_log.max_inline_entities_bytes`, by the SHA-256 of their
/// canonical JSON, stored once in a side file beside the log.
#[derive(Clone, Debug)]
pub enum EntitySet {
    Inline(Arc<Vec<Json>>),
    Stored {
        sha256: String,
        /// The side file's contents: the set's canonical JSON.
        bytes: Arc<Vec<u8>>,
    },
}

impl Serialize for EntitySet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Inline(entities) => entities.serialize(s),
            Self::Stored { sha256, .. } => {
                use serde::ser::SerializeMap as _;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("sha256", sha256)?;
                map.end()
            }
        }
    }
}

/// A Cedar entity reference as it appears in a record.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EntityRef {
    #[serde(rename = "type")]
    pub type_name: String,
    pub id: String,
}

/// Who connected to the PDP, as far as the transport knows.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Caller {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    /// From a verified client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Unix socket peer credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

/// An evaluation error, as in the API.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RecordError {
    pub policy_id: String,
    pub message: String,
}

/// An offered property (an AuthZEN subject's or resource's) the evaluation
/// did not apply; `why` is `stored_attribute`, `not_in_schema` or
/// `named_by_store`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RecordDroppedProperty {
    pub entity: String,
    pub property: String,
    pub why: &'static str,
}

/// What the shadow policies would have answered, when it is not the answer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ShadowRecord {
    /// `allow` or `deny`.
    pub decision: &'static str,
    pub determining_policies: Vec<String>,
}

/// Why a request got no decision; its record's `decision` is `deny`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RecordFailure {
    /// The gRPC code name, e.g. `INVALID_ARGUMENT`.
    pub code: &'static str,
    /// The stable reason, e.g. `invalid_request`.
    pub reason: &'static str,
    pub message: String,
}

/// One decision, as written to the decision log.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionRecord {
    pub record_version: u32,
    pub decision_id: String,
    /// RFC 3339, microseconds, UTC.
    pub timestamp: String,
    pub trace_id: String,
    pub span_id: String,
    pub request_id: String,
    /// The API the request came through: `grpc` or `authzen`.
    pub api: &'static str,
    pub caller: Caller,
    pub principal: EntityRef,
    pub action: EntityRef,
    pub resource: EntityRef,
    /// The context as evaluated: the request's, with the server's
    /// `workload` and verified caller keys.
    pub context: Json,
    pub workload: Json,
    /// The ordered delegation chain: each hop's delegator, scopes, expiry,
    /// purpose and whether a verified token gave it; absent without one.
    #[serde(skip_serializing_if = "Json::is_null")]
    pub delegation: Json,
    /// The declared purpose; absent when none was given.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// Each verified token: `kind` (`subject`, `actor`), `issuer`,
    /// `subject`, `jti` when present, and the `kid` that verified it.
    #[serde(skip_serializing_if = "Json::is_null")]
    pub tokens: Json,
    /// The request's own entities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entities: Option<EntitySet>,
    /// A batch's shared entities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_entities: Option<EntitySet>,
    /// Properties offered for the principal or resource (AuthZEN), as
    /// `{uid, attrs}`: replay applies them as evaluation did.
    #[serde(skip_serializing_if = "Json::is_null")]
    pub properties: Json,
    /// An AuthZEN search, recorded once for all its candidates: its kind,
    /// the query as sent, how many candidates were decided (and refused),
    /// and the results (their ids up to 100, their count and a digest).
    #[serde(skip_serializing_if = "Json::is_null")]
    pub search: Json,
    /// `sha256:<hex>` of the schema file the request was checked against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_digest: Option<String>,
    /// `false` when masking hid a value the evaluation saw: `replay` cannot
    /// evaluate the record again.
    pub replayable: bool,
    /// `allow` or `deny`.
    pub decision: &'static str,
    pub determining_policies: Vec<String>,
    pub errors: Vec<RecordError>,
    /// Offered properties that were not applied; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped_properties: Vec<RecordDroppedProperty>,
    /// Set when the shadow policies would have decided otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRecord>,
    /// Set when the request could not be evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RecordFailure>,
    pub policy_revision: String,
    /// Full id of the git commit the policies came from, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_commit: Option<String>,
    pub policy_generation: u64,
    pub latency_us: u64,
}

/// What happens to a field named by a masking rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MaskAction {
    /// Replace the value with `"***"`.
    Mask,
    /// Remove the field.
    Remove,
}

/// Placeholder that replaces masked values.
pub const MASKED: &str = "***";

/// Field paths such as `context.token` to mask or remove before a record
/// reaches any sink.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    rules: Vec<(Vec<String>, MaskAction)>,
}

impl Masker {
    /// Builds a masker; paths start at a record field (`context`, `workload`).
    pub fn new(mask: &[String], remove: &[String]) -> Self {
        let split = |p: &String| p.split('.').map(str::to_string).collect::<Vec<_>>();
        let rules = mask
            .iter()
            .map(|p| (split(p), MaskAction::Mask))
            .chain(remove.iter().map(|p| (split(p), MaskAction::Remove)))
            .collect();
        Self { rules }
    }

    /// Applies every rule to the record's `context` and `workload` (also as
    /// `context.workload`), inside arrays too, then scrubs the values it hid
    /// from every message: Cedar quotes values in its errors. A record that
    /// lost a value is no longer replayable.
    pub fn apply(&self, record: &mut DecisionRecord) {
        let mut hidden = Vec::new();
        for (path, action) in &self.rules {
            let Some((root, rest)) = path.split_first() else {
                continue;
            };
            match root.as_str() {
                "context" => apply_path(&mut record.context, rest, *action, &mut hidden),
                "workload" => {
                    apply_path(&mut record.workload, rest, *action, &mut hidden);
                    if let Some(w) = record.context.get_mut("workload") {
                        apply_path(w, rest, *action, &mut hidden);
                    }
                }
                _ => {}
            }
        }
        if hidden.is_empty() {
            return;
        }
        record.replayable = false;
        let mut texts = Vec::new();
        for value in &hidden {
            leaf_texts(value, &mut texts);
        }
        // Longest first, so a secret that contains another goes whole.
        texts.sort_by_key(|t| std::cmp::Reverse(t.len()));
        let messages = record
            .errors
            .iter_mut()
            .map(|e| &mut e.message)
            .chain(record.error.as_mut().map(|e| &mut e.message));
        for message in messages {
            for text in &texts {
                if message.contains(text.as_str()) {
                    *message = message.replace(text.as_str(), MASKED);
                }
            }
        }
    }
}

/// The text forms a hidden value can take in a message: its strings and
/// numbers (the argument of an extension value, the id of an entity).
fn leaf_texts(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::String(s) if !s.is_empty() => out.push(s.clone()),
        Json::Number(n) => out.push(n.to_string()),
        Json::Array(items) => items.iter().for_each(|v| leaf_texts(v, out)),
        Json::Object(map) => {
            if let Some(extn) = map.get("__extn") {
                extn.get("arg").into_iter().for_each(|v| leaf_texts(v, out));
            } else if let Some(entity) = map.get("__entity") {
                entity
                    .get("id")
                    .into_iter()
                    .for_each(|v| leaf_texts(v, out));
            } else {
                map.values().for_each(|v| leaf_texts(v, out));
            }
        }
        _ => {}
    }
}

/// Applies `action` at `path` under `value`, through arrays at any level;
/// pushes each value it hides to `hidden`.
fn apply_path(value: &mut Json, path: &[String], action: MaskAction, hidden: &mut Vec<Json>) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    let map = match value {
        Json::Array(items) => {
            for item in items {
                apply_path(item, path, action, hidden);
            }
            return;
        }
        Json::Object(map) => map,
        _ => return,
    };
    if rest.is_empty() {
        let found = match action {
            MaskAction::Remove => map.remove(head),
            MaskAction::Mask => map
                .get_mut(head)
                .map(|v| std::mem::replace(v, Json::String(MASKED.to_string()))),
        };
        hidden.extend(found);
    } else if let Some(child) = map.get_mut(head) {
        apply_path(child, rest, action, hidden);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A record with `context`, for tests.
    pub(crate) fn record(context: Json) -> DecisionRecord {
        let e = |t: &str| EntityRef {
            type_name: t.into(),
            id: "x".into(),
        };
        DecisionRecord {
            record_version: RECORD_VERSION,
            decision_id: "d".into(),
            timestamp: "t".into(),
            trace_id: String::new(),
            span_id: String::new(),
            request_id: String::new(),
            api: "grpc",
            caller: Caller::default(),
            principal: e("P"),
            action: e("A"),
            resource: e("R"),
            context,
            workload: Json::Null,
            delegation: Json::Null,
            purpose: String::new(),
            tokens: Json::Null,
            properties: Json::Null,
            search: Json::Null,
            entities: None,
            shared_entities: None,
            schema_digest: None,
            replayable: true,
            decision: "deny",
            determining_policies: vec![],
            errors: vec![],
            dropped_properties: vec![],
            shadow: None,
            error: None,
            policy_revision: "r".into(),
            policy_commit: None,
            policy_generation: 1,
            latency_us: 1,
        }
    }

    #[test]
    fn masks_and_removes_nested_paths() {
        let m = Masker::new(
            &["context.token".into(), "context.user.ssn".into()],
            &["context.password".into(), "context.absent.x".into()],
        );
        let mut r = record(json!({
            "token": "secret", "password": "pw", "user": {"ssn": "123", "name": "a"}, "keep": 1
        }));
        m.apply(&mut r);
        assert_eq!(
            r.context,
            json!({"token": MASKED, "user": {"ssn": MASKED, "name": "a"}, "keep": 1})
        );
        assert!(!r.replayable, "a masked record cannot be evaluated again");
        let mut untouched = record(json!({"keep": 1}));
        m.apply(&mut untouched);
        assert!(untouched.replayable);
    }

    #[test]
    fn masks_inside_arrays_and_scrubs_messages() {
        let m = Masker::new(
            &["context.cards.number".into(), "context.key".into()],
            &["context.pin".into()],
        );
        let mut r = record(json!({
            "cards": [{"number": "4111-1111", "bank": "b"}, [{"number": 4222}]],
            "key": {"__extn": {"fn": "ip", "arg": "10.9.8.7"}},
            "pin": "0000",
        }));
        r.errors = vec![RecordError {
            policy_id: "p".into(),
            message:
                "type error: `\"4111-1111\"` is not a long; 4222 too; pin \"0000\"; at 10.9.8.7"
                    .into(),
        }];
        r.error = Some(RecordFailure {
            code: "INVALID_ARGUMENT",
            reason: "invalid_context",
            message: "value 4111-1111 is bad".into(),
        });
        m.apply(&mut r);
        assert_eq!(
            r.context,
            json!({"cards": [{"number": MASKED, "bank": "b"}, [{"number": MASKED}]], "key": MASKED})
        );
        let text = serde_json::to_string(&r).unwrap_or_default();
        for secret in ["4111-1111", "4222", "0000", "10.9.8.7"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("is not a long"), "{text}");
    }
}
