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
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast::{Context, Name, RestrictedExpr};
use cedar_policy_core::extensions::Extensions;
use serde_json::{Map, Value as Json};
use smol_str::SmolStr;

use crate::type_names::type_name;

/// Deepest common-type reference chain followed; Cedar rejects cycles, so
/// this only guards the compile against a schema it did not check.
const MAX_TYPE_DEPTH: usize = 32;

/// The context types of one policy set's actions.
#[derive(Debug, Default)]
pub struct ContextTypes {
    /// Without a schema, Cedar reads a context without types.
    schemaless: bool,
    /// Per action, its context record; an action missing here (one whose
    /// type this cannot read) takes Cedar's parse.
    by_action: HashMap<EntityUid, Ty>,
}

/// A schema type, as far as reading JSON needs it.
#[derive(Debug)]
enum Ty {
    Bool,
    Long,
    String,
    /// The entity type is not needed to read the uid; `Request::new` checks it.
    Entity,
    Extension(Constructor),
    Set(Box<Ty>),
    /// Closed: an attribute not listed declines.
    Record(Box<[Attr]>),
}

#[derive(Debug)]
struct Attr {
    name: SmolStr,
    ty: Ty,
    required: bool,
}

/// The one-string constructor of an extension type, which Cedar applies to
/// a string where the schema expects that type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Constructor {
    Ip,
    Decimal,
    Datetime,
    Duration,
}

/// Each constructor, the extension type it makes and its function's name.
const CONSTRUCTORS: [(Constructor, &str, &str); 4] = [
    (Constructor::Ip, "ipaddr", "ip"),
    (Constructor::Decimal, "decimal", "decimal"),
    (Constructor::Datetime, "datetime", "datetime"),
    (Constructor::Duration, "duration", "duration"),
];

impl Constructor {
    fn of_type(name: &str) -> Option<Self> {
        let name = name.strip_prefix("__cedar::").unwrap_or(name);
        CONSTRUCTORS.iter().find(|c| c.1 == name).map(|c| c.0)
    }

    /// By the function's name, as an `__extn` escape gives it.
    fn of_function(name: &str) -> Option<Self> {
        CONSTRUCTORS.iter().find(|c| c.2 == name).map(|c| c.0)
    }

    fn call(self, arg: &str) -> RestrictedExpr {
        // Cedar's `new_ip` and the others parse the function's name on every
        // call, which costs more than the rest of a context; these are the
        // same names, parsed once.
        static NAMES: LazyLock<Vec<(Constructor, Name)>> = LazyLock::new(|| {
            CONSTRUCTORS
                .iter()
                .filter_map(|c| Some((c.0, Name::parse_unqualified_name(c.2).ok()?)))
                .collect()
        });
        if let Some((_, name)) = NAMES.iter().find(|n| n.0 == self) {
            let arg = RestrictedExpr::val(arg);
            return RestrictedExpr::call_extension_fn(name.clone(), [arg]);
        }
        self.call_by_name(arg).as_ref().clone()
    }

    /// Through Cedar's public constructors.
    fn call_by_name(self, arg: &str) -> cedar_policy::RestrictedExpression {
        use cedar_policy::RestrictedExpression as Public;
        match self {
            Self::Ip => Public::new_ip(arg),
            Self::Decimal => Public::new_decimal(arg),
            Self::Datetime => Public::new_datetime(arg),
            Self::Duration => Public::new_duration(arg),
        }
    }
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
        let by_action = cedar_policy::schema_str_to_json_with_resolved_types(text)
            .ok()
            .and_then(|(json, _)| compile(&json))
            .unwrap_or_default();
        Self {
            schemaless: false,
            by_action,
        }
    }

    /// The same, for a JSON-syntax schema.
    pub fn from_json_schema(text: &str) -> Self {
        match cedar_policy::SchemaFragment::from_json_str(text).map(|f| f.to_cedarschema()) {
            Ok(Ok(cedar)) => Self::from_cedarschema(&cedar),
            _ => Self::default(),
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

/// Per action, its context type, from Cedar's resolved JSON schema.
fn compile(schema: &Json) -> Option<HashMap<EntityUid, Ty>> {
    let namespaces = schema.as_object()?;
    let mut common = HashMap::new();
    for (ns, def) in namespaces {
        for (name, ty) in def
            .get("commonTypes")
            .and_then(Json::as_object)
            .into_iter()
            .flatten()
        {
            common.insert(qualified(ns, name), ty);
        }
    }
    let mut by_action = HashMap::new();
    for (ns, def) in namespaces {
        let Some(actions) = def.get("actions").and_then(Json::as_object) else {
            continue;
        };
        let Ok(action_type) = EntityTypeName::from_str(&qualified(ns, "Action")) else {
            continue;
        };
        for (name, action) in actions {
            // Without `appliesTo` no request fits; Cedar's parse says why.
            let Some(applies) = action.get("appliesTo").and_then(Json::as_object) else {
                continue;
            };
            let ty = match applies.get("context") {
                None => Some(Ty::Record(Box::new([]))),
                Some(ty) => resolve(ty, &common, 0),
            };
            if let Some(ty @ Ty::Record(_)) = ty {
                let uid =
                    EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(name));
                by_action.insert(uid, ty);
            }
        }
    }
    Some(by_action)
}

fn qualified(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}::{name}")
    }
}

/// One type of the resolved schema; `None` for one this does not read.
fn resolve(ty: &Json, common: &HashMap<String, &Json>, depth: usize) -> Option<Ty> {
    if depth > MAX_TYPE_DEPTH {
        return None;
    }
    let name = ty.get("type")?.as_str()?;
    // A common type may be named like a builtin; the resolved schema's own
    // definitions come first, as in Cedar's resolution.
    if let Some(def) = common.get(name) {
        return resolve(def, common, depth + 1);
    }
    Some(match name {
        "Record" => {
            if ty.get("additionalAttributes").and_then(Json::as_bool) == Some(true) {
                return None;
            }
            let mut attrs = Vec::new();
            for (name, attr) in ty.get("attributes")?.as_object()? {
                attrs.push(Attr {
                    name: name.as_str().into(),
                    ty: resolve(attr, common, depth + 1)?,
                    required: attr.get("required").and_then(Json::as_bool).unwrap_or(true),
                });
            }
            Ty::Record(attrs.into())
        }
        "Set" => Ty::Set(Box::new(resolve(ty.get("element")?, common, depth + 1)?)),
        "Entity" => Ty::Entity,
        "Extension" => Ty::Extension(Constructor::of_type(ty.get("name")?.as_str()?)?),
        "String" | "__cedar::String" => Ty::String,
        "Long" | "__cedar::Long" => Ty::Long,
        "Bool" | "Boolean" | "__cedar::Bool" => Ty::Bool,
        other => Ty::Extension(Constructor::of_type(other)?),
    })
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

/// `{"type": .., "id": ..}` and nothing else. A type spelled with only name
/// characters is in the normal form Cedar's parse requires.
fn entity(m: &Map<String, Json>) -> Option<RestrictedExpr> {
    let (Some(Json::String(t)), Some(Json::String(id)), 2) = (m.get("type"), m.get("id"), m.len())
    else {
        return None;
    };
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    {
        return None;
    }
    let name = type_name(t).ok()?;
    let uid = EntityUid::from_type_name_and_id(name, EntityId::new(id));
    Some(RestrictedExpr::val(
        cedar_policy_core::ast::EntityUID::from(uid),
    ))
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
