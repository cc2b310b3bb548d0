//! The `cedar_pdp.v1.Authorizer` service.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};

use super::convert::{entities_to_json, query_from_request};
use super::proto::authorizer_server::Authorizer;
use super::proto::{
    AuthorizeRequest, AuthorizeResponse, BatchAuthorizeRequest, BatchAuthorizeResponse, Decision,
    EvaluationError, GetPolicyStatusRequest, PolicyStatus,
};
use super::status::ApiError;
use crate::authorizer;
use crate::policy_store::{PolicyStore, Snapshot};

/// Answers authorization requests from the store's live snapshot.
#[derive(Clone, Debug)]
pub struct AuthorizerService {
    store: Arc<PolicyStore>,
    max_batch_size: usize,
}

impl AuthorizerService {
    /// A service over `store` that refuses batches above `max_batch_size`.
    pub fn new(store: Arc<PolicyStore>, max_batch_size: usize) -> Self {
        Self {
            store,
            max_batch_size,
        }
    }

    fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        self.store.snapshot().ok_or(ApiError::NotReady)
    }
}

/// Evaluates one request against one snapshot.
fn decide(
    snapshot: &Snapshot,
    req: AuthorizeRequest,
    shared: &[serde_json::Value],
) -> Result<AuthorizeResponse, (String, ApiError)> {
    let request_id = req.request_id.clone();
    let decided = query_from_request(req, shared)
        .map_err(ApiError::from)
        .and_then(|q| authorizer::authorize(snapshot, q).map_err(ApiError::from));
    match decided {
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
    }
}

/// Evaluates every item; an invalid item is denied on its own.
fn decide_batch(
    snapshot: &Snapshot,
    requests: Vec<AuthorizeRequest>,
    shared: &[serde_json::Value],
) -> Vec<AuthorizeResponse> {
    requests
        .into_iter()
        .enumerate()
        .map(|(i, req)| match decide(snapshot, req, shared) {
            Ok(resp) => resp,
            // An invalid item fails closed on its own; the rest still run.
            Err((request_id, err)) => {
                let message = match err {
                    ApiError::Field(f) => f.within(&format!("requests[{i}]")).to_string(),
                    other => format!("`requests[{i}]`: {other}"),
                };
                AuthorizeResponse {
                    decision: Decision::Deny as i32,
                    determining_policies: Vec::new(),
                    errors: vec![EvaluationError {
                        policy_id: String::new(),
                        message,
                    }],
                    decision_id: new_decision_id(),
                    policy_revision: snapshot.revision.clone(),
                    request_id,
                }
            }
        })
        .collect()
}

fn new_decision_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[tonic::async_trait]
impl Authorizer for AuthorizerService {
    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<AuthorizeResponse>, Status> {
        let snapshot = self.snapshot()?;
        decide(&snapshot, request.into_inner(), &[])
            .map(Response::new)
            .map_err(|(_, e)| e.into())
    }

    async fn batch_authorize(
        &self,
        request: Request<BatchAuthorizeRequest>,
    ) -> Result<Response<BatchAuthorizeResponse>, Status> {
        let batch = request.into_inner();
        if batch.requests.len() > self.max_batch_size {
            return Err(ApiError::BatchTooLarge {
                len: batch.requests.len(),
                max: self.max_batch_size,
            }
            .into());
        }
        let snapshot = self.snapshot()?;
        let shared = entities_to_json(batch.entities, &batch.entities_json, "entities")
            .map_err(ApiError::from)?;
        // A batch can take milliseconds of CPU; keep it off the async workers
        // so health checks and other calls are not starved.
        let responses =
            tokio::task::spawn_blocking(move || decide_batch(&snapshot, batch.requests, &shared))
                .await
                .map_err(|e| Status::internal(format!("batch evaluation failed: {e}")))?;
        Ok(Response::new(BatchAuthorizeResponse { responses }))
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
