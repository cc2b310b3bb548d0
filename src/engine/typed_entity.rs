//! One entity of an entities file, read straight from its JSON text into
//! the `Entity` Cedar's parse builds.
//!
//! Cedar's `Entity::from_json_str` deserializes the entity into a tree of
//! JSON values, then tries each attribute value as every escape and shape
//! in turn (building a serde error for each miss), then builds expressions
//! and evaluates them: 270 allocations for an entity of four attributes,
//! and most of a large load. Here the text is read once, by the schema's
//! type for each attribute (or Cedar's reading without a schema), into the
//! same expressions, and Cedar's evaluator evaluates them as its parse
//! does (equal sets and references of one load then share one value; see
//! [`ValuePool`]). Anything else (an action, a type the schema does not
//! declare or that is not read here, a missing or extra attribute, a key
//! given twice, tags, any escape or shape not read here) is declined with
//! `None`, and the caller takes Cedar's parse of that entity, so what is
//! refused, and how, stays Cedar's.
//!
//! An entity read here is checked against the schema by the caller's
//! `Entities::from_entities`, exactly as one from Cedar's parse is. For one
//! JSON value and one schema type there is one value of that type.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use cedar_policy::Entity;
use cedar_policy_core::ast::{
    self, EntityUID, Literal, PartialValue, RestrictedExpr, Value, ValueKind,
};
use cedar_policy_core::entities::conformance::EntitySchemaConformanceChecker;
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::CoreSchema;
use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use smol_str::SmolStr;

use super::schema_types::{Attr, Constructor, Resolved, Ty, uid};

/// Each entity type's attributes, or Cedar's reading without a schema.
#[derive(Debug)]
pub(crate) struct EntityShapes {
    /// `None`: no schema.
    by_type: Option<HashMap<ast::EntityType, Box<[Attr]>>>,
}

impl EntityShapes {
    pub(crate) fn schemaless() -> Self {
        Self { by_type: None }
    }

    /// From a resolved schema; without one (a schema that did not resolve),
    /// no entity is read here.
    pub(crate) fn from_resolved(schema: Option<&Resolved>) -> Self {
        Self {
            by_type: Some(schema.map(Resolved::entity_shapes).unwrap_or_default()),
        }
    }

    /// How `t`'s attributes are read, or `None` when they are Cedar's to read.
    fn of(&self, t: &ast::EntityType) -> Option<Reading<'_>> {
        if t.is_action() {
            // Cedar checks action entities against the schema's own.
            return None;
        }
        match &self.by_type {
            None => Some(Reading::Any),
            Some(by_type) => Some(Reading::Record(by_type.get(t)?)),
        }
    }
}

/// Equal attribute values of many entities, kept once.
///
/// A directory repeats its sets and references (the same roles, tags and
/// owners on thousands of entities), and each set Cedar builds costs about
/// 1 KB. Cedar's values are immutable and hold their contents behind an
/// `Arc`, so equal ones can share one. Only sets of literals and entity
/// references are shared: an extension value keeps the text it was written
/// as, and two equal ones may have been written differently.
#[derive(Debug, Default)]
pub(super) struct ValuePool(BTreeSet<Value>);

impl ValuePool {
    fn share(&mut self, value: PartialValue) -> PartialValue {
        let PartialValue::Value(value) = value else {
            return value;
        };
        let shared = match &value.value {
            ValueKind::Set(set) => set.fast.is_some(),
            ValueKind::Lit(Literal::EntityUID(_)) => true,
            _ => false,
        };
        if !shared {
            return PartialValue::Value(value);
        }
        if let Some(kept) = self.0.get(&value) {
            return PartialValue::Value(kept.clone());
        }
        self.0.insert(value.clone());
        PartialValue::Value(value)
    }
}

/// One entity of `text` (a single JSON object), or `None` where Cedar's parse
/// must read it.
pub(crate) fn read(text: &str, shapes: &EntityShapes) -> Option<Entity> {
    // One entity of a request: nothing to share its values with.
    read_core(text, shapes, None).map(Entity::from)
}

