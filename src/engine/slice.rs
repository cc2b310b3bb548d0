//! The slice of the stored entities one request is evaluated against,
//! when it carries entities of its own.
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

use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entities, Entity, EntityUid};

use super::decision::AuthorizeError;
use super::entity_cache::{EntityCache, EntityLookups};
use super::entity_refs::edges;

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

    use std::str::FromStr;

    use super::*;
    use crate::engine::request_entities::{ancestors, json_refs};

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
}
