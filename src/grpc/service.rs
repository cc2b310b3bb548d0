//! The `cedar_pdp.v1.Authorizer` service.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};
use tracing::Span;

use super::audit::{CallInfo, Subject};
use super::convert::{entities_to_json, query_from_request};
use super::proto::authorizer_server::Authorizer;
use super::proto::{
    AuthorizeRequest, AuthorizeResponse, BatchAuthorizeRequest, BatchAuthorizeResponse, Decision,
    EvaluationError, GetPolicyStatusRequest, PolicyStatus,
};
use super::spans;
use super::status::ApiError;
use crate::authorizer;
use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;
use crate::policy_store::{PolicyStore, Snapshot};

/// Answers authorization requests from the store's live snapshot.
#[derive(Clone, Debug)]
pub struct AuthorizerService {
    store: Arc<PolicyStore>,
    max_batch_size: usize,
    log: Option<DecisionLog>,
    metrics: Arc<Metrics>,
}

impl AuthorizerService {
    /// A service over `store` that refuses batches above `max_batch_size`.
    pub fn new(store: Arc<PolicyStore>, max_batch_size: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            max_batch_size,
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
    fn call_info<T>(&self, request: &Request<T>, span: &Span) -> CallInfo {
        match self.log {
            Some(_) => {
                CallInfo::of(request.remote_addr(), request.metadata()).with_span(spans::ids(span))
            }
            None => CallInfo::started_now(),
        }
    }

    fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        self.store.snapshot().ok_or(ApiError::NotReady)
    }
}

/// One item's outcome: the response or the reason it could not be
/// evaluated, and the request side of its decision record when logging.
type Outcome = (
    Result<AuthorizeResponse, (String, ApiError)>,
    Option<Subject>,
);

/// Evaluates one request against one snapshot.
fn decide(
    snapshot: &Snapshot,
    req: AuthorizeRequest,
    shared: &[serde_json::Value],
    audit: bool,
) -> Outcome {
    let request_id = req.request_id.clone();
    let has_workload = req.workload.is_some();
    let mut subject = audit.then(|| Subject::of(&req));
    let decided = query_from_request(req, shared)
        .map_err(ApiError::from)
        .and_then(|q| {
            subject = subject
                .take()
                .map(|s| s.with_context(&q.context, has_workload));
            authorizer::authorize(snapshot, q).map_err(ApiError::from)
        });
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
) -> Vec<(AuthorizeResponse, Option<Subject>)> {
    requests
        .into_iter()
        .enumerate()
        .map(|(i, req)| {
            let span = spans::authorize(Some(parent));
            spans::record_request(&span, &req);
            let outcome = decide_item(snapshot, req, shared, audit, i);
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
) -> (AuthorizeResponse, Option<Subject>) {
    match decide(snapshot, req, shared, audit) {
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

fn new_decision_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl AuthorizerService {
    async fn authorize_call(
        &self,
        request: Request<AuthorizeRequest>,
        span: &Span,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let call = self.call_info(&request, span);
        spans::record_request(span, request.get_ref());
        let snapshot = self.snapshot()?;
        // Reserve the log slot first: a decision that is made always has room
        // to be recorded, even if the call is cancelled right after.
        let mut slots = match &self.log {
            Some(log) => Some(log.reserve(1).await),
            None => None,
        };
        let (response, subject) = decide(&snapshot, request.into_inner(), &[], slots.is_some());
        let response = response.map_err(|(_, e)| Status::from(e))?;
        spans::record_response(span, &response);
        self.metrics.decision(
            response.decision == Decision::Allow as i32,
            call.started.elapsed(),
        );
        if let (Some(slots), Some(subject)) = (slots.as_mut(), subject) {
            slots.submit(subject.into_record(&response, &call, &snapshot));
        }
        Ok(Response::new(response))
    }

    async fn batch_call(
        &self,
        request: Request<BatchAuthorizeRequest>,
        span: &Span,
    ) -> Result<Response<BatchAuthorizeResponse>, Status> {
        let call = self.call_info(&request, span);
        let batch = request.into_inner();
        span.record("cedar.batch_size", batch.requests.len() as u64);
        if batch.requests.len() > self.max_batch_size {
            return Err(ApiError::BatchTooLarge {
                len: batch.requests.len(),
                max: self.max_batch_size,
            }
            .into());
        }
        let snapshot = self.snapshot()?;
        span.record("cedar.policy_revision", snapshot.revision.as_str());
        let shared = entities_to_json(batch.entities, &batch.entities_json, "entities")
            .map_err(ApiError::from)?;
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
            tokio::task::spawn_blocking(move || {
                decide_batch(&snapshot, batch.requests, &shared, audit, &parent)
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

#[tonic::async_trait]
impl Authorizer for AuthorizerService {
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let _inflight = self.metrics.inflight();
        let span = spans::authorize(None);
        spans::continue_trace(&span, request.metadata());
        self.authorize_call(request, &span).await.inspect_err(|s| {
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
        self.batch_call(request, &span).await.inspect_err(|s| {
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
        }
        Ok(Response::new(out))
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}
