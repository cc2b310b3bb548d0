//! Request entities parsed once per snapshot, remembered by their JSON.
//!
//! Real traffic repeats parts of requests: the same principal entity comes
//! with many resources, the same resource with many callers. Cedar's entity
//! JSON parser (untagged value shapes tried in turn) and the schema check
//! are most of an uncached decision, so each request entity is parsed and
//! checked once, and later requests that carry the same entity reuse it.
//!
//! The answer is the one the whole-array parse gives: the key is the
//! snapshot's process-wide id and the entity's exact JSON, and Cedar's
//! parse of one entity against one schema is deterministic. Action
//! entities are not remembered: Cedar checks them against the schema after
//! the closure and then uses the schema's own, so they are only checked
//! (by the array parse, on the actions alone: with a schema, no other
//! entity can be in their hierarchy). Any error (whose message depends on
//! the order of checks) sends the whole request to the array parse, so
//! errors and their messages do not change either.

use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{Entities, Entity, EntityTypeName};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use serde_json::Value as Json;

use super::{AuthorizeError, parse_entities, request_entities};
use crate::policy_store::Snapshot;

/// Entities whose JSON is larger than this are parsed every time: a key
/// that size costs memory out of proportion to what it saves.
const MAX_KEY_BYTES: usize = 8 * 1024;

/// Parsed request entities by (snapshot id, entity JSON); bounded by bytes.
pub struct EntityCache {
    cache: Cache<Vec<u8>, Arc<Entity>, Bytes>,
}

#[derive(Clone)]
struct Bytes;

impl Weighter<Vec<u8>, Arc<Entity>> for Bytes {
    fn weight(&self, key: &Vec<u8>, _: &Arc<Entity>) -> u64 {
        // A parsed entity takes about twice its JSON, plus the map entry.
        (key.len() * 3 + 128) as u64
    }
}

impl std::fmt::Debug for EntityCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityCache")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

/// How one parse used the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntityLookups {
    pub hits: u64,
    pub misses: u64,
}

impl EntityCache {
    /// A cache of about `max_bytes`; `None` when `max_bytes` is 0.
    pub fn new(max_bytes: u64) -> Option<Self> {
        (max_bytes > 0).then(|| Self {
            cache: Cache::with_weighter((max_bytes / 512).max(16) as usize, max_bytes, Bytes),
        })
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// `entities` (Cedar JSON) parsed and checked against `snapshot`, as
    /// [`parse_entities`] does, reusing entities seen before.
    pub(super) fn parse(
        &self,
        snapshot: &Snapshot,
        entities: Vec<Json>,
        lookups: &mut EntityLookups,
    ) -> Result<Entities, AuthorizeError> {
        let schema = snapshot.schema.as_ref();
        let (actions, others): (Vec<&Json>, Vec<&Json>) =
            entities.iter().partition(|v| is_action(v));
        if !actions.is_empty() {
            // Without a schema a request may not define actions at all.
            let Some(schema) = schema else {
                return parse_entities(snapshot, entities);
            };
            let actions = Json::Array(actions.into_iter().cloned().collect());
            let checked = Entities::from_json_value(actions, Some(schema));
            if !checked.is_ok_and(|set| request_entities::check_claims(snapshot, &set).is_ok()) {
                return parse_entities(snapshot, entities);
            }
        }
        let mut parsed = Vec::with_capacity(entities.len());
        let mut key = Vec::with_capacity(256);
        for value in others {
            key.clear();
            key.extend_from_slice(&snapshot.uid.to_le_bytes());
            if serde_json::to_writer(&mut key, value).is_err() || key.len() > MAX_KEY_BYTES {
                // Not remembered; parsed with the rest below.
                return parse_entities(snapshot, entities);
            }
            if let Some(hit) = self.cache.get(key.as_slice()) {
                lookups.hits += 1;
                parsed.push(Entity::clone(&hit));
                continue;
            }
            lookups.misses += 1;
            let Ok(entity) = Entity::from_json_value(value.clone(), schema) else {
                return parse_entities(snapshot, entities);
            };
            self.cache.insert(key.clone(), Arc::new(entity.clone()));
            parsed.push(entity);
        }
        // Each entity was checked against the schema as it was parsed; the
        // set still needs its closure, and duplicates still fail.
        let Ok(set) = Entities::from_entities(parsed, None) else {
            return parse_entities(snapshot, entities);
        };
        if request_entities::check_claims(snapshot, &set).is_err() {
            return parse_entities(snapshot, entities);
        }
        Ok(set)
    }
}

/// Whether a JSON entity is an action (`Action`, or `Ns::Action`), or has
/// no type that can be read (so that the array parse reports it).
fn is_action(value: &Json) -> bool {
    let kind = value
        .get("uid")
        .map(|uid| uid.get("__entity").unwrap_or(uid))
        .and_then(|uid| uid.get("type"))
        .and_then(Json::as_str);
    // An entity without a readable type fails either way: the array parse
    // gives the exact error (one whose type does not parse fails in the
    // per-entity parse and goes there too). Only a type that spells
    // `Action` can be one, so most types skip Cedar's name parser.
    kind.is_none_or(|t| {
        t.contains("Action")
            && EntityTypeName::from_str(t)
                .ok()
                .is_none_or(|t| t.basename() == "Action")
    })
}
