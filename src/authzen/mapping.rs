//! How an AuthZEN evaluation becomes a Cedar [`DecisionRequest`]:
//!
//! - `subject` `{type, id}` is the principal `<namespace>::<type>::"<id>"`,
//!   `resource` likewise; `[authzen.types]` maps type strings that are not
//!   Cedar names (`todo-list`) to Cedar types; any other type that is not a
//!   Cedar name is a 400.
//! - `action` `{name}` is `<namespace>::<action_type>::"<name>"`.
//! - `subject` and `resource` `properties` are that entity's attributes for
//!   this request (Cedar JSON: `__entity` and `__extn` are allowed). For an
//!   entity the policy directory stores, the directory is the source of
//!   truth: the evaluation adds only the attributes it lacks (and, with a
//!   schema, declares), and the record names what it did not apply.
//! - `action` `properties` are the context record `context.action`.
//! - `context` is the Cedar context.
//!
//! Unknown fields are ignored, as the spec requires.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use crate::config::{AuthzenConfig, ContextKeysConfig};
use crate::engine::type_name;
use crate::pipeline::{
    Context, DecisionRequest, DelegationHop, InvalidField, Rejected, Submitted, Uid,
};

/// The context key action properties reach policies under.
pub(super) const ACTION_KEY: &str = "action";

/// An entity as sent: its uid, and its properties if it has any.
type Sent = (Uid, Option<Map<String, Json>>);

/// The configured mapping from AuthZEN names to Cedar types.
#[derive(Debug)]
pub(super) struct Mapping {
    /// `Ns::` or empty.
    prefix: String,
    /// The full action type, e.g. `Ns::Action`.
    action_type: String,
    types: BTreeMap<String, String>,
    /// The context keys AuthZEN's context carries the delegation chain and
    /// purpose under: the server's own (`[context_keys]`).
    delegation_key: String,
    purpose_key: String,
}

impl Mapping {
    pub(super) fn new(c: &AuthzenConfig, keys: &ContextKeysConfig) -> Self {
        let prefix = if c.namespace.is_empty() {
            String::new()
        } else {
            format!("{}::", c.namespace)
        };
        Self {
            action_type: format!("{prefix}{}", c.action_type),
            prefix,
            types: c.types.clone(),
            delegation_key: keys.delegation.clone(),
            purpose_key: keys.purpose.clone(),
        }
    }
}

/// The four parts of one evaluation, as sent (after a batch's defaults):
/// borrowed from a body that stays whole (a batch's defaults, a search's
/// query, which are decided many times), or owned, taken out of a body
/// decided once, so its properties and context move into the request
/// instead of being copied.
#[derive(Clone, Debug, Default)]
pub(super) struct Parts<'a> {
    pub(super) subject: Option<Cow<'a, Json>>,
    pub(super) action: Option<Cow<'a, Json>>,
    pub(super) resource: Option<Cow<'a, Json>>,
    pub(super) context: Option<Cow<'a, Json>>,
}

impl<'a> Parts<'a> {
    /// The parts of an evaluation object; JSON `null` counts as absent.
    pub(super) fn of(object: &'a Map<String, Json>) -> Self {
        let get = |key: &str| object.get(key).filter(|v| !v.is_null()).map(Cow::Borrowed);
        Self {
            subject: get("subject"),
            action: get("action"),
            resource: get("resource"),
            context: get("context"),
        }
    }

    /// The parts taken out of an evaluation object.
    pub(super) fn take(mut object: Map<String, Json>) -> Self {
        let mut take = |key: &str| object.remove(key).filter(|v| !v.is_null()).map(Cow::Owned);
        Self {
            subject: take("subject"),
            action: take("action"),
            resource: take("resource"),
            context: take("context"),
        }
    }

    /// Each of `self`'s parts, or `defaults`' when `self` lacks it: an item
    /// replaces a default as a whole object, never merges into it.
    pub(super) fn or(self, defaults: &Parts<'a>) -> Self {
        Self {
            subject: self.subject.or_else(|| defaults.subject.clone()),
            action: self.action.or_else(|| defaults.action.clone()),
            resource: self.resource.or_else(|| defaults.resource.clone()),
            context: self.context.or_else(|| defaults.context.clone()),
        }
    }
}

