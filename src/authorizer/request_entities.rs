//! The entities one request is evaluated against, when it carries entities
//! of its own.
//!
//! Merging a request's entities into a copy of the stored set costs O(store)
//! per request. Instead this builds a small set: the request's entities plus
//! every stored entity reachable from the request's roots (principal,
//! action, resource, entities named in the context, the request's entities,
//! and the entities the candidate policies name), closed under parent edges
//! and entity references in attribute and tag values. Evaluation can only
//! reach an entity along those paths, so the answer is the same as with the
//! full merge. Request entities are then added with Cedar's own
//! `add_entities`, so a request entity that redefines a stored one differently
//! fails exactly as it did against the full set.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid};
use serde_json::{Map, Value as Json, json};

use super::{AuthorizeError, DropReason, DroppedProperty, EntityCache, EntityLookups};
use crate::policy_store::{Snapshot, edges};

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
pub(super) fn check_claims(snapshot: &Snapshot, extra: &Entities) -> Result<(), AuthorizeError> {
    for e in extra.iter() {
        let uid = e.uid();
        if snapshot.dangling.contains(&uid) {
            return Err(AuthorizeError::StoredReference(uid.to_string()));
        }
        if snapshot
            .stored_only_types
            .contains(&uid.type_name().to_string())
        {
            return Err(AuthorizeError::StoredOnly(uid.to_string()));
        }
        if snapshot.schema.is_none() && uid.type_name().basename() == "Action" {
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

/// Sorts `offered` out against `snapshot`: the directory is the source of
/// truth for what it stores, so a stored attribute (or parent) is never
/// overridden; a property the stored entity lacks is added for this
/// request, if the schema (when there is one) declares it; an entity a
/// stored one only names gets nothing. Only a property that is not valid
/// Cedar JSON at all is an error, as in any request entity.
pub(super) fn apply_properties(
    snapshot: &Snapshot,
    offered: Vec<(EntityUid, Map<String, Json>)>,
) -> Result<Offered, AuthorizeError> {
    let mut out = Offered::default();
    let schema = snapshot.schema.as_ref();
    for (uid, props) in offered {
        let mut drop = |property: &str, why: DropReason| {
            out.dropped.push(DroppedProperty {
                entity: uid.to_string(),
                property: property.to_string(),
                why,
            });
        };
        if snapshot.dangling.contains(&uid) {
            props.keys().for_each(|k| drop(k, DropReason::NamedByStore));
            continue;
        }
        let Some(stored) = snapshot.entities.get(&uid) else {
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
        let base = stored.to_json_value().map_err(entities_error)?;
        let mut merged = base.clone();
        let mut added = false;
        for (name, value) in props {
            if base["attrs"].get(&name).is_some() {
                drop(&name, DropReason::StoredAttribute);
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

/// The request's entities plus the stored entities reachable from `roots`
/// and from the request's entities; see the module docs.
///
/// With `memo` (the cache that parsed `extra`, and `extra`'s key in it),
/// the result is remembered by that key and the uids of the stored
/// entities picked: those determine it, so a request with the same set
/// reaching the same stored entities skips the merge and its closure.
pub(super) fn slice(
    stored: &Entities,
    extra: Entities,
    overrides: &HashMap<EntityUid, Entity>,
    roots: impl IntoIterator<Item = EntityUid>,
    memo: Option<(&EntityCache, Vec<u8>, &mut EntityLookups)>,
) -> Result<Entities, AuthorizeError> {
    // Nothing stored to reach: the request's set, already closed and
    // checked, is the whole slice (a sidecar fed only inline entities).
    if stored.is_empty() && overrides.is_empty() {
        return Ok(extra);
    }
    let mut pending: Vec<EntityUid> = roots.into_iter().collect();
    for e in extra.iter() {
        pending.push(e.uid());
        edges(&extra, e, &mut pending);
    }
    let mut seen: HashSet<EntityUid> = HashSet::new();
    let mut picked = Vec::new();
    while let Some(uid) = pending.pop() {
        if !seen.contains(&uid) {
            // An override has the stored entity's parents, so `stored`
            // still gives its ancestors; its added values may name more.
            if let Some(e) = overrides.get(&uid).or_else(|| stored.get(&uid)) {
                edges(stored, e, &mut pending);
                picked.push(e.clone());
            }
            seen.insert(uid);
        }
    }
    if picked.is_empty() {
        // Adding to an empty set would only close `extra` again.
        return Ok(extra);
    }
    // Overrides are this request's own; a slice with them is not reused.
    let mut memo = memo
        .filter(|_| overrides.is_empty())
        .and_then(|(cache, key, lookups)| Some((cache, cache.slice_key(key, &picked)?, lookups)));
    if let Some((cache, key, lookups)) = memo.as_mut()
        && let Some(hit) = cache.slice(key)
    {
        lookups.slice_hits += 1;
        return Ok(hit);
    }
    // The stored set is already valid and transitively closed, so this
    // subset of it is too (overrides change attributes only).
    let base =
        Entities::from_entities(picked, None).map_err(|e| AuthorizeError::Entities(Box::new(e)))?;
    // The request's entities were checked against the schema when they
    // were parsed; checking them again here would find nothing new.
    let merged = base.add_entities(extra, None).map_err(|e| match e {
        EntitiesError::Duplicate(_) => AuthorizeError::EntityConflict(Box::new(e)),
        other => AuthorizeError::Entities(Box::new(other)),
    })?;
    if let Some((cache, key, _)) = memo {
        cache.remember_slice(key, &merged);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn uid(s: &str) -> EntityUid {
        EntityUid::from_str(s).unwrap()
    }

    #[test]
    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn slice_holds_exactly_what_the_request_reaches() {
        let mut stored = vec![
            json!({"uid": {"type": "Org", "id": "o"}, "attrs": {}, "parents": []}),
            json!({"uid": {"type": "Group", "id": "g"}, "attrs": {}, "parents": [{"type": "Org", "id": "o"}]}),
            json!({"uid": {"type": "User", "id": "boss"}, "attrs": {}, "parents": []}),
            json!({"uid": {"type": "User", "id": "owner"}, "attrs": {"manager": {"__entity": {"type": "User", "id": "boss"}}}, "parents": []}),
            json!({"uid": {"type": "Doc", "id": "d"}, "attrs": {"meta": {"owners": [{"__entity": {"type": "User", "id": "owner"}}]}}, "parents": []}),
            json!({"uid": {"type": "Team", "id": "lit"}, "attrs": {}, "parents": []}),
            json!({"uid": {"type": "User", "id": "ctx"}, "attrs": {}, "parents": []}),
        ];
        stored.extend((0..100).map(|i| {
            json!({"uid": {"type": "User", "id": format!("other{i}")}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}]})
        }));
        let stored = Entities::from_json_value(json!(stored), None).unwrap();
        let extra = Entities::from_json_value(
            json!([{"uid": {"type": "User", "id": "me"}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}]}]),
            None,
        )
        .unwrap();
        let mut roots = vec![
            uid(r#"User::"me""#),
            uid(r#"Action::"read""#),
            uid(r#"Doc::"d""#),
            uid(r#"Team::"lit""#),
        ];
        json_refs(
            &json!({"who": {"__entity": {"type": "User", "id": "ctx"}}}),
            &mut roots,
        );
        let sliced = slice(&stored, extra, &HashMap::new(), roots, None).unwrap();
        let got: BTreeSet<String> = sliced.iter().map(|e| e.uid().to_string()).collect();
        let want: BTreeSet<String> = [
            r#"Doc::"d""#,
            r#"Group::"g""#,
            r#"Org::"o""#,
            r#"Team::"lit""#,
            r#"User::"boss""#,
            r#"User::"ctx""#,
            r#"User::"me""#,
            r#"User::"owner""#,
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(got, want);
        // The request entity's ancestors cross into the stored hierarchy.
        let me = uid(r#"User::"me""#);
        let mut anc = ancestors(&stored, Some(&sliced), &me);
        anc.sort_by_key(ToString::to_string);
        assert_eq!(anc, [uid(r#"Group::"g""#), uid(r#"Org::"o""#)]);
    }

    #[test]
    #[expect(clippy::unwrap_used, reason = "test input is valid")]
    fn a_changed_copy_of_a_stored_entity_conflicts() {
        let stored = Entities::from_json_value(
            json!([{"uid": {"type": "User", "id": "a"}, "attrs": {"level": 1}, "parents": []}]),
            None,
        )
        .unwrap();
        let copy = |level: i64| {
            Entities::from_json_value(
                json!([{"uid": {"type": "User", "id": "a"}, "attrs": {"level": level}, "parents": []}]),
                None,
            )
            .unwrap()
        };
        assert!(slice(&stored, copy(1), &HashMap::new(), [], None).is_ok());
        let err = slice(&stored, copy(2), &HashMap::new(), [], None).unwrap_err();
        assert!(matches!(err, AuthorizeError::EntityConflict(_)), "{err:?}");
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
        let snapshot = build(read_dir(dir.path()).unwrap(), &LoadOptions::default(), 1).unwrap();
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
        let d = super::super::authorize(&snapshot, query(offered), OnForbidError::Deny).unwrap();
        assert!(d.allow, "{d:?}");
        assert_eq!(d.dropped_properties.len(), 2);
        let d = super::super::authorize(&snapshot, query(Vec::new()), OnForbidError::Deny).unwrap();
        assert!(!d.allow, "{d:?}");
        assert!(d.dropped_properties.is_empty());
    }
}
