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
//! Like h2load, the client sends bodies it encoded once, before the run,
//! straight on HTTP/2 ([`wire`]), and runs on one thread unless told
//! otherwise: on a sidecar's host it shares the cores with the server it
//! measures, so each microsecond it spends is one the server does not get.
//!
//! [`grpc_frame`] writes the request as a gRPC-framed body instead, so h2load
//! can send the same request (see `shared/peers/h2load-grpc.sh`).

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use prost::Message;
use prost::bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::task::JoinSet;
use tonic::client::Grpc;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http::{Uri, uri::PathAndQuery};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_prost::ProstDecoder;

use crate::grpc::proto;

mod wire;

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
    /// The client's runtime threads; 1 runs every connection on one thread.
    pub threads: usize,
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
        source: Box<dyn std::error::Error + Send + Sync>,
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

/// The requests a run sends, in sending order, each encoded and framed once;
/// it starts over at the end.
#[derive(Debug)]
pub(crate) struct Corpus {
    framed: Vec<Bytes>,
    cursor: AtomicUsize,
}

impl Corpus {
    /// A corpus of one request, sent on every call.
    pub(crate) fn one(request: proto::AuthorizeRequest) -> Self {
        Self::new(vec![request])
    }

    fn new(requests: Vec<proto::AuthorizeRequest>) -> Self {
        Self {
            framed: requests
                .iter()
                .map(|r| Bytes::from(grpc_frame(r)))
                .collect(),
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
        self.framed.len()
    }

    /// The next request to send, framed: a reference count, not a copy.
    fn next(&self) -> Bytes {
        let i = self.cursor.fetch_add(1, Ordering::Relaxed) % self.framed.len();
        self.framed[i].clone()
    }

    /// The next request's message, unframed, for a stream (whose codec
    /// frames it).
    fn next_message(&self) -> Bytes {
        self.next().slice(5..)
    }

    /// The next `n` requests as one framed `BatchAuthorizeRequest`: each
    /// is field 1 of the batch, so the batch is their encodings, each behind
    /// its key and length.
    fn next_batch(&self, n: usize) -> Bytes {
        // The frame's header first, its length filled in at the end.
        let mut batch = BytesMut::from(&[0u8; 5][..]);
        for _ in 0..n {
            let item = self.next_message();
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut batch);
            prost::encoding::encode_varint(item.len() as u64, &mut batch);
            batch.put(item);
        }
        let len = u32::try_from(batch.len() - 5).unwrap_or(u32::MAX);
        batch[1..5].copy_from_slice(&len.to_be_bytes());
        batch.freeze()
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
    wire::frame(&request.encode_to_vec())
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Summary {
    pub calls: u64,
    /// Calls that failed, or answered an item with an error.
    pub errors: u64,
    /// Why the first failed call or refused item failed, as a person reads
    /// it: `INVALID_ARGUMENT: ...`.
    pub first_error: Option<String>,
    pub decisions_per_call: u64,
    /// Decisions answered ALLOW, and answered at all (ALLOW or DENY).
    pub allowed: u64,
    pub decided: u64,
    /// Items that got an error instead of ALLOW or DENY: a unary call's
    /// status, a batch or stream item the server refused, and each item of a
    /// call that failed as a whole.
    pub refused: u64,
    /// Requests sent in turn: 1 unless a corpus.
    pub distinct: usize,
    pub elapsed: Duration,
    /// Latency of successful calls, in microseconds.
    pub latency: Histogram<u64>,
}

impl Summary {
    /// The share of items refused, from 0 to 1; 0 when nothing was sent.
    pub(crate) fn error_rate(&self) -> f64 {
        let items = self.decided + self.refused;
        if items == 0 {
            0.0
        } else {
            self.refused as f64 / items as f64
        }
    }
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
        if let Some(e) = &self.first_error {
            writeln!(f, "first error: {e}")?;
        }
        writeln!(f, "requests/s: {rate:.1}")?;
        writeln!(
            f,
            "decisions: {}, allowed: {}, refused: {} ({:.1}%), corpus size: {}",
            self.decided,
            self.allowed,
            self.refused,
            self.error_rate() * 100.0,
            self.distinct
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

/// Runs `spec` with `corpus` on a runtime of its own, of `spec.threads`
/// threads, until it stops.
pub(crate) fn run_blocking(spec: &LoadSpec, corpus: Corpus) -> Result<Summary, BenchError> {
    let runtime = if spec.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.threads)
            .enable_all()
            .build()
    }
    .map_err(BenchError::Runtime)?;
    runtime.block_on(run(spec, Arc::new(corpus)))
}

/// Runs `spec` with `corpus` until it stops. A failed call is counted, not
/// an error; only a connection that cannot be opened is.
pub(crate) async fn run(spec: &LoadSpec, corpus: Arc<Corpus>) -> Result<Summary, BenchError> {
    let connect_error = |source: Box<dyn std::error::Error + Send + Sync>| BenchError::Connect {
        url: spec.addr.clone(),
        source,
    };
    let target = wire::Target::parse(&spec.addr).map_err(|e| connect_error(e.into()))?;
    let batch_size = match spec.mode {
        Mode::Unary | Mode::Stream => 1,
        Mode::Batch => spec.batch_size,
    };
    // One connection each: an h2 `SendRequest`, or for a stream a tonic
    // `Channel` (one call per connection, so its per-call cost is paid once).
    let mut connections = Vec::new();
    for _ in 0..spec.connections {
        let connection = if spec.mode == Mode::Stream {
            let channel = Endpoint::from(target.uri("/"))
                .connect_timeout(CONNECT_TIMEOUT)
                .connect()
                .await
                .map_err(|e| connect_error(e.into()))?;
            Connection::Channel(channel)
        } else {
            let send = target
                .connect(CONNECT_TIMEOUT)
                .await
                .map_err(|e| connect_error(e.into()))?;
            Connection::H2(send)
        };
        connections.push(connection);
    }
    let started = Instant::now();
    let limit = match spec.stop {
        Stop::Calls(n) => Limit::Count(n),
        Stop::After(d) => Limit::Until(started + d),
    };
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for connection in connections {
        match connection {
            Connection::Channel(channel) => {
                workers.spawn(stream_worker(
                    Grpc::new(channel),
                    Arc::clone(&corpus),
                    spec.concurrency as usize,
                    limit,
                    Arc::clone(&issued),
                ));
            }
            Connection::H2(send) => {
                for _ in 0..spec.concurrency {
                    let worker = Worker {
                        send: send.clone(),
                        corpus: Arc::clone(&corpus),
                        batch: (spec.mode == Mode::Batch).then_some(batch_size as usize),
                        uri: target.uri(if spec.mode == Mode::Batch {
                            BATCH_AUTHORIZE
                        } else {
                            AUTHORIZE
                        }),
                        limit,
                        issued: Arc::clone(&issued),
                    };
                    workers.spawn(worker.run());
                }
            }
        }
    }
    let mut summary = Summary {
        calls: 0,
        errors: 0,
        first_error: None,
        decisions_per_call: u64::from(batch_size),
        allowed: 0,
        decided: 0,
        refused: 0,
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
            summary.refused += tally.refused;
            if summary.first_error.is_none() {
                summary.first_error = tally.first_error;
            }
            // Both histograms share bounds, so adding cannot fail.
            let _ = summary.latency.add(&tally.latency);
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/2 connection of a run.
enum Connection {
    H2(h2::client::SendRequest<Bytes>),
    Channel(Channel),
}

#[expect(clippy::expect_used, reason = "constant bounds that are valid")]
fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 h, at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The methods a bench calls, as their paths.
const AUTHORIZE: &str = "/cedar_pdp.v1.Authorizer/Authorize";
const BATCH_AUTHORIZE: &str = "/cedar_pdp.v1.Authorizer/BatchAuthorize";
const AUTHORIZE_STREAM: &str = "/cedar_pdp.v1.Authorizer/AuthorizeStream";

/// A codec that sends bytes already encoded as they are and decodes answers
/// of type `U` with prost, as the generated client would: for a stream.
struct PreEncoded<U>(PhantomData<U>);

impl<U> PreEncoded<U> {
    fn new() -> Self {
        Self(PhantomData)
    }
}

impl<U: Message + Default + Send + 'static> Codec for PreEncoded<U> {
    type Encode = Bytes;
    type Decode = U;
    type Encoder = AsIs;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> AsIs {
        AsIs
    }

    fn decoder(&mut self) -> ProstDecoder<U> {
        ProstDecoder::default()
    }
}

/// Writes a message's encoding as it is.
struct AsIs;

impl Encoder for AsIs {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

/// One connection's unary or batch calls, one at a time.
struct Worker {
    send: h2::client::SendRequest<Bytes>,
    corpus: Arc<Corpus>,
    /// Items per `BatchAuthorize`; `None`: `Authorize`.
    batch: Option<usize>,
    /// The method's URI.
    uri: Uri,
    limit: Limit,
    issued: Arc<AtomicU64>,
}

struct Tally {
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    allowed: u64,
    decided: u64,
    refused: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            calls: 0,
            errors: 0,
            first_error: None,
            allowed: 0,
            decided: 0,
            refused: 0,
            latency: new_histogram(),
        }
    }

    /// Counts one answered item: a decision, or a refusal, whose reason it
    /// returns (put into words only when it is the first).
    fn item(&mut self, response: &proto::AuthorizeResponse) -> Result<(), Failure> {
        match refusal(response) {
            None => {
                self.decided += 1;
                if response.decision == proto::Decision::Allow as i32 {
                    self.allowed += 1;
                }
                Ok(())
            }
            Some(message) => {
                self.refused += 1;
                Err(Failure::Refused(message.to_owned()))
            }
        }
    }

    /// Counts one call: its latency when every item was decided; an error
    /// when not, with the first reason kept.
    fn call(&mut self, start: Instant, outcome: Result<(), Failure>) {
        self.calls += 1;
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(micros.max(1));
            }
            Err(failure) => {
                self.errors += 1;
                if let Failure::Call { items, .. } = &failure {
                    self.refused += items;
                }
                if self.first_error.is_none() {
                    self.first_error = Some(failure.to_string());
                }
            }
        }
    }
}

