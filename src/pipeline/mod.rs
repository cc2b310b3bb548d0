//! The one decision path, behind every front-end.
//!
//! A front-end converts its wire request into a [`DecisionRequest`], hands it
//! here with the [`Call`] it came on, and converts the [`Answer`] back. The
//! pipeline owns everything in between, once:
//! admission (in-flight and stream slots, room in the decision log, the deadline),
//! caller binding, limits, the decision cache, the server's context
//! (`workload`, `caller`), evaluation, and the span fields, metrics and
//! decision record of every outcome, failures included.
//!
//! INVARIANT: every request handed in gets exactly one record (when the log
//! is on) and one metric increment: `cedar_pdp_decisions_total` when it was
//! decided, `cedar_pdp_request_errors_total{code,reason}` when it was not.
//!
//! - [`request`]: the typed request and the call's transport facts.
//! - [`error`]: stable reasons and the codes they map to.
//! - [`limits`]: per-request bounds on what a caller may send.
//! - [`cache`](mod@cache): exact decisions by snapshot generation and request.
//! - `verified`: what screening proves of a request, beside it.
//! - `server_context`: caller binding, the reserved context keys, the Cedar
//!   query and the verified caller facts.
//! - `delegation`: the chain's rules and what policies see of it.
//! - `token_claims`: what verified tokens make of a request.
//! - `record`, [`span`]: the decision record and the span fields.
//! - `schedule`: where a screened request is evaluated (inline or on the
//!   pool), and the guards that record calls dropped on the way.
//! - `inline`, `pool`: the gate that keeps small evaluations on the async
//!   worker, and the threads the rest runs on.
//! - `guard`: a panic on the decision path becomes a recorded `internal`
//!   refusal of exactly its call or item.

mod cache;
mod delegation;
pub mod error;
mod evaluate;
mod guard;
mod inline;
pub mod limits;
mod pool;
mod record;
mod request;
mod schedule;
mod server_context;
pub(crate) mod span;
mod token_claims;
mod verified;
pub(crate) mod why;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::Span;

use crate::config::{Config, ContextKeysConfig, OnForbidError};
use crate::decision_log::{DecisionLog, EntitySet, Slots};
use crate::engine::{Decision, EntityCache, SharedEntities};
use crate::identity::PeerFacts;
use crate::metrics::Metrics;
use crate::policy_store::{PolicyStore, Snapshot};
use crate::tokens::TokenVerifier;
use cache::DecisionCache;
pub use delegation::DelegationRules;
pub(crate) use delegation::LAST_RFC3339_SECOND;
pub use error::{Code, DecisionError, InvalidField, Reason};
use evaluate::{Evaluator, Screened};
use inline::InlineGate;
use limits::Limits;
use pool::EvalPool;
use record::Subject;
pub(crate) use request::parse_entities_json;
pub use request::{
    Api, Call, Context, DecisionRequest, DelegationHop, Rejected, Submitted, Uid, Workload,
};
use schedule::{Pending, Ready};
pub use verified::TokenFacts;
use verified::Verified;

/// The HTTP response header that names a decision's id (ext_authz, AuthZEN),
/// on allows, denies and refusals alike.
pub const DECISION_ID_HEADER: &str = "x-cedar-decision-id";
/// The HTTP response header that names the policy revision that decided.
pub const REVISION_HEADER: &str = "x-cedar-policy-revision";

/// How the pipeline bounds and shapes requests; built from the config.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    pub max_batch_size: usize,
    pub limits: Limits,
    /// Calls evaluated at once; the rest are shed.
    pub max_in_flight: usize,
    pub streams: StreamLimits,
    pub request_timeout: Duration,
    /// Context key for verified caller facts; `None` keeps them out.
    pub caller_key: Option<String>,
    /// Reject a `workload.spiffe_id` that is not the verified caller's.
    pub bind_workload: bool,
    /// Bytes of decisions kept for identical requests; 0 turns it off.
    pub decision_cache_bytes: u64,
    /// Bytes of parsed request entities kept; 0 turns it off.
    pub entity_cache_bytes: u64,
    pub on_forbid_error: OnForbidError,
    /// Threads evaluation runs on; 0: one per CPU the process may use.
    pub evaluation_threads: usize,
    /// Requests this small are evaluated on the async worker; 0: none.
    pub inline_evaluation_bytes: usize,
    pub delegation: DelegationRules,
    /// The issuers tokens are verified against; `None`: tokens are refused.
    pub tokens: Option<Arc<TokenVerifier>>,
    /// Context key for the server's time; `None`: not given.
    pub server_time_key: Option<String>,
    /// The context keys the server sets from fields and tokens.
    pub context_keys: ContextKeysConfig,
}

