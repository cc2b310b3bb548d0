//! Decoding proto requests into [`Query`] (`TryFrom`) and encoding decisions
//! back (`From`). Typed values become Cedar JSON, so typed and JSON requests
//! share one schema-aware parser and cannot disagree.

use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use serde_json::{Map, Value as Json, json};

use super::proto;
use crate::authorizer::{self, Query};

/// The Cedar extension constructors a typed `ExtensionValue` may name.
const EXTENSION_FNS: [&str; 4] = ["ip", "decimal", "datetime", "duration"];

/// A request field that cannot be converted; becomes `INVALID_ARGUMENT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct InvalidField {
    /// Path of the offending field, e.g. `context.addr`.
    pub field: String,
    pub message: String,
}

impl InvalidField {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, e.g. with `requests[3]`.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// The entities a request carries, already in Cedar JSON form.
pub fn entities_to_json(
    typed: Vec<proto::Entity>,
    json_text: &str,
    field: &str,
) -> Result<Vec<Json>, InvalidField> {
    let mut out = Vec::with_capacity(typed.len());
    for (i, entity) in typed.into_iter().enumerate() {
        out.push(entity_to_json(entity, &format!("{field}[{i}]"))?);
    }
    if !json_text.trim().is_empty() {
        let json_field = format!("{field}_json");
        match serde_json::from_str::<Json>(json_text) {
            Ok(Json::Array(items)) => out.extend(items),
            Ok(_) => {
                return Err(InvalidField::new(
                    json_field,
                    "must be a JSON array of Cedar entities",
                ));
            }
            Err(e) => return Err(InvalidField::new(json_field, format!("invalid JSON: {e}"))),
        }
    }
    Ok(out)
}

/// Converts one `AuthorizeRequest`. `shared` entities (from a batch) are
/// appended to the request's own.
pub fn query_from_request(
    req: proto::AuthorizeRequest,
    shared: &[Json],
) -> Result<Query, InvalidField> {
    let principal = uid(req.principal.as_ref(), "principal")?;
    let action = uid(req.action.as_ref(), "action")?;
    let resource = uid(req.resource.as_ref(), "resource")?;

    let has_typed = !req.context.is_empty();
    let has_json = !req.context_json.trim().is_empty();
    let mut context = match (has_typed, has_json) {
        (true, true) => {
            return Err(InvalidField::new(
                "context_json",
                "`context` and `context_json` are both set; send one of them",
            ));
        }
        (false, true) => match serde_json::from_str::<Json>(&req.context_json) {
            Ok(Json::Object(map)) => map,
            Ok(_) => return Err(InvalidField::new("context_json", "must be a JSON object")),
            Err(e) => {
                return Err(InvalidField::new(
                    "context_json",
                    format!("invalid JSON: {e}"),
                ));
            }
        },
        _ => record_to_json(req.context, "context")?,
    };
    if let Some(workload) = req.workload {
        if context.contains_key("workload") {
            return Err(InvalidField::new(
                "context.workload",
                "is reserved for the `workload` field; rename the context key",
            ));
        }
        context.insert("workload".to_string(), workload_to_json(workload));
    }

    let mut entities = entities_to_json(req.entities, &req.entities_json, "entities")?;
    entities.extend_from_slice(shared);
    Ok(Query {
        principal,
        action,
        resource,
        context,
        entities,
    })
}

fn uid(uid: Option<&proto::EntityUid>, field: &str) -> Result<EntityUid, InvalidField> {
    let uid = uid.ok_or_else(|| InvalidField::new(field, "is required"))?;
    parse_uid(uid, field)
}

fn parse_uid(uid: &proto::EntityUid, field: &str) -> Result<EntityUid, InvalidField> {
    if uid.r#type.is_empty() {
        return Err(InvalidField::new(
            format!("{field}.type"),
            "is required, e.g. `User` or `Mesh::Workload`",
        ));
    }
    let type_name = EntityTypeName::from_str(&uid.r#type).map_err(|e| {
        InvalidField::new(
            format!("{field}.type"),
            format!("`{}` is not a valid Cedar entity type: {e}", uid.r#type),
        )
    })?;
    // INVARIANT: EntityId::from_str accepts any string.
    let id = EntityId::new(&uid.id);
    Ok(EntityUid::from_type_name_and_id(type_name, id))
}

fn uid_json(uid: &proto::EntityUid, field: &str) -> Result<Json, InvalidField> {
    parse_uid(uid, field)?;
    Ok(json!({"type": uid.r#type, "id": uid.id}))
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

/// `context.workload`: labels become a set of `key=value` strings, because
/// Cedar records have fixed keys and a schema could not declare arbitrary
/// pod labels.
fn workload_to_json(w: proto::Workload) -> Json {
    let mut labels: Vec<String> = w
        .labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort_unstable();
    json!({
        "spiffe_id": w.spiffe_id,
        "namespace": w.namespace,
        "service_account": w.service_account,
        "labels": labels,
    })
}

impl From<authorizer::PolicyError> for proto::EvaluationError {
    fn from(e: authorizer::PolicyError) -> Self {
        Self {
            policy_id: e.policy_id,
            message: e.message,
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
