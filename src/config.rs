//! The config file (TOML). Every command-line flag has a key here; flags win.
//!
//! [`Config::read`] only parses, so that flags can still change a key (a bad
//! `listen` in the file is fixed by `--listen`); then [`ConfigFile::settings`]
//! checks everything once, reporting every problem together (unknown keys
//! too), and returns the typed [`Settings`] the server starts from.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde_path_to_error::Segment;

/// `[context_keys]`: the context keys the server sets from request fields
/// and verified tokens. Each can be renamed, so that a schema written with a
/// key of its own keeps it (docs/security.md, "Context keys").
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ContextKeysConfig {
    /// The `workload` field; always the server's.
    pub workload: String,
    /// The delegation chain, as the server held it; always the server's.
    pub delegation: String,
    /// The `purpose` field. The caller declares it, so the server does not
    /// take the key: a request may set it in its context instead.
    pub purpose: String,
    /// The subject token's claims; the server's once `[[tokens.issuers]]`
    /// are configured.
    pub token: String,
}

impl Default for ContextKeysConfig {
    fn default() -> Self {
        Self {
            workload: "workload".into(),
            delegation: "delegation".into(),
            purpose: "purpose".into(),
            token: "token".into(),
        }
    }
}

impl ContextKeysConfig {
    /// Each key with its config name.
    pub fn named(&self) -> [(&'static str, &str); 4] {
        [
            ("workload", &self.workload),
            ("delegation", &self.delegation),
            ("purpose", &self.purpose),
            ("token", &self.token),
        ]
    }
}

/// The whole configuration of `cedar-pdp serve`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// gRPC listen address: `host:port`, or `unix:///path/to.sock`.
    pub listen: String,
    /// The policy directory.
    pub policies: PathBuf,
    /// Admin HTTP listener (`/metrics`, `/healthz`, `/readyz`); empty disables it.
    pub admin_listen: String,
    pub admin: AdminConfig,
    /// AuthZEN HTTP listener (`/access/v1/...`); empty disables it.
    pub authzen_listen: String,
    pub authzen: AuthzenConfig,
    pub log: LogConfig,
    pub reload: ReloadConfig,
    pub validation: ValidationConfig,
    pub evaluation: EvaluationConfig,
    pub delegation: DelegationConfig,
    pub tokens: TokensConfig,
    pub limits: LimitsConfig,
    pub decision_log: DecisionLogConfig,
    pub otel: OtelConfig,
    pub unix_socket: UnixSocketConfig,
    pub tls: TlsConfig,
    pub caller: CallerConfig,
    pub ext_authz: ExtAuthzConfig,
    pub context_keys: ContextKeysConfig,
}

/// Where the gRPC server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// `[unix_socket]`: the socket file, when `listen` is `unix://`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct UnixSocketConfig {
    /// File mode of the socket, in octal, e.g. `"0660"`.
    pub mode: String,
}

impl Default for UnixSocketConfig {
    fn default() -> Self {
        Self {
            mode: "0660".to_string(),
        }
    }
}

/// `[tls]`: TLS on the gRPC listener. Off while `cert` is empty.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server (e.g. its SVID).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM trust bundle that client certificates must chain to.
    pub client_ca: PathBuf,
    pub client_auth: ClientAuth,
    /// Trust domains whose SVIDs are callers; empty means the trust domain
    /// of the server's own certificate. Other client certificates fail the
    /// handshake.
    pub trust_domains: Vec<String>,
    /// How often the three files are checked for changes; SVIDs rotate hourly.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// A connection that has not finished its handshake by then is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty()
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: PathBuf::new(),
            client_auth: ClientAuth::Required,
            trust_domains: Vec::new(),
            reload_interval: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether clients must present a certificate.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
    None,
}

/// `[caller]`: what the transport proved about the caller, and how it is used.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct CallerConfig {
    /// Context key under which verified caller facts reach policies; empty
    /// keeps them out of the context (they are still logged and traced).
    pub context_key: String,
    /// Reject a request whose `workload.spiffe_id` is not the verified caller.
    pub bind_workload: BindWorkload,
}

impl Default for CallerConfig {
    fn default() -> Self {
        Self {
            context_key: "caller".to_string(),
            bind_workload: BindWorkload::Auto,
        }
    }
}

/// When caller binding applies.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BindWorkload {
    /// On exactly when client certificates are required.
    #[default]
    Auto,
    Always,
    Never,
}

/// `[ext_authz]`: how an Envoy `CheckRequest` becomes a Cedar request.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ExtAuthzConfig {
    /// Serve `envoy.service.auth.v3.Authorization` beside the Authorizer.
    pub enabled: bool,
    /// Entity type of the source workload.
    pub principal_type: String,
    pub namespace_type: String,
    /// Namespace id template over `{trust_domain}` and `{namespace}`. With
    /// more than one trust domain, qualify it (`{trust_domain}/{namespace}`):
    /// otherwise a foreign workload's namespace is the same entity as yours.
    pub namespace_id: String,
    pub trust_domain_type: String,
    /// The principal when the source has no (SPIFFE) principal, as a Cedar
    /// uid such as `Mesh::Workload::"anonymous"`.
    pub anonymous_principal: String,
    /// Entity type of actions; the id is the HTTP method unless a route matches.
    pub action_type: String,
    pub resource_type: String,
    /// Resource id template over `{host}`, `{path}`, `{method}`, `{service}`,
    /// expanded in one pass (a value holding `{service}` stays as it is).
    pub resource_id: String,
    /// Entity type of `resource.service`, named `<namespace>/<service account>`
    /// of the destination's SPIFFE ID.
    pub service_type: String,
    /// The service id when the check has no destination SPIFFE ID with a
    /// namespace and service account; empty denies such checks. Never taken
    /// from the client's `Host` header.
    pub default_service: String,
    /// Request headers copied into `context.headers`; never all of them.
    pub headers: Vec<String>,
    /// HTTP status of a deny.
    pub deny_status: u16,
    /// HTTP status when the request could not be evaluated (still a deny).
    pub error_status: u16,
    /// With `[[tokens.issuers]]`: the header a subject token comes in, as
    /// `Bearer <token>`; empty: none is read.
    pub subject_token_header: String,
    /// Method + path prefix overrides of the action id; first match wins.
    pub routes: Vec<ExtAuthzRoute>,
}

