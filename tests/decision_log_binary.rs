//! The decision log under load: nothing a client was told about is lost on
//! SIGTERM (the real binary), and `drop` mode accounts for every record.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cedar_pdp::config::{DecisionLogConfig, LogSink, OnFull};
use cedar_pdp::decision_log::{Caller, DecisionLog, DecisionRecord, EntityRef, RECORD_VERSION};
use cedar_pdp::grpc::proto;
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use common::binary::Served;
use tempfile::TempDir;

/// How long the binary may take to do anything, on a slow shared machine.
const DEADLINE: Duration = Duration::from_secs(20);

const POLICY: &str = r#"
@id("allow-alice")
permit (principal == User::"alice", action, resource);
"#;

fn alice_request(n: u64) -> proto::AuthorizeRequest {
    let uid = |t: &str, id: &str| {
        Some(proto::EntityUid {
            r#type: t.to_string(),
            id: id.to_string(),
        })
    };
    proto::AuthorizeRequest {
        principal: uid("User", "alice"),
        action: uid("Action", "read"),
        resource: uid("Doc", &format!("d{n}")),
        ..Default::default()
    }
}

/// Decision ids in the live log file and any rotated siblings.
fn logged_ids(path: &Path) -> HashSet<String> {
    let mut files = vec![path.to_path_buf()];
    for i in 1..=10 {
        let rotated = PathBuf::from(format!("{}.{i}", path.display()));
        if rotated.exists() {
            files.push(rotated);
        }
    }
    let mut ids = HashSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !common::is_mark(l))
        {
            let record: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{}:{}: not one JSON record ({e}): {line}",
                    file.display(),
                    n + 1
                )
            });
            let id = record["decision_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no decision_id: {line}"));
            ids.insert(id.to_string());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_accepted_is_lost_on_sigterm() {
    const CLIENTS: usize = 6;
    const BEFORE_SIGTERM: usize = 2000;

    let work = TempDir::new().unwrap();
    let policies = work.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("p.cedar"), POLICY).unwrap();
    let log_path = work.path().join("decisions.log");
    let body = format!(
        r#"policies = "{}"

[limits]
max_batch_size = 10

[decision_log]
enabled = true
sink = "file"
path = "{}"
max_file_bytes = 104857600
queue_capacity = 64
on_full = "block"
"#,
        policies.display(),
        log_path.display()
    );
    let mut served = Served::start_with_config(work.path(), &body, DEADLINE).await;
    let url = format!("http://{}", served.addr);

    let received = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        let received = Arc::clone(&received);
        tasks.push(tokio::spawn(async move {
            let mut client = AuthorizerClient::connect(url).await.unwrap();
            let mut ids = Vec::new();
            let mut last_error = None;
            // Bounded even if SIGTERM never stops the server.
            let stop_at = Instant::now() + Duration::from_secs(120);
            let mut n = c as u64 * 1_000_000;
            while Instant::now() < stop_at {
                n += 1;
                let call = client.authorize(alice_request(n));
                match tokio::time::timeout(Duration::from_secs(10), call).await {
                    Ok(Ok(resp)) => {
                        let resp = resp.into_inner();
                        assert_eq!(resp.decision, proto::Decision::Allow as i32);
                        ids.push(resp.decision_id);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(status)) => {
                        last_error = Some(status.to_string());
                        break;
                    }
                    Err(_) => {
                        last_error = Some("timed out".to_string());
                        break;
                    }
                }
            }
            (ids, last_error)
        }));
    }

    let start = Instant::now();
    while received.load(Ordering::Relaxed) < BEFORE_SIGTERM {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {} responses within 60s:\n{}",
            received.load(Ordering::Relaxed),
            served.log()
        );
        assert!(
            !tasks.iter().all(tokio::task::JoinHandle::is_finished),
            "every client stopped early:\n{}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_sigterm = received.load(Ordering::Relaxed);
    served.send_sigterm();

    let mut returned = Vec::new();
    for task in tasks {
        let (ids, last_error) = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("a client stops within the deadline after SIGTERM")
            .unwrap();
        assert!(
            last_error.is_some(),
            "a client never saw the server stop:\n{}",
            served.log()
        );
        returned.extend(ids);
    }
    let status = served.wait_exit(DEADLINE).await;
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is a clean stop:\n{}",
        served.log()
    );
    assert!(
        returned.len() >= at_sigterm,
        "{} < {at_sigterm}",
        returned.len()
    );

    let logged = logged_ids(&log_path);
    let missing: Vec<&String> = returned.iter().filter(|id| !logged.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} decisions returned to clients are missing from the log ({} logged, {} \
         returned after SIGTERM); first few: {:?}\nserver log:\n{}",
        missing.len(),
        returned.len(),
        logged.len(),
        returned.len() - at_sigterm,
        &missing[..missing.len().min(5)],
        served.log()
    );
    eprintln!(
        "sigterm: {} returned ({} after SIGTERM), {} logged",
        returned.len(),
        returned.len() - at_sigterm,
        logged.len()
    );
    let unique: HashSet<&String> = returned.iter().collect();
    assert_eq!(unique.len(), returned.len(), "decision ids are unique");
}

