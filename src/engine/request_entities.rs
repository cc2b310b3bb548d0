//! A request's own entities: parsed and checked against what the stored
//! entities claim, offered properties sorted out, and the ancestors of a
//! uid across both sets. The slice they are evaluated against is
//! [`super::slice`]'s.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid};
use serde_json::{Map, Value as Json, json};

use super::Engine;
use super::decision::{AuthorizeError, DropReason, DroppedProperty};

/// A batch's shared entities, parsed and checked once for all its items.
#[derive(Clone, Debug)]
pub struct SharedEntities(Entities);

impl SharedEntities {
    /// Parses `entities` (Cedar JSON) against `engine`'s schema, by the
    /// same rules as a request's own.
    pub fn parse(
        engine: &Engine,
        entities: Vec<serde_json::Value>,
    ) -> Result<Self, AuthorizeError> {
        parse(engine, entities).map(Self)
    }

    pub(super) fn entities(&self) -> &Entities {
        &self.0
    }
}

/// A request's entities (Cedar JSON), parsed against `engine`'s schema and
/// checked against what the stored entities claim.
pub(super) fn parse(
    engine: &Engine,
    entities: Vec<serde_json::Value>,
) -> Result<Entities, AuthorizeError> {
    let parsed =
        Entities::from_json_value(serde_json::Value::Array(entities), engine.schema.as_ref())
            .map_err(|e| AuthorizeError::Entities(Box::new(e)))?;
    check_claims(engine, &parsed)?;
    Ok(parsed)
}

/// Every ancestor of `uid` in the union of `stored` and `extra`.
///
/// Both sets are transitively closed on their own, but a chain may cross
/// from one to the other, so the union is walked.
pub(super) fn ancestors(
    stored: &Entities,
    extra: Option<&Entities>,
    uid: &EntityUid,
) -> Vec<EntityUid> {
    let Some(extra) = extra else {
        return stored
            .ancestors(uid)
            .map(|a| a.cloned().collect())
            .unwrap_or_default();
    };
    let mut seen: HashSet<EntityUid> = HashSet::new();
    let mut pending = vec![uid.clone()];
    while let Some(u) = pending.pop() {
        for set in [stored, extra] {
            for a in set.ancestors(&u).into_iter().flatten() {
                if seen.insert(a.clone()) {
                    pending.push(a.clone());
                }
            }
        }
    }
    seen.into_iter().collect()
}

