//! A bounded cache of decisions. Cedar evaluation is deterministic: the same
//! request against the same policy snapshot always gets the same decision,
//! so a hit is exact, not an approximation. Keys carry the snapshot's
//! generation, so a reload never serves an old set's answer; entries of old
//! generations age out as new ones arrive.

use std::sync::Arc;

use prost::Message;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::proto::AuthorizeRequest;
use crate::authorizer::Decision;
use crate::identity::PeerFacts;

/// Requests whose key is larger than this are not cached.
const MAX_KEY_BYTES: usize = 16 * 1024;

#[derive(Clone)]
struct Bytes;

impl Weighter<Vec<u8>, Arc<Decision>> for Bytes {
    fn weight(&self, key: &Vec<u8>, value: &Arc<Decision>) -> u64 {
        let policies: usize = value.determining_policies.iter().map(String::len).sum();
        let errors: usize = value
            .errors
            .iter()
            .map(|e| e.message.len() + e.policy_id.len())
            .sum();
        (key.len() + policies + errors + 64) as u64
    }
}

/// Decisions by (generation, request bytes, verified caller facts).
pub struct DecisionCache {
    cache: Cache<Vec<u8>, Arc<Decision>, Bytes>,
}

impl std::fmt::Debug for DecisionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionCache")
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

impl DecisionCache {
    /// A cache holding at most about `max_bytes` of keys and decisions;
    /// `None` when `max_bytes` is 0.
    pub fn new(max_bytes: u64) -> Option<Self> {
        (max_bytes > 0).then(|| Self {
            cache: Cache::with_weighter((max_bytes / 1024).max(16) as usize, max_bytes, Bytes),
        })
    }

    /// The key of `req` under `generation`: everything that decides except
    /// the caller's own request id. `None` when too large to cache.
    pub fn key(
        generation: u64,
        req: &mut AuthorizeRequest,
        caller: Option<&PeerFacts>,
    ) -> Option<Vec<u8>> {
        let len = req.encoded_len();
        if len > MAX_KEY_BYTES {
            return None;
        }
        let mut key = Vec::with_capacity(len + 64);
        key.extend_from_slice(&generation.to_le_bytes());
        let request_id = std::mem::take(&mut req.request_id);
        let encoded = req.encode(&mut key);
        req.request_id = request_id;
        encoded.ok()?;
        if let Some(peer) = caller {
            key.push(0xff);
            key.extend_from_slice(peer.to_context().to_string().as_bytes());
        }
        Some(key)
    }

    /// The cached decision for `key`.
    pub fn get(&self, key: &[u8]) -> Option<Arc<Decision>> {
        self.cache.get(key)
    }

    /// Remembers `decision` for `key`.
    pub fn insert(&self, key: Vec<u8>, decision: Arc<Decision>) {
        self.cache.insert(key, decision);
    }
}
