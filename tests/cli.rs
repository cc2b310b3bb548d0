//! The real binary: `--version`, `validate`, `serve` (and no subcommand),
//! `authorize`, exit codes, config errors, JSON logs, colour, completions
//! and SIGTERM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::binary::{self, Ran, Served, bin};
use tempfile::TempDir;

/// How long the binary may take to do anything, on a slow shared machine.
const DEADLINE: Duration = Duration::from_secs(15);

/// Runs `cmd` to completion with output captured, bounded by [`DEADLINE`].
fn run(cmd: Command) -> Ran {
    binary::run(cmd, DEADLINE)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

const POLICIES: &str = r#"@id("allow-alice")
permit(principal == User::"alice", action == Action::"view", resource);

@id("edit-with-mfa")
permit(principal == User::"alice", action == Action::"edit", resource)
when { context.mfa == true };

@id("owner-deletes")
permit(principal, action == Action::"delete", resource)
when { resource has owner && resource.owner == principal };
"#;

fn good_dir() -> TempDir {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "policy.cedar", POLICIES);
    dir
}

fn validate(dir: &Path) -> Ran {
    let mut cmd = bin();
    cmd.arg("validate").arg("--policies").arg(dir);
    run(cmd)
}

/// The default build allocates with mimalloc (BENCHMARKS.md, "The
/// allocator"); with `MIMALLOC_VERBOSE` it prints its options to stderr.
#[test]
fn the_binary_allocates_with_mimalloc() {
    let dir = good_dir();
    let mut cmd = bin();
    cmd.env("MIMALLOC_VERBOSE", "1")
        .arg("validate")
        .arg("--policies")
        .arg(dir.path());
    let ran = run(cmd);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(ran.stderr.contains("mimalloc: "), "{ran:?}");
}

/// `--version` names the commit the binary was built from and the Cedar
/// version it evaluates with.
#[test]
fn version_names_the_commit_and_the_cedar_version() {
    let mut cmd = bin();
    cmd.arg("--version");
    let ran = run(cmd);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    let (commit, cedar) = common::expected_build();
    assert_eq!(
        ran.stdout.trim(),
        format!(
            "cedar-pdp {} (commit {commit}, cedar-policy {cedar})",
            env!("CARGO_PKG_VERSION")
        ),
        "{ran:?}"
    );
}

#[test]
fn validate_accepts_a_good_directory() {
    let dir = good_dir();
    let ran = validate(dir.path());
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(
        ran.stdout
            .starts_with("ok: 3 policies, 0 entities, schema absent, revision sha256:"),
        "{ran:?}"
    );
}

#[test]
fn validate_reports_a_syntax_error_and_a_duplicate_id_in_two_files() {
    let dir = TempDir::new().unwrap();
    // Line 3, column 18: the `action` after the missing comma.
    write(
        dir.path(),
        "a.cedar",
        "permit(principal, action, resource);\n\npermit(principal action, resource);\n",
    );
    write(
        dir.path(),
        "b.cedar",
        "@id(\"x\")\npermit(principal, action, resource);\n",
    );
    // Line 2, column 3: where the second `@id("x")` starts.
    write(
        dir.path(),
        "c.cedar",
        "\n  @id(\"x\")\nforbid(principal, action, resource);\n",
    );
    let ran = validate(dir.path());
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    let d = dir.path().display();
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert!(
        lines.contains(&format!("{d}/a.cedar:3:18: unexpected token `action`").as_str()),
        "{ran:?}"
    );
    assert!(
        lines.contains(
            &format!("{d}/c.cedar:2:3: duplicate policy id `x`: already used in `b.cedar`")
                .as_str()
        ),
        "{ran:?}"
    );
    assert_eq!(lines.last(), Some(&"2 error(s)"), "{ran:?}");
    assert!(ran.stdout.is_empty(), "{ran:?}");
}

