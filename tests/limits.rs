//! Every request limit at its edge, over a real loopback server: the limit
//! itself passes, one more is rejected with the right code and a message that
//! names the limit or field, and the server keeps answering afterwards. Also
//! hostile shapes (deep nests, unknown extensions, bad literals, empty type
//! names, entity cycles), load shedding and deadlines.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::time::{Duration, Instant};

use cedar_pdp::config::Config;
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::value::Value as V;
use cedar_pdp::grpc::proto::{
    self, AuthorizeRequest, AuthorizeResponse, BatchAuthorizeRequest, Decision,
};
use common::stuck_pipe::StuckPipe;
use common::{TestServer, eventually, http_get, request, test_config, uid};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message as _;
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

const POLICY: &str = r#"
@id("allow-alice")
permit (principal == User::"alice", action, resource);

@id("members")
permit (principal in Group::"members", action, resource);
"#;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn fixture() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
    dir
}

async fn start(dir: &TempDir, limits: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = test_config(dir.path());
    limits(&mut config);
    TestServer::start_with(config).await
}

/// `User::"alice"` reads `Doc::"d"`: allowed by `allow-alice`.
fn alice() -> AuthorizeRequest {
    request(("User", "alice"), ("Action", "read"), ("Doc", "d"))
}

fn value(v: V) -> proto::Value {
    proto::Value { value: Some(v) }
}

fn string(s: &str) -> proto::Value {
    value(V::StringValue(s.to_string()))
}

fn ext(f: &str, arg: &str) -> proto::Value {
    value(V::Extension(proto::ExtensionValue {
        r#fn: f.to_string(),
        arg: arg.to_string(),
    }))
}

fn record(fields: Vec<(&str, proto::Value)>) -> proto::Value {
    value(V::Record(proto::ValueRecord {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }))
}

fn set(values: Vec<proto::Value>) -> proto::Value {
    value(V::Set(proto::ValueSet { values }))
}

/// `depth` records, each `{"a": ...}`, around `1`.
fn nested_records(depth: usize) -> proto::Value {
    (0..depth).fold(value(V::LongValue(1)), |inner, _| {
        record(vec![("a", inner)])
    })
}

/// `depth` sets around `1`.
fn nested_sets(depth: usize) -> proto::Value {
    (0..depth).fold(value(V::LongValue(1)), |inner, _| set(vec![inner]))
}

fn json_records(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

fn json_sets(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn with_context(fields: Vec<(&str, proto::Value)>) -> AuthorizeRequest {
    AuthorizeRequest {
        context: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..alice()
    }
}

fn with_context_json(json: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        context_json: json.to_string(),
        ..alice()
    }
}

fn entity(t: &str, id: &str, parents: &[(&str, &str)]) -> proto::Entity {
    proto::Entity {
        uid: uid(t, id),
        attrs: Default::default(),
        parents: parents.iter().map(|(t, id)| uid(t, id).unwrap()).collect(),
        tags: Default::default(),
    }
}

/// `n` plain `User` entities.
fn users(n: usize) -> Vec<proto::Entity> {
    (0..n)
        .map(|i| entity("User", &format!("u{i}"), &[]))
        .collect()
}

fn users_json(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"uid":{{"type":"User","id":"j{i}"}},"attrs":{{}},"parents":[]}}"#))
        .collect();
    format!("[{}]", items.join(","))
}

/// Any call, bounded so that a hang fails the test instead of stalling it.
async fn bounded<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20s"))
}

async fn authorize(
    client: &mut AuthorizerClient<Channel>,
    req: AuthorizeRequest,
) -> Result<AuthorizeResponse, Status> {
    bounded("Authorize", client.authorize(req))
        .await
        .map(tonic::Response::into_inner)
}

/// The call succeeded with `decision`.
#[track_caller]
fn assert_decision(result: Result<AuthorizeResponse, Status>, decision: Decision) {
    match result {
        Ok(resp) => assert_eq!(resp.decision(), decision, "{resp:?}"),
        Err(status) => panic!("expected {decision:?}, got {status:?}"),
    }
}

/// The call failed with `code`, its message holds every one of `needles`,
/// and (when given) its bad-request detail names `field`.
#[track_caller]
fn assert_rejected<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    field: Option<&str>,
    needles: &[&str],
) -> Status {
    let status = match result {
        Ok(resp) => panic!("expected {code:?}, got {resp:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "message `{}` does not contain `{needle}`",
            status.message()
        );
    }
    if let Some(field) = field {
        assert_eq!(field_of(&status), field, "{status:?}");
    }
    status
}

/// The field of the status's first bad-request violation.
#[track_caller]
fn field_of(status: &Status) -> String {
    status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no bad-request details on {status:?}"))
        .field_violations[0]
        .field
        .clone()
}

/// A normal call still gets its answer.
async fn assert_still_answers(client: &mut AuthorizerClient<Channel>) {
    assert_decision(authorize(client, alice()).await, Decision::Allow);
}

