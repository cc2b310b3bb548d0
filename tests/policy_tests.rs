//! Policy tests: `cedar-pdp test` on the real binary (output, exit codes,
//! JUnit XML parsed back), the shipped `policies/` tests, and the
//! `reload.require_tests` gate over a real server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cedar_pdp::app::App;
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::{AuthorizeRequest, Decision, GetPolicyStatusRequest};
use cedar_pdp::policy_store::{LoadOptions, build, read_dir};
use cedar_pdp::policy_tests::read_suite;
use common::binary::{self, Ran, bin};
use common::{
    TestServer, http_get, request, sample, test_config, wait_for_generation, wait_for_reload_error,
    write_atomic,
};
use quick_xml::events::{BytesStart, Event};
use tempfile::TempDir;
use tonic::transport::Channel;

/// How long anything may take on a slow, shared machine.
const DEADLINE: Duration = Duration::from_secs(15);

const POLICIES: &str = r#"@id("allow-alice")
permit(principal == User::"alice", action == Action::"view", resource);

@id("deny-blocked")
forbid(principal, action, resource) when { principal.blocked };

@id("owner-edits")
permit(principal, action == Action::"edit", resource) when { resource.owner == principal };
"#;

const ENTITIES: &str =
    r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {"blocked": false}, "parents": []}]"#;

const FIXTURE: &str = r#"[
  {"uid": {"type": "User", "id": "carol"}, "attrs": {"blocked": false}, "parents": []},
  {"uid": {"type": "Doc", "id": "d1"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "carol"}}}, "parents": []}
]"#;

/// Four cases that pass: a uid string and `{type, id}`, a fixture, case
/// entities, an expected error by policy and by message.
const PASSING: &str = r#"fixtures: [people.fixture.json]
cases:
  - name: alice views
    principal: User::"alice"
    action: Action::"view"
    resource: Photo::"p"
    expect:
      decision: allow
      determining_policies: [allow-alice]
      errors: []
  - name: carol edits her doc
    principal: {type: User, id: carol}
    action: {type: Action, id: edit}
    resource: {type: Doc, id: d1}
    expect: {decision: allow, determining_policies: [owner-edits]}
  - name: an unknown user errors in the forbid and is denied
    principal: User::"bob"
    action: Action::"view"
    resource: Photo::"p"
    expect:
      decision: deny
      determining_policies: []
      errors: [{policy: deny-blocked, message: "does not exist"}]
  - name: a blocked user is denied by the forbid
    principal: User::"mallory"
    action: Action::"view"
    resource: Photo::"p"
    entities:
      - {"uid": {"type": "User", "id": "mallory"}, "attrs": {"blocked": true}, "parents": []}
    expect: {decision: deny, determining_policies: [deny-blocked]}
"#;

/// The same format as JSON, with a fixture one folder up.
const PASSING_JSON: &str = r#"{
  "fixtures": ["../people.fixture.json"],
  "cases": [{
    "name": "carol edits, from JSON",
    "principal": "User::\"carol\"",
    "action": {"type": "Action", "id": "edit"},
    "resource": "Doc::\"d1\"",
    "context": {},
    "expect": {"decision": "allow", "determining_policies": ["owner-edits"], "errors": []}
  }]
}
"#;

/// One passing case and four failing ones, each in a different way.
const FAILING: &str = r#"cases:
  - name: alice views
    principal: User::"alice"
    action: Action::"view"
    resource: Photo::"p"
    expect: {decision: allow}
  - name: wrong decision
    principal: User::"alice"
    action: Action::"edit"
    resource: Photo::"p"
    expect: {decision: allow}
  - name: wrong policies
    principal: User::"alice"
    action: Action::"view"
    resource: Photo::"p"
    expect: {decision: allow, determining_policies: [owner-edits]}
  - name: wrong errors
    principal: User::"bob"
    action: Action::"view"
    resource: Photo::"p"
    expect: {decision: deny, errors: []}
  - name: a request entity that redefines a stored one
    principal: User::"alice"
    action: Action::"view"
    resource: Photo::"p"
    entities:
      - {"uid": {"type": "User", "id": "alice"}, "attrs": {"blocked": true}, "parents": []}
    expect: {decision: deny}
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A policy directory with the policies, stored entities and a fixture.
fn policy_dir() -> TempDir {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "policy.cedar", POLICIES);
    write(dir.path(), "users.entities.json", ENTITIES);
    write(dir.path(), "people.fixture.json", FIXTURE);
    dir
}

