//! `limits.max_ancestor_edges`: Cedar closes a request's entity hierarchy
//! transitively, so a chain of n entities makes n²/2 ancestor edges. This
//! counts them on the JSON, before Cedar builds anything, and stops as soon
//! as the count passes the limit.

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;

use crate::pipeline::error::InvalidField;

type Key<'a> = (&'a str, &'a str);

/// `{"type", "id"}`, or the same under `__entity`.
fn uid(v: &Json) -> Option<Key<'_>> {
    let v = v.get("__entity").unwrap_or(v);
    Some((v.get("type")?.as_str()?, v.get("id")?.as_str()?))
}

/// Refuses entities (with a batch's `shared` ones) whose transitive
/// ancestor edges number more than `max`.
pub(super) fn check(entities: &[Json], shared: &[Json], max: usize) -> Result<(), InvalidField> {
    let mut parents: HashMap<Key<'_>, Vec<Key<'_>>> = HashMap::new();
    for e in entities.iter().chain(shared) {
        // Most request entities name no parent: they need no map entry.
        let (Some(id), Some(Json::Array(ps))) = (e.get("uid").and_then(uid), e.get("parents"))
        else {
            continue;
        };
        if ps.is_empty() {
            continue;
        }
        parents
            .entry(id)
            .or_default()
            .extend(ps.iter().filter_map(uid));
    }
    let mut edges = 0usize;
    let mut seen = HashSet::new();
    let mut pending = Vec::new();
    for (&start, direct) in &parents {
        seen.clear();
        seen.insert(start);
        pending.extend(direct.iter().copied());
        while let Some(p) = pending.pop() {
            if !seen.insert(p) {
                continue;
            }
            edges += 1;
            if edges > max {
                return Err(InvalidField::new(
                    "entities",
                    format!(
                        "the entities' hierarchy has more than {max} ancestor edges (`limits.max_ancestor_edges`)"
                    ),
                ));
            }
            if let Some(next) = parents.get(&p) {
                pending.extend(next.iter().copied());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use serde_json::json;

    use super::*;

    fn chain(n: usize) -> Vec<Json> {
        (0..n)
            .map(|i| {
                json!({"uid": {"type": "G", "id": i.to_string()}, "attrs": {},
                       "parents": [{"__entity": {"type": "G", "id": (i + 1).to_string()}}]})
            })
            .collect()
    }

    #[test]
    fn a_chain_counts_its_whole_closure() {
        // n entities in a chain, each also naming the undefined next one:
        // n + (n-1) + … + 1 edges.
        let n = 100;
        let edges = n * (n + 1) / 2;
        assert!(check(&chain(n), &[], edges).is_ok());
        let err = check(&chain(n), &[], edges - 1).unwrap_err();
        assert!(err.message.contains("max_ancestor_edges"), "{err}");
        // Split between a batch's shared entities and an item's own.
        let all = chain(n);
        assert!(check(&all[..50], &all[50..], edges - 1).is_err());
    }

    #[test]
    fn cycles_and_diamonds_end() {
        let e = |id: &str, ps: &[&str]| {
            json!({"uid": {"type": "G", "id": id}, "parents":
                ps.iter().map(|p| json!({"type": "G", "id": p})).collect::<Vec<_>>()})
        };
        let set = [
            e("a", &["b", "c"]),
            e("b", &["d"]),
            e("c", &["d"]),
            e("d", &["a"]),
        ];
        // a: b c d; b: d a c; c: d a b; d: a b c.
        assert!(check(&set, &[], 12).is_ok());
        assert!(check(&set, &[], 11).is_err());
    }
}
