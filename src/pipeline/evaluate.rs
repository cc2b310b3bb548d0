//! The pipeline's checks and evaluation, in their one order: binding,
//! limits, the decision cache, conversion, the server's context, Cedar.

use std::sync::Arc;

use serde_json::Value as Json;

use super::cache::DecisionCache;
use super::error::DecisionError;
use super::record::Subject;
use super::request::DecisionRequest;
use super::{PipelineOptions, server_context};
use crate::authorizer::{self, Decision};
use crate::identity::PeerFacts;
use crate::metrics::Metrics;
use crate::policy_store::Snapshot;

/// Decides admitted requests with `opts`, through `cache` when there is one.
pub(super) struct Evaluator<'a> {
    pub opts: &'a PipelineOptions,
    pub cache: Option<(&'a DecisionCache, &'a Metrics)>,
}

impl Evaluator<'_> {
    /// Binding, limits, cache and evaluation: the decision, or why not.
    /// Fills `subject`'s context once it is known.
    pub(super) fn evaluate(
        &self,
        snapshot: &Snapshot,
        req: DecisionRequest,
        invalid: Option<DecisionError>,
        shared: &[Json],
        peer: &PeerFacts,
        subject: &mut Option<Subject>,
    ) -> Result<Decision, DecisionError> {
        let opts = self.opts;
        server_context::check_binding(opts.bind_workload, &req, peer)?;
        opts.limits
            .check_request_id(&req.request_id)
            .map_err(DecisionError::limit)?;
        opts.limits
            .check_context_json(req.context_json())
            .map_err(DecisionError::limit)?;
        if let Some(e) = invalid {
            return Err(e);
        }
        let caller = Some(peer).filter(|p| opts.caller_key.is_some() && p.is_verified());
        // Binding and limits first: a cached answer never skips them.
        let mut cached = None;
        let mut cache_key = None;
        if let (Some((cache, metrics)), true) = (self.cache, shared.is_empty()) {
            cache_key = DecisionCache::key(snapshot.generation, &req, caller);
            cached = cache_key.as_deref().and_then(|k| cache.get(k));
            if cache_key.is_some() {
                metrics.decision_cache(cached.is_some());
            }
        }
        // Without a record to fill, a hit needs no conversion at all.
        if let (Some(hit), None) = (&cached, &subject) {
            return Ok((**hit).clone());
        }
        let has_workload = req.workload.is_some();
        let mut q = req.into_query(shared).map_err(DecisionError::invalid)?;
        opts.limits.check_query(&q).map_err(DecisionError::limit)?;
        if let Some(s) = subject.take() {
            *subject = Some(s.with_context(&q.context, has_workload));
        }
        server_context::add_caller(opts.caller_key.as_deref(), &mut q.context, caller)?;
        if let Some(hit) = cached {
            return Ok((*hit).clone());
        }
        let decision = authorizer::authorize(snapshot, q)?;
        if let (Some((cache, _)), Some(key)) = (self.cache, cache_key) {
            cache.insert(key, Arc::new(decision.clone()));
        }
        Ok(decision)
    }
}
