//! The AuthZEN listener over TLS with the `[tls]` material: HTTP/1.1 and h2
//! by ALPN, a verified client certificate's SPIFFE ID as the caller exactly
//! as on gRPC, and no request at all without a client certificate when one
//! is required. Certificates are made by rcgen at test time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, test_config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB: &str = "spiffe://td/ns/shop/sa/web";

/// Only the verified caller decides: nothing in the body can claim it.
const POLICIES: &str = r#"
@id("verified-web")
permit (principal, action == Action::"read", resource)
when { context has caller && context.caller.spiffe_id == "spiffe://td/ns/shop/sa/web" };
"#;

struct Leaf {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test ca");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

fn uri(id: &str) -> SanType {
    SanType::URI(id.try_into().unwrap())
}

async fn start(ca: &Ca) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    let server = ca.leaf(
        vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            uri("spiffe://td/ns/infra/sa/cedar-pdp"),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let tls = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = tls.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut config = test_config(dir.path());
    config.tls.cert = write("cert.pem", &server.pem);
    config.tls.key = write("key.pem", &server.key_pem);
    config.tls.client_ca = write("ca.pem", &ca.pem);
    let server = TestServer::start_with(config).await;
    // The files were read at build; only the policies must outlive this.
    drop(tls);
    (server, dir)
}

/// A TLS connection to the AuthZEN listener offering `alpn`, as `client`.
async fn connect(
    server: &TestServer,
    ca: &Ca,
    client: Option<&Leaf>,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.authzen_addr).await?;
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // TLS 1.3 reports a refused client certificate after the handshake:
    // a first write and read bring it out.
    stream.flush().await?;
    Ok(stream)
}

/// One HTTP/1.1 request over `stream`: (status, JSON body).
async fn http1(
    mut stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, Json)> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10s")?;
    let raw = String::from_utf8(raw).unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or(Json::Null);
    Ok((status, json))
}

fn read_doc() -> String {
    json!({
        "subject": {"type": "User", "id": "anyone"},
        "action": {"name": "read"},
        "resource": {"type": "Doc", "id": "d"},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_h2_and_the_certificate_is_the_caller() {
    let ca = Ca::new();
    let (server, _dir) = start(&ca).await;
    let web = ca.leaf(vec![uri(WEB)], ExtendedKeyUsagePurpose::ClientAuth);
    let other = ca.leaf(
        vec![uri("spiffe://td/ns/shop/sa/other")],
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    // HTTP/1.1 by ALPN: the verified SPIFFE ID is `context.caller`.
    let stream = connect(&server, &ca, Some(&web), b"http/1.1")
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let answer = http1(stream, "POST", "/access/v1/evaluation", &read_doc())
        .await
        .unwrap();
    assert_eq!(answer, (200, json!({"decision": true})));
    let stream = connect(&server, &ca, Some(&other), b"http/1.1")
        .await
        .unwrap();
    let answer = http1(stream, "POST", "/access/v1/evaluation", &read_doc())
        .await
        .unwrap();
    assert_eq!(answer, (200, json!({"decision": false})));

    // The metadata names the https identifier it was fetched from.
    let stream = connect(&server, &ca, Some(&web), b"http/1.1")
        .await
        .unwrap();
    let (status, metadata) = http1(stream, "GET", "/.well-known/authzen-configuration", "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(metadata["policy_decision_point"], "https://127.0.0.1");

    // h2 by ALPN.
    let stream = connect(&server, &ca, Some(&web), b"h2").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (h2, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut h2 = h2.ready().await.unwrap();
    let request = axum::http::Request::post("https://127.0.0.1/access/v1/evaluation")
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    body.send_data(read_doc().into(), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    assert_eq!(
        serde_json::from_slice::<Json>(&bytes).unwrap(),
        json!({"decision": true})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_there_is_no_request_at_all() {
    let ca = Ca::new();
    let (server, _dir) = start(&ca).await;
    let refused = match connect(&server, &ca, None, b"http/1.1").await {
        Err(_) => true,
        Ok(stream) => http1(stream, "POST", "/access/v1/evaluation", &read_doc())
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate got an answer");
    // Plain HTTP on the TLS port is not served either.
    let mut tcp = tokio::net::TcpStream::connect(server.authzen_addr)
        .await
        .unwrap();
    tcp.write_all(b"GET /.well-known/authzen-configuration HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("policy_decision_point"), "{read:?} {text}");
}
