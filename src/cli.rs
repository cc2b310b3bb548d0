//! Command-line parsing and the subcommands. `serve` is the default.
//!
//! Exit codes: 0 success (and `authorize` allow), 1 failure (invalid
//! policies, a failed call), 2 `authorize` deny (Cedar CLI's convention: a
//! deny is a result, not a failure), 64 bad usage or config. `test` exits 1
//! when a case fails.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::App;
use crate::bench::{self, BenchArgs};
use crate::client::{self, AuthorizeArgs};
use crate::config::{Config, ConfigError, ListenAddr, LogFormat};
use crate::policy_format;
use crate::policy_store::{LoadError, LoadOptions, SourceProblem, build, read_dir};
use crate::policy_tests;
use crate::telemetry;
use crate::transport::{Listener, UnixSocket};

/// Exit code for bad flags or config (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// cedar-pdp: a Cedar policy decision point sidecar.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Authorizer gRPC API (the default).
    Serve(ServeArgs),
    /// Load a policy directory as the server would, and report every error.
    Validate(ValidateArgs),
    /// Ask a running server for one decision.
    Authorize(AuthorizeArgs),
    /// Format the `.cedar` files of a policy directory.
    Fmt(FmtArgs),
    /// Load a running server with one request and report throughput and latency.
    Bench(BenchArgs),
    /// Run the policy directory's `*.test.yaml` / `*.test.json` cases.
    Test(policy_tests::TestArgs),
}

/// Flags of `serve`. Each overrides the config key named in its help.
#[derive(Debug, Default, Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, value_name = "FILE", env = "CEDAR_PDP_CONFIG")]
    config: Option<PathBuf>,
    /// Policy directory [config: policies] [default: policies].
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// gRPC listen address [config: listen] [default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin HTTP address for /metrics, /healthz, /readyz; empty disables
    /// [config: admin_listen] [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Log format [config: log.format] [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` [config: log.level] [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// Policy directory.
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    /// Config file whose `[validation]` settings apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// `text` (`file:line:col: message` lines) or `json` (one object, for tools).
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Exit 1 on warnings too.
    #[arg(long)]
    deny_warnings: bool,
}

#[derive(Debug, Args)]
struct FmtArgs {
    /// Policy directory.
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    /// Change nothing; exit 1 when a file would change.
    #[arg(long)]
    check: bool,
    /// Preferred line width.
    #[arg(long, value_name = "N", default_value_t = 80)]
    line_width: usize,
}

/// How `validate` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