/// Why a call counts as an error.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The call failed as a whole: none of its `items` got an answer.
    #[error("{reason}")]
    Call { reason: String, items: u64 },
    /// The server answered, and refused an item (already counted): the
    /// refusal's message, with its status name when the server gave one.
    #[error("{}", readable_refusal(.0))]
    Refused(String),
}

impl Failure {
    fn call(reason: impl std::fmt::Display, items: u64) -> Self {
        Self::Call {
            reason: reason.to_string(),
            items,
        }
    }
}

/// The message of a refused batch or stream item: the server answers one
/// with a DENY whose error names no policy (evaluation errors always name
/// theirs). `None` for a decision.
fn refusal(response: &proto::AuthorizeResponse) -> Option<&str> {
    response
        .errors
        .iter()
        .find(|e| e.policy_id.is_empty())
        .map(|e| e.message.as_str())
}

/// A refused item's message as a person reads it. A stream item's starts
/// with the status code's Rust name (`InvalidArgument: ...`), shown as its
/// gRPC name; a batch item's carries no code, so it is marked refused.
fn readable_refusal(message: &str) -> String {
    ALL_CODES
        .iter()
        .find_map(|&code| {
            let rest = message.strip_prefix(&format!("{code:?}: "))?;
            Some(format!("{}: {rest}", code_name(code)))
        })
        .unwrap_or_else(|| format!("refused: {message}"))
}