/// Collects, into `out`, the uid of every object shaped like an entity
/// reference (`{"type", "id"}`, possibly under `__entity`) in a JSON value.
/// A superset is harmless: an extra stored entity changes no answer.
pub(super) fn json_refs(value: &serde_json::Value, out: &mut Vec<EntityUid>) {
    match value {
        serde_json::Value::Object(map) => {
            if let (Some(serde_json::Value::String(t)), Some(serde_json::Value::String(id))) =
                (map.get("type"), map.get("id"))
                && let Ok(t) = EntityTypeName::from_str(t)
            {
                out.push(EntityUid::from_type_name_and_id(t, EntityId::new(id)));
            }
            map.values().for_each(|v| json_refs(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_refs(v, out)),
        _ => {}
    }
}

/// Refuses request entities that would change what the stored ones mean:
/// one a stored entity names without defining, and, without a schema, any
/// action. (With a schema, Cedar requires a request's action entities to
/// equal the schema's.)
pub(super) fn check_claims(engine: &Engine, extra: &Entities) -> Result<(), AuthorizeError> {
    for e in extra.iter() {
        let uid = e.uid();
        if engine.dangling.contains(&uid) {
            return Err(AuthorizeError::StoredReference(uid.to_string()));
        }
        if engine
            .stored_only_types
            .contains(&uid.type_name().to_string())
        {
            return Err(AuthorizeError::StoredOnly(uid.to_string()));
        }
        if engine.schema.is_none() && uid.type_name().basename() == "Action" {
            return Err(AuthorizeError::ActionEntity(uid.to_string()));
        }
    }
    Ok(())
}

/// Offered properties (see [`super::Query::properties`]), sorted out.
#[derive(Debug, Default)]
pub(super) struct Offered {
    /// Stored entities with the properties they lacked added: they stand
    /// in for the stored ones in this request's slice.
    pub(super) overrides: HashMap<EntityUid, Entity>,
    /// Entities nothing stores: request entities with these attributes.
    pub(super) unstored: Vec<Json>,
    pub(super) dropped: Vec<DroppedProperty>,
}

fn entities_error(e: EntitiesError) -> AuthorizeError {
    AuthorizeError::Entities(Box::new(e))
}

/// Sorts `offered` out against `engine`: the directory is the source of
/// truth for what it stores, so a stored attribute (or parent) is never
/// overridden, and a stored entity is closed: a property it lacks is added
/// for this request only where its type's attributes are open to offers
/// (`authzen.open_properties`) and the schema (when there is one) declares
/// it; an entity a stored one only names gets nothing. Only a property that is not valid
/// Cedar JSON at all is an error, as in any request entity.
pub(super) fn apply_properties(
    engine: &Engine,
    offered: Vec<(EntityUid, Map<String, Json>)>,
) -> Result<Offered, AuthorizeError> {
    let mut out = Offered::default();
    let schema = engine.schema.as_ref();
    for (uid, props) in offered {
        let mut drop = |property: &str, why: DropReason| {
            out.dropped.push(DroppedProperty {
                entity: uid.to_string(),
                property: property.to_string(),
                why,
            });
        };
        if engine.dangling.contains(&uid) {
            props.keys().for_each(|k| drop(k, DropReason::NamedByStore));
            continue;
        }
        let Some(stored) = engine.entities.get(&uid) else {
            // The properties move into the entity: a request's own are
            // often most of its bytes.
            let mut entity = Map::new();
            entity.insert(
                "uid".into(),
                json!({"type": uid.type_name().to_string(), "id": uid.id().unescaped()}),
            );
            entity.insert("attrs".into(), Json::Object(props));
            entity.insert("parents".into(), Json::Array(Vec::new()));
            out.unstored.push(Json::Object(entity));
            continue;
        };
        let open = engine.open_properties.get(&uid.type_name().to_string());
        let base = stored.to_json_value().map_err(entities_error)?;
        let mut merged = base.clone();
        let mut added = false;
        for (name, value) in props {
            if base["attrs"].get(&name).is_some() {
                drop(&name, DropReason::StoredAttribute);
                continue;
            }
            if !open.is_some_and(|attrs| attrs.contains(&name)) {
                drop(&name, DropReason::StoredEntity);
                continue;
            }
            if schema.is_some() {
                // Each one alone, so one undeclared property drops only itself.
                let mut alone = base.clone();
                alone["attrs"][&name] = value.clone();
                if Entity::from_json_value(alone, schema).is_err() {
                    drop(&name, DropReason::NotInSchema);
                    continue;
                }
            }
            merged["attrs"][&name] = value;
            added = true;
        }
        if added {
            let merged = Entity::from_json_value(merged, schema).map_err(entities_error)?;
            out.overrides.insert(uid, merged);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn uid(s: &str) -> EntityUid {
        EntityUid::from_str(s).unwrap()
    }

    #[test]
    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn offered_properties_add_to_stored_entities_and_never_override() {
        use crate::config::OnForbidError;
        use crate::policy_store::{LoadOptions, build, read_dir};

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.cedar"),
            r#"permit (principal, action, resource in Folder::"f")
               when { resource.label == "x" && resource.owner == "bob" && resource.friend.name == "alice" };"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("e.entities.json"),
            json!([
                {"uid": {"type": "Folder", "id": "f"}, "attrs": {}, "parents": []},
                {"uid": {"type": "User", "id": "alice"}, "attrs": {"name": "alice"}, "parents": []},
                {"uid": {"type": "Doc", "id": "d"}, "attrs": {"owner": "bob"},
                 "parents": [{"type": "Folder", "id": "f"}]},
                {"uid": {"type": "Doc", "id": "d2"}, "attrs": {"by": {"__entity": {"type": "User", "id": "ghost"}}},
                 "parents": []},
            ])
            .to_string(),
        )
        .unwrap();
        // `Doc`'s `label` and `friend` are open to offers; nothing else is.
        let mut open = LoadOptions::default();
        open.compile.open_properties = [(
            "Doc".to_string(),
            ["label", "friend"].map(String::from).into_iter().collect(),
        )]
        .into();
        let closed = build(read_dir(dir.path()).unwrap(), &LoadOptions::default(), 1)
            .unwrap()
            .engine;
        let snapshot = build(read_dir(dir.path()).unwrap(), &open, 1)
            .unwrap()
            .engine;
        let attrs = |v: serde_json::Value| v.as_object().unwrap().clone();
        let offered = vec![
            (
                uid(r#"Doc::"d""#),
                attrs(json!({"owner": "alice", "label": "x",
                             "friend": {"__entity": {"type": "User", "id": "alice"}}})),
            ),
            (uid(r#"User::"ghost""#), attrs(json!({"name": "g"}))),
            (uid(r#"User::"new""#), attrs(json!({"a": 1}))),
        ];
        let sorted = apply_properties(&snapshot, offered.clone()).unwrap();
        let why: Vec<(String, String, &str)> = sorted
            .dropped
            .iter()
            .map(|d| (d.entity.clone(), d.property.clone(), d.why.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                (r#"Doc::"d""#.into(), "owner".into(), "stored_attribute"),
                (r#"User::"ghost""#.into(), "name".into(), "named_by_store"),
            ]
        );
        assert_eq!(sorted.overrides.len(), 1);
        assert_eq!(sorted.unstored.len(), 1);
        assert_eq!(sorted.unstored[0]["uid"]["id"], "new");

        // Evaluated: the stored owner and parent stand, the added label and
        // the entity it names (found through the added value) are there.
        let query = |properties| super::super::Query {
            principal: uid(r#"User::"alice""#),
            action: uid(r#"Action::"read""#),
            resource: uid(r#"Doc::"d""#),
            context: Map::new(),
            entities: Vec::new(),
            properties,
        };
        let d = snapshot
            .decide(
                query(offered.clone()),
                &mut super::super::Scratch::new(OnForbidError::Deny),
            )
            .unwrap();
        assert!(d.allow, "{d:?}");
        assert_eq!(d.dropped_properties.len(), 2);
        let d = snapshot
            .decide(
                query(Vec::new()),
                &mut super::super::Scratch::new(OnForbidError::Deny),
            )
            .unwrap();
        assert!(!d.allow, "{d:?}");
        assert!(d.dropped_properties.is_empty());

        // By default a stored entity is closed: what it lacks is dropped too.
        let d = closed
            .decide(
                query(offered.clone()),
                &mut super::super::Scratch::new(OnForbidError::Deny),
            )
            .unwrap();
        assert!(!d.allow, "{d:?}");
        let mut why: Vec<(&str, &str)> = d
            .dropped_properties
            .iter()
            .map(|d| (d.property.as_str(), d.why.as_str()))
            .collect();
        why.sort_unstable();
        assert_eq!(
            why,
            [
                ("friend", "stored_entity"),
                ("label", "stored_entity"),
                ("name", "named_by_store"),
                ("owner", "stored_attribute"),
            ]
        );
    }
}
