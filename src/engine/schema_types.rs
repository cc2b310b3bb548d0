//! The schema's types as far as reading JSON values by them needs: each
//! action's context record and each entity type's attributes, taken from
//! Cedar's own resolution of the schema (common types resolved, names
//! qualified). A leaf: the context reading and the entity reading use it.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast::{EntityType, EntityUID, Name, RestrictedExpr};
use serde_json::Value as Json;
use smol_str::SmolStr;

use super::type_names::type_name;

/// Deepest common-type reference chain followed; Cedar rejects cycles, so
/// this only guards the compile against a schema it did not check.
const MAX_TYPE_DEPTH: usize = 32;

/// A schema type, as far as reading JSON needs it.
#[derive(Debug)]
pub(crate) enum Ty {
    Bool,
    Long,
    String,
    /// The entity type is not needed to read the uid; the schema check of
    /// the request or the entity checks it.
    Entity,
    Extension(Constructor),
    Set(Box<Ty>),
    /// Closed: an attribute not listed declines.
    Record(Box<[Attr]>),
}

#[derive(Debug)]
pub(crate) struct Attr {
    pub(crate) name: SmolStr,
    pub(crate) ty: Ty,
    pub(crate) required: bool,
}

/// The one-string constructor of an extension type, which Cedar applies to
/// a string where the schema expects that type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Constructor {
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
    pub(crate) fn of_type(name: &str) -> Option<Self> {
        let name = name.strip_prefix("__cedar::").unwrap_or(name);
        CONSTRUCTORS.iter().find(|c| c.1 == name).map(|c| c.0)
    }

    /// By the function's name, as an `__extn` escape gives it.
    pub(crate) fn of_function(name: &str) -> Option<Self> {
        CONSTRUCTORS.iter().find(|c| c.2 == name).map(|c| c.0)
    }

    pub(crate) fn call(self, arg: &str) -> RestrictedExpr {
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
    pub(crate) fn call_by_name(self, arg: &str) -> cedar_policy::RestrictedExpression {
        use cedar_policy::RestrictedExpression as Public;
        match self {
            Self::Ip => Public::new_ip(arg),
            Self::Decimal => Public::new_decimal(arg),
            Self::Datetime => Public::new_datetime(arg),
            Self::Duration => Public::new_duration(arg),
        }
    }
}

/// A schema as Cedar resolves it, in its JSON form.
pub(crate) struct Resolved(Json);

impl Resolved {
    /// A Cedar-syntax schema that Cedar has already accepted; `None` when it
    /// cannot be resolved, and then nothing is read by its types.
    pub(crate) fn cedarschema(text: &str) -> Option<Self> {
        cedar_policy::schema_str_to_json_with_resolved_types(text)
            .ok()
            .map(|(json, _)| Self(json))
    }

    /// The same, for a JSON-syntax schema.
    pub(crate) fn json_schema(text: &str) -> Option<Self> {
        match cedar_policy::SchemaFragment::from_json_str(text).map(|f| f.to_cedarschema()) {
            Ok(Ok(cedar)) => Self::cedarschema(&cedar),
            _ => None,
        }
    }

    fn namespaces(&self) -> impl Iterator<Item = (&String, &Json)> {
        self.0.as_object().into_iter().flatten()
    }

    fn common_types(&self) -> HashMap<String, &Json> {
        let mut common = HashMap::new();
        for (ns, def) in self.namespaces() {
            for (name, ty) in members(def, "commonTypes") {
                common.insert(qualified(ns, name), ty);
            }
        }
        common
    }

    /// Per action, its context record; an action whose context type is not
    /// read here is left out.
    pub(crate) fn action_contexts(&self) -> HashMap<EntityUid, Ty> {
        let common = self.common_types();
        let mut by_action = HashMap::new();
        for (ns, def) in self.namespaces() {
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
        by_action
    }

    /// Per entity type, its attributes. Enumerated types, and types with an
    /// attribute whose type is not read here, are left out.
    pub(crate) fn entity_shapes(&self) -> HashMap<EntityType, Box<[Attr]>> {
        let common = self.common_types();
        let mut by_type = HashMap::new();
        for (ns, def) in self.namespaces() {
            for (name, entity) in members(def, "entityTypes") {
                if entity.get("enum").is_some() {
                    continue;
                }
                let attrs = match entity.get("shape") {
                    None => Some(Ty::Record(Box::new([]))),
                    Some(shape) => resolve(shape, &common, 0),
                };
                if let (Some(Ty::Record(attrs)), Ok(t)) =
                    (attrs, EntityTypeName::from_str(&qualified(ns, name)))
                {
                    by_type.insert(t.as_ref().clone(), attrs);
                }
            }
        }
        by_type
    }
}

/// The named definitions under `key` of a namespace's JSON.
fn members<'a>(def: &'a Json, key: &str) -> impl Iterator<Item = (&'a String, &'a Json)> {
    def.get(key).and_then(Json::as_object).into_iter().flatten()
}

fn qualified(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}::{name}")
    }
}

/// One type of the resolved schema; `None` for one this does not read.
pub(crate) fn resolve(ty: &Json, common: &HashMap<String, &Json>, depth: usize) -> Option<Ty> {
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

/// The uid `type`::`id`, where `type` is spelled as Cedar's JSON parse
/// requires: only name characters, so no spaces or comments.
pub(crate) fn uid(t: &str, id: &str) -> Option<EntityUID> {
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    {
        return None;
    }
    let name = type_name(t).ok()?;
    Some(EntityUid::from_type_name_and_id(name, EntityId::new(id)).into())
}
