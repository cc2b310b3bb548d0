//! `AuthorizeStream` over a real socket: ordered answers, an invalid item
//! denied without ending the stream, reloads seen mid-stream, and load
//! shedding while a stream holds the only in-flight slot.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::time::Duration;

use cedar_pdp::grpc::proto::{AuthorizeResponse, Decision};
use common::{TestServer, eventually, request, test_config, wait_for_generation, write_atomic};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

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

#[tokio::test]
async fn calls_beyond_max_in_flight_are_shed_with_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICIES).unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_in_flight = 1;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    // An open stream holds the only slot.
    let (tx, rx) = mpsc::channel(1);
    let mut answers = client
        .authorize_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(read("alice", "s")).await.unwrap();
    assert_eq!(next(&mut answers).await.decision, Decision::Allow as i32);

    let err = client.authorize(read("alice", "u")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("limits.max_in_flight"),
        "{}",
        err.message()
    );

    // Closing the stream frees the slot.
    drop(tx);
    drop(answers);
    eventually("the slot is free again", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { client.authorize(read("alice", "u")).await.ok() }
    })
    .await;
}
