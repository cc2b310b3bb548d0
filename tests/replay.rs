//! `cedar-pdp replay` with the real binary: recorded decisions reproduce
//! against their own revision (rebuilt from git once the files moved on),
//! and a candidate set reports exactly the decisions it changes, checked
//! against a server running that candidate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cedar_pdp::grpc::proto;
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use common::binary::{Ran, Served, bin, run};
use serde_json::{Value as Json, json};
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(30);

const POLICIES: &str = r#"
@id("alice")
permit (principal == User::"alice", action, resource);

@id("readers")
permit (principal in Group::"readers", action == Action::"read", resource);

@id("late")
forbid (principal, action, resource) when { context has hour && context.hour > 20 };
"#;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.org"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the tests need the `git` CLI to build repositories");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn uid(t: &str, id: &str) -> Option<proto::EntityUid> {
    Some(proto::EntityUid {
        r#type: t.to_string(),
        id: id.to_string(),
    })
}

/// Request `n`: principals, actions, entities and hours vary.
fn request(n: u64) -> proto::AuthorizeRequest {
    let who = ["alice", "bob", "carol", "dave"][(n % 4) as usize];
    let action = if n.is_multiple_of(3) { "write" } else { "read" };
    let mut req = proto::AuthorizeRequest {
        principal: uid("User", who),
        action: uid("Action", action),
        resource: uid("Doc", &format!("d{n}")),
        context_json: json!({"hour": (n * 7) % 24}).to_string(),
        ..Default::default()
    };
    if who == "carol" || who == "dave" {
        let parents = if who == "carol" {
            json!([{"type": "Group", "id": "readers"}])
        } else {
            json!([])
        };
        req.entities_json =
            json!([{"uid": {"type": "User", "id": who}, "attrs": {}, "parents": parents}])
                .to_string();
    }
    req
}

/// What a server answered: decision, determining policies, errors.
type Answer = (i32, Vec<String>, Vec<String>);

fn answer(r: proto::AuthorizeResponse) -> (String, Answer) {
    let mut policies = r.determining_policies;
    policies.sort();
    let errors = r
        .errors
        .into_iter()
        .map(|e| format!("{}: {}", e.policy_id, e.message))
        .collect();
    (r.decision_id, (r.decision, policies, errors))
}

/// Decides requests 0..n one by one, then a batch whose shared entities
/// make bob a reader: each decision id and answer, in order.
async fn decide_all(served: &Served, n: u64) -> Vec<(String, Answer)> {
    let mut client = AuthorizerClient::connect(format!("http://{}", served.addr))
        .await
        .unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let r = client.authorize(request(i)).await.unwrap().into_inner();
        out.push(answer(r));
    }
    let batch = proto::BatchAuthorizeRequest {
        requests: (0..6).map(|i| request(4 * i + 1)).collect(),
        entities_json:
            json!([{"uid": {"type": "User", "id": "bob"}, "attrs": {"note": "x".repeat(300)},
            "parents": [{"type": "Group", "id": "readers"}]}])
            .to_string(),
        ..Default::default()
    };
    let answers = client.batch_authorize(batch).await.unwrap().into_inner();
    out.extend(answers.responses.into_iter().map(answer));
    out
}

fn config(policies: &Path, log: &Path) -> String {
    format!(
        r#"policies = "{}"
admin_listen = ""

[decision_log]
enabled = true
sink = "file"
path = "{}"
max_inline_entities_bytes = 256
mask = ["context.secret"]
"#,
        policies.display(),
        log.display()
    )
}

async fn serve(work: &Path, policies: &Path, log: &Path) -> Served {
    Served::start_with_config(work, &config(policies, log), DEADLINE).await
}

async fn stop(mut served: Served) {
    served.send_sigterm();
    assert_eq!(
        served.wait_exit(DEADLINE).await.code(),
        Some(0),
        "{}",
        served.log()
    );
}

fn replay(args: &[&str], log: &Path) -> Ran {
    let mut cmd = bin();
    cmd.arg("replay").arg("--log").arg(log).args(args);
    run(cmd, DEADLINE)
}

