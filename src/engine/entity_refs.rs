//! The references between stored entities: parent edges and entity values
//! in attributes and tags. The slicer follows them per request; the loader
//! finds, once, the ones that point at no stored entity.

use std::collections::HashSet;

use cedar_policy::{Entities, Entity, EntityUid};
use cedar_policy_core::ast::{EntityUID, Literal, PartialValue, Value, ValueKind};

/// Pushes every entity `entity` points at: its ancestors (from `set`, where
/// it lives) and the entities in its attribute and tag values. Values are
/// walked in Cedar's own form: the public accessors copy each one.
pub(super) fn edges(set: &Entities, entity: &Entity, out: &mut Vec<EntityUid>) {
    let uid = entity.uid();
    out.extend(set.ancestors(&uid).into_iter().flatten().cloned());
    let entity = entity.as_ref();
    for (_, value) in entity.attrs().chain(entity.tags()) {
        // A residual (a value with `unknown`) names no entity it could reach.
        if let PartialValue::Value(value) = value {
            value_refs(value, out);
        }
    }
}

fn value_refs(value: &Value, out: &mut Vec<EntityUid>) {
    match &value.value {
        ValueKind::Lit(Literal::EntityUID(uid)) => out.push(EntityUid::from(EntityUID::clone(uid))),
        ValueKind::Set(set) => set.authoritative.iter().for_each(|v| value_refs(v, out)),
        ValueKind::Record(record) => record.values().for_each(|v| value_refs(v, out)),
        ValueKind::Lit(_) | ValueKind::ExtensionValue(_) => {}
    }
}

/// The uids stored entities name, as a parent or in a value, that no stored
/// entity defines. A request must not define them: it would graft its own
/// parents and attributes onto the stored hierarchy.
/// Large sets are walked on every core.
pub(super) fn dangling(set: &Entities) -> HashSet<EntityUid> {
    let walk = |part: &[&Entity]| {
        let mut named = Vec::new();
        for e in part {
            edges(set, e, &mut named);
        }
        named.retain(|u| set.get(u).is_none());
        named
    };
    let all: Vec<&Entity> = set.iter().collect();
    let parts = super::spread::over(&all, super::spread::cores(), walk);
    if parts.iter().any(Option::is_none) {
        // A part lost to a panic would hide its dangling uids: walk the set
        // here, where a panic fails the load.
        return walk(&all).into_iter().collect();
    }
    parts.into_iter().flatten().flatten().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::str::FromStr;

    use serde_json::json;

    use super::*;

    #[test]
    fn dangling_holds_undefined_parents_and_values_only() {
        let set = Entities::from_json_value(
            json!([
                {"uid": {"type": "User", "id": "a"}, "attrs": {
                    "boss": {"__entity": {"type": "User", "id": "ghost"}},
                    "peers": [{"__entity": {"type": "User", "id": "b"}}],
                }, "parents": [{"type": "Group", "id": "undefined"}, {"type": "Group", "id": "g"}]},
                {"uid": {"type": "User", "id": "b"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Group", "id": "g"}, "attrs": {}, "parents": [{"type": "Org", "id": "far"}]},
            ]),
            None,
        )
        .unwrap();
        let mut got: Vec<String> = dangling(&set).iter().map(ToString::to_string).collect();
        got.sort();
        assert_eq!(
            got,
            [r#"Group::"undefined""#, r#"Org::"far""#, r#"User::"ghost""#]
        );
        assert!(!dangling(&set).contains(&EntityUid::from_str(r#"User::"b""#).unwrap()));
    }

    #[test]
    fn a_set_walked_on_several_threads_finds_the_same_dangling_uids() {
        let mut all = Vec::new();
        for g in 0..4 {
            all.push(json!({"uid": {"type": "Group", "id": format!("g{g}")}, "attrs": {}, "parents": []}));
        }
        let n = 6_000;
        for i in 0..n {
            all.push(json!({
                "uid": {"type": "User", "id": format!("u{i}")},
                "attrs": {"next": {"__entity": {"type": "User", "id": format!("u{}", i + 1)}}},
                "parents": [{"type": "Group", "id": format!("g{}", i % 7)}],
            }));
        }
        let set = Entities::from_json_value(serde_json::Value::Array(all), None).unwrap();
        let mut got: Vec<String> = dangling(&set).iter().map(ToString::to_string).collect();
        got.sort();
        assert_eq!(
            got,
            [
                r#"Group::"g4""#,
                r#"Group::"g5""#,
                r#"Group::"g6""#,
                r#"User::"u6000""#
            ]
        );
    }
}
