//! The `cedar_pdp.v1.Authorizer` service.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Span;

use super::audit::{CallInfo, Subject};
use super::convert::{InvalidField, entities_to_json, query_from_request};
use super::decision_cache::DecisionCache;
use super::limits::Limits;
use super::proto::authorizer_server::Authorizer;
use super::proto::{
    AuthorizeRequest, AuthorizeResponse, BatchAuthorizeRequest, BatchAuthorizeResponse, Decision,
    EvaluationError, GetPolicyStatusRequest, PolicyStatus,
};
use super::spans;
use super::status::ApiError;
use crate::authorizer;
use crate::config::Config;
use crate::decision_log::DecisionLog;
use crate::identity::PeerFacts;
use crate::metrics::Metrics;
use crate::policy_store::{PolicyStore, Snapshot};

/// How the service bounds and shapes calls; built from the config.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    pub max_batch_size: usize,
    pub limits: Limits,
    /// Calls evaluated at once; the rest are shed.
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    /// Context key for verified caller facts; `None` keeps them out.
    pub caller_key: Option<String>,
    /// Reject a `workload.spiffe_id` that is not the verified caller's.
    pub bind_workload: bool,
    /// Bytes of decisions kept for identical requests; 0 turns it off.
    pub decision_cache_bytes: u64,
}

impl ServiceOptions {
    /// The options `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_batch_size: config.limits.max_batch_size,
            limits: Limits::from(&config.limits),
            max_in_flight: config.limits.max_in_flight,
            request_timeout: config.limits.request_timeout,
            caller_key: Some(config.caller.context_key.clone()).filter(|k| !k.is_empty()),
            bind_workload: config.binds_workload(),
            decision_cache_bytes: config.limits.decision_cache_bytes,
        }
    }
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// Answers authorization requests from the store's live snapshot.
#[derive(Clone, Debug)]
pub struct AuthorizerService {
    store: Arc<PolicyStore>,
    opts: Arc<ServiceOptions>,
    permits: Arc<Semaphore>,
    cache: Option<Arc<DecisionCache>>,
    log: Option<DecisionLog>,
    metrics: Arc<Metrics>,
}

impl AuthorizerService {
    /// A service over `store`, bounded by `opts`.
    pub fn new(store: Arc<PolicyStore>, opts: ServiceOptions, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            permits: Arc::new(Semaphore::new(opts.max_in_flight)),
            cache: DecisionCache::new(opts.decision_cache_bytes).map(Arc::new),
            opts: Arc::new(opts),
            log: None,
            metrics,
        }
    }

    /// Records every decision to `log`.
    pub fn with_decision_log(mut self, log: DecisionLog) -> Self {
        self.log = Some(log);
        self
    }

    /// Peer and trace ids feed only the decision log; without it, skip them.
    pub(super) fn call_info(
        &self,
        peer: Option<&PeerFacts>,
        metadata: &MetadataMap,
        span: &Span,
    ) -> CallInfo {
        match self.log {
            Some(_) => CallInfo::of(peer.cloned().unwrap_or_default(), metadata)
                .with_span(spans::ids(span)),
            None => CallInfo::started_now(),
        }
    }

    pub(super) fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        self.store.snapshot().ok_or(ApiError::NotReady)
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A slot among the calls evaluated at once; none left sheds the call.
    pub(super) fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                max: self.opts.max_in_flight,
            })
    }

    /// The configured timeout, or the client's shorter `grpc-timeout`.
    pub(super) fn timeout(&self, metadata: &MetadataMap) -> Duration {
        grpc_timeout(metadata).map_or(self.opts.request_timeout, |t| {
            t.min(self.opts.request_timeout)
        })
    }

    /// Runs `call`, failing it with `DEADLINE_EXCEEDED` after `timeout`.
    pub(super) async fn within<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(ApiError::DeadlineExceeded { timeout }.into()))
    }
}

/// The client's `grpc-timeout` header: an integer and a unit (H M S m u n).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What a request is judged with besides itself: the verified caller, and
/// how the service treats it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Judge<'a> {
    pub opts: &'a ServiceOptions,
    pub peer: Option<&'a PeerFacts>,
    pub cache: Option<&'a DecisionCache>,
    pub metrics: &'a Metrics,
}