/// [`read`], in Cedar's own form, its values shared through `pool` if any.
pub(super) fn read_core(
    text: &str,
    shapes: &EntityShapes,
    pool: Option<&mut ValuePool>,
) -> Option<ast::Entity> {
    let mut de = serde_json::Deserializer::from_str(text);
    let entity = de.deserialize_map(EntityVisitor { shapes, pool }).ok()?;
    de.end().ok()?;
    Some(entity)
}

/// [`read`], then checked against `schema` as Cedar's `Entity::from_json_str`
/// checks the one entity it parses: `Some` exactly where that gives the same
/// entity, `None` where it must answer (or refuse).
pub(crate) fn read_checked(
    text: &str,
    shapes: &EntityShapes,
    schema: Option<&cedar_policy::Schema>,
) -> Option<Entity> {
    let entity = read(text, shapes)?;
    if let Some(schema) = schema {
        let schema = CoreSchema::new(schema.as_ref());
        EntitySchemaConformanceChecker::new(&schema, Extensions::all_available())
            .validate_entity(entity.as_ref())
            .ok()?;
    }
    Some(entity)
}

/// Any failure: the entity is declined, never refused here.
fn decline<E: de::Error>() -> E {
    E::custom("declined")
}

struct EntityVisitor<'a> {
    shapes: &'a EntityShapes,
    pool: Option<&'a mut ValuePool>,
}

impl<'de> Visitor<'de> for EntityVisitor<'_> {
    type Value = ast::Entity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an entity")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut uid: Option<EntityUID> = None;
        let mut attrs = None;
        let mut parents = None;
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "uid" if uid.is_none() => {
                    uid = Some(map.next_value_seed(UidSeed { escape: true })?)
                }
                // The attributes' types come from the uid's type, so the uid
                // comes first, as Cedar writes entities.
                "attrs" if attrs.is_none() => {
                    let t = uid.as_ref().ok_or_else(decline::<A::Error>)?.entity_type();
                    let reading = self.shapes.of(t).ok_or_else(decline::<A::Error>)?;
                    attrs = Some(map.next_value_seed(RecordSeed(reading))?);
                }
                "parents" if parents.is_none() => parents = Some(map.next_value_seed(UidsSeed)?),
                // `tags`, a key given twice, or one Cedar ignores.
                _ => return Err(decline()),
            }
        }
        let (Some(uid), Some(attrs), Some(parents)) = (uid, attrs, parents) else {
            return Err(decline());
        };
        // Each value evaluated as Cedar's `Entity::new` evaluates it.
        let eval = RestrictedEvaluator::new(Extensions::all_available());
        let mut pool = self.pool;
        let attrs = attrs
            .into_iter()
            .map(|(k, v): (SmolStr, RestrictedExpr)| {
                let v = eval
                    .partial_interpret(v.as_borrowed())
                    .map_err(|_| decline())?;
                Ok((
                    k,
                    match pool.as_deref_mut() {
                        Some(pool) => pool.share(v),
                        None => v,
                    },
                ))
            })
            .collect::<Result<Vec<_>, A::Error>>()?;
        Ok(ast::Entity::new_with_attr_partial_value(
            uid,
            attrs,
            HashSet::new(),
            parents,
            std::iter::empty(),
        ))
    }
}

/// How a record's attributes are read.
#[derive(Clone, Copy)]
enum Reading<'a> {
    /// Without a schema: Cedar's untyped reading.
    Any,
    /// These attributes, closed.
    Record(&'a [Attr]),
}