fn run_tests(dir: &Path, junit: Option<&Path>) -> Ran {
    let mut cmd = bin();
    cmd.arg("test").arg("--policies").arg(dir);
    if let Some(junit) = junit {
        cmd.arg("--junit").arg(junit);
    }
    binary::run(cmd, DEADLINE)
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or("")
}

/// What a JUnit document says, read back with a general XML parser.
#[derive(Debug, Default)]
struct Junit {
    /// `tests` and `failures` of `<testsuites>`.
    tests: String,
    failures: String,
    /// `<testsuite name>` and its `tests` count.
    suites: Vec<(String, String)>,
    /// (`classname`, `name`, the `<failure message>` if it failed).
    cases: Vec<(String, String, Option<String>)>,
}

fn attr(e: &BytesStart<'_>, key: &str) -> String {
    e.attributes()
        .map(Result::unwrap)
        .find(|a| a.key.as_ref() == key.as_bytes())
        .map(|a| {
            a.normalized_value(quick_xml::XmlVersion::default())
                .unwrap()
                .into_owned()
        })
        .unwrap_or_else(|| panic!("no `{key}` attribute"))
}

fn parse_junit(xml: &str) -> Junit {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Junit::default();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                b"testsuites" => {
                    out.tests = attr(&e, "tests");
                    out.failures = attr(&e, "failures");
                }
                b"testsuite" => out.suites.push((attr(&e, "name"), attr(&e, "tests"))),
                b"testcase" => out
                    .cases
                    .push((attr(&e, "classname"), attr(&e, "name"), None)),
                b"failure" => {
                    out.cases.last_mut().expect("a failure inside a testcase").2 =
                        Some(attr(&e, "message"));
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

#[test]
fn a_passing_suite_exits_0_with_a_line_per_case_and_the_summary() {
    let dir = policy_dir();
    write(dir.path(), "a.test.yaml", PASSING);
    // JSON works too, in a subfolder, with a fixture one level up.
    std::fs::create_dir(dir.path().join("more")).unwrap();
    write(dir.path(), "more/c.test.json", PASSING_JSON);
    let junit = dir.path().join("out").with_extension("xml");
    let ran = run_tests(dir.path(), Some(&junit));
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    let file = dir.path().join("a.test.yaml");
    for name in [
        "alice views",
        "carol edits her doc",
        "an unknown user errors in the forbid and is denied",
        "a blocked user is denied by the forbid",
    ] {
        let line = format!("ok      {}: {name}", file.display());
        assert!(
            ran.stdout.lines().any(|l| l == line),
            "no `{line}`: {ran:?}"
        );
    }
    let json = dir.path().join("more/c.test.json");
    let line = format!("ok      {}: carol edits, from JSON", json.display());
    assert!(
        ran.stdout.lines().any(|l| l == line),
        "no `{line}`: {ran:?}"
    );
    assert_eq!(last_line(&ran.stdout), "5 passed, 0 failed", "{ran:?}");

    let report = parse_junit(&std::fs::read_to_string(&junit).unwrap());
    assert_eq!(
        (report.tests.as_str(), report.failures.as_str()),
        ("5", "0")
    );
    assert_eq!(
        report.suites,
        [
            ("a.test.yaml".to_string(), "4".to_string()),
            ("more/c.test.json".to_string(), "1".to_string())
        ]
    );
    assert!(report.cases.iter().all(|c| c.2.is_none()), "{report:?}");
    assert_eq!(report.cases[4].0, "more/c.test.json");
}

#[test]
fn a_failing_suite_exits_1_and_shows_expected_against_actual() {
    let dir = policy_dir();
    write(dir.path(), "b.test.yaml", FAILING);
    let junit = dir.path().join("report.xml");
    let ran = run_tests(dir.path(), Some(&junit));
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert_eq!(last_line(&ran.stdout), "1 passed, 4 failed", "{ran:?}");
    let file = dir.path().join("b.test.yaml");
    let out = &ran.stdout;
    // Each failure is located at its case, and says what differed.
    for expected in [
        format!("ok      {}: alice views", file.display()),
        format!("FAILED  {}:7: wrong decision", file.display()),
        "        decision: expected allow, got deny (determining policies [])".to_string(),
        format!("FAILED  {}:12: wrong policies", file.display()),
        "        determining policies: expected [owner-edits], got [allow-alice]".to_string(),
        format!("FAILED  {}:17: wrong errors", file.display()),
        r#"        errors: expected [], got [deny-blocked: entity `User::"bob"` does not exist]"#
            .to_string(),
        format!(
            "FAILED  {}:22: a request entity that redefines a stored one",
            file.display()
        ),
    ] {
        assert!(
            out.lines().any(|l| l == expected),
            "no `{expected}`:\n{out}"
        );
    }
    assert!(
        out.contains("could not be evaluated") && out.contains("cannot be redefined"),
        "{out}"
    );

    let report = parse_junit(&std::fs::read_to_string(&junit).unwrap());
    assert_eq!(
        (report.tests.as_str(), report.failures.as_str()),
        ("5", "4")
    );
    let failed: Vec<_> = report
        .cases
        .iter()
        .filter_map(|(_, name, failure)| failure.as_ref().map(|f| (name.as_str(), f.as_str())))
        .collect();
    assert_eq!(failed.len(), 4, "{report:?}");
    assert_eq!(
        failed[0],
        (
            "wrong decision",
            "decision: expected allow, got deny (determining policies [])"
        )
    );
    assert_eq!(failed[1].0, "wrong policies");
    assert!(failed[2].1.starts_with("errors: expected []"), "{failed:?}");
    assert_eq!(
        report.cases[0],
        ("b.test.yaml".to_string(), "alice views".to_string(), None)
    );
}

#[test]
fn a_malformed_test_file_exits_1_with_its_location() {
    let dir = policy_dir();
    write(dir.path(), "good.test.yaml", PASSING);
    // Line 6, column 5: a misspelt field.
    write(
        dir.path(),
        "bad.test.yaml",
        "cases:\n  - name: x\n    principal: User::\"a\"\n    action: Action::\"view\"\n    resource: Photo::\"p\"\n    expct: {decision: allow}\n",
    );
    // A uid that does not parse, and a fixture that the loader would take
    // as the directory's entities.
    write(
        dir.path(),
        "worse.test.json",
        "{\"fixtures\": [\"users.entities.json\"],\n \"cases\": [{\"name\": \"y\", \"principal\": \"alice\",\n  \"action\": \"Action::\\\"view\\\"\", \"resource\": \"Photo::\\\"p\\\"\", \"expect\": {\"decision\": \"deny\"}}]}\n",
    );
    let ran = run_tests(dir.path(), None);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    let bad = dir.path().join("bad.test.yaml");
    let worse = dir.path().join("worse.test.json");
    for expected in [
        format!("{}:6:5: unknown field `expct`", bad.display()),
        format!("{}:1:15: fixture `users.entities.json`", worse.display()),
        format!(
            "{}:2:39: `principal`: `alice` is not an entity uid",
            worse.display()
        ),
    ] {
        assert!(ran.stderr.contains(&expected), "no `{expected}`: {ran:?}");
    }
    assert!(!ran.stdout.contains("passed"), "no case runs: {ran:?}");
}

#[test]
fn a_set_that_does_not_load_or_has_no_tests_exits_1() {
    let dir = policy_dir();
    let ran = run_tests(dir.path(), None);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("no test files"), "{ran:?}");

    write(dir.path(), "a.test.yaml", PASSING);
    write(
        dir.path(),
        "broken.cedar",
        "permit(principal, action resource);\n",
    );
    let ran = run_tests(dir.path(), None);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    let broken = dir.path().join("broken.cedar");
    assert!(
        ran.stderr.contains(&format!("{}:1:26:", broken.display())),
        "{ran:?}"
    );
    assert!(ran.stdout.is_empty(), "{ran:?}");
}

fn crate_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

#[test]
fn the_shipped_policy_tests_pass() {
    let junit = TempDir::new().unwrap();
    let junit = junit.path().join("policies.xml");
    let ran = run_tests(&crate_policies(), Some(&junit));
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    let report = parse_junit(&std::fs::read_to_string(&junit).unwrap());
    assert_eq!(report.failures, "0");
    assert_eq!(
        last_line(&ran.stdout),
        format!("{} passed, 0 failed", report.cases.len())
    );
    let files: BTreeSet<_> = report.suites.iter().map(|s| s.0.as_str()).collect();
    for f in [
        "agents.test.yaml",
        "http.test.yaml",
        "mesh.test.yaml",
        "network.test.yaml",
        "readme.test.yaml",
    ] {
        assert!(files.contains(f), "{f} is not run: {files:?}");
    }
}

#[test]
fn every_shipped_policy_determines_some_shipped_case() {
    let dir = crate_policies();
    let snapshot = build(read_dir(&dir).unwrap(), &LoadOptions::default(), 1).unwrap();
    let suite = read_suite(&dir).unwrap();
    let covered: BTreeSet<String> = suite
        .files
        .iter()
        .flat_map(|f| &f.cases)
        .filter_map(|c| c.expect.determining_policies.clone())
        .flatten()
        .collect();
    let ids: BTreeSet<String> = snapshot
        .engine
        .policies()
        .policies()
        .map(|p| p.id().to_string())
        .collect();
    assert_eq!(ids.len(), 16, "{ids:?}");
    let missing: Vec<_> = ids.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "no case has these as determining policies: {missing:?}"
    );
    // And the README's calls are all there.
    let readme = suite
        .files
        .iter()
        .find(|f| f.rel == "readme.test.yaml")
        .unwrap();
    let numbers: BTreeSet<_> = readme
        .cases
        .iter()
        .filter_map(|c| c.name.split(':').next())
        .collect();
    assert_eq!(numbers, BTreeSet::from(["1", "2", "3", "4", "5", "6"]));
}

