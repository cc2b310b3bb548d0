//! A bounded cache of decisions. Cedar evaluation is deterministic: the same
//! request against the same policy snapshot always gets the same decision,
//! so a hit is exact, not an approximation. Keys carry the snapshot's
//! generation, so a reload never serves an old set's answer; entries of old
//! generations age out as new ones arrive.
//!
//! Time-bound template links change answers without a reload. A decision
//! they shaped carries [`Decision::changes_at`], the next instant one of the
//! links whose scope matched enters or leaves its window, and a hit past it
//! is a miss (see `evaluate.rs`): the request is evaluated again and the
//! entry replaced. Answers no such link shaped carry none, and their hits
//! read no clock.

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use serde::Serialize;

use super::request::{Context, DecisionRequest};
use super::verified::{Binding, Verified};
use crate::engine::Decision;
use crate::identity::PeerFacts;

/// Requests whose key is larger than this are not cached.
const MAX_KEY_BYTES: usize = 16 * 1024;

/// A key under construction: each field tagged and length-prefixed, so no
/// two different requests encode the same.
struct Key(Vec<u8>);

impl Key {
    fn bytes(&mut self, tag: u8, bytes: &[u8]) {
        self.0.push(tag);
        self.0
            .extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn json(&mut self, tag: u8, value: &impl Serialize) -> Option<()> {
        self.0.push(tag);
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut self.0, value).ok()?;
        let len = u32::try_from(self.0.len() - at - 4).ok()?;
        self.0[at..at + 4].copy_from_slice(&len.to_le_bytes());
        (self.0.len() <= MAX_KEY_BYTES).then_some(())
    }
}

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
pub(super) struct DecisionCache {
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
    pub(super) fn new(max_bytes: u64) -> Option<Self> {
        (max_bytes > 0).then(|| Self {
            cache: Cache::with_weighter((max_bytes / 1024).max(16) as usize, max_bytes, Bytes),
        })
    }

    /// The key of `req` under `generation`: everything that decides except
    /// the caller's own request id, with what screening `verified` of it.
    /// `None` when too large to cache.
    pub(super) fn key(
        generation: u64,
        req: &DecisionRequest,
        verified: &Verified,
        caller: Option<&PeerFacts>,
    ) -> Option<Vec<u8>> {
        // One allocation of about the final size: the text fields dominate.
        let text = |u: &Option<super::request::Uid>| {
            u.as_ref().map_or(0, |u| u.type_name.len() + u.id.len())
        };
        let estimate = 128
            + text(&req.principal)
            + text(&req.action)
            + text(&req.resource)
            + req.context_json().len()
            + req.entities_json.len();
        if estimate > MAX_KEY_BYTES {
            return None;
        }
        let mut key = Key(Vec::with_capacity(estimate));
        key.0.extend_from_slice(&generation.to_le_bytes());
        for uid in [&req.principal, &req.action, &req.resource] {
            match uid {
                Some(u) => {
                    key.bytes(1, u.type_name.as_bytes());
                    key.bytes(2, u.id.as_bytes());
                }
                None => key.0.push(0),
            }
        }
        match &req.context {
            Context::Json(text) => key.bytes(3, text.as_bytes()),
            Context::Record(map) => key.json(4, map)?,
        }
        key.json(5, &req.entities)?;
        key.bytes(6, req.entities_json.as_bytes());
        for (uid, attrs) in &req.properties {
            key.bytes(12, uid.type_name.as_bytes());
            key.bytes(13, uid.id.as_bytes());
            key.json(14, attrs)?;
        }
        if let Some(w) = &req.workload {
            key.bytes(7, w.spiffe_id.as_bytes());
            key.bytes(8, w.namespace.as_bytes());
            key.bytes(9, w.service_account.as_bytes());
            for label in &w.labels {
                key.bytes(10, label.as_bytes());
            }
        }
        for hop in verified.chain(req) {
            key.bytes(15, hop.delegator.type_name.as_bytes());
            key.bytes(16, hop.delegator.id.as_bytes());
            for scope in &hop.scopes {
                key.bytes(17, scope.as_bytes());
            }
            let expires = hop.expires_at.map_or(0, |t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            });
            key.bytes(18, &expires.to_le_bytes());
            key.bytes(19, hop.purpose.as_bytes());
            key.bytes(20, &[u8::from(hop.verified)]);
        }
        // What the token grants and whom it binds change what policies see.
        if let Some(token) = verified.subject_token() {
            for scope in token.scopes.iter().flatten() {
                key.bytes(24, scope.as_bytes());
            }
            let binding = token.binding.map_or("", Binding::name);
            key.bytes(25, binding.as_bytes());
        }
        key.bytes(21, req.purpose.as_bytes());
        // The policies see the time: an answer holds for its second only.
        if let Some((_, now)) = &verified.server_time {
            key.bytes(23, now.as_bytes());
        }
        if let Some(claims) = &verified.claims {
            key.json(22, claims)?;
        }
        if let Some(peer) = caller {
            key.bytes(11, peer.to_context().to_string().as_bytes());
        }
        (key.0.len() <= MAX_KEY_BYTES).then_some(key.0)
    }

    /// The cached decision for `key`.
    pub(super) fn get(&self, key: &[u8]) -> Option<Arc<Decision>> {
        self.cache.get(key)
    }

    /// Remembers `decision` for `key`.
    pub(super) fn insert(&self, key: Vec<u8>, decision: Arc<Decision>) {
        self.cache.insert(key, decision);
    }
}
