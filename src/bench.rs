//! The load generator behind `cedar-pdp bench`: it sends one request, read
//! from a JSON file, over several HTTP/2 connections with several calls in
//! flight on each, for a duration or a count, and summarises throughput and
//! latency with an HDR histogram.
//!
//! [`grpc_frame`] writes the request as a gRPC-framed body instead, so h2load
//! can send the same request (see `shared/peers/h2load-grpc.sh`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use prost::Message;
use serde::Deserialize;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::grpc::proto::{self, authorizer_client::AuthorizerClient};

/// What a load run sends, over how many connections, until when.
#[derive(Clone, Debug)]
pub(crate) struct LoadSpec {
    /// Server address, `host:port` or a URL.
    pub addr: String,
    /// HTTP/2 connections to open; at least 1.
    pub connections: u32,
    /// Calls in flight on each connection; at least 1.
    pub concurrency: u32,
    pub stop: Stop,
    pub mode: Mode,
    /// Copies of the request in each `BatchAuthorize` call.
    pub batch_size: u32,
}

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// After this long.
    After(Duration),
    /// After this many calls in total.
    Calls(u64),
}

/// The RPC a bench calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// `Authorize`, one decision per call.
    Unary,
    /// `BatchAuthorize`, `--batch-size` decisions per call.
    Batch,
    /// `AuthorizeStream`: one stream per connection, with up to
    /// `--concurrency` requests sent and not yet answered.
    Stream,
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not a bench request: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to `{url}`: {source}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The request file: the shape of `shared/peers/cedar-equivalent/request.json`.
#[derive(Debug, Deserialize)]
struct RequestFile {
    principal: Uid,
    action: Uid,
    resource: Uid,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    entities: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Uid {
    r#type: String,
    id: String,
}

impl From<Uid> for proto::EntityUid {
    fn from(u: Uid) -> Self {
        Self {
            r#type: u.r#type,
            id: u.id,
        }
    }
}

/// Reads a request file into the `AuthorizeRequest` it describes.
pub(crate) fn read_request(path: &Path) -> Result<proto::AuthorizeRequest, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: RequestFile = serde_json::from_str(&text).map_err(|source| BenchError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(proto::AuthorizeRequest {
        principal: Some(file.principal.into()),
        action: Some(file.action.into()),
        resource: Some(file.resource.into()),
        context_json: if file.context.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(file.context).to_string()
        },
        entities_json: if file.entities.is_empty() {
            String::new()
        } else {
            serde_json::Value::Array(file.entities).to_string()
        },
        ..Default::default()
    })
}

/// `request` as one gRPC message: an uncompressed flag byte, the length as a
/// big-endian u32, then the protobuf encoding.
pub(crate) fn grpc_frame(request: &proto::AuthorizeRequest) -> Vec<u8> {
    let body = request.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    // A request larger than 4 GiB cannot be framed; it cannot be read either.
    framed.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Summary {
    pub calls: u64,
    pub errors: u64,
    pub decisions_per_call: u64,
    pub elapsed: Duration,
    /// Latency of successful calls, in microseconds.
    pub latency: Histogram<u64>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let rate = self.calls as f64 / secs;
        let q = |p: f64| Duration::from_micros(self.latency.value_at_quantile(p));
        writeln!(
            f,
            "calls: {}, errors: {}, elapsed: {:.3?}",
            self.calls, self.errors, self.elapsed
        )?;
        writeln!(f, "requests/s: {rate:.1}")?;
        if self.decisions_per_call > 1 {
            writeln!(
                f,
                "decisions/s: {:.1}",
                rate * self.decisions_per_call as f64
            )?;
        }
        write!(
            f,
            "latency p50: {:?}, p90: {:?}, p99: {:?}, p99.9: {:?}, max: {:?}",
            q(0.50),
            q(0.90),
            q(0.99),
            q(0.999),
            Duration::from_micros(self.latency.max())
        )
    }
}

/// When a run stops.
#[derive(Clone, Copy, Debug)]
enum Limit {
    Until(Instant),
    Count(u64),
}

/// Runs `spec` with `request` on a runtime of its own, until it stops.
pub(crate) fn run_blocking(
    spec: &LoadSpec,
    request: proto::AuthorizeRequest,
) -> Result<Summary, BenchError> {
    let runtime = tokio::runtime::Runtime::new().map_err(BenchError::Runtime)?;
    runtime.block_on(run(spec, request))
}

