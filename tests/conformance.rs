//! Golden cases: the Cedar project's own integration corpus, run through the
//! gRPC `Authorize` endpoint of a real server.
//!
//! Each corpus test gets its own temporary policy directory (the test's policy
//! file as `policies.cedar`, its schema as `schema.cedarschema`) and its own
//! in-process server. Every request carries the test's entities as
//! `entities_json` and its context as `context_json`; the decision, the
//! determining policies and the erroring policies must match the reference
//! answers exactly. The loader's strict validation verdict must also agree
//! with `shouldValidate`. See the corpus README for the format.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;
use crate::corpus;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar_pdp::config::OnForbidError;
use cedar_pdp::engine::CompileOptions;
use cedar_pdp::grpc::proto::{self, Decision};
use cedar_pdp::policy_store::{LoadOptions, build, read_dir};
use cedar_policy::{PolicySet, Schema, ValidationMode, ValidationWarning, Validator};
use common::{TestServer, cedar_corpus, test_config};
use corpus::{CorpusTest, entity_ref, json_files_under};
use serde_json::Value as Json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Servers alive at once. Evaluation is CPU-bound, so a few more than the
/// core count keeps both cores busy while servers start and stop.
const CONCURRENCY: usize = 6;
/// Bound on one test file: load, start, every request, stop.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on one `Authorize` call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How many mismatches the failure report spells out.
const REPORT_LIMIT: usize = 20;

/// Minimums stated in the corpus README, so a broken glob cannot pass.
const MIN_HAND_WRITTEN_TESTS: usize = 22;
const MIN_HAND_WRITTEN_REQUESTS: usize = 74;
const MIN_CORPUS_TESTS: usize = 1_562;
const MIN_CORPUS_REQUESTS: usize = 12_496;
const MIN_NOT_VALIDATING_TESTS: usize = 295;

/// Test files (relative to the corpus root) that cannot apply to our server,
/// with the reason. Listed cases are skipped loudly, never silently.
const EXCEPTIONS: &[(&str, &str)] = &[];

/// Why the tests in [`VALIDATION_EXCEPTIONS`] now validate.
const ACTION_APPLICATION_IS_A_WARNING: &str = "the corpus was generated with cedar 4.10, where a \
    policy whose scope matches no action's `appliesTo` failed strict validation \
    (`InvalidActionApplication` error); cedar-policy/cedar#2545 made that finding a warning, so \
    cedar-policy 4.14 validates these policies";

/// Tests (relative to the corpus root) whose strict validation verdict
/// differs from `shouldValidate` because Cedar itself changed, with the reason.
/// Their requests are still run. Each entry is re-checked: the policies must
/// validate, `shouldValidate` must be false, and Cedar must warn
/// `InvalidActionApplication`, or the test fails.
const VALIDATION_EXCEPTIONS: &[(&str, &str)] = &[
    (
        "corpus-tests/0abc1d31e56e407cf1775de09b3e9a97b2dd202b.json",
        ACTION_APPLICATION_IS_A_WARNING,
    ),
    (
        "corpus-tests/36ce0d10182a0d1f930224fd741149c8245ed4d1.json",
        ACTION_APPLICATION_IS_A_WARNING,
    ),
    (
        "corpus-tests/3e13f44e56b14a69c26dfd763d854cbde98ed5f4.json",
        ACTION_APPLICATION_IS_A_WARNING,
    ),
    (
        "corpus-tests/4945bd08148a010c211ffabb00e21ebcfcbdc88b.json",
        ACTION_APPLICATION_IS_A_WARNING,
    ),
    (
        "corpus-tests/4c2391eb1aba60d52e6bea12a699326cfbc836d2.json",
        ACTION_APPLICATION_IS_A_WARNING,
    ),
    (
        "corpus-tests/52017e026636c59eff70268dd6df1ede79a5bcbd.json",
        ACTION_APPLICATION_IS_A_WARNING,
    ),
];

/// The file our server reads the test's policies from; ids derive from it.
const POLICY_FILE: &str = "policies.cedar";

/// What one side said about one request.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    allow: bool,
    reason: BTreeSet<String>,
    errors: BTreeSet<String>,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} reason={:?} errors={:?}",
            if self.allow { "allow" } else { "deny" },
            self.reason,
            self.errors
        )
    }
}

