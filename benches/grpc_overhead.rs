//! What decision records and spans add to one `Authorize` call, measured
//! through the real server on loopback: bare, with the decision log on a file
//! sink, and with spans sampled at 100% to a running OTLP receiver.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

use std::path::Path;
use std::time::Duration;

use cedar_pdp::app::{App, Listeners};
use cedar_pdp::config::{Config, LogFormat, LogSink, OtelConfig};
use cedar_pdp::grpc::proto::{self, authorizer_client::AuthorizerClient};
use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::transport::Channel;

struct Sink;

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn request() -> proto::AuthorizeRequest {
    let uid = |t: &str, id: &str| {
        Some(proto::EntityUid {
            r#type: t.into(),
            id: id.into(),
        })
    };
    proto::AuthorizeRequest {
        principal: uid("Mesh::Workload", "spiffe://example.org/ns/shop/sa/frontend"),
        action: uid("Mesh::Action", "call"),
        resource: uid("Mesh::Service", "shop/checkout"),
        context_json: r#"{"source_ip": "10.0.1.7"}"#.into(),
        ..Default::default()
    }
}

async fn serve(config: Config) -> AuthorizerClient<Channel> {
    let app = App::build(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(app.serve(Listeners::new(listener), std::future::pending()));
    AuthorizerClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let tmp = tempfile::tempdir().unwrap();
    let base = || Config {
        policies: policies.clone(),
        admin_listen: String::new(),
        ..Config::default()
    };
    let mut group = c.benchmark_group("authorize_over_grpc");
    group.measurement_time(Duration::from_secs(5));

    let bare = rt.block_on(serve(base()));
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| {
            let mut client = bare.clone();
            async move { client.authorize(request()).await.unwrap() }
        });
    });

    let mut logged = base();
    logged.decision_log.enabled = true;
    logged.decision_log.sink = LogSink::File;
    logged.decision_log.path = tmp.path().join("decisions.log");
    let logged = rt.block_on(serve(logged));
    group.bench_function("decision_log_file", |b| {
        b.to_async(&rt).iter(|| {
            let mut client = logged.clone();
            async move { client.authorize(request()).await.unwrap() }
        });
    });

    // Spans are process-wide, so this runs last.
    let otlp = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Sink))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    });
    let _telemetry = {
        let _enter = rt.enter();
        cedar_pdp::telemetry::init(
            LogFormat::Text,
            "error",
            &OtelConfig {
                endpoint: format!("http://{otlp}"),
                protocol: "grpc".into(),
                service_name: "cedar-pdp-bench".into(),
            },
        )
        .unwrap()
    };
    let traced = rt.block_on(serve(base()));
    group.bench_function("spans_100pct_to_receiver", |b| {
        b.to_async(&rt).iter(|| {
            let mut client = traced.clone();
            async move { client.authorize(request()).await.unwrap() }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