/// `value` as an object, still borrowed or owned as it was.
fn object<'a>(
    value: Cow<'a, Json>,
    field: &str,
) -> Result<Cow<'a, Map<String, Json>>, InvalidField> {
    let not_object = || InvalidField::new(field, "must be a JSON object");
    match value {
        Cow::Borrowed(v) => v.as_object().map(Cow::Borrowed).ok_or_else(not_object),
        Cow::Owned(Json::Object(o)) => Ok(Cow::Owned(o)),
        Cow::Owned(_) => Err(not_object()),
    }
}

fn string<'a>(
    object: &'a Map<String, Json>,
    key: &str,
    field: &str,
) -> Result<&'a str, InvalidField> {
    match object.get(key) {
        None | Some(Json::Null) => Err(InvalidField::new(format!("{field}.{key}"), "is required")),
        Some(Json::String(s)) => Ok(s),
        Some(_) => Err(InvalidField::new(
            format!("{field}.{key}"),
            "must be a string",
        )),
    }
}

/// `properties`, when sent: an object, or absent (`null` counts as absent);
/// moved out of an owned `object`, copied out of a borrowed one.
fn properties(
    object: &mut Cow<'_, Map<String, Json>>,
    field: &str,
) -> Result<Option<Map<String, Json>>, InvalidField> {
    let value = match object {
        Cow::Borrowed(o) => o.get("properties").cloned(),
        Cow::Owned(o) => o.remove("properties"),
    };
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(p)) => Ok(Some(p)),
        Some(_) => Err(InvalidField::new(
            format!("{field}.properties"),
            "must be a JSON object",
        )),
    }
}

impl Mapping {
    /// The full Cedar type of actions, e.g. `Ns::Action`.
    pub(super) fn action_type(&self) -> &str {
        &self.action_type
    }

    /// The Cedar type an AuthZEN `type` names.
    pub(super) fn cedar_type(&self, authzen: &str, field: &str) -> Result<String, InvalidField> {
        if let Some(mapped) = self.types.get(authzen) {
            return Ok(mapped.clone());
        }
        if authzen.is_empty() {
            return Err(InvalidField::new(field, "must not be empty"));
        }
        let full = format!("{}{authzen}", self.prefix);
        // Parsed once per thread, as the pipeline parses every uid's type.
        match type_name(&full) {
            Ok(_) => Ok(full),
            Err(_) => Err(InvalidField::new(
                field,
                format!(
                    "`{authzen}` is not a Cedar entity type name; map it to one under `[authzen.types]`"
                ),
            )),
        }
    }

    /// `{type, id, properties?}` as a uid and its properties.
    fn entity(&self, value: Option<Cow<'_, Json>>, field: &str) -> Result<Sent, InvalidField> {
        let value = value.ok_or_else(|| InvalidField::new(field, "is required"))?;
        let mut object = object(value, field)?;
        let type_name = string(&object, "type", field)?;
        let id = string(&object, "id", field)?;
        let type_name = self.cedar_type(type_name, &format!("{field}.type"))?;
        let uid = Uid::new(type_name, id);
        Ok((uid, properties(&mut object, field)?))
    }