#[derive(Debug)]
struct Mismatch {
    file: String,
    description: String,
    expected: String,
    got: String,
}

/// The outcome of one test file.
#[derive(Debug, Default)]
struct CaseOutcome {
    requests: usize,
    should_validate: bool,
    mismatches: Vec<Mismatch>,
    /// Set when the strict validation verdict disagrees with `shouldValidate`.
    validation_disagreement: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cedar_integration_corpus() {
    let root = cedar_corpus();
    assert!(
        root.join("README.md").is_file(),
        "`{}` does not hold the Cedar integration corpus",
        root.display()
    );
    let hand_written = json_files_under(&root.join("tests"));
    let corpus = json_files_under(&root.join("corpus-tests"));
    assert!(
        hand_written.len() >= MIN_HAND_WRITTEN_TESTS,
        "found {} hand-written tests, expected at least {MIN_HAND_WRITTEN_TESTS}",
        hand_written.len()
    );
    assert!(
        corpus.len() >= MIN_CORPUS_TESTS,
        "found {} corpus tests, expected at least {MIN_CORPUS_TESTS}",
        corpus.len()
    );

    println!("conformance: {} tests skipped:", EXCEPTIONS.len());
    for (file, reason) in EXCEPTIONS {
        println!("  {file}: {reason}");
    }
    println!(
        "conformance: {} tests expected to validate despite `shouldValidate: false` (requests still run):",
        VALIDATION_EXCEPTIONS.len()
    );
    for (file, reason) in VALIDATION_EXCEPTIONS {
        println!("  {file}: {reason}");
    }
    let known: BTreeSet<&str> = hand_written
        .iter()
        .chain(&corpus)
        .map(String::as_str)
        .collect();
    let stale: Vec<_> = EXCEPTIONS
        .iter()
        .chain(VALIDATION_EXCEPTIONS)
        .filter(|(f, _)| !known.contains(f))
        .collect();
    assert!(
        stale.is_empty(),
        "listed exceptions name no test file: {stale:?}"
    );

    let started = Instant::now();
    let root = Arc::new(root);
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (hand, files) in [(true, hand_written), (false, corpus)] {
        for rel in files {
            if EXCEPTIONS.iter().any(|(f, _)| *f == rel) {
                continue;
            }
            let root = Arc::clone(&root);
            let permits = Arc::clone(&permits);
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                let outcome = match tokio::time::timeout(CASE_TIMEOUT, run_case(&root, &rel)).await
                {
                    Ok(outcome) => outcome,
                    Err(_) => CaseOutcome {
                        should_validate: true,
                        mismatches: vec![Mismatch {
                            file: rel.clone(),
                            description: "<whole test>".to_string(),
                            expected: "to finish".to_string(),
                            got: format!("timed out after {CASE_TIMEOUT:?}"),
                        }],
                        ..CaseOutcome::default()
                    },
                };
                (hand, rel, outcome)
            });
        }
    }
    let (mut hand_requests, mut corpus_requests, mut not_validating) = (0, 0, 0);
    let mut mismatches = Vec::new();
    let mut disagreements = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (hand, rel, outcome) = joined.expect("a conformance task panicked");
        if hand {
            hand_requests += outcome.requests;
        } else {
            corpus_requests += outcome.requests;
        }
        if let Some(d) = outcome.validation_disagreement {
            disagreements.push(format!("{rel}: {d}"));
        }
        mismatches.extend(outcome.mismatches);
        if !hand && !outcome.should_validate {
            not_validating += 1;
        }
    }
    println!(
        "conformance: {} requests ({hand_requests} hand-written, {corpus_requests} corpus) in {:.1?}",
        hand_requests + corpus_requests,
        started.elapsed()
    );

    disagreements.sort();
    mismatches.sort_by(|a, b| (&a.file, &a.description).cmp(&(&b.file, &b.description)));
    let mut report = String::new();
    if !disagreements.is_empty() {
        report.push_str(&format!(
            "{} tests where strict validation disagrees with `shouldValidate`:\n",
            disagreements.len()
        ));
        for d in disagreements.iter().take(REPORT_LIMIT) {
            report.push_str(&format!("  {d}\n"));
        }
    }
    if !mismatches.is_empty() {
        report.push_str(&format!(
            "{} of {} requests did not match (first {}):\n",
            mismatches.len(),
            hand_requests + corpus_requests,
            REPORT_LIMIT.min(mismatches.len())
        ));
        for m in mismatches.iter().take(REPORT_LIMIT) {
            report.push_str(&format!(
                "  {} [{}]\n    expected: {}\n    got:      {}\n",
                m.file, m.description, m.expected, m.got
            ));
        }
    }
    assert!(report.is_empty(), "conformance failures:\n{report}");

    assert!(
        hand_requests >= MIN_HAND_WRITTEN_REQUESTS,
        "ran {hand_requests} hand-written requests, expected at least {MIN_HAND_WRITTEN_REQUESTS}"
    );
    assert!(
        corpus_requests >= MIN_CORPUS_REQUESTS,
        "ran {corpus_requests} corpus requests, expected at least {MIN_CORPUS_REQUESTS}"
    );
    assert!(
        not_validating >= MIN_NOT_VALIDATING_TESTS,
        "ran {not_validating} corpus tests with `shouldValidate: false`, expected at least {MIN_NOT_VALIDATING_TESTS}"
    );
}

