//! Shared harness: starts the real server on an ephemeral loopback port, with
//! the production `App::serve`, and hands out generated tonic clients.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness"
)]

pub mod binary;
pub mod stuck_pipe;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cedar_pdp::app::{App, Listeners};
use cedar_pdp::config::Config;
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::{self, GetPolicyStatusRequest, PolicyStatus};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running server; shuts down when dropped or on [`TestServer::stop`].
pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin_addr: SocketAddr,
    /// The AuthZEN HTTP listener (`/access/v1/...`).
    pub authzen_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cedar_pdp::app::AppError>>>,
}

/// A config for tests: fast debounce, frequent rescans.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        policies: dir.to_path_buf(),
        ..Config::default()
    };
    config.reload.debounce = Duration::from_millis(50);
    config.reload.rescan_interval = Duration::from_secs(1);
    config
}

impl TestServer {
    /// Starts a server over `dir` with [`test_config`].
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(test_config(dir)).await
    }

    /// Starts a server with `config`; panics when the policies do not load.
    pub async fn start_with(config: Config) -> Self {
        let app = App::build(config).expect("policy directory loads");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let authzen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authzen_addr = authzen.local_addr().unwrap();
        let listeners = Listeners::new(listener)
            .with_admin(admin)
            .with_authzen(authzen);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listeners, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin_addr,
            authzen_addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> AuthorizerClient<Channel> {
        AuthorizerClient::connect(self.url()).await.unwrap()
    }

    /// Graceful shutdown; returns the server's result.
    pub async fn stop(mut self) -> Result<(), cedar_pdp::app::AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("server stops within 20s")
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// POSTs `body` to the AuthZEN `/access/v1/evaluation` at `addr`: the
/// status and the body's text.
pub async fn authzen_evaluation(addr: SocketAddr, body: &serde_json::Value) -> (u16, String) {
    let answer = reqwest::Client::new()
        .post(format!("http://{addr}/access/v1/evaluation"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

/// The decision records in a log file's text, past its marks.
pub fn records_in(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !is_mark(l))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a record ({e}): {l}")))
        .collect()
}

/// Whether a decision-log line is a mark (a file's start, a gap, a
/// checkpoint) rather than a record.
pub fn is_mark(line: &str) -> bool {
    ["{\"start\":", "{\"gap\":", "{\"checkpoint\":"]
        .iter()
        .any(|m| line.starts_with(m))
}

/// Reads one HTTP/1.1 response (headers and a `content-length` body) from
/// `stream`, leaving the connection open: its status, or `None` at EOF.
pub async fn http_response(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

/// A plain HTTP/1.0 GET against the admin listener: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .expect("admin answers within 10s");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the server reports a generation above `after`.
pub async fn wait_for_generation(
    client: &mut AuthorizerClient<Channel>,
    after: u64,
) -> PolicyStatus {
    eventually("a policy reload", Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            let s = client
                .get_policy_status(GetPolicyStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (s.generation > after).then_some(s)
        }
    })
    .await
}

/// Waits until `GetPolicyStatus` shows a reload error.
pub async fn wait_for_reload_error(client: &mut AuthorizerClient<Channel>) -> PolicyStatus {
    eventually("a reload error", Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            let s = client
                .get_policy_status(GetPolicyStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (!s.last_reload_error.is_empty()).then_some(s)
        }
    })
    .await
}

pub fn uid(t: &str, id: &str) -> Option<proto::EntityUid> {
    Some(proto::EntityUid {
        r#type: t.to_string(),
        id: id.to_string(),
    })
}

/// A request with no context or entities.
pub fn request(
    principal: (&str, &str),
    action: (&str, &str),
    resource: (&str, &str),
) -> proto::AuthorizeRequest {
    proto::AuthorizeRequest {
        principal: uid(principal.0, principal.1),
        action: uid(action.0, action.1),
        resource: uid(resource.0, resource.1),
        ..Default::default()
    }
}

/// Writes `text` to `dir/name` via a temp file and rename, as deploy tools do.
pub fn write_atomic(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// Third-party test data kept in this repository (`tests/vendor/`, whose
/// README gives each part's origin and licence).
pub fn vendor_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vendor")
}

/// Cedar's integration corpus, unpacked once per test process from its
/// archive into a temporary directory under the target directory.
pub fn cedar_corpus() -> PathBuf {
    static UNPACKED: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = UNPACKED.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("cedar-corpus-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a temporary directory under the target directory");
        let archive = vendor_dir().join("cedar-integration-tests.tar.gz");
        let file = std::fs::File::open(&archive)
            .unwrap_or_else(|e| panic!("`{}`: {e}", archive.display()));
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(dir.path())
            .unwrap_or_else(|e| panic!("unpacking `{}`: {e}", archive.display()));
        dir
    });
    dir.path().join("cedar-integration-tests")
}

/// What the build should report, found another way than `build.rs` does:
/// the commit from the `git` CLI (`unknown` outside a checkout or without
/// git), and cedar-policy's version from `Cargo.lock` by a TOML parser.
pub fn expected_build() -> (String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(
            || "unknown".to_string(),
            |out| String::from_utf8_lossy(&out.stdout).trim().to_string(),
        );
    let lock: toml::Table = std::fs::read_to_string(root.join("Cargo.lock"))
        .unwrap()
        .parse()
        .unwrap();
    let cedar = lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("cedar-policy"))
        .and_then(|p| p["version"].as_str())
        .expect("Cargo.lock pins cedar-policy")
        .to_string();
    (commit, cedar)
}

/// The value of `name` with `labels` in a Prometheus scrape.
pub fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = scrape.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the scrape parses");
    parsed
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// Scrapes the admin listener at `admin` for `name` with `labels`; 0 when the
/// series does not exist yet (a counter no event has touched).
pub async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, scrape) = http_get(admin, "/metrics").await;
    sample(&scrape, name, labels).unwrap_or(0.0)
}