    /// `context.delegation`: an array of hops `{delegator: {type, id},
    /// scopes?, expires_at? (RFC 3339), purpose?}`, as on gRPC.
    fn delegation(&self, chain: &Json) -> Result<Vec<DelegationHop>, InvalidField> {
        let hops = chain
            .as_array()
            .ok_or_else(|| InvalidField::new("context.delegation", "must be an array of hops"))?;
        hops.iter()
            .enumerate()
            .map(|(i, hop)| {
                let field = format!("context.delegation[{i}]");
                let hop = hop
                    .as_object()
                    .ok_or_else(|| InvalidField::new(&field, "must be a JSON object"))?;
                let (delegator, _) = self.entity(
                    hop.get("delegator").map(Cow::Borrowed),
                    &format!("{field}.delegator"),
                )?;
                let scopes = match hop.get("scopes") {
                    None | Some(Json::Null) => Vec::new(),
                    Some(Json::Array(items)) => items
                        .iter()
                        .map(|s| {
                            s.as_str().map(str::to_string).ok_or_else(|| {
                                InvalidField::new(format!("{field}.scopes"), "must be strings")
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => {
                        return Err(InvalidField::new(
                            format!("{field}.scopes"),
                            "must be an array of strings",
                        ));
                    }
                };
                let expires_at = match hop.get("expires_at") {
                    None | Some(Json::Null) => None,
                    Some(Json::String(t)) => Some(humantime::parse_rfc3339(t).map_err(|e| {
                        InvalidField::new(
                            format!("{field}.expires_at"),
                            format!("is not an RFC 3339 time in UTC: {e}"),
                        )
                    })?),
                    Some(_) => {
                        return Err(InvalidField::new(
                            format!("{field}.expires_at"),
                            "must be an RFC 3339 string",
                        ));
                    }
                };
                let purpose = match hop.get("purpose") {
                    None | Some(Json::Null) => String::new(),
                    Some(Json::String(p)) => p.clone(),
                    Some(_) => {
                        return Err(InvalidField::new(
                            format!("{field}.purpose"),
                            "must be a string",
                        ));
                    }
                };
                Ok(DelegationHop {
                    delegator,
                    scopes,
                    expires_at,
                    purpose,
                    verified: false,
                })
            })
            .collect()
    }

    /// The decision request of one evaluation, with `request_id`. On an
    /// error, what did convert is kept in the request, for its record.
    pub(super) fn request(&self, parts: Parts<'_>, request_id: &str, prefix: &str) -> Submitted {
        let mut req = DecisionRequest {
            request_id: request_id.to_string(),
            ..DecisionRequest::default()
        };
        match self.fill(&mut req, parts) {
            Ok(()) => Ok(req),
            Err(e) if prefix.is_empty() => Err(Box::new(Rejected::new(req, e))),
            Err(e) => Err(Box::new(Rejected::new(req, e.within(prefix)))),
        }
    }

    fn fill(&self, req: &mut DecisionRequest, parts: Parts<'_>) -> Result<(), InvalidField> {
        let (principal, subject_props) = self.entity(parts.subject, "subject")?;
        req.principal = Some(principal.clone());
        let action = parts
            .action
            .ok_or_else(|| InvalidField::new("action", "is required"))?;
        let mut action = object(action, "action")?;
        let name = string(&action, "name", "action")?;
        req.action = Some(Uid::new(&self.action_type, name));
        let action_props = properties(&mut action, "action")?;
        let (resource, resource_props) = self.entity(parts.resource, "resource")?;
        req.resource = Some(resource.clone());

        let mut context = match parts.context {
            None => Map::new(),
            Some(c) => object(c, "context")?.into_owned(),
        };
        if let Some(props) = action_props {
            if context.contains_key(ACTION_KEY) {
                return Err(InvalidField::new(
                    "context.action",
                    "is where `action.properties` go; send one or the other",
                ));
            }
            context.insert(ACTION_KEY.to_string(), Json::Object(props));
        }
        if let Some(chain) = context.remove(&self.delegation_key) {
            req.delegation = self.delegation(&chain)?;
        }
        match context.remove(&self.purpose_key) {
            None | Some(Json::Null) => {}
            Some(Json::String(p)) => req.purpose = p,
            Some(_) => {
                return Err(InvalidField::new(
                    format!("context.{}", self.purpose_key),
                    "must be a string",
                ));
            }
        }
        req.context = Context::Record(context);

        let mut offered: Vec<(Uid, Map<String, Json>)> = Vec::new();
        for (uid, props) in [(principal, subject_props), (resource, resource_props)] {
            let Some(props) = props else { continue };
            match offered.iter_mut().find(|(u, _)| *u == uid) {
                // The same entity as subject and resource: one entity,
                // the subject's properties first.
                Some((_, attrs)) => {
                    for (k, v) in props {
                        attrs.entry(k).or_insert(v);
                    }
                }
                None => offered.push((uid, props)),
            }
        }
        req.properties = offered;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use serde_json::json;

    use super::*;

    fn mapping(namespace: &str) -> Mapping {
        let mut c = AuthzenConfig {
            namespace: namespace.into(),
            ..AuthzenConfig::default()
        };
        c.types.insert("todo-list".into(), "Todo::List".into());
        Mapping::new(&c, &ContextKeysConfig::default())
    }

    fn convert(m: &Mapping, body: Json) -> Result<DecisionRequest, InvalidField> {
        let body = body.as_object().unwrap().clone();
        m.request(Parts::of(&body), "r1", "")
            .map_err(|rejected| rejected.error)
    }

    #[test]
    fn a_type_checked_once_maps_the_same_and_a_bad_one_fails_every_time() {
        let m = mapping("App");
        for _ in 0..3 {
            assert_eq!(m.cedar_type("user", "subject.type").unwrap(), "App::user");
            let err = m.cedar_type("no good", "subject.type").unwrap_err();
            assert!(
                err.to_string().contains("is not a Cedar entity type name"),
                "{err}"
            );
        }
        // The configured map still comes first.
        assert_eq!(
            m.cedar_type("todo-list", "resource.type").unwrap(),
            "Todo::List"
        );
    }

    #[test]
    fn maps_the_four_parts() {
        let req = convert(
            &mapping("App"),
            json!({
                "subject": {"type": "user", "id": "alice", "properties": {"dept": "x"}},
                "action": {"name": "read", "properties": {"soft": true}},
                "resource": {"type": "todo-list", "id": "l1", "properties": {"owner": "alice"}},
                "context": {"ip": "10.0.0.1"},
                "unknown": 1
            }),
        )
        .unwrap();
        assert_eq!(req.principal, Some(Uid::new("App::user", "alice")));
        assert_eq!(req.action, Some(Uid::new("App::Action", "read")));
        // A mapped type is a full name: no namespace is put before it.
        assert_eq!(req.resource, Some(Uid::new("Todo::List", "l1")));
        assert_eq!(req.request_id, "r1");
        let Context::Record(context) = &req.context else {
            unreachable!()
        };
        assert_eq!(context["ip"], "10.0.0.1");
        assert_eq!(context["action"], json!({"soft": true}));
        // Properties are offered, for the evaluation to apply against the store.
        assert!(req.entities.is_empty());
        assert_eq!(
            req.properties,
            [
                (
                    Uid::new("App::user", "alice"),
                    json!({"dept": "x"}).as_object().unwrap().clone()
                ),
                (
                    Uid::new("Todo::List", "l1"),
                    json!({"owner": "alice"}).as_object().unwrap().clone()
                ),
            ]
        );
    }

    #[test]
    fn names_the_field_at_fault() {
        let m = mapping("");
        let ok = json!({"subject": {"type": "user", "id": "a"}, "action": {"name": "r"},
                        "resource": {"type": "doc", "id": "d"}});
        let cases = [
            ("subject", json!(null), "subject", "is required"),
            (
                "subject",
                json!("alice"),
                "subject",
                "must be a JSON object",
            ),
            ("subject", json!({"id": "a"}), "subject.type", "is required"),
            (
                "subject",
                json!({"type": "user", "id": 7}),
                "subject.id",
                "must be a string",
            ),
            (
                "resource",
                json!({"type": "todo list", "id": "a"}),
                "resource.type",
                "[authzen.types]",
            ),
            ("action", json!({}), "action.name", "is required"),
            (
                "action",
                json!({"name": "r", "properties": [1]}),
                "action.properties",
                "JSON object",
            ),
            ("context", json!([1]), "context", "must be a JSON object"),
        ];
        for (key, value, field, message) in cases {
            let mut body = ok.clone();
            body[key] = value;
            let e = convert(&m, body).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(message), "{e}");
        }
        let mut body = ok.clone();
        body["action"] = json!({"name": "r", "properties": {"a": 1}});
        body["context"] = json!({"action": 2});
        assert_eq!(convert(&m, body).unwrap_err().field, "context.action");
    }

    #[test]
    fn an_item_replaces_a_default_as_a_whole() {
        let top = json!({"subject": {"type": "user", "id": "a"}, "context": {"x": 1}});
        let item = json!({"context": {"y": 2}});
        let (top, item) = (top.as_object().unwrap(), item.as_object().unwrap());
        let parts = Parts::of(item).or(&Parts::of(top));
        assert_eq!(parts.context.as_deref(), Some(&json!({"y": 2})));
        assert_eq!(parts.subject.as_deref(), top.get("subject"));
        assert!(parts.resource.is_none());
    }
}
