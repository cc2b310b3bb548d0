//! Every outcome leaves exactly one record, whatever the front-end: for each
//! of `Authorize`, `BatchAuthorize` items, `AuthorizeStream` items and
//! ext_authz `Check`, a valid request, an invalid one, one shed for overload
//! and one past its deadline each get one decision record (a refusal has
//! `decision: deny` and an `error` with its stable reason), and the same
//! reason in `cedar_pdp_request_errors_total`.
//!
//! The decision log writes into a full named pipe, so calls that need log
//! room wait for as long as the test wants: that is how a call is held in
//! flight (for overload) or past its deadline, through the public API alone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use cedar_pdp::config::Config;
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::{self, AuthorizeRequest, BatchAuthorizeRequest, Decision};
use common::stuck_pipe::StuckPipe;
use common::{TestServer, eventually, metric, request, test_config};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use serde_json::Value as Json;
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::Channel;

const POLICY: &str = r#"
@id("allow-alice")
permit (principal == User::"alice", action, resource);
"#;

/// Queue room for decisions, and as much again for refusals.
const QUEUE: usize = 8;

/// The server's deadline for every call.
const TIMEOUT: Duration = Duration::from_millis(400);

struct Harness {
    server: TestServer,
    client: AuthorizerClient<Channel>,
    pipe: StuckPipe,
    _dir: TempDir,
}

async fn bounded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20s"))
}

fn config(dir: &TempDir, pipe: &StuckPipe, timeout: Duration) -> Config {
    let mut config = test_config(dir.path());
    config.limits.max_in_flight = 1;
    config.limits.max_streams = 1;
    config.limits.request_timeout = timeout;
    pipe.log_into(&mut config, QUEUE);
    config.ext_authz.anonymous_principal = r#"User::"alice""#.into();
    config
}

fn alice(id: &str) -> AuthorizeRequest {
    let mut req = request(("User", "alice"), ("Action", "read"), ("Doc", "d"));
    req.request_id = id.into();
    req
}

/// Invalid: no principal.
fn invalid(id: &str) -> AuthorizeRequest {
    let mut req = alice(id);
    req.principal = None;
    req
}

fn check(id: &str, method: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            destination: Some(Peer {
                principal: "spiffe://td/ns/shop/sa/web".into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: id.into(),
                    method: method.into(),
                    path: "/".into(),
                    host: "shop".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(TIMEOUT).await
    }

    /// A server whose calls give up after `timeout`.
    async fn start_with(timeout: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
        let pipe = StuckPipe::new(dir.path());
        let server = TestServer::start_with(config(&dir, &pipe, timeout)).await;
        let client = server.client().await;
        Self {
            server,
            client,
            pipe,
            _dir: dir,
        }
    }

    async fn ext_authz(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(self.server.url())
            .await
            .unwrap()
    }

    /// Padded calls (32 KiB records: the stuck writer takes only one or two)
    /// until one waits out its deadline: from then on the decisions' room is
    /// spent and every call that needs room waits.
    async fn fill_the_queue(&mut self) {
        let pad = "x".repeat(32 * 1024);
        for i in 0..4 * QUEUE {
            let mut req = alice(&format!("fill-{i}"));
            req.context_json = format!(r#"{{"pad": "{pad}"}}"#);
            if bounded("a filling call", self.client.authorize(req))
                .await
                .is_err()
            {
                return;
            }
        }
        panic!("the decision log queue never filled");
    }

    /// Starts a call that waits for log room, holding the only in-flight
    /// slot until its deadline; returns once the server counts it.
    async fn hold(&self) -> tokio::task::JoinHandle<()> {
        let mut client = self.client.clone();
        let held = tokio::spawn(async move {
            let _ = client.authorize(alice("hold")).await;
        });
        let admin = self.server.admin_addr;
        eventually(
            "the held call in flight",
            Duration::from_secs(10),
            || async {
                (metric(admin, "cedar_pdp_inflight_requests", &[]).await >= 1.0).then_some(())
            },
        )
        .await;
        held
    }

    /// Drains the pipe and stops the server: every record, and the error
    /// and drop counters as scraped just before the stop.
    async fn finish(self) -> (Vec<Json>, HashMap<&'static str, f64>, f64) {
        let admin = self.server.admin_addr;
        let mut errors = HashMap::new();
        for reason in [
            "invalid_request",
            "overloaded",
            "too_many_streams",
            "deadline",
            "cancelled",
        ] {
            let n = metric(
                admin,
                "cedar_pdp_request_errors_total",
                &[("reason", reason)],
            )
            .await;
            errors.insert(reason, n);
        }
        let dropped = metric(admin, "cedar_pdp_decision_log_dropped_total", &[]).await;
        let drained = self.pipe.drain();
        self.server.stop().await.unwrap();
        eventually("the pipe to close", Duration::from_secs(20), || async {
            drained.is_finished().then_some(())
        })
        .await;
        let text = String::from_utf8(drained.join().unwrap()).unwrap();
        let records = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("each line is one JSON record"))
            .collect();
        (records, errors, dropped)
    }
}

/// The records of `request_id`.
fn of<'a>(records: &'a [Json], request_id: &str) -> Vec<&'a Json> {
    records
        .iter()
        .filter(|r| r["request_id"] == request_id)
        .collect()
}