/// Every gRPC status code but OK.
const ALL_CODES: [tonic::Code; 16] = [
    tonic::Code::Cancelled,
    tonic::Code::Unknown,
    tonic::Code::InvalidArgument,
    tonic::Code::DeadlineExceeded,
    tonic::Code::NotFound,
    tonic::Code::AlreadyExists,
    tonic::Code::PermissionDenied,
    tonic::Code::ResourceExhausted,
    tonic::Code::FailedPrecondition,
    tonic::Code::Aborted,
    tonic::Code::OutOfRange,
    tonic::Code::Unimplemented,
    tonic::Code::Internal,
    tonic::Code::Unavailable,
    tonic::Code::DataLoss,
    tonic::Code::Unauthenticated,
];

/// A status code's name in the gRPC specification, as grpcurl and the docs
/// print it: `INVALID_ARGUMENT`.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
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
            let batch = self.batch.map(|n| (n, self.corpus.next_batch(n)));
            let start = Instant::now();
            let outcome = match batch {
                None => {
                    let body = self.corpus.next();
                    match wire::unary::<proto::AuthorizeResponse>(&mut self.send, &self.uri, body)
                        .await
                    {
                        Ok(r) => tally.item(&r),
                        Err(e) => Err(Failure::call(e, 1)),
                    }
                }
                Some((n, body)) => {
                    match wire::unary::<proto::BatchAuthorizeResponse>(
                        &mut self.send,
                        &self.uri,
                        body,
                    )
                    .await
                    {
                        // Every item is counted; the first refusal is the reason.
                        Ok(r) => {
                            let mut outcome = Ok(());
                            for item in &r.responses {
                                let counted = tally.item(item);
                                if outcome.is_ok() {
                                    outcome = counted;
                                }
                            }
                            outcome
                        }
                        Err(e) => Err(Failure::call(e, n as u64)),
                    }
                }
            };
            tally.call(start, outcome);
        }
    }
}

