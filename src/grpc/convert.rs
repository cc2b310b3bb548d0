//! Decoding proto requests into the pipeline's [`DecisionRequest`]
//! (`TryFrom`) and encoding its answers back (`From`). Typed values become
//! Cedar JSON, so typed and JSON requests share one schema-aware parser and
//! cannot disagree.

use serde_json::{Map, Value as Json, json};

use super::proto;
use crate::engine;
use crate::pipeline::{
    Answer, Context, DecisionRequest, DelegationHop, InvalidField, LAST_RFC3339_SECOND, Outcome,
    Refusal, Rejected, Submitted, Uid, Workload,
};

/// The Cedar extension constructors a typed `ExtensionValue` may name.
const EXTENSION_FNS: [&str; 4] = ["ip", "decimal", "datetime", "duration"];

impl From<&proto::EntityUid> for Uid {
    fn from(u: &proto::EntityUid) -> Self {
        Uid::new(&u.r#type, &u.id)
    }
}

impl From<proto::EntityUid> for Uid {
    fn from(u: proto::EntityUid) -> Self {
        Uid {
            type_name: u.r#type,
            id: u.id,
        }
    }
}

/// Typed entities as Cedar JSON.
fn entities_to_json(typed: Vec<proto::Entity>, field: &str) -> Result<Vec<Json>, InvalidField> {
    typed
        .into_iter()
        .enumerate()
        .map(|(i, entity)| entity_to_json(entity, &format!("{field}[{i}]")))
        .collect()
}

/// A batch's shared entities, typed and JSON, as Cedar JSON.
pub fn shared_entities(
    batch_entities: Vec<proto::Entity>,
    json_text: &str,
) -> Result<Vec<Json>, InvalidField> {
    let mut out = entities_to_json(batch_entities, "entities")?;
    out.extend(crate::pipeline::parse_entities_json(
        json_text,
        "entities_json",
    )?);
    Ok(out)
}

/// The typed chain; a timestamp out of range is refused, never dropped.
fn delegation(hops: Vec<proto::DelegationHop>) -> Result<Vec<DelegationHop>, InvalidField> {
    hops.into_iter()
        .enumerate()
        .map(|(i, hop)| {
            // RFC 3339, which the chain is written in, ends with the year 9999.
            let expires_at = match hop.expires_at {
                None => None,
                Some(t) if u64::try_from(t.seconds).is_ok_and(|s| s > LAST_RFC3339_SECOND) => {
                    return Err(InvalidField::new(
                        format!("delegation[{i}].expires_at"),
                        "must be before the year 10000",
                    ));
                }
                Some(t) => Some(std::time::SystemTime::try_from(t).map_err(|_| {
                    InvalidField::new(
                        format!("delegation[{i}].expires_at"),
                        "is not a valid timestamp",
                    )
                })?),
            };
            Ok(DelegationHop {
                delegator: hop.delegator.map(Uid::from).unwrap_or_default(),
                scopes: hop.scopes,
                expires_at,
                purpose: hop.purpose,
                verified: false,
            })
        })
        .collect()
}

/// Converts one `AuthorizeRequest`. Only typed values are converted here;
/// uids and JSON text are parsed by the pipeline.
pub fn decision_request(req: proto::AuthorizeRequest) -> Submitted {
    let mut out = DecisionRequest {
        principal: req.principal.map(Uid::from),
        action: req.action.map(Uid::from),
        resource: req.resource.map(Uid::from),
        context: Context::default(),
        entities: Vec::new(),
        entities_json: req.entities_json,
        properties: Vec::new(),
        workload: req.workload.map(workload),
        delegation: Vec::new(),
        purpose: req.purpose,
        subject_token: req.subject_token,
        actor_token: req.actor_token,
        request_id: req.request_id,
    };
    match delegation(req.delegation) {
        Ok(hops) => out.delegation = hops,
        Err(e) => return Err(Box::new(Rejected::new(out, e))),
    }
    let has_typed = !req.context.is_empty();
    let has_json = !req.context_json.trim().is_empty();
    let converted = match (has_typed, has_json) {
        (true, true) => Err(InvalidField::new(
            "context_json",
            "`context` and `context_json` are both set; send one of them",
        )),
        (false, true) => Ok(Context::Json(req.context_json)),
        _ => record_to_json(req.context, "context").map(Context::Record),
    }
    .and_then(|context| {
        out.context = context;
        entities_to_json(req.entities, "entities")
    });
    match converted {
        Ok(entities) => {
            out.entities = entities;
            Ok(out)
        }
        Err(error) => Err(Box::new(Rejected::new(out, error))),
    }
}

/// Converts one `AuthorizeRequest` into a Cedar query, as the pipeline
/// would: for tests and benchmarks of conversion alone.
pub fn query_from_request(
    req: proto::AuthorizeRequest,
    shared: &[Json],
) -> Result<engine::Query, InvalidField> {
    decision_request(req)
        .map_err(|r| r.error)?
        .into_query(shared)
}

fn workload(w: proto::Workload) -> Workload {
    let mut labels: Vec<String> = w
        .labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort_unstable();
    Workload {
        spiffe_id: w.spiffe_id,
        namespace: w.namespace,
        service_account: w.service_account,
        labels,
    }
}

fn uid_json(uid: &proto::EntityUid, field: &str) -> Result<Json, InvalidField> {
    Uid::from(uid).to_json(field)
}

fn entity_to_json(entity: proto::Entity, field: &str) -> Result<Json, InvalidField> {
    let uid = entity
        .uid
        .as_ref()
        .ok_or_else(|| InvalidField::new(format!("{field}.uid"), "is required"))?;
    let uid = uid_json(uid, &format!("{field}.uid"))?;
    let parents = entity
        .parents
        .iter()
        .enumerate()
        .map(|(i, p)| uid_json(p, &format!("{field}.parents[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let attrs = record_to_json(entity.attrs, &format!("{field}.attrs"))?;
    let mut out = json!({"uid": uid, "attrs": attrs, "parents": parents});
    if !entity.tags.is_empty() {
        out["tags"] = Json::Object(record_to_json(entity.tags, &format!("{field}.tags"))?);
    }
    Ok(out)
}

fn record_to_json(
    fields: impl IntoIterator<Item = (String, proto::Value)>,
    field: &str,
) -> Result<Map<String, Json>, InvalidField> {
    fields
        .into_iter()
        .map(|(k, v)| {
            let json = value_to_json(v, &format!("{field}.{k}"))?;
            Ok((k, json))
        })
        .collect()
}

fn value_to_json(value: proto::Value, field: &str) -> Result<Json, InvalidField> {
    use proto::value::Value as V;
    let Some(value) = value.value else {
        return Err(InvalidField::new(
            field,
            "value is empty; set one of bool_value, long_value, string_value, entity, set, record, extension",
        ));
    };
    Ok(match value {
        V::BoolValue(b) => Json::Bool(b),
        V::LongValue(n) => Json::from(n),
        V::StringValue(s) => Json::String(s),
        V::Entity(uid) => json!({"__entity": uid_json(&uid, field)?}),
        V::Set(set) => Json::Array(
            set.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| value_to_json(v, &format!("{field}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        V::Record(record) => Json::Object(record_to_json(record.fields, field)?),
        V::Extension(ext) => {
            if !EXTENSION_FNS.contains(&ext.r#fn.as_str()) {
                return Err(InvalidField::new(
                    field,
                    format!(
                        "unknown extension function `{}`; expected one of `ip`, `decimal`, `datetime`, `duration`",
                        ext.r#fn
                    ),
                ));
            }
            json!({"__extn": {"fn": ext.r#fn, "arg": ext.arg}})
        }
    })
}

impl From<engine::PolicyError> for proto::EvaluationError {
    fn from(e: engine::PolicyError) -> Self {
        Self {
            policy_id: e.policy_id,
            message: e.message,
        }
    }
}

impl From<Outcome> for proto::AuthorizeResponse {
    fn from(o: Outcome) -> Self {
        let why = o.why();
        let decision = if o.decision.allow {
            proto::Decision::Allow
        } else {
            proto::Decision::Deny
        };
        Self {
            decision: decision as i32,
            determining_policies: o.decision.determining_policies,
            errors: o.decision.errors.into_iter().map(Into::into).collect(),
            decision_id: o.decision_id,
            policy_revision: o.policy_revision,
            request_id: o.request_id,
            why,
        }
    }
}

impl Refusal {
    /// A `DENY` whose one error says why: how batch and stream items that
    /// could not be evaluated are answered. `message` is the error as the
    /// caller reads it.
    fn into_deny(self, message: String) -> proto::AuthorizeResponse {
        proto::AuthorizeResponse {
            decision: proto::Decision::Deny as i32,
            determining_policies: Vec::new(),
            errors: vec![proto::EvaluationError {
                policy_id: String::new(),
                message: message.clone(),
            }],
            decision_id: self.decision_id,
            policy_revision: self.policy_revision,
            request_id: self.request_id,
            why: message,
        }
    }
}

/// A batch item's answer: a refused item is a deny that says why.
pub fn batch_item(answer: Answer) -> proto::AuthorizeResponse {
    match answer {
        Ok(outcome) => outcome.into(),
        Err(refusal) => {
            let message = refusal.error.message.clone();
            (*refusal).into_deny(message)
        }
    }
}

/// A stream item's answer: a refused item is a deny naming the status code
/// a unary call would have failed with.
pub fn stream_item(answer: Answer) -> proto::AuthorizeResponse {
    match answer {
        Ok(outcome) => outcome.into(),
        Err(refusal) => {
            let message = format!(
                "{:?}: {}",
                super::status::grpc_code(refusal.error.code()),
                refusal.error.message
            );
            (*refusal).into_deny(message)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn euid(t: &str, id: &str) -> Option<proto::EntityUid> {
        Some(proto::EntityUid {
            r#type: t.into(),
            id: id.into(),
        })
    }

    fn request() -> proto::AuthorizeRequest {
        proto::AuthorizeRequest {
            principal: euid("User", "alice"),
            action: euid("Action", "read"),
            resource: euid("Doc", "d"),
            ..Default::default()
        }
    }

    #[test]
    fn typed_values_become_cedar_json() {
        let mut req = request();
        let v = |value| proto::Value { value: Some(value) };
        use proto::value::Value as V;
        req.context.insert(
            "ip".into(),
            v(V::Extension(proto::ExtensionValue {
                r#fn: "ip".into(),
                arg: "10.0.0.1".into(),
            })),
        );
        req.context.insert(
            "set".into(),
            v(V::Set(proto::ValueSet {
                values: vec![
                    v(V::LongValue(3)),
                    v(V::Entity(proto::EntityUid {
                        r#type: "User".into(),
                        id: "bob".into(),
                    })),
                ],
            })),
        );
        let q = query_from_request(req, &[]).unwrap();
        assert_eq!(
            Json::Object(q.context),
            json!({
                "ip": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}},
                "set": [3, {"__entity": {"type": "User", "id": "bob"}}],
            })
        );
    }

    #[test]
    fn rejects_bad_fields_with_their_path() {
        let mut req = request();
        req.principal = euid("not a type", "x");
        assert_eq!(
            query_from_request(req, &[]).unwrap_err().field,
            "principal.type"
        );

        let mut req = request();
        req.context.insert("x".into(), proto::Value { value: None });
        assert_eq!(query_from_request(req, &[]).unwrap_err().field, "context.x");

        let mut req = request();
        req.context_json = "{}".into();
        req.context.insert(
            "a".into(),
            proto::Value {
                value: Some(proto::value::Value::BoolValue(true)),
            },
        );
        assert_eq!(
            query_from_request(req, &[]).unwrap_err().field,
            "context_json"
        );

        let mut req = request();
        req.entities_json = "{}".into();
        assert_eq!(
            query_from_request(req, &[]).unwrap_err().field,
            "entities_json"
        );
    }

    #[test]
    fn workload_reaches_context() {
        let mut req = request();
        req.workload = Some(proto::Workload {
            spiffe_id: "spiffe://td/ns/a/sa/b".into(),
            namespace: "a".into(),
            service_account: "b".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
        });
        let q = query_from_request(req, &[]).unwrap();
        assert_eq!(q.context["workload"]["labels"], json!(["app=web"]));
    }
}
