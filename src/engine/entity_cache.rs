//! Request entities parsed once per engine, remembered by their JSON.
//!
//! Real traffic repeats parts of requests: the same principal entity comes
//! with many resources, the same resource with many callers. Cedar's entity
//! JSON parser (untagged value shapes tried in turn) and the schema check
//! are most of an uncached decision, so each request entity is parsed and
//! checked once, and later requests that carry the same entity reuse it.
//!
//! The answer is the one the whole-array parse gives: the key is the
//! engine's process-wide id and the entity's exact JSON, and Cedar's
//! parse of one entity against one schema is deterministic. Action
//! entities are not remembered: Cedar checks them against the schema after
//! the closure and then uses the schema's own, so they are only checked
//! (by the array parse, on the actions alone: with a schema, no other
//! entity can be in their hierarchy). Any error (whose message depends on
//! the order of checks) sends the whole request to the array parse, so
//! errors and their messages do not change either.

use std::hash::{BuildHasher, RandomState};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cedar_policy::{Entities, Entity, EntityTypeName};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use serde_json::Value as Json;

use super::Engine;
use super::decision::AuthorizeError;
use super::request_entities;
use super::typed_entity::read_checked as read_entity;

/// Entities whose JSON is larger than this are parsed every time: a key
/// that size costs memory out of proportion to what it saves.
const MAX_KEY_BYTES: usize = 8 * 1024;
/// The same, for a whole set.
const MAX_SET_KEY_BYTES: usize = 16 * 1024;

/// Between entities in a set's key, and between uids in a slice's:
/// neither serde_json nor a uid writes it (it is not UTF-8), so two
/// different lists never make the same key.
const SEPARATOR: u8 = 0xFF;
/// Between a set's key and the uids of a slice's; not UTF-8 either.
const SLICE_MARK: u8 = 0xFE;
/// Slices that picked more stored entities than this are not remembered.
const MAX_SLICE_PICKED: usize = 8;

/// Parsed request entities by (engine id, entity JSON), and whole
/// checked sets by (engine id, the entities' JSON in order); both
/// bounded by bytes. The same entities often come together (one caller,
/// one resource, several actions), and a remembered set skips the closure
/// and the claim checks too.
pub struct EntityCache {
    cache: Cache<Vec<u8>, Arc<Entity>, Bytes>,
    sets: Cache<Vec<u8>, Arc<Entities>, Bytes>,
    /// A remembered set with the stored entities one request reached (see
    /// [`EntityCache::slice`]).
    slices: Cache<Vec<u8>, Arc<Entities>, Bytes>,
    /// The hashes of sets seen once, by slot: a set is remembered only
    /// when it comes a second time. Most sets that name a resource come
    /// once, and copying each into the cache cost realistic traffic more
    /// than the repeated ones saved.
    seen: Box<[AtomicU64]>,
    hasher: RandomState,
}

/// Slots of [`EntityCache::seen`]; a collision only lets a set in early.
const SEEN_SLOTS: usize = 4096;

#[derive(Clone)]
struct Bytes;

impl<T> Weighter<Vec<u8>, Arc<T>> for Bytes {
    fn weight(&self, key: &Vec<u8>, _: &Arc<T>) -> u64 {
        // A parsed entity takes about twice its JSON, plus the map entry.
        (key.len() * 3 + 128) as u64
    }
}

impl std::fmt::Debug for EntityCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityCache")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .field("sets", &self.sets.len())
            .field("set_bytes", &self.sets.weight())
            .field("slices", &self.slices.len())
            .field("slice_bytes", &self.slices.weight())
            .finish()
    }
}

/// A request's entities, parsed.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) set: Entities,
    /// The set's key in the cache: the same key is the same set, parsed
    /// and checked against the same engine. `None` for the array parse.
    pub(super) key: Option<Vec<u8>>,
}

/// How one parse used the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntityLookups {
    /// Entities served from the cache, one by one or in a whole set.
    pub hits: u64,
    pub misses: u64,
    /// Whole sets served (their entities count in `hits` too).
    pub set_hits: u64,
    /// Slices served: a set with the schema's actions it reached.
    pub slice_hits: u64,
}

