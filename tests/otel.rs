//! Decision spans reach a real OTLP receiver and continue the caller's trace.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cedar_pdp::config::{LogFormat, OtelConfig};
use cedar_pdp::grpc::proto;
use common::{TestServer, request};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttributeRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn traced<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_spans_continue_the_callers_trace_with_their_attributes() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = Arc::new(
        cedar_pdp::telemetry::init(
            LogFormat::Text,
            "warn",
            &OtelConfig {
                endpoint: format!("http://{otlp}"),
                protocol: "grpc".into(),
                service_name: "cedar-pdp-test".into(),
            },
        )
        .unwrap(),
    );
    assert!(telemetry.exporting());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "@id(\"allow-alice\")\npermit (principal == User::\"alice\", action, resource);\n",
    )
    .unwrap();
    let mut config = common::test_config(dir.path());
    config.decision_log.enabled = true;
    config.decision_log.sink = cedar_pdp::config::LogSink::File;
    config.decision_log.path = dir.path().join("decisions.log");
    config.decision_log.mask = vec!["context.token".into()];
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let mut allow_req = request(("User", "alice"), ("Action", "read"), ("Doc", "d"));
    allow_req.request_id = "req-allow".into();
    allow_req.workload = Some(proto::Workload {
        spiffe_id: "spiffe://example.org/ns/a/sa/b".into(),
        ..Default::default()
    });
    let allow = client
        .authorize(traced(allow_req))
        .await
        .unwrap()
        .into_inner();
    let deny = client
        .authorize(traced(request(
            ("User", "bob"),
            ("Action", "read"),
            ("Doc", "d"),
        )))
        .await
        .unwrap()
        .into_inner();
    let batch = client
        .batch_authorize(traced(proto::BatchAuthorizeRequest {
            requests: vec![
                request(("User", "alice"), ("Action", "read"), ("Doc", "d")),
                request(("User", "bob"), ("Action", "read"), ("Doc", "d")),
            ],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let failed = client
        .authorize(traced(request(
            ("not a type", "x"),
            ("Action", "a"),
            ("R", "r"),
        )))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), tonic::Code::InvalidArgument);
    // Cedar quotes the bad value; the client sent it, the trace must not
    // carry it, as the record does not.
    let mut secret = request(("User", "alice"), ("Action", "read"), ("Doc", "d"));
    secret.request_id = "req-masked".into();
    secret.context_json = r#"{"token": {"__extn": {"fn": "ip", "arg": "s3cret-t0ken"}}}"#.into();
    let masked = client.authorize(traced(secret)).await.unwrap_err();
    assert!(
        masked.message().contains("s3cret-t0ken"),
        "{}",
        masked.message()
    );

    let spans = common::eventually("spans to arrive", Duration::from_secs(20), || {
        let telemetry = telemetry.clone();
        let receiver = receiver.clone();
        async move {
            tokio::task::spawn_blocking(move || telemetry.flush())
                .await
                .unwrap();
            let spans = receiver.0.lock().unwrap().clone();
            (spans.iter().filter(|s| s.name == "cedar.authorize").count() >= 6).then_some(spans)
        }
    })
    .await;

    let by_decision_id = |id: &str| {
        spans
            .iter()
            .find(|s| attrs(s).get("cedar.decision_id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no span for decision {id}"))
    };
    let a = by_decision_id(&allow.decision_id);
    assert_eq!(hex(&a.trace_id), TRACE);
    assert_eq!(hex(&a.parent_span_id), PARENT);
    let at = attrs(a);
    assert_eq!(at["cedar.principal"], "User::\"alice\"");
    assert_eq!(at["cedar.action"], "Action::\"read\"");
    assert_eq!(at["cedar.resource"], "Doc::\"d\"");
    assert_eq!(at["cedar.decision"], "allow");
    assert_eq!(at["cedar.determining_policies"], "allow-alice");
    assert_eq!(at["cedar.error_count"], "0");
    assert_eq!(at["cedar.policy_revision"], allow.policy_revision);
    assert_eq!(at["cedar.request_id"], "req-allow");
    assert_eq!(
        at["cedar.workload.spiffe_id"],
        "spiffe://example.org/ns/a/sa/b"
    );
    // A deny is not an error.
    let d = by_decision_id(&deny.decision_id);
    assert_eq!(attrs(d)["cedar.decision"], "deny");
    assert_ne!(d.status.as_ref().map_or(0, |s| s.code), 2);

    // The batch: one span, one child per item, all in the caller's trace.
    let b = spans
        .iter()
        .find(|s| s.name == "cedar.batch_authorize")
        .unwrap();
    assert_eq!(hex(&b.trace_id), TRACE);
    assert_eq!(hex(&b.parent_span_id), PARENT);
    for item in &batch.responses {
        let s = by_decision_id(&item.decision_id);
        assert_eq!(s.parent_span_id, b.span_id);
        assert_eq!(hex(&s.trace_id), TRACE);
    }

    // A failed request is the only error status.
    let f = spans
        .iter()
        .find(|s| s.name == "cedar.authorize" && !attrs(s).contains_key("cedar.decision_id"))
        .expect("the failed call has a span");
    assert_eq!(f.status.as_ref().unwrap().code, 2, "status ERROR");
    let m = spans
        .iter()
        .find(|s| attrs(s).get("cedar.request_id").map(String::as_str) == Some("req-masked"))
        .expect("the masked call has a span");
    let status = m.status.as_ref().unwrap();
    assert_eq!(status.code, 2, "status ERROR");
    assert!(
        !status.message.contains("s3cret-t0ken") && status.message.contains("***"),
        "{}",
        status.message
    );

    // A reload emits its own span.
    common::write_atomic(
        dir.path(),
        "p.cedar",
        "permit (principal, action, resource);\n",
    );
    let status = common::wait_for_generation(&mut client, 1).await;
    let reload = common::eventually("a reload span", Duration::from_secs(20), || {
        let telemetry = telemetry.clone();
        let receiver = receiver.clone();
        let revision = status.revision.clone();
        async move {
            tokio::task::spawn_blocking(move || telemetry.flush())
                .await
                .unwrap();
            let spans = receiver.0.lock().unwrap().clone();
            spans.into_iter().find(|s| {
                s.name == "cedar.policy_reload"
                    && attrs(s).get("cedar.policy_revision") == Some(&revision)
            })
        }
    })
    .await;
    assert_eq!(attrs(&reload)["cedar.result"], "success");

    // An ext_authz Check gets the same decision span, with the principal the
    // mapping built from the source's SPIFFE ID.
    let mut envoy = AuthorizationClient::connect(server.url()).await.unwrap();
    let check = envoy
        .check(CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    principal: "spiffe://td/ns/shop/sa/web".into(),
                    ..Default::default()
                }),
                destination: Some(Peer {
                    principal: "spiffe://td/ns/shop/sa/api".into(),
                    ..Default::default()
                }),
                request: Some(AttributeRequest {
                    http: Some(HttpRequest {
                        id: "envoy-1".into(),
                        method: "GET".into(),
                        host: "h".into(),
                        path: "/p".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status.map_or(0, |s| s.code), 0, "allowed");
    drop(client);
    server.stop().await.unwrap();

    // Over a Unix socket, the peer's credentials are span attributes.
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("pdp.sock");
    let config = common::test_config(dir.path());
    let socket = cedar_pdp::transport::UnixSocket::bind(&sock, 0o600).unwrap();
    let app = cedar_pdp::app::App::build(config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listeners = cedar_pdp::app::Listeners::new(socket);
    let uds = tokio::spawn(app.serve(listeners, async move {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("unix://{}", sock.display()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut uds_client = proto::authorizer_client::AuthorizerClient::new(channel);
    let over_uds = uds_client
        .authorize(request(("User", "carol"), ("Action", "read"), ("Doc", "d")))
        .await
        .unwrap()
        .into_inner();
    let uid = std::fs::metadata(sock_dir.path()).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let uds_id = over_uds.decision_id.clone();
    let spans = common::eventually(
        "the Check and Unix-socket spans",
        Duration::from_secs(20),
        || {
            let telemetry = telemetry.clone();
            let receiver = receiver.clone();
            let uds_id = uds_id.clone();
            async move {
                tokio::task::spawn_blocking(move || telemetry.flush())
                    .await
                    .unwrap();
                let spans = receiver.0.lock().unwrap().clone();
                let has = |id: &str| {
                    spans
                        .iter()
                        .any(|s| attrs(s).get("cedar.decision_id").map(String::as_str) == Some(id))
                };
                let check_id = spans.iter().any(|s| {
                    attrs(s).get("cedar.request_id").map(String::as_str) == Some("envoy-1")
                });
                (has(&uds_id) && check_id).then_some(spans)
            }
        },
    )
    .await;
    let c = spans
        .iter()
        .find(|s| attrs(s).get("cedar.request_id").map(String::as_str) == Some("envoy-1"))
        .unwrap();
    let ct = attrs(c);
    assert_eq!(c.name, "cedar.authorize");
    assert_eq!(
        ct["cedar.principal"],
        "Mesh::Workload::\"spiffe://td/ns/shop/sa/web\""
    );
    assert_eq!(ct["cedar.action"], "Mesh::Action::\"GET\"");
    assert_eq!(ct["cedar.decision"], "allow");
    let u = spans
        .iter()
        .find(|s| attrs(s).get("cedar.decision_id") == Some(&over_uds.decision_id))
        .unwrap();
    let ut = attrs(u);
    assert_eq!(ut["cedar.caller.uid"], uid.unwrap().to_string());
    assert_eq!(ut["cedar.caller.pid"], std::process::id().to_string());
    drop(uds_client);
    let _ = stop.send(());
    uds.await.unwrap().unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
