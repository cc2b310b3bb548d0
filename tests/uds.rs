//! Serving over a Unix socket: the socket file and its mode, peer
//! credentials reaching policies and the decision log, stale and foreign
//! files at start-up, and clean-up after shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cedar_pdp::app::{App, Listeners};
use cedar_pdp::config::{Config, LogSink};
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::{AuthorizeRequest, Decision};
use cedar_pdp::transport::{BindError, UnixSocket};
use common::{eventually, request, test_config};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// A server on a Unix socket, through the production `App::serve`.
struct UdsServer {
    path: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cedar_pdp::app::AppError>>>,
}

impl UdsServer {
    /// Binds `config.listen` (a `unix://` address) with the configured mode,
    /// as `cedar-pdp serve` does, and serves on it.
    fn start(config: Config) -> Self {
        let path = match config.listen_addr().unwrap() {
            cedar_pdp::config::ListenAddr::Unix(path) => path,
            other => panic!("not a Unix address: {other:?}"),
        };
        let socket = UnixSocket::bind(&path, config.unix_socket_mode().unwrap()).unwrap();
        Self::serve(config, socket)
    }

    fn serve(config: Config, socket: UnixSocket) -> Self {
        let path = socket.path().to_path_buf();
        let app = App::build(config).expect("policy directory loads");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(Listeners::new(socket), async move {
            let _ = rx.await;
        }));
        Self {
            path,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    async fn client(&self) -> AuthorizerClient<Channel> {
        let channel = Endpoint::from_shared(format!("unix://{}", self.path.display()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AuthorizerClient::new(channel)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("server stops within 20s")
            .unwrap()
            .unwrap();
    }
}

impl Drop for UdsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A policy directory holding `policy`, and a config serving it on
/// `<dir>/pdp.sock`.
fn setup(policy: &str) -> (TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("p.cedar"), policy).unwrap();
    let mut config = test_config(&policies);
    config.listen = format!("unix://{}", dir.path().join("pdp.sock").display());
    (dir, config)
}

/// This process's uid, from a file it just created.
fn my_uid(dir: &Path) -> u32 {
    let probe = dir.join("uid-probe");
    std::fs::write(&probe, "").unwrap();
    std::fs::metadata(&probe).unwrap().uid()
}

fn alice() -> AuthorizeRequest {
    request(("User", "alice"), ("Action", "read"), ("Doc", "d"))
}

async fn decision(client: &mut AuthorizerClient<Channel>, req: AuthorizeRequest) -> Decision {
    tokio::time::timeout(Duration::from_secs(10), client.authorize(req))
        .await
        .expect("an answer within 10s")
        .unwrap()
        .into_inner()
        .decision()
}

const ALLOW_ALL: &str = r#"
@id("all")
permit (principal, action, resource);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_the_socket_with_the_configured_mode() {
    let (_dir, mut config) = setup(ALLOW_ALL);
    config.unix_socket.mode = "0600".into();
    let server = UdsServer::start(config);
    let meta = std::fs::symlink_metadata(&server.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let mut client = server.client().await;
    assert_eq!(decision(&mut client, alice()).await, Decision::Allow);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_credentials_reach_the_policy() {
    let probe = tempfile::tempdir().unwrap();
    let uid = my_uid(probe.path());
    let pid = std::process::id();
    let policy = format!(
        r#"
        @id("my-uid")
        permit (principal, action, resource)
        when {{ context.caller.uid == {uid} && context.caller.pid == {pid} }};
        "#
    );
    let (_dir, config) = setup(&policy);
    let server = UdsServer::start(config);
    let mut client = server.client().await;
    let resp = client.authorize(alice()).await.unwrap().into_inner();
    assert_eq!(resp.decision(), Decision::Allow, "{resp:?}");
    assert_eq!(resp.determining_policies, ["my-uid"]);
    server.stop().await;

    // Another uid: the same request is denied.
    let other = format!(
        r#"
        @id("other-uid")
        permit (principal, action, resource)
        when {{ context.caller.uid == {} }};
        "#,
        u64::from(uid) + 1
    );
    let (_dir, config) = setup(&other);
    let server = UdsServer::start(config);
    let mut client = server.client().await;
    let resp = client.authorize(alice()).await.unwrap().into_inner();
    assert_eq!(resp.decision(), Decision::Deny, "{resp:?}");
    assert!(resp.errors.is_empty(), "{resp:?}");

    // A client cannot supply the caller facts itself.
    for req in [
        AuthorizeRequest {
            context_json: format!(r#"{{"caller": {{"uid": {}}}}}"#, u64::from(uid) + 1),
            ..alice()
        },
        AuthorizeRequest {
            context: [(
                "caller".to_string(),
                cedar_pdp::grpc::proto::Value {
                    value: Some(cedar_pdp::grpc::proto::value::Value::LongValue(1)),
                },
            )]
            .into(),
            ..alice()
        },
    ] {
        let status = client.authorize(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status
                .message()
                .contains("reserved for the verified caller"),
            "{status:?}"
        );
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "context.caller"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_log_records_the_peer_credentials() {
    let (dir, mut config) = setup(ALLOW_ALL);
    let log = dir.path().join("decisions.log");
    config.decision_log.enabled = true;
    config.decision_log.sink = LogSink::File;
    config.decision_log.path = log.clone();
    let uid = my_uid(dir.path());
    let server = UdsServer::start(config);
    let mut client = server.client().await;
    let mut req = alice();
    req.request_id = "uds-1".into();
    assert_eq!(decision(&mut client, req).await, Decision::Allow);
    server.stop().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = common::records_in(&text);
    assert_eq!(records.len(), 1, "{text}");
    let caller = &records[0]["caller"];
    assert_eq!(records[0]["request_id"], "uds-1");
    assert_eq!(caller["uid"], u64::from(uid), "{caller}");
    assert_eq!(caller["pid"], u64::from(std::process::id()), "{caller}");
    assert!(caller["gid"].is_u64(), "{caller}");
    assert!(caller.get("peer_addr").is_none(), "{caller}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_at_start_up() {
    let (_dir, config) = setup(ALLOW_ALL);
    let path = match config.listen_addr().unwrap() {
        cedar_pdp::config::ListenAddr::Unix(path) => path,
        other => panic!("{other:?}"),
    };
    // A server that died: its socket file stays, and nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert!(std::os::unix::net::UnixStream::connect(&path).is_err());

    let server = UdsServer::start(config);
    let mut client = server.client().await;
    assert_eq!(decision(&mut client, alice()).await, Decision::Allow);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regular_file_or_a_live_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();

    // A regular file is never replaced.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let err = UnixSocket::bind(&file, 0o600).unwrap_err();
    assert!(matches!(err, BindError::NotASocket(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "`{}` exists and is not a socket; refusing to replace it",
            file.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // A live server's socket is refused as in use, and keeps serving.
    let (_pdir, config) = setup(ALLOW_ALL);
    let live = UdsServer::start(config);
    let err = UnixSocket::bind(&live.path, 0o600).unwrap_err();
    assert!(matches!(err, BindError::InUse(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("`{}` is in use by another server", live.path.display())
    );
    let mut client = live.client().await;
    assert_eq!(decision(&mut client, alice()).await, Decision::Allow);
    live.stop().await;
}

#[test]
fn the_binary_refuses_a_regular_file_with_a_clear_error() {
    let (dir, _config) = setup(ALLOW_ALL);
    let file = dir.path().join("pdp.sock");
    std::fs::write(&file, "keep me").unwrap();
    let mut cmd = common::binary::bin();
    cmd.arg("serve")
        .arg("--policies")
        .arg(dir.path().join("policies"))
        .arg("--listen")
        .arg(format!("unix://{}", file.display()))
        .args(["--admin-listen", ""]);
    let ran = common::binary::run(cmd, Duration::from_secs(30));
    assert!(!ran.status.success(), "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "cannot listen on a Unix socket: `{}` exists and is not a socket",
            file.display()
        )),
        "{}",
        ran.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_file_is_removed_after_a_graceful_shutdown() {
    let (_dir, config) = setup(ALLOW_ALL);
    let server = UdsServer::start(config);
    let path = server.path.clone();
    let mut client = server.client().await;
    assert_eq!(decision(&mut client, alice()).await, Decision::Allow);
    assert!(path.exists());
    server.stop().await;
    eventually("the socket file to go", Duration::from_secs(10), || {
        let gone = !path.exists();
        async move { gone.then_some(()) }
    })
    .await;
    // And a new server can take the path again.
    let (_dir2, mut config) = setup(ALLOW_ALL);
    config.listen = format!("unix://{}", path.display());
    let again = UdsServer::start(config);
    let mut client = again.client().await;
    assert_eq!(decision(&mut client, alice()).await, Decision::Allow);
    again.stop().await;
}