impl Judge<'_> {
    /// The peer whose facts go into the context, if any.
    fn injected_peer(&self) -> Option<&PeerFacts> {
        self.opts.caller_key.as_ref()?;
        self.peer.filter(|p| p.is_verified())
    }

    /// Caller binding: a workload may only speak for itself.
    fn check_binding(&self, req: &AuthorizeRequest) -> Result<(), ApiError> {
        if !self.opts.bind_workload {
            return Ok(());
        }
        let Some(claimed) = req.workload.as_ref().map(|w| w.spiffe_id.as_str()) else {
            return Ok(());
        };
        if claimed.is_empty() {
            return Ok(());
        }
        let verified = self
            .peer
            .and_then(|p| p.spiffe.as_ref())
            .map(|s| s.id.as_str());
        if verified == Some(claimed) {
            return Ok(());
        }
        Err(ApiError::CallerMismatch {
            claimed: claimed.to_string(),
            verified: verified.unwrap_or_default().to_string(),
        })
    }

    /// Adds the verified caller facts under the reserved context key.
    fn add_caller(&self, context: &mut serde_json::Map<String, Json>) -> Result<(), InvalidField> {
        let Some(key) = &self.opts.caller_key else {
            return Ok(());
        };
        if context.contains_key(key) {
            return Err(InvalidField {
                field: format!("context.{key}"),
                message: "is reserved for the verified caller (`caller.context_key`); rename the context key".into(),
            });
        }
        if let Some(peer) = self.peer.filter(|p| p.is_verified()) {
            context.insert(key.clone(), peer.to_context());
        }
        Ok(())
    }
}

/// One item's outcome: the response or the reason it could not be
/// evaluated, and the request side of its decision record when logging.
type Outcome = (
    Result<AuthorizeResponse, (String, ApiError)>,
    Option<Subject>,
);

/// Evaluates one request against one snapshot.
pub(super) fn decide(
    snapshot: &Snapshot,
    mut req: AuthorizeRequest,
    shared: &[serde_json::Value],
    audit: bool,
    judge: Judge<'_>,
) -> Outcome {
    let request_id = req.request_id.clone();
    let has_workload = req.workload.is_some();
    let mut subject = audit.then(|| Subject::of(&req));
    let checked = judge.check_binding(&req).and_then(|()| {
        let limits = &judge.opts.limits;
        limits.check_request_id(&req.request_id)?;
        limits.check_context_json(&req.context_json)?;
        Ok(())
    });
    // Binding and limits first: a cached answer never skips them.
    let mut cached = None;
    let mut cache_key = None;
    if let (Ok(()), Some(cache), true) = (&checked, judge.cache, shared.is_empty()) {
        cache_key = DecisionCache::key(snapshot.generation, &mut req, judge.injected_peer());
        cached = cache_key.as_deref().and_then(|k| cache.get(k));
        if cache_key.is_some() {
            judge.metrics.decision_cache(cached.is_some());
        }
    }
    let decided = match (checked, cached) {
        // Without a log record to fill, a hit needs no conversion at all.
        (Ok(()), Some(hit)) if !audit => Ok((*hit).clone()),
        (checked, cached) => checked
            .and_then(|()| query_from_request(req, shared).map_err(ApiError::from))
            .and_then(|mut q| {
                judge.opts.limits.check_query(&q)?;
                subject = subject
                    .take()
                    .map(|s| s.with_context(&q.context, has_workload));
                judge.add_caller(&mut q.context)?;
                if let Some(hit) = cached {
                    return Ok((*hit).clone());
                }
                let decision = authorizer::authorize(snapshot, q)?;
                if let (Some(cache), Some(key)) = (judge.cache, cache_key) {
                    cache.insert(key, Arc::new(decision.clone()));
                }
                Ok(decision)
            }),
    };
    let response = match decided {
        Ok(d) => Ok(AuthorizeResponse {
            decision: if d.allow {
                Decision::Allow
            } else {
                Decision::Deny
            } as i32,
            determining_policies: d.determining_policies,
            errors: d.errors.into_iter().map(Into::into).collect(),
            decision_id: new_decision_id(),
            policy_revision: snapshot.revision.clone(),
            request_id,
        }),
        Err(e) => Err((request_id, e)),
    };
    (response, subject)
}

/// Evaluates every item; an invalid item is denied on its own.
fn decide_batch(
    snapshot: &Snapshot,
    requests: Vec<AuthorizeRequest>,
    shared: &[serde_json::Value],
    audit: bool,
    parent: &Span,
    judge: Judge<'_>,
) -> Vec<(AuthorizeResponse, Option<Subject>)> {
    requests
        .into_iter()
        .enumerate()
        .map(|(i, req)| {
            let span = spans::authorize(Some(parent));
            spans::record_request(&span, &req);
            let outcome = decide_item(snapshot, req, shared, audit, i, judge);
            spans::record_response(&span, &outcome.0);
            outcome
        })
        .collect()
}