fn record(n: u64) -> DecisionRecord {
    let e = |t: &str, id: &str| EntityRef {
        type_name: t.into(),
        id: id.into(),
    };
    DecisionRecord {
        record_version: RECORD_VERSION,
        decision_id: format!("d-{n}"),
        timestamp: "2024-01-01T00:00:00.000000Z".into(),
        trace_id: String::new(),
        span_id: String::new(),
        request_id: format!("r-{n}"),
        api: "grpc",
        caller: Caller::default(),
        principal: e("User", "alice"),
        action: e("Action", "read"),
        resource: e("Doc", &format!("d{n}")),
        context: serde_json::json!({"n": n, "pad": "x".repeat(200)}),
        workload: serde_json::Value::Null,
        delegation: serde_json::Value::Null,
        purpose: String::new(),
        tokens: serde_json::Value::Null,
        properties: serde_json::Value::Null,
        search: serde_json::Value::Null,
        entities: None,
        shared_entities: None,
        schema_digest: None,
        replayable: true,
        decision: "allow",
        determining_policies: vec!["allow-alice".into()],
        errors: vec![],
        dropped_properties: vec![],
        shadow: None,
        error: None,
        policy_revision: "sha256:test".into(),
        policy_commit: None,
        policy_generation: 1,
        latency_us: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mode_counts_what_it_drops() {
    const RECORDS: u64 = 20_000;

    let dir = TempDir::new().unwrap();
    let path = dir.path().join("decisions.log");
    let config = DecisionLogConfig {
        enabled: true,
        sink: LogSink::File,
        path: path.clone(),
        max_file_bytes: 1024 * 1024 * 1024,
        max_files: 2,
        queue_capacity: 1,
        queue_bytes: 64 * 1024 * 1024,
        on_full: OnFull::Drop,
        mask: vec![],
        remove: vec![],
        ..DecisionLogConfig::default()
    };
    let (log, writer) = DecisionLog::start(&config).unwrap();
    for n in 0..RECORDS {
        let mut slots = log.reserve(1).await;
        slots.submit(record(n));
    }
    let dropped = log.dropped();
    drop(log);
    let written = writer
        .finish(Duration::from_secs(20))
        .await
        .expect("the writer drains within 20s");

    let text = std::fs::read_to_string(&path).unwrap();
    let mut ids = HashSet::new();
    for line in text.lines().filter(|l| !common::is_mark(l)) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(ids.insert(r["decision_id"].as_str().unwrap().to_string()));
    }
    let lines = ids.len() as u64;
    assert_eq!(written, lines, "the writer's count matches the file");
    assert_eq!(
        dropped + lines,
        RECORDS,
        "every record is written or counted as dropped ({dropped} dropped, {lines} written)"
    );
    eprintln!("drop mode: {dropped} dropped, {lines} written of {RECORDS}");
}