/// One `[[ext_authz.routes]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ExtAuthzRoute {
    /// HTTP method; empty matches any.
    #[serde(default)]
    pub method: String,
    pub path_prefix: String,
    pub action: String,
}

impl Default for ExtAuthzConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            principal_type: "Mesh::Workload".to_string(),
            namespace_type: "Mesh::Namespace".to_string(),
            namespace_id: "{namespace}".to_string(),
            trust_domain_type: "Mesh::TrustDomain".to_string(),
            anonymous_principal: r#"Mesh::Workload::"anonymous""#.to_string(),
            action_type: "Mesh::Action".to_string(),
            resource_type: "Mesh::HttpRoute".to_string(),
            resource_id: "{host}{path}".to_string(),
            service_type: "Mesh::Service".to_string(),
            default_service: String::new(),
            headers: Vec::new(),
            deny_status: 403,
            error_status: 403,
            subject_token_header: "authorization".to_string(),
            routes: Vec::new(),
        }
    }
}

/// `[admin]`: what one client of the admin listener may cost it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct AdminConfig {
    /// A connection's first request must arrive within this (its headers,
    /// complete), and so must each next one.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Kept for HTTP/2 clients of the admin port, which is HTTP/1.1 only:
    /// a connection with no request open for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections open at once; at the cap the idlest is closed to admit
    /// a new one, which is answered `503` only when all are busy.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: 32,
        }
    }
}

/// `[authzen]`: the AuthZEN listener's mapping to Cedar and its bounds on
/// each client.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuthzenConfig {
    /// The `policy_decision_point` the metadata names, e.g.
    /// `https://pdp.example.com`; empty: `http://` and the request's `Host`.
    pub base_url: String,
    /// Cedar namespace of subject, resource and action types; empty: none.
    pub namespace: String,
    /// Entity type of actions, under `namespace`.
    pub action_type: String,
    /// A connection's first request must arrive within this (its headers,
    /// complete), and on HTTP/1.1 so must each next one.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection with no request open for this long is closed;
    /// PINGs do not count.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections open at once; at the cap the idlest is closed to admit
    /// a new one, which is answered `503` only when all are busy.
    pub max_connections: usize,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// AuthZEN type strings that are not Cedar names (`todo-list`), mapped
    /// to Cedar entity types (full names, not put under `namespace`).
    pub types: BTreeMap<String, String>,
    /// Per Cedar entity type (full name), the attributes a request's
    /// `properties` may add to a stored entity of that type, where it lacks
    /// them. Empty: stored entities are closed, and every property offered
    /// for one is dropped (`stored_entity`).
    pub open_properties: BTreeMap<String, Vec<String>>,
}

impl Default for AuthzenConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            namespace: String::new(),
            action_type: "Action".to_string(),
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1_024,
            max_body_bytes: 1024 * 1024,
            types: BTreeMap::new(),
            open_properties: BTreeMap::new(),
        }
    }
}

/// `[log]`: process logs (not decision records).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `cedar_pdp=debug`. `RUST_LOG` wins.
    pub level: String,
    /// ANSI colour in text logs.
    pub color: LogColor,
}

/// When text logs are coloured.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    /// Only when stderr is a terminal and `NO_COLOR` is unset or empty, so
    /// a redirected log holds no escape codes.
    #[default]
    Auto,
    Always,
    Never,
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
#[serde(default)]
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
    /// Run the directory's policy tests before a new set goes live; a set
    /// whose tests fail (or that has none) is not activated.
    pub require_tests: bool,
    /// A test run that takes longer refuses the new set.
    #[serde(with = "humantime_serde")]
    pub test_timeout: Duration,
}

/// `[validation]`: how strictly a policy set is checked before it goes live.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ValidationConfig {
    /// Validate policies strictly against the schema, when there is one.
    /// Turning this off keeps the schema for parsing requests only.
    pub policies: bool,
    /// Whether a reload may drop the schema the live set has.
    pub schema: SchemaRequirement,
    /// Entity types only the policy directory may define: a request entity
    /// of one is refused (`entity_conflict`), so a caller cannot make up a
    /// person with the attributes it needs.
    pub stored_only_types: Vec<String>,
}

/// `[validation] schema`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SchemaRequirement {
    /// Once a set with a schema is live, a set without one is refused:
    /// without it requests parse untyped, and an `ipaddr` stays a string.
    #[default]
    RequiredOnceLoaded,
    /// A set may drop its schema.
    Optional,
}

/// `[delegation]`: how the server bounds a request's delegation chain.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DelegationConfig {
    /// Hops a chain may have at most.
    pub max_depth: usize,
    /// Scopes one hop may list at most.
    pub max_scopes: usize,
}

impl Default for DelegationConfig {
    fn default() -> Self {
        Self {
            max_depth: 4,
            max_scopes: 64,
        }
    }
}

/// `[tokens]`: the issuers whose JWTs the server verifies.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TokensConfig {
    /// Tolerance for `exp`, `nbf` and `iat`.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Verified claims policies see in `context.token`.
    pub claims: Vec<String>,
    /// How often the JWKS files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    pub issuers: Vec<IssuerConfig>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            clock_skew: Duration::from_secs(30),
            claims: ["scope", "groups", "client_id", "azp"]
                .map(String::from)
                .to_vec(),
            reload_interval: Duration::from_secs(5),
            issuers: Vec::new(),
        }
    }
}

/// One `[[tokens.issuers]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The `iss` its tokens carry.
    pub issuer: String,
    pub jwks_file: PathBuf,
    /// One of these must be in a token's `aud`.
    pub audiences: Vec<String>,
    /// The entity type of this issuer's `sub`.
    pub principal_type: String,
    /// The entity type of the actors its `act` claims name; empty: the
    /// request principal's type.
    #[serde(default)]
    pub actor_type: String,
}

/// `[evaluation]`: how a Cedar answer becomes the server's.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct EvaluationConfig {
    pub on_forbid_error: OnForbidError,
    /// The context key the server's time (a `datetime`, whole seconds)
    /// goes under; empty: off.
    pub server_time_key: String,
}

/// What a `forbid` whose evaluation errors means.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnForbidError {
    /// The answer is deny: an error must not lift a forbid.
    #[default]
    Deny,
    /// Cedar's semantics: the erroring policy is skipped.
    Skip,
}

