//! Span export over OTLP HTTP/protobuf, to a real HTTP receiver.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use cedar_pdp::config::{LogFormat, OtelConfig};
use common::{TestServer, request};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_export_over_http_protobuf() {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).unwrap();
                let mut names = sink.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        names.extend(ss.spans.into_iter().map(|s| s.name));
                    }
                }
                Bytes::new()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let telemetry = Arc::new(
        cedar_pdp::telemetry::init(
            LogFormat::Text,
            "warn",
            &OtelConfig {
                endpoint: format!("http://{addr}"),
                protocol: "http/protobuf".into(),
                service_name: "cedar-pdp-test".into(),
            },
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "permit (principal == User::\"alice\", action, resource);\n",
    )
    .unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    client
        .authorize(request(("User", "alice"), ("Action", "a"), ("R", "r")))
        .await
        .unwrap();

    common::eventually("a span over HTTP", Duration::from_secs(20), || {
        let telemetry = telemetry.clone();
        let received = received.clone();
        async move {
            tokio::task::spawn_blocking(move || telemetry.flush())
                .await
                .unwrap();
            received
                .lock()
                .unwrap()
                .iter()
                .any(|n| n == "cedar.authorize")
                .then_some(())
        }
    })
    .await;
    drop(client);
    server.stop().await.unwrap();
}