/// How one value is read.
#[derive(Clone, Copy)]
enum ValueSeed<'a> {
    Any,
    Typed(&'a Ty),
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = RestrictedExpr;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = RestrictedExpr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Cedar value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        match self {
            Self::Any | Self::Typed(Ty::Bool) => Ok(RestrictedExpr::val(b)),
            Self::Typed(_) => Err(decline()),
        }
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        match self {
            Self::Any | Self::Typed(Ty::Long) => Ok(RestrictedExpr::val(n)),
            Self::Typed(_) => Err(decline()),
        }
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        self.visit_i64(i64::try_from(n).map_err(|_| decline::<E>())?)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        match self {
            Self::Any | Self::Typed(Ty::String) => Ok(RestrictedExpr::val(s)),
            Self::Typed(Ty::Extension(c)) => Ok(c.call(s)),
            Self::Typed(_) => Err(decline()),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let element = match self {
            Self::Any => Self::Any,
            Self::Typed(Ty::Set(element)) => Self::Typed(element),
            Self::Typed(_) => return Err(decline()),
        };
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(element)? {
            items.push(v);
        }
        Ok(RestrictedExpr::set(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        match self {
            Self::Typed(Ty::Record(attrs)) => {
                record(&mut map, Reading::Record(attrs), None).and_then(record_expr)
            }
            Self::Typed(Ty::Entity) => Ok(RestrictedExpr::val(
                UidSeed { escape: true }.visit_map(map)?,
            )),
            Self::Typed(Ty::Extension(_)) => match map.next_key::<&str>()? {
                Some("__extn") => extension(map),
                _ => Err(decline()),
            },
            Self::Any => {
                let first = map.next_key::<&str>()?.ok_or_else(decline::<A::Error>)?;
                match first {
                    "__entity" => {
                        let uid = map.next_value_seed(UidSeed { escape: false })?;
                        no_more_keys(&mut map)?;
                        Ok(RestrictedExpr::val(uid))
                    }
                    "__extn" => extension(map),
                    // `__expr` and other escapes are Cedar's to refuse.
                    _ if first.starts_with("__") => Err(decline()),
                    _ => record(&mut map, Reading::Any, Some(first)).and_then(record_expr),
                }
            }
            Self::Typed(_) => Err(decline()),
        }
    }
}

fn record_expr<E: de::Error>(pairs: Vec<(SmolStr, RestrictedExpr)>) -> Result<RestrictedExpr, E> {
    RestrictedExpr::record(pairs).map_err(|_| decline())
}

/// A record's attributes, each once; with `first`, its first key has been
/// read already.
fn record<'de, A: MapAccess<'de>>(
    map: &mut A,
    reading: Reading<'_>,
    first: Option<&'de str>,
) -> Result<Vec<(SmolStr, RestrictedExpr)>, A::Error> {
    let mut out: Vec<(SmolStr, RestrictedExpr)> = Vec::new();
    let mut key = match first {
        Some(k) => Some(k),
        None => map.next_key::<&str>()?,
    };
    while let Some(k) = key {
        // Cedar refuses a key given twice; a record has few keys.
        if out.iter().any(|(seen, _)| seen == k) {
            return Err(decline());
        }
        let (name, seed) = match reading {
            Reading::Any if k.starts_with("__") => return Err(decline()),
            Reading::Any => (SmolStr::new(k), ValueSeed::Any),
            Reading::Record(attrs) => {
                let attr = attrs
                    .iter()
                    .find(|a| a.name == k)
                    .ok_or_else(decline::<A::Error>)?;
                (attr.name.clone(), ValueSeed::Typed(&attr.ty))
            }
        };
        out.push((name, map.next_value_seed(seed)?));
        key = map.next_key::<&str>()?;
    }
    if let Reading::Record(attrs) = reading
        && attrs
            .iter()
            .any(|a| a.required && !out.iter().any(|(k, _)| *k == a.name))
    {
        return Err(decline());
    }
    Ok(out)
}

/// The rest of `{"__extn": {"fn": <constructor>, "arg": "<string>"}}`.
fn extension<'de, A: MapAccess<'de>>(mut map: A) -> Result<RestrictedExpr, A::Error> {
    let call = map.next_value_seed(CallSeed)?;
    no_more_keys(&mut map)?;
    Ok(call)
}

fn no_more_keys<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    match map.next_key::<&str>()? {
        None => Ok(()),
        Some(_) => Err(decline()),
    }
}

struct CallSeed;

impl<'de> DeserializeSeed<'de> for CallSeed {
    type Value = RestrictedExpr;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CallSeed {
    type Value = RestrictedExpr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an extension call")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut function, mut arg) = (None, None);
        while let Some(k) = map.next_key::<&str>()? {
            match k {
                "fn" if function.is_none() => function = Some(map.next_value::<&str>()?),
                "arg" if arg.is_none() => arg = Some(map.next_value::<&str>()?),
                _ => return Err(decline()),
            }
        }
        // `unknown` and other functions are Cedar's.
        match (function.and_then(Constructor::of_function), arg) {
            (Some(c), Some(arg)) => Ok(c.call(arg)),
            _ => Err(decline()),
        }
    }
}

/// A uid: `{"type": .., "id": ..}`, or with `escape` also
/// `{"__entity": {"type": .., "id": ..}}` (once, not nested).
#[derive(Clone, Copy)]
struct UidSeed {
    escape: bool,
}

impl<'de> DeserializeSeed<'de> for UidSeed {
    type Value = EntityUID;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for UidSeed {
    type Value = EntityUID;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an entity uid")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let key = map.next_key::<&str>()?.ok_or_else(decline::<A::Error>)?;
        uid_map(key, &mut map, self.escape)
    }
}

/// The rest of a uid object whose first key is `first`; see [`UidSeed`].
fn uid_map<'de, A: MapAccess<'de>>(
    first: &str,
    map: &mut A,
    escape: bool,
) -> Result<EntityUID, A::Error> {
    if first == "__entity" && escape {
        let inner = map.next_value_seed(UidSeed { escape: false })?;
        no_more_keys(map)?;
        return Ok(inner);
    }
    let (mut t, mut id) = (None, None);
    let mut key = Some(first);
    while let Some(k) = key {
        match k {
            "type" if t.is_none() => t = Some(map.next_value::<&str>()?),
            "id" if id.is_none() => id = Some(map.next_value::<&str>()?),
            _ => return Err(decline()),
        }
        key = map.next_key::<&str>()?;
    }
    match (t, id) {
        (Some(t), Some(id)) => uid(t, id).ok_or_else(decline),
        _ => Err(decline()),
    }
}

/// An entity's parents: a list of uids.
struct UidsSeed;

impl<'de> DeserializeSeed<'de> for UidsSeed {
    type Value = HashSet<EntityUID>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for UidsSeed {
    type Value = HashSet<EntityUID>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of uids")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = HashSet::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(u) = seq.next_element_seed(UidSeed { escape: true })? {
            out.insert(u);
        }
        Ok(out)
    }
}