/// `[limits]`: bounds on what one call may cost.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct LimitsConfig {
    /// Most items in one `BatchAuthorize`.
    pub max_batch_size: usize,
    /// Largest accepted gRPC message, in bytes.
    pub max_message_bytes: usize,
    /// How long a graceful shutdown waits for in-flight calls.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Most entities one request (or batch) may carry.
    pub max_entities_per_request: usize,
    /// Deepest nesting of records and sets in a context or entity.
    pub max_context_depth: usize,
    /// Largest context, as Cedar JSON bytes.
    pub max_context_bytes: usize,
    /// Longest single string (ids, values, keys), in bytes.
    pub max_string_bytes: usize,
    /// Most parents one request entity may name.
    pub max_parents_per_entity: usize,
    /// Largest total of a request's (or batch's shared) entities, as JSON bytes.
    pub max_entity_bytes: usize,
    /// Most ancestor edges a request's entities may make, transitively.
    pub max_ancestor_edges: usize,
    /// Threads that run Cedar evaluation, off the async workers; 0: one per
    /// CPU the process may use (cgroup quotas count).
    pub evaluation_threads: usize,
    /// A single request whose caller-supplied values come to at most this
    /// many bytes is evaluated on the async worker that received it, which
    /// saves two thread hops; 0 sends every evaluation to the threads.
    pub inline_evaluation_bytes: usize,
    /// Calls evaluated at once; more are shed with `RESOURCE_EXHAUSTED`. A
    /// stream holds one only while one of its items is evaluated.
    pub max_in_flight: usize,
    /// `AuthorizeStream`s open at once; more are refused with `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// A stream that neither sends nor takes a message for this long is closed.
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// A stream is closed this long after it opened, busy or not.
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: calls open at once on one connection.
    pub max_concurrent_streams_per_connection: u32,
    /// HTTP/2 PING interval; a peer that misses `http2_keepalive_timeout` is dropped.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// A connection this old gets a GOAWAY: its open calls finish, new ones
    /// go to a new connection.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// Longest a call may take; a shorter `grpc-timeout` from the client wins.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Memory for remembered decisions of identical requests (exact: Cedar
    /// is deterministic, and a reload starts afresh); 0 turns it off.
    pub decision_cache_bytes: u64,
    /// Memory for request entities parsed before, by their exact JSON and
    /// the policy snapshot (exact too); 0 turns it off.
    pub entity_cache_bytes: u64,
    /// Bytes of request bodies buffered at once, across every connection
    /// and front-end, charged as they arrive; past it a request is refused
    /// (`RESOURCE_EXHAUSTED`, HTTP 429) rather than read.
    pub max_buffered_bytes: usize,
    /// gRPC connections open at once; at the cap the idlest is closed to
    /// admit a new one, and a new one is refused only when all are busy.
    pub max_connections: usize,
    /// A gRPC connection that has not opened its first call this long
    /// after it was accepted (and any TLS handshake finished) is closed:
    /// it covers the HTTP/2 preface.
    #[serde(with = "humantime_serde")]
    pub first_request_timeout: Duration,
    /// A gRPC connection with no call open for this long is closed; PINGs
    /// do not count.
    #[serde(with = "humantime_serde")]
    pub connection_idle_timeout: Duration,
}

/// `[decision_log]`: one JSON record per decision, written off the request path.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
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
    /// Bytes of records queued between the request path and the writer.
    pub queue_bytes: usize,
    pub on_full: OnFull,
    /// Field paths (`context.token`) whose values are replaced by `***`.
    pub mask: Vec<String>,
    /// Field paths removed from the record.
    pub remove: Vec<String>,
    /// Ed25519 private key (PKCS#8 PEM) that signs checkpoints; empty: none.
    pub signing_key: PathBuf,
    /// How often the chain head is made durable (and, with a key, signed)
    /// when records came since the last time.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Entity sets whose canonical JSON is larger are stored once, by
    /// SHA-256, in a side file beside the log (`sink = "file"`).
    pub max_inline_entities_bytes: usize,
    /// The log's instance id, which every start line and checkpoint names,
    /// so that `log verify --instance` tells replicas apart; empty: made
    /// up when the log begins, and kept in its files and `.head` file.
    pub instance_id: String,
    /// The log is part of the service: while it drops records, `/readyz`
    /// and gRPC health say not ready, so traffic moves to replicas that
    /// keep their evidence.
    pub required: bool,
    /// Also ship each record (and checkpoint), as written, as an
    /// OpenTelemetry log record: `none` or `otlp` (to `[otel]`'s endpoint
    /// and protocol, with `OTEL_EXPORTER_OTLP_LOGS_*` honoured). Best
    /// effort: the sink and its chain stay the source of truth.
    pub export: LogExport,
    /// Lines waiting for the exporter, and again records inside it; more
    /// are dropped and counted, never waited for.
    pub export_queue_capacity: usize,
}

/// Where decision records are shipped besides the sink.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogExport {
    #[default]
    None,
    /// OpenTelemetry log records over OTLP (gRPC or HTTP/protobuf).
    Otlp,
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
#[serde(default)]
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
            queue_bytes: 64 * 1024 * 1024,
            on_full: OnFull::Block,
            mask: Vec::new(),
            remove: Vec::new(),
            signing_key: PathBuf::new(),
            checkpoint_interval: Duration::from_secs(10),
            max_inline_entities_bytes: 16 * 1024,
            instance_id: String::new(),
            required: false,
            export: LogExport::None,
            export_queue_capacity: 2048,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".to_string(),
            policies: PathBuf::from("policies"),
            admin_listen: "127.0.0.1:9464".to_string(),
            admin: AdminConfig::default(),
            authzen_listen: "127.0.0.1:8180".to_string(),
            authzen: AuthzenConfig::default(),
            log: LogConfig::default(),
            reload: ReloadConfig::default(),
            validation: ValidationConfig::default(),
            evaluation: EvaluationConfig::default(),
            delegation: DelegationConfig::default(),
            tokens: TokensConfig::default(),
            limits: LimitsConfig::default(),
            decision_log: DecisionLogConfig::default(),
            otel: OtelConfig::default(),
            unix_socket: UnixSocketConfig::default(),
            tls: TlsConfig::default(),
            caller: CallerConfig::default(),
            ext_authz: ExtAuthzConfig::default(),
            context_keys: ContextKeysConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_string(),
            color: LogColor::Auto,
        }
    }
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(250),
            rescan_interval: Duration::from_secs(30),
            max_policy_age: Duration::ZERO,
            require_tests: false,
            test_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            policies: true,
            schema: SchemaRequirement::RequiredOnceLoaded,
            stored_only_types: Vec::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 100,
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            max_entities_per_request: 1_000,
            max_context_depth: 16,
            max_context_bytes: 64 * 1024,
            max_string_bytes: 16 * 1024,
            max_parents_per_entity: 64,
            max_entity_bytes: 1024 * 1024,
            max_ancestor_edges: 100_000,
            evaluation_threads: 0,
            inline_evaluation_bytes: 4096,
            max_in_flight: 1_024,
            max_streams: 64,
            stream_idle_timeout: Duration::from_secs(30),
            stream_max_age: Duration::from_secs(10 * 60),
            max_concurrent_streams_per_connection: 200,
            http2_keepalive_interval: Duration::from_secs(60),
            http2_keepalive_timeout: Duration::from_secs(20),
            max_connection_age: Duration::from_secs(30 * 60),
            request_timeout: Duration::from_secs(5),
            decision_cache_bytes: 32 * 1024 * 1024,
            entity_cache_bytes: 16 * 1024 * 1024,
            max_buffered_bytes: 32 * 1024 * 1024,
            max_connections: 4_096,
            first_request_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(5 * 60),
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

