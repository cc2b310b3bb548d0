//! `AuthorizeStream` over a real socket: ordered answers, an invalid item
//! denied without ending the stream, reloads seen mid-stream, and the
//! stream limits: their own cap, idle timeout and age, so idle streams never
//! lock out unary calls; and the HTTP/2 limits of every connection.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::time::Duration;

use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::{AuthorizeResponse, Decision};
use common::{TestServer, eventually, request, test_config, wait_for_generation, write_atomic};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const POLICIES: &str = r#"
@id("alice-reads")
permit (principal == User::"alice", action == Action::"read", resource);
"#;

fn read(user: &str, id: &str) -> cedar_pdp::grpc::proto::AuthorizeRequest {
    let mut req = request(("User", user), ("Action", "read"), ("Doc", "d"));
    req.request_id = id.into();
    req
}

async fn next(stream: &mut tonic::Streaming<AuthorizeResponse>) -> AuthorizeResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an answer within 10s")
        .unwrap()
        .expect("the stream is open")
}

#[tokio::test]
async fn answers_in_order_and_survives_an_invalid_item() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let (tx, rx) = mpsc::channel(8);
    let mut answers = client
        .authorize_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(read("alice", "1")).await.unwrap();
    let mut invalid = read("alice", "2");
    invalid.principal.as_mut().unwrap().r#type = "not a type".into();
    tx.send(invalid).await.unwrap();
    tx.send(read("bob", "3")).await.unwrap();

    let first = next(&mut answers).await;
    assert_eq!(
        (first.request_id.as_str(), first.decision),
        ("1", Decision::Allow as i32)
    );
    assert_eq!(first.determining_policies, ["alice-reads"]);
    let second = next(&mut answers).await;
    assert_eq!(second.request_id, "2");
    assert_eq!(second.decision, Decision::Deny as i32);
    assert!(
        second.errors[0].message.contains("principal.type"),
        "{:?}",
        second.errors
    );
    let third = next(&mut answers).await;
    assert_eq!(
        (third.request_id.as_str(), third.decision),
        ("3", Decision::Deny as i32)
    );

    // A reload during the stream applies to the next request on it.
    let before = first.policy_revision.clone();
    write_atomic(
        dir.path(),
        "p.cedar",
        &POLICIES.replace("User::\"alice\"", "User::\"bob\""),
    );
    wait_for_generation(&mut client, 1).await;
    tx.send(read("bob", "4")).await.unwrap();
    let fourth = next(&mut answers).await;
    assert_eq!(fourth.decision, Decision::Allow as i32);
    assert_ne!(fourth.policy_revision, before);

    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_none(), "the stream ends when the client's side does");
}

type Sender = mpsc::Sender<cedar_pdp::grpc::proto::AuthorizeRequest>;

/// Opens a stream and has one item answered, so it is surely admitted.
async fn open(
    client: &mut AuthorizerClient<Channel>,
    id: &str,
) -> (Sender, Streaming<AuthorizeResponse>) {
    let (tx, rx) = mpsc::channel(4);
    let mut answers = client
        .authorize_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(read("alice", id)).await.unwrap();
    assert_eq!(next(&mut answers).await.decision, Decision::Allow as i32);
    (tx, answers)
}

async fn errors_for(server: &TestServer, reason: &str) -> f64 {
    common::metric(
        server.admin_addr,
        "cedar_pdp_request_errors_total",
        &[("reason", reason)],
    )
    .await
}