/// One batch item; an invalid one is denied with the reason in `errors`.
fn decide_item(
    snapshot: &Snapshot,
    req: AuthorizeRequest,
    shared: &[serde_json::Value],
    audit: bool,
    i: usize,
    judge: Judge<'_>,
) -> (AuthorizeResponse, Option<Subject>) {
    match decide(snapshot, req, shared, audit, judge) {
        (Ok(resp), subject) => (resp, subject),
        // An invalid item fails closed on its own; the rest still run.
        (Err((request_id, err)), subject) => {
            let message = match err {
                ApiError::Field(f) => f.within(&format!("requests[{i}]")).to_string(),
                other => format!("`requests[{i}]`: {other}"),
            };
            let resp = AuthorizeResponse {
                decision: Decision::Deny as i32,
                determining_policies: Vec::new(),
                errors: vec![EvaluationError {
                    policy_id: String::new(),
                    message,
                }],
                decision_id: new_decision_id(),
                policy_revision: snapshot.revision.clone(),
                request_id,
            };
            (resp, subject)
        }
    }
}

pub(super) fn new_decision_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl AuthorizerService {
    async fn authorize_call(
        &self,
        request: Request<AuthorizeRequest>,
        span: &Span,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let peer = request.extensions().get::<PeerFacts>().cloned();
        let call = self.call_info(peer.as_ref(), request.metadata(), span);
        let snapshot = self.snapshot()?;
        let response = self
            .decide_one(&snapshot, request.into_inner(), peer.as_ref(), call, span)
            .await?;
        Ok(Response::new(response))
    }

    /// One decision with its span, metrics and decision record: the path
    /// `Authorize` and ext_authz `Check` share.
    pub(super) async fn decide_one(
        &self,
        snapshot: &Snapshot,
        request: AuthorizeRequest,
        peer: Option<&PeerFacts>,
        call: CallInfo,
        span: &Span,
    ) -> Result<AuthorizeResponse, ApiError> {
        spans::record_request(span, &request);
        spans::record_peer(span, peer);
        // Reserve the log slot first: a decision that is made always has room
        // to be recorded, even if the call is cancelled right after.
        let mut slots = match &self.log {
            Some(log) => Some(log.reserve(1).await),
            None => None,
        };
        let judge = Judge {
            opts: &self.opts,
            peer,
            cache: self.cache.as_deref(),
            metrics: &self.metrics,
        };
        let (response, subject) = decide(snapshot, request, &[], slots.is_some(), judge);
        let response = response.map_err(|(_, e)| e)?;
        spans::record_response(span, &response);
        self.metrics.decision(
            response.decision == Decision::Allow as i32,
            call.started.elapsed(),
        );
        if let (Some(slots), Some(subject)) = (slots.as_mut(), subject) {
            slots.submit(subject.into_record(&response, &call, snapshot));
        }
        Ok(response)
    }

    async fn batch_call(
        &self,
        request: Request<BatchAuthorizeRequest>,
        span: &Span,
        permit: OwnedSemaphorePermit,
    ) -> Result<Response<BatchAuthorizeResponse>, Status> {
        let peer = request.extensions().get::<PeerFacts>().cloned();
        let call = self.call_info(peer.as_ref(), request.metadata(), span);
        let batch = request.into_inner();
        span.record("cedar.batch_size", batch.requests.len() as u64);
        if batch.requests.len() > self.opts.max_batch_size {
            return Err(ApiError::BatchTooLarge {
                len: batch.requests.len(),
                max: self.opts.max_batch_size,
            }
            .into());
        }
        let snapshot = self.snapshot()?;
        span.record("cedar.policy_revision", snapshot.revision.as_str());
        let shared = entities_to_json(batch.entities, &batch.entities_json, "entities")
            .map_err(ApiError::from)?;
        if shared.len() > self.opts.limits.max_entities {
            return Err(ApiError::from(InvalidField {
                field: "entities".into(),
                message: format!(
                    "{} shared entities; the limit is {} (`limits.max_entities_per_request`)",
                    shared.len(),
                    self.opts.limits.max_entities
                ),
            })
            .into());
        }
        // A batch can take milliseconds of CPU; keep it off the async workers
        // so health checks and other calls are not starved.
        let mut slots = match &self.log {
            Some(log) => Some(log.reserve(batch.requests.len()).await),
            None => None,
        };
        let audit = slots.is_some();
        let decided = {
            let snapshot = Arc::clone(&snapshot);
            let parent = span.clone();
            let opts = self.opts.clone();
            let cache = self.cache.clone();
            let metrics = self.metrics.clone();
            // The work owns the slot: a call abandoned by its client (or its
            // deadline) still counts until the evaluation it started ends.
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let judge = Judge {
                    opts: &opts,
                    peer: peer.as_ref(),
                    cache: cache.as_deref(),
                    metrics: &metrics,
                };
                decide_batch(&snapshot, batch.requests, &shared, audit, &parent, judge)
            })
            .await
            .map_err(|e| Status::internal(format!("batch evaluation failed: {e}")))?
        };
        let mut responses = Vec::with_capacity(decided.len());
        let took = call.started.elapsed();
        for (response, subject) in decided {
            self.metrics
                .decision(response.decision == Decision::Allow as i32, took);
            if let (Some(slots), Some(subject)) = (slots.as_mut(), subject) {
                slots.submit(subject.into_record(&response, &call, &snapshot));
            }
            responses.push(response);
        }
        Ok(Response::new(BatchAuthorizeResponse { responses }))
    }
}

