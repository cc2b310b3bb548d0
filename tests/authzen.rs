//! The AuthZEN HTTP API against the real server over loopback: the mapping
//! to Cedar, the spec's status codes and error bodies, batches and their
//! semantics, the metadata, h2c, and the records and metrics every answer
//! leaves.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::Path;
use std::time::Duration;

use cedar_pdp::config::{Config, LogSink};
use common::{TestServer, eventually, metric, test_config};
use serde_json::{Value as Json, json};

const POLICY: &str = r#"
@id("alice-reads")
permit (principal == User::"alice", action == Action::"read", resource);

@id("owner-edits")
permit (principal is User, action == Action::"edit", resource)
when { resource has owner && resource.owner == principal.name };

@id("soft-deletes")
permit (principal, action == Action::"delete", resource)
when { context has action && context.action has soft && context.action.soft };

@id("from-the-office")
permit (principal, action == Action::"enter", resource)
when { context has place && context.place == "office" };
"#;

const ENTITIES: &str = r#"[
  {"uid": {"type": "User", "id": "alice"}, "attrs": {"name": "alice"}, "parents": []},
  {"uid": {"type": "Doc", "id": "stored"}, "attrs": {"owner": "bob"}, "parents": []}
]"#;

fn policies(dir: &Path) {
    std::fs::write(dir.join("p.cedar"), POLICY).unwrap();
    std::fs::write(dir.join("e.entities.json"), ENTITIES).unwrap();
}