/// A status as a person reads it: its gRPC name and its message.
fn readable(status: &Status) -> String {
    format!("{}: {}", code_name(status.code()), status.message())
}

/// One `AuthorizeStream` call: a sender keeps up to `window` requests
/// unanswered; answers come back in order, so each one's latency is measured
/// from the oldest send time still waiting.
async fn stream_worker(
    mut client: Grpc<Channel>,
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
                if tx.send(corpus.next_message()).await.is_err() {
                    return;
                }
            }
        })
    };
    let ready = client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()));
    let call = match ready {
        Ok(()) => {
            client
                .streaming(
                    Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                    PathAndQuery::from_static(AUTHORIZE_STREAM),
                    PreEncoded::<proto::AuthorizeResponse>::new(),
                )
                .await
        }
        Err(status) => Err(status),
    };
    let mut answers = match call {
        Ok(response) => response.into_inner(),
        Err(status) => {
            sender.abort();
            tally.call(Instant::now(), Err(Failure::call(readable(&status), 1)));
            return tally;
        }
    };
    while let Some(sent_at) = sent_rx.recv().await {
        // A refused item fails one call; a broken stream ends the run.
        let (outcome, ended) = match answers.message().await {
            Ok(Some(resp)) => (tally.item(&resp), false),
            Ok(None) => (Err(Failure::call("the stream ended early", 1)), true),
            Err(status) => (Err(Failure::call(readable(&status), 1)), true),
        };
        tally.call(sent_at, outcome);
        if ended {
            break;
        }
        credits.add_permits(1);
    }
    sender.abort();
    tally
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn answer(policy_id: &str, message: &str) -> proto::AuthorizeResponse {
        proto::AuthorizeResponse {
            decision: proto::Decision::Deny as i32,
            errors: vec![proto::EvaluationError {
                policy_id: policy_id.to_owned(),
                message: message.to_owned(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn code_names_are_the_specifications() {
        for code in ALL_CODES {
            // `InvalidArgument` -> `INVALID_ARGUMENT`.
            let mut upper = String::new();
            for (i, c) in format!("{code:?}").chars().enumerate() {
                if i > 0 && c.is_uppercase() {
                    upper.push('_');
                }
                upper.push(c.to_ascii_uppercase());
            }
            assert_eq!(code_name(code), upper);
        }
        assert_eq!(code_name(tonic::Code::Ok), "OK");
    }

    #[test]
    fn a_refusal_is_an_error_naming_no_policy_and_reads_with_its_code() {
        let mut tally = Tally::new();
        // An evaluation error names its policy: still a decision.
        assert!(tally.item(&answer("p1", "overflow")).is_ok());
        let stream = tally
            .item(&answer("", "InvalidArgument: `Action::\"fly\"` is unknown"))
            .unwrap_err();
        assert_eq!(
            stream.to_string(),
            "INVALID_ARGUMENT: `Action::\"fly\"` is unknown"
        );
        // A batch item carries no code.
        let batch = tally.item(&answer("", "`principal`: is required"));
        assert_eq!(
            batch.unwrap_err().to_string(),
            "refused: `principal`: is required"
        );
        assert_eq!((tally.decided, tally.refused), (1, 2));
        tally.call(Instant::now(), Err(stream));
        tally.call(Instant::now(), Err(Failure::call("HTTP/2: reset", 4)));
        assert_eq!((tally.calls, tally.errors, tally.refused), (2, 2, 6));
        assert_eq!(
            tally.first_error.as_deref(),
            Some("INVALID_ARGUMENT: `Action::\"fly\"` is unknown")
        );
    }

    #[test]
    fn the_error_rate_is_refused_items_over_items() {
        let summary = |decided, refused| Summary {
            calls: 0,
            errors: 0,
            first_error: None,
            decisions_per_call: 1,
            allowed: 0,
            decided,
            refused,
            distinct: 1,
            elapsed: Duration::ZERO,
            latency: new_histogram(),
        };
        assert!(summary(0, 0).error_rate().abs() < f64::EPSILON);
        assert!((summary(3, 1).error_rate() - 0.25).abs() < f64::EPSILON);
        let text = summary(0, 7).to_string();
        assert!(
            text.contains("decisions: 0, allowed: 0, refused: 7 (100.0%), corpus size: 1"),
            "{text}"
        );
    }
}
