//! Envoy ext_authz `Check` over a real gRPC socket, with a tonic client of
//! the Envoy protos: the mapping, allow, deny, and error-means-deny.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::collections::HashMap;
use std::path::Path;

use cedar_pdp::config::{Config, ExtAuthzRoute};
use common::{TestServer, test_config};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::{self as core, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tonic::transport::Channel;

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

/// A schema-less set over the default entity names, to pin each part of the
/// mapping with its own policy.
const MAPPING_POLICIES: &str = r#"
@id("tenant-reads")
permit (principal is Workload, action == Action::"GET", resource is HttpRoute)
when {
  context.headers has "x-tenant" && context.headers["x-tenant"] == "acme" &&
  resource.path == "/items" && resource.host == "shop.internal" &&
  resource == HttpRoute::"shop.internal/items" && context.host == "shop.internal" &&
  resource.service == Service::"shop/checkout" && resource in Service::"shop/checkout"
};

@id("no-credentials-in-policy-input")
forbid (principal, action, resource)
when { context.headers has "authorization" };

@id("admin-route")
permit (principal == Workload::"spiffe://td/ns/ops/sa/admin", action == Action::"admin", resource);

@id("public")
permit (principal == Workload::"anonymous", action == Action::"GET", resource)
when { context.path like "/public/*" };

@id("facts")
permit (principal in Namespace::"shop", action == Action::"PUT", resource)
when {
  principal in TrustDomain::"td" &&
  principal.service_account == "web" && principal.namespace == Namespace::"shop" &&
  principal.trust_domain == TrustDomain::"td" &&
  context.source_ip.isInRange(ip("10.0.0.0/8")) && context.query == "a=1" &&
  context.path == "/p" && context.method == "PUT" &&
  context.context_extensions.route == "r1" &&
  context.destination == "spiffe://td/ns/shop/sa/checkout"
};
"#;

fn mapping_config(dir: &Path) -> Config {
    let mut config = test_config(dir);
    let x = &mut config.ext_authz;
    x.principal_type = "Workload".into();
    x.namespace_type = "Namespace".into();
    x.trust_domain_type = "TrustDomain".into();
    x.anonymous_principal = r#"Workload::"anonymous""#.into();
    x.action_type = "Action".into();
    x.resource_type = "HttpRoute".into();
    x.service_type = "Service".into();
    x.headers = vec!["x-tenant".into()];
    x.error_status = 503;
    x.routes = vec![ExtAuthzRoute {
        method: "POST".into(),
        path_prefix: "/admin/".into(),
        action: "admin".into(),
    }];
    config
}

fn peer(principal: &str, ip: &str) -> Option<Peer> {
    Some(Peer {
        principal: principal.into(),
        address: Some(core::Address {
            address: Some(Address::SocketAddress(SocketAddress {
                address: ip.into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    })
}

fn check(
    source: &str,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: peer(source, "10.0.1.7"),
            destination: peer("spiffe://td/ns/shop/sa/checkout", "10.0.2.1"),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "req-1".into(),
                    method: method.into(),
                    host: host.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn client(server: &TestServer) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(server.url()).await.unwrap()
}

fn code(resp: &CheckResponse) -> i32 {
    resp.status.as_ref().map_or(OK, |s| s.code)
}

fn headers_of(resp: &CheckResponse) -> HashMap<String, String> {
    let headers = match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => &ok.headers,
        Some(HttpResponse::DeniedResponse(d)) => &d.headers,
        other => panic!("no http response: {other:?}"),
    };
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn denied_status(resp: &CheckResponse) -> (u32, String) {
    match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => (
            d.status.as_ref().map_or(0, |s| s.code as u32),
            d.body.clone(),
        ),
        other => panic!("expected a denied response, got {other:?}"),
    }
}

async fn mapping_server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.cedar"), MAPPING_POLICIES).unwrap();
    let server = TestServer::start_with(mapping_config(dir.path())).await;
    (server, dir)
}

#[tokio::test]
async fn allow_carries_decision_headers_and_deny_is_a_403_with_body() {
    let (server, _dir) = mapping_server().await;
    let mut c = client(&server).await;

    let allowed = c
        .check(check(
            "spiffe://td/ns/shop/sa/web",
            "GET",
            "Shop.Internal:8080",
            "/items?page=2",
            &[("x-tenant", "acme")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&allowed), OK, "{allowed:?}");
    let headers = headers_of(&allowed);
    assert_eq!(headers["x-cedar-decision-id"].len(), 36, "{headers:?}");
    assert!(headers["x-cedar-policy-revision"].starts_with("sha256:"));

    let wrong_tenant = c
        .check(check(
            "spiffe://td/ns/shop/sa/web",
            "GET",
            "shop.internal:8080",
            "/items",
            &[("x-tenant", "globex")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&wrong_tenant), PERMISSION_DENIED);
    let (status, body) = denied_status(&wrong_tenant);
    assert_eq!(status, 403);
    assert!(body.contains("denied"), "{body}");
    assert!(headers_of(&wrong_tenant).contains_key("x-cedar-decision-id"));
}

#[tokio::test]
async fn only_allowlisted_headers_reach_policies() {
    let (server, _dir) = mapping_server().await;
    let mut c = client(&server).await;
    // `authorization` is not on the allowlist, so the forbid that looks for
    // it never sees it and the tenant read is still allowed.
    let resp = c
        .check(check(
            "spiffe://td/ns/shop/sa/web",
            "GET",
            "shop.internal:8080",
            "/items",
            &[("x-tenant", "acme"), ("authorization", "Bearer secret")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), OK, "{resp:?}");
}

#[tokio::test]
async fn spiffe_principal_becomes_a_typed_workload_with_every_fact() {
    let (server, _dir) = mapping_server().await;
    let mut c = client(&server).await;
    let mut req = check(
        "spiffe://td/ns/shop/sa/web",
        "PUT",
        "shop.internal",
        "/p?a=1",
        &[],
    );
    let attrs = req.attributes.as_mut().unwrap();
    attrs.context_extensions.insert("route".into(), "r1".into());
    let resp = c.check(req.clone()).await.unwrap().into_inner();
    assert_eq!(code(&resp), OK, "{resp:?}");

    // Each fact matters: a different service account, query or extension denies.
    for change in ["sa", "query", "ext", "ip"] {
        let mut r = req.clone();
        let a = r.attributes.as_mut().unwrap();
        match change {
            "sa" => a.source.as_mut().unwrap().principal = "spiffe://td/ns/shop/sa/other".into(),
            "query" => a.request.as_mut().unwrap().http.as_mut().unwrap().path = "/p?a=2".into(),
            "ext" => {
                a.context_extensions.insert("route".into(), "r2".into());
            }
            _ => {
                a.source = peer("spiffe://td/ns/shop/sa/web", "192.168.1.1");
            }
        }
        let resp = c.check(r).await.unwrap().into_inner();
        assert_eq!(
            code(&resp),
            PERMISSION_DENIED,
            "changing {change} must deny"
        );
    }
}

#[tokio::test]
async fn routes_map_method_and_prefix_to_actions_and_anonymous_callers_get_the_configured_principal()
 {
    let (server, _dir) = mapping_server().await;
    let mut c = client(&server).await;
    let admin = |source: &str| check(source, "POST", "ops", "/admin/restart", &[]);
    let resp = c
        .check(admin("spiffe://td/ns/ops/sa/admin"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), OK, "POST /admin/ maps to action `admin`");
    let resp = c
        .check(admin("spiffe://td/ns/ops/sa/intruder"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), PERMISSION_DENIED);

    let resp = c
        .check(check("", "GET", "www", "/public/logo.png", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(&resp),
        OK,
        "no source principal: Workload::\"anonymous\""
    );
    let resp = c
        .check(check("", "GET", "www", "/private", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), PERMISSION_DENIED);
}

#[tokio::test]
async fn errors_fail_closed_with_the_error_status_and_are_counted() {
    let (server, _dir) = mapping_server().await;
    let mut c = client(&server).await;
    let cases = [
        ("no attributes", CheckRequest { attributes: None }),
        (
            "source principal is not a SPIFFE ID",
            check("cluster.local/ns/shop/sa/web", "GET", "h", "/items", &[]),
        ),
        (
            "no method",
            check("spiffe://td/ns/shop/sa/web", "", "h", "/items", &[]),
        ),
    ];
    for (what, req) in cases {
        let resp = c
            .check(req)
            .await
            .expect("errors are answers, not gRPC failures")
            .into_inner();
        assert_eq!(code(&resp), PERMISSION_DENIED, "{what}");
        let (status, body) = denied_status(&resp);
        assert_eq!(status, 503, "{what}: the configured error status");
        assert!(body.contains("error"), "{what}: {body}");
    }
    let errors = common::metric(
        server.admin_addr,
        "cedar_pdp_request_errors_total",
        &[("code", "InvalidArgument")],
    )
    .await;
    assert_eq!(errors, 3.0);
}

#[tokio::test]
async fn example_policies_answer_mesh_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let server = TestServer::start(&root).await;
    let mut c = client(&server).await;
    // A listed workload reads a route of a service in its own namespace.
    let resp = c
        .check(check_mesh(
            "spiffe://example.org/ns/shop/sa/frontend",
            "GET",
            "/orders/7",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), OK, "{resp:?}");
    // A workload not in the entities file is built from its SPIFFE ID.
    let resp = c
        .check(check_mesh(
            "spiffe://example.org/ns/shop/sa/newcomer",
            "GET",
            "/orders/7",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), OK, "{resp:?}");
    // Only the frontend may POST orders.
    let resp = c
        .check(check_mesh(
            "spiffe://example.org/ns/shop/sa/newcomer",
            "POST",
            "/orders",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), PERMISSION_DENIED);
    let resp = c
        .check(check_mesh(
            "spiffe://example.org/ns/shop/sa/frontend",
            "POST",
            "/orders",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), OK, "{resp:?}");
    // Another trust domain is refused whatever it asks.
    let resp = c
        .check(check_mesh(
            "spiffe://evil.org/ns/shop/sa/frontend",
            "GET",
            "/orders/7",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), PERMISSION_DENIED);
}

fn check_mesh(source: &str, method: &str, path: &str) -> CheckRequest {
    let mut req = check(source, method, "checkout.shop.svc:8080", path, &[]);
    req.attributes.as_mut().unwrap().destination =
        peer("spiffe://example.org/ns/shop/sa/checkout", "10.0.2.1");
    req
}

/// A server over `policies` with the mapping config, changed by `tune`.
async fn server_with(
    policies: &str,
    tune: impl FnOnce(&mut Config),
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.cedar"), policies).unwrap();
    let mut config = mapping_config(dir.path());
    tune(&mut config);
    let server = TestServer::start_with(config).await;
    (server, dir)
}

async fn errors_for(server: &TestServer, reason: &str) -> f64 {
    common::metric(
        server.admin_addr,
        "cedar_pdp_request_errors_total",
        &[("reason", reason)],
    )
    .await
}

#[tokio::test]
async fn path_tricks_do_not_pass_for_the_routes_policies_allow() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let server = TestServer::start(&root).await;
    let mut c = client(&server).await;
    let frontend = "spiffe://example.org/ns/shop/sa/frontend";
    let ask = |path: &str| check_mesh(frontend, "POST", path);

    // `resource.path like "/orders*"` sees the path the app would serve.
    for path in [
        "/orders/../admin/refund",
        "/orders/%2e%2e/admin/refund",
        "/orders/%2E./admin/refund",
        "/orders/./../admin/refund",
    ] {
        let resp = c.check(ask(path)).await.unwrap().into_inner();
        assert_eq!(code(&resp), PERMISSION_DENIED, "{path}: {resp:?}");
        let (_, body) = denied_status(&resp);
        assert!(body.contains("denied by policy"), "{path}: {body}");
    }
    // Paths servers disagree about are refused, as errors with their reason.
    let refused = [
        "/orders/%2f../admin/refund",
        "/orders%2F..%2Fadmin",
        "/orders/..%5cadmin",
        "/orders\\..\\admin",
        "/orders/%00",
        "orders",
    ];
    for path in refused {
        let resp = c.check(ask(path)).await.unwrap().into_inner();
        assert_eq!(code(&resp), PERMISSION_DENIED, "{path}: {resp:?}");
        let (status, body) = denied_status(&resp);
        assert_eq!(status, 403, "{path}");
        assert!(body.contains("authorization error"), "{path}: {body}");
    }
    assert_eq!(
        errors_for(&server, "invalid_path").await,
        refused.len() as f64
    );
    // What the policies allow is still allowed, query and all.
    for path in ["/orders", "/orders/7?next=/../admin", "/%6Frders//7"] {
        let resp = c.check(ask(path)).await.unwrap().into_inner();
        assert_eq!(code(&resp), OK, "{path}: {resp:?}");
    }
}

#[tokio::test]
async fn route_prefixes_match_the_normalised_path() {
    // Any workload may POST, except to the admin route.
    let policies = r#"
permit (principal, action == Action::"POST", resource);
permit (principal == Workload::"spiffe://td/ns/ops/sa/admin", action == Action::"admin", resource);
"#;
    let (server, _dir) = server_with(policies, |_| {}).await;
    let mut c = client(&server).await;
    for path in [
        "/admin/restart",
        "//admin/restart",
        "/%61dmin/restart",
        "/x/../admin/restart",
    ] {
        let resp = c
            .check(check(
                "spiffe://td/ns/ops/sa/intruder",
                "POST",
                "ops",
                path,
                &[],
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&resp), PERMISSION_DENIED, "{path} maps to `admin`");
        let resp = c
            .check(check(
                "spiffe://td/ns/ops/sa/admin",
                "POST",
                "ops",
                path,
                &[],
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&resp), OK, "{path}: {resp:?}");
    }
}

#[tokio::test]
async fn resource_ids_expand_once_over_the_normalised_host() {
    let policies = r#"
permit (principal, action == Action::"GET", resource == HttpRoute::"www/shop/checkout");
permit (principal, action == Action::"GET", resource == HttpRoute::"shop/checkout:www/items");
"#;
    let (server, _dir) = server_with(policies, |_| {}).await;
    let mut c = client(&server).await;
    let web = "spiffe://td/ns/shop/sa/web";
    // A path holding `{service}` is not expanded into the service id.
    let resp = c
        .check(check(web, "GET", "www", "/{service}", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), PERMISSION_DENIED, "{resp:?}");

    let (server, _dir) = server_with(policies, |c| {
        c.ext_authz.resource_id = "{service}:{host}{path}".into();
    })
    .await;
    let mut c = client(&server).await;
    let resp = c
        .check(check(web, "GET", "WWW:8443", "/items", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), OK, "host lower-cased, port dropped: {resp:?}");
    // A host holding `{path}` is copied as it is.
    let resp = c
        .check(check(web, "GET", "www{path}", "/items", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), PERMISSION_DENIED, "{resp:?}");
    // A host that would splice a path into the id is refused.
    let resp = c
        .check(check(web, "GET", "www/items", "/", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        denied_status(&resp).1.contains("authorization error"),
        "{resp:?}"
    );
}

#[tokio::test]
async fn the_service_comes_from_the_destination_or_the_config_never_the_host() {
    let policies = r#"
permit (principal, action == Action::"GET", resource in Service::"shop/checkout");
"#;
    let no_destination = |host: &str| {
        let mut req = check("spiffe://td/ns/shop/sa/web", "GET", host, "/items", &[]);
        req.attributes.as_mut().unwrap().destination = None;
        req
    };
    // No destination and no default: a deny, with its reason.
    let (server, _dir) = server_with(policies, |_| {}).await;
    let mut c = client(&server).await;
    let resp = c
        .check(no_destination("checkout"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), PERMISSION_DENIED);
    assert_eq!(denied_status(&resp), (503, "authorization error\n".into()));
    assert_eq!(errors_for(&server, "invalid_request").await, 1.0);
    // With a destination, its SPIFFE ID names the service, whatever the host.
    let resp = c
        .check(check(
            "spiffe://td/ns/shop/sa/web",
            "GET",
            "elsewhere",
            "/items",
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), OK, "{resp:?}");

    // The configured default names it, not the client's Host header.
    let (server, _dir) = server_with(policies, |c| {
        c.ext_authz.default_service = "shop/web".into();
    })
    .await;
    let mut c = client(&server).await;
    for host in ["checkout", "shop.checkout", "[shop]"] {
        let resp = c.check(no_destination(host)).await.unwrap().into_inner();
        assert_eq!(code(&resp), PERMISSION_DENIED, "{host}");
        assert!(
            denied_status(&resp).1.contains("denied by policy"),
            "{host}"
        );
    }
    let (server, _dir) = server_with(policies, |c| {
        c.ext_authz.default_service = "shop/checkout".into();
    })
    .await;
    let mut c = client(&server).await;
    let resp = c
        .check(no_destination("anything"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), OK, "{resp:?}");
}