/// Runs one test file against its own server.
async fn run_case(root: &Path, rel: &str) -> CaseOutcome {
    let mut outcome = CaseOutcome::default();
    let mismatch = |description: &str, expected: String, got: String| Mismatch {
        file: rel.to_string(),
        description: description.to_string(),
        expected,
        got,
    };
    let text = std::fs::read_to_string(root.join(rel)).unwrap();
    let test: CorpusTest =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not a corpus test: {e}"));
    outcome.should_validate = test.should_validate;
    let policies_text = std::fs::read_to_string(root.join(&test.policies)).unwrap();
    let entities_text = std::fs::read_to_string(root.join(&test.entities)).unwrap();
    let ids = expected_ids(&policies_text, rel);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(POLICY_FILE), &policies_text).unwrap();
    if let Some(schema) = &test.schema {
        let name = if schema.ends_with(".json") {
            "schema.cedarschema.json"
        } else {
            "schema.cedarschema"
        };
        std::fs::copy(root.join(schema), dir.path().join(name)).unwrap();
    }

    // The loader's strict verdict must agree with the reference validator,
    // except where Cedar itself changed (checked, not assumed).
    let strict = load_result(dir.path(), true).await;
    if VALIDATION_EXCEPTIONS.iter().any(|(f, _)| *f == rel) {
        let schema_text = test
            .schema
            .as_ref()
            .map(|s| std::fs::read_to_string(root.join(s)).unwrap())
            .unwrap_or_default();
        if test.should_validate
            || strict.is_err()
            || !warns_invalid_action_application(&policies_text, &schema_text)
        {
            outcome.validation_disagreement = Some(format!(
                "listed in VALIDATION_EXCEPTIONS, but no longer \
                 `shouldValidate: false` + validates + warns `InvalidActionApplication` \
                 (loader verdict: {strict:?})"
            ));
        }
    } else if strict.is_ok() != test.should_validate {
        outcome.validation_disagreement = Some(match &strict {
            Ok(()) => "expected validation to fail, but the policies validate".to_string(),
            Err(e) => format!("expected the policies to validate, got: {e}"),
        });
    }
    let validate = test.should_validate && strict.is_ok();
    if !validate {
        // Requests are still checked; the set must at least load unvalidated.
        if let Err(e) = load_result(dir.path(), false).await {
            outcome.mismatches.push(mismatch(
                "<whole test>",
                "the policy directory loads with validation off".to_string(),
                e,
            ));
            return outcome;
        }
    }

    let mut config = test_config(dir.path());
    config.validation.policies = validate;
    // The corpus expects Cedar's semantics: an erroring policy is skipped.
    config.evaluation.on_forbid_error = OnForbidError::Skip;
    // Nothing changes on disk; skip the periodic rescan.
    config.reload.rescan_interval = Duration::ZERO;
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    for req in &test.requests {
        outcome.requests += 1;
        if !req.validate_request {
            outcome.mismatches.push(mismatch(
                &req.description,
                "`validateRequest: false` (list the test in EXCEPTIONS)".to_string(),
                "the server always validates requests against the schema".to_string(),
            ));
            continue;
        }
        let expected = Answer {
            allow: match req.decision.as_str() {
                "allow" => true,
                "deny" => false,
                other => panic!("{rel}: unknown decision `{other}`"),
            },
            reason: req.reason.iter().map(|id| map_id(&ids, id)).collect(),
            errors: req.errors.iter().map(|id| map_id(&ids, id)).collect(),
        };
        let request = proto::AuthorizeRequest {
            principal: Some(entity_ref(&req.principal, rel)),
            action: Some(entity_ref(&req.action, rel)),
            resource: Some(entity_ref(&req.resource, rel)),
            context_json: Json::Object(req.context.clone()).to_string(),
            entities_json: entities_text.clone(),
            ..Default::default()
        };
        let got = match tokio::time::timeout(CALL_TIMEOUT, client.authorize(request)).await {
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
            Ok(Err(status)) => Err(format!(
                "gRPC status {:?}: {}",
                status.code(),
                status.message()
            )),
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                Ok(Answer {
                    allow: resp.decision() == Decision::Allow,
                    reason: resp.determining_policies.into_iter().collect(),
                    errors: resp.errors.into_iter().map(|e| e.policy_id).collect(),
                })
            }
        };
        match got {
            Ok(answer) if answer == expected => {}
            Ok(answer) => outcome.mismatches.push(mismatch(
                &req.description,
                expected.to_string(),
                answer.to_string(),
            )),
            Err(e) => {
                outcome
                    .mismatches
                    .push(mismatch(&req.description, expected.to_string(), e));
            }
        }
    }
    drop(client);
    if let Err(e) = server.stop().await {
        outcome.mismatches.push(mismatch(
            "<server stop>",
            "a clean shutdown".to_string(),
            e.to_string(),
        ));
    }
    drop(dir);
    outcome
}