/// Exactly one record for `request_id`: a decision (`reason` `None`) or a
/// refusal with `reason`.
#[track_caller]
fn one(records: &[Json], request_id: &str, reason: Option<&str>) -> Json {
    let found = of(records, request_id);
    assert_eq!(found.len(), 1, "records of `{request_id}`: {found:?}");
    let r = found[0].clone();
    match reason {
        None => assert!(r.get("error").is_none(), "{r}"),
        Some(reason) => {
            assert_eq!(r["decision"], "deny", "{r}");
            assert_eq!(r["error"]["reason"], reason, "{r}");
            assert!(!r["error"]["message"].as_str().unwrap().is_empty(), "{r}");
        }
    }
    r
}

/// Every refusal record is counted once in the metric, by reason.
#[track_caller]
fn counted(records: &[Json], errors: &HashMap<&'static str, f64>, dropped: f64) {
    assert_eq!(dropped, 0.0, "no record was dropped");
    for (reason, n) in errors {
        let logged = records
            .iter()
            .filter(|r| r["error"]["reason"] == *reason)
            .count();
        assert_eq!(
            logged as f64, *n,
            "reason `{reason}`: {logged} records, {n} counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_leave_one_record_each() {
    let mut h = Harness::start().await;
    let ok = h
        .client
        .authorize(alice("valid"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.decision(), Decision::Allow);
    let bad = h.client.authorize(invalid("invalid")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    h.fill_the_queue().await;
    let late = bounded("a held call", h.client.authorize(alice("deadline"))).await;
    assert_eq!(late.unwrap_err().code(), Code::DeadlineExceeded);
    let held = h.hold().await;
    let shed = bounded("a shed call", h.client.authorize(alice("overload"))).await;
    assert_eq!(shed.unwrap_err().code(), Code::ResourceExhausted);
    bounded("the held call", held).await.unwrap();

    let (records, errors, dropped) = h.finish().await;
    let valid = one(&records, "valid", None);
    assert_eq!(valid["decision_id"], ok.decision_id);
    let r = one(&records, "invalid", Some("invalid_request"));
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(r["error"]["message"], "`principal`: is required");
    assert_eq!(r["resource"]["id"], "d", "{r}");
    let r = one(&records, "deadline", Some("deadline"));
    assert_eq!(r["error"]["code"], "DEADLINE_EXCEEDED");
    let r = one(&records, "overload", Some("overloaded"));
    assert_eq!(r["error"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(errors["overloaded"], 1.0);
    counted(&records, &errors, dropped);
}

fn batch(ids: &[&str], make: fn(&str) -> AuthorizeRequest) -> BatchAuthorizeRequest {
    BatchAuthorizeRequest {
        requests: ids.iter().map(|id| make(id)).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_items_leave_one_record_each() {
    let mut h = Harness::start().await;
    let mixed = BatchAuthorizeRequest {
        requests: vec![alice("valid"), invalid("invalid")],
        ..Default::default()
    };
    let answers = h.client.batch_authorize(mixed).await.unwrap().into_inner();
    assert_eq!(answers.responses[0].decision(), Decision::Allow);
    let refused = &answers.responses[1];
    assert_eq!(refused.decision(), Decision::Deny);
    assert_eq!(
        refused.errors[0].message,
        "`requests[1].principal`: is required"
    );

    h.fill_the_queue().await;
    let late = bounded(
        "a held batch",
        h.client
            .batch_authorize(batch(&["deadline-0", "deadline-1"], alice)),
    )
    .await;
    assert_eq!(late.unwrap_err().code(), Code::DeadlineExceeded);
    let held = h.hold().await;
    let shed = bounded(
        "a shed batch",
        h.client
            .batch_authorize(batch(&["overload-0", "overload-1"], alice)),
    )
    .await;
    assert_eq!(shed.unwrap_err().code(), Code::ResourceExhausted);
    bounded("the held call", held).await.unwrap();

    let (records, errors, dropped) = h.finish().await;
    let valid = one(&records, "valid", None);
    assert_eq!(valid["decision_id"], answers.responses[0].decision_id);
    let r = one(&records, "invalid", Some("invalid_request"));
    assert_eq!(r["decision_id"], refused.decision_id);
    assert_eq!(
        r["error"]["message"],
        "`requests[1].principal`: is required"
    );
    for (i, id) in ["deadline-0", "deadline-1"].iter().enumerate() {
        let r = one(&records, id, Some("deadline"));
        let message = r["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("`requests[{i}]`: deadline")),
            "{message}"
        );
    }
    one(&records, "overload-0", Some("overloaded"));
    one(&records, "overload-1", Some("overloaded"));
    assert_eq!(errors["overloaded"], 2.0, "one per item");
    counted(&records, &errors, dropped);
}

type Answers = tonic::Streaming<proto::AuthorizeResponse>;

/// Opens a stream: where to send items, and where their answers come.
async fn open_stream(
    client: &mut AuthorizerClient<Channel>,
) -> (tokio::sync::mpsc::Sender<AuthorizeRequest>, Answers) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let answers = client
        .authorize_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, answers)
}

/// The stream's next answer.
async fn next(answers: &mut Answers) -> proto::AuthorizeResponse {
    bounded("an answer", answers.message())
        .await
        .unwrap()
        .expect("an answer, not the end")
}

/// The stream ends once its sender is gone.
async fn ends(tx: tokio::sync::mpsc::Sender<AuthorizeRequest>, answers: &mut Answers) {
    drop(tx);
    let end = bounded("the end", answers.message()).await.unwrap();
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_items_leave_one_record_each() {
    let mut h = Harness::start().await;
    let (tx, mut answers) = open_stream(&mut h.client).await;
    tx.send(alice("valid")).await.unwrap();
    tx.send(invalid("invalid")).await.unwrap();
    let ok = next(&mut answers).await;
    assert_eq!(ok.decision(), Decision::Allow);
    let refused = next(&mut answers).await;
    assert_eq!(refused.decision(), Decision::Deny);
    assert_eq!(
        refused.errors[0].message,
        "InvalidArgument: `principal`: is required"
    );
    ends(tx, &mut answers).await;

    h.fill_the_queue().await;
    // A new stream holds the only stream slot; its item waits out its deadline.
    let (tx, mut answers) = open_stream(&mut h.client).await;
    tx.send(alice("deadline")).await.unwrap();
    let late = next(&mut answers).await;
    assert_eq!(late.decision(), Decision::Deny);
    assert!(
        late.errors[0]
            .message
            .starts_with("DeadlineExceeded: deadline"),
        "{late:?}"
    );
    // While it is open, another stream is shed.
    let (_tx2, rx2) = tokio::sync::mpsc::channel::<AuthorizeRequest>(1);
    let shed = bounded(
        "a shed stream",
        h.client
            .authorize_stream(tokio_stream::wrappers::ReceiverStream::new(rx2)),
    )
    .await;
    assert_eq!(shed.unwrap_err().code(), Code::ResourceExhausted);
    ends(tx, &mut answers).await;

    let (records, errors, dropped) = h.finish().await;
    let valid = one(&records, "valid", None);
    assert_eq!(valid["decision_id"], ok.decision_id);
    let r = one(&records, "invalid", Some("invalid_request"));
    assert_eq!(r["decision_id"], refused.decision_id);
    let r = one(&records, "deadline", Some("deadline"));
    assert_eq!(r["decision_id"], late.decision_id);
    // The shed stream never sent an item: one record with empty uids.
    let shed: Vec<_> = records
        .iter()
        .filter(|r| r["error"]["reason"] == "too_many_streams")
        .collect();
    assert_eq!(shed.len(), 1, "{shed:?}");
    assert_eq!(shed[0]["principal"]["type"], "");
    assert_eq!(errors["too_many_streams"], 1.0);
    assert_eq!(errors["overloaded"], 0.0);
    counted(&records, &errors, dropped);
}

fn decision_id(resp: &CheckResponse) -> String {
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
        panic!("expected a denied response: {resp:?}");
    };
    d.headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-cedar-decision-id")
        .map(|h| h.value.clone())
        .expect("a denied response names its decision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_checks_leave_one_record_each() {
    let mut h = Harness::start().await;
    let mut envoy = h.ext_authz().await;
    let ok = envoy
        .check(check("valid", "GET"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status.as_ref().unwrap().code, Code::Ok as i32);
    let bad = envoy
        .check(check("invalid", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        bad.status.as_ref().unwrap().code,
        Code::PermissionDenied as i32
    );
    let bad_id = decision_id(&bad);

    h.fill_the_queue().await;
    let late = bounded("a held check", envoy.check(check("deadline", "GET")))
        .await
        .unwrap()
        .into_inner();
    let late_id = decision_id(&late);
    let held = h.hold().await;
    let shed = bounded("a shed check", envoy.check(check("overload", "GET")))
        .await
        .unwrap()
        .into_inner();
    let shed_id = decision_id(&shed);
    bounded("the held call", held).await.unwrap();

    let (records, errors, dropped) = h.finish().await;
    one(&records, "valid", None);
    let r = one(&records, "invalid", Some("invalid_request"));
    assert_eq!(r["decision_id"], bad_id);
    assert_eq!(
        r["error"]["message"],
        "`attributes.request.http.method`: is required"
    );
    let r = one(&records, "deadline", Some("deadline"));
    assert_eq!(r["decision_id"], late_id);
    let r = one(&records, "overload", Some("overloaded"));
    assert_eq!(r["decision_id"], shed_id);
    assert_eq!(errors["overloaded"], 1.0);
    counted(&records, &errors, dropped);
}

/// A call whose client goes away while it waits is recorded as cancelled,
/// once, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_by_its_client_is_recorded_as_cancelled() {
    // Long enough that the client surely leaves before the server gives up.
    let mut h = Harness::start_with(Duration::from_secs(5)).await;
    h.fill_the_queue().await;
    let mut client = h.client.clone();
    let mut req = tonic::Request::new(alice("gone"));
    req.set_timeout(Duration::from_secs(30));
    let waiting = tokio::spawn(async move { client.authorize(req).await });
    let admin = h.server.admin_addr;
    eventually("the call in flight", Duration::from_secs(10), || async {
        (metric(admin, "cedar_pdp_inflight_requests", &[]).await >= 1.0).then_some(())
    })
    .await;
    waiting.abort();
    eventually(
        "the cancellation counted",
        Duration::from_secs(10),
        || async {
            let n = metric(
                admin,
                "cedar_pdp_request_errors_total",
                &[("reason", "cancelled")],
            )
            .await;
            (n >= 1.0).then_some(())
        },
    )
    .await;
    let (records, errors, dropped) = h.finish().await;
    let r = one(&records, "gone", Some("cancelled"));
    assert_eq!(r["error"]["code"], "CANCELLED");
    assert_eq!(errors["cancelled"], 1.0);
    counted(&records, &errors, dropped);
}
