//! The audit trail with the real binary: a hash chain across rotation and
//! restart, signed checkpoints, and `cedar-pdp log verify` naming the first
//! bad record for each kind of tampering.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cedar_pdp::grpc::proto;
use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use common::binary::{Ran, Served, bin, run};
use serde_json::Value as Json;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(30);

const POLICY: &str = r#"
@id("allow-alice")
permit (principal == User::"alice", action, resource);
"#;

/// A policy directory, an Ed25519 key pair and a config that logs, signed,
/// to `decisions.log`.
struct Audit {
    work: TempDir,
    key_pub: PathBuf,
}

impl Audit {
    fn new() -> Self {
        let work = TempDir::new().unwrap();
        let policies = work.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("p.cedar"), POLICY).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(work.path().join("signing.pem"), key.serialize_pem()).unwrap();
        let key_pub = work.path().join("signing.pub.pem");
        std::fs::write(&key_pub, key.public_key_pem()).unwrap();
        Self { work, key_pub }
    }

    fn log(&self) -> PathBuf {
        self.work.path().join("decisions.log")
    }

    fn config(&self, extra: &str) -> String {
        format!(
            r#"policies = "{}"
admin_listen = ""

[decision_log]
enabled = true
sink = "file"
path = "{}"
signing_key = "{}"
{extra}
"#,
            self.work.path().join("policies").display(),
            self.log().display(),
            self.work.path().join("signing.pem").display(),
        )
    }

    async fn serve(&self, extra: &str) -> Served {
        Served::start_with_config(self.work.path(), &self.config(extra), DEADLINE).await
    }

    /// The log's files: the live one and its rotated siblings.
    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.log()];
        for i in 1..=100 {
            let rotated = PathBuf::from(format!("{}.{i}", self.log().display()));
            if rotated.exists() {
                files.push(rotated);
            }
        }
        files
    }

    fn verify(&self, files: &[PathBuf], extra: &[&str]) -> Ran {
        let mut cmd = bin();
        cmd.args(["log", "verify", "--public-key"])
            .arg(&self.key_pub)
            .args(extra)
            .args(files);
        run(cmd, DEADLINE)
    }
}

fn request(who: &str, n: u64) -> proto::AuthorizeRequest {
    let uid = |t: &str, id: &str| {
        Some(proto::EntityUid {
            r#type: t.to_string(),
            id: id.to_string(),
        })
    };
    proto::AuthorizeRequest {
        principal: uid("User", who),
        action: uid("Action", "read"),
        resource: uid("Doc", &format!("d{n}")),
        ..Default::default()
    }
}

async fn decide(served: &Served, n: u64) -> Vec<String> {
    let mut client = AuthorizerClient::connect(format!("http://{}", served.addr))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let who = if i % 3 == 0 { "bob" } else { "alice" };
        let resp = client
            .authorize(request(who, i))
            .await
            .unwrap()
            .into_inner();
        ids.push(resp.decision_id);
    }
    ids
}