/// Loads `dir` the way the server does, on a blocking thread.
async fn load_result(dir: &Path, validate_policies: bool) -> Result<(), String> {
    let dir: PathBuf = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let sources = read_dir(&dir).map_err(|e| e.to_string())?;
        build(
            sources,
            &LoadOptions {
                compile: CompileOptions {
                    validate_policies,
                    ..LoadOptions::default().compile
                },
                ..LoadOptions::default()
            },
            1,
        )
        .map(drop)
        .map_err(|e| e.to_string())
    })
    .await
    .unwrap()
}

/// Whether Cedar validates `policies` strictly against `schema` with no
/// error, but warns that some policy's scope matches no action.
fn warns_invalid_action_application(policies: &str, schema: &str) -> bool {
    let (Ok(policies), Ok((schema, _))) = (
        PolicySet::from_str(policies),
        Schema::from_cedarschema_str(schema),
    ) else {
        return false;
    };
    let result = Validator::new(schema).validate(&policies, ValidationMode::Strict);
    result.validation_passed()
        && result
            .validation_warnings()
            .any(|w| matches!(w, ValidationWarning::InvalidActionApplication(_)))
}

/// Corpus id (`policyN`, by position) -> the id our server reports: the
/// policy's `@id` annotation, or `policies.cedar#N`.
fn expected_ids(policies_text: &str, rel: &str) -> BTreeMap<String, String> {
    let set = PolicySet::from_str(policies_text)
        .unwrap_or_else(|e| panic!("{rel}: policies do not parse: {e}"));
    set.policies()
        .map(|p| {
            let corpus_id = p.id().to_string();
            let index = corpus_id
                .strip_prefix("policy")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{rel}: unexpected parser id `{corpus_id}`"));
            let ours = p
                .annotation("id")
                .map_or_else(|| format!("{POLICY_FILE}#{index}"), ToString::to_string);
            (corpus_id, ours)
        })
        .collect()
}

/// An id the policy file does not define is kept, marked, so it shows up in
/// the report rather than being dropped.
fn map_id(ids: &BTreeMap<String, String>, corpus_id: &str) -> String {
    ids.get(corpus_id)
        .cloned()
        .unwrap_or_else(|| format!("<unknown {corpus_id}>"))
}
