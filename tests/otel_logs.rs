//! Decision records reach a real OTLP logs receiver (`decision_log.export`),
//! one log record per decision, in the caller's trace; a collector that is
//! gone or stuck costs counted records, never decisions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use cedar_pdp::config::{Config, LogExport, LogFormat, LogSink, OtelConfig};
use common::{TestServer, request};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A log record as received, with its resource's attributes.
#[derive(Clone, Debug)]
struct Received {
    resource: HashMap<String, String>,
    record: LogRecord,
}

/// A real OTLP receiver of logs and spans.
#[derive(Clone, Default)]
struct Collector {
    logs: Arc<Mutex<Vec<Received>>>,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    fn push_logs(&self, request: ExportLogsServiceRequest) {
        let mut logs = self.logs.lock().unwrap();
        for rl in request.resource_logs {
            let resource = rl
                .resource
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            for sl in rl.scope_logs {
                for record in sl.log_records {
                    logs.push(Received {
                        resource: resource.clone(),
                        record,
                    });
                }
            }
        }
    }

    /// Received log records of one event (`cedar.decision`, `cedar.checkpoint`).
    fn events(&self, name: &str) -> Vec<Received> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|r| r.record.event_name == name)
            .cloned()
            .collect()
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.push_logs(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves `collector` over OTLP gRPC on loopback.
async fn grpc_collector(collector: &Collector) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(collector.clone()))
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
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

fn body(record: &LogRecord) -> String {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("the body is the record's line, not {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn traced<T>(msg: T, trace: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    r
}

/// A server config with a file log exported to `endpoint`.
fn exporting_config(dir: &Path, endpoint: String, protocol: &str) -> Config {
    std::fs::write(
        dir.join("p.cedar"),
        "@id(\"allow-alice\")\npermit (principal == User::\"alice\", action, resource);\n",
    )
    .unwrap();
    let mut config = common::test_config(dir);
    config.decision_log.enabled = true;
    config.decision_log.sink = LogSink::File;
    config.decision_log.path = dir.join("decisions.log");
    config.decision_log.export = LogExport::Otlp;
    config.otel = OtelConfig {
        endpoint,
        protocol: protocol.into(),
        service_name: "cedar-pdp-logs-test".into(),
    };
    config
}

/// The value of one counter in a `/metrics` scrape.
async fn counter(server: &TestServer, name: &str) -> u64 {
    let (_, scrape) = common::http_get(server.admin_addr, "/metrics").await;
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in {scrape}"))
}

/// The log's lines after its start line.
fn log_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("decisions.log"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("{\"start\":"))
        .map(str::to_string)
        .collect()
}

