//! The config file (TOML). Every command-line flag has a key here; flags win.
//! [`Config::validate`] reports every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration of `cedar-pdp serve`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: String,
    /// The policy directory.
    pub policies: PathBuf,
    /// Admin HTTP listener (`/metrics`, `/healthz`, `/readyz`); empty disables it.
    pub admin_listen: String,
    pub log: LogConfig,
    pub reload: ReloadConfig,
    pub validation: ValidationConfig,
    pub limits: LimitsConfig,
    pub decision_log: DecisionLogConfig,
    pub otel: OtelConfig,
}

/// `[log]`: process logs (not decision records).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `cedar_pdp=debug`. `RUST_LOG` wins.
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[reload]`: when the policy directory is re-read.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Quiet time after the last file event before reloading.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// Periodic rescan, for volumes where file events are missed. `0s` disables it.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// Not ready when reloads keep failing and the last good load is older
    /// than this. `0s` disables the check.
    #[serde(with = "humantime_serde")]
    pub max_policy_age: Duration,
}

/// `[validation]`: how strictly a policy set is checked before it goes live.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Validate policies strictly against the schema, when there is one.
    /// Turning this off keeps the schema for parsing requests only.
    pub policies: bool,
}

/// `[limits]`: bounds on what one call may cost.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most items in one `BatchAuthorize`.
    pub max_batch_size: usize,
    /// Largest accepted gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// How long a graceful shutdown waits for in-flight calls.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// `[decision_log]`: one JSON record per decision, written off the request path.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionLogConfig {
    pub enabled: bool,
    pub sink: LogSink,
    /// File path, for `sink = "file"`.
    pub path: PathBuf,
    /// Rotate the file once it passes this size.
    pub max_file_bytes: usize,
    /// Rotated files kept beside the live one.
    pub max_files: usize,
    /// Records queued between the request path and the writer.
    pub queue_capacity: usize,
    pub on_full: OnFull,
    /// Field paths (`context.token`) whose values are replaced by `***`.
    pub mask: Vec<String>,
    /// Field paths removed from the record.
    pub remove: Vec<String>,
}

/// Where decision records go.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogSink {
    #[default]
    Stdout,
    File,
}

/// What a call does when the decision-log queue is full.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Wait for room: backpressure, nothing lost.
    #[default]
    Block,
    /// Drop the record and count it.
    Drop,
}

/// `[otel]`: OpenTelemetry span export. The standard `OTEL_*` variables win.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// OTLP endpoint; empty (and no `OTEL_EXPORTER_OTLP_*ENDPOINT`) means no
    /// exporter runs and decision spans cost nothing.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: String,
    pub service_name: String,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: "grpc".to_string(),
            service_name: "cedar-pdp".to_string(),
        }
    }
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            sink: LogSink::Stdout,
            path: PathBuf::from("decisions.log"),
            max_file_bytes: 100 * 1024 * 1024,
            max_files: 5,
            queue_capacity: 16 * 1024,
            on_full: OnFull::Block,
            mask: Vec::new(),
            remove: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".to_string(),
            policies: PathBuf::from("policies"),
            admin_listen: "127.0.0.1:9464".to_string(),
            log: LogConfig::default(),
            reload: ReloadConfig::default(),
            validation: ValidationConfig::default(),
            limits: LimitsConfig::default(),
            decision_log: DecisionLogConfig::default(),
            otel: OtelConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(250),
            rescan_interval: Duration::from_secs(30),
            max_policy_age: Duration::ZERO,
        }
    }
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self { policies: true }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 100,
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads and validates a TOML config file.
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        text.parse()
    }

    /// The parsed listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            ConfigError::Invalid(vec![format!(
                "`listen`: `{}` is not an address like `127.0.0.1:50051`: {e}",
                self.listen
            )])
        })
    }

    /// Checks every key and reports all problems together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(ConfigError::Invalid(p)) = self.listen_addr() {
            problems.extend(p);
        }
        if !self.admin_listen.is_empty() && self.admin_listen.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "`admin_listen`: `{}` is not an address like `127.0.0.1:9464` (empty disables it)",
                self.admin_listen
            ));
        }
        if self.policies.as_os_str().is_empty() {
            problems.push("`policies`: must name a directory".to_string());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!(
                "`log.level`: `{}` is not a filter: {e}",
                self.log.level
            ));
        }
        if self.reload.debounce.is_zero() || self.reload.debounce > Duration::from_secs(60) {
            problems.push("`reload.debounce`: must be between 1ms and 60s".to_string());
        }
        if !self.reload.rescan_interval.is_zero()
            && self.reload.rescan_interval < Duration::from_secs(1)
        {
            problems.push("`reload.rescan_interval`: must be 0s (off) or at least 1s".to_string());
        }
        if !(1..=10_000).contains(&self.limits.max_batch_size) {
            problems.push("`limits.max_batch_size`: must be between 1 and 10000".to_string());
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.limits.max_message_bytes) {
            problems
                .push("`limits.max_message_bytes`: must be between 1 KiB and 256 MiB".to_string());
        }
        if !matches!(self.otel.protocol.as_str(), "grpc" | "http/protobuf") {
            problems.push(format!(
                "`otel.protocol`: `{}` is not `grpc` or `http/protobuf`",
                self.otel.protocol
            ));
        }
        let log = &self.decision_log;
        if log.queue_capacity < self.limits.max_batch_size {
            problems.push(
                "`decision_log.queue_capacity`: must hold at least one full batch (`limits.max_batch_size`)"
                    .to_string(),
            );
        }
        if log.max_file_bytes < 1024 {
            problems.push("`decision_log.max_file_bytes`: must be at least 1 KiB".to_string());
        }
        for path in log.mask.iter().chain(&log.remove) {
            let root = path.split('.').next().unwrap_or_default();
            if !matches!(root, "context" | "workload") || !path.contains('.') {
                problems.push(format!(
                    "`decision_log`: `{path}` must start with `context.` or `workload.`"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

impl FromStr for Config {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!("".parse::<Config>().unwrap(), Config::default());
    }

    #[test]
    fn reads_every_section() {
        let c: Config = r#"
            listen = "0.0.0.0:9000"
            policies = "/etc/cedar"
            [log]
            format = "json"
            level = "debug"
            [reload]
            debounce = "100ms"
            rescan_interval = "0s"
            [validation]
            policies = false
            [limits]
            max_batch_size = 7
            max_message_bytes = 65536
            shutdown_grace = "3s"
        "#
        .parse()
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.reload.debounce, Duration::from_millis(100));
        assert!(!c.validation.policies);
        assert_eq!(c.limits.max_batch_size, 7);
        assert_eq!(c.limits.shutdown_grace, Duration::from_secs(3));
    }

    #[test]
    fn reports_every_problem() {
        let err = "listen = \"nope\"\n[limits]\nmax_batch_size = 0\n"
            .parse::<Config>()
            .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            unreachable!("expected Invalid, got {err}")
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn readme_reference_is_the_default() {
        let readme = include_str!("../README.md");
        let start = readme.find("```toml\n").unwrap() + "```toml\n".len();
        let end = start + readme[start..].find("```").unwrap();
        assert_eq!(
            readme[start..end].parse::<Config>().unwrap(),
            Config::default()
        );
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(matches!(
            "lisen = \"x\"".parse::<Config>(),
            Err(ConfigError::Parse(_))
        ));
    }
}