/// A config whose every key was checked, with what the server starts from
/// in its own types; see [`Config::settings`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// The checked config, flags applied.
    pub config: Config,
    pub listen: ListenAddr,
    /// `None` when `admin_listen` is empty (the admin listener is off).
    pub admin_listen: Option<SocketAddr>,
    /// `None` when `authzen_listen` is empty (the AuthZEN listener is off).
    pub authzen_listen: Option<SocketAddr>,
    /// File mode of the socket when `listen` is a Unix socket.
    pub unix_socket_mode: u32,
}

/// A config file as read: its values, which flags may still change, and
/// its own problems (unknown keys, values of the wrong type), which are
/// reported with the checks' problems in one list.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    /// The values; a value of the wrong type is left at its default.
    pub config: Config,
    /// Each names its dotted path (`tls.cerf`, `tokens.issuers[0].aud`);
    /// unknown keys first, in key order.
    pub problems: Vec<String>,
}

impl ConfigFile {
    /// Checks every key, once the flags have applied, and returns the typed
    /// settings; unknown keys are problems like bad values, in one report.
    pub fn settings(self) -> Result<Settings, ConfigError> {
        self.config.settings_reporting(self.problems)
    }

    /// Checks every key as [`ConfigFile::settings`] does, but resolves no
    /// host name: for commands that read the file but listen on nothing.
    pub fn checked(self) -> Result<Config, ConfigError> {
        self.config.check(&self.problems)?;
        Ok(self.config)
    }
}