async fn start(configure: impl FnOnce(&mut Config)) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    policies(dir.path());
    let mut config = test_config(dir.path());
    configure(&mut config);
    (TestServer::start_with(config).await, dir)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Json,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Json::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {status} {text}"))
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn post(server: &TestServer, path: &str, body: &Json) -> Answer {
    let url = format!("http://{}{path}", server.authzen_addr);
    send(
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

async fn evaluate(server: &TestServer, body: &Json) -> Answer {
    post(server, "/access/v1/evaluation", body).await
}

fn ask(subject: &str, action: &str, resource: Json) -> Json {
    json!({
        "subject": {"type": "User", "id": subject},
        "action": {"name": action},
        "resource": resource,
    })
}

fn doc(id: &str) -> Json {
    json!({"type": "Doc", "id": id})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evaluation_maps_to_cedar_and_a_deny_is_a_200() {
    let (server, _dir) = start(|_| {}).await;
    let allowed = evaluate(&server, &ask("alice", "read", doc("d1"))).await;
    assert_eq!(
        (allowed.status, &allowed.body),
        (200, &json!({"decision": true}))
    );
    assert!(allowed.headers.contains_key("x-cedar-decision-id"));
    assert!(
        allowed.headers["x-cedar-policy-revision"]
            .to_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let denied = evaluate(&server, &ask("bob", "read", doc("d1"))).await;
    assert_eq!(
        (denied.status, &denied.body),
        (200, &json!({"decision": false}))
    );

    // Properties are the attributes of an entity the directory lacks...
    let mut mine = ask("alice", "edit", doc("new"));
    mine["resource"]["properties"] = json!({"owner": "alice"});
    assert_eq!(
        evaluate(&server, &mine).await.body,
        json!({"decision": true})
    );
    // ...and never override one it stores (`Doc::"stored"` is bob's).
    let mut forged = ask("alice", "edit", doc("stored"));
    forged["resource"]["properties"] = json!({"owner": "alice"});
    assert_eq!(
        evaluate(&server, &forged).await.body,
        json!({"decision": false})
    );
    // Subject properties too: `User::"carol"` is not stored.
    let mut carol = ask("carol", "edit", doc("new"));
    carol["subject"]["properties"] = json!({"name": "carol"});
    carol["resource"]["properties"] = json!({"owner": "carol"});
    assert_eq!(
        evaluate(&server, &carol).await.body,
        json!({"decision": true})
    );

    // Action properties are `context.action`; the context is the context.
    let mut soft = ask("bob", "delete", doc("d1"));
    soft["action"]["properties"] = json!({"soft": true});
    assert_eq!(
        evaluate(&server, &soft).await.body,
        json!({"decision": true})
    );
    soft["action"]["properties"] = json!({"soft": false});
    assert_eq!(
        evaluate(&server, &soft).await.body,
        json!({"decision": false})
    );
    let mut office = ask("bob", "enter", doc("d1"));
    office["context"] = json!({"place": "office"});
    assert_eq!(
        evaluate(&server, &office).await.body,
        json!({"decision": true})
    );
    office["context"] = json!({"place": "home"});
    assert_eq!(
        evaluate(&server, &office).await.body,
        json!({"decision": false})
    );

    // Unknown fields are ignored, at every level.
    let mut extra = ask("alice", "read", doc("d1"));
    extra["subject"]["identity"] = json!("x");
    extra["future_field"] = json!({"a": 1});
    assert_eq!(
        evaluate(&server, &extra).await.body,
        json!({"decision": true})
    );

    // Reasons only when asked for.
    let mut why = ask("alice", "read", doc("d1"));
    why["options"] = json!({"include_reasons": true});
    let answer = evaluate(&server, &why).await;
    let context = &answer.body["context"];
    assert_eq!(answer.body["decision"], true);
    assert_eq!(
        context["reason_admin"]["determining_policies"],
        json!(["alice-reads"])
    );
    assert_eq!(
        context["id"].as_str(),
        answer.headers["x-cedar-decision-id"].to_str().ok()
    );
    assert!(
        context["policy_revision"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_with_error_and_message() {
    let (server, _dir) = start(|c| c.authzen.max_body_bytes = 1024).await;
    let url = format!("http://{}/access/v1/evaluation", server.authzen_addr);
    let ok = ask("alice", "read", doc("d1"));
    let json_post = |body: String| {
        client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
    };
    let mut cases: Vec<(&str, reqwest::RequestBuilder, &str, &str)> = vec![
        (
            "not JSON",
            json_post("{nope".into()),
            "invalid_request",
            "is not JSON",
        ),
        (
            "empty",
            json_post(String::new()),
            "invalid_request",
            "is empty",
        ),
        (
            "an array",
            json_post("[]".into()),
            "invalid_request",
            "JSON object",
        ),
        (
            "text/plain",
            client()
                .post(&url)
                .header("content-type", "text/plain")
                .body(ok.to_string()),
            "invalid_request",
            "`Content-Type` is `text/plain`",
        ),
        (
            "no content type",
            client().post(&url).body(ok.to_string()),
            "invalid_request",
            "`Content-Type` is missing",
        ),
        (
            "too large",
            json_post(format!("{{\"pad\": \"{}\"}}", "x".repeat(2000))),
            "limit_exceeded",
            "`authzen.max_body_bytes`",
        ),
    ];
    let mut bad = |name: &'static str, edit: &dyn Fn(&mut Json), field: &'static str| {
        let mut body = ok.clone();
        edit(&mut body);
        cases.push((name, json_post(body.to_string()), "invalid_request", field));
    };
    bad(
        "no resource",
        &|b| drop(b.as_object_mut().unwrap().remove("resource")),
        "`resource`: is required",
    );
    bad(
        "numeric id",
        &|b| b["subject"]["id"] = json!(7),
        "`subject.id`: must be a string",
    );
    bad(
        "no action name",
        &|b| b["action"] = json!({}),
        "`action.name`: is required",
    );
    bad(
        "not a Cedar type",
        &|b| b["resource"]["type"] = json!("todo list"),
        "`resource.type`",
    );
    bad(
        "context not an object",
        &|b| b["context"] = json!(3),
        "`context`",
    );
    bad(
        "properties not an object",
        &|b| b["subject"]["properties"] = json!("x"),
        "`subject.properties`",
    );
    bad(
        "include_reasons not a boolean",
        &|b| b["options"] = json!({"include_reasons": "yes"}),
        "`options.include_reasons`",
    );
    let n = cases.len();
    for (name, request, error, message) in cases {
        let answer = send(request).await;
        assert_eq!(answer.status, 400, "{name}: {}", answer.body);
        assert_eq!(answer.body["error"], error, "{name}: {}", answer.body);
        let text = answer.body["message"].as_str().unwrap();
        assert!(text.contains(message), "{name}: {text}");
        // Refusals are identified as decisions are.
        assert!(answer.headers.contains_key("x-cedar-decision-id"), "{name}");
    }
    // Every refusal went through the pipeline: counted once, as AuthZEN.
    let admin = server.admin_addr;
    let errors = |reason: &'static str| async move {
        metric(
            admin,
            "cedar_pdp_request_errors_total",
            &[("api", "authzen"), ("reason", reason)],
        )
        .await
    };
    assert_eq!(
        errors("invalid_request").await + errors("limit_exceeded").await,
        n as f64
    );
    assert_eq!(
        metric(admin, "cedar_pdp_request_errors_total", &[("api", "grpc")]).await,
        0.0
    );

    // Not an endpoint, or not its method: no decision, no record.
    let missing = send(client().post(format!("http://{}/access/v2/x", server.authzen_addr))).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"], "not_found");
    let get = send(client().get(&url)).await;
    assert_eq!(get.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_metrics_name_the_api_and_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    policies(dir.path());
    let log = dir.path().join("decisions.log");
    let mut config = test_config(dir.path());
    config.decision_log.enabled = true;
    config.decision_log.sink = LogSink::File;
    config.decision_log.path = log.clone();
    let server = TestServer::start_with(config).await;
    let url = format!("http://{}/access/v1/evaluation", server.authzen_addr);
    let allowed = send(
        client()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-request-id", "az-allow")
            .body(ask("alice", "read", doc("d1")).to_string()),
    )
    .await;
    assert_eq!(allowed.headers["x-request-id"], "az-allow");
    let refused = send(
        client()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-request-id", "az-bad")
            .body("{"),
    )
    .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.headers["x-request-id"], "az-bad");

    let records: Vec<Json> = eventually("both records", Duration::from_secs(10), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            let records: Vec<Json> = common::records_in(&text);
            (records.len() >= 2).then_some(records)
        }
    })
    .await;
    assert_eq!(records.len(), 2, "{records:?}");
    let by_id = |id: &str| records.iter().find(|r| r["request_id"] == id).unwrap();
    let allow = by_id("az-allow");
    assert_eq!(allow["api"], "authzen");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["principal"], json!({"type": "User", "id": "alice"}));
    assert_eq!(allow["action"], json!({"type": "Action", "id": "read"}));
    assert_eq!(
        allow["decision_id"].as_str(),
        allowed.headers["x-cedar-decision-id"].to_str().ok()
    );
    let bad = by_id("az-bad");
    assert_eq!(bad["api"], "authzen");
    assert_eq!(bad["decision"], "deny");
    assert_eq!(bad["error"]["reason"], "invalid_request");

    let admin = server.admin_addr;
    let decisions = |api: &'static str| async move {
        metric(
            admin,
            "cedar_pdp_decisions_total",
            &[("api", api), ("decision", "allow")],
        )
        .await
    };
    assert_eq!(decisions("authzen").await, 1.0);
    assert_eq!(decisions("grpc").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_take_defaults_semantics_and_item_errors() {
    let (server, _dir) = start(|c| c.limits.max_batch_size = 4).await;
    let batch = |semantic: Option<&str>, resources: &[Json]| {
        let mut body = json!({
            "subject": {"type": "User", "id": "alice"},
            "action": {"name": "read"},
            "evaluations": resources.iter().map(|r| json!({"resource": r})).collect::<Vec<_>>(),
        });
        if let Some(s) = semantic {
            body["options"] = json!({"evaluations_semantic": s});
        }
        body
    };
    let evaluations = |answer: Answer| {
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["evaluations"].clone()
    };
    let t = json!({"decision": true});
    let f = json!({"decision": false});

    // Defaults, and an item that replaces one as a whole object.
    let mut body = batch(None, &[doc("a"), doc("b")]);
    body["evaluations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"subject": {"type": "User", "id": "bob"}, "resource": doc("c")}));
    let got = evaluations(post(&server, "/access/v1/evaluations", &body).await);
    assert_eq!(got, json!([t, t, f]));

    // An invalid item is a deny with its error; the others are evaluated.
    let mut body = batch(None, &[doc("a")]);
    body["evaluations"].as_array_mut().unwrap().extend([
        json!({"resource": {"type": "Doc"}}),
        json!({"resource": doc("z")}),
    ]);
    let got = evaluations(post(&server, "/access/v1/evaluations", &body).await);
    assert_eq!(got[0], t);
    assert_eq!(got[1]["decision"], false);
    assert_eq!(got[1]["context"]["error"]["status"], 400);
    let message = got[1]["context"]["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("`evaluations[1].resource.id`"),
        "{message}"
    );
    assert_eq!(got[2], t);
    // Errors the pipeline finds name the AuthZEN path too, as do items
    // that are not objects.
    let mut body = batch(None, &[doc("a")]);
    body["evaluations"].as_array_mut().unwrap().extend([
        json!({"resource": doc("b"), "context": {"workload": {"spiffe_id": "spiffe://td/x"}}}),
        json!(7),
    ]);
    let got = evaluations(post(&server, "/access/v1/evaluations", &body).await);
    let message = |i: usize| {
        got[i]["context"]["error"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        message(1).starts_with("`evaluations[1].context.workload`"),
        "{}",
        message(1)
    );
    assert!(
        message(2).starts_with("`evaluations[2]`: must be a JSON object"),
        "{}",
        message(2)
    );

    // Semantics: all, up to the first deny, up to the first permit.
    let items = [doc("a"), json!({"type": "Doc"}), doc("c")];
    let all = evaluations(
        post(
            &server,
            "/access/v1/evaluations",
            &batch(Some("execute_all"), &items),
        )
        .await,
    );
    assert_eq!(all.as_array().unwrap().len(), 3);
    let until_deny = evaluations(
        post(
            &server,
            "/access/v1/evaluations",
            &batch(Some("deny_on_first_deny"), &items),
        )
        .await,
    );
    assert_eq!(until_deny.as_array().unwrap().len(), 2, "{until_deny}");
    assert_eq!(until_deny[0], t);
    assert_eq!(until_deny[1]["decision"], false);
    let mut bob = batch(
        Some("permit_on_first_permit"),
        &[doc("a"), doc("b"), doc("c")],
    );
    bob["evaluations"][0]["subject"] = json!({"type": "User", "id": "bob"});
    let until_permit = evaluations(post(&server, "/access/v1/evaluations", &bob).await);
    assert_eq!(until_permit, json!([f, t]));

    // No (or empty) evaluations: one evaluation, answered as one.
    for evaluations in [json!([]), Json::Null] {
        let mut body = ask("alice", "read", doc("a"));
        body["evaluations"] = evaluations;
        let answer = post(&server, "/access/v1/evaluations", &body).await;
        assert_eq!((answer.status, answer.body), (200, t.clone()));
    }
    let mut single = ask("alice", "read", doc("a"));
    single.as_object_mut().unwrap().remove("resource");
    let answer = post(&server, "/access/v1/evaluations", &single).await;
    assert_eq!(answer.status, 400, "{}", answer.body);

    // Whole-payload errors are transport errors.
    let bad = batch(Some("first_come"), &[doc("a")]);
    let answer = post(&server, "/access/v1/evaluations", &bad).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("evaluations_semantic")
    );
    let too_many = batch(None, &[doc("a"), doc("b"), doc("c"), doc("d"), doc("e")]);
    let answer = post(&server, "/access/v1/evaluations", &too_many).await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (400, Some("limit_exceeded"))
    );

    // Reasons per item, when asked for.
    let mut body = batch(None, &[doc("a")]);
    body["options"] = json!({"include_reasons": true});
    let got = evaluations(post(&server, "/access/v1/evaluations", &body).await);
    assert_eq!(
        got[0]["context"]["reason_admin"]["determining_policies"],
        json!(["alice-reads"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_names_where_it_was_fetched_or_the_configured_base() {
    let (server, _dir) = start(|_| {}).await;
    let base = format!("http://{}", server.authzen_addr);
    let answer = send(client().get(format!("{base}/.well-known/authzen-configuration"))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(
        answer.body,
        json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
            "search_subject_endpoint": format!("{base}/access/v1/search/subject"),
            "search_resource_endpoint": format!("{base}/access/v1/search/resource"),
            "search_action_endpoint": format!("{base}/access/v1/search/action"),
            "capabilities": [],
        })
    );

    let (server, _dir) = start(|c| c.authzen.base_url = "https://pdp.example.com".into()).await;
    let url = format!(
        "http://{}/.well-known/authzen-configuration",
        server.authzen_addr
    );
    let answer = send(client().get(url)).await;
    assert_eq!(
        answer.body["policy_decision_point"],
        "https://pdp.example.com"
    );
    assert_eq!(
        answer.body["access_evaluations_endpoint"],
        "https://pdp.example.com/access/v1/evaluations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_is_served() {
    let (server, _dir) = start(|_| {}).await;
    let tcp = tokio::net::TcpStream::connect(server.authzen_addr)
        .await
        .unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut h2 = h2.ready().await.unwrap();
    let request = axum::http::Request::post(format!(
        "http://{}/access/v1/evaluation",
        server.authzen_addr
    ))
    .header("content-type", "application/json")
    .body(())
    .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    body.send_data(ask("alice", "read", doc("d1")).to_string().into(), true)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.data())
        .await
        .unwrap()
    {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let answer: Json = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer, json!({"decision": true}));
}

/// A stored entity is closed to properties by default: a caller cannot make
/// a stored `Doc` public or give a stored `User` the clearance a policy
/// checks. Where `authzen.open_properties` opens a type's attributes, a
/// property adds only what the entity lacks and, under a schema, only what
/// the schema declares. The decision record names every property not
/// applied, and why; the caller's answer does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_add_to_stored_entities_and_the_record_names_what_was_dropped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        r#"
entity User = { name: String, clearance?: Long };
entity Doc = { owner: String, label?: String };
action read appliesTo { principal: User, resource: Doc };
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"
@id("cleared-reads-public")
permit (principal, action == Action::"read", resource)
when {
  principal has clearance && principal.clearance >= 1 &&
  resource has label && resource.label == "public" && resource.owner == "bob"
};
"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("e.entities.json"), ENTITIES).unwrap();
    let log = dir.path().join("decisions.log");
    let mut config = test_config(dir.path());
    config.authzen.open_properties = [
        (
            "User".to_string(),
            vec!["clearance".to_string(), "nickname".to_string()],
        ),
        ("Doc".to_string(), vec!["label".to_string()]),
    ]
    .into();
    let closed_config = test_config(dir.path());
    config.decision_log.enabled = true;
    config.decision_log.sink = LogSink::File;
    config.decision_log.path = log.clone();
    let server = TestServer::start_with(config).await;

    let body = |subject: Json, resource: Json| {
        json!({
            "subject": {"type": "User", "id": "alice", "properties": subject},
            "action": {"name": "read"},
            "resource": {"type": "Doc", "id": "stored", "properties": resource},
            "options": {"include_reasons": true},
        })
    };
    let url = format!("http://{}/access/v1/evaluation", server.authzen_addr);
    let ask = |body: Json, id: &'static str| {
        let url = url.clone();
        async move {
            send(
                client()
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-request-id", id)
                    .body(body.to_string()),
            )
            .await
        }
    };
    // `clearance` and `label` are declared and missing: added. `name` and
    // `owner` are stored: the directory's values stand (so the forged owner
    // does not stop the allow). `nickname` is not declared: dropped.
    let added = ask(
        body(
            json!({"clearance": 2, "name": "mallory", "nickname": "m"}),
            json!({"label": "public", "owner": "alice"}),
        ),
        "added",
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert_eq!(added.body["decision"], true, "{}", added.body);
    let dropped = json!([
        {"entity": "User::\"alice\"", "property": "name", "why": "stored_attribute"},
        {"entity": "User::\"alice\"", "property": "nickname", "why": "not_in_schema"},
        {"entity": "Doc::\"stored\"", "property": "owner", "why": "stored_attribute"},
    ]);
    // What the store holds is not the caller's to learn.
    let reasons = &added.body["context"]["reason_admin"];
    assert!(reasons.is_object(), "{}", added.body);
    assert!(
        reasons.get("dropped_properties").is_none(),
        "{}",
        added.body
    );
    // A declared property of the wrong type is dropped too: no clearance, a deny.
    let mistyped = ask(
        body(json!({"clearance": "high"}), json!({"label": "public"})),
        "mistyped",
    )
    .await;
    assert_eq!(mistyped.status, 200, "{}", mistyped.body);
    assert_eq!(mistyped.body["decision"], false);
    // Nothing offered: nothing added, a deny.
    let plain = ask(body(json!({}), json!({})), "plain").await;
    assert_eq!(plain.body["decision"], false);

    let records: Vec<Json> = eventually("three records", Duration::from_secs(10), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            let records: Vec<Json> = common::records_in(&text);
            (records.len() >= 3).then_some(records)
        }
    })
    .await;
    let by_id = |id: &str| records.iter().find(|r| r["request_id"] == id).unwrap();
    assert_eq!(by_id("added")["dropped_properties"], dropped);
    assert_eq!(by_id("added")["decision"], "allow");
    assert_eq!(
        by_id("mistyped")["dropped_properties"][0]["why"],
        "not_in_schema"
    );
    // Nothing dropped: no field at all.
    assert!(by_id("plain").get("dropped_properties").is_none());
    server.stop().await.unwrap();

    // With nothing opened, the same offer lifts nothing.
    let closed = TestServer::start_with(closed_config).await;
    let url = format!("http://{}/access/v1/evaluation", closed.authzen_addr);
    let forged = send(
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(body(json!({"clearance": 2}), json!({"label": "public"})).to_string()),
    )
    .await;
    assert_eq!(forged.status, 200, "{}", forged.body);
    assert_eq!(forged.body["decision"], false, "{}", forged.body);
    closed.stop().await.unwrap();
}
