//! The `cedar_pdp.v1.Authorizer` service: a thin adapter over the pipeline.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

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
use crate::metrics::Metrics;
use crate::pipeline::{
    Admission, Call, DecisionError, Pipeline, PipelineOptions, StreamLimits, span,
};
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
    /// Answers each request of `inbound` in order until it ends, the client
    /// goes away, or the stream's own limits close it. Each item takes an
    /// in-flight slot only while it is evaluated, and is bounded by
    /// `limits.request_timeout` on its own.
    async fn run_stream(
        self,
        mut inbound: Streaming<AuthorizeRequest>,
        stream: Call,
        metadata: tonic::metadata::MetadataMap,
        tx: mpsc::Sender<Result<AuthorizeResponse, Status>>,
    ) {
        let facts = Facts::new(Some(&stream.peer), &metadata);
        let timeout = self.pipeline.timeout(None);
        let limits = self.pipeline.stream_limits();
        let closes_at = Instant::now() + limits.max_age;
        loop {
            let stopping = self.pipeline.stopping();
            let next = match bounded(inbound.message(), limits, closes_at, stopping).await {
                Ok(next) => next,
                Err(end) => return self.close(&stream, &tx, end),
            };
            let req = match next {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.try_send(Err(status));
                    return;
                }
            };
            let _inflight = self.pipeline.metrics().inflight();
            let call = facts.call(span::authorize(None));
            let answer = self
                .pipeline
                .authorize(decision_request(req), &call, Admission::Acquire { timeout })
                .await;
            // Fail closed, but keep the stream: one bad request must not
            // cost the caller every decision queued behind it. A client that
            // stops reading is idle too.
            let sent = tx.send(Ok(convert::stream_item(answer)));
            match bounded(sent, limits, closes_at, self.pipeline.stopping()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(end) => return self.close(&stream, &tx, end),
            }
        }
    }

    /// Ends a stream the server closes: recorded, counted, and told to the
    /// client if it still reads (never waited for).
    fn close(
        &self,
        stream: &Call,
        tx: &mpsc::Sender<Result<AuthorizeResponse, Status>>,
        end: DecisionError,
    ) {
        let error = self.pipeline.end_stream(stream, end);
        let _ = tx.try_send(Err(status(error)));
    }
}

/// `step`, unless the stream is idle for `limits.idle_timeout` first,
/// reaches `closes_at`, or the server starts `stopping`.
async fn bounded<F: Future>(
    step: F,
    limits: StreamLimits,
    closes_at: Instant,
    stopping: impl Future<Output = ()>,
) -> Result<F::Output, DecisionError> {
    tokio::select! {
        out = step => Ok(out),
        () = stopping => Err(DecisionError::shutting_down()),
        () = tokio::time::sleep(limits.idle_timeout) => {
            Err(DecisionError::stream_idle(limits.idle_timeout))
        }
        () = tokio::time::sleep_until(closes_at.into()) => {
            Err(DecisionError::stream_max_age(limits.max_age))
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
        // The stream's own call: its refusal, or its closing, is recorded on it.
        let stream = Facts::of(&request).call(span::authorize(None));
        let permit = self.pipeline.admit_stream(&stream).map_err(status)?;
        let metadata = request.metadata().clone();
        // Bounded: a client that stops reading stops the evaluation too.
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            this.run_stream(request.into_inner(), stream, metadata, tx)
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
            out.policy_count = snapshot.engine.policy_count() as u64;
            out.entity_count = snapshot.engine.entity_count() as u64;
            out.schema_loaded = snapshot.engine.schema().is_some();
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
