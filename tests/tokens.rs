//! Verified tokens over a real socket: tokens signed in the test by keys
//! whose JWKS the server loads from files. Each failed check is refused
//! `UNAUTHENTICATED` with a message that names it and never quotes the
//! token; the subject token's `sub` and `act` chain become the delegation;
//! an actor token must name the principal; a key rotated in the JWKS file
//! is picked up while the server runs; the record names each token.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use cedar_pdp::config::{IssuerConfig, LogSink};
use cedar_pdp::grpc::proto::{self, AuthorizeRequest, DelegationHop};
use common::{TestServer, eventually, request, test_config, uid};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value as Json, json};

const IDP: &str = "https://idp.test";
const SPIRE: &str = "https://spire.test";

const SCHEMA: &str = r#"
entity User;
entity Agent;
entity Doc = { readers: Set<User> };
type Delegation = {
  origin: User,
  depth: Long,
  actors: Set<String>,
  scopes?: Set<String>,
  expires_at?: datetime,
  purposes: Set<String>,
  verified: Bool,
};
action read appliesTo {
  principal: [Agent],
  resource: [Doc],
  context: {
    delegation?: Delegation,
    purpose?: String,
    token?: { scope?: Set<String>, groups?: Set<String>, client_id?: String, azp?: String },
  },
};
"#;

// Only for a verified person who may read the document, in scope, at most
// two hops deep, with a purpose.
const POLICY: &str = r#"
@id("agent-reads-for-a-verified-reader")
permit (principal is Agent, action == Action::"read", resource is Doc)
when {
  context has delegation && context.delegation.verified && context has purpose &&
  context.delegation.depth <= 2 &&
  context.delegation has scopes && context.delegation.scopes.contains("docs:read") &&
  resource.readers.contains(context.delegation.origin)
};
"#;

const ENTITIES: &str = r#"[
  {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Doc", "id": "plan"},
   "attrs": {"readers": [{"__entity": {"type": "User", "id": "alice"}}]}, "parents": []}
]"#;

/// A signing key and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Json,
}

fn ed25519(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    Signer {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                    "x": B64.encode(pair.public_key_raw())}),
    }
}

