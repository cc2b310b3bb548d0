//! The pipeline's checks and evaluation, in their one order: binding,
//! limits, the decision cache, conversion, the server's context, Cedar.
//!
//! Split in two so the pipeline can settle on the async side what costs no
//! evaluation ([`Evaluator::screen`]: binding, limits, a cache hit) and send
//! only the rest ([`Evaluator::finish`]) to the evaluation pool. Screening
//! returns what it proved ([`Verified`]) beside the request.

use std::sync::Arc;
use std::time::SystemTime;

use super::cache::DecisionCache;
use super::error::DecisionError;
use super::record::Subject;
use super::request::DecisionRequest;
use super::verified::Verified;
use super::{PipelineOptions, Shared, delegation, server_context, token_claims};
use crate::engine::Clock;
use crate::engine::{Decision, EntityCache, Scratch};
use crate::identity::PeerFacts;
use crate::metrics::Metrics;
use crate::policy_store::Snapshot;

/// Decides admitted requests with `opts`, through `cache` when there is one.
pub(super) struct Evaluator<'a> {
    pub opts: &'a PipelineOptions,
    pub cache: Option<(&'a DecisionCache, &'a Metrics)>,
    /// The server's time to judge at instead of the clock (policy tests).
    pub at: Option<SystemTime>,
    /// Request entities parsed before.
    pub entities: Option<(&'a EntityCache, &'a Metrics)>,
}

/// A request that passed binding and limits, and what the cache said.
#[derive(Debug)]
pub(super) struct Screened {
    key: Option<Vec<u8>>,
    hit: Option<Arc<Decision>>,
}

impl Screened {
    /// Whether the cache holds the answer: no evaluation is needed.
    pub(super) fn is_hit(&self) -> bool {
        self.hit.is_some()
    }
}