impl PipelineOptions {
    /// The options `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_batch_size: config.limits.max_batch_size,
            limits: Limits::from(&config.limits),
            max_in_flight: config.limits.max_in_flight,
            streams: StreamLimits {
                max: config.limits.max_streams,
                idle_timeout: config.limits.stream_idle_timeout,
                max_age: config.limits.stream_max_age,
            },
            request_timeout: config.limits.request_timeout,
            caller_key: Some(config.caller.context_key.clone()).filter(|k| !k.is_empty()),
            bind_workload: config.binds_workload(),
            decision_cache_bytes: config.limits.decision_cache_bytes,
            entity_cache_bytes: config.limits.entity_cache_bytes,
            on_forbid_error: config.evaluation.on_forbid_error,
            evaluation_threads: config.limits.evaluation_threads,
            inline_evaluation_bytes: config.limits.inline_evaluation_bytes,
            delegation: DelegationRules {
                max_depth: config.delegation.max_depth,
                max_scopes: config.delegation.max_scopes,
            },
            tokens: None,
            server_time_key: Some(config.evaluation.server_time_key.clone())
                .filter(|k| !k.is_empty()),
            context_keys: config.context_keys.clone(),
        }
    }
}

/// How long-lived streams are bounded: their own slots, so they cannot take
/// the in-flight slots that unary calls need, and their own deadlines.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Streams open at once; more are refused.
    pub max: usize,
    /// A stream without progress for this long is closed.
    pub idle_timeout: Duration,
    /// A stream is closed this long after it opened.
    pub max_age: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// Decides `req` as the server would for a caller that proved `peer`:
/// binding, limits, the server's context and evaluation, without
/// admission, cache, metrics or a record. What policy tests run.
pub fn judge(
    opts: &PipelineOptions,
    snapshot: &Snapshot,
    req: DecisionRequest,
    peer: &PeerFacts,
) -> Result<Decision, DecisionError> {
    judge_at(opts, snapshot, req, peer, None)
}

/// [`judge`] as if the server's clock read `at` (`None`: the clock): what
/// tokens, the chain's expiry, server time and template links' windows see.
pub fn judge_at(
    opts: &PipelineOptions,
    snapshot: &Snapshot,
    req: DecisionRequest,
    peer: &PeerFacts,
    at: Option<std::time::SystemTime>,
) -> Result<Decision, DecisionError> {
    Evaluator {
        opts,
        cache: None,
        at,
        entities: None,
    }
    .evaluate(snapshot, req, None, None, peer, &mut None)
}

/// A decision, with what identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    pub decision_id: String,
    pub policy_revision: String,
    pub request_id: String,
    /// The request's delegation chain is not verified: one reason a deny
    /// may be one.
    pub unverified_chain: bool,
}

impl Outcome {
    /// Why a deny is one, in words; empty for an allow. Made when a
    /// front-end answers with it, not for every decision.
    pub fn why(&self) -> String {
        why::why(&self.decision, self.unverified_chain)
    }
}

/// A request that got no decision, identified as a decision is: the caller
/// must treat it as a deny.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub error: DecisionError,
    pub decision_id: String,
    /// Empty when no policy set was live.
    pub policy_revision: String,
    pub request_id: String,
}

/// What the pipeline says about one request.
pub type Answer = Result<Outcome, Box<Refusal>>;

/// When a batch stops before its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchStop {
    /// Every item is decided.
    #[default]
    Never,
    /// After the first item that is not allowed (a deny or a refusal).
    FirstDeny,
    /// After the first item that is allowed.
    FirstPermit,
}

impl BatchStop {
    /// Whether the batch ends after an item that was (or was not) `allowed`.
    fn stops_at(self, allowed: bool) -> bool {
        match self {
            Self::Never => false,
            Self::FirstDeny => !allowed,
            Self::FirstPermit => allowed,
        }
    }
}

/// How a single decision is admitted.
#[derive(Clone, Copy, Debug)]
pub enum Admission {
    /// Take an in-flight slot for this call (a stream's item too: a slot is
    /// held only while something is evaluated); give up after `timeout`.
    Acquire { timeout: Duration },
}

