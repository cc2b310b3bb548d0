//! Where and when a screened request is evaluated, apart from the request
//! path in `mod.rs`: on the async worker that received it (what needs no
//! evaluation, and a request the inline gate admits), or on the evaluation
//! pool as a [`Job`]; a batch as one job on the pool. The guards here record
//! what never reaches a decision: a call dropped before it was decided
//! ([`Pending`]), a job the pool could not take or that outlived its
//! deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::DecisionError;
use super::evaluate::Screened;
use super::inline;
use super::request::{Call, DecisionRequest, Submitted};
use super::span;
use super::verified::Verified;
use super::{Answer, At, Pipeline, Refusal, new_decision_id};
use crate::decision_log::Slots;
use crate::policy_store::Snapshot;

/// A screened request, ready to be settled: what screening made of it, and
/// what its outcome is recorded with.
pub(super) struct Ready {
    pub snapshot: Arc<Snapshot>,
    pub req: DecisionRequest,
    pub verified: Verified,
    pub screened: Result<Screened, DecisionError>,
    pub slots: Option<Slots>,
    pub deadline: Instant,
    pub timeout: Duration,
}

impl Pipeline {
    /// Settles `ready` where it costs least. Settled on this worker: what
    /// needs no evaluation (binding, limits, a cache hit), and a small
    /// request, whose evaluation costs less than the pool's two thread hops
    /// (see `inline`). Only the rest waits for the pool.
    pub(super) async fn schedule(&self, ready: Ready, call: &Call) -> Answer {
        let Ready {
            snapshot,
            req,
            verified,
            screened,
            mut slots,
            deadline,
            timeout,
        } = ready;
        let screened = match screened {
            Ok(s) if !s.is_hit() && !self.inline.admits(&snapshot, (&req, &verified)) => s,
            screened => {
                let evaluated = matches!(&screened, Ok(s) if !s.is_hit());
                let started = evaluated.then(inline::Stopwatch::start);
                let answer = self.settle(
                    &snapshot,
                    req,
                    verified,
                    screened,
                    None,
                    call,
                    &call.span,
                    slots.as_mut(),
                );
                if let Some(started) = started {
                    self.evaluated_inline(&snapshot, started.took());
                }
                return answer;
            }
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            pipeline: self.clone(),
            snapshot,
            req: Some(req),
            verified,
            screened: Some(screened),
            call: call.clone(),
            slots,
            deadline,
            timeout,
            reply: Some(reply),
        };
        // A job the pool cannot take is dropped, and records its refusal.
        let _ = self.pool.spawn(Box::new(move || job.run()));
        answer.await.unwrap_or_else(|_| {
            Err(Box::new(Refusal {
                error: DecisionError::internal("evaluation stopped before it answered"),
                decision_id: new_decision_id(),
                policy_revision: String::new(),
                request_id: String::new(),
            }))
        })
    }

    /// Counts an inline evaluation, and warns when its time sends the rest
    /// of its snapshot's evaluations to the pool.
    fn evaluated_inline(&self, snapshot: &Snapshot, took: Duration) {
        self.metrics.evaluation(true);
        if self.inline.account(snapshot, took) == inline::Verdict::Barred {
            tracing::warn!(
                revision = %snapshot.revision,
                "{} evaluations on the async workers took over {:?} of CPU; this policy set's \
                 evaluations now all run on the evaluation threads",
                inline::STRIKES,
                inline::BUDGET,
            );
        }
    }