/// Runs `spec` with `request` until it stops. A failed call is counted, not
/// an error; only a connection that cannot be opened is.
pub(crate) async fn run(
    spec: &LoadSpec,
    request: proto::AuthorizeRequest,
) -> Result<Summary, BenchError> {
    let url = if spec.addr.contains("://") {
        spec.addr.clone()
    } else {
        format!("http://{}", spec.addr)
    };
    // One channel per connection: a tonic `Channel` is one HTTP/2 connection.
    let mut channels = Vec::new();
    for _ in 0..spec.connections {
        let channel = Endpoint::from_shared(url.clone())
            .map(|e| e.connect_timeout(Duration::from_secs(5)))
            .map_err(|source| BenchError::Connect {
                url: url.clone(),
                source,
            })?
            .connect()
            .await
            .map_err(|source| BenchError::Connect {
                url: url.clone(),
                source,
            })?;
        channels.push(channel);
    }
    let batch_size = match spec.mode {
        Mode::Unary | Mode::Stream => 1,
        Mode::Batch => spec.batch_size,
    };
    let batch = proto::BatchAuthorizeRequest {
        requests: vec![request.clone(); batch_size as usize],
        ..Default::default()
    };
    let started = Instant::now();
    let limit = match spec.stop {
        Stop::Calls(n) => Limit::Count(n),
        Stop::After(d) => Limit::Until(started + d),
    };
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for channel in &channels {
        if spec.mode == Mode::Stream {
            let client = AuthorizerClient::new(channel.clone());
            let window = spec.concurrency as usize;
            workers.spawn(stream_worker(
                client,
                request.clone(),
                window,
                limit,
                Arc::clone(&issued),
            ));
            continue;
        }
        for _ in 0..spec.concurrency {
            let call = match spec.mode {
                Mode::Batch => Call::Batch(batch.clone()),
                Mode::Unary | Mode::Stream => Call::Unary(Box::new(request.clone())),
            };
            let worker = Worker {
                client: AuthorizerClient::new(channel.clone()),
                call,
                limit,
                issued: Arc::clone(&issued),
            };
            workers.spawn(worker.run());
        }
    }
    let mut summary = Summary {
        calls: 0,
        errors: 0,
        decisions_per_call: u64::from(batch_size),
        elapsed: Duration::ZERO,
        latency: new_histogram(),
    };
    while let Some(joined) = workers.join_next().await {
        // A worker that panicked counts as nothing sent.
        if let Ok(tally) = joined {
            summary.calls += tally.calls;
            summary.errors += tally.errors;
            // Both histograms share bounds, so adding cannot fail.
            let _ = summary.latency.add(&tally.latency);
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[expect(clippy::expect_used, reason = "constant bounds that are valid")]
fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 h, at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What a unary worker sends on every call.
enum Call {
    Unary(Box<proto::AuthorizeRequest>),
    Batch(proto::BatchAuthorizeRequest),
}

struct Worker {
    client: AuthorizerClient<Channel>,
    call: Call,
    limit: Limit,
    issued: Arc<AtomicU64>,
}

struct Tally {
    calls: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Worker {
    async fn run(mut self) -> Tally {
        let mut tally = Tally {
            calls: 0,
            errors: 0,
            latency: new_histogram(),
        };
        loop {
            let go = match self.limit {
                Limit::Until(end) => Instant::now() < end,
                Limit::Count(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            };
            if !go {
                return tally;
            }
            let start = Instant::now();
            let ok = match &self.call {
                Call::Unary(request) => self.client.authorize(*request.clone()).await.is_ok(),
                Call::Batch(batch) => self.client.batch_authorize(batch.clone()).await.is_ok(),
            };
            tally.calls += 1;
            if ok {
                let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(micros.max(1));
            } else {
                tally.errors += 1;
            }
        }
    }
}

/// One `AuthorizeStream` call: a sender keeps up to `window` requests
/// unanswered; answers come back in order, so each one's latency is measured
/// from the oldest send time still waiting.
async fn stream_worker(
    mut client: AuthorizerClient<Channel>,
    request: proto::AuthorizeRequest,
    window: usize,
    limit: Limit,
    issued: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally {
        calls: 0,
        errors: 0,
        latency: new_histogram(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(window);
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let credits = Arc::new(tokio::sync::Semaphore::new(window));
    let sender = {
        let credits = Arc::clone(&credits);
        tokio::spawn(async move {
            loop {
                let go = match limit {
                    Limit::Until(end) => Instant::now() < end,
                    Limit::Count(n) => issued.fetch_add(1, Ordering::Relaxed) < n,
                };
                let Ok(permit) = credits.clone().acquire_owned().await else {
                    return;
                };
                if !go || sent_tx.send(Instant::now()).is_err() {
                    return;
                }
                permit.forget();
                if tx.send(request.clone()).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut answers = match client
        .authorize_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(_) => {
            sender.abort();
            tally.calls = 1;
            tally.errors = 1;
            return tally;
        }
    };
    while let Some(sent_at) = sent_rx.recv().await {
        let answered = answers.message().await;
        tally.calls += 1;
        match answered {
            Ok(Some(resp)) if resp.errors.is_empty() => {
                let micros = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(micros.max(1));
            }
            Ok(Some(_)) => tally.errors += 1,
            Ok(None) | Err(_) => {
                tally.errors += 1;
                break;
            }
        }
        credits.add_permits(1);
    }
    sender.abort();
    tally
}