fn p256(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    assert_eq!(point.len(), 65, "uncompressed SEC1 point");
    Signer {
        kid: kid.into(),
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid,
                    "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])}),
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn rsa() -> Signer {
    let jwk: Json =
        serde_json::from_str(&std::fs::read_to_string(fixture("rsa-test-key.jwk.json")).unwrap())
            .unwrap();
    Signer {
        kid: jwk["kid"].as_str().unwrap().into(),
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_der(&std::fs::read(fixture("rsa-test-key.pkcs1.der")).unwrap()),
        jwk,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(signer: &Signer, claims: &Json) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, claims, &signer.key).unwrap()
}

/// The claims of alice's token, acting through `act`.
fn alice(act: Json) -> Json {
    let mut claims = json!({
        "iss": IDP, "sub": "alice", "aud": ["cedar-pdp"], "exp": now() + 600,
        "iat": now(), "jti": "jti-1", "scope": "docs:read docs:list",
    });
    if !act.is_null() {
        claims["act"] = act;
    }
    claims
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

struct Setup {
    server: TestServer,
    /// The JWKS files and the decision log.
    dir: tempfile::TempDir,
    log: PathBuf,
    _policies: tempfile::TempDir,
}

async fn start(idp: &[&Signer], spire: &[&Signer]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    std::fs::write(dir.path().join("e.entities.json"), ENTITIES).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (idp_file, spire_file) = (
        keys.path().join("idp.jwks.json"),
        keys.path().join("spire.jwks.json"),
    );
    std::fs::write(&idp_file, jwks(idp)).unwrap();
    std::fs::write(&spire_file, jwks(spire)).unwrap();
    let log = keys.path().join("decisions.log");
    let mut config = test_config(dir.path());
    config.tokens.reload_interval = Duration::from_millis(100);
    config.tokens.issuers = vec![
        IssuerConfig {
            issuer: IDP.into(),
            jwks_file: idp_file,
            audiences: vec!["cedar-pdp".into()],
            principal_type: "User".into(),
            actor_type: "Agent".into(),
        },
        IssuerConfig {
            issuer: SPIRE.into(),
            jwks_file: spire_file,
            audiences: vec!["cedar-pdp".into()],
            principal_type: "Agent".into(),
            actor_type: String::new(),
        },
    ];
    config.decision_log.enabled = true;
    config.decision_log.sink = LogSink::File;
    config.decision_log.path = log.clone();
    Setup {
        server: TestServer::start_with(config).await,
        dir: keys,
        log,
        _policies: dir,
    }
}

fn read_for(subject_token: &str, request_id: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        subject_token: subject_token.into(),
        purpose: "summarize".into(),
        request_id: request_id.into(),
        ..request(("Agent", "summarizer"), ("Action", "read"), ("Doc", "plan"))
    }
}

async fn decide(server: &TestServer, req: AuthorizeRequest) -> Result<bool, tonic::Status> {
    let mut client = server.client().await;
    client
        .authorize(req)
        .await
        .map(|r| r.into_inner().decision == proto::Decision::Allow as i32)
}

/// The log's records, once the one of `request_id` is written.
async fn records_through(log: &Path, request_id: &str) -> Vec<Json> {
    eventually("the records", Duration::from_secs(10), || {
        let log = log.to_path_buf();
        async move {
            // A line being written may be cut: read again.
            let text = std::fs::read_to_string(&log).ok()?;
            let whole = text.rsplit_once('\n').map_or("", |(whole, _)| whole);
            let records = common::records_in(whole);
            records
                .iter()
                .any(|r| r["request_id"] == request_id)
                .then_some(records)
        }
    })
    .await
}

fn unauthenticated(result: Result<bool, tonic::Status>, says: &str, token: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains(says), "{says}: {status:?}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        signature.is_empty() || !status.message().contains(signature),
        "quotes the token: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_of_a_token_is_enforced_and_named() {
    let (ed, rsa, es) = (ed25519("ed-1"), rsa(), p256("es-1"));
    let setup = start(&[&ed, &rsa], &[&es]).await;
    let server = &setup.server;
    let act = json!({"sub": "summarizer"});

    // Good, with each algorithm the idp has.
    let good = sign(&ed, &alice(act.clone()));
    assert!(decide(server, read_for(&good, "good")).await.unwrap());
    let by_rsa = sign(&rsa, &alice(act.clone()));
    assert!(decide(server, read_for(&by_rsa, "rsa")).await.unwrap());

    let cases: Vec<(&str, String)> = vec![
        ("has expired", {
            let mut c = alice(act.clone());
            c["exp"] = json!(now() - 120);
            sign(&ed, &c)
        }),
        ("not valid yet", {
            let mut c = alice(act.clone());
            c["nbf"] = json!(now() + 600);
            sign(&ed, &c)
        }),
        ("issued in the future", {
            let mut c = alice(act.clone());
            c["iat"] = json!(now() + 600);
            sign(&ed, &c)
        }),
        ("(`aud`)", {
            let mut c = alice(act.clone());
            c["aud"] = json!(["someone-else"]);
            sign(&ed, &c)
        }),
        ("`https://evil.test`, which is not configured", {
            let mut c = alice(act.clone());
            c["iss"] = json!("https://evil.test");
            sign(&ed, &c)
        }),
        ("names key `ed-9`", {
            let stranger = ed25519("ed-9");
            sign(&stranger, &alice(act.clone()))
        }),
        ("uses `none`", {
            let header = B64.encode(br#"{"alg":"none","kid":"ed-1"}"#);
            let payload = B64.encode(alice(act.clone()).to_string());
            format!("{header}.{payload}.")
        }),
        ("uses `HS256`", {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("ed-1".into());
            jsonwebtoken::encode(
                &header,
                &alice(act.clone()),
                &EncodingKey::from_secret(b"guessable").unwrap(),
            )
            .unwrap()
        }),
        ("signature does not verify", {
            // Bob's claims under alice's signature.
            let mut c = alice(act.clone());
            c["sub"] = json!("bob");
            let forged = B64.encode(c.to_string());
            let mut parts: Vec<&str> = good.split('.').collect();
            parts[1] = &forged;
            parts.join(".")
        }),
    ];
    for (says, token) in &cases {
        unauthenticated(decide(server, read_for(token, "bad")).await, says, token);
    }

    // The `act` chain: alice -> router -> planner -> summarizer is three
    // hops; the policy allows two, so it is a deny, not an error.
    let deep = sign(
        &ed,
        &alice(json!({"sub": "summarizer", "act": {"sub": "planner", "act": {"sub": "router"}}})),
    );
    assert!(!decide(server, read_for(&deep, "deep")).await.unwrap());
    // The current actor must be the principal.
    let elsewhere = sign(&ed, &alice(json!({"sub": "other-agent"})));
    let status = decide(server, read_for(&elsewhere, "elsewhere"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // A sent chain may narrow the token's, never contradict it.
    let mut narrowed = read_for(&good, "narrowed");
    narrowed.delegation = vec![DelegationHop {
        delegator: uid("User", "alice"),
        scopes: vec!["docs:list".into()],
        ..Default::default()
    }];
    assert!(
        !decide(server, narrowed).await.unwrap(),
        "docs:read narrowed away"
    );
    let mut widened = read_for(&good, "widened");
    widened.delegation = vec![DelegationHop {
        delegator: uid("User", "alice"),
        scopes: vec!["docs:read".into(), "docs:admin".into()],
        ..Default::default()
    }];
    let status = decide(server, widened).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("docs:admin"), "{status:?}");
    // With a subject token, `context.token` is the server's.
    let mut forged = read_for(&good, "forged-claims");
    forged.context_json = r#"{"token": {"scope": ["docs:read"]}}"#.into();
    let status = decide(server, forged).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("context.token"), "{status:?}");
    // Caller-asserted chains are not verified: the policy denies them.
    let mut asserted = read_for("", "asserted");
    asserted.delegation = vec![DelegationHop {
        delegator: uid("User", "alice"),
        scopes: vec!["docs:read".into()],
        ..Default::default()
    }];
    assert!(!decide(server, asserted).await.unwrap());

    // The actor token (the agent's own, from SPIRE) must name the principal.
    let agent = |sub: &str| {
        sign(
            &es,
            &json!({"iss": SPIRE, "sub": sub, "aud": "cedar-pdp", "exp": now() + 300}),
        )
    };
    let mut both = read_for(&good, "both");
    both.actor_token = agent("summarizer");
    assert!(decide(server, both).await.unwrap());
    let mut impostor = read_for(&good, "impostor");
    impostor.actor_token = agent("another-workload");
    let status = decide(server, impostor).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("another-workload"), "{status:?}");

    // The record names each token and never holds one.
    let records = records_through(&setup.log, "impostor").await;
    let text = std::fs::read_to_string(&setup.log).unwrap();
    for token in [&good, &by_rsa, &deep] {
        assert!(!text.contains(token.rsplit('.').next().unwrap()));
    }
    let by_id = |id: &str| records.iter().find(|r| r["request_id"] == id).unwrap();
    let good = by_id("good");
    assert_eq!(good["decision"], "allow");
    assert_eq!(
        good["tokens"],
        json!([{"kind": "subject", "issuer": IDP, "subject": "alice", "jti": "jti-1", "kid": "ed-1",
                "scopes": ["docs:read", "docs:list"], "binding": "act"}])
    );
    assert_eq!(
        good["delegation"][0]["delegator"],
        json!({"type": "User", "id": "alice"})
    );
    assert_eq!(good["delegation"][0]["verified"], true);
    let deep = by_id("deep");
    let chain: Vec<&str> = deep["delegation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["delegator"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["alice", "router", "planner"]);
    assert_eq!(by_id("both")["tokens"].as_array().unwrap().len(), 2);
    let bad = records.iter().filter(|r| r["request_id"] == "bad").count();
    assert_eq!(bad, cases.len());
    assert!(
        records
            .iter()
            .filter(|r| r["request_id"] == "bad")
            .all(|r| r["error"]["reason"] == "token_invalid")
    );
}

/// A token grants the scopes it carries (none, when it carries none), and
/// makes a verified chain only for a principal it names: its `act.sub`, its
/// `may_act.sub`, or its own `sub`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_grants_only_its_scopes_and_binds_only_the_principal_it_names() {
    let ed = ed25519("ed-1");
    let setup = start(&[&ed], &[]).await;
    let server = &setup.server;
    let with = |edit: &dyn Fn(&mut Json)| {
        let mut claims = alice(json!({"sub": "summarizer"}));
        edit(&mut claims);
        sign(&ed, &claims)
    };
    let in_scope = || {
        vec![DelegationHop {
            delegator: uid("User", "alice"),
            scopes: vec!["docs:read".into()],
            ..Default::default()
        }]
    };
    // No `scope`, or an empty one: the caller cannot name scopes itself.
    for (name, token) in [
        (
            "no-scope",
            with(&|c| drop(c.as_object_mut().unwrap().remove("scope"))),
        ),
        ("empty-scope", with(&|c| c["scope"] = json!(""))),
    ] {
        let mut req = read_for(&token, name);
        req.delegation = in_scope();
        let status = decide(server, req).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name}: {status:?}"
        );
        assert!(status.message().contains("docs:read"), "{name}: {status:?}");
        // Without a sent chain the chain has no scopes to allow with.
        assert!(
            !decide(server, read_for(&token, name)).await.unwrap(),
            "{name}"
        );
    }
    // No `act`: alice's token names no agent, so the chain it makes for
    // whichever agent sent it is not verified, and the policy denies.
    let unbound = with(&|c| drop(c.as_object_mut().unwrap().remove("act")));
    assert!(!decide(server, read_for(&unbound, "unbound")).await.unwrap());
    // `may_act` names the agent alice lets act for her.
    let may_act = with(&|c| {
        c.as_object_mut().unwrap().remove("act");
        c["may_act"] = json!({"sub": "summarizer"});
    });
    assert!(decide(server, read_for(&may_act, "may-act")).await.unwrap());
    let someone_else = with(&|c| {
        c.as_object_mut().unwrap().remove("act");
        c["may_act"] = json!({"sub": "other-agent"});
    });
    let status = decide(server, read_for(&someone_else, "may-act-other"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("may_act.sub"), "{status:?}");

    let records = records_through(&setup.log, "may-act-other").await;
    let by_id = |id: &str| records.iter().find(|r| r["request_id"] == id).unwrap();
    assert_eq!(by_id("unbound")["tokens"][0]["binding"], "none");
    assert_eq!(by_id("may-act")["tokens"][0]["binding"], "may_act");
    // Both outcomes are recorded: the refusal, then the deny.
    let no_scope: Vec<&Json> = records
        .iter()
        .filter(|r| r["request_id"] == "no-scope")
        .collect();
    assert_eq!(no_scope.len(), 2, "{no_scope:?}");
    assert_eq!(
        no_scope[0]["error"]["reason"], "delegation_invalid",
        "{:?}",
        no_scope[0]
    );
    assert_eq!(no_scope[1]["decision"], "deny", "{:?}", no_scope[1]);
}

/// Once tokens are configured, `context.token` is the server's on every
/// front-end, whether or not a request sends a token: AuthZEN cannot send
/// one, so there a caller could always have written its own claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_front_end_lets_a_caller_write_the_tokens_claims() {
    let ed = ed25519("ed-1");
    let setup = start(&[&ed], &[]).await;
    let server = &setup.server;
    let mut forged = read_for("", "forged-without-token");
    forged.context_json = r#"{"token": {"scope": ["docs:read"]}}"#.into();
    let status = decide(server, forged).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("context.token"), "{status:?}");

    let body = json!({
        "subject": {"type": "Agent", "id": "summarizer"},
        "action": {"name": "read"},
        "resource": {"type": "Doc", "id": "plan"},
        "context": {"token": {"scope": ["docs:read"]}},
    });
    let (status, body) = common::authzen_evaluation(server.authzen_addr, &body).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("context.token"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_in_the_jwks_file_is_used_while_the_server_runs() {
    let (old, new) = (ed25519("ed-1"), ed25519("ed-2"));
    let setup = start(&[&old], &[]).await;
    let server = &setup.server;
    let act = json!({"sub": "summarizer"});
    let by_old = sign(&old, &alice(act.clone()));
    let by_new = sign(&new, &alice(act.clone()));
    assert!(decide(server, read_for(&by_old, "old")).await.unwrap());
    unauthenticated(
        decide(server, read_for(&by_new, "new")).await,
        "ed-2",
        &by_new,
    );

    // Rotate: the new key in, the old one out, as a rename (atomic).
    let file = setup.dir.path().join("idp.jwks.json");
    let tmp = setup.dir.path().join(".idp.jwks.json.tmp");
    std::fs::write(&tmp, jwks(&[&new])).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    eventually("the rotated key", Duration::from_secs(10), || async {
        decide(server, read_for(&by_new, "new"))
            .await
            .ok()
            .filter(|a| *a)
    })
    .await;
    unauthenticated(
        decide(server, read_for(&by_old, "old")).await,
        "ed-1",
        &by_old,
    );

    // A broken file keeps the keys that work.
    std::fs::write(&tmp, "{not json").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    // Bounded: several reload intervals pass, and the new key still works.
    let until = std::time::Instant::now() + Duration::from_millis(600);
    while std::time::Instant::now() < until {
        assert!(decide(server, read_for(&by_new, "kept")).await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ext_authz reads the subject token from `authorization: Bearer ...` and
/// verifies it as gRPC does; another scheme is not a token of ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_verifies_a_bearer_subject_token() {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    let ed = ed25519("ed-1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"@id("for-verified-alice")
           permit (principal is Workload, action == Action::"GET", resource)
           when { context has delegation && context.delegation.verified &&
                  context.delegation.origin == User::"alice" };"#,
    )
    .unwrap();
    let jwks_file = dir.path().join("keys").join("idp.jwks.json");
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(&jwks_file, jwks(&[&ed])).unwrap();
    let mut config = test_config(dir.path());
    config.tokens.issuers = vec![IssuerConfig {
        issuer: IDP.into(),
        jwks_file,
        audiences: vec!["cedar-pdp".into()],
        principal_type: "User".into(),
        actor_type: String::new(),
    }];
    let x = &mut config.ext_authz;
    x.enabled = true;
    x.principal_type = "Workload".into();
    x.namespace_type = "Namespace".into();
    x.trust_domain_type = "TrustDomain".into();
    x.action_type = "Action".into();
    x.resource_type = "HttpRoute".into();
    x.service_type = "Service".into();
    let server = TestServer::start_with(config).await;
    let mut client = AuthorizationClient::connect(server.url()).await.unwrap();
    let check = |authorization: Option<String>| CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: "spiffe://td/ns/shop/sa/web".into(),
                ..Default::default()
            }),
            destination: Some(Peer {
                principal: "spiffe://td/ns/shop/sa/checkout".into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "req-1".into(),
                    method: "GET".into(),
                    host: "shop.internal".into(),
                    path: "/items".into(),
                    headers: authorization
                        .into_iter()
                        .map(|v| ("authorization".to_string(), v))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    // Alice's token lets the web workload act for her (`may_act`); one
    // that names no workload makes no verified chain for it.
    let mut claims = alice(Json::Null);
    claims["may_act"] = json!({"sub": "spiffe://td/ns/shop/sa/web"});
    let good = sign(&ed, &claims);
    let unbound = sign(&ed, &alice(Json::Null));
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = json!("mallory");
    let forged = {
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        parts[1] = B64.encode(forged_claims.to_string());
        parts.join(".")
    };
    let code = |r: &envoy_types::pb::envoy::service::auth::v3::CheckResponse| {
        r.status.as_ref().map_or(0, |s| s.code)
    };
    let ok = client
        .check(check(Some(format!("Bearer {good}"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&ok), 0, "{ok:?}");
    for header in [
        None,
        Some(format!("Basic {good}")),
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {unbound}")),
    ] {
        let denied = client
            .check(check(header.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(code(&denied), 0, "{header:?}: {denied:?}");
    }
    let refused = cedar_pdp_metric(&server, "token_invalid").await;
    assert_eq!(refused, 1.0, "only the forged token is a token error");
}

async fn cedar_pdp_metric(server: &TestServer, reason: &str) -> f64 {
    common::metric(
        server.admin_addr,
        "cedar_pdp_request_errors_total",
        &[("reason", reason)],
    )
    .await
}
