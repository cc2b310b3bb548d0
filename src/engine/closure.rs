//! The transitive closure of a large entity set's hierarchy, on every core.
//!
//! Cedar's `Entities::from_entities` closes the hierarchy on one thread, by
//! a strongly-connected-components search keyed by `EntityUID`: after the
//! per-entity parse was spread over the cores, it was most of what is left
//! of a large load. Here the hierarchy is walked once on integer indices
//! (finding cycles and uids given twice, for which Cedar's own call is left
//! to report), and each entity's ancestors are then added on every core.
//! The set is handed to Cedar's `from_entities` with the closure marked as
//! done, so the schema check and the schema's actions are still Cedar's.

use std::collections::HashMap;

use cedar_policy::{Entities, Schema};
use cedar_policy_core::ast::{Entity, EntityUID};
use cedar_policy_core::entities::TCComputation;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::CoreSchema;

/// `entities` as one set, as `cedar_policy::Entities::from_entities` builds
/// it; `None` when the hierarchy has a cycle, a uid is given twice or
/// Cedar's schema check refuses the set, which Cedar's own parse must report.
pub(super) fn entities(
    mut entities: Vec<Entity>,
    schema: Option<&Schema>,
    threads: usize,
) -> Option<Entities> {
    close(&mut entities, threads)?;
    let schema = schema.map(|s| CoreSchema::new(s.as_ref()));
    cedar_policy_core::entities::Entities::from_entities(
        entities,
        schema.as_ref(),
        TCComputation::AssumeAlreadyComputed,
        Extensions::all_available(),
    )
    .ok()
    .map(Entities::from)
}

/// Adds to each entity every ancestor it has through its parents;
/// `None` on a cycle or a uid given twice.
fn close(entities: &mut [Entity], threads: usize) -> Option<()> {
    let mut index: HashMap<&EntityUID, u32> = HashMap::with_capacity(entities.len());
    for (i, e) in entities.iter().enumerate() {
        if index.insert(e.uid(), u32::try_from(i).ok()?).is_some() {
            return None;
        }
    }
    // Parents in the set, by index; a parent outside it has no parents.
    let inside: Vec<Vec<u32>> = entities
        .iter()
        .map(|e| e.parents().filter_map(|p| index.get(p).copied()).collect())
        .collect();
    drop(index);
    let ancestors = ancestors_in_set(&inside)?;
    // Every parent uid, owned, so the entities can be changed in parallel.
    let parent_uids: Vec<Vec<EntityUID>> = entities
        .iter()
        .map(|e| e.parents().cloned().collect())
        .collect();
    let closed = super::spread::over_mut(entities, threads, |offset, part| {
        for (j, entity) in part.iter_mut().enumerate() {
            // An ancestor's parents, in the set or not, are ancestors.
            for &a in &ancestors[offset + j] {
                for uid in &parent_uids[a as usize] {
                    entity.add_indirect_ancestor(uid.clone());
                }
            }
        }
    });
    // A part lost to a panic is not closed: Cedar's own call decides.
    closed.then_some(())
}

/// For each node, every node of the set above it (sorted), from the parent
/// edges inside the set; `None` on a cycle. Depth-first, each node once.
fn ancestors_in_set(parents: &[Vec<u32>]) -> Option<Vec<Vec<u32>>> {
    const NEW: u8 = 0;
    const OPEN: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; parents.len()];
    let mut ancestors: Vec<Vec<u32>> = vec![Vec::new(); parents.len()];
    let mut stack: Vec<(u32, usize)> = Vec::new();
    for root in 0..parents.len() {
        if state[root] != NEW {
            continue;
        }
        stack.push((u32::try_from(root).ok()?, 0));
        state[root] = OPEN;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let node_parents = &parents[node as usize];
            if let Some(&p) = node_parents.get(*next) {
                *next += 1;
                match state[p as usize] {
                    NEW => {
                        state[p as usize] = OPEN;
                        stack.push((p, 0));
                    }
                    OPEN => return None,
                    _ => {}
                }
                continue;
            }
            let mut all: Vec<u32> = Vec::new();
            for &p in node_parents {
                all.push(p);
                all.extend_from_slice(&ancestors[p as usize]);
            }
            all.sort_unstable();
            all.dedup();
            ancestors[node as usize] = all;
            state[node as usize] = DONE;
            stack.pop();
        }
    }
    Some(ancestors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_follow_every_path_and_a_cycle_is_refused() {
        // 0 <- 1 <- 2, 0 <- 3 <- 2, 4 alone.
        let parents = vec![vec![], vec![0], vec![1, 3], vec![0], vec![]];
        let got = ancestors_in_set(&parents);
        assert_eq!(
            got,
            Some(vec![vec![], vec![0], vec![0, 1, 3], vec![0], vec![]])
        );
        assert_eq!(ancestors_in_set(&[vec![1], vec![2], vec![0]]), None);
        assert_eq!(ancestors_in_set(&[vec![0]]), None);
    }
}