impl AuthorizerService {
    /// Answers each request of `inbound` in order until it ends or the
    /// client goes away. Holds one in-flight slot for the stream's life.
    async fn run_stream(
        self,
        mut inbound: Streaming<AuthorizeRequest>,
        peer: Option<PeerFacts>,
        metadata: MetadataMap,
        tx: mpsc::Sender<Result<AuthorizeResponse, Status>>,
    ) {
        loop {
            let req = match inbound.message().await {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let _inflight = self.metrics.inflight();
            let span = spans::authorize(None);
            spans::continue_trace(&span, &metadata);
            let call = self.call_info(peer.as_ref(), &metadata, &span);
            let request_id = req.request_id.clone();
            let decided = match self.snapshot() {
                Ok(snapshot) => self
                    .decide_one(&snapshot, req, peer.as_ref(), call, &span)
                    .await
                    .map_err(|e| (e, snapshot.revision.clone())),
                Err(e) => Err((e, String::new())),
            };
            let response = decided.unwrap_or_else(|(err, revision)| {
                let status = Status::from(err);
                spans::record_failure(&span, &status);
                self.metrics.request_error(status.code());
                // Fail closed, but keep the stream: one bad request must not
                // cost the caller every decision queued behind it.
                AuthorizeResponse {
                    decision: Decision::Deny as i32,
                    determining_policies: Vec::new(),
                    errors: vec![EvaluationError {
                        policy_id: String::new(),
                        message: format!("{:?}: {}", status.code(), status.message()),
                    }],
                    decision_id: new_decision_id(),
                    policy_revision: revision,
                    request_id,
                }
            });
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }
}

/// The response stream of `AuthorizeStream`.
pub type ResponseStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<AuthorizeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Authorizer for AuthorizerService {
    type AuthorizeStreamStream = ResponseStream;

    async fn authorize_stream(
        &self,
        request: Request<Streaming<AuthorizeRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let permit = self
            .admit()
            .inspect_err(|e| self.metrics.request_error(e.code()))?;
        let peer = request.extensions().get::<PeerFacts>().cloned();
        let metadata = request.metadata().clone();
        // Bounded: a client that stops reading stops the evaluation too.
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            this.run_stream(request.into_inner(), peer, metadata, tx)
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let _inflight = self.metrics.inflight();
        let span = spans::authorize(None);
        spans::continue_trace(&span, request.metadata());
        let timeout = self.timeout(request.metadata());
        let call = async {
            let _permit = self.admit()?;
            self.authorize_call(request, &span).await
        };
        self.within(timeout, call).await.inspect_err(|s| {
            spans::record_failure(&span, s);
            self.metrics.request_error(s.code());
        })
    }

    async fn batch_authorize(
        &self,
        request: Request<BatchAuthorizeRequest>,
    ) -> Result<Response<BatchAuthorizeResponse>, Status> {
        let _inflight = self.metrics.inflight();
        let span = spans::batch();
        spans::continue_trace(&span, request.metadata());
        let timeout = self.timeout(request.metadata());
        let call = async {
            let permit = self.admit()?;
            self.batch_call(request, &span, permit).await
        };
        self.within(timeout, call).await.inspect_err(|s| {
            spans::record_failure(&span, s);
            self.metrics.request_error(s.code());
        })
    }

    async fn get_policy_status(
        &self,
        _request: Request<GetPolicyStatusRequest>,
    ) -> Result<Response<PolicyStatus>, Status> {
        // Answered even before the first load, so the load error is visible.
        let (snapshot, status) = self.store.state();
        let mut out = PolicyStatus {
            last_reload_error: status.last_error.unwrap_or_default(),
            last_reload_attempt_at: status.last_attempt_at.map(timestamp),
            ..PolicyStatus::default()
        };
        if let Some(snapshot) = snapshot {
            out.revision = snapshot.revision.clone();
            out.generation = snapshot.generation;
            out.loaded_at = Some(timestamp(snapshot.loaded_at));
            out.policy_count = snapshot.policy_count as u64;
            out.entity_count = snapshot.entity_count as u64;
            out.schema_loaded = snapshot.schema.is_some();
            if let Some(git) = &snapshot.git_commit {
                out.git_commit = git.id.clone();
                out.git_dirty = git.dirty;
            }
        }
        Ok(Response::new(out))
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}
