//! `cedar-pdp bench`: load a running server with one request, or a corpus
//! of many, and print throughput, decisions and latency; or, with
//! `--emit-h2load-body`, write the request for h2load and send nothing.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Exit;
use crate::bench::{self, BenchError, Corpus, LoadSpec, Mode, Order, Stop};

/// Flags of `bench`.
#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// Server address, `host:port` or a URL.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// The request: a JSON object with `principal`, `action`, `resource`
    /// (each `{"type", "id"}`), and optional `context` and `entities`.
    #[arg(long, value_name = "FILE", required_unless_present = "corpus")]
    request: Option<PathBuf>,
    /// Many requests, one JSON object per line in the shape of `--request`,
    /// sent in turn (and again from the start when all were sent).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["request", "emit_h2load_body"])]
    corpus: Option<PathBuf>,
    /// The order a corpus is sent in.
    #[arg(long, value_enum, default_value_t = Order::Shuffle, requires = "corpus")]
    order: Order,
    /// The seed of `--order shuffle`: one seed, one order.
    #[arg(long, default_value_t = 1, requires = "corpus")]
    seed: u64,
    /// HTTP/2 connections to open.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Calls in flight on each connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// How long to send for, e.g. `10s` [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// How many calls to send in total, instead of `--duration`.
    #[arg(long)]
    requests: Option<u64>,
    /// Which RPC to call.
    #[arg(long, value_enum, default_value_t = Mode::Unary)]
    mode: Mode,
    /// Copies of the request in each `BatchAuthorize` call.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// The client's threads. One (like `h2load -t 1`) leaves the other cores
    /// to a server on the same host.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// The largest share of items, from 0 to 1, that may get an error
    /// instead of ALLOW or DENY before the run fails: 0 fails on any.
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = parse_rate)]
    max_error_rate: f64,
    /// Write the request as a gRPC-framed `AuthorizeRequest` body for h2load
    /// to FILE, and exit without sending anything.
    #[arg(long, value_name = "FILE")]
    emit_h2load_body: Option<PathBuf>,
}

/// A share from 0 to 1.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("`{text}` is not a share from 0 to 1, such as 0.01")),
    }
}

/// Runs the bench: 0 when no more than `--max-error-rate` of the items got
/// an error, 1 otherwise.
pub(super) fn run(args: BenchArgs) -> Exit {
    let max_error_rate = args.max_error_rate;
    match send(args) {
        Ok(Some(summary)) => {
            println!("{summary}");
            let rate = summary.error_rate();
            if rate <= max_error_rate {
                Exit::Success
            } else {
                eprintln!(
                    "cedar-pdp: {} of {} items got an error instead of a decision ({:.1}%), more than --max-error-rate {max_error_rate}",
                    summary.refused,
                    summary.refused + summary.decided,
                    rate * 100.0
                );
                Exit::Failure
            }
        }
        Ok(None) => Exit::Success,
        Err(e) => {
            eprintln!("cedar-pdp: {e}");
            Exit::Failure
        }
    }
}

/// The summary of the run, or `None` when only the h2load body was written.
fn send(args: BenchArgs) -> Result<Option<bench::Summary>, BenchError> {
    let corpus = match (&args.corpus, &args.request) {
        (Some(path), _) => Corpus::read(path, args.order, args.seed)?,
        (None, Some(path)) => {
            let request = bench::read_request(path)?;
            if let Some(path) = &args.emit_h2load_body {
                std::fs::write(path, bench::grpc_frame(&request)).map_err(|source| {
                    BenchError::Write {
                        path: path.clone(),
                        source,
                    }
                })?;
                println!("wrote {}", path.display());
                return Ok(None);
            }
            Corpus::one(request)
        }
        // clap requires one of the two.
        (None, None) => return Ok(None),
    };
    let spec = LoadSpec {
        addr: args.addr,
        connections: args.connections,
        concurrency: args.concurrency,
        stop: match args.requests {
            Some(n) => Stop::Calls(n),
            None => Stop::After(args.duration.unwrap_or(Duration::from_secs(10))),
        },
        mode: args.mode,
        batch_size: args.batch_size,
        threads: args.threads as usize,
    };
    bench::run_blocking(&spec, corpus).map(Some)
}
