//! mTLS on the gRPC listener, with a CA and SPIFFE client certificates made
//! by rcgen at test time: verified caller facts, caller binding, refusals,
//! and rotation of the files on disk without dropping open connections.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cedar_pdp::config::{ClientAuth, Config};
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::{self, Decision};
use common::{TestServer, eventually, request, test_config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const WEB: &str = "spiffe://td/ns/shop/sa/web";
const OTHER: &str = "spiffe://td/ns/shop/sa/other";
/// The server's own SVID: its trust domain is the one accepted by default.
const SERVER: &str = "spiffe://td/ns/infra/sa/cedar-pdp";

/// The caller's verified facts, and only those, decide.
const POLICIES: &str = r#"
@id("verified-web")
permit (principal, action == Action::"whoami", resource)
when {
  context has caller &&
  context.caller.spiffe_id == "spiffe://td/ns/shop/sa/web" &&
  context.caller.trust_domain == "td" &&
  context.caller.namespace == "shop" &&
  context.caller.service_account == "web"
};

@id("on-behalf")
permit (principal, action == Action::"read", resource);
"#;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// `(cert PEM, key PEM)` of a leaf: a server cert for 127.0.0.1 (an
    /// SVID of trust domain `td`), or a client cert with a SPIFFE URI SAN.
    fn leaf(&self, spiffe: Option<&str>) -> (String, String) {
        match spiffe {
            Some(id) => self.client(&[id]),
            None => self.server(Some(SERVER)),
        }
    }

    /// A client certificate with exactly these URI SANs.
    fn client(&self, uris: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        if uris.is_empty() {
            params
                .subject_alt_names
                .push(SanType::DnsName("client.local".try_into().unwrap()));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A server certificate for 127.0.0.1, an SVID of `spiffe` if given.
    fn server(&self, spiffe: Option<&str>) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ];
        if let Some(id) = spiffe {
            params
                .subject_alt_names
                .push(SanType::URI(id.try_into().unwrap()));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes server cert, key and trust bundle, each by atomic rename as a
    /// secret volume or cert-manager would.
    fn install(&self, server_ca: &Ca, client_ca: &Ca) {
        self.install_server(server_ca.leaf(None), client_ca);
    }

    fn install_server(&self, (cert, key): (String, String), client_ca: &Ca) {
        for (name, text) in [
            ("tls.crt", cert.as_str()),
            ("tls.key", key.as_str()),
            ("ca.crt", client_ca.pem.as_str()),
        ] {
            let tmp = self.path(&format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.path(name)).unwrap();
        }
    }
}

fn config(policies: &Path, files: &Files, client_auth: ClientAuth) -> Config {
    let mut config = test_config(policies);
    config.tls.cert = files.path("tls.crt");
    config.tls.key = files.path("tls.key");
    config.tls.client_ca = files.path("ca.crt");
    config.tls.client_auth = client_auth;
    config.tls.reload_interval = Duration::from_millis(100);
    config
}

async fn start(client_auth: ClientAuth) -> (TestServer, Ca, Files, tempfile::TempDir) {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("p.cedar"), POLICIES).unwrap();
    let ca = Ca::new("test CA");
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
    };
    files.install(&ca, &ca);
    let server = TestServer::start_with(config(policies.path(), &files, client_auth)).await;
    (server, ca, files, policies)
}

/// A TLS channel trusting `server_ca`, presenting `identity` if given.
async fn connect(
    server: &TestServer,
    server_ca: &Ca,
    identity: Option<(String, String)>,
) -> Result<AuthorizerClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server_ca.pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(AuthorizerClient::new(channel))
}

fn whoami() -> proto::AuthorizeRequest {
    request(("User", "u"), ("Action", "whoami"), ("Doc", "d"))
}

async fn decide(
    client: &mut AuthorizerClient<Channel>,
    req: proto::AuthorizeRequest,
) -> Result<bool, tonic::Status> {
    let resp = client.authorize(req).await?.into_inner();
    Ok(resp.decision == Decision::Allow as i32)
}

async fn tls_reloads(server: &TestServer, result: &str) -> f64 {
    common::metric(
        server.admin_addr,
        "cedar_pdp_tls_reloads_total",
        &[("result", result)],
    )
    .await
}