fn summary(ran: &Ran) -> &str {
    ran.stdout.lines().last().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_every_decision_and_names_exactly_what_a_change_alters() {
    let work = TempDir::new().unwrap();
    let policies = work.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("p.cedar"), POLICIES).unwrap();
    git(&policies, &["init", "-q"]);
    git(&policies, &["add", "."]);
    git(&policies, &["commit", "-qm", "policies"]);
    let log = work.path().join("decisions.log");

    let served = serve(work.path(), &policies, &log).await;
    let decided = decide_all(&served, 40).await;
    // One masked record, and one refusal: neither can be replayed.
    let mut client = AuthorizerClient::connect(format!("http://{}", served.addr))
        .await
        .unwrap();
    let mut masked = request(1);
    masked.context_json = json!({"secret": "s3cr3t", "hour": 3}).to_string();
    client.authorize(masked).await.unwrap();
    let mut bad = request(2);
    bad.context_json = "[1]".into();
    assert!(client.authorize(bad).await.is_err());
    drop(client);
    stop(served).await;
    let records = decided.len() + 2;
    assert!(
        std::fs::read_dir(work.path().join("decisions.log.entities"))
            .unwrap()
            .count()
            >= 1,
        "the batch's shared set went to a side file"
    );

    // The policy files move on; the recorded revision is rebuilt from git.
    std::fs::write(
        policies.join("p.cedar"),
        "permit (principal, action, resource);",
    )
    .unwrap();
    git(&policies, &["commit", "-qam", "allow all"]);
    let ran = replay(&["--source", policies.to_str().unwrap()], &log);
    assert_eq!(ran.code(), Some(0), "{}{}", ran.stdout, ran.stderr);
    assert_eq!(
        summary(&ran),
        format!(
            "replayed {records} decisions: 0 allow -> deny, 0 deny -> allow, 0 reason only, 2 not replayable"
        ),
        "{}",
        ran.stdout
    );
    assert!(ran.stderr.contains("records/s"), "{}", ran.stderr);

    // A candidate: the late forbid starts at 10 instead of 20 (allows
    // flip to denies, default denies become the forbid's), and bob may
    // write (denies flip to allows).
    let candidate = work.path().join("candidate");
    std::fs::create_dir(&candidate).unwrap();
    std::fs::write(
        candidate.join("p.cedar"),
        POLICIES.replace("context.hour > 20", "context.hour > 10")
            + r#"@id("bob_writes") permit (principal == User::"bob", action == Action::"write", resource);"#,
    )
    .unwrap();
    // Direct evaluation: the same requests against a server on the candidate.
    // A difference is any change of decision, determining policies or errors.
    let other_log = work.path().join("candidate.log");
    let served = serve(work.path(), &candidate, &other_log).await;
    let direct = decide_all(&served, 40).await;
    stop(served).await;
    assert_eq!(direct.len(), decided.len());
    let changed: BTreeSet<String> = decided
        .iter()
        .zip(&direct)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.clone())
        .collect();
    assert!(!changed.is_empty(), "the change alters some decisions");
    assert!(changed.len() < decided.len(), "and not all of them");
    // Flips, by the servers' own answers, and changes of reason alone.
    let flips = |from: proto::Decision, to: proto::Decision| {
        decided
            .iter()
            .zip(&direct)
            .filter(|(a, b)| a.1.0 == from as i32 && b.1.0 == to as i32)
            .count()
    };
    let allow_to_deny = flips(proto::Decision::Allow, proto::Decision::Deny);
    let deny_to_allow = flips(proto::Decision::Deny, proto::Decision::Allow);
    let reason_only = changed.len() - allow_to_deny - deny_to_allow;
    assert!(
        allow_to_deny > 0 && deny_to_allow > 0 && reason_only > 0,
        "the candidate makes every kind of change: {allow_to_deny} {deny_to_allow} {reason_only}"
    );

    let ran = replay(&["--policies", candidate.to_str().unwrap()], &log);
    assert_eq!(ran.code(), Some(1), "{}{}", ran.stdout, ran.stderr);
    let reported: BTreeSet<String> = ran
        .stdout
        .lines()
        .filter(|l| !l.starts_with("replayed "))
        .map(|l| l.split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(reported, changed, "{}", ran.stdout);
    // The summary leads with the flips, then the changes of reason alone.
    assert_eq!(
        summary(&ran),
        format!(
            "replayed {records} decisions: {allow_to_deny} allow -> deny, \
             {deny_to_allow} deny -> allow, {reason_only} reason only, 2 not replayable"
        )
    );
    // The line names old and new decision and determining policies.
    let line = ran.stdout.lines().next().unwrap();
    assert!(
        line.contains("allow -> deny, [") && line.contains("] -> [late]"),
        "{line}"
    );

    // JSON and JUnit say the same.
    let junit = work.path().join("replay.xml");
    let ran = replay(
        &[
            "--policies",
            candidate.to_str().unwrap(),
            "--format",
            "json",
            "--junit",
            junit.to_str().unwrap(),
        ],
        &log,
    );
    assert_eq!(ran.code(), Some(1));
    let lines: Vec<Json> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l["difference"]["decision_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, changed);
    let last = lines.last().unwrap();
    assert_eq!(last["summary"]["allow_to_deny"], allow_to_deny);
    assert_eq!(last["summary"]["deny_to_allow"], deny_to_allow);
    assert_eq!(last["summary"]["reason_only"], reason_only);
    assert_eq!(last["summary"]["differ"], changed.len());
    assert_eq!(last["summary"]["not_replayable"], 2);
    // In that order, flips first.
    let text = ran.stdout.lines().last().unwrap();
    let at = |key: &str| text.find(key).unwrap_or_else(|| panic!("{key}: {text}"));
    assert!(at("\"replayed\"") < at("\"allow_to_deny\""), "{text}");
    assert!(at("\"allow_to_deny\"") < at("\"deny_to_allow\""), "{text}");
    assert!(at("\"deny_to_allow\"") < at("\"reason_only\""), "{text}");
    assert!(at("\"reason_only\"") < at("\"not_replayable\""), "{text}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<failure").count(), changed.len(), "{xml}");
    assert_eq!(xml.matches("<skipped").count(), 2, "{xml}");

    // Unusable input: exit 2.
    let ran = replay(&[], &work.path().join("missing.log"));
    assert_eq!(ran.code(), Some(2), "{}{}", ran.stdout, ran.stderr);
    let ran = replay(
        &["--policies", work.path().join("nowhere").to_str().unwrap()],
        &log,
    );
    assert_eq!(ran.code(), Some(2));

    // Without the revision at hand, records are not replayable, not different.
    let elsewhere = work.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(
        elsewhere.join("p.cedar"),
        "forbid (principal, action, resource);",
    )
    .unwrap();
    let ran = replay(&["--source", elsewhere.to_str().unwrap()], &log);
    assert_eq!(ran.code(), Some(0), "{}", ran.stdout);
    assert_eq!(
        summary(&ran),
        format!(
            "replayed {records} decisions: 0 allow -> deny, 0 deny -> allow, 0 reason only, {records} not replayable"
        )
    );
}
