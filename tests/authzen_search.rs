//! The AuthZEN search APIs against the real server over loopback, on the
//! Todo example: every result is allowed by `/evaluation` and every stored
//! candidate the search left out is denied; pages walk to the unpaged
//! result; a token is bound to its query and to the policy revision.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{TestServer, metric, test_config, wait_for_generation, write_atomic};
use serde_json::{Value as Json, json};

const RICK: &str = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs";
const MORTY_EMAIL: &str = "morty@the-citadel.com";

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/authzen/todo")
}

/// A server over a copy of the Todo example, which the test may change.
async fn start() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for name in ["todo.cedar", "users.entities.json"] {
        std::fs::copy(example().join(name), dir.path().join(name)).unwrap();
    }
    (TestServer::start_with(test_config(dir.path())).await, dir)
}

/// The stored user ids.
fn users() -> Vec<String> {
    let text = std::fs::read_to_string(example().join("users.entities.json")).unwrap();
    let entities: Json = serde_json::from_str(&text).unwrap();
    let ids: BTreeSet<String> = entities
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["uid"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.into_iter().collect()
}

/// The actions the policies name.
fn actions() -> Vec<String> {
    let text = std::fs::read_to_string(example().join("todo.cedar")).unwrap();
    let ids: BTreeSet<String> = text
        .split("Action::\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect();
    ids.into_iter().collect()
}

async fn post(server: &TestServer, path: &str, body: &Json) -> (u16, Json) {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(format!("http://{}{path}", server.authzen_addr))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {status} {text}"));
    (status, json)
}

async fn allowed(server: &TestServer, body: &Json) -> bool {
    let (status, answer) = post(server, "/access/v1/evaluation", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["decision"].as_bool().unwrap()
}

async fn search(server: &TestServer, kind: &str, body: &Json) -> Json {
    let (status, answer) = post(server, &format!("/access/v1/search/{kind}"), body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// The results' ids (or names, for actions), checked to be of `kind`'s shape.
fn ids(answer: &Json, key: &str) -> BTreeSet<String> {
    let results = answer["results"].as_array().unwrap();
    assert_eq!(answer["page"]["count"], results.len());
    assert_eq!(answer["page"]["total"], results.len());
    assert_eq!(answer["page"]["next_token"], "");
    results
        .iter()
        .map(|r| r[key].as_str().unwrap().to_string())
        .collect()
}

fn todo() -> Json {
    json!({"type": "todo", "id": "t1", "properties": {"ownerID": MORTY_EMAIL}})
}

/// Every result is allowed, and every candidate left out is denied.
async fn check_exact(
    server: &TestServer,
    kind: &str,
    body: &Json,
    candidates: &[String],
) -> BTreeSet<String> {
    let answer = search(server, kind, body).await;
    let key = if kind == "action" { "name" } else { "id" };
    let found = ids(&answer, key);
    for candidate in candidates {
        let mut evaluation = body.clone();
        match kind {
            "action" => evaluation["action"] = json!({"name": candidate}),
            _ => evaluation[kind]["id"] = json!(candidate),
        }
        assert_eq!(
            allowed(server, &evaluation).await,
            found.contains(candidate),
            "{kind} search for {body} and `{candidate}`: {answer}"
        );
    }
    assert!(found.iter().all(|f| candidates.contains(f)), "{answer}");
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_result_is_allowed_and_every_omission_denied() {
    let (server, _dir) = start().await;
    let users = users();
    let actions = actions();

    for action in &actions {
        let body = json!({"subject": {"type": "user", "id": "ignored"},
                          "action": {"name": action}, "resource": todo()});
        check_exact(&server, "subject", &body, &users).await;
    }
    // Only admins and evil geniuses may update a todo they do not own.
    let body = json!({"subject": {"type": "user"}, "action": {"name": "can_update_todo"},
                      "resource": {"type": "todo", "id": "t2", "properties": {"ownerID": "x"}}});
    let updaters = check_exact(&server, "subject", &body, &users).await;
    assert!(
        !updaters.is_empty() && updaters.len() < users.len(),
        "{updaters:?}"
    );

    for subject in [RICK, MORTY_EMAIL] {
        for action in &actions {
            let body = json!({"subject": {"type": "user", "id": subject},
                              "action": {"name": action}, "resource": {"type": "user"}});
            check_exact(&server, "resource", &body, &users).await;
        }
        let body = json!({"subject": {"type": "user", "id": subject}, "resource": todo()});
        let found = check_exact(&server, "action", &body, &actions).await;
        assert!(found.contains("can_read_todos"), "{found:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_walk_to_the_unpaged_result() {
    let (server, _dir) = start().await;
    let query = json!({"subject": {"type": "user"}, "action": {"name": "can_read_user"},
                       "resource": {"type": "user", "id": RICK}});
    let all = ids(&search(&server, "subject", &query).await, "id");
    assert_eq!(all.len(), users().len());

    let mut paged = Vec::new();
    let mut body = query.clone();
    body["page"] = json!({"limit": 3});
    for _ in 0..100 {
        let answer = search(&server, "subject", &body).await;
        let results = answer["results"].as_array().unwrap();
        assert!(results.len() <= 3, "{answer}");
        assert_eq!(answer["page"]["count"], results.len());
        assert_eq!(answer["page"]["total"], all.len());
        paged.extend(
            results
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
        let next = answer["page"]["next_token"].as_str().unwrap();
        if next.is_empty() {
            break;
        }
        body["page"]["token"] = json!(next);
    }
    let unique: BTreeSet<String> = paged.iter().cloned().collect();
    assert_eq!(unique.len(), paged.len(), "a result repeated: {paged:?}");
    assert_eq!(unique, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_bound_to_its_query_and_revision() {
    let (server, dir) = start().await;
    let query = json!({"subject": {"type": "user"}, "action": {"name": "can_read_user"},
                       "resource": {"type": "user", "id": RICK}, "page": {"limit": 2}});
    let first = search(&server, "subject", &query).await;
    let token = first["page"]["next_token"].as_str().unwrap().to_string();
    assert!(!token.is_empty(), "{first}");

    let mut next = query.clone();
    next["page"]["token"] = json!(token);
    // The same query with its token goes on; the ignored id may change.
    next["subject"]["id"] = json!("anyone");
    assert_eq!(
        search(&server, "subject", &next).await["results"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let changes = [
        (
            "/access/v1/search/subject",
            "action",
            json!({"name": "can_read_todos"}),
        ),
        ("/access/v1/search/subject", "context", json!({"x": 1})),
        (
            "/access/v1/search/subject",
            "page",
            json!({"limit": 3, "token": token}),
        ),
        (
            "/access/v1/search/resource",
            "page",
            json!({"limit": 2, "token": token}),
        ),
        (
            "/access/v1/search/subject",
            "page",
            json!({"limit": 2, "token": "00ff"}),
        ),
    ];
    for (path, key, value) in changes {
        let mut other = next.clone();
        other[key] = value;
        let (status, body) = post(&server, path, &other).await;
        assert_eq!(status, 400, "{key}: {body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("page.token"),
            "{body}"
        );
    }

    let mut client = server.client().await;
    let before = wait_for_generation(&mut client, 0).await.generation;
    write_atomic(
        dir.path(),
        "more.cedar",
        "@id(\"more\")\npermit (principal, action == Action::\"can_wave\", resource);\n",
    );
    wait_for_generation(&mut client, before).await;
    let (status, body) = post(&server, "/access/v1/search/subject", &next).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("policy revision"),
        "{body}"
    );
    // The new policy's action is known to action search at once.
    let body = json!({"subject": {"type": "user", "id": RICK}, "resource": todo()});
    assert!(ids(&search(&server, "action", &body).await, "name").contains("can_wave"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_and_ids_find_nothing_and_bad_input_is_a_400() {
    let (server, _dir) = start().await;
    let empty = json!({"page": {"next_token": "", "count": 0, "total": 0}, "results": []});
    let cases = [
        (
            "subject",
            json!({"subject": {"type": "robot"}, "action": {"name": "can_read_user"},
                           "resource": {"type": "user", "id": RICK}}),
        ),
        (
            "subject",
            json!({"subject": {"type": "not a type"}, "action": {"name": "can_read_user"},
                           "resource": {"type": "user", "id": RICK}}),
        ),
        (
            "resource",
            json!({"subject": {"type": "user", "id": RICK}, "action": {"name": "can_read_user"},
                            "resource": {"type": "todo list"}}),
        ),
        (
            "resource",
            json!({"subject": {"type": "user", "id": "nobody"},
                            "action": {"name": "can_delete_todo"}, "resource": {"type": "user"}}),
        ),
        (
            "resource",
            json!({"subject": {"type": "user", "id": RICK}, "action": {"name": "no_such"},
                            "resource": {"type": "user"}}),
        ),
        (
            "action",
            json!({"subject": {"type": "user", "id": RICK},
                          "resource": {"type": "some thing", "id": "x"}}),
        ),
    ];
    for (kind, body) in cases {
        assert_eq!(search(&server, kind, &body).await, empty, "{body}");
    }

    let ok = json!({"subject": {"type": "user"}, "action": {"name": "can_read_user"},
                    "resource": {"type": "user", "id": RICK}});
    let bad = [
        ("action", json!(null), "action"),
        ("subject", json!({}), "subject.type"),
        ("subject", json!("user"), "subject"),
        ("resource", json!({"type": "user"}), "resource.id"),
        ("context", json!([1]), "context"),
        ("page", json!({"limit": -1}), "page.limit"),
        ("page", json!({"token": 5}), "page.token"),
    ];
    for (key, value, field) in bad {
        let mut body = ok.clone();
        body[key] = value;
        let (status, answer) = post(&server, "/access/v1/search/subject", &body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], "invalid_request", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(field),
            "{field}: {answer}"
        );
    }
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/access/v1/search/action",
            server.authzen_addr
        ))
        .header("content-type", "text/plain")
        .body(ok.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    // Every search is counted by how it ended, the empty ones too.
    for (kind, outcome, count) in [
        ("subject", "unknown_type", 1.0),
        ("subject", "empty", 1.0),
        ("resource", "unknown_type", 1.0),
        ("resource", "empty", 2.0),
        ("action", "unknown_type", 1.0),
        ("subject", "refused", 7.0),
        ("action", "refused", 1.0),
    ] {
        let got = metric(
            server.admin_addr,
            "cedar_pdp_searches_total",
            &[("kind", kind), ("outcome", outcome)],
        )
        .await;
        assert_eq!(got, count, "{kind} {outcome}");
    }
}

/// A search is one record, whatever its number of candidates: its query,
/// revision and results. So searches cannot rotate an earlier decision out
/// of a small retained log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_is_one_record_and_rotates_nothing_out() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["todo.cedar", "users.entities.json"] {
        std::fs::copy(example().join(name), dir.path().join(name)).unwrap();
    }
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("decisions.log");
    let mut config = test_config(dir.path());
    config.decision_log.enabled = true;
    config.decision_log.sink = cedar_pdp::config::LogSink::File;
    config.decision_log.path = log.clone();
    config.decision_log.max_file_bytes = 16 * 1024;
    config.decision_log.max_files = 1;
    let server = TestServer::start_with(config).await;
    let first = json!({"subject": {"type": "user", "id": RICK},
                       "action": {"name": "can_read_todos"}, "resource": todo()});
    allowed(&server, &first).await;
    let users = users();
    let body = json!({"subject": {"type": "user"}, "action": {"name": "can_read_todos"},
                      "resource": todo()});
    for _ in 0..3 {
        let (status, answer) = post(&server, "/access/v1/search/subject", &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    server.stop().await.unwrap();

    let mut records = Vec::new();
    for file in [log.clone(), logs.path().join("decisions.log.1")] {
        if let Ok(text) = std::fs::read_to_string(&file) {
            records.extend(
                text.lines()
                    .filter(|l| !common::is_mark(l))
                    .map(|l| serde_json::from_str::<Json>(l).unwrap()),
            );
        }
    }
    assert_eq!(
        records.len(),
        4,
        "one evaluation and three searches: {records:?}"
    );
    assert!(records[0]["search"].is_null(), "{}", records[0]);
    for r in &records[1..] {
        let search = &r["search"];
        assert_eq!(search["kind"], "subject", "{r}");
        assert_eq!(search["candidates"], users.len(), "{r}");
        assert_eq!(search["refused"], 0, "{r}");
        let found = search["results"]["ids"].as_array().unwrap();
        assert_eq!(search["results"]["count"], found.len(), "{r}");
        assert_eq!(r["api"], "authzen");
        assert_eq!(
            r["replayable"], false,
            "replay decides one request, not a search"
        );
        assert!(
            r["policy_revision"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
    }
}
