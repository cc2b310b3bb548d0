//! The load generator behind `cedar-pdp bench`: it sends one request, read
//! from a JSON file, or a corpus of many (JSON lines of the same shape), over
//! several HTTP/2 connections with several calls in flight on each, for a
//! duration or a count, and summarises throughput, the decisions and latency
//! with an HDR histogram.
//!
//! A corpus is sent in a fixed order (`sequential`, or `shuffle` by a seed),
//! from a cursor all calls share, so a run of N calls sends the same N
//! requests whatever the concurrency.
//!
//! [`grpc_frame`] writes the request as a gRPC-framed body instead, so h2load
//! can send the same request (see `shared/peers/h2load-grpc.sh`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    #[error("`{}` line {line}: {source}", path.display())]
    CorpusLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{}` holds no requests", path.display())]
    EmptyCorpus { path: PathBuf },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The order a corpus is sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Order {
    /// As in the file, from the first line.
    Sequential,
    /// Shuffled once by `--seed`, so runs with one seed send the same order.
    Shuffle,
}

/// The requests a run sends, in sending order; it starts over at the end.
#[derive(Debug)]
pub(crate) struct Corpus {
    requests: Vec<proto::AuthorizeRequest>,
    cursor: AtomicUsize,
}

impl Corpus {
    /// A corpus of one request, sent on every call.
    pub(crate) fn one(request: proto::AuthorizeRequest) -> Self {
        Self::new(vec![request])
    }

    fn new(requests: Vec<proto::AuthorizeRequest>) -> Self {
        Self {
            requests,
            cursor: AtomicUsize::new(0),
        }
    }

    /// Reads `path`, one request per line (blank lines skipped), in `order`.
    pub(crate) fn read(path: &Path, order: Order, seed: u64) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut requests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let file: RequestFile =
                serde_json::from_str(line).map_err(|source| BenchError::CorpusLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                })?;
            requests.push(file.into());
        }
        if requests.is_empty() {
            return Err(BenchError::EmptyCorpus {
                path: path.to_path_buf(),
            });
        }
        if order == Order::Shuffle {
            fastrand::Rng::with_seed(seed).shuffle(&mut requests);
        }
        Ok(Self::new(requests))
    }

    /// How many requests it holds.
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    /// The next request to send.
    fn next(&self) -> &proto::AuthorizeRequest {
        let i = self.cursor.fetch_add(1, Ordering::Relaxed) % self.requests.len();
        &self.requests[i]
    }
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
    Ok(file.into())
}

impl From<RequestFile> for proto::AuthorizeRequest {
    fn from(file: RequestFile) -> Self {
        Self {
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
        }
    }
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
    /// Decisions answered ALLOW, and answered at all (ALLOW or DENY).
    pub allowed: u64,
    pub decided: u64,
    /// Requests sent in turn: 1 unless a corpus.
    pub distinct: usize,
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
        writeln!(
            f,
            "decisions: {}, allowed: {}, corpus size: {}",
            self.decided, self.allowed, self.distinct
        )?;
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

/// Runs `spec` with `corpus` on a runtime of its own, until it stops.
pub(crate) fn run_blocking(spec: &LoadSpec, corpus: Corpus) -> Result<Summary, BenchError> {
    let runtime = tokio::runtime::Runtime::new().map_err(BenchError::Runtime)?;
    runtime.block_on(run(spec, Arc::new(corpus)))
}

/// Runs `spec` with `corpus` until it stops. A failed call is counted, not
/// an error; only a connection that cannot be opened is.
pub(crate) async fn run(spec: &LoadSpec, corpus: Arc<Corpus>) -> Result<Summary, BenchError> {
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
                Arc::clone(&corpus),
                window,
                limit,
                Arc::clone(&issued),
            ));
            continue;
        }
        for _ in 0..spec.concurrency {
            let worker = Worker {
                client: AuthorizerClient::new(channel.clone()),
                corpus: Arc::clone(&corpus),
                batch_size: (spec.mode == Mode::Batch).then_some(batch_size as usize),
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
        allowed: 0,
        decided: 0,
        distinct: corpus.len(),
        elapsed: Duration::ZERO,
        latency: new_histogram(),
    };
    while let Some(joined) = workers.join_next().await {
        // A worker that panicked counts as nothing sent.
        if let Ok(tally) = joined {
            summary.calls += tally.calls;
            summary.errors += tally.errors;
            summary.allowed += tally.allowed;
            summary.decided += tally.decided;
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

/// One connection's unary or batch calls, one at a time.
struct Worker {
    client: AuthorizerClient<Channel>,
    corpus: Arc<Corpus>,
    /// Items per `BatchAuthorize`; `None`: `Authorize`.
    batch_size: Option<usize>,
    limit: Limit,
    issued: Arc<AtomicU64>,
}

struct Tally {
    calls: u64,
    errors: u64,
    allowed: u64,
    decided: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            calls: 0,
            errors: 0,
            allowed: 0,
            decided: 0,
            latency: new_histogram(),
        }
    }

    /// Counts one answered decision.
    fn decision(&mut self, response: &proto::AuthorizeResponse) {
        self.decided += 1;
        if response.decision == proto::Decision::Allow as i32 {
            self.allowed += 1;
        }
    }
}

impl Worker {
    async fn run(mut self) -> Tally {
        let mut tally = Tally::new();
        loop {
            let go = match self.limit {
                Limit::Until(end) => Instant::now() < end,
                Limit::Count(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            };
            if !go {
                return tally;
            }
            // Built before the clock starts: the copy is the client's cost.
            let batch = self.batch_size.map(|n| proto::BatchAuthorizeRequest {
                requests: (0..n).map(|_| self.corpus.next().clone()).collect(),
                ..Default::default()
            });
            let single = batch.is_none().then(|| self.corpus.next().clone());
            let start = Instant::now();
            let ok = match (single, batch) {
                (Some(request), _) => match self.client.authorize(request).await {
                    Ok(r) => {
                        tally.decision(r.get_ref());
                        true
                    }
                    Err(_) => false,
                },
                (None, Some(batch)) => match self.client.batch_authorize(batch).await {
                    Ok(r) => {
                        r.get_ref().responses.iter().for_each(|r| tally.decision(r));
                        true
                    }
                    Err(_) => false,
                },
                (None, None) => false,
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
    corpus: Arc<Corpus>,
    window: usize,
    limit: Limit,
    issued: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::new();
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
                if tx.send(corpus.next().clone()).await.is_err() {
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
                tally.decision(&resp);
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