impl EntityCache {
    /// A cache of about `max_bytes`; `None` when `max_bytes` is 0.
    pub fn new(max_bytes: u64) -> Option<Self> {
        // Sets and slices get a quarter each: they are made of entities
        // the others hold.
        let sets = max_bytes / 4;
        let entities = max_bytes - 2 * sets;
        (max_bytes > 0).then(|| Self {
            cache: Cache::with_weighter((entities / 512).max(16) as usize, entities, Bytes),
            sets: Cache::with_weighter((sets / 1024).max(16) as usize, sets.max(1), Bytes),
            slices: Cache::with_weighter((sets / 1024).max(16) as usize, sets.max(1), Bytes),
            seen: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
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

    /// `entities` (Cedar JSON) parsed and checked against `engine`, as
    /// [`parse_entities`] does, reusing entities seen before.
    pub(super) fn parse(
        &self,
        engine: &Engine,
        entities: Vec<Json>,
        lookups: &mut EntityLookups,
    ) -> Result<Parsed, AuthorizeError> {
        self.parse_keyed(engine, entities, lookups)
            .or_else(|entities| {
                request_entities::parse(engine, entities).map(|set| Parsed { set, key: None })
            })
    }

    /// [`EntityCache::parse`], or the entities back for the array parse.
    fn parse_keyed(
        &self,
        engine: &Engine,
        entities: Vec<Json>,
        lookups: &mut EntityLookups,
    ) -> Result<Parsed, Vec<Json>> {
        let schema = engine.schema.as_ref();
        let (actions, others): (Vec<&Json>, Vec<&Json>) =
            entities.iter().partition(|v| is_action(v));
        if !actions.is_empty() {
            // Without a schema a request may not define actions at all.
            let Some(schema) = schema else {
                return Err(entities);
            };
            let actions = Json::Array(actions.into_iter().cloned().collect());
            let checked = Entities::from_json_value(actions, Some(schema));
            // The array parse gives the exact error.
            if !checked.is_ok_and(|set| request_entities::check_claims(engine, &set).is_ok()) {
                return Err(entities);
            }
        }
        let prefix = engine.uid.to_le_bytes();
        // Each entity's JSON, one after another, after the engine's id.
        let mut set_key = Vec::with_capacity(256);
        set_key.extend_from_slice(&prefix);
        let mut ends = Vec::with_capacity(others.len());
        for value in &others {
            let start = set_key.len();
            if serde_json::to_writer(&mut set_key, value).is_err()
                || set_key.len() - start + prefix.len() > MAX_KEY_BYTES
            {
                // Not remembered; parsed as a whole.
                return Err(entities);
            }
            ends.push((start, set_key.len()));
            set_key.push(SEPARATOR);
        }
        if let Some(set) = self.sets.get(set_key.as_slice()) {
            // Checked against this engine when it was remembered.
            lookups.hits += others.len() as u64;
            lookups.set_hits += 1;
            return Ok(Parsed {
                set: Entities::clone(&set),
                key: Some(set_key),
            });
        }
        let mut parsed = Vec::with_capacity(entities.len());
        let mut key = Vec::with_capacity(256);
        for (value, &(start, end)) in others.iter().zip(&ends) {
            key.clear();
            key.extend_from_slice(&prefix);
            key.extend_from_slice(&set_key[start..end]);
            if let Some(hit) = self.cache.get(key.as_slice()) {
                lookups.hits += 1;
                parsed.push(Entity::clone(&hit));
                continue;
            }
            lookups.misses += 1;
            // Read by type where it can be (the key holds the entity's JSON
            // text), else by Cedar's parse, which also gives any error.
            let typed = std::str::from_utf8(&set_key[start..end])
                .ok()
                .and_then(|text| read_entity(text, &engine.entity_shapes, schema));
            let Some(entity) =
                typed.or_else(|| Entity::from_json_value(Json::clone(value), schema).ok())
            else {
                return Err(entities);
            };
            self.cache.insert(key.clone(), Arc::new(entity.clone()));
            parsed.push(entity);
        }
        // Each entity was checked against the schema as it was parsed; the
        // set still needs its closure, and duplicates still fail.
        let Ok(set) = Entities::from_entities(parsed, None) else {
            return Err(entities);
        };
        if request_entities::check_claims(engine, &set).is_err() {
            return Err(entities);
        }
        if set_key.len() <= MAX_SET_KEY_BYTES && self.second_sighting(&set_key) {
            self.sets.insert(set_key.clone(), Arc::new(set.clone()));
        }
        Ok(Parsed {
            set,
            key: Some(set_key),
        })
    }

    /// The key of the slice of the set under `set_key` with the stored
    /// entities `picked`, which determine it; `None` when it is not kept.
    /// Only action entities without attributes (a schema's) are kept with
    /// a set: their size is bounded, where a stored entity's is not, and
    /// the key gives the slice its weight.
    pub(super) fn slice_key(&self, mut set_key: Vec<u8>, picked: &[Entity]) -> Option<Vec<u8>> {
        if picked.len() > MAX_SLICE_PICKED || !picked.iter().all(is_bare_action) {
            return None;
        }
        let mut uids: Vec<String> = picked.iter().map(|e| e.uid().to_string()).collect();
        uids.sort_unstable();
        set_key.push(SLICE_MARK);
        for uid in uids {
            set_key.extend_from_slice(uid.as_bytes());
            set_key.push(SEPARATOR);
        }
        Some(set_key)
    }

    /// The slice remembered under `key` (see [`EntityCache::slice_key`]).
    pub(super) fn slice(&self, key: &[u8]) -> Option<Entities> {
        self.slices.get(key).map(|s| Entities::clone(&s))
    }

    /// Remembers `slice` under `key` when the key comes a second time.
    pub(super) fn remember_slice(&self, key: Vec<u8>, slice: &Entities) {
        if key.len() <= MAX_SET_KEY_BYTES && self.second_sighting(&key) {
            self.slices.insert(key, Arc::new(slice.clone()));
        }
    }

    /// Whether `set_key` was the last set seen in its slot; marks it seen.
    fn second_sighting(&self, set_key: &[u8]) -> bool {
        // 0 marks an empty slot, so no hash is 0.
        let hash = self.hasher.hash_one(set_key) | 1;
        let slot = &self.seen[(hash >> 32) as usize % SEEN_SLOTS];
        slot.swap(hash, Ordering::Relaxed) == hash
    }
}

/// An action entity with no attributes or tags: a uid and its parents.
fn is_bare_action(e: &Entity) -> bool {
    e.uid().type_name().basename() == "Action"
        && e.attrs().next().is_none()
        && e.tags().next().is_none()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use serde_json::json;

    use super::*;
    use crate::engine::tests::compiled;

    fn user(id: &str, level: i64) -> Json {
        json!({"uid": {"type": "User", "id": id}, "attrs": {"level": level}, "parents": []})
    }

    #[test]
    fn sets_and_entities_are_served_as_the_array_parse_gives_them() {
        let s = compiled(&[("p.cedar", "permit (principal, action, resource);")]);
        let cache = EntityCache::new(1 << 20).unwrap();
        // What one parse used of the cache; its set is the array parse's.
        let parse = |entities: Vec<Json>| {
            let mut lookups = EntityLookups::default();
            let got = cache.parse(&s, entities.clone(), &mut lookups).unwrap().set;
            assert!(got.deep_eq(&request_entities::parse(&s, entities).unwrap()));
            (lookups.hits, lookups.misses, lookups.set_hits)
        };
        let ab = || vec![user("a", 1), user("b", 2)];
        assert_eq!(parse(ab()), (0, 2, 0));
        // A set is remembered whole when it comes a second time.
        assert_eq!(parse(ab()), (2, 0, 0));
        assert_eq!(parse(ab()), (2, 0, 1));
        // Another set sharing one entity: that one is served alone.
        assert_eq!(parse(vec![user("a", 1), user("c", 3)]), (1, 1, 0));
        // The same entities in another order, or one changed, are other sets.
        assert_eq!(parse(vec![user("b", 2), user("a", 1)]), (2, 0, 0));
        assert_eq!(parse(vec![user("a", 1), user("b", 9)]), (1, 1, 0));
    }

    #[test]
    fn a_set_remembered_for_one_snapshot_is_checked_again_for_another() {
        let open = compiled(&[("p.cedar", "permit (principal, action, resource);")]);
        // Here `User::"a"` is named by a stored entity that does not define it.
        let strict = compiled(&[
            ("p.cedar", "permit (principal, action, resource);"),
            (
                "e.entities.json",
                r#"[{"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": [{"type": "User", "id": "a"}]}]"#,
            ),
        ]);
        let cache = EntityCache::new(1 << 20).unwrap();
        let set = vec![user("a", 1)];
        for _ in 0..3 {
            let mut lookups = EntityLookups::default();
            assert!(cache.parse(&open, set.clone(), &mut lookups).is_ok());
        }
        let mut lookups = EntityLookups::default();
        assert!(cache.parse(&open, set.clone(), &mut lookups).is_ok());
        assert_eq!(lookups.set_hits, 1, "remembered for the first snapshot");
        let mut lookups = EntityLookups::default();
        let err = cache.parse(&strict, set, &mut lookups).unwrap_err();
        assert!(matches!(err, AuthorizeError::StoredReference(_)), "{err:?}");
        assert_eq!(lookups.set_hits, 0);
    }

    #[test]
    fn a_duplicate_is_an_error_every_time_and_never_remembered() {
        let s = compiled(&[("p.cedar", "permit (principal, action, resource);")]);
        let cache = EntityCache::new(1 << 20).unwrap();
        for _ in 0..3 {
            let mut lookups = EntityLookups::default();
            let twice = vec![user("a", 1), user("a", 2)];
            let err = cache.parse(&s, twice.clone(), &mut lookups).unwrap_err();
            assert_eq!(
                err.to_string(),
                request_entities::parse(&s, twice).unwrap_err().to_string()
            );
            assert_eq!(lookups.set_hits, 0);
        }
    }
}