#[test]
fn validate_reports_schema_errors_in_two_files() {
    let dir = TempDir::new().unwrap();
    write(
        dir.path(),
        "schema.cedarschema",
        "entity User;\nentity Photo;\naction view appliesTo { principal: User, resource: Photo };\n",
    );
    write(
        dir.path(),
        "people.cedar",
        "@id(\"x\")\npermit(principal, action == Action::\"view\", resource)\n  when { principal.age > 3 };\n",
    );
    write(
        dir.path(),
        "photos/sizes.cedar",
        "@id(\"y\")\npermit(principal, action == Action::\"view\", resource)\n  when { resource.size > 3 };\n",
    );
    let ran = validate(dir.path());
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    let d = dir.path().display();
    for want in [
        format!(
            "{d}/people.cedar:3:10: for policy `x`, attribute `age` on entity type `User` not found"
        ),
        format!(
            "{d}/photos/sizes.cedar:3:10: for policy `y`, attribute `size` on entity type `Photo` not found"
        ),
    ] {
        assert!(
            ran.stderr.lines().any(|l| l == want),
            "missing `{want}`: {ran:?}"
        );
    }
    assert!(ran.stderr.ends_with("2 error(s)\n"), "{ran:?}");
}

#[test]
fn validate_rejects_a_directory_without_policies() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "schema.cedarschema", "entity User;\n");
    let ran = validate(dir.path());
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("no `.cedar` policy files"), "{ran:?}");
}

#[test]
fn serve_with_invalid_policies_exits_with_the_location() {
    let dir = TempDir::new().unwrap();
    write(
        dir.path(),
        "a.cedar",
        "permit(principal, action, resource);\n\npermit(principal action, resource);\n",
    );
    // With the subcommand, and without it (serve is the default).
    for subcommand in [Some("serve"), None] {
        let mut cmd = bin();
        cmd.args(subcommand)
            .arg("--policies")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"]);
        let ran = run(cmd);
        assert_eq!(ran.code(), Some(1), "{subcommand:?}: {ran:?}");
        assert!(
            ran.stderr.contains("did not load")
                && ran
                    .stderr
                    .contains("a.cedar:3:18: unexpected token `action`"),
            "{subcommand:?}: {ran:?}"
        );
    }
}

#[test]
fn bad_config_exits_64_with_a_clear_message() {
    let dir = good_dir();
    let unknown = write(dir.path(), "unknown.toml", "lisen = \"127.0.0.1:1\"\n");
    let nope = write(dir.path(), "nope.toml", "listen = \"nope\"\n");
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (
            vec!["serve".as_ref(), "--config".as_ref(), unknown.as_os_str()],
            "`lisen`: unknown key",
        ),
        (
            vec!["--config".as_ref(), unknown.as_os_str()],
            "`lisen`: unknown key",
        ),
        (
            vec!["serve".as_ref(), "--config".as_ref(), nope.as_os_str()],
            "`listen`: `nope` is not an address",
        ),
        (
            vec!["serve".as_ref(), "--listen".as_ref(), "nope".as_ref()],
            "`listen`: `nope` is not an address",
        ),
        (
            vec![
                "validate".as_ref(),
                "--config".as_ref(),
                unknown.as_os_str(),
            ],
            "`lisen`: unknown key",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = bin();
        cmd.args(&args).arg("--policies").arg(dir.path());
        let ran = run(cmd);
        assert_eq!(ran.code(), Some(64), "{args:?}: {ran:?}");
        assert!(
            ran.stderr.starts_with("cedar-pdp: invalid config") && ran.stderr.contains(want),
            "{args:?}: {ran:?}"
        );
    }
}

#[test]
fn every_unknown_key_and_bad_value_is_reported_in_one_run() {
    let dir = good_dir();
    let config = write(
        dir.path(),
        "c.toml",
        "lisen = \"127.0.0.1:1\"\n[tls]\ncerf = \"a.pem\"\n\
         [delegation]\nmax_depth = 0\nmax_scopes = \"many\"\n",
    );
    for cmd_name in ["serve", "validate"] {
        let mut cmd = bin();
        cmd.args([cmd_name, "--config"])
            .arg(&config)
            .arg("--policies")
            .arg(dir.path());
        let ran = run(cmd);
        assert_eq!(ran.code(), Some(64), "{cmd_name}: {ran:?}");
        for want in [
            "`lisen`: unknown key",
            "`tls.cerf`: unknown key",
            "`delegation.max_scopes`: invalid type: string \"many\"",
            "`delegation.max_depth`: 0 is not in 1..=64",
        ] {
            assert!(ran.stderr.contains(want), "{cmd_name}: no {want}: {ran:?}");
        }
    }
}

