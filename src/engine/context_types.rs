//! Request contexts built straight from JSON by the schema's context type
//! for the action.
//!
//! Cedar's own parse (`Context::from_json_value`) first tries every value as
//! an `unknown` escape, then tries the shapes an extension value may take,
//! and builds (and formats) a serde error for each miss: 40 % of an uncached
//! call that carries a context. Here the usual shapes are read directly into
//! the same `RestrictedExpression`s Cedar's parse makes. Anything else
//! (another shape, a missing or extra attribute, an escape this does not
//! read) is declined with `None`, and the caller takes Cedar's parse, so
//! every answer and every error message stays Cedar's.
//!
//! A context built here is checked against the schema once, by
//! `Request::new`, as Cedar's parse would be; the caller falls back to
//! Cedar's parse when that check fails, for Cedar's message. For one JSON
//! value and one schema type there is one value of that type, so a context
//! that passes the check is the one Cedar's parse gives.

use std::collections::HashMap;

use cedar_policy::EntityUid;
use cedar_policy_core::ast::{Context, RestrictedExpr};
use cedar_policy_core::extensions::Extensions;
use serde_json::{Map, Value as Json};
use smol_str::SmolStr;

use super::schema_types::{Attr, Constructor, Resolved, Ty, uid};

/// The context types of one policy set's actions.
#[derive(Debug, Default)]
pub struct ContextTypes {
    /// Without a schema, Cedar reads a context without types.
    schemaless: bool,
    /// Per action, its context record; an action missing here (one whose
    /// type this cannot read) takes Cedar's parse.
    by_action: HashMap<EntityUid, Ty>,
}

impl ContextTypes {
    /// For a policy set without a schema.
    pub fn schemaless() -> Self {
        Self {
            schemaless: true,
            by_action: HashMap::new(),
        }
    }

    /// The context types of a Cedar-syntax schema that Cedar has already
    /// accepted. An action whose type cannot be read is left out; if the
    /// schema cannot be resolved at all, every action is.
    pub fn from_cedarschema(text: &str) -> Self {
        Self::from_resolved(Resolved::cedarschema(text).as_ref())
    }

    /// The same, for a JSON-syntax schema.
    pub fn from_json_schema(text: &str) -> Self {
        Self::from_resolved(Resolved::json_schema(text).as_ref())
    }

    pub(crate) fn from_resolved(schema: Option<&Resolved>) -> Self {
        Self {
            schemaless: false,
            by_action: schema.map(Resolved::action_contexts).unwrap_or_default(),
        }
    }

    /// How many actions have a context type read here.
    pub fn typed_actions(&self) -> usize {
        self.by_action.len()
    }

    /// `context` as Cedar's parse for `action` would read it, or `None`
    /// where this cannot tell and Cedar's parse must answer.
    pub fn build(&self, action: &EntityUid, context: &Map<String, Json>) -> Option<Context> {
        let attrs = if self.schemaless {
            any_record(context)?
        } else {
            match self.by_action.get(action)? {
                Ty::Record(attrs) => record(attrs, context)?,
                _ => return None,
            }
        };
        Context::from_pairs(attrs, Extensions::all_available()).ok()
    }
}

/// A closed record's attributes, each read by its type.
fn record(attrs: &[Attr], json: &Map<String, Json>) -> Option<Vec<(SmolStr, RestrictedExpr)>> {
    let mut out = Vec::with_capacity(json.len());
    for attr in attrs {
        match json.get(attr.name.as_str()) {
            Some(v) => out.push((attr.name.clone(), value(&attr.ty, v)?)),
            None if attr.required => return None,
            None => {}
        }
    }
    // Every key was matched, or one is not in the schema.
    (out.len() == json.len()).then_some(out)
}

fn value(ty: &Ty, json: &Json) -> Option<RestrictedExpr> {
    Some(match (ty, json) {
        (Ty::Bool, Json::Bool(b)) => RestrictedExpr::val(*b),
        (Ty::Long, Json::Number(n)) => RestrictedExpr::val(n.as_i64()?),
        (Ty::String, Json::String(s)) => RestrictedExpr::val(s.as_str()),
        (Ty::Entity, Json::Object(m)) => match m.get("__entity") {
            Some(Json::Object(inner)) if m.len() == 1 => entity(inner)?,
            _ => entity(m)?,
        },
        (Ty::Extension(c), Json::String(s)) => c.call(s),
        (Ty::Extension(_), Json::Object(m)) => extension(m)?,
        (Ty::Set(element), Json::Array(items)) => RestrictedExpr::set(
            items
                .iter()
                .map(|v| value(element, v))
                .collect::<Option<Vec<_>>>()?,
        ),
        (Ty::Record(attrs), Json::Object(m)) => RestrictedExpr::record(record(attrs, m)?).ok()?,
        _ => return None,
    })
}