/// The status a stream ends with, within 10s.
async fn ended(answers: &mut Streaming<AuthorizeResponse>) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("the stream ends within 10s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended with OK, not a status"),
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn idle_streams_beyond_max_streams_do_not_lock_out_unary_calls() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_in_flight = 1;
    config.limits.max_streams = 3;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    // More idle streams than the cap: the ones over it are refused.
    let mut open_streams = Vec::new();
    for i in 0..3 {
        open_streams.push(open(&mut client, &format!("s{i}")).await);
    }
    for _ in 0..2 {
        let (_tx, rx) = mpsc::channel(1);
        let err = client
            .authorize_stream(ReceiverStream::new(rx))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(
            err.message().contains("limits.max_streams"),
            "{}",
            err.message()
        );
    }
    assert_eq!(errors_for(&server, "too_many_streams").await, 2.0);

    // The only in-flight slot is free while the streams wait: unary calls
    // (Envoy's checks) are answered, and so are the streams' next items.
    for i in 0..5 {
        let resp = client
            .authorize(read("alice", &format!("u{i}")))
            .await
            .unwrap();
        assert_eq!(resp.into_inner().decision, Decision::Allow as i32);
    }
    for (tx, answers) in &mut open_streams {
        tx.send(read("alice", "again")).await.unwrap();
        assert_eq!(next(answers).await.decision, Decision::Allow as i32);
    }
    assert_eq!(errors_for(&server, "overloaded").await, 0.0);

    // Closing a stream frees its slot.
    open_streams.pop();
    eventually(
        "a stream slot is free again",
        Duration::from_secs(10),
        || {
            let mut client = client.clone();
            async move {
                let (tx, rx) = mpsc::channel(1);
                let mut answers = client
                    .authorize_stream(ReceiverStream::new(rx))
                    .await
                    .ok()?
                    .into_inner();
                tx.send(read("alice", "late")).await.ok()?;
                Some(next(&mut answers).await)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn an_idle_stream_is_closed_after_the_idle_timeout_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_streams = 1;
    config.limits.stream_idle_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let (_tx, mut answers) = open(&mut client, "first").await;
    let status = ended(&mut answers).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("limits.stream_idle_timeout"),
        "{}",
        status.message()
    );
    assert_eq!(errors_for(&server, "stream_idle").await, 1.0);
    // Its slot is free: the only one.
    let (_tx, _answers) = eventually("the slot is free", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let (tx, rx) = mpsc::channel(4);
            let answers = client
                .authorize_stream(ReceiverStream::new(rx))
                .await
                .ok()?;
            Some((tx, answers))
        }
    })
    .await;
}

#[tokio::test]
async fn a_busy_stream_is_closed_at_its_maximum_age() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    let mut config = test_config(dir.path());
    config.limits.stream_max_age = Duration::from_millis(500);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let (tx, mut answers) = open(&mut client, "first").await;
    // Keep it busy: an item whenever an answer comes, until the server ends it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream outlived its age"
        );
        if tx.send(read("alice", "busy")).await.is_err() {
            break ended(&mut answers).await;
        }
        match tokio::time::timeout(Duration::from_secs(10), answers.message()).await {
            Ok(Ok(Some(answer))) => assert_eq!(answer.decision, Decision::Allow as i32),
            Ok(Ok(None)) => panic!("the stream ended with OK, not a status"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("no answer within 10s"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("limits.stream_max_age"),
        "{}",
        status.message()
    );
    assert_eq!(errors_for(&server, "stream_max_age").await, 1.0);
}

#[tokio::test]
async fn one_connection_may_open_only_max_concurrent_streams_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_concurrent_streams_per_connection = 1;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    // One open stream takes the connection's only HTTP/2 stream: another
    // call on the same connection waits for it (HTTP/2 flow control, not an
    // error), while a second connection is served.
    let (tx, answers) = open(&mut client, "held").await;
    let waiting = {
        let mut client = client.clone();
        tokio::spawn(async move { client.authorize(read("alice", "queued")).await })
    };
    let mut other = server.client().await;
    other.authorize(read("alice", "other")).await.unwrap();
    assert!(
        !waiting.is_finished(),
        "the second call on the connection did not wait"
    );
    drop(tx);
    drop(answers);
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting call is served once the stream closes")
        .unwrap()
        .unwrap();
    assert_eq!(answer.into_inner().decision, Decision::Allow as i32);
}

#[tokio::test]
async fn connections_are_closed_gracefully_at_max_connection_age() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_connection_age = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;

    // A raw HTTP/2 client sees the server's GOAWAY once the age passes.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (_send, connection) = h2::client::handshake(tcp).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the server closes an aged connection within 10s");
    assert!(closed.is_ok(), "a graceful close, not an error: {closed:?}");
}

/// A stream still open at SIGTERM is closed at once (`shutting_down`),
/// not held to the end of the grace, and its records are in the decision
/// log, which then drains and the server exits cleanly.
#[tokio::test]
async fn open_streams_close_at_shutdown_before_the_log_drains() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    let log = dir.path().join("decisions.log");
    let mut config = test_config(dir.path());
    config.decision_log.enabled = true;
    config.decision_log.sink = cedar_pdp::config::LogSink::File;
    config.decision_log.path = log.clone();
    // Longer than the test may take: only the shutdown can end the stream.
    config.limits.shutdown_grace = Duration::from_secs(60);
    config.limits.stream_idle_timeout = Duration::from_secs(60);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let (_tx, mut answers) = open(&mut client, "before-stop").await;

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.stop());
    let status = ended(&mut answers).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    drop((_tx, answers, client));
    let stopped = tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the server stops well before its 60s grace")
        .unwrap();
    stopped.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));

    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = common::records_in(&text);
    assert_eq!(records.len(), 2, "{text}");
    assert_eq!(records[0]["request_id"], "before-stop");
    assert_eq!(records[1]["error"]["reason"], "shutting_down");
}