#[test]
fn serve_listens_on_a_host_name() {
    let dir = good_dir();
    let mut served = Served::start_as(dir.path(), "localhost", &[], DEADLINE);
    let allow = served.authorize(&args(&who(
        "User::\"alice\"",
        "Action::\"view\"",
        "Photo::\"p\"",
    )));
    assert_eq!(allow.code(), Some(0), "{allow:?}");
    assert!(allow.stdout.starts_with("ALLOW\n"), "{allow:?}");
    assert!(served.terminate().success(), "{}", served.log());

    // A name that does not resolve (RFC 6761 keeps `.invalid` so) is a
    // config error that names it, not a panic or a bind error.
    let mut cmd = bin();
    cmd.args(["serve", "--listen", "pdp.invalid:50051", "--policies"])
        .arg(dir.path());
    let ran = run(cmd);
    assert_eq!(ran.code(), Some(64), "{ran:?}");
    assert!(
        ran.stderr
            .contains("`listen`: `pdp.invalid:50051`: cannot resolve `pdp.invalid`"),
        "{ran:?}"
    );
}

#[test]
fn cedar_pdp_config_is_read_by_every_command_that_reads_config() {
    let dir = good_dir();
    let config = write(
        dir.path(),
        "c.toml",
        "[validation]\nschema = \"sometimes\"\n",
    );
    let log = write(dir.path(), "empty.log", "");
    let cases: [&[&str]; 3] = [
        &["validate"],
        &["test"],
        &["replay", "--log", log.to_str().unwrap()],
    ];
    for extra in cases {
        let mut cmd = bin();
        cmd.args(extra)
            .arg("--policies")
            .arg(dir.path())
            .env("CEDAR_PDP_CONFIG", &config);
        let ran = run(cmd);
        // replay's unusable input is 2 (its contract); the others' bad config 64.
        let code = if extra[0] == "replay" { 2 } else { 64 };
        assert_eq!(ran.code(), Some(code), "{extra:?}: {ran:?}");
        assert!(
            ran.stderr
                .contains("`validation.schema`: unknown variant `sometimes`"),
            "{extra:?}: {ran:?}"
        );
    }
    // `authorize --authzen` reads the mapping from it, before any call.
    let mut cmd = bin();
    cmd.args(["authorize", "--authzen", "http://127.0.0.1:9"])
        .args(args(&who(
            "User::\"a\"",
            "Action::\"view\"",
            "Photo::\"p\"",
        )))
        .env("CEDAR_PDP_CONFIG", &config);
    let ran = run(cmd);
    assert_eq!(ran.code(), Some(64), "{ran:?}");
    assert!(ran.stderr.contains("`validation.schema`"), "{ran:?}");
}

/// How the container image is asked for AuthZEN off its loopback
/// (deploy/README.md); here on a loopback port, as every test listens.
#[tokio::test]
async fn cedar_pdp_authzen_listen_opens_the_authzen_listener() {
    use std::io::{Read as _, Write as _};
    let dir = good_dir();
    let port = binary::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut served = Served::start_with_config_env(
        dir.path(),
        &format!("policies = {:?}\nadmin_listen = \"\"\n", dir.path()),
        &[("CEDAR_PDP_AUTHZEN_LISTEN", &addr)],
        DEADLINE,
    )
    .await;
    // The listener is bound before gRPC health says SERVING.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(
            b"GET /.well-known/authzen-configuration HTTP/1.1\r\nhost: pdp\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("policy_decision_point"), "{response}");
    served.send_sigterm();
    let status = served.wait_exit(DEADLINE).await;
    assert!(status.success(), "{}", served.log());
}

#[test]
fn logs_to_a_file_have_no_colour_unless_asked() {
    let dir = good_dir();
    for (extra, coloured) in [
        (&[][..], false),
        (&["--color", "never"][..], false),
        (&["--color", "always"][..], true),
    ] {
        // stderr is a file here, not a terminal.
        let mut served = Served::start(dir.path(), extra, DEADLINE);
        assert!(served.terminate().success(), "{}", served.log());
        let log = served.log();
        assert!(log.contains("serving"), "{extra:?}: {log}");
        assert_eq!(log.contains("\x1b["), coloured, "{extra:?}: {log:?}");
    }
}