/// Cedar's reading without a schema: entities and extension values only
/// through their escapes.
fn any(json: &Json) -> Option<RestrictedExpr> {
    Some(match json {
        Json::Bool(b) => RestrictedExpr::val(*b),
        Json::Number(n) => RestrictedExpr::val(n.as_i64()?),
        Json::String(s) => RestrictedExpr::val(s.as_str()),
        Json::Array(items) => {
            RestrictedExpr::set(items.iter().map(any).collect::<Option<Vec<_>>>()?)
        }
        Json::Object(m) => match m.get("__entity") {
            Some(Json::Object(inner)) if m.len() == 1 => entity(inner)?,
            _ if m.contains_key("__extn") => extension(m)?,
            _ => RestrictedExpr::record(any_record(m)?).ok()?,
        },
        Json::Null => return None,
    })
}

fn any_record(json: &Map<String, Json>) -> Option<Vec<(SmolStr, RestrictedExpr)>> {
    json.iter()
        // Other escapes (`__expr`, a malformed `__entity`) are Cedar's to refuse.
        .map(|(k, v)| (!k.starts_with("__")).then(|| Some((k.as_str().into(), any(v)?)))?)
        .collect()
}

/// `{"type": .., "id": ..}` and nothing else.
fn entity(m: &Map<String, Json>) -> Option<RestrictedExpr> {
    let (Some(Json::String(t)), Some(Json::String(id)), 2) = (m.get("type"), m.get("id"), m.len())
    else {
        return None;
    };
    Some(RestrictedExpr::val(uid(t, id)?))
}