    /// Runs a batch's `work` on the evaluation pool, as one job, waited for
    /// until `deadline`. The work owns its slot and its records, so a call
    /// abandoned by its client still counts and records until it ends.
    pub(super) async fn on_pool(
        &self,
        work: impl FnOnce() -> Result<Vec<Answer>, DecisionError> + Send + 'static,
        call: &Call,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Vec<Answer>, DecisionError> {
        match tokio::time::timeout_at(deadline.into(), self.pool.run(work)).await {
            Ok(Ok(Ok(answers))) => Ok(answers),
            // The shared entities did not parse: every item was recorded.
            Ok(Ok(Err(e))) => {
                span::record_failure(&call.span, &e);
                Err(e)
            }
            Ok(Err(e)) => {
                let e = DecisionError::internal(format!("batch evaluation failed: {e}"));
                span::record_failure(&call.span, &e);
                Err(e)
            }
            // The remaining items are recorded as past their deadline.
            Err(_) => {
                let e = DecisionError::deadline(timeout);
                span::record_failure(&call.span, &e);
                Err(e)
            }
        }
    }
}

/// One decision's work on the pool. It owns the request and its log room:
/// run, it decides and records; dropped unrun (the queue could not take
/// it), it records the refusal. Either way it replies.
struct Job {
    pipeline: Pipeline,
    snapshot: Arc<Snapshot>,
    req: Option<DecisionRequest>,
    verified: Verified,
    screened: Option<Screened>,
    call: Call,
    slots: Option<Slots>,
    deadline: Instant,
    timeout: Duration,
    reply: Option<tokio::sync::oneshot::Sender<Answer>>,
}

impl Job {
    fn run(mut self) {
        let (Some(req), Some(screened)) = (self.req.take(), self.screened.take()) else {
            return;
        };
        let (p, call) = (&self.pipeline, &self.call);
        // Work that waited past its deadline is refused, not evaluated.
        let answer = if Instant::now() >= self.deadline {
            let at = At {
                call,
                span: &call.span,
                snapshot: Some(&self.snapshot),
                slots: self.slots.as_mut(),
            };
            let error = DecisionError::deadline(self.timeout);
            Err(p.refuse_screened(req, &self.verified, error, at))
        } else {
            let span = &call.span;
            p.metrics.evaluation(false);
            p.settle(
                &self.snapshot,
                req,
                std::mem::take(&mut self.verified),
                Ok(screened),
                None,
                call,
                span,
                self.slots.as_mut(),
            )
        };
        if let Some(reply) = self.reply.take() {
            // The client may have gone; the outcome is recorded either way.
            let _ = reply.send(answer);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let Some(req) = self.req.take() else {
            return;
        };
        let at = At {
            call: &self.call,
            span: &self.call.span,
            snapshot: Some(&self.snapshot),
            slots: self.slots.as_mut(),
        };
        let error = DecisionError::internal("evaluation did not complete");
        let refusal = self
            .pipeline
            .refuse_screened(req, &self.verified, error, at);
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(refusal));
        }
    }
}

/// A request admitted but not yet decided. Dropped with the request still
/// inside (the call's future was dropped), it records the call as cancelled.
pub(super) struct Pending<'a> {
    pipeline: &'a Pipeline,
    call: &'a Call,
    req: Option<Submitted>,
}

impl<'a> Pending<'a> {
    /// Holds `req` of `call` until it is taken.
    pub(super) fn new(pipeline: &'a Pipeline, call: &'a Call, req: Submitted) -> Self {
        Self {
            pipeline,
            call,
            req: Some(req),
        }
    }

    /// The request, disarming the guard. It is taken once; an empty request
    /// stands in should that ever not hold, so nothing is ever allowed.
    pub(super) fn take(&mut self) -> Submitted {
        self.req
            .take()
            .unwrap_or_else(|| Ok(DecisionRequest::default()))
    }

    /// Records the request as refused with `error`.
    pub(super) fn refuse(
        &mut self,
        error: DecisionError,
        snapshot: Option<&Snapshot>,
    ) -> Box<Refusal> {
        let req = self.take();
        let at = At::refused(self.call, &self.call.span, snapshot);
        self.pipeline.refuse(req, error, at)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.req.is_some() {
            self.refuse(DecisionError::cancelled(), None);
        }
    }
}
