//! Hot reload over a real socket: real files, real symlinks, real watcher.
//!
//! Each test swaps policies on disk and re-checks the same request, the way
//! the server sees it in production: plain edits, Kubernetes ConfigMap
//! updates, git-sync worktree flips, rejected sets, and a concurrent hammer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cedar_pdp::grpc::proto::authorizer_client::AuthorizerClient;
use cedar_pdp::grpc::proto::{
    AuthorizeRequest, BatchAuthorizeRequest, Decision, GetPolicyStatusRequest, PolicyStatus,
};
use common::{
    TestServer, eventually, metric, request, wait_for_generation, wait_for_reload_error,
    write_atomic,
};
use tempfile::TempDir;
use tonic::transport::Channel;

/// How long any one condition may take to show up on a slow, shared machine.
const DEADLINE: Duration = Duration::from_secs(15);

/// What a response says, reduced to what a policy set determines.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Verdict {
    allow: bool,
    determining: Vec<String>,
}

impl Verdict {
    fn allow(ids: &[&str]) -> Self {
        Self {
            allow: true,
            determining: ids.iter().map(ToString::to_string).collect(),
        }
    }

    fn deny(ids: &[&str]) -> Self {
        Self {
            allow: false,
            determining: ids.iter().map(ToString::to_string).collect(),
        }
    }
}

fn alice_views_photo() -> AuthorizeRequest {
    request(("User", "alice"), ("Action", "view"), ("Photo", "p"))
}

/// Asks once; returns the verdict and the revision that decided.
async fn ask(client: &mut AuthorizerClient<Channel>, req: AuthorizeRequest) -> (Verdict, String) {
    let resp = client.authorize(req).await.unwrap().into_inner();
    assert!(
        resp.errors.is_empty(),
        "evaluation errors: {:?}",
        resp.errors
    );
    let verdict = Verdict {
        allow: resp.decision == Decision::Allow as i32,
        determining: resp.determining_policies,
    };
    (verdict, resp.policy_revision)
}

async fn verdict(client: &mut AuthorizerClient<Channel>) -> Verdict {
    ask(client, alice_views_photo()).await.0
}