/// Each line of `path`, parsed.
fn lines(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verified(ran: &Ran) -> (u64, u64) {
    assert_eq!(
        ran.code(),
        Some(0),
        "verify failed:\n{}{}",
        ran.stdout,
        ran.stderr
    );
    let words: Vec<&str> = ran.stdout.split_whitespace().collect();
    assert_eq!(
        (words[0], words[2], words[4].trim_end_matches(',')),
        ("verified", "records,", "checkpoints"),
        "{}",
        ran.stdout
    );
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_written_under_load_across_rotation_and_restart_verifies() {
    const CLIENTS: usize = 4;
    let audit = Audit::new();
    let extra = "max_file_bytes = 65536\nmax_files = 100\ncheckpoint_interval = \"100ms\"\n";
    let mut served = audit.serve(extra).await;
    let url = format!("http://{}", served.addr);
    let received = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        let received = Arc::clone(&received);
        tasks.push(tokio::spawn(async move {
            let mut client = AuthorizerClient::connect(url).await.unwrap();
            let mut ids = Vec::new();
            let stop_at = Instant::now() + Duration::from_secs(120);
            let mut n = c as u64 * 1_000_000;
            while Instant::now() < stop_at {
                n += 1;
                let call = client.authorize(request("alice", n));
                match tokio::time::timeout(Duration::from_secs(10), call).await {
                    Ok(Ok(resp)) => {
                        ids.push(resp.into_inner().decision_id);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            ids
        }));
    }
    let start = Instant::now();
    while received.load(Ordering::Relaxed) < 3000 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "only {} decisions in 90s:\n{}",
            received.load(Ordering::Relaxed),
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    served.send_sigterm();
    let mut returned = Vec::new();
    for task in tasks {
        returned.extend(tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap());
    }
    let status = served.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "{}", served.log());

    let mut files = audit.files();
    assert!(files.len() > 3, "the log rotated: {files:?}");
    // Rotated files in any order.
    files.reverse();
    files.swap(0, 1);
    let (records, checkpoints) = verified(&audit.verify(&files, &[]));
    assert!(
        records as usize >= returned.len(),
        "{records} < {}",
        returned.len()
    );
    // A checkpoint ends every file, and the interval adds more.
    assert!(
        checkpoints as usize >= files.len(),
        "{checkpoints} checkpoints"
    );
    for file in &files {
        let last = lines(file).pop().unwrap();
        assert!(
            last.get("checkpoint").is_some(),
            "{} ends {last}",
            file.display()
        );
    }
    // Replay over the same files reproduces every decision.
    let mut cmd = bin();
    cmd.arg("replay")
        .arg("--source")
        .arg(audit.work.path().join("policies"));
    for file in &files {
        cmd.arg("--log").arg(file);
    }
    let replayed = run(cmd, DEADLINE);
    assert_eq!(
        replayed.code(),
        Some(0),
        "{}{}",
        replayed.stdout,
        replayed.stderr
    );
    assert_eq!(
        replayed.stdout.trim(),
        format!(
            "replayed {records} decisions: 0 allow -> deny, 0 deny -> allow, 0 reason only, 0 not replayable"
        )
    );

    // A restart continues the chain: seq and prev_hash follow on.
    let live = lines(&audit.log());
    let last_record = live
        .iter()
        .rev()
        .find(|l| l.get("seq").is_some())
        .unwrap()
        .clone();
    let served = audit.serve(extra).await;
    decide(&served, 5).await;
    let mut served = served;
    served.send_sigterm();
    assert_eq!(served.wait_exit(DEADLINE).await.code(), Some(0));
    // Every file: the restart's first records may fill the live file up
    // and rotate it away.
    let after: Vec<Json> = audit
        .files()
        .iter()
        .flat_map(|f| lines(f))
        .filter(|l| l.get("seq").is_some())
        .collect();
    let first_new = after
        .iter()
        .filter(|l| l["seq"].as_u64() > last_record["seq"].as_u64())
        .min_by_key(|l| l["seq"].as_u64())
        .unwrap();
    assert_eq!(first_new["seq"], last_record["seq"].as_u64().unwrap() + 1);
    assert_eq!(first_new["prev_hash"], last_record["hash"]);
    let (again, _) = verified(&audit.verify(&audit.files(), &[]));
    assert_eq!(again, records + 5);
    // The head file is read too, and agrees.
    let mut with_head = audit.files();
    with_head.push(PathBuf::from(format!("{}.head", audit.log().display())));
    verified(&audit.verify(&with_head, &[]));
}

/// A log of 20 decisions in one file: line 1 its start, lines 2-21 seq
/// 1-20, line 22 the shutdown checkpoint.
async fn small_log(audit: &Audit) -> Vec<String> {
    let mut served = audit.serve("").await;
    decide(&served, 20).await;
    served.send_sigterm();
    assert_eq!(served.wait_exit(DEADLINE).await.code(), Some(0));
    let text = std::fs::read_to_string(audit.log()).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 22, "{text}");
    let start: Json = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(start["start"]["prev_seq"], 0, "{text}");
    for (i, line) in lines[1..21].iter().enumerate() {
        let v: Json = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
    }
    lines
}

/// Writes `lines` as a tampered copy and verifies it: the failure line.
fn tampered(audit: &Audit, name: &str, lines: &[String]) -> String {
    let path = audit.work.path().join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let ran = audit.verify(&[path], &[]);
    assert_eq!(
        ran.code(),
        Some(1),
        "{name} verified:\n{}{}",
        ran.stdout,
        ran.stderr
    );
    ran.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_tampering_is_named_with_its_seq_and_line() {
    let audit = Audit::new();
    let lines = small_log(&audit).await;
    assert_eq!(verified(&audit.verify(&[audit.log()], &[])), (20, 1));

    // Edited: a deny turned into an allow.
    let mut edited = lines.clone();
    let deny = edited
        .iter()
        .position(|l| l.contains("\"decision\":\"deny\""))
        .unwrap();
    edited[deny] = edited[deny].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
    let out = tampered(&audit, "edited.log", &edited);
    assert!(
        out.contains(&format!("edited.log:{}: seq {}:", deny + 1, deny))
            && out.contains("(edited)"),
        "{out}"
    );

    // Deleted: seq 8 removed.
    let mut deleted = lines.clone();
    deleted.remove(8);
    let out = tampered(&audit, "deleted.log", &deleted);
    assert!(
        out.contains("deleted.log:9: seq 9: seq 8 is missing"),
        "{out}"
    );
    assert!(out.contains("(deleted)"), "{out}");

    // Reordered: seq 5 and 6 swapped.
    let mut reordered = lines.clone();
    reordered.swap(5, 6);
    let out = tampered(&audit, "reordered.log", &reordered);
    assert!(
        out.contains("reordered.log:6: seq 6: out of order: seq 5 comes after it, at "),
        "{out}"
    );
    assert!(out.contains("reordered.log:7 (reordered)"), "{out}");

    // Inserted: a copy of seq 10 with another decision id, after it.
    let mut copied = lines.clone();
    let v: Json = serde_json::from_str(&lines[10]).unwrap();
    let forged = lines[10].replace(
        v["decision_id"].as_str().unwrap(),
        "0190aaaa-0000-7000-8000-000000000000",
    );
    copied.insert(11, forged);
    let out = tampered(&audit, "copied.log", &copied);
    assert!(
        out.contains("copied.log:12: seq 10: seq 10 already appeared (at "),
        "{out}"
    );
    assert!(out.contains("copied.log:11)"), "{out}");
    assert!(out.contains("(inserted)"), "{out}");

    // Inserted: a record typed by hand, with no chain members.
    let mut by_hand = lines.clone();
    by_hand.insert(
        4,
        r#"{"decision_id":"x","decision":"allow","principal":{"type":"User","id":"mallory"}}"#
            .to_string(),
    );
    let out = tampered(&audit, "by_hand.log", &by_hand);
    assert!(
        out.contains("by_hand.log:5: seq 4:") && out.contains("(inserted)"),
        "{out}"
    );

    // Inserted with a valid hash and a fresh seq: it links to nothing.
    let mut spliced = lines.clone();
    let seq3: Json = serde_json::from_str(&lines[3]).unwrap();
    let mut fake = seq3.clone();
    fake["seq"] = Json::from(999u64);
    fake["prev_hash"] = Json::from("ab".repeat(32));
    spliced.insert(4, rehash(fake));
    let out = tampered(&audit, "spliced.log", &spliced);
    assert!(
        out.contains("spliced.log:5: seq 999: not part of the chain") && out.contains("(inserted)"),
        "{out}"
    );

    // A forged checkpoint: signed hash changed.
    let mut forged = lines.clone();
    let mut cp: Json = serde_json::from_str(&lines[21]).unwrap();
    cp["checkpoint"]["hash"] = Json::from("cd".repeat(32));
    forged[21] = cp.to_string();
    let out = tampered(&audit, "forged.log", &forged);
    assert!(
        out.contains("forged.log:22: seq 20: the signature of the checkpoint does not verify"),
        "{out}"
    );

    // Another key does not verify this log.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let other_pub = audit.work.path().join("other.pub.pem");
    std::fs::write(&other_pub, other.public_key_pem()).unwrap();
    let mut cmd = bin();
    cmd.args(["log", "verify", "--public-key"])
        .arg(&other_pub)
        .arg(audit.log());
    let ran = run(cmd, DEADLINE);
    assert_eq!(ran.code(), Some(1), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("none of the keys given"),
        "{}",
        ran.stdout
    );
}

/// The instance a log's start line names.
fn instance_of(log: &Path) -> String {
    lines(log)[0]["start"]["instance"]
        .as_str()
        .expect("the log starts with a start line naming its instance")
        .to_string()
}

/// A log proves its own edges: its oldest records cannot be deleted
/// unseen (a file must start with a signed line naming the record before
/// it), a log rotated away must be said to be, and one replica's log,
/// signed with the same key, does not pass for another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_proves_its_own_edges() {
    let audit = Audit::new();
    let lines = small_log(&audit).await;
    let head = PathBuf::from(format!("{}.head", audit.log().display()));
    // The oldest records deleted, with the start line: even with the head
    // file and the key, that is a deletion.
    let cut = audit.work.path().join("cut.log");
    std::fs::write(&cut, lines[4..].join("\n") + "\n").unwrap();
    let ran = audit.verify(&[cut.clone(), head.clone()], &[]);
    assert_eq!(ran.code(), Some(1), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("cut.log:1:")
            && ran.stdout.contains("does not begin with a start line")
            && ran.stdout.contains("(deleted)"),
        "{}",
        ran.stdout
    );
    // Told the beginning was rotated away, the rest verifies.
    let ran = audit.verify(&[cut], &["--start-rotated"]);
    assert_eq!(ran.code(), Some(0), "{}{}", ran.stdout, ran.stderr);
    // A start line that was edited does not verify.
    let mut restarted = lines.clone();
    restarted[0] = restarted[0].replace("\"prev_seq\":0", "\"prev_seq\":7");
    let out = tampered(&audit, "restarted.log", &restarted);
    assert!(
        out.contains("restarted.log:1:")
            && out.contains("signature of the start line does not verify"),
        "{out}"
    );

    // Another replica, signing with the same key.
    let other = Audit::new();
    for name in ["signing.pem", "signing.pub.pem"] {
        std::fs::copy(audit.work.path().join(name), other.work.path().join(name)).unwrap();
    }
    small_log(&other).await;
    let ours = instance_of(&audit.log());
    assert_ne!(
        ours,
        instance_of(&other.log()),
        "each log has its own instance"
    );
    assert_eq!(
        verified(&audit.verify(&[audit.log()], &["--instance", &ours])),
        (20, 1)
    );
    let ran = audit.verify(&[other.log()], &["--instance", &ours]);
    assert_eq!(ran.code(), Some(1), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout
            .contains(&format!("the log of instance `{ours}`")),
        "{}",
        ran.stdout
    );
    // Our head file beside their log says whose log it should be.
    let ran = audit.verify(&[other.log(), head], &[]);
    assert_eq!(ran.code(), Some(1), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("the log is another replica's"),
        "{}",
        ran.stdout
    );

    // Rotation that drops the oldest file: each kept file starts where the
    // one before it ended; the first names where the log was cut.
    let rotating = Audit::new();
    let mut served = rotating
        .serve("max_file_bytes = 4096\nmax_files = 2\ncheckpoint_interval = \"100ms\"\n")
        .await;
    decide(&served, 60).await;
    served.send_sigterm();
    assert_eq!(served.wait_exit(DEADLINE).await.code(), Some(0));
    let files = rotating.files();
    assert_eq!(files.len(), 3, "{files:?}");
    let ran = rotating.verify(&files, &[]);
    assert_eq!(ran.code(), Some(1), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("the log begins after seq") && ran.stdout.contains("--start-rotated"),
        "{}",
        ran.stdout
    );
    let (records, _) = verified(&rotating.verify(&files, &["--start-rotated"]));
    assert!(records > 0 && records < 60, "{records}");
    // A middle file removed: the next one's start names what is missing.
    let ran = rotating.verify(&[files[0].clone(), files[2].clone()], &["--start-rotated"]);
    assert_eq!(ran.code(), Some(1), "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("(deleted)"), "{}", ran.stdout);
}

/// `value`'s line as the writer would write it: canonical, hashed.
fn rehash(mut value: Json) -> String {
    use sha2::Digest;
    value.as_object_mut().unwrap().remove("hash");
    let mut sorted = serde_json::Map::new();
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    for k in keys {
        sorted.insert(k.clone(), sort_keys(&value[&k]));
    }
    let canonical = serde_json::to_string(&Json::Object(sorted)).unwrap();
    let hash = hex::encode(sha2::Sha256::digest(canonical.as_bytes()));
    format!(
        "{},\"hash\":\"{hash}\"}}",
        &canonical[..canonical.len() - 1]
    )
}

fn sort_keys(v: &Json) -> Json {
    match v {
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), sort_keys(&map[k]));
            }
            Json::Object(out)
        }
        Json::Array(items) => Json::Array(items.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tail_fails_unless_allowed_and_the_next_run_repairs_it() {
    let audit = Audit::new();
    let lines = small_log(&audit).await;
    let text = std::fs::read_to_string(audit.log()).unwrap();

    // Cut mid-record, as a crash or a truncation would.
    let cut_at = lines[..16].iter().map(|l| l.len() + 1).sum::<usize>() + 30;
    std::fs::write(audit.log(), &text[..cut_at]).unwrap();
    let ran = audit.verify(&[audit.log()], &[]);
    assert_eq!(ran.code(), Some(1), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout
            .contains("does not end with a signed checkpoint: 15 records follow the start")
            && ran.stdout.contains("decisions.log:17, is cut off"),
        "{}",
        ran.stdout
    );
    let ran = audit.verify(&[audit.log()], &["--allow-unsigned-tail"]);
    assert_eq!(verified(&ran), (15, 0));
    assert!(
        ran.stderr.contains("15 records after the last checkpoint"),
        "{}",
        ran.stderr
    );

    // Whole lines cut: the checkpoint is gone.
    let whole = lines[..19].join("\n") + "\n";
    std::fs::write(audit.log(), &whole).unwrap();
    let ran = audit.verify(&[audit.log()], &[]);
    assert_eq!(ran.code(), Some(1));
    assert!(ran.stdout.contains("18 records follow"), "{}", ran.stdout);

    // The head file knows the log was longer: the cut is named.
    let head = PathBuf::from(format!("{}.head", audit.log().display()));
    let ran = audit.verify(&[audit.log(), head.clone()], &["--allow-unsigned-tail"]);
    assert_eq!(ran.code(), Some(1));
    assert!(
        ran.stdout.contains("decisions.log:19: seq 19:")
            && ran.stdout.contains("seqs 19 to 20 are missing"),
        "{}",
        ran.stdout
    );

    // A restart after a crash mid-line: the fragment goes, the chain goes on
    // from the head (the gap stays visible), and shutdown signs it.
    std::fs::write(audit.log(), &text[..cut_at]).unwrap();
    let mut served = audit.serve("").await;
    decide(&served, 3).await;
    served.send_sigterm();
    assert_eq!(served.wait_exit(DEADLINE).await.code(), Some(0));
    let after = lines_of(&audit.log());
    assert_eq!(after[16]["seq"], 21, "continues after the synced head");
    let ran = audit.verify(&[audit.log()], &[]);
    assert_eq!(ran.code(), Some(1));
    assert!(
        ran.stdout
            .contains("decisions.log:17: seq 21: seqs 16 to 20 are missing"),
        "{}",
        ran.stdout
    );
}

fn lines_of(path: &Path) -> Vec<Json> {
    lines(path)
}
