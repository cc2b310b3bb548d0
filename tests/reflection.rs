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
}
