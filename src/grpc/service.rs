//! The `cedar_pdp.v1.Authorizer` service: a thin adapter over the pipeline.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, decision_request, shared_entities};
use super::proto::authorizer_server::Authorizer;
use super::proto::{
    AuthorizeRequest, AuthorizeResponse, BatchAuthorizeRequest, BatchAuthorizeResponse,
    GetPolicyStatusRequest, PolicyStatus,
};
use super::rpc::Facts;
use super::status::status;
use crate::identity::PeerFacts;
use crate::metrics::Metrics;
use crate::pipeline::{Admission, Pipeline, PipelineOptions, span};
use crate::policy_store::PolicyStore;

/// Answers authorization requests from the store's live snapshot.
#[derive(Clone, Debug)]
pub struct AuthorizerService {
    pipeline: Pipeline,
}

impl AuthorizerService {
    /// A service over `store`, bounded by `opts`; fails when the
    /// evaluation threads cannot start.
    pub fn new(
        store: Arc<PolicyStore>,
        opts: PipelineOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        Pipeline::new(store, opts, metrics).map(Self::over)
    }

    /// A service over `pipeline`.
    pub fn over(pipeline: Pipeline) -> Self {
        Self { pipeline }
    }
}

impl AuthorizerService {
    /// Answers each request of `inbound` in order until it ends or the
    /// client goes away. Holds one in-flight slot for the stream's life;
    /// each item is bounded by `limits.request_timeout` on its own.
    async fn run_stream(
        self,
        mut inbound: Streaming<AuthorizeRequest>,
        peer: Option<PeerFacts>,
        metadata: tonic::metadata::MetadataMap,
        tx: mpsc::Sender<Result<AuthorizeResponse, Status>>,
    ) {
        let facts = Facts::new(peer.as_ref(), &metadata);
        let timeout = self.pipeline.timeout(None);
        loop {
            let req = match inbound.message().await {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let _inflight = self.pipeline.metrics().inflight();
            let call = facts.call(span::authorize(None));
            let answer = self
                .pipeline
                .authorize(decision_request(req), &call, Admission::Held { timeout })
                .await;
            // Fail closed, but keep the stream: one bad request must not
            // cost the caller every decision queued behind it.
            if tx.send(Ok(convert::stream_item(answer))).await.is_err() {
                return;
            }
        }
    }
}

/// The response stream of `AuthorizeStream`.
pub(super) type ResponseStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<AuthorizeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Authorizer for AuthorizerService {
    type AuthorizeStreamStream = ResponseStream;

    async fn authorize_stream(
        &self,
        request: Request<Streaming<AuthorizeRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let permit = {
            let facts = Facts::of(&request);
            let rpc = facts.start(&self.pipeline, span::authorize(None));
            self.pipeline.admit_stream(&rpc.call).map_err(status)?
        };
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
        let rpc = Facts::of(&request).start(&self.pipeline, span::authorize(None));
        let req = decision_request(request.into_inner());
        let admission = Admission::Acquire {
            timeout: rpc.timeout,
        };
        match self.pipeline.authorize(req, &rpc.call, admission).await {
            Ok(outcome) => Ok(Response::new(outcome.into())),
            Err(refusal) => Err(status(refusal.error)),
        }
    }

    async fn batch_authorize(
        &self,
        request: Request<BatchAuthorizeRequest>,
    ) -> Result<Response<BatchAuthorizeResponse>, Status> {
        let rpc = Facts::of(&request).start(&self.pipeline, span::batch());
        let batch = request.into_inner();
        rpc.call
            .span
            .record("cedar.batch_size", batch.requests.len() as u64);
        let shared = shared_entities(batch.entities, &batch.entities_json);
        let items = batch.requests.into_iter().map(decision_request).collect();
        let answers = self
            .pipeline
            .authorize_batch(items, shared, &rpc.call, rpc.timeout)
            .await
            .map_err(status)?;
        let responses = answers.into_iter().map(convert::batch_item).collect();
        Ok(Response::new(BatchAuthorizeResponse { responses }))
    }

    async fn get_policy_status(
        &self,
        _request: Request<GetPolicyStatusRequest>,
    ) -> Result<Response<PolicyStatus>, Status> {
        // Answered even before the first load, so the load error is visible.
        let (snapshot, status) = self.pipeline.store().state();
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
