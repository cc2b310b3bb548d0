//! The `cedar-pdp` binary: command-line parsing, and one file per
//! subcommand. `serve` is the default.
//!
//! Every subcommand ends in an [`Exit`]: 0 success (and `authorize` allow),
//! 1 failure (invalid policies, a failing test, a failed call, a log that
//! does not verify, a replayed decision that differs), 2 `authorize` deny
//! (the Cedar CLI's convention: a deny is a result, not a failure) and
//! `replay`'s unusable input, 64 bad usage or config.

mod authorize;
mod bench;
mod completions;
mod fmt;
mod log;
mod problems;
mod replay;
mod serve;
mod test;
mod validate;

use std::path::Path;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::policy_store::LoadOptions;

/// How the binary exits. The numbers are a contract that scripts and CI
/// read; they never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: done as asked; `authorize` got an allow.
    Success,
    /// 1: invalid policies, a failing test, a failed call, a broken log, a
    /// replayed decision that differs.
    Failure,
    /// 2: `authorize` got a deny.
    Deny,
    /// 2: `replay` cannot use its input (the contract).
    Unusable,
    /// 64: bad flags or config (sysexits `EX_USAGE`).
    Usage,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Deny | Self::Unusable => 2,
            Self::Usage => 64,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// What `--version` prints after the name: the crate version, the git
/// commit it was built from (`unknown` outside a checkout) and the Cedar
/// version it evaluates with, both read by `build.rs`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CEDAR_PDP_GIT_COMMIT"),
    ", cedar-policy ",
    env!("CEDAR_PDP_CEDAR_VERSION"),
    ")"
);

/// cedar-pdp: a Cedar policy decision point sidecar.
#[derive(Debug, Parser)]
#[command(name = "cedar-pdp", version = VERSION, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: serve::ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Authorizer gRPC API (the default).
    Serve(serve::ServeArgs),
    /// Load a policy directory as the server would, and report every error.
    Validate(validate::ValidateArgs),
    /// Ask a running server for one decision.
    Authorize(authorize::AuthorizeArgs),
    /// Format the `.cedar` files of a policy directory.
    Fmt(fmt::FmtArgs),
    /// Load a running server with one request and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Run the policy directory's `*.test.yaml` / `*.test.json` cases.
    Test(test::TestArgs),
    /// Work with decision logs: `log verify`.
    Log(log::LogArgs),
    /// Evaluate recorded decisions again, and report those that differ.
    Replay(replay::ReplayArgs),
    /// Print a completion script for bash, zsh, fish, elvish or powershell.
    Completions(completions::CompletionsArgs),
}

/// Parses the command line and runs the chosen command.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `--help` and `--version` end here too, and succeed.
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Success
            }
            .into();
        }
    };
    let exit = match cli.command {
        Some(Command::Serve(args)) => serve::run(args),
        None => serve::run(cli.serve),
        Some(Command::Validate(args)) => validate::run(args),
        Some(Command::Fmt(args)) => fmt::run(args),
        Some(Command::Authorize(args)) => authorize::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Test(args)) => test::run(args),
        Some(Command::Log(args)) => log::run(args),
        Some(Command::Replay(args)) => replay::run(args),
        Some(Command::Completions(args)) => completions::run(args, Cli::command()),
    };
    exit.into()
}

/// The load options of a `--config` file (its `[validation]` table), or the
/// defaults without one. The whole file is checked, as `serve` would.
fn load_options(config: Option<&Path>) -> Result<LoadOptions, ConfigError> {
    checked_config(config).map(|c| LoadOptions::from_config(&c))
}

/// The config file at `config`, checked as `serve` checks it (unknown keys
/// too) but with no host name resolved, or the defaults.
fn checked_config(config: Option<&Path>) -> Result<Config, ConfigError> {
    match config {
        Some(path) => Config::read(path)?.checked(),
        None => Ok(Config::default()),
    }
}

/// Prints a config error as the one line (or list) it is, for [`Exit::Usage`].
fn usage(e: &ConfigError) -> Exit {
    eprintln!("cedar-pdp: {e}");
    Exit::Usage
}