#[test]
fn completions_name_every_subcommand() {
    let mut cmd = bin();
    cmd.args(["completions", "bash"]);
    let ran = run(cmd);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(
        ran.stdout.contains("complete -F _cedar__pdp ") && ran.stdout.contains(" cedar-pdp\n"),
        "{}",
        ran.stdout
    );
    for sub in [
        "serve",
        "validate",
        "authorize",
        "fmt",
        "bench",
        "test",
        "log",
        "replay",
        "completions",
    ] {
        assert!(
            ran.stdout.contains(&format!("cedar__pdp__subcmd__{sub}")),
            "{sub} not in:\n{}",
            ran.stdout
        );
    }
    for shell in ["zsh", "fish"] {
        let mut cmd = bin();
        cmd.args(["completions", shell]);
        let ran = run(cmd);
        assert_eq!(ran.code(), Some(0), "{shell}: {ran:?}");
        assert!(ran.stdout.contains("replay"), "{shell}: {}", ran.stdout);
    }
    let mut cmd = bin();
    cmd.args(["completions", "tcsh"]);
    assert_eq!(run(cmd).code(), Some(64));
}

#[test]
fn listen_flag_overrides_a_bad_listen_in_the_config_file() {
    let dir = good_dir();
    let work = TempDir::new().unwrap();
    let config = write(
        work.path(),
        "bad-listen.toml",
        "listen = \"nope\"\nadmin_listen = \"\"\n",
    );
    // The file alone is refused...
    let mut cmd = bin();
    cmd.args(["serve", "--config"])
        .arg(&config)
        .arg("--policies")
        .arg(dir.path());
    let ran = run(cmd);
    assert_eq!(ran.code(), Some(64), "{ran:?}");
    assert!(
        ran.stderr.contains("`listen`: `nope` is not an address"),
        "{ran:?}"
    );
    // ...but flags apply before the config is checked, so `--listen` (which
    // `Served::start` passes, on a free loopback port) fixes it.
    let mut served = Served::start(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        DEADLINE,
    );
    let ran = served.authorize(&args(&who(
        r#"User::"alice""#,
        r#"Action::"view""#,
        r#"Photo::"p""#,
    )));
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(served.terminate().success(), "{}", served.log());
}