impl ServeArgs {
    fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_path(path)?,
            None => Config::default(),
        };
        if let Some(p) = self.policies {
            config.policies = p;
        }
        if let Some(l) = self.listen {
            config.listen = l;
        }
        if let Some(a) = self.admin_listen {
            config.admin_listen = a;
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
        if let Some(l) = self.log_level {
            config.log.level = l;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Parses the command line and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
        Some(Command::Validate(args)) => validate(args),
        Some(Command::Fmt(args)) => fmt(args),
        Some(Command::Authorize(args)) => client::main(args),
        Some(Command::Bench(args)) => bench::main(args),
        Some(Command::Test(args)) => policy_tests::main(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cedar-pdp: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cedar-pdp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The gRPC span exporter binds to the runtime it is built in.
    let telemetry = {
        let _enter = runtime.enter();
        match telemetry::init(config.log.format, &config.log.level, &config.otel) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cedar-pdp: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    };
    let addr = match config.listen_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("cedar-pdp: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let socket_mode = config.unix_socket_mode().unwrap_or(0o660);
    let app = match App::build(config) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("cedar-pdp: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener: Listener = match &addr {
            ListenAddr::Tcp(a) => tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on `{a}`: {e}"))?
                .into(),
            ListenAddr::Unix(path) => UnixSocket::bind(path, socket_mode)
                .map_err(|e| format!("cannot listen on a Unix socket: {e}"))?
                .into(),
        };
        let app = match app.admin_addr() {
            Some(admin) => app.with_admin_listener(
                tokio::net::TcpListener::bind(admin)
                    .await
                    .map_err(|e| format!("cannot listen on `{admin}` (admin_listen): {e}"))?,
            ),
            None => app,
        };
        app.run(listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    // After the drain: flush buffered spans last.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cedar-pdp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn fmt(args: FmtArgs) -> ExitCode {
    let report = policy_format::format_dir(&args.policies, args.check, args.line_width);
    let path = |rel: &str| args.policies.join(rel).display().to_string();
    for rel in &report.changed {
        if args.check {
            println!("would reformat: {}", path(rel));
        } else {
            println!("reformatted: {}", path(rel));
        }
    }
    for (rel, err) in &report.failed {
        eprintln!("{}: {err}", path(rel));
    }
    let total = report.changed.len() + report.unchanged.len() + report.failed.len();
    println!(
        "{total} file(s): {} {}, {} already formatted, {} failed",
        report.changed.len(),
        if args.check {
            "would change"
        } else {
            "reformatted"
        },
        report.unchanged.len(),
        report.failed.len()
    );
    if !report.failed.is_empty() || (args.check && !report.changed.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn validate(args: ValidateArgs) -> ExitCode {
    let validate_policies = match &args.config {
        Some(path) => match Config::from_path(path) {
            Ok(c) => c.validation.policies,
            Err(e) => {
                eprintln!("cedar-pdp: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => true,
    };
    let options = LoadOptions { validate_policies };
    let loaded = read_dir(&args.policies).and_then(|sources| build(sources, &options, 1));
    // Paths as the user typed them, so editors and CI annotate them.
    let located = |p: &SourceProblem| SourceProblem {
        file: args.policies.join(&p.file).display().to_string(),
        ..p.clone()
    };
    let (snapshot, errors) = match loaded {
        Ok(snapshot) => (Some(snapshot), Vec::new()),
        Err(LoadError::Invalid(problems)) => (None, problems.iter().map(located).collect()),
        Err(e) => (
            None,
            vec![SourceProblem {
                file: args.policies.display().to_string(),
                line: 0,
                column: 0,
                message: e.to_string(),
            }],
        ),
    };
    let warnings: Vec<SourceProblem> = snapshot
        .as_ref()
        .map(|s| s.warnings.iter().map(located).collect())
        .unwrap_or_default();
    let failed = !errors.is_empty() || (args.deny_warnings && !warnings.is_empty());
    match args.format {
        ReportFormat::Json => {
            let problem = |p: &SourceProblem| serde_json::json!({"file": p.file, "line": p.line, "column": p.column, "message": p.message});
            let report = serde_json::json!({
                "ok": !failed,
                "policies": args.policies.display().to_string(),
                "revision": snapshot.as_ref().map(|s| s.revision.clone()),
                "policy_count": snapshot.as_ref().map(|s| s.policy_count),
                "entity_count": snapshot.as_ref().map(|s| s.entity_count),
                "schema": snapshot.as_ref().map(|s| s.schema.is_some()),
                "errors": errors.iter().map(problem).collect::<Vec<_>>(),
                "warnings": warnings.iter().map(problem).collect::<Vec<_>>(),
            });
            println!("{report}");
        }
        ReportFormat::Text => {
            for p in &errors {
                eprintln!("{p}");
            }
            for p in &warnings {
                eprintln!("{}:{}:{}: warning: {}", p.file, p.line, p.column, p.message);
            }
            match &snapshot {
                Some(s) => println!(
                    "ok: {} policies, {} entities, schema {}, revision {}, {} warning(s)",
                    s.policy_count,
                    s.entity_count,
                    if s.schema.is_some() {
                        "loaded"
                    } else {
                        "absent"
                    },
                    s.revision,
                    warnings.len(),
                ),
                None => eprintln!("{} error(s)", errors.len()),
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