impl Config {
    /// Reads a TOML config file without checking its values: flags may still
    /// override them. Only TOML that does not parse is an error here;
    /// unknown keys and wrong types are collected for [`ConfigFile::settings`].
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses TOML without checking its values; see [`Config::read`]. Only
    /// a TOML syntax error stops it: unknown keys and values of the wrong
    /// type are collected, all of them, for the report.
    fn from_toml(text: &str) -> Result<ConfigFile, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)?;
        let mut wrong = Vec::new();
        // Each failed pass drops the value it failed on, so this ends, and
        // every wrong value is named, not only the first serde meets.
        loop {
            let mut unknown = Vec::new();
            let value = toml::Value::Table(table.clone());
            // Not serde's `deny_unknown_fields`: it stops at the first.
            let mut note = |path: serde_ignored::Path<'_>| {
                unknown.push(format!("`{}`: unknown key", dotted(&path)));
            };
            let ignoring = serde_ignored::Deserializer::new(value, &mut note);
            match serde_path_to_error::deserialize::<_, Config>(ignoring) {
                Ok(config) => {
                    unknown.extend(wrong);
                    return Ok(ConfigFile {
                        config,
                        problems: unknown,
                    });
                }
                Err(e) => {
                    let path: Vec<Segment> = e.path().iter().cloned().collect();
                    wrong.push(format!("`{}`: {}", e.path(), e.inner().message()));
                    if !drop_value(&mut table, &path) {
                        return Err(ConfigError::Invalid(wrong));
                    }
                }
            }
        }
    }

    /// Checks every key, once the flags have applied, and returns the typed
    /// settings. Host names in listen addresses are resolved here.
    pub fn settings(self) -> Result<Settings, ConfigError> {
        self.settings_reporting(Vec::new())
    }

    /// [`Config::settings`], with the file's own problems reported first.
    fn settings_reporting(self, file_problems: Vec<String>) -> Result<Settings, ConfigError> {
        self.check(&file_problems)?;
        // Every name that does not resolve is reported, not only the first.
        let mut problems = Vec::new();
        let listen = self
            .listen_addr()
            .map_err(|e| match e {
                ConfigError::Invalid(p) => problems.extend(p),
                other => problems.push(other.to_string()),
            })
            .ok();
        let mut tcp = |key: &str, addr: &str| match addr {
            "" => None,
            addr => resolve(addr)
                .map_err(|e| problems.push(format!("`{key}`: {e}")))
                .ok(),
        };
        let admin_listen = tcp("admin_listen", &self.admin_listen);
        let authzen_listen = tcp("authzen_listen", &self.authzen_listen);
        let unix_socket_mode = self
            .unix_socket_mode()
            .map_err(|p| ConfigError::Invalid(vec![p]))?;
        let Some(listen) = listen.filter(|_| problems.is_empty()) else {
            return Err(ConfigError::Invalid(problems));
        };
        Ok(Settings {
            config: self,
            listen,
            admin_listen,
            authzen_listen,
            unix_socket_mode,
        })
    }

    /// The parsed listen address.
    pub fn listen_addr(&self) -> Result<ListenAddr, ConfigError> {
        if let Some(path) = self.listen.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(ConfigError::Invalid(vec![format!(
                    "`listen`: `{}` must name an absolute path, like `unix:///run/cedar-pdp.sock`",
                    self.listen
                )]));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        resolve(&self.listen)
            .map(ListenAddr::Tcp)
            .map_err(|e| ConfigError::Invalid(vec![format!("`listen`: {e}")]))
    }

    /// The socket file mode, e.g. `0o660`.
    pub fn unix_socket_mode(&self) -> Result<u32, String> {
        u32::from_str_radix(self.unix_socket.mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                format!(
                    "`unix_socket.mode`: `{}` is not an octal file mode like `0660`",
                    self.unix_socket.mode
                )
            })
    }

    /// Whether `workload.spiffe_id` must match the verified caller.
    pub fn binds_workload(&self) -> bool {
        match self.caller.bind_workload {
            BindWorkload::Always => true,
            BindWorkload::Never => false,
            BindWorkload::Auto => {
                self.tls.enabled() && self.tls.client_auth == ClientAuth::Required
            }
        }
    }

    /// [`Config::validate`], with a file's own problems reported first.
    fn check(&self, file_problems: &[String]) -> Result<(), ConfigError> {
        let mut problems = file_problems.to_vec();
        if let Err(ConfigError::Invalid(p)) = self.validate() {
            problems.extend(p);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Checks every key and reports all problems together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        // The form only: names are resolved once, by `settings`, at start.
        if self.listen.strip_prefix("unix://").is_none() && host_port(&self.listen).is_err() {
            problems.push(format!(
                "`listen`: `{}` is not an address like `127.0.0.1:50051`, `localhost:50051` or `unix:///path`",
                self.listen
            ));
        } else if let Some(path) = self.listen.strip_prefix("unix://")
            && !path.starts_with('/')
        {
            problems.push(format!(
                "`listen`: `{}` must name an absolute path, like `unix:///run/cedar-pdp.sock`",
                self.listen
            ));
        }
        for (key, value, example) in [
            ("admin_listen", &self.admin_listen, "127.0.0.1:9464"),
            ("authzen_listen", &self.authzen_listen, "127.0.0.1:8180"),
        ] {
            if !value.is_empty() && host_port(value).is_err() {
                problems.push(format!(
                    "`{key}`: `{value}` is not an address like `{example}` or `localhost:{}` (empty disables it)",
                    example.rsplit(':').next().unwrap_or_default()
                ));
            }
        }
        if let Err(p) = self.unix_socket_mode() {
            problems.push(p);
        }
        let keys = self.context_keys.named();
        for (i, (name, key)) in keys.iter().enumerate() {
            if key.is_empty() || key.contains(char::is_whitespace) {
                problems.push(format!(
                    "`context_keys.{name}`: `{key}` is not a context key (empty or with spaces)"
                ));
            }
            if let Some((other, _)) = keys[..i].iter().find(|(_, k)| k == key) {
                problems.push(format!(
                    "`context_keys.{name}`: `{key}` is also `context_keys.{other}`"
                ));
            }
            if self.caller.context_key == *key {
                problems.push(format!(
                    "`caller.context_key`: `{key}` is the server's `context_keys.{name}`"
                ));
            }
        }
        for (i, issuer) in self.tokens.issuers.iter().enumerate() {
            let at = format!("tokens.issuers[{i}]");
            if issuer.issuer.is_empty() {
                problems.push(format!("`{at}.issuer`: must not be empty"));
            }
            if issuer.audiences.is_empty() {
                problems.push(format!(
                    "`{at}.audiences`: name at least one; a token for any audience is never accepted"
                ));
            }
            for (key, t) in [
                ("principal_type", &issuer.principal_type),
                ("actor_type", &issuer.actor_type),
            ] {
                if (key == "principal_type" || !t.is_empty())
                    && cedar_policy::EntityTypeName::from_str(t).is_err()
                {
                    problems.push(format!("`{at}.{key}`: `{t}` is not a Cedar entity type"));
                }
            }
            if self.tokens.issuers[..i]
                .iter()
                .any(|other| other.issuer == issuer.issuer)
            {
                problems.push(format!(
                    "`{at}.issuer`: `{}` is configured twice",
                    issuer.issuer
                ));
            }
        }
        if self.tokens.reload_interval < Duration::from_millis(100) {
            problems.push("`tokens.reload_interval`: must be at least 100ms".into());
        }
        for t in &self.validation.stored_only_types {
            if cedar_policy::EntityTypeName::from_str(t).is_err() {
                problems.push(format!(
                    "`validation.stored_only_types`: `{t}` is not a Cedar entity type"
                ));
            }
        }
        let time_key = &self.evaluation.server_time_key;
        if keys.iter().any(|(_, k)| *k == time_key)
            || (!time_key.is_empty() && *time_key == self.caller.context_key)
        {
            problems.push(format!(
                "`evaluation.server_time_key`: `{time_key}` is a key the server already sets"
            ));
        }
        if !(1..=64).contains(&self.delegation.max_depth) {
            problems.push(format!(
                "`delegation.max_depth`: {} is not in 1..=64",
                self.delegation.max_depth
            ));
        }
        if !(1..=10_000).contains(&self.delegation.max_scopes) {
            problems.push(format!(
                "`delegation.max_scopes`: {} is not in 1..=10000",
                self.delegation.max_scopes
            ));
        }
        for (key, value) in [
            ("header_read_timeout", self.admin.header_read_timeout),
            ("idle_timeout", self.admin.idle_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("`admin.{key}`: must be more than 0s"));
            }
        }
        if !(1..=10_000).contains(&self.admin.max_connections) {
            problems.push("`admin.max_connections`: must be between 1 and 10000".to_string());
        }
        self.validate_tls(&mut problems);
        self.validate_limits(&mut problems);
        self.validate_ext_authz(&mut problems);
        self.validate_authzen(&mut problems);
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
        if self.reload.test_timeout < Duration::from_millis(100) {
            problems.push("`reload.test_timeout`: must be at least 100ms".to_string());
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
        if log.queue_bytes < 64 * 1024 {
            problems.push("`decision_log.queue_bytes`: must be at least 64 KiB".to_string());
        }
        if log.max_file_bytes < 1024 {
            problems.push("`decision_log.max_file_bytes`: must be at least 1 KiB".to_string());
        }
        if log.checkpoint_interval < Duration::from_millis(100) {
            problems.push("`decision_log.checkpoint_interval`: must be at least 100ms".to_string());
        }
        if log.export == LogExport::Otlp && !log.enabled {
            problems.push(
                "`decision_log.export`: exports the records the log writes; needs `decision_log.enabled = true`"
                    .to_string(),
            );
        }
        if !(1..=1_000_000).contains(&log.export_queue_capacity) {
            problems.push(
                "`decision_log.export_queue_capacity`: must be between 1 and 1000000".to_string(),
            );
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

impl Config {
    fn validate_tls(&self, problems: &mut Vec<String>) {
        let tls = &self.tls;
        if !tls.enabled() {
            if !tls.key.as_os_str().is_empty() || !tls.client_ca.as_os_str().is_empty() {
                problems
                    .push("`tls.cert`: required when `tls.key` or `tls.client_ca` is set".into());
            }
            if self.caller.bind_workload == BindWorkload::Always {
                problems.push(
                    "`caller.bind_workload = \"always\"` needs TLS client certificates (`tls.cert`, `tls.client_ca`)"
                        .into(),
                );
            }
            return;
        }
        if tls.key.as_os_str().is_empty() {
            problems.push("`tls.key`: required when `tls.cert` is set".into());
        }
        if tls.client_auth != ClientAuth::None && tls.client_ca.as_os_str().is_empty() {
            problems.push("`tls.client_ca`: required unless `tls.client_auth = \"none\"`".into());
        }
        if tls.client_auth == ClientAuth::None && self.caller.bind_workload == BindWorkload::Always
        {
            problems.push(
                "`caller.bind_workload = \"always\"` needs client certificates; `tls.client_auth` is `none`"
                    .into(),
            );
        }
        if tls.reload_interval < Duration::from_millis(100) {
            problems.push("`tls.reload_interval`: must be at least 100ms".into());
        }
        if tls.handshake_timeout.is_zero() {
            problems.push("`tls.handshake_timeout`: must be more than 0s".into());
        }
        // The rule of `identity::SpiffeId::parse`; config is a leaf.
        for td in &tls.trust_domains {
            let ok = !td.is_empty()
                && td
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
            if !ok {
                problems.push(format!(
                    "`tls.trust_domains`: `{td}` is not a trust domain (lower-case a-z 0-9 . - _, no `spiffe://`)"
                ));
            }
        }
    }

    fn validate_limits(&self, problems: &mut Vec<String>) {
        let l = &self.limits;
        let checks: [(&str, usize, usize, usize); 13] = [
            (
                "max_entities_per_request",
                l.max_entities_per_request,
                0,
                1_000_000,
            ),
            ("max_context_depth", l.max_context_depth, 1, 64),
            (
                "max_context_bytes",
                l.max_context_bytes,
                16,
                256 * 1024 * 1024,
            ),
            (
                "max_string_bytes",
                l.max_string_bytes,
                16,
                256 * 1024 * 1024,
            ),
            ("max_in_flight", l.max_in_flight, 1, 1_000_000),
            (
                "max_parents_per_entity",
                l.max_parents_per_entity,
                1,
                1_000_000,
            ),
            (
                "max_entity_bytes",
                l.max_entity_bytes,
                1024,
                256 * 1024 * 1024,
            ),
            ("max_ancestor_edges", l.max_ancestor_edges, 1, 100_000_000),
            ("evaluation_threads", l.evaluation_threads, 0, 1024),
            (
                "inline_evaluation_bytes",
                l.inline_evaluation_bytes,
                0,
                64 * 1024,
            ),
            ("max_streams", l.max_streams, 1, 100_000),
            ("max_connections", l.max_connections, 1, 1_000_000),
            (
                "max_concurrent_streams_per_connection",
                l.max_concurrent_streams_per_connection as usize,
                1,
                100_000,
            ),
        ];
        for (key, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                problems.push(format!("`limits.{key}`: must be between {min} and {max}"));
            }
        }
        for (key, value) in [
            ("request_timeout", l.request_timeout),
            ("stream_idle_timeout", l.stream_idle_timeout),
            ("stream_max_age", l.stream_max_age),
            ("http2_keepalive_timeout", l.http2_keepalive_timeout),
            ("first_request_timeout", l.first_request_timeout),
            ("connection_idle_timeout", l.connection_idle_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("`limits.{key}`: must be more than 0s"));
            }
        }
        // A request of the largest size allowed must fit in the budget.
        let largest = (l.max_message_bytes + 5).max(self.authzen.max_body_bytes);
        if l.max_buffered_bytes < largest || l.max_buffered_bytes > 64 * 1024 * 1024 * 1024 {
            problems.push(format!(
                "`limits.max_buffered_bytes`: must be between {largest} (`limits.max_message_bytes` and a gRPC message header, or `authzen.max_body_bytes`) and 64 GiB"
            ));
        }
        for (key, value) in [
            ("http2_keepalive_interval", l.http2_keepalive_interval),
            ("max_connection_age", l.max_connection_age),
        ] {
            if value < Duration::from_secs(1) {
                problems.push(format!("`limits.{key}`: must be at least 1s"));
            }
        }
    }

    fn validate_ext_authz(&self, problems: &mut Vec<String>) {
        let x = &self.ext_authz;
        for (key, value) in [
            ("principal_type", &x.principal_type),
            ("namespace_type", &x.namespace_type),
            ("trust_domain_type", &x.trust_domain_type),
            ("action_type", &x.action_type),
            ("resource_type", &x.resource_type),
            ("service_type", &x.service_type),
        ] {
            if cedar_policy::EntityTypeName::from_str(value).is_err() {
                problems.push(format!(
                    "`ext_authz.{key}`: `{value}` is not a Cedar entity type"
                ));
            }
        }
        if cedar_policy::EntityUid::from_str(&x.anonymous_principal).is_err() {
            problems.push(format!(
                "`ext_authz.anonymous_principal`: `{}` is not a Cedar entity uid like `Mesh::Workload::\"anonymous\"`",
                x.anonymous_principal
            ));
        }
        for (key, status) in [
            ("deny_status", x.deny_status),
            ("error_status", x.error_status),
        ] {
            if !(400..=599).contains(&status) {
                problems.push(format!(
                    "`ext_authz.{key}`: `{status}` is not an HTTP error status (400-599)"
                ));
            }
        }
        for h in &x.headers {
            if h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase() || b == b' ') {
                problems.push(format!(
                    "`ext_authz.headers`: `{h}` must be a lower-case header name"
                ));
            }
        }
        for (key, template, known) in [
            (
                "resource_id",
                &x.resource_id,
                &["host", "path", "method", "service"][..],
            ),
            (
                "namespace_id",
                &x.namespace_id,
                &["trust_domain", "namespace"][..],
            ),
        ] {
            for name in placeholders(template) {
                if !known.contains(&name) {
                    problems.push(format!(
                        "`ext_authz.{key}`: `{{{name}}}` is not one of {}",
                        known
                            .iter()
                            .map(|k| format!("`{{{k}}}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        for (i, r) in x.routes.iter().enumerate() {
            if r.action.is_empty() || !r.path_prefix.starts_with('/') {
                problems.push(format!(
                    "`ext_authz.routes[{i}]`: needs an `action` and a `path_prefix` starting with `/`"
                ));
            }
        }
    }
}

impl Config {
    fn validate_authzen(&self, problems: &mut Vec<String>) {
        let a = &self.authzen;
        let url = &a.base_url;
        if !url.is_empty() {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| {
                !r.is_empty() && !r.starts_with('/') && !r.contains(['?', '#', ' '])
            }) && !url.ends_with('/');
            if !ok {
                problems.push(format!(
                    "`authzen.base_url`: `{url}` must be an http(s) URL with a host, no query or fragment, and no trailing `/`"
                ));
            }
        }
        if !a.namespace.is_empty()
            && cedar_policy::EntityTypeName::from_str(&format!("{}::X", a.namespace)).is_err()
        {
            problems.push(format!(
                "`authzen.namespace`: `{}` is not a Cedar namespace like `App` or `Org::App`",
                a.namespace
            ));
        }
        if cedar_policy::EntityTypeName::from_str(&a.action_type).is_err() {
            problems.push(format!(
                "`authzen.action_type`: `{}` is not a Cedar entity type",
                a.action_type
            ));
        }
        for (from, to) in &a.types {
            if from.is_empty() || cedar_policy::EntityTypeName::from_str(to).is_err() {
                problems.push(format!(
                    "`authzen.types`: `{from}` = `{to}` must map a non-empty type to a Cedar entity type"
                ));
            }
        }
        for (ty, attrs) in &a.open_properties {
            if cedar_policy::EntityTypeName::from_str(ty).is_err()
                || attrs.iter().any(String::is_empty)
            {
                problems.push(format!(
                    "`authzen.open_properties`: `{ty}` must be a Cedar entity type (full name) with a list of attribute names"
                ));
            }
        }
        for (key, value) in [
            ("header_read_timeout", a.header_read_timeout),
            ("idle_timeout", a.idle_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("`authzen.{key}`: must be more than 0s"));
            }
        }
        if !(1..=100_000).contains(&a.max_connections) {
            problems.push("`authzen.max_connections`: must be between 1 and 100000".to_string());
        }
        if !(1024..=256 * 1024 * 1024).contains(&a.max_body_bytes) {
            problems
                .push("`authzen.max_body_bytes`: must be between 1 KiB and 256 MiB".to_string());
        }
    }
}

/// A config path as written in TOML: `tokens.issuers[0].aud`.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", dotted(parent)),
        Path::Map { parent, key } => match dotted(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => dotted(parent),
    }
}

/// Removes the value at `path` from `table`; false when there is none. An
/// array element goes with its whole array: dropping it alone would renumber
/// the rest, and their problems would name the wrong index.
fn drop_value(table: &mut toml::Table, path: &[Segment]) -> bool {
    let path = match path.last() {
        Some(Segment::Seq { .. }) => &path[..path.len() - 1],
        _ => path,
    };
    let Some((Segment::Map { key }, parents)) = path.split_last() else {
        return false;
    };
    table_at(table, parents)
        .and_then(|t| t.remove(key))
        .is_some()
}

/// The table at `path` (keys and array indices) under `table`.
fn table_at<'a>(table: &'a mut toml::Table, path: &[Segment]) -> Option<&'a mut toml::Table> {
    let Some((first, mut rest)) = path.split_first() else {
        return Some(table);
    };
    let Segment::Map { key } = first else {
        return None;
    };
    let mut value = table.get_mut(key)?;
    while let Some((Segment::Seq { index }, after)) = rest.split_first() {
        value = value.as_array_mut()?.get_mut(*index)?;
        rest = after;
    }
    table_at(value.as_table_mut()?, rest)
}

/// A TCP listen address split into host and port: `127.0.0.1:50051`,
/// `[::1]:50051` or `localhost:50051`.
fn host_port(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("`{addr}` has no `:port`"))?;
    let port = port
        .parse()
        .map_err(|_| format!("`{addr}`: `{port}` is not a port number"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ipv6 = host.parse::<std::net::Ipv6Addr>().is_ok();
    if host.is_empty() || (!ipv6 && host.contains([':', '/', ' ', '[', ']'])) {
        return Err(format!("`{addr}` has no host"));
    }
    Ok((host, port))
}

/// A listen address, with a host name resolved to the address it binds:
/// the first IPv4 address the resolver returns, else its first address (so
/// `localhost` is `127.0.0.1` wherever it also names `::1`).
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let (host, port) = host_port(addr).map_err(|e| {
        format!("{e}; expected an address like `127.0.0.1:50051` or `localhost:50051`")
    })?;
    let found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`{addr}`: cannot resolve `{host}`: {e}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| found.first())
        .copied()
        .ok_or_else(|| format!("`{addr}`: `{host}` resolves to no address"))
}

