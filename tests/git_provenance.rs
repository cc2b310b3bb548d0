//! Git provenance with real repositories made by the `git` CLI in the test
//! (the server itself reads them with gix): a plain checkout, uncommitted
//! edits, and git-sync's layout of a symlink to a worktree of a bare
//! repository, swapped under a running server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cedar_pdp::config::LogSink;
use cedar_pdp::grpc::proto::{Decision, GetPolicyStatusRequest};
use cedar_pdp::policy_store::{LoadOptions, PolicyStore};
use common::{TestServer, request, test_config, wait_for_generation};

const ALICE: &str = "@id(\"alice-reads\")\npermit (principal == User::\"alice\", action == Action::\"read\", resource);\n";
const BOB: &str = "@id(\"bob-reads\")\npermit (principal == User::\"bob\", action == Action::\"read\", resource);\n";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.org"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the tests need the `git` CLI to build repositories");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with `policies/p.cedar` committed; returns the commit id.
fn commit_policies(repo: &Path, text: &str, message: &str) -> String {
    std::fs::create_dir_all(repo.join("policies")).unwrap();
    std::fs::write(repo.join("policies/p.cedar"), text).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "--allow-empty", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

fn snapshot_of(dir: &Path) -> std::sync::Arc<cedar_pdp::policy_store::Snapshot> {
    let store = PolicyStore::new(dir, LoadOptions::default());
    store.reload().unwrap();
    store.snapshot().unwrap()
}

#[test]
fn a_checkout_names_its_commit_and_uncommitted_edits_mark_it_dirty() {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    let id = commit_policies(repo.path(), ALICE, "alice");

    let snapshot = snapshot_of(&repo.path().join("policies"));
    let git_commit = snapshot
        .git_commit
        .clone()
        .expect("a commit inside a checkout");
    assert_eq!(git_commit.id, id);
    assert!(!git_commit.dirty);
    assert!(
        snapshot.revision.ends_with(&format!("+git:{}", &id[..12])),
        "{}",
        snapshot.revision
    );

    std::fs::write(repo.path().join("policies/p.cedar"), BOB).unwrap();
    let snapshot = snapshot_of(&repo.path().join("policies"));
    assert!(snapshot.git_commit.as_ref().unwrap().dirty);
    assert!(
        snapshot.revision.ends_with("-dirty"),
        "{}",
        snapshot.revision
    );

    // An untracked policy file is an uncommitted edit too.
    git(repo.path(), &["checkout", "-q", "--", "policies/p.cedar"]);
    std::fs::write(repo.path().join("policies/extra.cedar"), BOB).unwrap();
    assert!(
        snapshot_of(&repo.path().join("policies"))
            .git_commit
            .as_ref()
            .unwrap()
            .dirty
    );
}

#[test]
fn outside_a_checkout_there_is_no_commit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.cedar"), ALICE).unwrap();
    let snapshot = snapshot_of(dir.path());
    assert_eq!(snapshot.git_commit, None);
    assert!(!snapshot.revision.contains("git"), "{}", snapshot.revision);
}

/// git-sync v4's layout: `root/.git` is the repository, each synced commit
/// is a worktree under `root/.worktrees/<sha>`, and `root/current` is a
/// symlink swapped atomically to the newest one.
struct GitSync {
    upstream: tempfile::TempDir,
    root: tempfile::TempDir,
}

impl GitSync {
    fn new() -> Self {
        let upstream = tempfile::tempdir().unwrap();
        git(upstream.path(), &["init", "-q"]);
        let root = tempfile::tempdir().unwrap();
        git(root.path(), &["init", "-q", "--bare", ".git"]);
        Self { upstream, root }
    }

    fn link(&self) -> PathBuf {
        self.root.path().join("current")
    }

    /// Commits upstream, fetches it, adds a worktree and re-points the link.
    fn sync(&self, text: &str, message: &str) -> String {
        let id = commit_policies(self.upstream.path(), text, message);
        let upstream = self.upstream.path().display().to_string();
        let git_dir = self.root.path().join(".git");
        git(
            &git_dir,
            &["fetch", "-q", &upstream, "+refs/heads/main:refs/heads/main"],
        );
        let worktree = self.root.path().join(".worktrees").join(&id);
        git(
            &git_dir,
            &[
                "worktree",
                "add",
                "-q",
                "--detach",
                &worktree.display().to_string(),
                &id,
            ],
        );
        let tmp = self.root.path().join(".current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new(".worktrees").join(&id), &tmp).unwrap();
        std::fs::rename(&tmp, self.link()).unwrap();
        id
    }
}

#[tokio::test]
async fn git_sync_swaps_carry_the_commit_into_status_responses_and_the_log() {
    let sync = GitSync::new();
    let first = sync.sync(ALICE, "alice");
    let log = tempfile::tempdir().unwrap();
    let log_file = log.path().join("decisions.log");
    let mut config = test_config(&sync.link().join("policies"));
    config.decision_log.enabled = true;
    config.decision_log.sink = LogSink::File;
    config.decision_log.path = log_file.clone();
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;

    let status = client
        .get_policy_status(GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.git_commit, first);
    assert!(!status.git_dirty);
    let resp = client
        .authorize(request(("User", "alice"), ("Action", "read"), ("Doc", "d")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision, Decision::Allow as i32);
    assert!(
        resp.policy_revision.contains(&first[..12]),
        "{}",
        resp.policy_revision
    );

    // A new commit with new policies: the server follows the link.
    let second = sync.sync(BOB, "bob");
    let status = wait_for_generation(&mut client, status.generation).await;
    assert_eq!(status.git_commit, second);
    let resp = client
        .authorize(request(("User", "bob"), ("Action", "read"), ("Doc", "d")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision, Decision::Allow as i32);
    assert!(
        resp.policy_revision.contains(&second[..12]),
        "{}",
        resp.policy_revision
    );

    // A commit that leaves the policies as they were still moves provenance.
    std::fs::write(sync.upstream.path().join("README"), "docs only").unwrap();
    let third = sync.sync(BOB, "docs");
    let status = wait_for_generation(&mut client, status.generation).await;
    assert_eq!(status.git_commit, third);

    drop(client);
    server.stop().await.unwrap();
    let records = std::fs::read_to_string(&log_file).unwrap();
    let commits: Vec<String> = records
        .lines()
        .filter(|l| !common::is_mark(l))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| r["policy_commit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(commits, [first, second], "{records}");
}