fn who(principal: &str, action: &str, resource: &str) -> Vec<String> {
    vec![
        "--principal".into(),
        principal.into(),
        "--action".into(),
        action.into(),
        "--resource".into(),
        resource.into(),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn serve_answers_authorize_and_stops_on_sigterm() {
    let dir = good_dir();
    let mut served = Served::start(dir.path(), &[], DEADLINE);

    let allow = served.authorize(&args(&who(
        "User::\"alice\"",
        "Action::\"view\"",
        "Photo::\"p\"",
    )));
    assert_eq!(allow.code(), Some(0), "{allow:?}");
    let mut out = allow.stdout.lines();
    assert_eq!(out.next(), Some("ALLOW"), "{allow:?}");
    assert_eq!(
        out.next(),
        Some("determining policies: allow-alice"),
        "{allow:?}"
    );
    assert!(
        allow.stdout.contains("policy revision: sha256:"),
        "{allow:?}"
    );

    let deny = served.authorize(&args(&who(
        "User::\"bob\"",
        "Action::\"view\"",
        "Photo::\"p\"",
    )));
    assert_eq!(
        deny.code(),
        Some(2),
        "a deny is a result, not a failure: {deny:?}"
    );
    assert!(
        deny.stdout
            .starts_with("DENY\ndetermining policies: (none)\n"),
        "{deny:?}"
    );
    assert!(
        deny.stdout.contains("\nwhy: no permit matched\n"),
        "{deny:?}"
    );

    // --context: the policy needs `context.mfa`.
    let edit = who("User::\"alice\"", "Action::\"edit\"", "Photo::\"p\"");
    let mut with_mfa = args(&edit);
    with_mfa.extend(["--context", r#"{"mfa": true}"#]);
    let ran = served.authorize(&with_mfa);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(
        ran.stdout
            .starts_with("ALLOW\ndetermining policies: edit-with-mfa\n"),
        "{ran:?}"
    );
    let mut without_mfa = args(&edit);
    without_mfa.extend(["--context", r#"{"mfa": false}"#]);
    let ran = served.authorize(&without_mfa);
    assert_eq!(ran.code(), Some(2), "{ran:?}");
    // A context that is not an object is the caller's error.
    let mut bad_context = args(&edit);
    bad_context.extend(["--context", "[1]"]);
    let ran = served.authorize(&bad_context);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("InvalidArgument"), "{ran:?}");

    // --entities: the resource's owner comes from the request's entities.
    let entities = write(
        dir.path(),
        "request-entities.json",
        r#"[{"uid": {"type": "Photo", "id": "p"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "alice"}}}, "parents": []}]"#,
    );
    let delete = who("User::\"alice\"", "Action::\"delete\"", "Photo::\"p\"");
    let mut with_entities = args(&delete);
    with_entities.extend(["--entities", entities.to_str().unwrap()]);
    let ran = served.authorize(&with_entities);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    assert!(
        ran.stdout
            .starts_with("ALLOW\ndetermining policies: owner-deletes\n"),
        "{ran:?}"
    );
    let ran = served.authorize(&args(&delete));
    assert_eq!(
        ran.code(),
        Some(2),
        "without the entities there is no owner: {ran:?}"
    );

    let status = served.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is a clean stop:\n{}",
        served.log()
    );
    assert!(served.log().contains("stopped"), "{}", served.log());
    // Start-up says what loaded and what is on.
    let log = served.log();
    let loaded = log
        .lines()
        .find(|l| l.contains("policy set loaded"))
        .unwrap_or_else(|| panic!("no load line:\n{log}"));
    for field in [
        "revision=sha256:",
        "generation=1",
        "policies=",
        "templates=0",
        "links=0",
        "entities=",
        "schema=",
    ] {
        assert!(loaded.contains(field), "{field} in {loaded}");
    }
    let features = log
        .lines()
        .find(|l| l.contains("features"))
        .unwrap_or_else(|| panic!("no features line:\n{log}"));
    for field in ["decision_log=\"off\"", "otlp=", "authzen=", "tls=false"] {
        assert!(features.contains(field), "{field} in {features}");
    }
}

/// `authorize --policies DIR` decides with no server, through the same
/// pipeline: the same answers as the server gives on the README's calls and
/// `policies/README.md`'s, in text and in JSON.
#[test]
fn offline_authorize_answers_as_the_server_does() {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut served = Served::start(&policies, &[], DEADLINE);
    let frontend = r#"Mesh::Workload::"spiffe://example.org/ns/shop/sa/frontend""#;
    let calls: [(&str, &str, &str, &str); 3] = [
        (
            frontend,
            r#"Mesh::Action::"call""#,
            r#"Mesh::Service::"shop/checkout""#,
            r#"{"source_ip": "10.0.1.7"}"#,
        ),
        (
            frontend,
            r#"Mesh::Action::"call""#,
            r#"Mesh::Service::"shop/checkout""#,
            r#"{"source_ip": "203.0.113.9"}"#,
        ),
        (
            r#"Mesh::Workload::"spiffe://example.org/ns/other/sa/x""#,
            r#"Mesh::Action::"call""#,
            r#"Mesh::Service::"shop/checkout""#,
            r#"{"source_ip": "10.0.1.7"}"#,
        ),
    ];
    let mut codes = Vec::new();
    for (principal, action, resource, context) in calls {
        let mut flags = who(principal, action, resource);
        flags.extend(["--context".to_string(), context.to_string()]);
        let online = served.authorize(&args(&flags));
        let mut cmd = bin();
        cmd.arg("authorize")
            .arg("--policies")
            .arg(&policies)
            .args(&flags);
        let offline = run(cmd);
        assert_eq!(offline.code(), online.code(), "{offline:?}\n{online:?}");
        // The same answer, policies and revision; only the decision id,
        // which an offline decision does not have, differs.
        let strip = |ran: &Ran| -> Vec<String> {
            ran.stdout
                .lines()
                .filter(|l| !l.starts_with("decision id:"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(strip(&offline), strip(&online), "{offline:?}\n{online:?}");
        assert!(offline.stdout.contains("decided offline"), "{offline:?}");
        let mut cmd = bin();
        cmd.arg("authorize")
            .arg("--policies")
            .arg(&policies)
            .args(&flags)
            .args(["--format", "json"]);
        let json = run(cmd);
        let answer: serde_json::Value =
            serde_json::from_str(json.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {json:?}"));
        let word = if offline.code() == Some(0) {
            "allow"
        } else {
            "deny"
        };
        assert_eq!(answer["decision"], word, "{answer}");
        codes.push(offline.code());
    }
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(2)),
        "{codes:?}"
    );
    // A directory that does not load is a failure, not a deny.
    let broken = TempDir::new().unwrap();
    std::fs::write(broken.path().join("p.cedar"), "permit (").unwrap();
    let mut cmd = bin();
    cmd.arg("authorize")
        .arg("--policies")
        .arg(broken.path())
        .args(who("User::\"alice\"", "Action::\"view\"", "Photo::\"p\""));
    let ran = run(cmd);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("does not load"), "{ran:?}");
    served.terminate();
}

#[test]
fn authorize_without_a_server_fails_with_exit_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = bin();
    cmd.args(["authorize", "--addr", &format!("127.0.0.1:{port}")])
        .args(who("User::\"alice\"", "Action::\"view\"", "Photo::\"p\""));
    let ran = run(cmd);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("cannot connect"), "{ran:?}");
    assert!(ran.stdout.is_empty(), "{ran:?}");
}

#[test]
fn log_format_json_writes_json_lines_to_stderr() {
    let dir = good_dir();
    let mut served = Served::start(dir.path(), &["--log-format", "json"], DEADLINE);
    let status = served.terminate();
    assert_eq!(status.code(), Some(0), "{}", served.log());

    let log = served.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        assert!(
            line["level"].is_string() && line["timestamp"].is_string(),
            "{line}"
        );
    }
    let serving = lines
        .iter()
        .find(|l| l["message"] == "serving")
        .unwrap_or_else(|| panic!("no `serving` line in:\n{log}"));
    assert_eq!(serving["addr"], served.addr.as_str(), "{serving}");
    assert!(lines.iter().any(|l| l["message"] == "stopped"), "{log}");
}

const WARN_SCHEMA: &str = r#"
entity User;
entity Doc;
action read appliesTo { principal: [User], resource: [Doc] };
"#;

/// Loads, but with one policy that has no `@id` and one that can never apply.
const WARN_POLICIES: &str = r#"@id("reads")
permit (principal is User, action == Action::"read", resource is Doc);

permit (principal is User, action == Action::"read", resource is Doc);

@id("never")
permit (principal is Doc, action == Action::"read", resource is Doc);
"#;

fn validate_json(dir: &Path, extra: &[&str]) -> (Ran, serde_json::Value) {
    let mut cmd = bin();
    cmd.arg("validate")
        .arg("--policies")
        .arg(dir)
        .args(["--format", "json"])
        .args(extra);
    let ran = run(cmd);
    let report = serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {ran:?}"));
    (ran, report)
}

#[test]
fn validate_json_reports_warnings_for_missing_ids_and_policies_that_never_apply() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "schema.cedarschema", WARN_SCHEMA);
    write(dir.path(), "p.cedar", WARN_POLICIES);
    let (ran, report) = validate_json(dir.path(), &[]);
    assert_eq!(ran.code(), Some(0), "warnings alone do not fail: {ran:?}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["policy_count"], 3);
    let warnings = report["warnings"].as_array().unwrap();
    // Cedar reports the last policy twice: no action applies, and so it is
    // impossible.
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    let file = dir.path().join("p.cedar").display().to_string();
    let missing_id = warnings
        .iter()
        .find(|w| w["message"].as_str().unwrap().contains("no `@id`"))
        .unwrap();
    assert_eq!(
        (
            &missing_id["file"],
            &missing_id["line"],
            &missing_id["column"]
        ),
        (
            &serde_json::json!(file),
            &serde_json::json!(4),
            &serde_json::json!(1)
        )
    );
    assert!(
        missing_id["message"]
            .as_str()
            .unwrap()
            .contains("p.cedar#1"),
        "{missing_id}"
    );
    for never in warnings.iter().filter(|w| *w != missing_id) {
        assert_eq!(never["line"], 6, "{never}");
        assert!(
            never["message"].as_str().unwrap().contains("`never`"),
            "{never}"
        );
    }
    assert!(
        warnings
            .iter()
            .any(|w| w["message"].as_str().unwrap().contains("impossible")),
        "{warnings:#?}"
    );

    // Text mode says the same on stderr, and --deny-warnings fails on them.
    let ran = validate(dir.path());
    assert!(ran.stderr.contains("p.cedar:4:1: warning: "), "{ran:?}");
    assert!(ran.stdout.contains("3 warning(s)"), "{ran:?}");
    let (ran, report) = validate_json(dir.path(), &["--deny-warnings"]);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert_eq!(report["ok"], false);
}

#[test]
fn validate_json_lists_every_error_with_its_location() {
    let dir = TempDir::new().unwrap();
    write(
        dir.path(),
        "a.cedar",
        "@id(\"x\")\npermit(principal action, resource);\n",
    );
    write(
        dir.path(),
        "b.cedar",
        "@id(\"y\")\nforbid(principal, action, resource) when { 1 + };\n",
    );
    let (ran, report) = validate_json(dir.path(), &[]);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert_eq!(report["ok"], false);
    assert_eq!(report["revision"], serde_json::Value::Null);
    let errors = report["errors"].as_array().unwrap();
    let files: Vec<_> = errors
        .iter()
        .map(|e| {
            Path::new(e["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        files.contains(&"a.cedar".into()) && files.contains(&"b.cedar".into()),
        "{errors:#?}"
    );
    assert!(errors.iter().all(|e| e["line"] == 2), "{errors:#?}");
}

fn fmt(dir: &Path, check: bool) -> Ran {
    let mut cmd = bin();
    cmd.arg("fmt").arg("--policies").arg(dir);
    if check {
        cmd.arg("--check");
    }
    run(cmd)
}

#[test]
fn fmt_check_fails_on_unformatted_files_without_touching_them_and_fmt_fixes_them() {
    let dir = TempDir::new().unwrap();
    let messy =
        "@id(\"a\") permit(principal==User::\"alice\",action,resource)when{context.x==1};\n";
    let path = write(dir.path(), "p.cedar", messy);
    write(
        dir.path(),
        "tidy.cedar",
        "@id(\"b\")\npermit (principal, action, resource);\n",
    );

    let ran = fmt(dir.path(), true);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(
        ran.stdout.contains("would reformat: ") && ran.stdout.contains("p.cedar"),
        "{ran:?}"
    );
    // The diff it would apply, unified, and nothing for the tidy file.
    let diff: String = ran
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("--- "))
        .take_while(|l| !l.starts_with("2 file(s)"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        diff.starts_with("--- a/p.cedar\n+++ b/p.cedar\n@@ "),
        "{ran:?}"
    );
    assert!(diff.contains(&format!("\n-{}", messy.trim_end())), "{diff}");
    assert!(
        diff.contains("\n+  principal == User::\"alice\",\n"),
        "{diff}"
    );
    assert!(!diff.contains("tidy.cedar"), "{diff}");
    assert!(
        !ran.stdout
            .lines()
            .any(|l| l.starts_with("would reformat") && l.ends_with("tidy.cedar")),
        "{ran:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        messy,
        "--check writes nothing"
    );

    let ran = fmt(dir.path(), false);
    assert_eq!(ran.code(), Some(0), "{ran:?}");
    let formatted = std::fs::read_to_string(&path).unwrap();
    assert_ne!(formatted, messy);
    assert!(
        formatted.contains("principal == User::\"alice\""),
        "{formatted}"
    );
    assert_eq!(fmt(dir.path(), true).code(), Some(0));
    // Same policies, same decisions: the set still validates with both ids.
    let ran = validate(dir.path());
    assert!(ran.stdout.starts_with("ok: 2 policies"), "{ran:?}");
}

#[test]
fn fmt_leaves_a_file_that_does_not_parse_alone_and_fails() {
    let dir = TempDir::new().unwrap();
    let broken = "permit(principal action, resource);\n";
    let path = write(dir.path(), "broken.cedar", broken);
    let ran = fmt(dir.path(), false);
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("broken.cedar"), "{ran:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
}

#[test]
fn the_shipped_policies_are_formatted() {
    let ran = fmt(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        true,
    );
    assert_eq!(
        ran.code(),
        Some(0),
        "run `cedar-pdp fmt --policies policies`: {ran:?}"
    );
}

/// `authorize --authzen URL` asks the same question over AuthZEN: on the
/// example policies, with the server's `[authzen]` mapping, each README call
/// gets the same decision, determining policies and revision as over gRPC.
#[test]
fn authorize_gets_the_same_answer_over_grpc_and_authzen() {
    let work = TempDir::new().unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let port = binary::free_port();
    let mapping = "[authzen]\nnamespace = \"Mesh\"\n";
    let server_config = format!(
        "policies = {:?}\nadmin_listen = \"\"\nauthzen_listen = \"127.0.0.1:{port}\"\n{mapping}",
        policies.to_str().unwrap()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut served = runtime.block_on(Served::start_with_config(
        work.path(),
        &server_config,
        DEADLINE,
    ));
    let cli_config = work.path().join("cli.toml");
    std::fs::write(&cli_config, mapping).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let frontend = r#"Mesh::Workload::"spiffe://example.org/ns/shop/sa/frontend""#;
    let checkout = r#"Mesh::Service::"shop/checkout""#;
    let cases = [
        (frontend, checkout, r#"{"source_ip": "10.0.1.7"}"#, 0),
        (frontend, checkout, r#"{"source_ip": "10.99.0.12"}"#, 2),
        (
            r#"Mesh::Workload::"spiffe://example.org/ns/legacy/sa/batch""#,
            r#"Mesh::Service::"legacy/reports""#,
            r#"{"source_ip": "10.0.4.2"}"#,
            2,
        ),
    ];
    // Everything but the decision id, which is each decision's own.
    let answer = |ran: &Ran| -> Vec<String> {
        ran.stdout
            .lines()
            .filter(|l| !l.starts_with("decision id: "))
            .map(str::to_string)
            .collect()
    };
    for (principal, resource, context, code) in cases {
        let mut ask = who(principal, r#"Mesh::Action::"call""#, resource);
        ask.extend(["--context".to_string(), context.to_string()]);
        let grpc = served.authorize(&args(&ask));
        let mut over_authzen = ask.clone();
        over_authzen.extend([
            "--authzen".to_string(),
            url.clone(),
            "--config".to_string(),
            cli_config.to_str().unwrap().to_string(),
        ]);
        let authzen = served.authorize(&args(&over_authzen));
        assert_eq!(grpc.code(), Some(code), "{grpc:?}");
        assert_eq!(authzen.code(), Some(code), "{authzen:?}");
        assert_eq!(answer(&authzen), answer(&grpc), "{context}");
        assert!(
            !answer(&grpc)[1].ends_with("(none)"),
            "a determining policy names each answer: {grpc:?}"
        );
        let id = |ran: &Ran| {
            ran.stdout
                .lines()
                .find_map(|l| l.strip_prefix("decision id: "))
                .map(str::to_string)
                .unwrap()
        };
        assert!(!id(&authzen).is_empty(), "{authzen:?}");
        assert_ne!(id(&authzen), id(&grpc));
    }

    // Without the mapping, the CLI says which config the server needs.
    let mut unmapped = who(frontend, r#"Mesh::Action::"call""#, checkout);
    unmapped.extend(["--authzen".to_string(), url.clone()]);
    let ran = served.authorize(&args(&unmapped));
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(ran.stderr.contains(r#"namespace = "Mesh""#), "{ran:?}");
    // The server's 400 is a failed call, with its message.
    let mut bad = who(frontend, r#"Mesh::Action::"call""#, checkout);
    bad.extend([
        "--context".to_string(),
        "[1]".to_string(),
        "--authzen".to_string(),
        url,
        "--config".to_string(),
        cli_config.to_str().unwrap().to_string(),
    ]);
    let ran = served.authorize(&args(&bad));
    assert_eq!(ran.code(), Some(1), "{ran:?}");
    assert!(
        ran.stderr.contains("400") && ran.stderr.contains("context"),
        "{ran:?}"
    );
    assert!(served.terminate().success(), "{}", served.log());
}

/// The `--flag`s of `text`, without `--help` and `--version`.
fn flags(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .map(str::to_owned)
        .collect()
}

/// Every synopsis in docs/configuration.md names exactly the flags the
/// binary's `--help` lists for that command, so the reference stays true.
#[test]
fn the_documented_synopses_match_each_commands_help() {
    let doc = include_str!("../docs/configuration.md");
    // The code block under "## The binary".
    let block = doc
        .split_once("## The binary")
        .and_then(|(_, rest)| rest.split("```").nth(1))
        .expect("a code block under `## The binary`");
    let synopses: Vec<&str> = block
        .lines()
        .filter(|l| l.starts_with("cedar-pdp "))
        .collect();
    assert!(synopses.len() >= 8, "synopses not found: {synopses:?}");
    // docs/performance.md repeats bench's.
    let bench = include_str!("../docs/performance.md")
        .lines()
        .find(|l| l.starts_with("cedar-pdp bench "))
        .expect("bench's synopsis in docs/performance.md");
    assert!(synopses.contains(&bench), "{bench} is not in {synopses:?}");
    for line in synopses {
        // The command is the words before the first option.
        let words: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .map(|w| w.trim_matches(['[', ']']))
            .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase()))
            .collect();
        let mut cmd = bin();
        cmd.args(&words).arg("--help");
        let ran = run(cmd);
        assert_eq!(ran.code(), Some(0), "{words:?}: {ran:?}");
        assert_eq!(
            flags(line),
            flags(&ran.stdout),
            "docs/configuration.md's synopsis of `cedar-pdp {}` against its --help",
            words.join(" ")
        );
    }
}
