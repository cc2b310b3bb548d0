//! Time-bound grants (issue 13, part 3): Cedar templates linked from
//! `*.links.json`. Over a real socket: a link applies only inside its
//! window, it expires (and a pending one starts) while the server runs with
//! no reload in between, the decision cache never serves an answer past the
//! window that produced it, `cedar_pdp_grants` follows the clock, and a bad
//! links file never replaces a good set. The binary's `validate` reports
//! bad links by file and line, and warns about expired ones.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::{self, AuthorizeResponse, GetPolicyStatusRequest, PolicyStatus};
use common::binary::{self, bin};
use common::{
    TestServer, eventually, metric, request, test_config, wait_for_reload_error, write_atomic,
};
use serde_json::json;
use tonic::transport::Channel;

const TEMPLATE: &str = r#"@id("agent-may-read-for-user")
permit (principal == ?principal, action == Action::"read", resource == ?resource);

@id("standing")
permit (principal == User::"admin", action, resource);
"#;

const SCHEMA: &str = r#"
entity User;
entity Agent;
entity Doc;
action read appliesTo { principal: [Agent, User], resource: Doc };
action write appliesTo { principal: User, resource: Doc };
"#;

/// `t` as the links file writes it: whole seconds, UTC.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The whole second at or after `t`, so a window written in seconds starts
/// or ends no earlier than `t`.
fn ceil_second(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn link(id: &str, agent: &str, doc: &str) -> serde_json::Value {
    json!({
        "id": id,
        "template": "agent-may-read-for-user",
        "slots": {
            "?principal": format!("Agent::\"{agent}\""),
            "?resource": format!("Doc::\"{doc}\""),
        },
    })
}

async fn status(client: &mut AuthorizerClient<Channel>) -> PolicyStatus {
    client
        .get_policy_status(GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn ask(client: &mut AuthorizerClient<Channel>, agent: &str, doc: &str) -> AuthorizeResponse {
    client
        .authorize(request(("Agent", agent), ("Action", "read"), ("Doc", doc)))
        .await
        .unwrap()
        .into_inner()
}

fn allowed(r: &AuthorizeResponse) -> bool {
    r.decision == proto::Decision::Allow as i32
}

async fn grants(admin: std::net::SocketAddr) -> [f64; 3] {
    let mut counts = [0.0; 3];
    for (n, state) in counts.iter_mut().zip(["active", "pending", "expired"]) {
        *n = metric(admin, "cedar_pdp_grants", &[("state", state)]).await;
    }
    counts
}

async fn cache_hits(admin: std::net::SocketAddr) -> f64 {
    metric(
        admin,
        "cedar_pdp_decision_cache_lookups_total",
        &[("result", "hit")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_expire_and_start_on_time_with_no_reload_and_no_stale_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("grants.cedar"), TEMPLATE).unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    let now = SystemTime::now();
    // Whole seconds, at least four from now: time for the server to start
    // and give the first answers on a slow machine.
    let expires_at = ceil_second(now + Duration::from_secs(4));
    let not_before = ceil_second(now + Duration::from_secs(5));
    let mut expiring = link("grant-7f3a", "summarizer", "q3-plan");
    expiring["expires_at"] = json!(rfc3339(expires_at));
    let mut pending = link("grant-later", "planner", "q3-plan");
    pending["not_before"] = json!(rfc3339(not_before));
    pending["expires_at"] = json!(rfc3339(not_before + Duration::from_secs(3600)));
    let mut expired = link("grant-old", "summarizer", "q2-plan");
    expired["expires_at"] = json!(rfc3339(now - Duration::from_secs(3600)));
    std::fs::write(
        dir.path().join("agents.links.json"),
        serde_json::to_string_pretty(&json!([expiring, pending, expired])).unwrap(),
    )
    .unwrap();
    let server = TestServer::start_with(test_config(dir.path())).await;
    let mut client = server.client().await;
    let before = status(&mut client).await;
    assert_eq!(before.generation, 1);
    // Templates are not policies; links are.
    assert_eq!(before.policy_count, 4, "{before:?}");

    // Inside its window: allowed, and the link's id is the reason.
    let first = ask(&mut client, "summarizer", "q3-plan").await;
    assert!(allowed(&first), "{first:?}");
    assert_eq!(first.determining_policies, ["grant-7f3a"]);
    assert!(
        SystemTime::now() < expires_at,
        "the test started too slowly"
    );
    // The same request again is a cache hit, and still allowed.
    let hits = cache_hits(server.admin_addr).await;
    let again = ask(&mut client, "summarizer", "q3-plan").await;
    assert!(allowed(&again), "{again:?}");
    assert_eq!(cache_hits(server.admin_addr).await, hits + 1.0);
    // An expired link and a pending one do not apply.
    assert!(!allowed(&ask(&mut client, "summarizer", "q2-plan").await));
    let early = ask(&mut client, "planner", "q3-plan").await;
    assert!(!allowed(&early), "{early:?}");
    assert!(early.determining_policies.is_empty(), "{early:?}");
    // The deny says why: no permit matched, and the grant is pending.
    assert!(
        early
            .why
            .starts_with("no permit matched; grant `grant-later` is pending until "),
        "{early:?}"
    );
    assert!(
        SystemTime::now() < not_before,
        "the test started too slowly"
    );
    assert_eq!(grants(server.admin_addr).await, [1.0, 1.0, 1.0]);

    // The same request, once `expires_at` passes, is denied: the cached
    // allow belonged to the window, not to the snapshot.
    let denied = eventually("the grant to expire", Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            let r = ask(&mut client, "summarizer", "q3-plan").await;
            (!allowed(&r)).then_some(r)
        }
    })
    .await;
    assert!(SystemTime::now() >= expires_at, "denied before it expired");
    assert!(denied.determining_policies.is_empty(), "{denied:?}");
    assert_eq!(
        denied.why,
        format!(
            "no permit matched; grant `grant-7f3a` expired at {}",
            rfc3339(expires_at)
        ),
        "{denied:?}"
    );
    // And the pending one starts at `not_before`.
    let started = eventually(
        "the pending grant to start",
        Duration::from_secs(15),
        || {
            let mut client = client.clone();
            async move {
                let r = ask(&mut client, "planner", "q3-plan").await;
                allowed(&r).then_some(r)
            }
        },
    )
    .await;
    assert!(SystemTime::now() >= not_before, "allowed before it started");
    assert_eq!(started.determining_policies, ["grant-later"]);
    // Once expired, it stays denied, from the cache or not.
    assert!(!allowed(&ask(&mut client, "summarizer", "q3-plan").await));
    assert!(!allowed(&ask(&mut client, "summarizer", "q3-plan").await));

    // No reload happened in between: the same set decided throughout.
    let after = status(&mut client).await;
    assert_eq!(after.generation, before.generation, "{after:?}");
    assert_eq!(after.revision, before.revision);
    assert_eq!(denied.policy_revision, first.policy_revision);
    let reloads = metric(
        server.admin_addr,
        "cedar_pdp_policy_reloads_total",
        &[("result", "success")],
    )
    .await;
    assert_eq!(reloads, 1.0, "only the first load");
    // The gauge follows the clock, not reloads.
    assert_eq!(grants(server.admin_addr).await, [1.0, 0.0, 2.0]);
}

/// A decision is recorded at the instant its grants were judged: an allow
/// is never stamped after the grant that allowed it expired, so `replay`
/// of calls made right across the expiry finds no difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_stamped_when_their_grants_were_judged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("grants.cedar"), TEMPLATE).unwrap();
    // Permits that never apply but take milliseconds to evaluate: the time
    // between judging the grant and writing the record, where a stamp taken
    // late falls after the expiry.
    let slow: String = (0..3000)
        .map(|i| {
            format!(
                "permit (principal, action, resource) when {{ \"{}\" like \"*a*b*c*d*e*f*g*{i}\" }};\n",
                "abcdefg".repeat(12)
            )
        })
        .collect();
    std::fs::write(dir.path().join("slow.cedar"), slow).unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    let expires_at = ceil_second(SystemTime::now() + Duration::from_secs(3));
    let mut expiring = link("grant-7f3a", "summarizer", "q3-plan");
    expiring["expires_at"] = json!(rfc3339(expires_at));
    std::fs::write(
        dir.path().join("agents.links.json"),
        serde_json::to_string(&json!([expiring])).unwrap(),
    )
    .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("decisions.log");
    let mut config = test_config(dir.path());
    // Every call evaluated, none answered from the cache.
    config.limits.decision_cache_bytes = 0;
    config.decision_log.enabled = true;
    config.decision_log.sink = cedar_pdp::config::LogSink::File;
    config.decision_log.path = log.clone();
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    // Back to back, across the expiry, on four connections.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut client = client.clone();
        tasks.spawn(async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let r = ask(&mut client, "summarizer", "q3-plan").await;
                let past = SystemTime::now() > expires_at + Duration::from_millis(300);
                if (past && !allowed(&r)) || std::time::Instant::now() > deadline {
                    return;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    assert!(!allowed(&ask(&mut client, "summarizer", "q3-plan").await));
    drop(client);
    server.stop().await.unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = common::records_in(&text);
    let mut allows = 0;
    for r in &records {
        let at = humantime::parse_rfc3339(r["timestamp"].as_str().unwrap()).unwrap();
        if r["decision"] == "allow" {
            allows += 1;
            assert!(
                at < expires_at,
                "an allow stamped at or after the expiry: {r}"
            );
        } else {
            assert!(at >= expires_at, "a deny stamped inside the window: {r}");
        }
    }
    assert!(
        allows > 0 && allows < records.len(),
        "{allows} of {}",
        records.len()
    );
    let mut replay = bin();
    replay
        .args(["replay", "--source"])
        .arg(dir.path())
        .arg("--log")
        .arg(&log);
    let ran = binary::run(replay, Duration::from_secs(60));
    assert_eq!(ran.code(), Some(0), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("0 allow -> deny, 0 deny -> allow"),
        "{}",
        ran.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_links_file_never_replaces_a_good_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("grants.cedar"), TEMPLATE).unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    let good = json!([link("grant-1", "summarizer", "q3-plan")]);
    write_atomic(dir.path(), "a.links.json", &good.to_string());
    let server = TestServer::start_with(test_config(dir.path())).await;
    let mut client = server.client().await;
    let live = status(&mut client).await;
    assert!(allowed(&ask(&mut client, "summarizer", "q3-plan").await));

    let mut unfit = link("grant-2", "summarizer", "q3-plan");
    unfit["slots"]["?principal"] = json!("Robot::\"r2\"");
    let mut backwards = link("grant-3", "summarizer", "q3-plan");
    backwards["not_before"] = json!("2026-12-01T14:05:00Z");
    backwards["expires_at"] = json!("2026-12-01T14:00:00Z");
    let mut no_template = link("grant-4", "summarizer", "q3-plan");
    no_template["template"] = json!("no-such-template");
    let cases = [
        (
            json!([
                link("grant-1", "summarizer", "q3-plan"),
                link("grant-1", "other", "d")
            ]),
            "duplicate link id `grant-1`: already the id of a link in `a.links.json`",
        ),
        (
            json!([link("standing", "summarizer", "q3-plan")]),
            "duplicate link id `standing`: already the id of a policy or template in `grants.cedar`",
        ),
        (json!([no_template]), "no template `no-such-template`"),
        (json!([unfit]), "link `grant-2` does not fit the schema"),
        (json!([backwards]), "is not before `expires_at`"),
    ];
    for (links, expected) in cases {
        write_atomic(dir.path(), "a.links.json", &links.to_string());
        let s = eventually("the reload error", Duration::from_secs(15), || {
            let mut client = client.clone();
            async move {
                let s = status(&mut client).await;
                s.last_reload_error.contains(expected).then_some(s)
            }
        })
        .await;
        assert!(
            s.last_reload_error.contains("a.links.json:"),
            "{}",
            s.last_reload_error
        );
        // The good set keeps serving.
        assert_eq!(s.revision, live.revision);
        assert_eq!(s.generation, live.generation);
        let r = ask(&mut client, "summarizer", "q3-plan").await;
        assert!(allowed(&r), "{r:?}");
        assert_eq!(r.policy_revision, live.revision);
    }
    // Fixed, it loads.
    let fixed = json!([
        link("grant-1", "summarizer", "q3-plan"),
        link("grant-5", "planner", "roadmap")
    ]);
    write_atomic(dir.path(), "a.links.json", &fixed.to_string());
    let s = common::wait_for_generation(&mut client, live.generation).await;
    assert!(s.last_reload_error.is_empty(), "{s:?}");
    assert!(allowed(&ask(&mut client, "planner", "roadmap").await));
    // A template the directory no longer has fails the load too, before
    // the links that name it could dangle.
    std::fs::write(
        dir.path().join(".g.tmp"),
        r#"@id("standing") permit (principal == User::"admin", action, resource);"#,
    )
    .unwrap();
    std::fs::rename(dir.path().join(".g.tmp"), dir.path().join("grants.cedar")).unwrap();
    let s = wait_for_reload_error(&mut client).await;
    assert!(
        s.last_reload_error
            .contains("link `grant-1`: no template `agent-may-read-for-user`"),
        "{}",
        s.last_reload_error
    );
    assert!(allowed(&ask(&mut client, "summarizer", "q3-plan").await));
}

fn validate(dir: &Path) -> binary::Ran {
    let mut cmd = bin();
    cmd.arg("validate").arg("--policies").arg(dir);
    binary::run(cmd, Duration::from_secs(15))
}

#[test]
fn validate_reports_bad_links_by_file_and_line_and_warns_about_expired_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("grants.cedar"), TEMPLATE).unwrap();
    std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    let mut old = link("grant-old", "summarizer", "q2-plan");
    old["expires_at"] = json!("2020-01-01T00:00:00Z");
    let text = serde_json::to_string_pretty(&json!([link("grant-1", "a", "d"), old])).unwrap();
    let old_line = text
        .lines()
        .position(|l| l.contains("\"grant-old\""))
        .unwrap()
        + 1;
    std::fs::write(dir.path().join("agents.links.json"), &text).unwrap();
    let ran = validate(dir.path());
    // An expired link is a warning: the set is valid.
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    let d = dir.path().display();
    assert!(
        ran.stderr
            .contains(&format!("{d}/agents.links.json:{old_line}:"))
            && ran
                .stderr
                .contains("link `grant-old` expired at 2020-01-01T00:00:00Z"),
        "{ran:?}"
    );
    assert!(ran.stdout.starts_with("ok: 3 policies"), "{ran:?}");

    // A link naming a static policy is an error, at the link.
    let mut bad = link("grant-2", "a", "d");
    bad["template"] = json!("standing");
    let text = serde_json::to_string_pretty(&json!([link("grant-1", "a", "d"), bad])).unwrap();
    let bad_line = text
        .lines()
        .position(|l| l.contains("\"grant-2\""))
        .unwrap()
        + 1;
    std::fs::write(dir.path().join("agents.links.json"), &text).unwrap();
    let ran = validate(dir.path());
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(
        ran.stderr
            .contains(&format!("{d}/agents.links.json:{bad_line}:"))
            && ran
                .stderr
                .contains("link `grant-2`: `standing` is a static policy, not a template"),
        "{ran:?}"
    );
}

#[test]
fn the_example_grants_validate_without_warnings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grants");
    let ran = validate(&dir);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(
        ran.stdout
            .starts_with("ok: 3 policies, 1 entities, schema loaded")
            && ran.stdout.trim_end().ends_with("0 warning(s)"),
        "{ran:?}"
    );
}

