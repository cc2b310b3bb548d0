//! The buffer budget, applied to gRPC request bodies below tonic. tonic
//! buffers a message whole before any handler runs, and reserves its
//! declared length as soon as its 5-byte header arrives; so that length is
//! charged here when the header passes, before tonic sees it, and given
//! back when the message is complete (tonic decodes it then). Past the budget the body
//! fails with `RESOURCE_EXHAUSTED`, which tonic answers without reading
//! more; and a message must arrive whole within `limits.request_timeout`
//! of its first byte (`DEADLINE_EXCEEDED`), so no client holds its share
//! for longer. Refusals are counted (`reason="buffer_budget"` or
//! `"deadline"`), and not recorded, since no request reached the pipeline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Frame;
use tonic::Status;
use tonic::codegen::{Bytes, Service, http};

use crate::metrics::Metrics;
use crate::pipeline::Reason;
use crate::transport::budget::{BufferBudget, Charge};

/// Wraps every gRPC request body in a [`Charged`] one.
#[derive(Clone, Debug)]
pub(crate) struct BudgetLayer {
    budget: Arc<BufferBudget>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl BudgetLayer {
    /// Charges request bodies to `budget`, each message due whole within
    /// `timeout` of its first byte; refusals are counted in `metrics`.
    pub(crate) fn new(budget: Arc<BufferBudget>, metrics: Arc<Metrics>, timeout: Duration) -> Self {
        Self {
            budget,
            metrics,
            timeout,
        }
    }
}

impl<S> tower_layer::Layer<S> for BudgetLayer {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Budgeted<S> {
        Budgeted {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service whose request bodies are charged to the budget.
#[derive(Clone, Debug)]
pub(crate) struct Budgeted<S> {
    inner: S,
    layer: BudgetLayer,
}

impl<S> Service<http::Request<tonic::body::Body>> for Budgeted<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let layer = &self.layer;
        let request = request.map(|body| {
            tonic::body::Body::new(Charged {
                inner: body,
                charge: layer.budget.charge(),
                metrics: Arc::clone(&layer.metrics),
                message: Message::default(),
                timeout: layer.timeout,
                due: None,
                refused: false,
            })
        });
        self.inner.call(request)
    }
}

/// A request body that holds, of the budget, what tonic holds of its
/// message not yet complete (see [`Message::reserved`]).
struct Charged {
    inner: tonic::body::Body,
    charge: Charge,
    metrics: Arc<Metrics>,
    message: Message,
    timeout: Duration,
    /// When the message under way must be complete.
    due: Option<Pin<Box<tokio::time::Sleep>>>,
    refused: bool,
}

impl Charged {
    fn refuse(
        &mut self,
        reason: Reason,
        status: Status,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.refused = true;
        self.due = None;
        self.charge.release_to(0);
        self.metrics
            .request_error("grpc", reason.code().label(), reason.as_str());
        Poll::Ready(Some(Err(status)))
    }
}

impl http_body::Body for Charged {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.refused {
            return Poll::Ready(None);
        }
        if let Some(due) = &mut this.due
            && due.as_mut().poll(cx).is_ready()
        {
            let message = format!(
                "a message did not arrive whole within {:?} of its first byte (`limits.request_timeout`)",
                this.timeout
            );
            return this.refuse(Reason::Deadline, Status::deadline_exceeded(message));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.message.feed(data);
            let need = this.message.reserved();
            if let Err(e) = this.charge.take(need.saturating_sub(this.charge.held())) {
                return this.refuse(
                    Reason::BufferBudget,
                    Status::resource_exhausted(e.to_string()),
                );
            }
            this.charge.release_to(need);
            if this.message.pending == 0 {
                this.due = None;
            } else if this.due.is_none() {
                let mut due = Box::pin(tokio::time::sleep(this.timeout));
                // Registers the waker, so the deadline wakes this body.
                if due.as_mut().poll(cx).is_ready() {
                    return this.refuse(
                        Reason::Deadline,
                        Status::deadline_exceeded("a message did not arrive in time"),
                    );
                }
                this.due = Some(due);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Where a body is in its gRPC messages: each is a flag byte, a 4-byte
/// length, and that many bytes.
#[derive(Debug, Default)]
struct Message {
    head: [u8; 5],
    filled: usize,
    /// Payload bytes still to come.
    left: usize,
    /// Bytes of the message under way received so far.
    pending: usize,
}

impl Message {
    /// What tonic holds for the message under way: its header so far, then
    /// the header and the whole declared length, which it reserves at once.
    fn reserved(&self) -> usize {
        if self.filled < 5 {
            self.filled
        } else {
            self.pending.saturating_add(self.left)
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.filled < 5 {
                let n = (5 - self.filled).min(bytes.len());
                self.head[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                self.filled += n;
                self.pending += n;
                bytes = &bytes[n..];
                if self.filled == 5 {
                    let len = u32::from_be_bytes([
                        self.head[1],
                        self.head[2],
                        self.head[3],
                        self.head[4],
                    ]);
                    self.left = usize::try_from(len).unwrap_or(usize::MAX);
                }
            } else {
                let n = self.left.min(bytes.len());
                self.left -= n;
                self.pending += n;
                bytes = &bytes[n..];
            }
            if self.filled == 5 && self.left == 0 {
                // Complete: tonic decodes it now.
                *self = Self::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_message_under_way_is_pending() {
        let mut bytes = vec![0, 0, 0, 0, 3, b'a', b'b', b'c'];
        bytes.extend([0, 0, 0, 0, 4, b'x']);
        for piece in [1, 2, 3, 5, 100] {
            let mut m = Message::default();
            for chunk in bytes.chunks(piece) {
                m.feed(chunk);
            }
            assert_eq!(m.pending, 6, "pieces of {piece}");
            assert_eq!(m.left, 3);
            assert_eq!(m.reserved(), 9, "the declared length, at once");
        }
        let mut empty = Message::default();
        empty.feed(&[0, 0, 0, 0, 0]);
        assert_eq!(empty.pending, 0, "an empty message completes at once");
    }
}
