//! The one RPC wrapper: what every call does before and after the pipeline,
//! whatever its service. It counts the call in flight, opens its span as a
//! child of the caller's trace, reads the verified peer and the client's
//! `grpc-timeout`, and marks the span failed when the call fails.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataMap};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::identity::PeerFacts;
use crate::metrics::InflightGuard;
use crate::pipeline::{Call, Pipeline};

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// One call in progress: its transport facts, its time budget, and its
/// place in the in-flight gauge until it is dropped.
pub(super) struct Rpc {
    pub call: Call,
    pub timeout: Duration,
    _inflight: InflightGuard,
}

/// The transport facts of `request`: its verified peer and trace context.
#[derive(Clone, Copy)]
pub(super) struct Facts<'a> {
    peer: Option<&'a PeerFacts>,
    metadata: &'a MetadataMap,
}

impl<'a> Facts<'a> {
    /// What `request` carries besides its message.
    pub(super) fn of<T>(request: &'a tonic::Request<T>) -> Self {
        Self::new(request.extensions().get::<PeerFacts>(), request.metadata())
    }

    /// The facts of a call whose request is already taken apart.
    pub(super) fn new(peer: Option<&'a PeerFacts>, metadata: &'a MetadataMap) -> Self {
        Self { peer, metadata }
    }

    /// A call recorded on `span`, continuing the caller's trace.
    pub(super) fn call(&self, span: Span) -> Call {
        if !span.is_disabled() {
            let parent = TraceContextPropagator::new().extract(&Metadata(self.metadata));
            let _ = span.set_parent(parent);
        }
        let traceparent = self
            .metadata
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Call::new(self.peer.cloned().unwrap_or_default(), traceparent, span)
    }

    /// The client's `grpc-timeout`: an integer and a unit (H M S m u n).
    fn grpc_timeout(&self) -> Option<Duration> {
        let value = self.metadata.get("grpc-timeout")?.to_str().ok()?;
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

    /// Starts the call: in flight from now, on `span`, within the
    /// configured timeout or the client's shorter one.
    pub(super) fn start(&self, pipeline: &Pipeline, span: Span) -> Rpc {
        Rpc {
            _inflight: pipeline.metrics().inflight(),
            timeout: pipeline.timeout(self.grpc_timeout()),
            call: self.call(span),
        }
    }
}