struct RecordSeed<'a>(Reading<'a>);

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Vec<(SmolStr, RestrictedExpr)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Vec<(SmolStr, RestrictedExpr)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        record(&mut map, self.0, None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use cedar_policy::{Entities, EvalResult, Schema};
    use serde_json::{Value as Json, json};

    use super::*;

    const SCHEMA: &str = r#"
        namespace App {
          type Info = { labels: Set<String>, level?: Long, boss?: User };
          entity Org { name: String };
          entity User in [Org] {
            name: String, age: Long, admin: Bool, ip: ipaddr, limit?: decimal,
            since?: datetime, ttl?: duration, manager?: User, peers: Set<User>, info: Info
          };
          entity Doc in [Org] { owner: User } tags String;
          entity Color enum ["red"];
          action read appliesTo { principal: User, resource: Doc };
        }
    "#;

    fn shapes() -> EntityShapes {
        EntityShapes::from_resolved(Resolved::cedarschema(SCHEMA).as_ref())
    }

    /// One entity of each kind, written as a schema lets one write them
    /// (`schema`) or with every escape spelled out.
    fn sample(schema: bool) -> Vec<Json> {
        let user = |id: &str| {
            if schema {
                json!({"type": "App::User", "id": id})
            } else {
                json!({"__entity": {"type": "App::User", "id": id}})
            }
        };
        let ext = |f: &str, arg: &str| {
            if schema {
                json!(arg)
            } else {
                json!({"__extn": {"fn": f, "arg": arg}})
            }
        };
        vec![
            json!({"uid": {"type": "App::Org", "id": "o"}, "attrs": {"name": "O"}, "parents": []}),
            json!({"uid": user("a"), "attrs": {
                "name": "A", "age": 30, "admin": true, "ip": ext("ip", "10.0.0.0/8"),
                "peers": [user("b")], "info": {"labels": ["x"]}
            }, "parents": [{"type": "App::Org", "id": "o"}]}),
            json!({"uid": {"__entity": {"type": "App::User", "id": "b"}}, "attrs": {
                "name": "B", "age": -1, "admin": false, "ip": {"__extn": {"fn": "ip", "arg": "::1"}},
                "limit": ext("decimal", "1.50"), "since": ext("datetime", "2026-12-03T10:00:00Z"),
                "ttl": ext("duration", "1h30m"), "manager": user("a"), "peers": [],
                "info": {"labels": [], "level": 2, "boss": user("a")}
            }, "parents": [{"type": "App::Org", "id": "o"}, {"__entity": {"type": "App::Org", "id": "p"}}]}),
            json!({"uid": {"type": "App::Doc", "id": "d"}, "attrs": {"owner": user("a")}, "parents": []}),
            json!({"uid": {"type": "App::Doc", "id": "t"}, "attrs": {"owner": user("a")}, "parents": [], "tags": {"k": "v"}}),
            json!({"uid": {"type": "App::Color", "id": "red"}, "attrs": {}, "parents": []}),
            json!({"uid": {"type": "App::Action", "id": "read"}, "attrs": {}, "parents": []}),
        ]
    }

    /// Ours against Cedar's per-entity parse: whatever is read here, Cedar
    /// reads the same, or refuses and so does the schema check every read
    /// entity meets in `Entities::from_entities`. Checked, it is read here
    /// exactly where Cedar's parse accepts it. Returns whether it was read
    /// here.
    fn agrees(text: &str, shapes: &EntityShapes, schema: Option<&Schema>) -> bool {
        let cedar = Entity::from_json_str(text, schema);
        let checked = read_checked(text, shapes, schema);
        let Some(ours) = read(text, shapes) else {
            assert!(checked.is_none());
            return false;
        };
        match cedar {
            Ok(cedar) => {
                assert!(
                    ours.as_ref().deep_eq(cedar.as_ref()),
                    "{text}\n{ours}\n{cedar}"
                );
                assert!(
                    checked.is_some(),
                    "{text}: Cedar accepts, the check refuses"
                );
            }
            Err(e) => {
                assert!(
                    Entities::from_entities([ours], schema).is_err(),
                    "{text}: read here and checked, Cedar says {e}"
                );
                assert!(checked.is_none(), "{text}: Cedar says {e}");
            }
        }
        true
    }

    #[test]
    fn usual_entities_read_as_cedar_reads_them() {
        let schema = Schema::from_cedarschema_str(SCHEMA).unwrap().0;
        let typed = shapes();
        let read_here: Vec<bool> = sample(true)
            .iter()
            .map(|e| agrees(&e.to_string(), &typed, Some(&schema)))
            .collect();
        // Tags, an enumerated type and an action are Cedar's.
        assert_eq!(read_here, [true, true, true, true, false, false, false]);
        let untyped = EntityShapes::schemaless();
        let read_here: Vec<bool> = sample(false)
            .iter()
            .map(|e| agrees(&e.to_string(), &untyped, None))
            .collect();
        assert_eq!(read_here, [true, true, true, true, false, true, false]);
        // Without a schema, an entity or extension needs its escape: the
        // schema's shorthand reads as a string and a record, as in Cedar.
        let a = &sample(true)[1];
        assert!(agrees(&a.to_string(), &untyped, None));
        let a = read(&a.to_string(), &untyped).unwrap();
        assert!(matches!(a.attr("ip"), Some(Ok(EvalResult::String(_)))));
        let Some(Ok(EvalResult::Set(peers))) = a.attr("peers") else {
            panic!("{a}")
        };
        assert!(peers.iter().all(|p| matches!(p, EvalResult::Record(_))));
        // A schema that did not resolve reads nothing.
        let none = EntityShapes::from_resolved(None);
        assert!(!agrees(&sample(true)[0].to_string(), &none, Some(&schema)));
    }

    /// Every path to a value inside `v`, as JSON pointers.
    fn pointers(v: &Json, at: &str, out: &mut Vec<String>) {
        let children: Vec<(String, &Json)> = match v {
            Json::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
            Json::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => Vec::new(),
        };
        for (step, child) in children {
            let here = format!("{at}/{step}");
            out.push(here.clone());
            pointers(child, &here, out);
        }
    }

    /// Each entity of the sample, with one value replaced by each shape
    /// Cedar reads differently, removed, or given a sibling; and with a key
    /// given twice. Whatever is read here must be what Cedar reads.
    #[test]
    fn broken_entities_read_as_cedar_reads_them() {
        let replacements = [
            json!(null),
            json!(1),
            json!(1.5),
            json!(18_446_744_073_709_551_615_u64),
            json!("s"),
            json!("10.0.0.1"),
            json!("1.50"),
            json!("2026-12-03"),
            json!("1h"),
            json!(true),
            json!([]),
            json!(["a", 1]),
            json!([{"type": "App::User", "id": "u"}]),
            json!({}),
            json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}}),
            json!({"__extn": {"fn": "decimal", "arg": "1.5"}}),
            json!({"__extn": {"fn": "unknown", "arg": "u"}}),
            json!({"__extn": {"fn": "ip", "args": ["10.0.0.1"]}}),
            json!({"__extn": {"fn": "ip", "arg": "10.0.0.1"}, "x": 1}),
            json!({"fn": "ip", "arg": "10.0.0.1"}),
            json!({"__entity": {"type": "App::User", "id": "u"}}),
            json!({"__entity": {"type": "App::User", "id": "u"}, "x": 1}),
            json!({"__entity": {"__entity": {"type": "App::User", "id": "u"}}}),
            json!({"type": "App::User", "id": "u"}),
            json!({"type": "App::Org", "id": "o"}),
            json!({"type": "App :: User", "id": "u"}),
            json!({"type": "App::User", "id": "u", "x": 1}),
            json!({"type": "App::User"}),
            json!({"__expr": "1"}),
            json!({"labels": []}),
            json!({"labels": ["x"], "level": 2, "boss": {"type": "App::User", "id": "u"}}),
        ];
        let schema = Schema::from_cedarschema_str(SCHEMA).unwrap().0;
        let (typed, untyped) = (shapes(), EntityShapes::schemaless());
        let (mut compared, mut read_here) = (0, 0);
        let mut check = |text: &str| {
            compared += 2;
            read_here += usize::from(agrees(text, &typed, Some(&schema)));
            read_here += usize::from(agrees(text, &untyped, None));
        };
        for entity in sample(true).into_iter().chain(sample(false)) {
            check(&entity.to_string());
            let mut all = Vec::new();
            pointers(&entity, "", &mut all);
            for pointer in &all {
                for r in &replacements {
                    let mut e = entity.clone();
                    *e.pointer_mut(pointer).unwrap() = r.clone();
                    check(&e.to_string());
                }
                let (parent, last) = pointer.rsplit_once('/').unwrap();
                let mut e = entity.clone();
                match e.pointer_mut(parent).unwrap() {
                    Json::Object(m) => drop(m.remove(last)),
                    Json::Array(items) => drop(items.remove(last.parse::<usize>().unwrap())),
                    _ => unreachable!("a pointer ends in a key or an index"),
                }
                check(&e.to_string());
                let mut e = entity.clone();
                if let Some(Json::Object(m)) = e.pointer_mut(pointer) {
                    m.insert("extra".into(), json!("x"));
                    check(&e.to_string());
                }
            }
            // A key given twice, which a JSON value cannot hold.
            let text = entity.to_string();
            for key in [
                "\"uid\":",
                "\"attrs\":",
                "\"parents\":",
                "\"name\":",
                "\"labels\":",
                "\"type\":",
            ] {
                if let Some(at) = text.find(key) {
                    let twice = format!(
                        "{}\"{}\":1,{}",
                        &text[..at],
                        &key[1..key.len() - 2],
                        &text[at..]
                    );
                    check(&twice);
                    assert!(
                        read(&twice, &typed).is_none() && read(&twice, &untyped).is_none(),
                        "{twice}"
                    );
                }
            }
        }
        println!("{compared} compared, {read_here} read here");
        assert!(compared > 3000, "{compared}");
        assert!(read_here > 300, "{read_here}");
    }

    #[test]
    fn equal_sets_and_references_are_kept_once_and_read_as_cedar_reads_them() {
        let shapes = shapes();
        let schema = Schema::from_cedarschema_str(SCHEMA).unwrap().0;
        let user = |id: &str, labels: Json, ip: &str| {
            json!({"uid": {"type": "App::User", "id": id}, "attrs": {
                "name": id, "age": 1, "admin": false, "ip": ip,
                "manager": {"type": "App::User", "id": "boss"},
                "peers": [{"type": "App::User", "id": "boss"}], "info": {"labels": labels}
            }, "parents": []})
            .to_string()
        };
        let texts = [
            user("a", json!(["x", "y"]), "10.0.0.1"),
            user("b", json!(["y", "x"]), "10.0.0.1/32"),
            user("c", json!(["z"]), "10.0.0.1"),
        ];
        let mut pool = ValuePool::default();
        let read: Vec<ast::Entity> = texts
            .iter()
            .map(|t| read_core(t, &shapes, Some(&mut pool)).unwrap())
            .collect();
        for (text, ours) in texts.iter().zip(&read) {
            let cedar = Entity::from_json_str(text, Some(&schema)).unwrap();
            assert!(ours.deep_eq(cedar.as_ref()), "{text}");
        }
        let kind = |e: &ast::Entity, attr: &str| match e.get(attr) {
            Some(PartialValue::Value(v)) => v.value.clone(),
            other => panic!("{attr}: {other:?}"),
        };
        let set = |e: &ast::Entity, attr: &str| match kind(e, attr) {
            ValueKind::Set(set) => set.authoritative,
            other => panic!("{attr}: {other:?}"),
        };
        let labels = |e: &ast::Entity| match kind(e, "info") {
            ValueKind::Record(r) => r,
            other => panic!("info: {other:?}"),
        };
        let uid = |e: &ast::Entity| match kind(e, "manager") {
            ValueKind::Lit(Literal::EntityUID(uid)) => uid,
            other => panic!("manager: {other:?}"),
        };
        let ext = |e: &ast::Entity| match kind(e, "ip") {
            ValueKind::ExtensionValue(v) => v,
            other => panic!("ip: {other:?}"),
        };
        // A set of references and a reference, equal in all three: one each.
        assert!(std::sync::Arc::ptr_eq(
            &set(&read[0], "peers"),
            &set(&read[2], "peers")
        ));
        assert!(std::sync::Arc::ptr_eq(&uid(&read[0]), &uid(&read[1])));
        // Records, and the sets inside them, are not shared.
        assert!(!std::sync::Arc::ptr_eq(
            &labels(&read[0]),
            &labels(&read[1])
        ));
        // Equal extension values written differently keep their own text.
        assert_eq!(ext(&read[0]), ext(&read[1]));
        assert!(!std::sync::Arc::ptr_eq(&ext(&read[0]), &ext(&read[1])));
        assert!(!std::sync::Arc::ptr_eq(&ext(&read[0]), &ext(&read[2])));
        // Without a shared pool, nothing is shared.
        let alone = read_core(&texts[2], &shapes, None).unwrap();
        assert!(!std::sync::Arc::ptr_eq(
            &set(&read[0], "peers"),
            &set(&alone, "peers")
        ));
    }
}