async fn status(client: &mut AuthorizerClient<Channel>) -> PolicyStatus {
    client
        .get_policy_status(GetPolicyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the last reload attempt succeeded (or found nothing new).
async fn wait_for_no_reload_error(client: &mut AuthorizerClient<Channel>) -> PolicyStatus {
    eventually("the reload error to clear", DEADLINE, || {
        let mut client = client.clone();
        async move {
            let s = status(&mut client).await;
            s.last_reload_error.is_empty().then_some(s)
        }
    })
    .await
}

/// Waits for a reload error that contains `needle`, so an older error is not
/// mistaken for the one under test.
async fn wait_for_reload_error_with(
    client: &mut AuthorizerClient<Channel>,
    needle: &str,
) -> PolicyStatus {
    eventually(
        &format!("a reload error naming `{needle}`"),
        DEADLINE,
        || {
            let mut client = client.clone();
            async move {
                let s = status(&mut client).await;
                s.last_reload_error.contains(needle).then_some(s)
            }
        },
    )
    .await
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Re-points `link` at `target` atomically: a new link, renamed over the old
/// one. Kubelet and git-sync both do exactly this.
fn repoint(dir: &Path, link: &str, tmp: &str, target: &str) {
    symlink(target, dir.join(tmp));
    std::fs::rename(dir.join(tmp), dir.join(link)).unwrap();
}

const ALLOW_ALICE: &str = r#"@id("allow-alice")
permit(principal == User::"alice", action == Action::"view", resource);
"#;

const FORBID_ALICE: &str = r#"@id("forbid-alice")
forbid(principal == User::"alice", action == Action::"view", resource);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_add_and_delete_each_flip_the_decision() {
    let dir = TempDir::new().unwrap();
    write_atomic(dir.path(), "main.cedar", ALLOW_ALICE);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;

    let s1 = status(&mut client).await;
    assert_eq!(s1.generation, 1);
    assert!(s1.last_reload_error.is_empty(), "{}", s1.last_reload_error);
    let (v, rev) = ask(&mut client, alice_views_photo()).await;
    assert_eq!(v, Verdict::allow(&["allow-alice"]));
    assert_eq!(rev, s1.revision);

    // Edit: the same file now allows bob only.
    write_atomic(
        dir.path(),
        "main.cedar",
        "@id(\"allow-bob\")\npermit(principal == User::\"bob\", action == Action::\"view\", resource);\n",
    );
    let s2 = wait_for_generation(&mut client, 1).await;
    assert_eq!(s2.generation, 2);
    assert_ne!(s2.revision, s1.revision);
    let (v, rev) = ask(&mut client, alice_views_photo()).await;
    assert_eq!(v, Verdict::deny(&[]));
    assert_eq!(rev, s2.revision);

    // Add: a new file in a new subdirectory allows alice again.
    std::fs::create_dir(dir.path().join("team")).unwrap();
    write_atomic(&dir.path().join("team"), "photos.cedar", ALLOW_ALICE);
    let s3 = wait_for_generation(&mut client, 2).await;
    assert_eq!(s3.generation, 3);
    assert_eq!(s3.policy_count, 2);
    assert_ne!(s3.revision, s2.revision);
    assert_eq!(verdict(&mut client).await, Verdict::allow(&["allow-alice"]));

    // Add: a forbid wins over the permit.
    write_atomic(dir.path(), "deny.cedar", FORBID_ALICE);
    let s4 = wait_for_generation(&mut client, 3).await;
    assert_eq!(s4.generation, 4);
    assert_ne!(s4.revision, s3.revision);
    assert_eq!(verdict(&mut client).await, Verdict::deny(&["forbid-alice"]));

    // Delete: removing the forbid restores the allow, and the revision is the
    // content digest, so it matches the earlier identical set.
    std::fs::remove_file(dir.path().join("deny.cedar")).unwrap();
    let s5 = wait_for_generation(&mut client, 4).await;
    assert_eq!(s5.generation, 5);
    assert_eq!(s5.revision, s3.revision);
    let (v, rev) = ask(&mut client, alice_views_photo()).await;
    assert_eq!(v, Verdict::allow(&["allow-alice"]));
    assert_eq!(rev, s5.revision);

    // Policies without `@id` are named by relative path and index.
    std::fs::remove_file(dir.path().join("team/photos.cedar")).unwrap();
    write_atomic(
        &dir.path().join("team"),
        "anon.cedar",
        "permit(principal == User::\"carol\", action, resource);\npermit(principal == User::\"alice\", action, resource);\n",
    );
    wait_for_generation(&mut client, 5).await;
    assert_eq!(
        verdict(&mut client).await,
        Verdict::allow(&["team/anon.cedar#1"])
    );

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edit_keeps_the_last_good_set_and_reports_where() {
    let dir = TempDir::new().unwrap();
    write_atomic(dir.path(), "main.cedar", ALLOW_ALICE);
    write_atomic(
        dir.path(),
        "other.cedar",
        "permit(principal == User::\"bob\", action, resource);\n",
    );
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let before = status(&mut client).await;
    assert_eq!(before.generation, 1);

    // Line 3, column 18 is the `action` after the missing comma.
    write_atomic(
        dir.path(),
        "main.cedar",
        "@id(\"allow-alice\")\n// a comment\npermit(principal action == Action::\"view\", resource);\n",
    );
    let failed = wait_for_reload_error(&mut client).await;
    assert!(
        failed
            .last_reload_error
            .contains("main.cedar:3:18: unexpected token `action`"),
        "reload error does not locate the problem: {}",
        failed.last_reload_error
    );
    assert!(
        !failed.last_reload_error.contains("other.cedar"),
        "the valid file is blamed: {}",
        failed.last_reload_error
    );
    assert_eq!(failed.generation, before.generation);
    assert_eq!(failed.revision, before.revision);
    assert_eq!(failed.policy_count, 2);
    assert!(failed.last_reload_attempt_at.is_some());
    let (v, rev) = ask(&mut client, alice_views_photo()).await;
    assert_eq!(v, Verdict::allow(&["allow-alice"]));
    assert_eq!(rev, before.revision);

    // The periodic rescan retries the same broken file; it stays rejected.
    let retried = eventually("a rescan of the broken file", DEADLINE, || {
        let mut client = client.clone();
        let first = failed.last_reload_attempt_at;
        async move {
            let s = status(&mut client).await;
            (s.last_reload_attempt_at != first).then_some(s)
        }
    })
    .await;
    assert_eq!(retried.generation, before.generation);
    assert!(retried.last_reload_error.contains("main.cedar:3:18"));

    // Fixing it makes the new set live and clears the error.
    write_atomic(dir.path(), "main.cedar", FORBID_ALICE);
    let fixed = wait_for_generation(&mut client, before.generation).await;
    assert_eq!(fixed.generation, before.generation + 1);
    assert_ne!(fixed.revision, before.revision);
    let cleared = wait_for_no_reload_error(&mut client).await;
    assert_eq!(cleared.generation, fixed.generation);
    assert_eq!(verdict(&mut client).await, Verdict::deny(&["forbid-alice"]));

    server.stop().await.unwrap();
}

/// The layout kubelet writes for a mounted ConfigMap.
fn configmap_version(dir: &Path, stamp: &str, files: &[(&str, &str)]) {
    let version = dir.join(stamp);
    std::fs::create_dir(&version).unwrap();
    for (name, text) in files {
        write(&version.join(name), text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_atomic_update_flips_the_decision() {
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    let v1 = "..2026_01_01_00_00_00.000000001";
    // No `@id`s: were the hidden folders read too, the same policies would
    // load again under other ids and double the count.
    configmap_version(
        root,
        v1,
        &[(
            "policy.cedar",
            "permit(principal == User::\"alice\", action == Action::\"view\", resource);\npermit(principal == User::\"bob\", action, resource);\n",
        )],
    );
    symlink(v1, root.join("..data"));
    symlink("..data/policy.cedar", root.join("policy.cedar"));

    let server = TestServer::start(root).await;
    let mut client = server.client().await;
    let s1 = status(&mut client).await;
    assert_eq!(
        s1.policy_count, 2,
        "hidden ConfigMap folders were loaded too"
    );
    assert_eq!(
        verdict(&mut client).await,
        Verdict::allow(&["policy.cedar#0"])
    );

    // Kubelet's update: a new timestamped folder, `..data_tmp` pointing at
    // it, renamed over `..data`, and the old folder removed. A key added in
    // the new version gets its own top-level link.
    let v2 = "..2026_01_01_00_05_00.000000002";
    configmap_version(
        root,
        v2,
        &[
            (
                "policy.cedar",
                "permit(principal == User::\"alice\", action == Action::\"view\", resource);\npermit(principal == User::\"bob\", action, resource);\n",
            ),
            ("deny.cedar", FORBID_ALICE),
        ],
    );
    repoint(root, "..data", "..data_tmp", v2);
    symlink("..data/deny.cedar", root.join("deny.cedar"));
    std::fs::remove_dir_all(root.join(v1)).unwrap();

    let s2 = wait_for_generation(&mut client, s1.generation).await;
    // The new link may land after the swap; wait for the final set.
    let s2 = if s2.policy_count == 3 {
        s2
    } else {
        wait_for_generation(&mut client, s2.generation).await
    };
    assert_eq!(
        s2.policy_count, 3,
        "hidden ConfigMap folders were loaded too"
    );
    assert_eq!(verdict(&mut client).await, Verdict::deny(&["forbid-alice"]));

    // A second update, removing the key again.
    let v3 = "..2026_01_01_00_10_00.000000003";
    configmap_version(
        root,
        v3,
        &[(
            "policy.cedar",
            "@id(\"v3-allow\")\npermit(principal == User::\"alice\", action, resource);\n",
        )],
    );
    repoint(root, "..data", "..data_tmp", v3);
    std::fs::remove_file(root.join("deny.cedar")).unwrap();
    std::fs::remove_dir_all(root.join(v2)).unwrap();
    let s3 = eventually("the third ConfigMap version", DEADLINE, || {
        let mut client = client.clone();
        async move {
            let s = status(&mut client).await;
            (s.policy_count == 1 && s.generation > s2.generation).then_some(s)
        }
    })
    .await;
    assert!(s3.generation > s2.generation);
    assert_eq!(verdict(&mut client).await, Verdict::allow(&["v3-allow"]));
    let s3 = wait_for_no_reload_error(&mut client).await;
    assert_eq!(s3.policy_count, 1);

    server.stop().await.unwrap();
}

/// Lays out one git-sync worktree under `root/.worktrees/<sha>`.
fn worktree(root: &Path, sha: &str, policy: &str) {
    let tree = root.join(".worktrees").join(sha);
    write(&tree.join("policies/main.cedar"), policy);
    write(&tree.join("README.md"), "# policies\n");
    // A worktree's `.git` file and hidden folders are never policy sources;
    // this one would not even parse.
    write(&tree.join(".git"), "gitdir: ../../.git/worktrees/x\n");
    write(&tree.join("policies/.github/broken.cedar"), "permit(\n");
}

async fn git_sync_flip(serve_subdir: bool) {
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    let sha1 = "1111111111111111111111111111111111111111";
    let sha2 = "2222222222222222222222222222222222222222";
    let sha3 = "3333333333333333333333333333333333333333";
    worktree(root, sha1, ALLOW_ALICE);
    symlink(format!(".worktrees/{sha1}"), root.join("current"));
    let policies = if serve_subdir {
        root.join("current/policies")
    } else {
        root.join("current")
    };

    let server = TestServer::start(&policies).await;
    let mut client = server.client().await;
    let s1 = status(&mut client).await;
    assert_eq!(s1.policy_count, 1);
    assert_eq!(verdict(&mut client).await, Verdict::allow(&["allow-alice"]));

    // git-sync: check out the new commit, swap the link, drop the old tree.
    worktree(root, sha2, FORBID_ALICE);
    repoint(
        root,
        "current",
        "current.tmp",
        &format!(".worktrees/{sha2}"),
    );
    std::fs::remove_dir_all(root.join(".worktrees").join(sha1)).unwrap();
    let s2 = wait_for_generation(&mut client, s1.generation).await;
    assert_eq!(s2.generation, 2);
    assert_ne!(s2.revision, s1.revision);
    assert_eq!(verdict(&mut client).await, Verdict::deny(&["forbid-alice"]));

    // Once more, so the watcher must have re-followed the link.
    worktree(
        root,
        sha3,
        "@id(\"third\")\npermit(principal == User::\"alice\", action, resource);\n",
    );
    repoint(
        root,
        "current",
        "current.tmp",
        &format!(".worktrees/{sha3}"),
    );
    std::fs::remove_dir_all(root.join(".worktrees").join(sha2)).unwrap();
    let s3 = wait_for_generation(&mut client, s2.generation).await;
    assert_eq!(s3.generation, 3);
    assert_eq!(verdict(&mut client).await, Verdict::allow(&["third"]));
    let s3 = wait_for_no_reload_error(&mut client).await;
    assert_eq!(s3.generation, 3);

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_sync_repoint_flips_the_decision_served_from_a_subdir() {
    git_sync_flip(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_sync_repoint_flips_the_decision_served_from_the_link() {
    git_sync_flip(false).await;
}

const PHOTO_SCHEMA: &str = r"entity User;
entity Photo { public: Bool };
action view appliesTo { principal: User, resource: Photo };
";

const PUBLIC_PHOTOS: &str = r#"@id("public-photos")
permit(principal, action == Action::"view", resource)
when { resource.public };
"#;

fn public_photo_request() -> AuthorizeRequest {
    AuthorizeRequest {
        entities_json:
            r#"[{"uid": {"type": "Photo", "id": "p"}, "attrs": {"public": true}, "parents": []}]"#
                .to_string(),
        ..alice_views_photo()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_and_policy_changes_that_do_not_validate_are_rejected() {
    let dir = TempDir::new().unwrap();
    write_atomic(dir.path(), "schema.cedarschema", PHOTO_SCHEMA);
    write_atomic(dir.path(), "policy.cedar", PUBLIC_PHOTOS);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    let good = status(&mut client).await;
    assert!(good.schema_loaded);
    let (v, _) = ask(&mut client, public_photo_request()).await;
    assert_eq!(v, Verdict::allow(&["public-photos"]));

    // A schema that drops `Photo.public` invalidates the unchanged policy.
    write_atomic(
        dir.path(),
        "schema.cedarschema",
        &PHOTO_SCHEMA.replace(" { public: Bool }", ""),
    );
    let failed = wait_for_reload_error(&mut client).await;
    assert!(
        failed.last_reload_error.contains("policy.cedar:3:8:")
            && failed.last_reload_error.contains("`public`"),
        "the error should locate the policy the schema broke: {}",
        failed.last_reload_error
    );
    assert_eq!(failed.generation, good.generation);
    assert_eq!(failed.revision, good.revision);
    let (v, rev) = ask(&mut client, public_photo_request()).await;
    assert_eq!(v, Verdict::allow(&["public-photos"]));
    assert_eq!(rev, good.revision);

    // Restoring the schema is the live set again: nothing to swap, no error.
    write_atomic(dir.path(), "schema.cedarschema", PHOTO_SCHEMA);
    let restored = wait_for_no_reload_error(&mut client).await;
    assert_eq!(restored.generation, good.generation);

    // A policy that reads an attribute the schema lacks is rejected too.
    write_atomic(
        dir.path(),
        "policy.cedar",
        &PUBLIC_PHOTOS.replace("resource.public", "resource.owner == principal"),
    );
    let failed = wait_for_reload_error_with(&mut client, "`owner`").await;
    assert!(
        failed.last_reload_error.contains("policy.cedar:3:8:"),
        "{}",
        failed.last_reload_error
    );
    assert_eq!(failed.generation, good.generation);
    let (v, rev) = ask(&mut client, public_photo_request()).await;
    assert_eq!(v, Verdict::allow(&["public-photos"]));
    assert_eq!(rev, good.revision);

    // A valid change to both goes live together.
    write_atomic(
        dir.path(),
        "schema.cedarschema",
        &PHOTO_SCHEMA.replace("public: Bool", "public: Bool, owner: User"),
    );
    let fixed = wait_for_generation(&mut client, good.generation).await;
    assert_eq!(fixed.generation, good.generation + 1);
    wait_for_no_reload_error(&mut client).await;
    let owned = AuthorizeRequest {
        entities_json: r#"[{"uid": {"type": "Photo", "id": "p"}, "attrs": {"public": false, "owner": {"type": "User", "id": "alice"}}, "parents": []}]"#
            .to_string(),
        ..alice_views_photo()
    };
    let (v, rev) = ask(&mut client, owned).await;
    assert_eq!(v, Verdict::allow(&["public-photos"]));
    assert_eq!(rev, fixed.revision);

    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_every_policy_file_is_rejected() {
    let dir = TempDir::new().unwrap();
    write_atomic(dir.path(), "a.cedar", FORBID_ALICE);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write_atomic(&dir.path().join("sub"), "b.cedar", ALLOW_ALICE);
    write_atomic(dir.path(), "users.entities.json", "[]");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client().await;
    assert_eq!(verdict(&mut client).await, Verdict::deny(&["forbid-alice"]));

    std::fs::remove_file(dir.path().join("a.cedar")).unwrap();
    let s2 = wait_for_generation(&mut client, 1).await;
    assert_eq!(verdict(&mut client).await, Verdict::allow(&["allow-alice"]));

    // The last policy file goes: an empty set would deny everything, so the
    // server keeps serving the last good one.
    std::fs::remove_file(dir.path().join("sub/b.cedar")).unwrap();
    let failed = wait_for_reload_error(&mut client).await;
    assert!(
        failed
            .last_reload_error
            .contains("no `.cedar` policy files"),
        "{}",
        failed.last_reload_error
    );
    assert_eq!(failed.generation, s2.generation);
    assert_eq!(failed.revision, s2.revision);
    assert_eq!(failed.policy_count, 1);
    let (v, rev) = ask(&mut client, alice_views_photo()).await;
    assert_eq!(v, Verdict::allow(&["allow-alice"]));
    assert_eq!(rev, s2.revision);

    // The whole directory emptied: still the last good set.
    std::fs::remove_dir(dir.path().join("sub")).unwrap();
    std::fs::remove_file(dir.path().join("users.entities.json")).unwrap();
    let retried = eventually("a reload of the emptied directory", DEADLINE, || {
        let mut client = client.clone();
        let first = failed.last_reload_attempt_at;
        async move {
            let s = status(&mut client).await;
            (s.last_reload_attempt_at != first).then_some(s)
        }
    })
    .await;
    assert!(
        retried
            .last_reload_error
            .contains("no `.cedar` policy files")
    );
    assert_eq!(retried.generation, s2.generation);
    assert_eq!(verdict(&mut client).await, Verdict::allow(&["allow-alice"]));

    write_atomic(dir.path(), "a.cedar", FORBID_ALICE);
    wait_for_generation(&mut client, s2.generation).await;
    wait_for_no_reload_error(&mut client).await;
    assert_eq!(verdict(&mut client).await, Verdict::deny(&["forbid-alice"]));

    server.stop().await.unwrap();
}

/// Two valid sets over the same two files. Their ids are arranged so that
/// any mix of one file from each set repeats an `@id` and fails to load: a
/// half-written update can never go live, so every answer must be exactly A
/// or exactly B.
const SET_A: [(&str, &str); 2] = [
    (
        "x.cedar",
        r#"@id("a-allow")
permit(principal == User::"alice", action == Action::"view", resource);
@id("shared-1")
permit(principal == User::"nobody", action, resource);
"#,
    ),
    (
        "y.cedar",
        r#"@id("shared-2")
permit(principal == User::"nobody-else", action, resource);
@id("a-allow-photo")
permit(principal, action == Action::"view", resource == Photo::"p");
"#,
    ),
];

const SET_B: [(&str, &str); 2] = [
    (
        "x.cedar",
        r#"@id("shared-2")
permit(principal == User::"nobody-else", action, resource);
@id("b-forbid")
forbid(principal == User::"alice", action == Action::"view", resource);
"#,
    ),
    (
        "y.cedar",
        r#"@id("shared-1")
permit(principal == User::"nobody", action, resource);
@id("b-forbid-photo")
forbid(principal, action, resource == Photo::"p");
"#,
    ),
];

fn write_set(dir: &Path, set: &[(&str, &str)]) {
    for (name, text) in set {
        write_atomic(dir, name, text);
    }
}

/// What the hammer's clients saw.
#[derive(Default)]
struct Tally {
    a: AtomicUsize,
    b: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_during_reloads_see_exactly_one_whole_set() {
    const CLIENTS: usize = 8;
    const SWAPS: u64 = 40;

    let dir = TempDir::new().unwrap();
    write_set(dir.path(), &SET_A);
    let server = TestServer::start(dir.path()).await;
    let mut control = server.client().await;
    let rev_a = status(&mut control).await.revision;
    let verdict_a = Verdict::allow(&["a-allow", "a-allow-photo"]);
    let verdict_b = Verdict::deny(&["b-forbid", "b-forbid-photo"]);
    assert_eq!(verdict(&mut control).await, verdict_a);

    // Learn B's revision up front, then go back to A before the clients start.
    write_set(dir.path(), &SET_B);
    let s = wait_for_generation(&mut control, 1).await;
    let rev_b = s.revision.clone();
    assert_ne!(rev_a, rev_b);
    assert_eq!(verdict(&mut control).await, verdict_b);
    write_set(dir.path(), &SET_A);
    let mut generation = wait_for_generation(&mut control, s.generation)
        .await
        .generation;

    let expected = Arc::new([(verdict_a.clone(), rev_a), (verdict_b.clone(), rev_b)]);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        // Separate connections, so the swaps race calls on several of them.
        let mut client = server.client().await;
        let (expected, stop, tally) = (expected.clone(), stop.clone(), tally.clone());
        clients.push(tokio::spawn(async move {
            let matches = |v: &Verdict, rev: &str| -> Option<usize> {
                expected.iter().position(|(ev, er)| ev == v && er == rev)
            };
            let mut calls = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let seen: Vec<(Verdict, String)> = if i % 4 == 3 {
                    let batch = BatchAuthorizeRequest {
                        requests: vec![alice_views_photo(); 5],
                        ..Default::default()
                    };
                    let resp = client
                        .batch_authorize(batch)
                        .await
                        .unwrap_or_else(|s| panic!("client {i}: batch failed: {s:?}"))
                        .into_inner();
                    assert_eq!(resp.responses.len(), 5);
                    resp.responses
                        .into_iter()
                        .map(|r| {
                            let v = Verdict {
                                allow: r.decision == Decision::Allow as i32,
                                determining: r.determining_policies,
                            };
                            (v, r.policy_revision)
                        })
                        .collect()
                } else {
                    let resp = client
                        .authorize(alice_views_photo())
                        .await
                        .unwrap_or_else(|s| panic!("client {i}: call failed: {s:?}"))
                        .into_inner();
                    assert!(resp.errors.is_empty(), "client {i}: {:?}", resp.errors);
                    let v = Verdict {
                        allow: resp.decision == Decision::Allow as i32,
                        determining: resp.determining_policies,
                    };
                    vec![(v, resp.policy_revision)]
                };
                let sets: Vec<usize> = seen
                    .iter()
                    .map(|(v, rev)| {
                        matches(v, rev).unwrap_or_else(|| {
                            panic!("client {i}: {v:?} at `{rev}` is neither set A nor set B")
                        })
                    })
                    .collect();
                assert!(
                    sets.windows(2).all(|w| w[0] == w[1]),
                    "client {i}: one batch saw two revisions: {seen:?}"
                );
                match sets[0] {
                    0 => tally.a.fetch_add(1, Ordering::Relaxed),
                    _ => tally.b.fetch_add(1, Ordering::Relaxed),
                };
                calls += 1;
            }
            calls
        }));
    }

    let hammer = async {
        for swap in 0..SWAPS {
            let (set, want) = if swap % 2 == 0 {
                (&SET_B, &verdict_b)
            } else {
                (&SET_A, &verdict_a)
            };
            write_set(dir.path(), set);
            let s = wait_for_generation(&mut control, generation).await;
            assert_eq!(
                s.generation,
                generation + 1,
                "swap {swap}: one swap, one generation"
            );
            generation = s.generation;
            assert_eq!(&verdict(&mut control).await, want, "swap {swap}");
        }
    };
    tokio::time::timeout(Duration::from_secs(180), hammer)
        .await
        .expect("the hammer finishes within 180s");
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for (i, handle) in clients.into_iter().enumerate() {
        let calls = tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("a client stops in time")
            .unwrap_or_else(|e| panic!("client {i} failed: {e}"));
        assert!(calls > 0, "client {i} made no calls");
        total += calls;
    }
    let (a, b) = (
        tally.a.load(Ordering::Relaxed),
        tally.b.load(Ordering::Relaxed),
    );
    assert_eq!(a + b, total);
    assert!(
        a > 0 && b > 0,
        "the clients never saw both sets: A {a}, B {b}"
    );

    server.stop().await.unwrap();
}

/// A set big enough that a batch takes a while to evaluate, so calls are
/// still running when shutdown begins.
fn slow_set() -> String {
    let mut text = String::new();
    for n in 0..1500 {
        text.push_str(&format!(
            "permit(principal == User::\"u{n}\", action, resource) when {{ context has x && context.x == {n} }};\n"
        ));
    }
    text.push_str(ALLOW_ALICE);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_lets_in_flight_calls_finish() {
    const LOOPS: usize = 4;

    let dir = TempDir::new().unwrap();
    write_atomic(dir.path(), "big.cedar", &slow_set());
    let server = TestServer::start(dir.path()).await;

    // (started, ended, ok) for every call, relative to one clock.
    type Log = Vec<(Instant, Instant, Result<(), tonic::Status>)>;
    let done = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..LOOPS {
        let mut client = server.client().await;
        let done = done.clone();
        loops.push(tokio::spawn(async move {
            let mut log: Log = Vec::new();
            loop {
                let started = Instant::now();
                let batch = BatchAuthorizeRequest {
                    requests: vec![alice_views_photo(); 50],
                    ..Default::default()
                };
                let result = client.batch_authorize(batch).await.map(|r| {
                    let r = r.into_inner();
                    assert_eq!(r.responses.len(), 50);
                    assert!(
                        r.responses
                            .iter()
                            .all(|r| r.decision == Decision::Allow as i32)
                    );
                });
                let failed = result.is_err();
                log.push((started, Instant::now(), result));
                done.fetch_add(1, Ordering::Relaxed);
                if failed || log.len() > 10_000 {
                    return log;
                }
            }
        }));
    }

    // Stop mid-stream: once the clients have a few calls behind them.
    eventually("calls to complete before shutdown", DEADLINE, || {
        let n = done.load(Ordering::Relaxed);
        async move { (n >= 2 * LOOPS).then_some(()) }
    })
    .await;
    let stop_at = Instant::now();
    server.stop().await.expect("graceful stop returns Ok");
    let stopped_in = stop_at.elapsed();
    // The default grace is 10s; a drain that finishes sooner did not need it.
    assert!(
        stopped_in < Duration::from_secs(9),
        "stop took {stopped_in:?}: the drain waited out the grace period"
    );

    let mut spanning_ok = 0;
    for handle in loops {
        let log = tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("a client notices the stop")
            .unwrap();
        for (started, ended, result) in &log {
            if *ended < stop_at {
                assert!(result.is_ok(), "a call failed before shutdown: {result:?}");
            }
            if *started < stop_at && *ended >= stop_at && result.is_ok() {
                spanning_ok += 1;
            }
        }
        let (_, _, last) = log.last().unwrap();
        let err = last.as_ref().expect_err("calls after shutdown fail");
        // Refused outright, or (a call the server never read) cut off by its
        // GOAWAY, which tonic reports as an h2 protocol error.
        assert!(
            matches!(
                err.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ) || (err.code() == tonic::Code::Internal
                && err.message().contains("h2 protocol error")),
            "unexpected failure after shutdown: {err:?}"
        );
    }
    assert!(
        spanning_ok > 0,
        "no call that was running when shutdown began completed"
    );
}

/// How many files each version has in the mixing tests: enough that a read
/// of the directory takes a while.
const VERSION_FILES: usize = 40;

/// One version of a many-file set: every policy matches, so a response's
/// determining policies list exactly the version's ids.
fn write_version(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for n in 0..VERSION_FILES {
        write(
            &dir.join(format!("f{n:02}.cedar")),
            &format!("@id(\"{tag}-{n:02}\")\npermit(principal, action, resource);\n"),
        );
    }
}

fn version_ids(tag: &str) -> Vec<String> {
    (0..VERSION_FILES)
        .map(|n| format!("{tag}-{n:02}"))
        .collect()
}

/// Flips `link` between two targets `flips` times while clients keep asking;
/// every answer must come from one whole version, never a mix of both.
async fn flip_under_load(served: &Path, root: &Path, link: &str, targets: [&str; 2]) {
    const FLIPS: usize = 1500;

    let server = TestServer::start(served).await;
    let mut client = server.client().await;
    let expected = [version_ids("one"), version_ids("two")];
    assert_eq!(verdict(&mut client).await.determining, expected[0]);

    let flipper = {
        let root = root.to_path_buf();
        let link = link.to_string();
        let targets = targets.map(ToString::to_string);
        std::thread::spawn(move || {
            let tmp = format!("{link}_tmp");
            for i in 1..=FLIPS {
                repoint(&root, &link, &tmp, &targets[i % 2]);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let mut seen = [0usize; 2];
    let mut mixed = Vec::new();
    let start = Instant::now();
    while !flipper.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "flipping took over 60s"
        );
        let got = verdict(&mut client).await.determining;
        match expected.iter().position(|e| *e == got) {
            Some(i) => seen[i] += 1,
            None => mixed.push(got),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    flipper.join().unwrap();
    eventually("the last version to go live", DEADLINE, || {
        let mut client = client.clone();
        let want = expected[FLIPS % 2].clone();
        async move { (verdict(&mut client).await.determining == want).then_some(()) }
    })
    .await;
    let first = mixed.first().map(|ids| {
        let one = ids.iter().filter(|id| id.starts_with("one-")).count();
        format!(
            "{one} of version one's and {} of version two's",
            ids.len() - one
        )
    });
    assert!(
        mixed.is_empty(),
        "{} of {} answers came from a set mixing both versions (first: {first:?})",
        mixed.len(),
        mixed.len() + seen[0] + seen[1]
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_sync_flips_never_serve_a_mix_of_two_worktrees() {
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    write_version(&root.join(".worktrees/one"), "one");
    write_version(&root.join(".worktrees/two"), "two");
    symlink(".worktrees/one", root.join("current"));
    flip_under_load(
        &root.join("current"),
        root,
        "current",
        [".worktrees/one", ".worktrees/two"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_flips_never_serve_a_mix_of_two_versions() {
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    let one = "..2026_01_01_00_00_00.000000001";
    let two = "..2026_01_01_00_05_00.000000002";
    write_version(&root.join(one), "one");
    write_version(&root.join(two), "two");
    symlink(one, root.join("..data"));
    for n in 0..VERSION_FILES {
        symlink(
            format!("..data/f{n:02}.cedar"),
            root.join(format!("f{n:02}.cedar")),
        );
    }
    flip_under_load(root, root, "..data", [one, two]).await;
}

const NET_SCHEMA: &str = r#"
entity User;
entity Doc;
action read appliesTo { principal: User, resource: Doc, context: { src: ipaddr } };
"#;

const NET_POLICIES: &str = r#"
@id("readers")
permit (principal, action == Action::"read", resource);

@id("quarantine")
forbid (principal, action, resource)
when { context.src.isInRange(ip("10.66.0.0/16")) };
"#;

fn from_quarantine() -> AuthorizeRequest {
    AuthorizeRequest {
        context_json: r#"{"src": "10.66.1.1"}"#.to_string(),
        ..request(("User", "u"), ("Action", "read"), ("Doc", "d"))
    }
}

/// Deleting the schema would make `src` parse as a string, so the network
/// `forbid` would stop matching. The reload is refused and the typed set
/// keeps serving, unless `[validation] schema = "optional"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_schema_is_refused_once_one_is_loaded() {
    use cedar_pdp::config::{OnForbidError, SchemaRequirement};
    for requirement in [
        SchemaRequirement::RequiredOnceLoaded,
        SchemaRequirement::Optional,
    ] {
        let dir = TempDir::new().unwrap();
        write_atomic(dir.path(), "schema.cedarschema", NET_SCHEMA);
        write_atomic(dir.path(), "policy.cedar", NET_POLICIES);
        let mut config = common::test_config(dir.path());
        config.validation.schema = requirement;
        // Cedar's semantics, so that only the schema decides the outcome.
        config.evaluation.on_forbid_error = OnForbidError::Skip;
        let server = TestServer::start_with(config).await;
        let mut client = server.client().await;
        let good = status(&mut client).await;
        assert!(good.schema_loaded);
        let (v, _) = ask(&mut client, from_quarantine()).await;
        assert_eq!(v, Verdict::deny(&["quarantine"]));

        std::fs::remove_file(dir.path().join("schema.cedarschema")).unwrap();
        match requirement {
            SchemaRequirement::RequiredOnceLoaded => {
                let failed = wait_for_reload_error_with(&mut client, "no schema").await;
                assert!(
                    failed.last_reload_error.contains(&good.revision)
                        && failed.last_reload_error.contains("optional"),
                    "{}",
                    failed.last_reload_error
                );
                assert_eq!(failed.generation, good.generation);
                assert!(failed.schema_loaded);
                let (v, rev) = ask(&mut client, from_quarantine()).await;
                assert_eq!(v, Verdict::deny(&["quarantine"]));
                assert_eq!(rev, good.revision);
            }
            SchemaRequirement::Optional => {
                let dropped = wait_for_generation(&mut client, good.generation).await;
                assert!(!dropped.schema_loaded);
                // What the default setting prevents: the string slips past
                // the `forbid`, which now errors.
                let resp = client
                    .authorize(from_quarantine())
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(resp.decision, Decision::Allow as i32, "{resp:?}");
                assert!(resp.errors.iter().any(|e| e.policy_id == "quarantine"));
            }
        }
        server.stop().await.unwrap();
    }
}

/// Reads every file under `dir` the way a reader would: what `cat`, an
/// editor's open or `cedar-pdp validate` beside the server does.
fn read_everything(dir: &Path) {
    for entry in walkdir_files(dir) {
        let _ = std::fs::read(&entry);
    }
    let _ = cedar_pdp::policy_store::read_dir(dir);
}

fn walkdir_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// An idle server reloads nothing: past two periodic rescans, with every
/// policy file read over and over meanwhile, no reload ran (not even one
/// that found the files unchanged). A change still reloads. In the plain,
/// ConfigMap and git-sync layouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_never_reloads_itself() {
    for layout in ["plain", "configmap", "git-sync"] {
        let dir = TempDir::new().unwrap();
        let root = dir.path();
        // Where a change is written, and what the server serves.
        let (edit, served) = match layout {
            "plain" => {
                write_atomic(root, "main.cedar", ALLOW_ALICE);
                (root.to_path_buf(), root.to_path_buf())
            }
            "configmap" => {
                let v1 = "..2026_01_01_00_00_00.000000001";
                configmap_version(root, v1, &[("main.cedar", ALLOW_ALICE)]);
                symlink(v1, root.join("..data"));
                symlink("..data/main.cedar", root.join("main.cedar"));
                (root.join(v1), root.to_path_buf())
            }
            _ => {
                let sha = "1111111111111111111111111111111111111111";
                worktree(root, sha, ALLOW_ALICE);
                symlink(format!(".worktrees/{sha}"), root.join("current"));
                let tree = root.join(".worktrees").join(sha).join("policies");
                (tree, root.join("current/policies"))
            }
        };
        let server = TestServer::start(&served).await;
        let admin = server.admin_addr;
        let mut client = server.client().await;
        assert_eq!(verdict(&mut client).await, Verdict::allow(&["allow-alice"]));

        let rescans =
            |admin| async move { metric(admin, "cedar_pdp_policy_rescans_total", &[]).await };
        eventually(&format!("{layout}: two rescans"), DEADLINE, || {
            read_everything(root);
            async move { (rescans(admin).await >= 2.0).then_some(()) }
        })
        .await;
        read_everything(root);
        let reloads = |result: &'static str| async move {
            metric(
                admin,
                "cedar_pdp_policy_reloads_total",
                &[("result", result)],
            )
            .await
        };
        assert_eq!(reloads("unchanged").await, 0.0, "{layout}: a reload ran");
        assert_eq!(reloads("error").await, 0.0, "{layout}");
        assert_eq!(reloads("success").await, 1.0, "{layout}");
        assert_eq!(status(&mut client).await.generation, 1, "{layout}");

        // A real change still goes live.
        write_atomic(&edit, "main.cedar", FORBID_ALICE);
        wait_for_generation(&mut client, 1).await;
        assert_eq!(
            verdict(&mut client).await,
            Verdict::deny(&["forbid-alice"]),
            "{layout}"
        );
        server.stop().await.unwrap();
    }
}