#[tokio::test]
async fn verified_caller_facts_reach_the_policy() {
    let (server, ca, _files, _p) = start(ClientAuth::Required).await;
    let mut web = connect(&server, &ca, Some(ca.leaf(Some(WEB))))
        .await
        .unwrap();
    assert!(decide(&mut web, whoami()).await.unwrap());
    let mut other = connect(&server, &ca, Some(ca.leaf(Some(OTHER))))
        .await
        .unwrap();
    assert!(!decide(&mut other, whoami()).await.unwrap());

    // The caller key is reserved: a client cannot send its own facts.
    let mut forged = whoami();
    forged.context_json = format!(r#"{{"caller": {{"spiffe_id": "{WEB}"}}}}"#);
    let err = other.authorize(forged).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("context.caller"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_workload_cannot_claim_another_identity() {
    let (server, ca, _files, _p) = start(ClientAuth::Required).await;
    let mut web = connect(&server, &ca, Some(ca.leaf(Some(WEB))))
        .await
        .unwrap();
    let with_workload = |spiffe_id: &str| {
        let mut req = request(("User", "u"), ("Action", "read"), ("Doc", "d"));
        req.workload = Some(proto::Workload {
            spiffe_id: spiffe_id.into(),
            ..Default::default()
        });
        req
    };
    assert!(decide(&mut web, with_workload(WEB)).await.unwrap());
    let err = web.authorize(with_workload(OTHER)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains(OTHER) && err.message().contains(WEB),
        "{}",
        err.message()
    );
    // Without a `workload`, binding has nothing to check; policies still see
    // the verified caller beside the principal.
    assert!(
        decide(
            &mut web,
            request(("User", "u"), ("Action", "read"), ("Doc", "d"))
        )
        .await
        .unwrap()
    );
}

#[tokio::test]
async fn connections_without_a_trusted_client_certificate_are_refused() {
    let (server, ca, _files, _p) = start(ClientAuth::Required).await;
    // The handshake fails, so no call gets a decision. With TLS 1.3 the
    // client may learn it only on its first call.
    let no_cert = match connect(&server, &ca, None).await {
        Err(_) => true,
        Ok(mut c) => decide(&mut c, whoami()).await.is_err(),
    };
    assert!(no_cert, "a client without a certificate got an answer");

    let rogue = Ca::new("rogue CA");
    let rogue_cert = match connect(&server, &ca, Some(rogue.leaf(Some(WEB)))).await {
        Err(_) => true,
        Ok(mut c) => decide(&mut c, whoami()).await.is_err(),
    };
    assert!(
        rogue_cert,
        "a certificate from an untrusted CA got an answer"
    );
    // Both refusals are counted for the SRE who wonders why calls fail.
    eventually(
        "handshake failures counted",
        Duration::from_secs(10),
        || async {
            let failures = common::metric(
                server.admin_addr,
                "cedar_pdp_tls_handshake_failures_total",
                &[],
            )
            .await;
            (failures >= 2.0).then_some(())
        },
    )
    .await;

    // The server is still serving trusted clients.
    let mut web = connect(&server, &ca, Some(ca.leaf(Some(WEB))))
        .await
        .unwrap();
    assert!(decide(&mut web, whoami()).await.unwrap());
}

#[tokio::test]
async fn optional_client_auth_serves_anonymous_clients_without_caller_facts() {
    let (server, ca, _files, _p) = start(ClientAuth::Optional).await;
    let mut anonymous = connect(&server, &ca, None).await.unwrap();
    assert!(!decide(&mut anonymous, whoami()).await.unwrap());
    let mut web = connect(&server, &ca, Some(ca.leaf(Some(WEB))))
        .await
        .unwrap();
    assert!(decide(&mut web, whoami()).await.unwrap());
}

#[tokio::test]
async fn rotation_on_disk_takes_effect_without_dropping_open_connections() {
    let (server, ca1, files, _p) = start(ClientAuth::Required).await;
    let mut open = connect(&server, &ca1, Some(ca1.leaf(Some(WEB))))
        .await
        .unwrap();
    assert!(decide(&mut open, whoami()).await.unwrap());

    // Rotate to a new CA for both the server certificate and client trust.
    let ca2 = Ca::new("rotated CA");
    files.install(&ca2, &ca2);
    eventually(
        "the rotated material is live",
        Duration::from_secs(10),
        || async {
            let mut c = connect(&server, &ca2, Some(ca2.leaf(Some(WEB))))
                .await
                .ok()?;
            decide(&mut c, whoami())
                .await
                .ok()
                .filter(|allowed| *allowed)
        },
    )
    .await;
    assert!(tls_reloads(&server, "success").await >= 1.0);

    // The connection opened before the rotation still works.
    assert!(decide(&mut open, whoami()).await.unwrap());
    // New connections with the old CA's client certificate are refused.
    let old = match connect(&server, &ca2, Some(ca1.leaf(Some(WEB)))).await {
        Err(_) => true,
        Ok(mut c) => decide(&mut c, whoami()).await.is_err(),
    };
    assert!(old, "a certificate of the replaced CA was still accepted");

    // A bad file is not loaded: the rotated material stays live.
    std::fs::write(files.path("tls.crt"), "not a certificate").unwrap();
    eventually(
        "the bad file is seen and refused",
        Duration::from_secs(10),
        || async { (tls_reloads(&server, "failure").await >= 1.0).then_some(()) },
    )
    .await;
    let mut after = connect(&server, &ca2, Some(ca2.leaf(Some(WEB))))
        .await
        .unwrap();
    assert!(decide(&mut after, whoami()).await.unwrap());
    assert!(decide(&mut open, whoami()).await.unwrap());
}

#[test]
fn a_server_with_bad_tls_files_does_not_start() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("p.cedar"), POLICIES).unwrap();
    let ca = Ca::new("test CA");
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
    };
    files.install(&ca, &ca);
    // A key that does not belong to the certificate.
    let (_, other_key) = ca.leaf(None);
    std::fs::write(files.path("tls.key"), other_key).unwrap();
    let err = cedar_pdp::app::App::build(config(policies.path(), &files, ClientAuth::Required))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tls.key") && err.contains("does not match"),
        "{err}"
    );
}