const ALLOW_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const DENY_TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
const REFUSED_TRACE: &str = "6bf92f3577b34da6a3ce929d0e0e4738";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_record_reaches_a_real_logs_receiver_in_its_callers_trace() {
    let collector = Collector::default();
    let otlp = grpc_collector(&collector).await;
    // Spans go to the same receiver, so each record's span id can be
    // checked against the decision span.
    let telemetry = Arc::new(
        cedar_pdp::telemetry::init(
            LogFormat::Text,
            "warn",
            &OtelConfig {
                endpoint: format!("http://{otlp}"),
                protocol: "grpc".into(),
                service_name: "cedar-pdp-logs-test".into(),
            },
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(dir.path().join("signing.pem"), key.serialize_pem()).unwrap();
    let mut config = exporting_config(dir.path(), format!("http://{otlp}"), "grpc");
    config.decision_log.signing_key = dir.path().join("signing.pem");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let allow = client
        .authorize(traced(
            request(("User", "alice"), ("Action", "read"), ("Doc", "d")),
            ALLOW_TRACE,
        ))
        .await
        .unwrap()
        .into_inner();
    let deny = client
        .authorize(traced(
            request(("User", "bob"), ("Action", "read"), ("Doc", "d")),
            DENY_TRACE,
        ))
        .await
        .unwrap()
        .into_inner();
    let refused = client
        .authorize(traced(
            request(("not a type", "x"), ("Action", "read"), ("Doc", "d")),
            REFUSED_TRACE,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let records = common::eventually("three exported records", Duration::from_secs(20), || {
        let collector = collector.clone();
        async move {
            let records = collector.events("cedar.decision");
            (records.len() >= 3).then_some(records)
        }
    })
    .await;
    let spans = common::eventually("the decision spans", Duration::from_secs(20), || {
        let telemetry = telemetry.clone();
        let collector = collector.clone();
        async move {
            tokio::task::spawn_blocking(move || telemetry.flush())
                .await
                .unwrap();
            let spans = collector.spans.lock().unwrap().clone();
            let n = spans.iter().filter(|s| s.name == "cedar.authorize").count();
            (n >= 3).then_some(spans)
        }
    })
    .await;
    let in_trace = |trace: &str| {
        let found: Vec<_> = records
            .iter()
            .filter(|r| hex(&r.record.trace_id) == trace)
            .collect();
        assert_eq!(found.len(), 1, "one record in trace {trace}: {records:?}");
        found[0].clone()
    };
    let span_of = |trace: &str| {
        spans
            .iter()
            .find(|s| s.name == "cedar.authorize" && hex(&s.trace_id) == trace)
            .unwrap_or_else(|| panic!("no decision span in trace {trace}"))
            .clone()
    };

    for (trace, response, decision, principal) in [
        (ALLOW_TRACE, &allow, "allow", "User::\"alice\""),
        (DENY_TRACE, &deny, "deny", "User::\"bob\""),
    ] {
        let got = in_trace(trace);
        let line: serde_json::Value = serde_json::from_str(&body(&got.record)).unwrap();
        assert_eq!(line["decision_id"], response.decision_id.as_str());
        assert_eq!(line["decision"], decision);
        let at = attrs(&got.record.attributes);
        assert_eq!(at["cedar.decision_id"], response.decision_id);
        assert_eq!(at["cedar.decision"], decision);
        assert_eq!(at["cedar.principal"], principal);
        assert_eq!(at["cedar.action"], "Action::\"read\"");
        assert_eq!(at["cedar.resource"], "Doc::\"d\"");
        assert_eq!(at["cedar.policy_revision"], response.policy_revision);
        assert_eq!(at["cedar.seq"], line["seq"].to_string());
        assert_eq!(at["cedar.hash"], line["hash"].as_str().unwrap());
        assert_eq!(got.record.severity_text, "INFO");
        assert_eq!(got.resource["service.name"], "cedar-pdp-logs-test");
        // The span id is the decision span's, in the caller's trace.
        let span = span_of(trace);
        assert_eq!(got.record.span_id, span.span_id);
        assert_eq!(hex(&got.record.span_id), line["span_id"].as_str().unwrap());
        assert!(got.record.time_unix_nano > 0, "the record's own timestamp");
    }
    // A refused request is recorded, so it is exported too.
    let got = in_trace(REFUSED_TRACE);
    let line: serde_json::Value = serde_json::from_str(&body(&got.record)).unwrap();
    let at = attrs(&got.record.attributes);
    assert_eq!(line["decision"], "deny");
    assert_eq!(at["cedar.decision"], "deny");
    assert_eq!(
        at["cedar.decision_id"],
        line["decision_id"].as_str().unwrap()
    );
    assert_eq!(
        at["cedar.error.reason"],
        line["error"]["reason"].as_str().unwrap()
    );
    assert_eq!(got.record.severity_text, "WARN");
    assert_eq!(got.record.span_id, span_of(REFUSED_TRACE).span_id);

    drop(client);
    server.stop().await.unwrap();
    // The shutdown checkpoint is shipped on the way out: the chain's head
    // is anchored off the box.
    let checkpoint = common::eventually("the shutdown checkpoint", Duration::from_secs(20), || {
        let collector = collector.clone();
        async move { collector.events("cedar.checkpoint").pop() }
    })
    .await;
    let lines = log_lines(dir.path());
    let last: serde_json::Value = serde_json::from_str(&lines[lines.len() - 2]).unwrap();
    let cp = attrs(&checkpoint.record.attributes);
    assert_eq!(cp["cedar.seq"], "3");
    assert_eq!(cp["cedar.hash"], last["hash"].as_str().unwrap());
    // Every body is a line of the log, byte for byte, and each record was
    // shipped once.
    let decisions = collector.events("cedar.decision");
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    for got in decisions.iter().chain([&checkpoint]) {
        let b = body(&got.record);
        assert!(lines.contains(&b), "{b} is not a line of the log");
    }
    assert_eq!(lines.last(), Some(&body(&checkpoint.record)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_export_over_http_protobuf() {
    let collector = Collector::default();
    let sink = collector.clone();
    let app = axum::Router::new().route(
        "/v1/logs",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.push_logs(ExportLogsServiceRequest::decode(body).unwrap());
                Bytes::new()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let config = exporting_config(dir.path(), format!("http://{addr}"), "http/protobuf");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let allow = client
        .authorize(traced(
            request(("User", "alice"), ("Action", "read"), ("Doc", "d")),
            ALLOW_TRACE,
        ))
        .await
        .unwrap()
        .into_inner();
    let got = common::eventually("a record over HTTP", Duration::from_secs(20), || {
        let collector = collector.clone();
        async move { collector.events("cedar.decision").pop() }
    })
    .await;
    assert_eq!(hex(&got.record.trace_id), ALLOW_TRACE);
    let at = attrs(&got.record.attributes);
    assert_eq!(at["cedar.decision_id"], allow.decision_id);
    assert_eq!(at["cedar.decision"], "allow");
    let line: serde_json::Value = serde_json::from_str(&body(&got.record)).unwrap();
    assert_eq!(line["decision_id"], allow.decision_id.as_str());
    // The file's start line, then the record.
    assert_eq!(
        counter(&server, "cedar_pdp_decision_log_exported_total").await,
        2
    );
    drop(client);
    server.stop().await.unwrap();
}

/// A collector that accepts connections and never answers.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_collector_costs_counted_drops_never_decisions() {
    let addr = black_hole().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = exporting_config(dir.path(), format!("http://{addr}"), "grpc");
    config.decision_log.export_queue_capacity = 2;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    const N: u64 = 30;
    for i in 0..N {
        let call = client.authorize(request(
            ("User", "alice"),
            ("Action", "read"),
            ("Doc", &format!("d{i}")),
        ));
        let answer = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("a stuck collector never holds a decision")
            .unwrap()
            .into_inner();
        assert_eq!(answer.decision(), cedar_pdp::grpc::proto::Decision::Allow);
    }
    // At most two lines queued, two records in the processor and one in
    // hand; every other is dropped, and counted.
    let dropped = common::eventually("counted drops", Duration::from_secs(20), || {
        let server = &server;
        async move {
            let n = counter(server, "cedar_pdp_decision_log_export_dropped_total").await;
            (n >= N - 5).then_some(n)
        }
    })
    .await;
    assert!(dropped <= N, "{dropped}");
    assert_eq!(
        counter(&server, "cedar_pdp_decision_log_dropped_total").await,
        0,
        "the log itself loses nothing"
    );
    drop(client);
    // The export's flush is bounded: the stop does not wait for the collector.
    let started = Instant::now();
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        log_lines(dir.path()).len() as u64,
        N,
        "every record is in the file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_counts_failed_exports() {
    // A port nobody listens on: connections are refused.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = exporting_config(dir.path(), format!("http://{addr}"), "grpc");
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    for i in 0..5 {
        let answer = client
            .authorize(request(
                ("User", "alice"),
                ("Action", "read"),
                ("Doc", &format!("d{i}")),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.decision(), cedar_pdp::grpc::proto::Decision::Allow);
    }
    common::eventually("counted failures", Duration::from_secs(30), || {
        let server = &server;
        async move {
            // The file's start line and the five records.
            let n = counter(server, "cedar_pdp_decision_log_export_failed_total").await;
            (n == 6).then_some(())
        }
    })
    .await;
    assert_eq!(
        counter(&server, "cedar_pdp_decision_log_exported_total").await,
        0
    );
    drop(client);
    server.stop().await.unwrap();
    assert_eq!(log_lines(dir.path()).len(), 5);
}

/// The real binary, configured by file: `serve` builds the exporter inside
/// its runtime, sends records where `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` says
/// (over `[otel] endpoint`, which spans still use), each in the caller's
/// trace, and the final checkpoint on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_ships_records_and_its_last_checkpoint() {
    let collector = Collector::default();
    let otlp = grpc_collector(&collector).await;
    let work = tempfile::tempdir().unwrap();
    let policies = work.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("p.cedar"),
        "@id(\"allow-alice\")\npermit (principal == User::\"alice\", action, resource);\n",
    )
    .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let key_path = work.path().join("signing.pem");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let log = work.path().join("decisions.log");
    // A port nobody listens on.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "policies = \"{}\"\nadmin_listen = \"\"\n\
         [decision_log]\nenabled = true\nsink = \"file\"\npath = \"{}\"\nsigning_key = \"{}\"\nexport = \"otlp\"\n\
         [otel]\nendpoint = \"http://{nobody}\"\nprotocol = \"grpc\"\nservice_name = \"pdp-binary\"\n",
        policies.display(),
        log.display(),
        key_path.display(),
    );
    let mut served = common::binary::Served::start_with_config_env(
        work.path(),
        &config,
        &[(
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            &format!("http://{otlp}"),
        )],
        Duration::from_secs(30),
    )
    .await;
    let mut client = cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient::connect(format!(
        "http://{}",
        served.addr
    ))
    .await
    .unwrap();
    let allow = client
        .authorize(traced(
            request(("User", "alice"), ("Action", "read"), ("Doc", "d")),
            ALLOW_TRACE,
        ))
        .await
        .unwrap()
        .into_inner();
    let got = common::eventually("the binary's record", Duration::from_secs(20), || {
        let collector = collector.clone();
        async move { collector.events("cedar.decision").pop() }
    })
    .await;
    assert_eq!(hex(&got.record.trace_id), ALLOW_TRACE);
    assert_eq!(
        attrs(&got.record.attributes)["cedar.decision_id"],
        allow.decision_id
    );
    assert_eq!(got.resource["service.name"], "pdp-binary");
    drop(client);
    served.send_sigterm();
    let status = served.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}:\n{}", served.log());
    let checkpoint = common::eventually(
        "the binary's last checkpoint",
        Duration::from_secs(10),
        || {
            let collector = collector.clone();
            async move { collector.events("cedar.checkpoint").pop() }
        },
    )
    .await;
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.last(), Some(&body(&checkpoint.record)));
    // The file's start line, then the record.
    assert!(lines[0].starts_with("{\"start\":"), "{}", lines[0]);
    assert_eq!(lines.get(1), Some(&body(&got.record)));
}