// ---- The reload gate, over a real server. ----

/// The test that the gate runs: alice may view.
const GATE_TEST: &str = r#"cases:
  - name: alice views
    principal: User::"alice"
    action: Action::"view"
    resource: Photo::"p"
    expect: {decision: allow, determining_policies: [allow-alice]}
"#;

/// The same set without the permit that `GATE_TEST` needs.
const WITHOUT_ALICE: &str = r#"@id("deny-blocked")
forbid(principal, action, resource) when { principal.blocked };

@id("owner-edits")
permit(principal, action == Action::"edit", resource) when { resource.owner == principal };
"#;

fn alice_views() -> AuthorizeRequest {
    request(("User", "alice"), ("Action", "view"), ("Photo", "p"))
}

async fn decide(client: &mut AuthorizerClient<Channel>) -> (bool, Vec<String>) {
    let r = client.authorize(alice_views()).await.unwrap().into_inner();
    (r.decision == Decision::Allow as i32, r.determining_policies)
}

fn gated(dir: &Path) -> cedar_pdp::config::Config {
    let mut config = test_config(dir);
    config.reload.require_tests = true;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_a_set_whose_tests_fail_and_keeps_the_last_good_one() {
    let dir = policy_dir();
    write(dir.path(), "alice.test.yaml", GATE_TEST);
    let server = TestServer::start_with(gated(dir.path())).await;
    let mut client = server.client().await;
    let status = client
        .get_policy_status(GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.generation, 1);
    assert_eq!(
        decide(&mut client).await,
        (true, vec!["allow-alice".into()])
    );

    // A policy change that breaks the test is refused.
    write_atomic(dir.path(), "policy.cedar", WITHOUT_ALICE);
    let status = wait_for_reload_error(&mut client).await;
    let error = &status.last_reload_error;
    assert!(
        error.contains(
            "alice.test.yaml:2:1: test `alice views` failed: decision: expected allow, got deny"
        ),
        "{error}"
    );
    assert!(error.contains("0 passed, 1 failed"), "{error}");
    assert_eq!(status.generation, 1, "the failing set went live");
    assert_eq!(
        decide(&mut client).await,
        (true, vec!["allow-alice".into()])
    );
    // Metrics are read from the store at scrape time.
    let (_, scrape) = http_get(server.admin_addr, "/metrics").await;
    let reloads = |result: &str| {
        sample(
            &scrape,
            "cedar_pdp_policy_reloads_total",
            &[("result", result)],
        )
    };
    assert!(reloads("error").unwrap() >= 1.0, "{scrape}");
    assert_eq!(reloads("success"), Some(1.0), "{scrape}");
    assert_eq!(
        sample(&scrape, "cedar_pdp_policy_generation", &[]),
        Some(1.0)
    );

    // Fixing the test activates the set.
    write_atomic(
        dir.path(),
        "alice.test.yaml",
        &GATE_TEST.replace(
            "{decision: allow, determining_policies: [allow-alice]}",
            "{decision: deny, determining_policies: []}",
        ),
    );
    let status = wait_for_generation(&mut client, 1).await;
    assert_eq!(status.generation, 2);
    assert_eq!(status.last_reload_error, "");
    assert_eq!(decide(&mut client).await, (false, vec![]));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_reruns_changed_tests_on_the_live_set() {
    let dir = policy_dir();
    write(dir.path(), "alice.test.yaml", GATE_TEST);
    let server = TestServer::start_with(gated(dir.path())).await;
    let mut client = server.client().await;

    // Only the tests change, and now fail: reported, nothing swapped.
    write_atomic(
        dir.path(),
        "alice.test.yaml",
        &GATE_TEST.replace(
            "{decision: allow, determining_policies: [allow-alice]}",
            "{decision: deny, determining_policies: []}",
        ),
    );
    let status = wait_for_reload_error(&mut client).await;
    assert!(
        status
            .last_reload_error
            .contains("test `alice views` failed"),
        "{status:?}"
    );
    assert_eq!(status.generation, 1);
    assert_eq!(
        decide(&mut client).await,
        (true, vec!["allow-alice".into()])
    );

    // Fixing the policy instead (so the changed test holds) activates it.
    write_atomic(dir.path(), "policy.cedar", WITHOUT_ALICE);
    let status = wait_for_generation(&mut client, 1).await;
    assert_eq!(status.last_reload_error, "");
    assert_eq!(decide(&mut client).await, (false, vec![]));
    server.stop().await.unwrap();
}

#[test]
fn the_gate_refuses_the_first_set_too_and_is_off_by_default() {
    let dir = policy_dir();
    // No tests at all: refused when they are required.
    let Err(err) = App::build(gated(dir.path())) else {
        panic!("a set without tests started");
    };
    assert!(err.to_string().contains("no `*.test.yaml`"), "{err}");

    write(
        dir.path(),
        "alice.test.yaml",
        &GATE_TEST.replace("decision: allow", "decision: deny"),
    );
    let Err(err) = App::build(gated(dir.path())) else {
        panic!("a set whose test fails started");
    };
    assert!(
        err.to_string().contains("test `alice views` failed"),
        "{err}"
    );
    // Without `require_tests`, tests are not the server's business.
    assert!(App::build(test_config(dir.path())).is_ok());
}

/// Cases give the caller's verified facts and its `workload` as the API
/// takes them; the pipeline builds `context.caller` and `context.workload`,
/// applies caller binding under the given config, and a case can expect a
/// refusal by its stable reason.
#[test]
fn cases_run_through_the_pipeline_with_caller_facts_and_workload() {
    let dir = TempDir::new().unwrap();
    write(
        dir.path(),
        "p.cedar",
        r#"@id("caller-is-principal")
permit(principal, action, resource)
when { context has caller && context.caller has spiffe_id && context.caller.spiffe_id == "spiffe://td/ns/a/sa/b" };

@id("unix-root")
permit(principal, action, resource)
when { context has caller && context.caller has uid && context.caller.uid == 0 };

@id("labelled")
permit(principal, action, resource)
when { context has workload && context.workload.labels.contains("app=web") };
"#,
    );
    let cases = r#"cases:
  - name: the verified caller is the principal
    principal: {type: W, id: "spiffe://td/ns/a/sa/b"}
    action: A::"x"
    resource: R::"r"
    caller: {spiffe_id: "spiffe://td/ns/a/sa/b"}
    expect: {decision: allow, determining_policies: [caller-is-principal]}
  - name: another verified caller is not
    principal: {type: W, id: "spiffe://td/ns/a/sa/b"}
    action: A::"x"
    resource: R::"r"
    caller: {spiffe_id: "spiffe://td/ns/a/sa/other"}
    expect: {decision: deny}
  - name: a Unix peer's credentials
    principal: W::"p"
    action: A::"x"
    resource: R::"r"
    caller: {uid: 0, gid: 0, pid: 7}
    expect: {decision: allow, determining_policies: [unix-root]}
  - name: workload labels become key=value
    principal: W::"p"
    action: A::"x"
    resource: R::"r"
    workload: {spiffe_id: "spiffe://td/ns/a/sa/b", labels: {app: web}}
    expect: {decision: allow, determining_policies: [labelled]}
  - name: context.caller is the server's to set
    principal: W::"p"
    action: A::"x"
    resource: R::"r"
    context: {caller: {uid: 0}}
    expect: {error: invalid_request}
"#;
    write(dir.path(), "p.test.yaml", cases);
    let ran = run_tests(dir.path(), None);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert_eq!(last_line(&ran.stdout), "5 passed, 0 failed", "{ran:?}");

    // With caller binding on (a config), a workload that names another
    // SPIFFE ID than the verified caller is refused, as the server would.
    let binding = r#"cases:
  - name: a workload may only ask for itself
    principal: W::"p"
    action: A::"x"
    resource: R::"r"
    caller: {spiffe_id: "spiffe://td/ns/a/sa/b"}
    workload: {spiffe_id: "spiffe://td/ns/a/sa/other"}
    expect: {error: binding_mismatch}
  - name: a wrong expectation is reported with the reason it got
    principal: W::"p"
    action: A::"x"
    resource: R::"r"
    caller: {spiffe_id: "spiffe://td/ns/a/sa/b"}
    workload: {spiffe_id: "spiffe://td/ns/a/sa/other"}
    expect: {decision: allow}
"#;
    write(dir.path(), "p.test.yaml", binding);
    let config_dir = TempDir::new().unwrap();
    // The server's config: binding needs client certificates, which the
    // test command names but never reads.
    let config = write(
        config_dir.path(),
        "bind.toml",
        "[caller]\nbind_workload = \"always\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n",
    );
    let mut cmd = bin();
    cmd.arg("test")
        .arg("--policies")
        .arg(dir.path())
        .arg("--config")
        .arg(&config);
    let ran = binary::run(cmd, DEADLINE);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert_eq!(last_line(&ran.stdout), "1 passed, 1 failed", "{ran:?}");
    assert!(
        ran.stdout
            .contains("PERMISSION_DENIED, reason `binding_mismatch`"),
        "{ran:?}"
    );

    // Malformed facts are located at their line.
    let bad = r#"cases:
  - name: a Unix peer without gid
    principal: W::"p"
    action: A::"x"
    resource: R::"r"
    caller: {uid: 0}
    expect: {decision: deny}
  - name: an unknown reason
    principal: W::"p"
    action: A::"x"
    resource: R::"r"
    expect: {error: no_such_reason}
"#;
    write(dir.path(), "p.test.yaml", bad);
    let ran = run_tests(dir.path(), None);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("p.test.yaml:6:"), "{ran:?}");
    assert!(ran.stderr.contains("needs both `uid` and `gid`"), "{ran:?}");
    assert!(
        ran.stderr.contains("unknown reason `no_such_reason`"),
        "{ran:?}"
    );
}