/// The decision pipeline; cheap to clone, shared by every front-end.
#[derive(Clone, Debug)]
pub struct Pipeline {
    store: Arc<PolicyStore>,
    opts: Arc<PipelineOptions>,
    permits: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    /// `true` once the server stops: open streams close themselves.
    closing: Arc<watch::Sender<bool>>,
    cache: Option<Arc<DecisionCache>>,
    entities: Option<Arc<EntityCache>>,
    pool: Arc<EvalPool>,
    inline: Arc<InlineGate>,
    log: Option<DecisionLog>,
    metrics: Arc<Metrics>,
}

fn new_decision_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Pipeline {
    /// A pipeline over `store`, bounded by `opts`; fails when the
    /// evaluation threads cannot start.
    pub fn new(
        store: Arc<PolicyStore>,
        opts: PipelineOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        // A call holds an in-flight slot while its work is queued and queues
        // one job, so the queue fills only if that stops holding; then a job
        // is refused (and recorded), never lost.
        let queue = opts.max_in_flight.saturating_mul(2);
        let pool = EvalPool::new(opts.evaluation_threads, queue)?;
        Ok(Self {
            store,
            permits: Arc::new(Semaphore::new(opts.max_in_flight)),
            streams: Arc::new(Semaphore::new(opts.streams.max)),
            closing: Arc::new(watch::Sender::new(false)),
            cache: DecisionCache::new(opts.decision_cache_bytes).map(Arc::new),
            entities: EntityCache::new(opts.entity_cache_bytes).map(Arc::new),
            pool: Arc::new(pool),
            inline: Arc::new(InlineGate::new(opts.inline_evaluation_bytes)),
            opts: Arc::new(opts),
            log: None,
            metrics,
        })
    }

    /// Records every outcome to `log`.
    pub fn with_decision_log(mut self, log: DecisionLog) -> Self {
        self.log = Some(log);
        self
    }

    /// The store decisions are made from.
    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    /// The metrics every outcome is counted in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configured timeout, or the client's shorter one.
    pub fn timeout(&self, client: Option<Duration>) -> Duration {
        client.map_or(self.opts.request_timeout, |t| {
            t.min(self.opts.request_timeout)
        })
    }

    fn evaluator(&self) -> Evaluator<'_> {
        Evaluator {
            opts: &self.opts,
            cache: self.cache.as_deref().map(|c| (c, &*self.metrics)),
            at: None,
            entities: self.entities.as_deref().map(|c| (c, &*self.metrics)),
        }
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, DecisionError> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| DecisionError::overloaded(self.opts.max_in_flight))
    }

    /// The one record of a call whose decisions were not recorded each
    /// ([`Call::summarized`]): `req` is its query, `allow` its outcome, and
    /// `summary` what it found, under the record's `search`. Returns the
    /// record's decision id; `None` without a decision log.
    pub async fn record_summary(
        &self,
        req: &DecisionRequest,
        call: &Call,
        snapshot: &Snapshot,
        allow: bool,
        summary: Json,
    ) -> Option<String> {
        let log = self.log.as_ref()?;
        let decision_id = new_decision_id();
        let decision = Decision {
            allow,
            determining_policies: Vec::new(),
            errors: Vec::new(),
            dropped_properties: Vec::new(),
            shadow: None,
            changes_at: None,
            inactive_grants: Vec::new(),
        };
        let context = match &req.context {
            request::Context::Record(map) => map.clone(),
            request::Context::Json(text) => serde_json::from_str(text).unwrap_or_default(),
        };
        let subject = Subject::of(req, &Verified::NONE).with_query(&context, &[], None);
        let mut record = subject.decided(&decision, &decision_id, call, &call.span, snapshot);
        record.search = summary;
        // Replay decides one request; a search is many.
        record.replayable = false;
        log.mask(&mut record);
        let mut slots = log.reserve(1).await;
        slots.submit(record);
        Some(decision_id)
    }

    /// Room in the decision log for `n` records, waited for until `deadline`.
    async fn reserve(&self, n: usize, deadline: Instant) -> Result<Option<Slots>, ()> {
        match &self.log {
            None => Ok(None),
            Some(log) => tokio::time::timeout_at(deadline.into(), log.reserve(n))
                .await
                .map(Some)
                .map_err(drop),
        }
    }

    /// Whether token issuers are configured, so tokens can be verified.
    pub fn verifies_tokens(&self) -> bool {
        self.opts.tokens.is_some()
    }

    /// The most items one batch call may carry (`limits.max_batch_size`).
    pub fn max_batch_size(&self) -> usize {
        self.opts.max_batch_size
    }

    /// How streams are bounded.
    pub fn stream_limits(&self) -> StreamLimits {
        self.opts.streams
    }

    /// What closes every open stream when the server stops; it holds no
    /// handle on the decision log, so it may outlive the server.
    pub fn stream_closer(&self) -> StreamCloser {
        StreamCloser(Arc::clone(&self.closing))
    }

    /// Resolves once the server stops; streams end on it.
    pub async fn stopping(&self) {
        let mut closing = self.closing.subscribe();
        // Err: every sender is gone, so nobody can stop the server either.
        if closing.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Holds one stream slot (not an in-flight slot) for a stream's life;
    /// a refusal is recorded.
    pub fn admit_stream(&self, call: &Call) -> Result<OwnedSemaphorePermit, DecisionError> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            self.end_stream(call, DecisionError::too_many_streams(self.opts.streams.max))
        })
    }

    /// Records and counts a stream the server refused or closed, as one
    /// refusal with empty uids on the stream's `call`.
    pub fn end_stream(&self, call: &Call, error: DecisionError) -> DecisionError {
        let at = At::refused(call, &call.span, None);
        self.refuse(Ok(DecisionRequest::default()), error, at).error
    }

    /// One decision: admission, then [`Pipeline::decide`]. A call dropped
    /// before it is decided (the client went away) is recorded as cancelled.
    pub async fn authorize(&self, req: Submitted, call: &Call, admission: Admission) -> Answer {
        self.authorize_on(self.store.snapshot(), req, call, admission)
            .await
    }

    /// [`Pipeline::authorize`] against `snapshot`, which the front-end took
    /// to build the request; `None` (nothing loaded) refuses it as not ready.
    pub async fn authorize_on(
        &self,
        snapshot: Option<Arc<Snapshot>>,
        req: Submitted,
        call: &Call,
        admission: Admission,
    ) -> Answer {
        let mut pending = Pending::new(self, call, req);
        let (permit, timeout) = match admission {
            Admission::Acquire { timeout } => match self.admit() {
                Ok(p) => (Some(p), timeout),
                Err(e) => return Err(pending.refuse(e, None)),
            },
        };
        let Some(snapshot) = snapshot else {
            return Err(pending.refuse(DecisionError::not_ready(), None));
        };
        let deadline = call.started + timeout;
        let slots = match self.reserve(1, deadline).await {
            Ok(slots) => slots,
            Err(()) => {
                return Err(pending.refuse(DecisionError::deadline(timeout), Some(&snapshot)));
            }
        };
        let (mut req, invalid) = split(pending.take());
        let request_id = req.request_id.clone();
        let screening = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.evaluator()
                .screen(&snapshot, &mut req, invalid, true, &call.peer)
        }));
        let (verified, screened) = match screening {
            Ok(screened) => screened,
            Err(payload) => {
                let mut slots = slots;
                let at = At {
                    call,
                    span: &call.span,
                    snapshot: Some(&snapshot),
                    slots: slots.as_mut(),
                };
                return Err(self.panicked(&request_id, None, payload.as_ref(), at));
            }
        };
        let ready = Ready {
            snapshot,
            req,
            verified,
            screened,
            slots,
            deadline,
            timeout,
        };
        // On this worker or on the pool: `schedule` says which.
        let answer = self.schedule(ready, call).await;
        drop(permit);
        answer
    }

    /// A batch against one snapshot: each item is decided, or refused on its
    /// own, in order. When the whole call is refused, every item is recorded
    /// with the reason, and the error is returned.
    pub async fn authorize_batch(
        &self,
        items: Vec<Submitted>,
        shared: Result<Vec<Json>, InvalidField>,
        call: &Call,
        timeout: Duration,
    ) -> Result<Vec<Answer>, DecisionError> {
        let snapshot = self.store.snapshot();
        self.authorize_batch_on(snapshot, items, shared, call, timeout, BatchStop::Never)
            .await
    }

    /// [`Pipeline::authorize_batch`] against `snapshot`, which the front-end
    /// took to build the items (`None`: refused as not ready), stopping
    /// after the first item that meets `stop`: the answers end with it, and
    /// the items after it are neither evaluated nor recorded.
    pub async fn authorize_batch_on(
        &self,
        snapshot: Option<Arc<Snapshot>>,
        items: Vec<Submitted>,
        shared: Result<Vec<Json>, InvalidField>,
        call: &Call,
        timeout: Duration,
        stop: BatchStop,
    ) -> Result<Vec<Answer>, DecisionError> {
        let refuse_all = |items: Vec<Submitted>, e: DecisionError, snapshot: Option<&Snapshot>| {
            for (i, item) in items.into_iter().enumerate() {
                let span = span::authorize(Some(&call.span));
                self.refuse(
                    item,
                    e.clone().in_item(i, call.api.items()),
                    At::refused(call, &span, snapshot),
                );
            }
            span::record_failure(&call.span, &e);
            e
        };
        if items.len() > self.opts.max_batch_size {
            let e = DecisionError::batch_too_large(items.len(), self.opts.max_batch_size);
            return Err(refuse_all(items, e, None));
        }
        let permit = match self.admit() {
            Ok(p) => p,
            Err(e) => return Err(refuse_all(items, e, None)),
        };
        let snapshot = match snapshot.ok_or_else(DecisionError::not_ready) {
            Ok(s) => s,
            Err(e) => return Err(refuse_all(items, e, None)),
        };
        call.span
            .record("cedar.policy_revision", snapshot.revision.as_str());
        let shared = shared.map_err(DecisionError::invalid).and_then(|shared| {
            let limits = &self.opts.limits;
            limits
                .check_shared_entities(&shared)
                .map_err(DecisionError::limit)?;
            Ok(shared)
        });
        let shared = match shared {
            Ok(shared) => shared,
            Err(e) => return Err(refuse_all(items, e, Some(&snapshot))),
        };
        let deadline = call.started + timeout;
        let recorded = if call.records_each { items.len() } else { 0 };
        let slots = match self.reserve(recorded, deadline).await {
            Ok(slots) => slots,
            Err(()) => {
                let e = DecisionError::deadline(timeout);
                return Err(refuse_all(items, e, Some(&snapshot)));
            }
        };
        // A batch runs on the evaluation pool, as one job.
        let this = self.clone();
        let work_call = call.clone();
        let work = move || {
            let _permit = permit;
            this.decide_batch(
                &snapshot, items, shared, &work_call, deadline, timeout, slots, stop,
            )
        };
        self.on_pool(work, call, deadline, timeout).await
    }

    /// Parses the shared entities once, then decides each item in order.
    #[expect(clippy::too_many_arguments, reason = "one batch's whole state")]
    fn decide_batch(
        &self,
        snapshot: &Snapshot,
        items: Vec<Submitted>,
        shared: Vec<Json>,
        call: &Call,
        deadline: Instant,
        timeout: Duration,
        mut slots: Option<Slots>,
        stop: BatchStop,
    ) -> Result<Vec<Answer>, DecisionError> {
        let shared = if shared.is_empty() {
            None
        } else {
            match SharedEntities::parse(&snapshot.engine, shared.clone()) {
                Ok(entities) => Some(Shared {
                    entities,
                    // Serialized (and digested) once for every item's record.
                    record: self.log.as_ref().map(|log| log.entity_set(&shared)),
                    json: shared,
                }),
                Err(e) => {
                    let e = DecisionError::from(e);
                    for (i, item) in items.into_iter().enumerate() {
                        let span = span::authorize(Some(&call.span));
                        let at = At {
                            call,
                            span: &span,
                            snapshot: Some(snapshot),
                            slots: slots.as_mut(),
                        };
                        self.refuse(item, e.clone().in_item(i, call.api.items()), at);
                    }
                    return Err(e);
                }
            }
        };
        let mut answers = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let span = span::authorize(Some(&call.span));
            let answer = if Instant::now() >= deadline {
                let e = DecisionError::deadline(timeout).in_item(i, call.api.items());
                let at = At {
                    call,
                    span: &span,
                    snapshot: Some(snapshot),
                    slots: slots.as_mut(),
                };
                Err(self.refuse(item, e, at))
            } else {
                let batch = Item {
                    shared: shared.as_ref(),
                    index: i,
                };
                self.decide(snapshot, item, Some(batch), call, &span, slots.as_mut())
            };
            let allowed = matches!(&answer, Ok(o) if o.decision.allow);
            answers.push(answer);
            if stop.stops_at(allowed) {
                break;
            }
        }
        Ok(answers)
    }

    /// Decides one admitted request against `snapshot`, and records it.
    fn decide(
        &self,
        snapshot: &Snapshot,
        req: Submitted,
        item: Option<Item<'_>>,
        call: &Call,
        span: &Span,
        slots: Option<&mut Slots>,
    ) -> Answer {
        let request_id = match &req {
            Ok(r) => r.request_id.clone(),
            Err(rejected) => rejected.request.request_id.clone(),
        };
        let at = At {
            call,
            span,
            snapshot: Some(snapshot),
            slots,
        };
        self.guarded(&request_id, item.map(|i| i.index), at, |slots| {
            // A request that did not convert still faces binding first.
            let (mut req, invalid) = split(req);
            let cacheable = item.is_none_or(|i| i.shared.is_none());
            let (verified, screened) = self
                .evaluator()
                .screen(snapshot, &mut req, invalid, cacheable, &call.peer);
            self.settle(snapshot, req, verified, screened, item, call, span, slots)
        })
    }

    /// Finishes a screened request: evaluation (unless screening settled
    /// it), the span, the metric and the record; a panic on the way is an
    /// `internal` refusal of this request alone.
    #[expect(clippy::too_many_arguments, reason = "one decision's whole state")]
    fn settle(
        &self,
        snapshot: &Snapshot,
        req: DecisionRequest,
        verified: Verified,
        screened: Result<Screened, DecisionError>,
        item: Option<Item<'_>>,
        call: &Call,
        span: &Span,
        slots: Option<&mut Slots>,
    ) -> Answer {
        let request_id = req.request_id.clone();
        let at = At {
            call,
            span,
            snapshot: Some(snapshot),
            slots,
        };
        self.guarded(&request_id, item.map(|i| i.index), at, |slots| {
            self.settle_unguarded(snapshot, req, verified, screened, item, call, span, slots)
        })
    }

    #[expect(clippy::too_many_arguments, reason = "one decision's whole state")]
    fn settle_unguarded(
        &self,
        snapshot: &Snapshot,
        req: DecisionRequest,
        verified: Verified,
        screened: Result<Screened, DecisionError>,
        item: Option<Item<'_>>,
        call: &Call,
        span: &Span,
        mut slots: Option<&mut Slots>,
    ) -> Answer {
        span::record_request(span, &req);
        span::record_peer(span, &call.peer);
        let audit = self.log.is_some() && call.records_each;
        let request_id = req.request_id.clone();
        let shared = item.and_then(|i| i.shared);
        let mut subject = audit.then(|| {
            Subject::of(&req, &verified).with_shared(shared.and_then(|s| s.record.as_ref()))
        });
        let unverified_chain = {
            let chain = verified.chain(&req);
            !chain.is_empty() && !delegation::verified(chain, verified.subject_token())
        };
        let decided = screened
            .and_then(|screened| {
                self.evaluator().finish(
                    snapshot,
                    req,
                    verified,
                    screened,
                    shared,
                    &call.peer,
                    &mut subject,
                )
            })
            .map_err(|e| match item {
                Some(i) => e.in_item(i.index, call.api.items()),
                None => e,
            });
        match decided {
            Ok(decision) => {
                #[cfg(test)]
                guard::inject(&request_id);
                let decision_id = new_decision_id();
                // Built before anything is counted: should it panic, the
                // request is counted once, as refused.
                let record = match (slots.as_ref(), subject) {
                    (Some(_), Some(subject)) => {
                        Some(subject.decided(&decision, &decision_id, call, span, snapshot))
                    }
                    _ => None,
                };
                span::record_decision(span, &decision, &decision_id, &snapshot.revision);
                self.metrics
                    .decision(call.api.as_str(), decision.allow, call.started.elapsed());
                if let Some(shadow) = decision
                    .shadow
                    .as_ref()
                    .filter(|s| s.allow != decision.allow)
                {
                    self.metrics
                        .shadow_disagreement(decision.allow, shadow.allow);
                }
                if let (Some(slots), Some(record)) = (slots.as_mut(), record) {
                    slots.submit(record);
                }
                Ok(Outcome {
                    unverified_chain,
                    decision,
                    decision_id,
                    policy_revision: snapshot.revision.clone(),
                    request_id,
                })
            }
            Err(error) => {
                let at = At {
                    call,
                    span,
                    snapshot: Some(snapshot),
                    slots,
                };
                Err(self.failed(subject, request_id, error, at))
            }
        }
    }

    /// Records and counts a request that got no decision.
    fn refuse(&self, req: Submitted, error: DecisionError, at: At<'_, '_>) -> Box<Refusal> {
        let req = match req {
            Ok(r) => r,
            Err(rejected) => rejected.request,
        };
        self.refuse_screened(req, &Verified::NONE, error, at)
    }

    /// [`Pipeline::refuse`] for a screened request, recorded with what
    /// screening `verified` of it.
    fn refuse_screened(
        &self,
        req: DecisionRequest,
        verified: &Verified,
        error: DecisionError,
        at: At<'_, '_>,
    ) -> Box<Refusal> {
        span::record_request(at.span, &req);
        span::record_peer(at.span, &at.call.peer);
        let subject = self
            .log
            .as_ref()
            .filter(|_| at.call.records_each)
            .map(|_| Subject::of(&req, verified));
        self.failed(subject, req.request_id, error, at)
    }

    fn failed(
        &self,
        subject: Option<Subject>,
        request_id: String,
        error: DecisionError,
        at: At<'_, '_>,
    ) -> Box<Refusal> {
        let decision_id = new_decision_id();
        // The record is built before the count: should it panic, the guard
        // counts the request once.
        let logged = self.log.as_ref().zip(subject).map(|(log, subject)| {
            let mut record = subject.failed(&error, &decision_id, at.call, at.span, at.snapshot);
            // The span gets the message as masked for the record: Cedar
            // quotes values in its errors, and traces leave the host too.
            log.mask(&mut record);
            (log, record)
        });
        self.metrics.request_error(
            at.call.api.as_str(),
            error.code().label(),
            error.reason.as_str(),
        );
        let Some((log, record)) = logged else {
            span::record_failure(at.span, &error);
            return self.refusal(error, decision_id, request_id, at.snapshot);
        };
        let message = record.error.as_ref().map(|e| e.message.as_str());
        span::record_failure_as(at.span, &error, message.unwrap_or(&error.message));
        match at.slots {
            Some(slots) => slots.submit(record),
            None => log.submit_refusal(record),
        }
        self.refusal(error, decision_id, request_id, at.snapshot)
    }

    fn refusal(
        &self,
        error: DecisionError,
        decision_id: String,
        request_id: String,
        snapshot: Option<&Snapshot>,
    ) -> Box<Refusal> {
        Box::new(Refusal {
            error,
            decision_id,
            policy_revision: snapshot.map(|s| s.revision.clone()).unwrap_or_default(),
            request_id,
        })
    }
}