/// Whether a client presenting `identity` gets an answer at all: a refused
/// handshake may surface on connect or, with TLS 1.3, on the first call.
async fn admitted(server: &TestServer, ca: &Ca, identity: (String, String)) -> bool {
    match connect(server, ca, Some(identity)).await {
        Err(_) => false,
        Ok(mut c) => decide(&mut c, whoami()).await.is_ok(),
    }
}

#[tokio::test]
async fn a_client_certificate_must_hold_exactly_one_uri_san() {
    for client_auth in [ClientAuth::Required, ClientAuth::Optional] {
        let (server, ca, _files, _p) = start(client_auth).await;
        // Two SPIFFE IDs: which one would be the caller? Refused, not guessed.
        assert!(
            !admitted(&server, &ca, ca.client(&[WEB, OTHER])).await,
            "{client_auth:?}: two URI SANs were accepted"
        );
        assert!(
            !admitted(&server, &ca, ca.client(&[OTHER, WEB])).await,
            "{client_auth:?}: two URI SANs were accepted"
        );
        // No URI SAN: it names no one; not an anonymous caller either.
        assert!(
            !admitted(&server, &ca, ca.client(&[])).await,
            "{client_auth:?}: a certificate without a URI SAN was accepted"
        );
        // A URI SAN that is not a SPIFFE ID.
        assert!(
            !admitted(&server, &ca, ca.client(&["https://td/ns/shop/sa/web"])).await,
            "{client_auth:?}: a non-SPIFFE URI SAN was accepted"
        );
        // One SVID is the caller.
        let mut web = connect(&server, &ca, Some(ca.client(&[WEB])))
            .await
            .unwrap();
        assert!(decide(&mut web, whoami()).await.unwrap());
        eventually("refusals counted", Duration::from_secs(10), || async {
            let failures = common::metric(
                server.admin_addr,
                "cedar_pdp_tls_handshake_failures_total",
                &[],
            )
            .await;
            (failures >= 4.0).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn only_accepted_trust_domains_become_callers() {
    // By default, only the server certificate's own trust domain, `td`.
    let (server, ca, files, policies) = start(ClientAuth::Required).await;
    let foreign = "spiffe://evil.example/ns/shop/sa/web";
    assert!(
        !admitted(&server, &ca, ca.client(&[foreign])).await,
        "an SVID of a foreign trust domain was accepted"
    );
    assert!(admitted(&server, &ca, ca.client(&[WEB])).await);
    drop(server);

    // Listed trust domains, and only those.
    let mut config = config(policies.path(), &files, ClientAuth::Required);
    config.tls.trust_domains = vec!["evil.example".into()];
    let server = TestServer::start_with(config).await;
    let mut evil = connect(&server, &ca, Some(ca.client(&[foreign])))
        .await
        .unwrap();
    // Accepted as a caller of its own trust domain: the policy wants `td`.
    assert!(!decide(&mut evil, whoami()).await.unwrap());
    assert!(
        !admitted(&server, &ca, ca.client(&[WEB])).await,
        "`td` is not listed, yet its SVID was accepted"
    );
}

#[test]
fn without_trust_domains_a_server_certificate_that_is_no_svid_does_not_start() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("p.cedar"), POLICIES).unwrap();
    let ca = Ca::new("test CA");
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
    };
    files.install_server(ca.server(None), &ca);
    let err = cedar_pdp::app::App::build(config(policies.path(), &files, ClientAuth::Required))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tls.trust_domains") && err.contains("0 URI SANs"),
        "{err}"
    );
    // Named explicitly, the same certificate serves.
    let mut with_domains = config(policies.path(), &files, ClientAuth::Required);
    with_domains.tls.trust_domains = vec!["td".into()];
    assert!(cedar_pdp::app::App::build(with_domains).is_ok());
    // Without client certificates there is no caller to accept.
    assert!(cedar_pdp::app::App::build(config(policies.path(), &files, ClientAuth::None)).is_ok());
}

