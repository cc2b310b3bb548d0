//! `cedar-pdp serve` (and no subcommand): flags over the config file, checked
//! once into settings, then the server until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use tokio::net::TcpListener;

use super::Exit;
use crate::app::{App, Listeners};
use crate::config::{Config, ConfigError, ConfigFile, ListenAddr, LogColor, LogFormat, Settings};
use crate::telemetry;
use crate::transport::{self, Listener, UnixSocket};

/// Flags of `serve`. Each overrides the config key named in its help.
#[derive(Debug, Default, Args)]
pub(super) struct ServeArgs {
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
    /// AuthZEN HTTP address (/access/v1/evaluation, ...); empty disables
    /// [config: authzen_listen] [default: 127.0.0.1:8180].
    // The variable lets a container be asked for AuthZEN on every interface
    // without restating the image's command (deploy/Dockerfile).
    #[arg(long, value_name = "ADDR", env = "CEDAR_PDP_AUTHZEN_LISTEN")]
    authzen_listen: Option<String>,
    /// Log format [config: log.format] [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` [config: log.level] [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// ANSI colour in text logs: `auto` only when stderr is a terminal and
    /// `NO_COLOR` is unset [config: log.color] [default: auto].
    #[arg(long, value_enum, value_name = "WHEN")]
    color: Option<LogColor>,
}

impl ServeArgs {
    /// The config file (or the defaults) with these flags applied, then
    /// checked: a flag can fix a bad value in the file.
    fn settings(self) -> Result<Settings, ConfigError> {
        let ConfigFile {
            mut config,
            problems,
        } = match &self.config {
            Some(path) => Config::read(path)?,
            None => ConfigFile {
                config: Config::default(),
                problems: Vec::new(),
            },
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
        if let Some(a) = self.authzen_listen {
            config.authzen_listen = a;
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
        if let Some(l) = self.log_level {
            config.log.level = l;
        }
        if let Some(c) = self.color {
            config.log.color = c;
        }
        ConfigFile { config, problems }.settings()
    }
}

/// Runs the server until a signal, then drains.
pub(super) fn run(args: ServeArgs) -> Exit {
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(e) => return super::usage(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cedar-pdp: cannot start the runtime: {e}");
            return Exit::Failure;
        }
    };
    let Settings {
        config,
        listen,
        admin_listen,
        authzen_listen,
        unix_socket_mode,
    } = settings;
    // The gRPC span exporter binds to the runtime it is built in.
    let telemetry = {
        let _enter = runtime.enter();
        let log = &config.log;
        match telemetry::init_with_color(log.format, &log.level, log.color, &config.otel) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cedar-pdp: {e}");
                return Exit::Usage;
            }
        }
    };
    let nofile = transport::fds::raise_nofile();
    tracing::info!(
        soft = ?nofile.after,
        was = ?nofile.before,
        hard = ?nofile.hard,
        "open-file limit (RLIMIT_NOFILE)"
    );
    // So does the OTLP exporter of decision records.
    let built = {
        let _enter = runtime.enter();
        App::build(config)
    };
    let app = match built {
        Ok(app) => app.with_telemetry(telemetry),
        Err(e) => {
            eprintln!("cedar-pdp: {e}");
            return Exit::Failure;
        }
    };
    let result = runtime.block_on(async move {
        let bound = bind(&listen, unix_socket_mode, admin_listen, authzen_listen).await;
        match bound {
            Ok(listeners) => app
                .serve(listeners, shutdown_signal())
                .await
                .map_err(|e| e.to_string()),
            // Nothing served: the drain only flushes the log and the tracer.
            Err(e) => {
                let _ = app.drain().await;
                Err(e)
            }
        }
    });
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cedar-pdp: {e}");
            Exit::Failure
        }
    }
}

/// The listeners the settings name, bound.
async fn bind(
    listen: &ListenAddr,
    unix_socket_mode: u32,
    admin: Option<SocketAddr>,
    authzen: Option<SocketAddr>,
) -> Result<Listeners, String> {
    let grpc: Listener = match listen {
        ListenAddr::Tcp(a) => TcpListener::bind(a)
            .await
            .map_err(|e| format!("cannot listen on `{a}`: {e}"))?
            .into(),
        ListenAddr::Unix(path) => UnixSocket::bind(path, unix_socket_mode)
            .map_err(|e| format!("cannot listen on a Unix socket: {e}"))?
            .into(),
    };
    let mut listeners = Listeners::new(grpc);
    if let Some(addr) = admin {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on `{addr}` (admin_listen): {e}"))?;
        listeners = listeners.with_admin(listener);
    }
    if let Some(addr) = authzen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on `{addr}` (authzen_listen): {e}"))?;
        listeners = listeners.with_authzen(listener);
    }
    Ok(listeners)
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