/// The `cedar_pdp_inflight_requests` gauge, scraped from `/metrics`.
async fn inflight(server: &TestServer) -> Option<i64> {
    let (status, body) = http_get(server.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix("cedar_pdp_inflight_requests "))
        .and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------
// Message size
// ---------------------------------------------------------------------------

/// `alice()` padded (in `context_json`) to exactly `len` encoded bytes.
fn encoded_exactly(len: usize) -> AuthorizeRequest {
    let padded = |k: usize| with_context_json(&format!(r#"{{"s":"{}"}}"#, "x".repeat(k)));
    let mut k = len.saturating_sub(padded(0).encoded_len());
    while padded(k).encoded_len() > len {
        k -= 1;
    }
    let req = padded(k);
    assert_eq!(req.encoded_len(), len, "cannot pad to exactly {len} bytes");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_bytes_at_the_edge() {
    let dir = fixture();
    let limit = 20 * 1024;
    let server = start(&dir, |c| {
        c.limits.max_message_bytes = limit;
        c.limits.max_string_bytes = 1024 * 1024;
        c.limits.max_context_bytes = 1024 * 1024;
    })
    .await;
    let mut client = server.client().await;

    assert_decision(
        authorize(&mut client, encoded_exactly(limit)).await,
        Decision::Allow,
    );
    // tonic rejects the frame before decoding it, with OUT_OF_RANGE.
    assert_rejected(
        authorize(&mut client, encoded_exactly(limit + 1)).await,
        Code::OutOfRange,
        None,
        &[
            &format!("found {} bytes", limit + 1),
            &format!("the limit is: {limit} bytes"),
        ],
    );
    // The same connection still works.
    assert_still_answers(&mut client).await;

    // A batch is bounded the same way.
    let batch = BatchAuthorizeRequest {
        requests: vec![encoded_exactly(limit / 2), encoded_exactly(limit / 2)],
        ..Default::default()
    };
    assert_rejected(
        bounded("BatchAuthorize", client.batch_authorize(batch)).await,
        Code::OutOfRange,
        None,
        &["message length too large"],
    );
    assert_still_answers(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_string_is_rejected_cleanly() {
    let dir = fixture();
    let ten_mb = "x".repeat(10 * 1024 * 1024);

    // Default limits: the 4 MiB message limit stops it before decoding.
    let server = start(&dir, |_| {}).await;
    let mut client = server.client().await;
    let started = Instant::now();
    assert_rejected(
        authorize(&mut client, with_context(vec![("s", string(&ten_mb))])).await,
        Code::OutOfRange,
        None,
        &["message length too large", "the limit is: 4194304 bytes"],
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_still_answers(&mut client).await;

    // A message limit above it: the string limit names the field.
    let server = start(&dir, |c| c.limits.max_message_bytes = 16 * 1024 * 1024).await;
    let mut client = server.client().await;
    assert_rejected(
        authorize(&mut client, with_context(vec![("s", string(&ten_mb))])).await,
        Code::InvalidArgument,
        Some("context.s"),
        &["10485760 bytes", "`limits.max_string_bytes`"],
    );
    assert_rejected(
        authorize(
            &mut client,
            with_context_json(&format!(r#"{{"s":"{ten_mb}"}}"#)),
        )
        .await,
        Code::InvalidArgument,
        Some("context_json"),
        &["`limits.max_context_bytes`"],
    );
    assert_still_answers(&mut client).await;
}

// ---------------------------------------------------------------------------
// Strings, entities, depth, context size, batch size
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_bytes_at_the_edge() {
    let dir = fixture();
    let server = start(&dir, |c| c.limits.max_string_bytes = 32).await;
    let mut client = server.client().await;
    let ok = "x".repeat(32);
    let long = "x".repeat(33);

    // Exactly the limit passes, wherever the string is.
    assert_decision(
        authorize(&mut client, with_context(vec![("s", string(&ok))])).await,
        Decision::Allow,
    );
    assert_decision(
        authorize(
            &mut client,
            with_context_json(&format!(r#"{{"s":"{ok}"}}"#)),
        )
        .await,
        Decision::Allow,
    );
    assert_decision(
        authorize(
            &mut client,
            request(("User", ok.as_str()), ("Action", "read"), ("Doc", "d")),
        )
        .await,
        Decision::Deny,
    );

    let mut with_attr = alice();
    with_attr.entities = vec![proto::Entity {
        attrs: [("name".to_string(), string(&long))].into(),
        ..entity("User", "e", &[])
    }];
    let long_type = format!("T{long}");
    let cases: Vec<(AuthorizeRequest, String)> = vec![
        (with_context(vec![("s", string(&long))]), "context.s".into()),
        (
            with_context_json(&format!(r#"{{"s":"{long}"}}"#)),
            "context.s".into(),
        ),
        (
            with_context(vec![("r", record(vec![("inner", string(&long))]))]),
            "context.r.inner".into(),
        ),
        (
            with_context(vec![("l", set(vec![string("a"), string(&long)]))]),
            "context.l[1]".into(),
        ),
        (
            with_context(vec![(long.as_str(), string("v"))]),
            format!("context.{long}"),
        ),
        (
            request(("User", long.as_str()), ("Action", "read"), ("Doc", "d")),
            "principal".into(),
        ),
        (
            request(("User", "alice"), ("Action", long.as_str()), ("Doc", "d")),
            "action".into(),
        ),
        (
            request(
                ("User", "alice"),
                ("Action", "read"),
                (long_type.as_str(), "d"),
            ),
            "resource".into(),
        ),
        (with_attr, "entities[0].attrs.name".into()),
        (
            AuthorizeRequest {
                request_id: long.clone(),
                ..alice()
            },
            "request_id".into(),
        ),
    ];
    for (req, field) in cases {
        let status = assert_rejected(
            authorize(&mut client, req).await,
            Code::InvalidArgument,
            Some(&field),
            &["the limit is 32 (`limits.max_string_bytes`)"],
        );
        assert!(
            status.message().starts_with(&format!("`{field}`")),
            "{status:?}"
        );
    }
    assert_still_answers(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_per_request_at_the_edge() {
    let dir = fixture();
    let server = start(&dir, |c| c.limits.max_entities_per_request = 3).await;
    let mut client = server.client().await;

    let with = |typed: usize, json: usize| AuthorizeRequest {
        entities: users(typed),
        entities_json: if json == 0 {
            String::new()
        } else {
            users_json(json)
        },
        ..alice()
    };
    for (typed, json) in [(3, 0), (0, 3), (2, 1)] {
        assert_decision(
            authorize(&mut client, with(typed, json)).await,
            Decision::Allow,
        );
    }
    for (typed, json) in [(4, 0), (0, 4), (2, 2)] {
        assert_rejected(
            authorize(&mut client, with(typed, json)).await,
            Code::InvalidArgument,
            Some("entities"),
            &["4 entities; the limit is 3 (`limits.max_entities_per_request`)"],
        );
    }

    // Batches: shared entities alone are bounded for the whole call...
    let member = || request(("User", "m"), ("Action", "read"), ("Doc", "d"));
    let shared = |n: usize| {
        let mut entities = users(n - 1);
        entities.push(entity("User", "m", &[("Group", "members")]));
        entities
    };
    let ok = bounded(
        "BatchAuthorize",
        client.batch_authorize(BatchAuthorizeRequest {
            requests: vec![member(), alice()],
            entities: shared(3),
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    // The shared membership reached evaluation.
    assert_eq!(ok.responses[0].decision(), Decision::Allow, "{ok:?}");
    assert_eq!(ok.responses[0].determining_policies, ["members"]);
    assert_eq!(ok.responses[1].decision(), Decision::Allow, "{ok:?}");

    assert_rejected(
        bounded(
            "BatchAuthorize",
            client.batch_authorize(BatchAuthorizeRequest {
                requests: vec![member()],
                entities: shared(4),
                ..Default::default()
            }),
        )
        .await,
        Code::InvalidArgument,
        Some("entities"),
        &["4 shared entities; the limit is 3 (`limits.max_entities_per_request`)"],
    );

    // ...and shared plus an item's own count together, per item.
    let own = |n: usize| AuthorizeRequest {
        entities: (0..n)
            .map(|i| entity("User", &format!("own{i}"), &[]))
            .collect(),
        ..member()
    };
    let mixed = bounded(
        "BatchAuthorize",
        client.batch_authorize(BatchAuthorizeRequest {
            requests: vec![own(1), own(2)],
            entities: shared(2),
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(mixed.responses[0].decision(), Decision::Allow, "{mixed:?}");
    let denied = &mixed.responses[1];
    assert_eq!(denied.decision(), Decision::Deny, "{mixed:?}");
    assert!(denied.determining_policies.is_empty());
    let message = &denied.errors[0].message;
    assert!(
        message.starts_with("`requests[1].entities`")
            && message.contains("4 entities; the limit is 3 (`limits.max_entities_per_request`)"),
        "{message}"
    );
    assert_still_answers(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_depth_at_the_edge() {
    let dir = fixture();
    let server = start(&dir, |c| c.limits.max_context_depth = 4).await;
    let mut client = server.client().await;

    // Records, sets, and the two alternating, typed and as JSON.
    let mixed = |depth: usize| {
        (0..depth).fold(value(V::LongValue(1)), |inner, i| {
            if i % 2 == 0 {
                set(vec![inner])
            } else {
                record(vec![("a", inner)])
            }
        })
    };
    type Build = Box<dyn Fn(usize) -> AuthorizeRequest>;
    let shapes: Vec<(&str, Build)> = vec![
        (
            "typed records",
            Box::new(|d| with_context(vec![("x", nested_records(d))])),
        ),
        (
            "typed sets",
            Box::new(|d| with_context(vec![("x", nested_sets(d))])),
        ),
        (
            "typed mixed",
            Box::new(move |d| with_context(vec![("x", mixed(d))])),
        ),
        (
            "json records",
            Box::new(|d| with_context_json(&format!(r#"{{"x":{}}}"#, json_records(d)))),
        ),
        (
            "json sets",
            Box::new(|d| with_context_json(&format!(r#"{{"x":{}}}"#, json_sets(d)))),
        ),
        (
            "entity attribute",
            Box::new(|d| AuthorizeRequest {
                entities: vec![proto::Entity {
                    attrs: [("x".to_string(), nested_records(d))].into(),
                    ..entity("User", "e", &[])
                }],
                ..alice()
            }),
        ),
        (
            "entity tag",
            Box::new(|d| AuthorizeRequest {
                entities: vec![proto::Entity {
                    tags: [("x".to_string(), nested_sets(d))].into(),
                    ..entity("User", "e", &[])
                }],
                ..alice()
            }),
        ),
    ];
    for (shape, build) in &shapes {
        let at_limit = authorize(&mut client, build(4)).await;
        assert!(
            at_limit
                .as_ref()
                .is_ok_and(|r| r.decision() == Decision::Allow),
            "{shape}: depth 4 should pass: {at_limit:?}"
        );
        let status = assert_rejected(
            authorize(&mut client, build(5)).await,
            Code::InvalidArgument,
            None,
            &["nested deeper than 4 records and sets (`limits.max_context_depth`)"],
        );
        let field = field_of(&status);
        assert!(
            field.starts_with("context.x") || field.starts_with("entities[0]."),
            "{shape}: {field}"
        );
    }
    assert_still_answers(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nests_are_rejected_without_overflowing_the_stack() {
    let dir = fixture();
    let server = start(&dir, |_| {}).await;
    let mut client = server.client().await;

    // 10,000 levels of JSON: serde_json's recursion limit answers first.
    for (what, json) in [
        ("sets", json_sets(10_000)),
        ("records", json_records(10_000)),
    ] {
        let status = assert_rejected(
            authorize(
                &mut client,
                with_context_json(&format!(r#"{{"x":{json}}}"#)),
            )
            .await,
            Code::InvalidArgument,
            Some("context_json"),
            &["invalid JSON", "recursion limit exceeded"],
        );
        assert!(!status.message().is_empty(), "{what}");
    }
    let deep_entities = format!(
        r#"[{{"uid":{{"type":"User","id":"e"}},"attrs":{{"x":{}}},"parents":[]}}]"#,
        json_sets(10_000)
    );
    assert_rejected(
        authorize(
            &mut client,
            AuthorizeRequest {
                entities_json: deep_entities.clone(),
                ..alice()
            },
        )
        .await,
        Code::InvalidArgument,
        Some("entities_json"),
        &["recursion limit exceeded"],
    );
    assert_rejected(
        bounded(
            "BatchAuthorize",
            client.batch_authorize(BatchAuthorizeRequest {
                requests: vec![alice()],
                entities_json: deep_entities,
                ..Default::default()
            }),
        )
        .await,
        Code::InvalidArgument,
        Some("entities_json"),
        &["recursion limit exceeded"],
    );

    // Typed values: past the depth limit but within prost's, our limit
    // answers; far past prost's, decoding fails.
    assert_rejected(
        authorize(&mut client, with_context(vec![("x", nested_sets(40))])).await,
        Code::InvalidArgument,
        None,
        &["`limits.max_context_depth`"],
    );
    assert_rejected(
        authorize(&mut client, with_context(vec![("x", nested_sets(200))])).await,
        Code::Internal,
        None,
        &[
            "failed to decode Protobuf message",
            "recursion limit reached",
        ],
    );
    assert_still_answers(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_bytes_at_the_edge() {
    let dir = fixture();
    let server = start(&dir, |c| c.limits.max_context_bytes = 256).await;
    let mut client = server.client().await;

    // `{"s":"…"}` is 8 bytes around its padding.
    let json = |len: usize| format!(r#"{{"s":"{}"}}"#, "x".repeat(len - 8));
    assert_eq!(json(256).len(), 256);
    assert_decision(
        authorize(&mut client, with_context_json(&json(256))).await,
        Decision::Allow,
    );
    assert_rejected(
        authorize(&mut client, with_context_json(&json(257))).await,
        Code::InvalidArgument,
        Some("context_json"),
        &["257 bytes; the limit is 256 (`limits.max_context_bytes`)"],
    );

    // A typed context is measured as the JSON it becomes.
    let keys: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
    let many = |n: usize| {
        with_context(
            keys[..n]
                .iter()
                .map(|k| (k.as_str(), string("vvvv")))
                .collect(),
        )
    };
    assert_decision(authorize(&mut client, many(5)).await, Decision::Allow);
    assert_rejected(
        authorize(&mut client, many(40)).await,
        Code::InvalidArgument,
        Some("context"),
        &["the limit is 256 (`limits.max_context_bytes`)"],
    );
    assert_still_answers(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_size_at_the_edge() {
    let dir = fixture();
    let server = start(&dir, |c| c.limits.max_batch_size = 5).await;
    let mut client = server.client().await;
    let batch = |n: usize| BatchAuthorizeRequest {
        requests: (0..n).map(|_| alice()).collect(),
        ..Default::default()
    };

    let ok = bounded("BatchAuthorize", client.batch_authorize(batch(5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.responses.len(), 5);
    assert!(ok.responses.iter().all(|r| r.decision() == Decision::Allow));
    assert_rejected(
        bounded("BatchAuthorize", client.batch_authorize(batch(6))).await,
        Code::InvalidArgument,
        Some("requests"),
        &["batch has 6 requests; the limit is 5 (`limits.max_batch_size`)"],
    );
    assert_still_answers(&mut client).await;
}

// ---------------------------------------------------------------------------
// Load shedding and deadlines, with a call held deterministically
// ---------------------------------------------------------------------------

/// Items in a batch that fills the decision-log queue.
const HOLD_BATCH: usize = 8;

/// A config whose decision log writes into `pipe`, with a queue that one
/// batch of [`HOLD_BATCH`] fills.
fn held_config(dir: &TempDir, pipe: &StuckPipe) -> Config {
    let mut config = test_config(dir.path());
    config.limits.max_batch_size = HOLD_BATCH;
    pipe.log_into(&mut config, HOLD_BATCH);
    config
}

/// A batch of [`HOLD_BATCH`] items whose records are 32 KiB each: the
/// writer's 64 KiB buffer takes at most one before it must write to the full
/// pipe, so after one such batch the queue has fewer than [`HOLD_BATCH`] free
/// slots, and a second batch waits for them forever.
fn filling_batch() -> BatchAuthorizeRequest {
    let pad = "x".repeat(32 * 1024);
    BatchAuthorizeRequest {
        requests: (0..HOLD_BATCH)
            .map(|_| with_context(vec![("pad", string(&pad))]))
            .collect(),
        ..Default::default()
    }
}

/// Fills the queue with one batch, then starts a second that blocks holding
/// its permit; returns once the server counts it in flight.
async fn hold_a_call(
    server: &TestServer,
    client: &mut AuthorizerClient<Channel>,
) -> tokio::task::JoinHandle<Result<tonic::Response<proto::BatchAuthorizeResponse>, Status>> {
    let first = bounded("the filling batch", client.batch_authorize(filling_batch()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.responses.len(), HOLD_BATCH);
    let mut holder_client = client.clone();
    let holder = tokio::spawn(async move { holder_client.batch_authorize(filling_batch()).await });
    // (A held call that already timed out counts as held, too.)
    eventually(
        "the held call to be in flight",
        Duration::from_secs(10),
        || async { (holder.is_finished() || inflight(server).await == Some(1)).then_some(()) },
    )
    .await;
    holder
}

/// Decision records (non-blank JSON lines) in what the pipe carried.
fn records(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty() && !common::is_mark(l))
        .map(|l| serde_json::from_str(l).expect("each line is one JSON record"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_in_flight_are_shed_while_one_is_held() {
    let dir = fixture();
    let pipe = StuckPipe::new(dir.path());
    let mut config = held_config(&dir, &pipe);
    config.limits.max_in_flight = 1;
    config.limits.request_timeout = Duration::from_secs(60);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let holder = hold_a_call(&server, &mut client).await;
    assert!(!holder.is_finished(), "the second batch was not held");

    // Every other call is shed at once, whatever its kind.
    let mut probes = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut c = client.clone();
        probes.spawn(async move { c.authorize(alice()).await.map(|_| ()) });
    }
    let mut c = client.clone();
    probes.spawn(async move {
        c.batch_authorize(BatchAuthorizeRequest {
            requests: vec![alice()],
            ..Default::default()
        })
        .await
        .map(|_| ())
    });
    let results = bounded("the probes", probes.join_all()).await;
    assert_eq!(results.len(), 17);
    for result in results {
        assert_rejected(
            result,
            Code::ResourceExhausted,
            None,
            &["overloaded: 1 calls are already being evaluated (`limits.max_in_flight`)"],
        );
    }
    // ext_authz is shed too, and fails closed.
    let mut ext = AuthorizationClient::connect(server.url()).await.unwrap();
    let check = bounded("Check", ext.check(check_request()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status.unwrap().code, Code::PermissionDenied as i32);
    assert!(matches!(
        check.http_response,
        Some(HttpResponse::DeniedResponse(ref d)) if d.status.as_ref().unwrap().code == 403
    ));

    // Once the log drains, the held call finishes and the server recovers.
    let drained = pipe.drain();
    let held = bounded("the held batch", holder)
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(held.responses.len(), HOLD_BATCH);
    assert!(
        held.responses
            .iter()
            .all(|r| r.decision() == Decision::Allow)
    );
    assert_still_answers(&mut client).await;
    let dropped = common::metric(
        server.admin_addr,
        "cedar_pdp_decision_log_dropped_total",
        &[],
    )
    .await;
    server.stop().await.unwrap();

    // Both batches and the last call were logged as decisions. Every shed
    // call (16 calls, one batch item, one check) was refused on the spot,
    // into the refusals' own room while it lasted, and counted when not.
    eventually("the pipe to close", Duration::from_secs(20), || async {
        drained.is_finished().then_some(())
    })
    .await;
    let logged = records(&drained.join().unwrap());
    let (refused, decided) = split_refusals(&logged);
    assert_eq!(decided, 2 * HOLD_BATCH + 1, "{} records", logged.len());
    assert!(refused.iter().all(|r| r["error"]["reason"] == "overloaded"
        && r["error"]["code"] == "RESOURCE_EXHAUSTED"
        && r["decision"] == "deny"));
    assert_eq!(
        refused.len(),
        HOLD_BATCH,
        "the refusals' room is the queue's size"
    );
    assert_eq!(refused.len() as f64 + dropped, 18.0);
}

/// Records of refused requests, and how many others (decisions) there are.
fn split_refusals(logged: &[serde_json::Value]) -> (Vec<&serde_json::Value>, usize) {
    let refused: Vec<_> = logged.iter().filter(|r| r.get("error").is_some()).collect();
    let decided = logged.len() - refused.len();
    (refused, decided)
}

fn check_request() -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            destination: Some(Peer {
                principal: "spiffe://td/ns/shop/sa/web".into(),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_fails_a_held_call_with_deadline_exceeded() {
    let dir = fixture();
    let pipe = StuckPipe::new(dir.path());
    let mut config = held_config(&dir, &pipe);
    config.limits.request_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let holder = hold_a_call(&server, &mut client).await;
    let started = Instant::now();
    let held = bounded("the held batch", holder).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_rejected(
        held,
        Code::DeadlineExceeded,
        None,
        &["deadline of 300ms exceeded (`limits.request_timeout`"],
    );

    // The held batch gave up its reservation, so a few slots may be free:
    // single calls take them until the queue is full, and the next one
    // waits and times out the same way, even though the client allows more:
    // the server's limit wins.
    let mut decided = 0;
    let last = loop {
        let mut req = tonic::Request::new(alice());
        req.set_timeout(Duration::from_secs(30));
        let started = Instant::now();
        match bounded("Authorize", client.authorize(req)).await {
            Ok(_) => decided += 1,
            Err(status) => break (status, started.elapsed()),
        }
        assert!(decided <= HOLD_BATCH, "the queue never filled");
    };
    let (status, took) = last;
    assert_rejected::<()>(
        Err(status),
        Code::DeadlineExceeded,
        None,
        &["deadline of 300ms exceeded"],
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );

    // ext_authz fails closed on a deadline: a deny, not an error.
    let mut ext = AuthorizationClient::connect(server.url()).await.unwrap();
    let check = bounded("Check", ext.check(check_request()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status.unwrap().code, Code::PermissionDenied as i32);
    assert!(matches!(
        check.http_response,
        Some(HttpResponse::DeniedResponse(ref d)) if d.body == "authorization error\n"
    ));

    let dropped = common::metric(
        server.admin_addr,
        "cedar_pdp_decision_log_dropped_total",
        &[],
    )
    .await;
    let drained = pipe.drain();
    assert_still_answers(&mut client).await;
    server.stop().await.unwrap();
    eventually("the pipe to close", Duration::from_secs(20), || async {
        drained.is_finished().then_some(())
    })
    .await;
    // Decisions: the first batch, the calls that found room, and the last
    // call. The timed-out calls decided nothing; each of them (the held
    // batch's items, one call, one check) is a deadline refusal, recorded
    // while the refusals' room lasted and counted when not.
    let logged = records(&drained.join().unwrap());
    let (refused, decisions) = split_refusals(&logged);
    assert_eq!(decisions, HOLD_BATCH + decided + 1);
    assert!(
        refused.iter().all(|r| r["error"]["reason"] == "deadline"),
        "{refused:?}"
    );
    assert_eq!(refused.len() as f64 + dropped, (HOLD_BATCH + 2) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_client_timeout_ends_a_large_batch() {
    let dir = fixture();
    let server = start(&dir, |c| c.limits.max_batch_size = 1_000).await;
    let mut client = server.client().await;

    // Every item adds an entity of its own to 999 shared ones (the limit is
    // 1,000 a request), so each closes the hierarchy of all of them again:
    // about a second of work in all (about 12ms an item here), against a
    // 20ms deadline.
    let batch = BatchAuthorizeRequest {
        requests: (0..100)
            .map(|i| AuthorizeRequest {
                entities: vec![entity("User", &format!("own{i}"), &[])],
                ..alice()
            })
            .collect(),
        entities: users(999),
        ..Default::default()
    };
    let mut req = tonic::Request::new(batch);
    req.set_timeout(Duration::from_millis(20));
    let started = Instant::now();
    let result = bounded("BatchAuthorize", client.batch_authorize(req)).await;
    // Whichever deadline fires first answers: tonic's own `grpc-timeout`
    // handling (CANCELLED, "Timeout expired") or the service's, which honours
    // the shorter client timeout (DEADLINE_EXCEEDED). Both end the call.
    let status = result.expect_err("a 20ms deadline on a second of work");
    match status.code() {
        Code::Cancelled => assert!(status.message().contains("Timeout expired"), "{status:?}"),
        Code::DeadlineExceeded => {
            assert!(status.message().contains("grpc-timeout"), "{status:?}")
        }
        other => panic!("expected CANCELLED or DEADLINE_EXCEEDED, got {other:?}: {status:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_still_answers(&mut client).await;
}

// ---------------------------------------------------------------------------
// Hostile values
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_extension_functions_are_invalid() {
    let dir = fixture();
    let server = start(&dir, |_| {}).await;
    let mut client = server.client().await;

    assert_rejected(
        authorize(&mut client, with_context(vec![("x", ext("nope", "1"))])).await,
        Code::InvalidArgument,
        Some("context.x"),
        &["unknown extension function `nope`"],
    );
    assert_rejected(
        authorize(
            &mut client,
            with_context(vec![("r", record(vec![("y", set(vec![ext("", "1")]))]))]),
        )
        .await,
        Code::InvalidArgument,
        Some("context.r.y[0]"),
        &["unknown extension function ``"],
    );
    assert_rejected(
        authorize(
            &mut client,
            AuthorizeRequest {
                entities: vec![proto::Entity {
                    attrs: [("x".to_string(), ext("nope", "1"))].into(),
                    ..entity("User", "e", &[])
                }],
                ..alice()
            },
        )
        .await,
        Code::InvalidArgument,
        Some("entities[0].attrs.x"),
        &["unknown extension function `nope`"],
    );
    // Through JSON, Cedar's parser rejects it.
    assert_rejected(
        authorize(
            &mut client,
            with_context_json(r#"{"x": {"__extn": {"fn": "nope", "arg": "1"}}}"#),
        )
        .await,
        Code::InvalidArgument,
        Some("context"),
        &["invalid context", "nope"],
    );
    assert_rejected(
        authorize(
            &mut client,
            AuthorizeRequest {
                entities_json: r#"[{"uid": {"type": "User", "id": "e"}, "attrs": {"x": {"__extn": {"fn": "nope", "arg": "1"}}}, "parents": []}]"#.into(),
                ..alice()
            },
        )
        .await,
        Code::InvalidArgument,
        Some("entities"),
        &["invalid entities", "nope"],
    );
    assert_still_answers(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_extension_literals_are_invalid() {
    let dir = fixture();
    let server = start(&dir, |_| {}).await;
    let mut client = server.client().await;

    for (f, arg) in [
        ("ip", "10.0.0.1"),
        ("ip", "10.0.0.0/8"),
        ("ip", "::1"),
        ("decimal", "1.2345"),
        ("decimal", "-922337203685477.5808"),
    ] {
        assert_decision(
            authorize(&mut client, with_context(vec![("x", ext(f, arg))])).await,
            Decision::Allow,
        );
    }
    for (f, arg) in [
        ("ip", "not-an-ip"),
        ("ip", "10.0.0.1/33"),
        ("ip", "256.0.0.1"),
        ("ip", ""),
        ("decimal", "1.23456"),
        ("decimal", "abc"),
        ("decimal", "1e3"),
        ("decimal", "922337203685478.0"),
        ("datetime", "yesterday"),
        ("duration", "5 minutes"),
    ] {
        for req in [
            with_context(vec![("x", ext(f, arg))]),
            with_context_json(&format!(
                r#"{{"x": {{"__extn": {{"fn": "{f}", "arg": "{arg}"}}}}}}"#
            )),
        ] {
            let status = assert_rejected(
                authorize(&mut client, req).await,
                Code::InvalidArgument,
                Some("context"),
                &["invalid context"],
            );
            assert!(
                status.message().contains(f),
                "{f}({arg}): {}",
                status.message()
            );
        }
    }
    assert_still_answers(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_malformed_entity_type_names_are_invalid() {
    let dir = fixture();
    let server = start(&dir, |_| {}).await;
    let mut client = server.client().await;

    let mut cases: Vec<(AuthorizeRequest, &str)> = vec![
        (
            request(("", "a"), ("Action", "read"), ("Doc", "d")),
            "principal.type",
        ),
        (
            request(("User", "alice"), ("", "read"), ("Doc", "d")),
            "action.type",
        ),
        (
            request(("User", "alice"), ("Action", "read"), ("", "d")),
            "resource.type",
        ),
        (
            AuthorizeRequest {
                entities: vec![entity("", "e", &[])],
                ..alice()
            },
            "entities[0].uid.type",
        ),
        (
            AuthorizeRequest {
                entities: vec![entity("User", "e", &[("", "g")])],
                ..alice()
            },
            "entities[0].parents[0].type",
        ),
        (
            with_context(vec![("x", value(V::Entity(uid("", "a").unwrap())))]),
            "context.x.type",
        ),
        (
            AuthorizeRequest {
                entities_json: r#"[{"uid": {"type": "", "id": "e"}, "attrs": {}, "parents": []}]"#
                    .into(),
                ..alice()
            },
            "entities",
        ),
        (
            with_context_json(r#"{"x": {"__entity": {"type": "", "id": "a"}}}"#),
            "context",
        ),
    ];
    for bad in [
        "::",
        "User::",
        "::User",
        " User",
        "User ",
        "1User",
        "User::\"a\"",
    ] {
        cases.push((
            request((bad, "a"), ("Action", "read"), ("Doc", "d")),
            "principal.type",
        ));
    }
    for (req, field) in cases {
        let status = assert_rejected(
            authorize(&mut client, req).await,
            Code::InvalidArgument,
            Some(field),
            &[],
        );
        assert!(
            status.message().starts_with(&format!("`{field}`"))
                || status.message().starts_with("invalid "),
            "{status:?}"
        );
    }
    assert_still_answers(&mut client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_cycles_in_parents_are_rejected_without_hanging() {
    let dir = fixture();
    let server = start(&dir, |_| {}).await;
    let mut client = server.client().await;
    let member = |entities: Vec<proto::Entity>| AuthorizeRequest {
        entities,
        ..request(("User", "m"), ("Action", "read"), ("Doc", "d"))
    };
    let cycle_error = |vertex: &str| {
        format!(
            "invalid entities: transitive closure computation/enforcement error: input graph has a cycle containing vertex `{vertex}`"
        )
    };

    // A parent of B, B parent of A, and the principal under A: Cedar's
    // transitive closure refuses the cycle, so the request is invalid.
    let cycle = member(vec![
        entity("Group", "a", &[("Group", "b")]),
        entity("Group", "b", &[("Group", "a")]),
        entity("User", "m", &[("Group", "a")]),
    ]);
    let status = assert_rejected(
        authorize(&mut client, cycle).await,
        Code::InvalidArgument,
        Some("entities"),
        &["input graph has a cycle containing vertex `Group::"],
    );
    assert!(
        status.message() == cycle_error(r#"Group::"a""#)
            || status.message() == cycle_error(r#"Group::"b""#),
        "{status:?}"
    );

    // A cycle through a group a policy names fails closed the same way,
    // rather than granting membership.
    let through = member(vec![
        entity("Group", "a", &[("Group", "members")]),
        entity("Group", "members", &[("Group", "a")]),
        entity("User", "m", &[("Group", "a")]),
    ]);
    assert_rejected(
        authorize(&mut client, through).await,
        Code::InvalidArgument,
        Some("entities"),
        &["input graph has a cycle"],
    );

    // An entity that is its own parent.
    let own_parent = member(vec![entity("Group", "self", &[("Group", "self")])]);
    assert_rejected(
        authorize(&mut client, own_parent).await,
        Code::InvalidArgument,
        Some("entities"),
        &[&cycle_error(r#"Group::"self""#)],
    );

    // A ring of groups, as JSON, and as a batch's shared entities. Of 200,
    // Cedar finds the cycle; of 500, the closure (500 × 499 ancestor edges)
    // passes `limits.max_ancestor_edges` before Cedar builds it.
    let ring_of = |n: usize| {
        let ring: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"uid":{{"type":"Group","id":"r{i}"}},"attrs":{{}},"parents":[{{"type":"Group","id":"r{}"}}]}}"#,
                    (i + 1) % n
                )
            })
            .collect();
        format!("[{}]", ring.join(","))
    };
    let ring = ring_of(200);
    let started = Instant::now();
    assert_rejected(
        authorize(
            &mut client,
            AuthorizeRequest {
                entities_json: ring.clone(),
                ..member(vec![entity("User", "m", &[("Group", "r0")])])
            },
        )
        .await,
        Code::InvalidArgument,
        Some("entities"),
        &["input graph has a cycle containing vertex `Group::\"r"],
    );
    assert_rejected(
        authorize(
            &mut client,
            AuthorizeRequest {
                entities_json: ring_of(500),
                ..member(vec![entity("User", "m", &[("Group", "r0")])])
            },
        )
        .await,
        Code::InvalidArgument,
        Some("entities"),
        &["max_ancestor_edges"],
    );
    // Shared entities are parsed once for the batch: a cycle among them
    // refuses the whole call, and each item is recorded with the reason.
    assert_rejected(
        bounded(
            "BatchAuthorize",
            client.batch_authorize(BatchAuthorizeRequest {
                requests: vec![member(Vec::new()), alice()],
                entities_json: ring,
                ..Default::default()
            }),
        )
        .await,
        Code::InvalidArgument,
        None,
        &["invalid entities", "has a cycle"],
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_still_answers(&mut client).await;
}

/// `{"__entity": X}` and `{"__extn": X}` are Cedar escapes only when `X` is
/// a uid or a call; otherwise Cedar reads them as records with one
/// attribute. The depth limit must count those records like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_shaped_records_count_toward_the_depth_limit() {
    let dir = fixture();
    let server = start(&dir, |c| c.limits.max_context_depth = 4).await;
    let mut client = server.client().await;

    let mut accepted = Vec::new();
    for key in ["__entity", "__extn"] {
        let json = |depth: usize| {
            with_context_json(&format!(
                r#"{{"x":{}1{}}}"#,
                format!(r#"{{"{key}":"#).repeat(depth),
                "}".repeat(depth)
            ))
        };
        let typed = |depth: usize| {
            let nest = (0..depth).fold(value(V::LongValue(1)), |inner, _| {
                record(vec![(key, inner)])
            });
            with_context(vec![("x", nest)])
        };
        // Cedar accepts these as nested records: at the limit they pass...
        assert_decision(authorize(&mut client, json(4)).await, Decision::Allow);
        assert_decision(authorize(&mut client, typed(4)).await, Decision::Allow);
        // ...and past it they must be refused like `{"a": ...}` nests are.
        for (shape, depth, req) in [
            ("json", 5, json(5)),
            ("typed", 5, typed(5)),
            ("json", 100, json(100)),
            ("typed", 20, typed(20)),
        ] {
            let result = authorize(&mut client, req).await;
            let refused = matches!(&result, Err(s) if s.code() == Code::InvalidArgument
                && s.message().contains("`limits.max_context_depth`"));
            if !refused {
                accepted.push(format!(
                    "{shape} `{key}` x{depth}: {:?}",
                    result.map(|r| r.decision())
                ));
            }
        }
    }
    assert_still_answers(&mut client).await;
    assert!(
        accepted.is_empty(),
        "records nested past `limits.max_context_depth = 4` were accepted:\n{}",
        accepted.join("\n")
    );
}

/// `decision_log.queue_bytes`: with the writer stuck, records queue only up
/// to the byte budget, however many records the count budget would take;
/// in `drop` mode the rest are dropped and counted, and no call waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_queue_is_bounded_in_bytes() {
    const CALLS: usize = 60;
    let dir = fixture();
    let pipe = StuckPipe::new(dir.path());
    let mut config = test_config(dir.path());
    pipe.log_into(&mut config, 10_000);
    config.decision_log.on_full = cedar_pdp::config::OnFull::Drop;
    config.decision_log.queue_bytes = 64 * 1024;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let pad = "x".repeat(8 * 1024);
    for _ in 0..CALLS {
        let req = with_context(vec![("pad", string(&pad))]);
        bounded("a padded call", client.authorize(req))
            .await
            .unwrap();
    }
    // 60 records of 8 KiB: at most the 64 KiB queue, the writer's 64 KiB
    // buffer and the record in its hand fit; the count budget took them all.
    let dropped = common::metric(
        server.admin_addr,
        "cedar_pdp_decision_log_dropped_total",
        &[],
    )
    .await;
    assert!(dropped >= 20.0, "only {dropped} of {CALLS} records dropped");
    let reader = pipe.drain();
    server.stop().await.unwrap();
    let written = records(&reader.join().unwrap()).len();
    assert_eq!(written as f64 + dropped, CALLS as f64);
}

/// `limits.max_parents_per_entity` and `limits.max_entity_bytes`, at the
/// edge, as typed entities and as JSON text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_parents_and_bytes_are_bounded() {
    let dir = fixture();
    let server = start(&dir, |c| {
        c.limits.max_parents_per_entity = 3;
        c.limits.max_entity_bytes = 4096;
    })
    .await;
    let mut client = server.client().await;
    let groups = |n: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| ("Group".to_string(), format!("g{i}")))
            .collect()
    };
    let with_parents = |n: usize| {
        let parents = groups(n);
        let refs: Vec<(&str, &str)> = parents
            .iter()
            .map(|(t, i)| (t.as_str(), i.as_str()))
            .collect();
        AuthorizeRequest {
            entities: vec![entity("User", "x", &refs)],
            ..alice()
        }
    };
    assert_decision(
        authorize(&mut client, with_parents(3)).await,
        Decision::Allow,
    );
    assert_rejected(
        authorize(&mut client, with_parents(4)).await,
        Code::InvalidArgument,
        Some("entities[0].parents"),
        &["4 parents; the limit is 3 (`limits.max_parents_per_entity`)"],
    );

    // Bytes: the JSON text is measured before it is parsed; typed entities
    // as they convert.
    let json_of = |pad: usize| {
        format!(
            r#"[{{"uid": {{"type": "User", "id": "x"}}, "attrs": {{"pad": "{}"}}, "parents": []}}]"#,
            "p".repeat(pad)
        )
    };
    let ok = AuthorizeRequest {
        entities_json: json_of(3000),
        ..alice()
    };
    assert_decision(authorize(&mut client, ok).await, Decision::Allow);
    let big = AuthorizeRequest {
        entities_json: json_of(5000),
        ..alice()
    };
    assert_rejected(
        authorize(&mut client, big).await,
        Code::InvalidArgument,
        Some("entities_json"),
        &["bytes of entities; the limit is 4096 (`limits.max_entity_bytes`)"],
    );
    let mut typed = entity("User", "x", &[]);
    typed.attrs.insert("pad".into(), string(&"p".repeat(5000)));
    let typed = AuthorizeRequest {
        entities: vec![typed],
        ..alice()
    };
    assert_rejected(
        authorize(&mut client, typed).await,
        Code::InvalidArgument,
        Some("entities"),
        &["(`limits.max_entity_bytes`)"],
    );
    assert_still_answers(&mut client).await;
}