/// The `{name}` placeholders of a template.
fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template
        .split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}'))
        .map(|(name, _)| name)
}

/// A whole config with no flags to apply: parsed and checked.
impl FromStr for Config {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let file = Self::from_toml(text)?;
        file.config.check(&file.problems)?;
        Ok(file.config)
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
        let readme = include_str!("../docs/configuration.md");
        let start = readme.find("```toml\n").unwrap() + "```toml\n".len();
        let end = start + readme[start..].find("```").unwrap();
        assert_eq!(
            readme[start..end].parse::<Config>().unwrap(),
            Config::default()
        );
    }

    /// docs/security.md lists every limit the config has.
    #[test]
    fn the_security_page_lists_every_limit() {
        let reference = include_str!("../docs/configuration.md");
        let start = reference.find("```toml\n").unwrap() + "```toml\n".len();
        let end = start + reference[start..].find("```").unwrap();
        let table: toml::Table = reference[start..end].parse().unwrap();
        let security = include_str!("../docs/security.md");
        for section in ["limits", "admin"] {
            let keys = table[section].as_table().unwrap().keys();
            for key in keys {
                assert!(
                    security.contains(&format!("`{section}.{key}`"))
                        || security.contains(&format!("/ `{key}`")),
                    "docs/security.md does not list `{section}.{key}`"
                );
            }
        }
        for key in [
            "decision_log.queue_capacity",
            "decision_log.queue_bytes",
            "reload.test_timeout",
            "authzen.header_read_timeout",
            "authzen.idle_timeout",
            "authzen.max_connections",
        ] {
            assert!(
                security.contains(key),
                "docs/security.md does not list `{key}`"
            );
        }
    }

    #[test]
    fn values_are_checked_only_when_settings_are_taken() {
        let mut config = Config::from_toml("listen = \"nope\"\nadmin_listen = \"\"\n")
            .unwrap()
            .config;
        assert!(matches!(
            config.clone().settings(),
            Err(ConfigError::Invalid(p)) if p.len() == 1 && p[0].contains("`listen`: `nope`")
        ));
        // As a `--listen` flag does.
        config.listen = "127.0.0.1:7".to_string();
        let settings = config.settings().unwrap();
        assert_eq!(
            settings.listen,
            ListenAddr::Tcp("127.0.0.1:7".parse().unwrap())
        );
        assert_eq!(settings.admin_listen, None);
        assert_eq!(
            settings.authzen_listen,
            Some("127.0.0.1:8180".parse().unwrap())
        );
        assert_eq!(settings.unix_socket_mode, 0o660);
    }

    #[test]
    fn authzen_keys_are_checked() {
        let c: Config = r#"
            authzen_listen = ""
            [authzen]
            base_url = "https://pdp.example.com"
            namespace = "Todo"
            [authzen.types]
            todo-list = "Todo::List"
        "#
        .parse()
        .unwrap();
        assert_eq!(c.authzen.types["todo-list"], "Todo::List");
        assert_eq!(c.clone().settings().unwrap().authzen_listen, None);
        let err = r#"
            authzen_listen = "nope"
            [authzen]
            base_url = "https://pdp.example.com/?x"
            namespace = "not a namespace"
            action_type = "1x"
            max_connections = 0
            [authzen.types]
            todo-list = "todo-list"
        "#
        .parse::<Config>()
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            unreachable!("expected Invalid, got {err}")
        };
        for key in [
            "authzen_listen",
            "authzen.base_url",
            "authzen.namespace",
            "authzen.action_type",
            "authzen.max_connections",
            "authzen.types",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(&format!("`{key}`"))),
                "{key} not reported: {problems:?}"
            );
        }
        assert_eq!(problems.len(), 6, "{problems:?}");
    }

    #[test]
    fn record_export_needs_the_log_and_room() {
        let err = "[decision_log]\nexport = \"otlp\"\nexport_queue_capacity = 0\n"
            .parse::<Config>()
            .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            unreachable!("expected Invalid, got {err}")
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("`decision_log.export`"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("`decision_log.export_queue_capacity`"),
            "{problems:?}"
        );
        let on: Config = "[decision_log]\nenabled = true\nexport = \"otlp\"\n"
            .parse()
            .unwrap();
        assert_eq!(on.decision_log.export, LogExport::Otlp);
        assert!(matches!(
            "[decision_log]\nexport = \"kafka\"\n".parse::<Config>(),
            Err(ConfigError::Invalid(p)) if p[0].starts_with("`decision_log.export`: unknown variant `kafka`")
        ));
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(matches!(
            "lisen = \"x\"".parse::<Config>(),
            Err(ConfigError::Invalid(p)) if p == ["`lisen`: unknown key"]
        ));
        // TOML that does not parse stops there: nothing after it is reliable.
        assert!(matches!(
            "listen = [".parse::<Config>(),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn reports_every_unknown_key_and_wrong_value_in_one_run() {
        let text = r#"
            lisen = "127.0.0.1:1"
            [tls]
            cerf = "a"
            [delegation]
            max_depth = 0
            max_scopes = "many"
            [[ext_authz.routes]]
            path_prefix = "/a"
            action = "read"
            verb = "GET"
        "#;
        let Err(ConfigError::Invalid(problems)) = text.parse::<Config>() else {
            unreachable!("expected Invalid")
        };
        assert_eq!(
            problems,
            [
                "`ext_authz.routes[0].verb`: unknown key",
                "`lisen`: unknown key",
                "`tls.cerf`: unknown key",
                "`delegation.max_scopes`: invalid type: string \"many\", expected usize",
                "`delegation.max_depth`: 0 is not in 1..=64",
            ]
        );
    }

    #[test]
    fn a_flag_can_fix_a_value_but_not_an_unknown_key() {
        let file = Config::from_toml("lisen = \"x\"\nlisten = \"nope\"\n").unwrap();
        let mut config = file.config.clone();
        config.listen = "127.0.0.1:7".into();
        let fixed = ConfigFile { config, ..file };
        assert!(matches!(
            fixed.settings(),
            Err(ConfigError::Invalid(p)) if p == ["`lisen`: unknown key"]
        ));
    }

    #[test]
    fn listen_addresses_take_host_names() {
        assert_eq!(
            resolve("localhost:7").unwrap().ip(),
            std::net::Ipv4Addr::LOCALHOST
        );
        assert_eq!(resolve("[::1]:7").unwrap(), "[::1]:7".parse().unwrap());
        for bad in ["localhost", "localhost:x", ":7", "a b:7"] {
            assert!(resolve(bad).is_err(), "{bad}");
        }
        // `.invalid` never resolves (RFC 6761).
        let e = resolve("pdp.invalid:7").unwrap_err();
        assert!(e.contains("cannot resolve `pdp.invalid`"), "{e}");
        let config: Config = "listen = \"localhost:7\"\nadmin_listen = \"localhost:8\"\n"
            .parse()
            .unwrap();
        let settings = config.settings().unwrap();
        assert_eq!(
            settings.listen,
            ListenAddr::Tcp("127.0.0.1:7".parse().unwrap())
        );
        assert_eq!(settings.admin_listen, Some("127.0.0.1:8".parse().unwrap()));
        // Every name that does not resolve, in one report.
        let config: Config = "listen = \"a.invalid:1\"\nauthzen_listen = \"b.invalid:2\"\n"
            .parse()
            .unwrap();
        let Err(ConfigError::Invalid(problems)) = config.settings() else {
            unreachable!("expected Invalid")
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("`listen`: `a.invalid:1`"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("`authzen_listen`: `b.invalid:2`"),
            "{problems:?}"
        );
    }
}