/// The request, and why it did not convert if it did not.
fn split(req: Submitted) -> (DecisionRequest, Option<DecisionError>) {
    match req {
        Ok(req) => (req, None),
        Err(rejected) => {
            let (req, error) = rejected.into_parts();
            (req, Some(error))
        }
    }
}

/// A batch's shared entities: parsed once, and as sent, for the limits
/// and the records.
struct Shared {
    entities: SharedEntities,
    json: Vec<Json>,
    record: Option<EntitySet>,
}

/// Closes the open streams of a pipeline; see [`Pipeline::stream_closer`].
#[derive(Clone, Debug)]
pub struct StreamCloser(Arc<watch::Sender<bool>>);

impl StreamCloser {
    /// Tells every open stream, and every stream opened from now on, to
    /// close with `shutting_down`.
    pub fn close(&self) {
        self.0.send_replace(true);
    }
}

/// Where an outcome is recorded: the call, its span, the snapshot that
/// judged it (if one was live) and the log room reserved for it (if any).
struct At<'a, 'b> {
    call: &'a Call,
    span: &'a Span,
    snapshot: Option<&'a Snapshot>,
    slots: Option<&'b mut Slots>,
}

impl<'a> At<'a, '_> {
    /// A refusal before any log room was reserved.
    fn refused(call: &'a Call, span: &'a Span, snapshot: Option<&'a Snapshot>) -> Self {
        Self {
            call,
            span,
            snapshot,
            slots: None,
        }
    }
}

/// Where a batch item sits: its index, and the batch's shared entities.
#[derive(Clone, Copy)]
struct Item<'a> {
    shared: Option<&'a Shared>,
    index: usize,
}
