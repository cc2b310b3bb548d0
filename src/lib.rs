//! cedar-pdp: a Cedar policy decision point that runs as a sidecar.
//!
//! The public modules are what the binary, the tests and the benches use;
//! the rest is `pub(crate)`.
//!
//! # Layout
//! - [`cmd`]: the binary: command-line parsing, one file per subcommand, exit codes.
//! - [`config`]: the TOML config file, merged with flags, then checked once into settings.
//! - [`admin`]: the admin HTTP listener: metrics, liveness, readiness.
//! - [`app`]: composition: build every component, run them on the listeners, drain in order.
//! - [`policy_store`]: the policy directory and nothing of Cedar: the one reader, loading
//!   (texts handed to the engine), the test gate, the watcher and the swap.
//! - [`engine`]: Cedar, and the only importer of Cedar's core crate: texts compiled into an
//!   [`engine::Engine`] once per load, and its one [`engine::Engine::decide`].
//! - [`policy_tests`]: policy test files, run by `cedar-pdp test` and the reload gate.
//! - [`policy_format`]: formatting policy files with the Cedar project's formatter.
//! - [`pipeline`]: the one decision path behind every front-end: admission, binding, limits,
//!   cache, server context, evaluation, spans, metrics and the decision record.
//! - [`grpc`]: generated code, thin Authorizer and ext_authz adapters, the one Status mapping.
//! - [`authzen`]: the OpenID AuthZEN Authorization API over HTTP, a thin adapter over the pipeline.
//! - [`metrics`]: Prometheus metrics, read by the admin listener; a leaf.
//! - [`state_metrics`]: scrape-time metrics read from the policy store and the decision log.
//! - [`bench`]: the load generator behind `cedar-pdp bench`.
//! - [`decision_log`]: the only writer of decision records; a bounded queue, a writer thread,
//!   the hash chain and its verification.
//! - [`replay`]: recorded decisions evaluated again, against their revision or a candidate set.
//! - [`telemetry`]: log output setup.
//! - [`transport`]: TCP, Unix socket and reloading TLS listeners, the peer facts they prove,
//!   the bounds on their connections, the request-buffer budget, and the bounded HTTP
//!   server behind the admin and AuthZEN listeners.
//! - [`identity`]: SPIFFE IDs and the caller facts handed to policies.
//! - [`tokens`]: JWTs verified against the configured issuers' JWKS files; a leaf.
//! - [`error_chain`]: an error with its sources, as one line.

#![warn(unreachable_pub)]

pub(crate) mod admin;
pub mod app;
pub mod authzen;
pub(crate) mod bench;
pub mod cmd;
pub mod config;
pub mod decision_log;
pub mod engine;
pub(crate) mod error_chain;
pub mod grpc;
pub mod identity;
pub mod metrics;
pub mod pipeline;
pub(crate) mod policy_format;
pub mod policy_store;
pub mod policy_tests;
pub mod replay;
pub(crate) mod state_metrics;
pub mod telemetry;
pub mod tokens;
pub mod transport;
