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

use std::collections::HashSet;
use std::str::FromStr;

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entities, EntityId, EntityTypeName, EntityUid, Schema};

use super::AuthorizeError;
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
        if snapshot.schema.is_none() && uid.type_name().basename() == "Action" {
            return Err(AuthorizeError::ActionEntity(uid.to_string()));
        }
    }
    Ok(())
}

/// The request's entities plus the stored entities reachable from `roots`
/// and from the request's entities; see the module docs.
pub(super) fn slice(
    stored: &Entities,
    extra: Entities,
    roots: impl IntoIterator<Item = EntityUid>,
    schema: Option<&Schema>,
) -> Result<Entities, AuthorizeError> {
    let mut pending: Vec<EntityUid> = roots.into_iter().collect();
    for e in extra.iter() {
        pending.push(e.uid());
        edges(&extra, e, &mut pending);
    }
    let mut seen: HashSet<EntityUid> = HashSet::new();
    let mut picked = Vec::new();
    while let Some(uid) = pending.pop() {
        if !seen.contains(&uid) {
            if let Some(e) = stored.get(&uid) {
                edges(stored, e, &mut pending);
                picked.push(e.clone());
            }
            seen.insert(uid);
        }
    }
    // The stored set is already valid and transitively closed, so this
    // subset of it is too.
    let base =
        Entities::from_entities(picked, None).map_err(|e| AuthorizeError::Entities(Box::new(e)))?;
    base.add_entities(extra, schema).map_err(|e| match e {
        EntitiesError::Duplicate(_) => AuthorizeError::EntityConflict(Box::new(e)),
        other => AuthorizeError::Entities(Box::new(other)),
    })
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
        let sliced = slice(&stored, extra, roots, None).unwrap();
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
        assert!(slice(&stored, copy(1), [], None).is_ok());
        let err = slice(&stored, copy(2), [], None).unwrap_err();
        assert!(matches!(err, AuthorizeError::EntityConflict(_)), "{err:?}");
    }
}