impl Evaluator<'_> {
    /// Binding, limits, cache and evaluation: the decision, or why not.
    /// Fills `subject`'s context once it is known.
    pub(super) fn evaluate(
        &self,
        snapshot: &Snapshot,
        mut req: DecisionRequest,
        invalid: Option<DecisionError>,
        shared: Option<&Shared>,
        peer: &PeerFacts,
        subject: &mut Option<Subject>,
    ) -> Result<Decision, DecisionError> {
        let (verified, screened) = self.screen(snapshot, &mut req, invalid, shared.is_none(), peer);
        self.finish(snapshot, req, verified, screened?, shared, peer, subject)
    }

    /// Binding and limits first (a cached answer never skips them), then
    /// the cache, for a request without shared entities. Returns what it
    /// proved of the request, also when it refuses it, for the record.
    pub(super) fn screen(
        &self,
        snapshot: &Snapshot,
        req: &mut DecisionRequest,
        invalid: Option<DecisionError>,
        cacheable: bool,
        peer: &PeerFacts,
    ) -> (Verified, Result<Screened, DecisionError>) {
        let mut verified = Verified::NONE;
        let screened = self.screen_into(snapshot, req, invalid, cacheable, peer, &mut verified);
        (verified, screened)
    }

    /// [`Evaluator::screen`], proving into `verified` as it goes.
    fn screen_into(
        &self,
        snapshot: &Snapshot,
        req: &mut DecisionRequest,
        invalid: Option<DecisionError>,
        cacheable: bool,
        peer: &PeerFacts,
        verified: &mut Verified,
    ) -> Result<Screened, DecisionError> {
        let opts = self.opts;
        server_context::check_binding(opts.bind_workload, req, peer)?;
        // The common request has no tokens, no chain and no server time:
        // it pays for no clock read.
        let timed = !req.subject_token.is_empty()
            || !req.actor_token.is_empty()
            || !req.delegation.is_empty()
            || opts.server_time_key.is_some()
            || self.at.is_some();
        if timed {
            self.timed(req, verified)?;
        }

        opts.limits
            .check_request_id(&req.request_id)
            .map_err(DecisionError::limit)?;
        opts.limits
            .check_context_json(req.context_json())
            .map_err(DecisionError::limit)?;
        opts.limits
            .check_entities_json(&req.entities_json)
            .map_err(DecisionError::limit)?;
        if let Some(e) = invalid {
            return Err(e);
        }
        let mut screened = Screened {
            key: None,
            hit: None,
        };
        if let (Some((cache, metrics)), true) = (self.cache, cacheable) {
            screened.key =
                DecisionCache::key(snapshot.generation, req, verified, self.caller(peer));
            // An answer that a time-bound link's window shaped holds only
            // until the window next changes; only such answers read the
            // clock here.
            screened.hit = screened
                .key
                .as_deref()
                .and_then(|k| cache.get(k))
                .filter(|hit| {
                    // The instant read here is the one the record names.
                    hit.changes_at
                        .is_none_or(|at| *verified.now.get_or_insert_with(SystemTime::now) < at)
                });
            if screened.key.is_some() {
                metrics.decision_cache(screened.hit.is_some());
            }
        }
        Ok(screened)
    }

    /// What depends on the server's clock, read once: tokens, the chain's
    /// expiry (before the cache, so an expired chain never gets an answer
    /// computed while it was valid) and the server's time for policies.
    fn timed(&self, req: &DecisionRequest, verified: &mut Verified) -> Result<(), DecisionError> {
        let opts = self.opts;
        let now = self.at.unwrap_or_else(SystemTime::now);
        verified.now = Some(now);
        token_claims::verify(opts.tokens.as_deref(), req, now, verified)?;
        delegation::check(verified.chain(req), opts.delegation, now)?;
        if let Some(key) = &opts.server_time_key {
            let second = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let second = std::time::UNIX_EPOCH + std::time::Duration::from_secs(second);
            verified.server_time = Some((key.clone(), delegation::rfc3339(second)));
        }
        Ok(())
    }

    /// The caller facts policies see, when the config passes them on.
    fn caller<'p>(&self, peer: &'p PeerFacts) -> Option<&'p PeerFacts> {
        Some(peer).filter(|p| self.opts.caller_key.is_some() && p.is_verified())
    }

    /// Conversion, the server's context and Cedar, for a screened request;
    /// a cache hit converts only to fill the record.
    #[expect(clippy::too_many_arguments, reason = "one decision's whole state")]
    pub(super) fn finish(
        &self,
        snapshot: &Snapshot,
        req: DecisionRequest,
        verified: Verified,
        screened: Screened,
        shared: Option<&Shared>,
        peer: &PeerFacts,
        subject: &mut Option<Subject>,
    ) -> Result<Decision, DecisionError> {
        let opts = self.opts;
        // Without a record to fill, a hit needs no conversion at all.
        if let (Some(hit), None) = (&screened.hit, &subject) {
            return Ok((**hit).clone());
        }
        let has_workload = req.workload.is_some();
        let now = verified.now;
        let keys = server_context::ServerKeys {
            names: &opts.context_keys,
            tokens: opts.tokens.is_some(),
        };
        let mut q =
            server_context::query(req, verified, &[], keys).map_err(DecisionError::invalid)?;
        let shared_json = shared.map_or(&[][..], |s| &s.json);
        opts.limits
            .check_query(&q, shared_json)
            .map_err(DecisionError::limit)?;
        if let Some(s) = subject.take() {
            let workload_key = has_workload.then_some(opts.context_keys.workload.as_str());
            *subject = Some(s.with_query(&q.context, &q.entities, workload_key));
        }
        server_context::add_caller(
            opts.caller_key.as_deref(),
            &mut q.context,
            self.caller(peer),
        )?;
        // The record holds the context as evaluated.
        if let (Some(s), Some(key)) = (subject.as_mut(), opts.caller_key.as_deref())
            && let Some(facts) = q.context.get(key)
        {
            s.add_context(key, facts);
        }
        if let Some(hit) = screened.hit {
            return Ok((*hit).clone());
        }
        let clock = now.map_or_else(Clock::system, Clock::at);
        let mut scratch = Scratch::new(opts.on_forbid_error)
            .at(clock)
            .cached(self.entities.map(|(c, _)| c))
            .shared(shared.map(|s| &s.entities));
        let decided = snapshot.engine.decide(q, &mut scratch);
        if let Some(s) = subject.as_mut() {
            s.judged(scratch.judged_at());
        }
        if let Some((_, metrics)) = self.entities {
            let lookups = scratch.lookups();
            metrics.entity_cache(lookups.hits, lookups.misses);
            metrics.entity_reuses(lookups.set_hits, lookups.slice_hits);
        }
        let decision = decided?;
        if let (Some((cache, _)), Some(key)) = (self.cache, screened.key) {
            cache.insert(key, Arc::new(decision.clone()));
        }
        Ok(decision)
    }
}