/// `{"__extn": {"fn": <constructor>, "arg": "<string>"}}` and nothing else;
/// `unknown` and other functions are Cedar's.
fn extension(m: &Map<String, Json>) -> Option<RestrictedExpr> {
    let (Some(Json::Object(call)), 1) = (m.get("__extn"), m.len()) else {
        return None;
    };
    let (Some(Json::String(f)), Some(Json::String(arg)), 2) =
        (call.get("fn"), call.get("arg"), call.len())
    else {
        return None;
    };
    Some(Constructor::of_function(f)?.call(arg))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::str::FromStr;

    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"
        namespace App {
          entity User;
          type Info = { labels: Set<String>, level?: Long };
          action view appliesTo {
            principal: User, resource: User,
            context: { ip: ipaddr, who: User, info: Info, ok: Bool,
                       at?: datetime, amount?: decimal }
          };
          action open appliesTo { principal: User, resource: User };
        }
    "#;

    fn action(id: &str) -> EntityUid {
        EntityUid::from_str(&format!("App::Action::\"{id}\"")).unwrap()
    }

    fn cedar(json: &Json, action: &EntityUid) -> Option<Json> {
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(SCHEMA).unwrap();
        cedar_policy::Context::from_json_value(json.clone(), Some((&schema, action)))
            .ok()
            .map(|c| c.to_json_value().unwrap())
    }

    fn ours(types: &ContextTypes, json: &Json, action: &EntityUid) -> Option<Json> {
        types
            .build(action, json.as_object().unwrap())
            .map(|c| c.to_json_value().unwrap())
    }

    #[test]
    fn the_usual_shapes_read_as_cedar_reads_them_and_the_rest_are_declined() {
        let types = ContextTypes::from_cedarschema(SCHEMA);
        assert_eq!(types.typed_actions(), 2);
        let view = action("view");
        let usual = json!({
            "ip": "10.0.0.1", "who": {"type": "App::User", "id": "a"},
            "info": {"labels": ["x", "y"]}, "ok": true,
            "at": "2026-12-03T10:00:00Z", "amount": {"__extn": {"fn": "decimal", "arg": "1.50"}}
        });
        let escaped_who = json!({
            "ip": "10.0.0.1", "who": {"__entity": {"type": "App::User", "id": "a"}},
            "info": {"labels": [], "level": 3}, "ok": false
        });
        for json in [&usual, &escaped_who] {
            let built = ours(&types, json, &view);
            assert!(built.is_some(), "{json}");
            assert_eq!(built, cedar(json, &view), "{json}");
        }
        assert_eq!(
            ours(&types, &json!({}), &action("open")),
            cedar(&json!({}), &action("open"))
        );

        // Each of these Cedar refuses or reads in a way left to it.
        let declined = [
            json!({"ip": "10.0.0.1", "who": {"type": "App::User", "id": "a"}, "info": {"labels": []}}),
            json!({"ip": "10.0.0.1", "who": {"type": "App::User", "id": "a"}, "info": {"labels": []}, "ok": true, "extra": 1}),
            json!({"ip": "10.0.0.1", "who": {"type": "App :: User", "id": "a"}, "info": {"labels": []}, "ok": true}),
            json!({"ip": {"__extn": {"fn": "unknown", "arg": "u"}}, "who": {"type": "App::User", "id": "a"}, "info": {"labels": []}, "ok": true}),
            json!({"ip": "10.0.0.1", "who": {"type": "App::User", "id": "a"}, "info": {"labels": [1]}, "ok": true}),
            json!({"ip": "not an ip", "who": {"type": "App::User", "id": "a"}, "info": {"labels": []}, "ok": true}),
            json!({"ip": "10.0.0.1", "who": {"type": "App::User", "id": "a"}, "info": {"labels": [], "level": 1.5}, "ok": true}),
        ];
        for json in &declined {
            assert_eq!(ours(&types, json, &view), None, "{json}");
        }
        // An action the schema does not declare is Cedar's to report.
        assert_eq!(ours(&types, &usual, &action("nope")), None);
    }

    #[test]
    fn a_json_schema_gives_the_same_types() {
        let (fragment, _) = cedar_policy::SchemaFragment::from_cedarschema_str(SCHEMA).unwrap();
        let json = fragment.to_json_string().unwrap();
        let types = ContextTypes::from_json_schema(&json);
        assert_eq!(types.typed_actions(), 2);
        let view = action("view");
        let context = json!({
            "ip": "10.0.0.1", "who": {"type": "App::User", "id": "a"},
            "info": {"labels": ["x"]}, "ok": true
        });
        let built = ours(&types, &context, &view);
        assert!(built.is_some());
        assert_eq!(built, cedar(&context, &view));
        assert_eq!(
            ContextTypes::from_json_schema("not json").typed_actions(),
            0
        );
    }

    #[test]
    fn a_constructor_call_is_the_one_cedars_constructors_make() {
        for c in [
            Constructor::Ip,
            Constructor::Decimal,
            Constructor::Datetime,
            Constructor::Duration,
        ] {
            let ours = c.call("10.0.0.1");
            let cedars = c.call_by_name("10.0.0.1");
            assert_eq!(&ours, cedars.as_ref(), "{c:?}");
            assert_eq!(ours.to_string(), cedars.as_ref().to_string());
        }
        let ip = Constructor::Ip.call("1.2.3.4");
        assert_eq!(ip.to_string(), r#"ip("1.2.3.4")"#);
    }

    #[test]
    fn without_a_schema_entities_and_extensions_need_their_escapes() {
        let types = ContextTypes::schemaless();
        let any_action = action("view");
        let json = json!({
            "n": 1, "s": "x", "b": true, "set": [1, "two"],
            "rec": {"type": "App::User", "id": "a"},
            "who": {"__entity": {"type": "App::User", "id": "a"}},
            "ip": {"__extn": {"fn": "ip", "arg": "10.0.0.0/8"}}
        });
        let cedar = cedar_policy::Context::from_json_value(json.clone(), None)
            .unwrap()
            .to_json_value()
            .unwrap();
        assert_eq!(ours(&types, &json, &any_action), Some(cedar));
        for declined in [
            json!({"x": null}),
            json!({"x": {"__expr": "1"}}),
            json!({"x": {"__extn": {"fn": "unknown", "arg": "u"}}}),
            json!({"x": 18446744073709551615u64}),
        ] {
            assert_eq!(ours(&types, &declined, &any_action), None, "{declined}");
        }
    }
}