/// Binding covers every way to name a workload: a forged `context.workload`,
/// an empty `spiffe_id`, and a `namespace` or `service_account` the verified
/// ID does not carry. Each refusal is recorded as `binding_mismatch` or as
/// the reserved key it is.
#[tokio::test]
async fn binding_cannot_be_skipped() {
    const ADMIN: &str = "spiffe://td/ns/shop/sa/admin";
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("p.cedar"),
        r#"
@id("admin-only")
permit (principal, action == Action::"refund", resource)
when { context has workload && context.workload.service_account == "admin" };

@id("web-from-its-id")
permit (principal, action == Action::"browse", resource)
when { context has workload && context.workload.namespace == "shop" &&
       context.workload.service_account == "web" };
"#,
    )
    .unwrap();
    let ca = Ca::new("test CA");
    let files = Files {
        dir: tempfile::tempdir().unwrap(),
    };
    files.install(&ca, &ca);
    let log = files.path("decisions.log");
    let mut config = config(policies.path(), &files, ClientAuth::Required);
    config.decision_log.enabled = true;
    config.decision_log.sink = cedar_pdp::config::LogSink::File;
    config.decision_log.path = log.clone();
    let server = TestServer::start_with(config).await;
    let mut web = connect(&server, &ca, Some(ca.leaf(Some(WEB))))
        .await
        .unwrap();
    let call = |action: &str, workload: Option<proto::Workload>| {
        let mut req = request(("User", "u"), ("Action", action), ("Doc", "d"));
        req.workload = workload;
        req
    };
    let forged = proto::Workload {
        spiffe_id: ADMIN.into(),
        namespace: "shop".into(),
        service_account: "admin".into(),
        ..Default::default()
    };

    // A forged record in the context, as JSON text and as typed values.
    let mut as_json = call("refund", None);
    as_json.context_json = format!(
        r#"{{"workload": {{"spiffe_id": "{ADMIN}", "namespace": "shop", "service_account": "admin", "labels": []}}}}"#
    );
    let err = web.authorize(as_json).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("context.workload"),
        "{}",
        err.message()
    );
    let mut typed = call("refund", None);
    typed.context = [(
        "workload".to_string(),
        proto::Value {
            value: Some(proto::value::Value::StringValue("admin".into())),
        },
    )]
    .into();
    let err = web.authorize(typed).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    // An empty SPIFFE ID no longer skips the check.
    let empty = proto::Workload {
        spiffe_id: String::new(),
        ..forged.clone()
    };
    let err = web
        .authorize(call("refund", Some(empty)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("workload.spiffe_id"),
        "{}",
        err.message()
    );

    // The right ID with another service account.
    let wrong_sa = proto::Workload {
        spiffe_id: WEB.into(),
        ..forged.clone()
    };
    let err = web
        .authorize(call("refund", Some(wrong_sa)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("workload.service_account"),
        "{}",
        err.message()
    );

    // Left empty, namespace and service account come from the verified ID.
    let own = proto::Workload {
        spiffe_id: WEB.into(),
        ..Default::default()
    };
    assert!(decide(&mut web, call("browse", Some(own))).await.unwrap());

    let records = eventually("five records", Duration::from_secs(10), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let records: Vec<serde_json::Value> = common::records_in(&text);
            (records.len() >= 5).then_some(records)
        }
    })
    .await;
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["error"]["reason"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(
        reasons,
        [
            "invalid_request",
            "invalid_request",
            "binding_mismatch",
            "binding_mismatch",
            "none"
        ]
    );
    assert!(
        records
            .iter()
            .all(|r| r["decision"] == "deny" || r["error"].is_null())
    );
    assert_eq!(records[4]["workload"]["service_account"], "web");
}