#[test]
fn policy_tests_judge_grants_at_the_time_a_case_names() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grants");
    let mut cmd = bin();
    cmd.arg("test").arg("--policies").arg(&dir);
    let ran = binary::run(cmd, Duration::from_secs(15));
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stdout.contains("5 passed"), "{ran:?}");

    // A case whose `at` contradicts its expectation fails: `at` is used.
    let copy = tempfile::tempdir().unwrap();
    for name in ["schema.cedarschema", "grants.cedar", "grants.links.json"] {
        std::fs::copy(dir.join(name), copy.path().join(name)).unwrap();
    }
    let cases = std::fs::read_to_string(dir.join("grants.test.yaml")).unwrap();
    std::fs::write(
        copy.path().join("grants.test.yaml"),
        cases.replace("2098-01-01T00:30:00Z", "2098-01-01T01:30:00Z"),
    )
    .unwrap();
    let mut cmd = bin();
    cmd.arg("test").arg("--policies").arg(copy.path());
    let ran = binary::run(cmd, Duration::from_secs(15));
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(
        ran.stdout.contains("4 passed, 1 failed")
            && ran
                .stdout
                .contains("inside its hour, the planner's grant applies\n        decision: expected allow, got deny"),
        "{ran:?}"
    );
    std::fs::write(
        copy.path().join("grants.test.yaml"),
        cases.replace("2098-01-01T00:30:00Z", "soon"),
    )
    .unwrap();
    let mut cmd = bin();
    cmd.arg("test").arg("--policies").arg(copy.path());
    let ran = binary::run(cmd, Duration::from_secs(15));
    assert_ne!(ran.code(), Some(0), "{ran:?}");
    assert!(
        format!("{}{}", ran.stdout, ran.stderr).contains("`at`: `soon` is not an RFC 3339 time"),
        "{ran:?}"
    );
}
