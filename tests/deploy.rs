//! deploy/: the offline checks of `deploy/check.py` (Kubernetes schemas,
//! yamllint, dashboard and alert metric names, the Envoy ext_authz filter,
//! the Dockerfile, the policy repository's workflow), run with the Python
//! tools pinned in `deploy/requirements-check.txt`, installed once into a
//! venv under the cargo target dir and reused while the pins are unchanged.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Creating the venv and installing the pinned tools, on a slow machine.
const INSTALL_DEADLINE: Duration = Duration::from_secs(300);
/// One run of check.py (about a second).
const CHECK_DEADLINE: Duration = Duration::from_secs(90);

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What a finished command printed.
#[derive(Debug)]
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with output captured, killing it past `deadline`.
fn run(mut cmd: Command, deadline: Duration) -> Ran {
    let out = TempDir::new().unwrap();
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap());
    let what = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {deadline:?}; output so far:\n{}\n{}",
                std::fs::read_to_string(&stdout).unwrap_or_default(),
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ran {
        status,
        stdout: std::fs::read_to_string(&stdout).unwrap(),
        stderr: std::fs::read_to_string(&stderr).unwrap(),
    }
}

/// The venv's python, with deploy/requirements-check.txt installed. Built
/// once per test process; reused across runs while the pins are the same.
fn venv_python() -> &'static Path {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(build_venv) {
        Ok(python) => python,
        Err(e) => panic!("{e}"),
    }
}

fn build_venv() -> Result<PathBuf, String> {
    let requirements = crate_dir().join("deploy/requirements-check.txt");
    let pins = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-check-venv");
    let python = venv.join("bin/python");
    // Written last, after a successful install: its presence with the same
    // pins means the venv is complete.
    let marker = venv.join("installed-requirements.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(pins.as_str()) && python.exists() {
        return Ok(python);
    }

    let ran = run(
        {
            let mut c = Command::new("python3");
            c.args([
                "-c",
                "import sys; assert sys.version_info >= (3, 11), sys.version",
            ]);
            c
        },
        CHECK_DEADLINE,
    );
    if !ran.status.success() {
        return Err(format!(
            "deploy/check.py needs python3 >= 3.11 (for tomllib) on PATH: {ran:?}"
        ));
    }
    // Start clean: a venv left half-built by an interrupted run, or with
    // other pins, is rebuilt from scratch.
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .map_err(|e| format!("cannot remove stale {}: {e}", venv.display()))?;
    }
    let started = Instant::now();
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&venv);
    let ran = run(create, INSTALL_DEADLINE);
    if !ran.status.success() {
        return Err(format!(
            "`python3 -m venv {}` failed (is the venv module installed?): {ran:?}",
            venv.display()
        ));
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "--timeout",
        "30",
        "--retries",
        "2",
        "--only-binary=:all:",
        "-r",
    ])
    .arg(&requirements);
    let ran = run(pip, INSTALL_DEADLINE.saturating_sub(started.elapsed()));
    if !ran.status.success() {
        return Err(format!(
            "pip could not install {} into {} (is PyPI reachable?):\n{}\n{}",
            requirements.display(),
            venv.display(),
            ran.stdout,
            ran.stderr
        ));
    }
    std::fs::write(&marker, &pins)
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(python)
}

/// Runs deploy/check.py (always the crate's, so it reads the crate's
/// src/metrics.rs, src/config.rs and policies/) with `args`.
fn check(args: &[&std::ffi::OsStr]) -> Ran {
    let mut cmd = Command::new(venv_python());
    cmd.arg(crate_dir().join("deploy/check.py"))
        .args(args)
        .current_dir(crate_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run(cmd, CHECK_DEADLINE)
}

/// Every step check.py reports, in order.
const STEPS: [&str; 7] = [
    "manifests",
    "yamllint",
    "dashboard",
    "envoy",
    "alerts",
    "dockerfile",
    "policy CI",
];

#[test]
fn the_deploy_directory_passes_every_offline_check() {
    let ran = check(&[]);
    assert!(ran.status.success(), "deploy/check.py failed:\n{ran:#?}");
    for step in STEPS {
        assert!(
            ran.stdout.contains(&format!("check {step}: ok")),
            "step `{step}` did not run or did not pass:\n{ran:#?}"
        );
    }
    assert!(ran.stdout.contains("all deploy checks passed"), "{ran:#?}");
    assert!(ran.stderr.is_empty(), "{ran:#?}");
}

/// A copy of deploy/ in a temp dir, as `<tmp>/deploy`.
fn copy_of_deploy() -> (TempDir, PathBuf) {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                if entry.file_name() != "__pycache__" {
                    copy_dir(&entry.path(), &target);
                }
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("deploy");
    copy_dir(&crate_dir().join("deploy"), &root);
    (tmp, root)
}

/// Replaces the one occurrence of `from` in `file` under `root`.
fn break_file(root: &Path, file: &str, from: &str, to: &str) {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` should occur once in {file}"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_checker_names_a_broken_manifest_and_a_fail_open_envoy() {
    let (_tmp, root) = copy_of_deploy();
    // An invalid field type: a probe period as a string.
    break_file(
        &root,
        "kubernetes/git-sync/deployment.yaml",
        "            periodSeconds: 10\n",
        "            periodSeconds: \"ten\"\n",
    );
    // Fail open: an unreachable cedar-pdp would let every request through.
    break_file(
        &root,
        "envoy/envoy.yaml",
        "failure_mode_allow: false",
        "failure_mode_allow: true",
    );

    let ran = check(&["--root".as_ref(), root.as_os_str()]);
    assert_eq!(ran.status.code(), Some(1), "{ran:#?}");
    let manifest = ran
        .stderr
        .lines()
        .find(|l| l.contains("deploy/kubernetes/git-sync/deployment.yaml:"))
        .unwrap_or_else(|| panic!("the broken manifest is not named:\n{ran:#?}"));
    assert!(
        manifest.contains("livenessProbe/periodSeconds") && manifest.contains("'ten'"),
        "{manifest}"
    );
    let envoy = ran
        .stderr
        .lines()
        .find(|l| l.contains("deploy/envoy/envoy.yaml:"))
        .unwrap_or_else(|| panic!("the broken envoy.yaml is not named:\n{ran:#?}"));
    assert!(
        envoy.contains("failure_mode_allow must be false"),
        "{envoy}"
    );
    assert!(ran.stderr.contains("2 problem(s)"), "{ran:#?}");
    assert!(ran.stdout.contains("check dashboard: ok"), "{ran:#?}");
}

#[test]
fn the_checker_requires_envoy_to_forward_the_normalised_path() {
    let (_tmp, root) = copy_of_deploy();
    break_file(
        &root,
        "envoy/envoy.yaml",
        "merge_slashes: true",
        "merge_slashes: false",
    );
    break_file(
        &root,
        "envoy/envoy.yaml",
        "path_with_escaped_slashes_action: REJECT_REQUEST",
        "path_with_escaped_slashes_action: KEEP_UNCHANGED",
    );
    let ran = check(&["--root".as_ref(), root.as_os_str()]);
    assert_eq!(ran.status.code(), Some(1), "{ran:#?}");
    for key in ["merge_slashes", "path_with_escaped_slashes_action"] {
        assert!(
            ran.stderr
                .lines()
                .any(|l| l.contains("deploy/envoy/envoy.yaml:") && l.contains(key)),
            "{key} is not named:\n{ran:#?}"
        );
    }
    assert!(ran.stderr.contains("2 problem(s)"), "{ran:#?}");
}

#[test]
fn the_checker_rejects_metric_names_and_config_keys_the_crate_does_not_have() {
    let (_tmp, root) = copy_of_deploy();
    // A plausible but wrong name: the counter is exposed as
    // cedar_pdp_decisions_total.
    let dashboard = root.join("observability/grafana-dashboard.json");
    let text = std::fs::read_to_string(&dashboard).unwrap();
    assert!(text.contains("cedar_pdp_decisions_total{"), "{text}");
    std::fs::write(
        &dashboard,
        text.replace("cedar_pdp_decisions_total{", "cedar_pdp_decision_total{"),
    )
    .unwrap();
    // A config key src/config.rs does not have.
    break_file(
        &root,
        "kubernetes/base/config.yaml",
        "    rescan_interval = \"30s\"\n",
        "    rescan_every = \"30s\"\n",
    );

    let ran = check(&["--root".as_ref(), root.as_os_str()]);
    assert_eq!(ran.status.code(), Some(1), "{ran:#?}");
    assert!(
        ran.stderr.contains(
            "deploy/observability/grafana-dashboard.json: panel 1 `Decisions per second by decision`: \
             `cedar_pdp_decision_total` is not a metric src/metrics.rs exposes"
        ),
        "{ran:#?}"
    );
    assert!(
        ran.stderr.contains(
            "deploy/kubernetes/base/config.yaml: config.toml: unknown key `reload.rescan_every`"
        ),
        "{ran:#?}"
    );
    assert!(ran.stdout.contains("check envoy: ok"), "{ran:#?}");
}

/// Writes the ConfigMaps' files as the kubelet would mount them: the config
/// TOML to `<dir>/config.toml` and the policies to `<dir>/policies/`.
fn mount_configmaps(dir: &Path) {
    let script = r#"
import pathlib, sys, yaml
deploy, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
config = yaml.safe_load((deploy / "kubernetes/base/config.yaml").read_text())
(out / "config.toml").write_text(config["data"]["config.toml"])
policies = yaml.safe_load((deploy / "kubernetes/policies/policies.yaml").read_text())
(out / "policies").mkdir()
for name, text in policies["data"].items():
    (out / "policies" / name).write_text(text)
"#;
    let mut cmd = Command::new(venv_python());
    cmd.args(["-c", script])
        .arg(crate_dir().join("deploy"))
        .arg(dir);
    let ran = run(cmd, CHECK_DEADLINE);
    assert!(ran.status.success(), "{ran:#?}");
}

fn validate_with(config: &Path, policies: &Path) -> Ran {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cedar-pdp"));
    cmd.arg("validate")
        .arg("--config")
        .arg(config)
        .arg("--policies")
        .arg(policies)
        .env_remove("RUST_LOG")
        .env_remove("CEDAR_PDP_CONFIG");
    run(cmd, CHECK_DEADLINE)
}

#[test]
fn the_binary_accepts_the_configmaps() {
    let dir = TempDir::new().unwrap();
    mount_configmaps(dir.path());
    let config = dir.path().join("config.toml");
    let policies = dir.path().join("policies");
    let ran = validate_with(&config, &policies);
    if !ran.status.success() {
        // Until Unix-socket listening lands (`listen = "unix://..."` and
        // `[unix_socket] mode`), the binary rejects exactly those; every
        // other key must already be accepted as it is.
        assert!(
            ran.stderr.contains("unix_socket") || ran.stderr.contains("`listen`"),
            "the config is rejected for something other than the Unix socket:\n{ran:#?}"
        );
        let text = std::fs::read_to_string(&config).unwrap();
        let mut stripped = String::new();
        let mut in_unix_socket = false;
        for line in text.lines() {
            if line.starts_with('[') {
                in_unix_socket = line.trim() == "[unix_socket]";
            }
            if in_unix_socket {
                continue;
            }
            if line.starts_with("listen = \"unix://") {
                stripped.push_str("listen = \"127.0.0.1:50051\"\n");
            } else {
                stripped.push_str(line);
                stripped.push('\n');
            }
        }
        assert_ne!(stripped, text, "nothing Unix-socket related to strip");
        std::fs::write(&config, stripped).unwrap();
        let ran = validate_with(&config, &policies);
        assert!(ran.status.success(), "{ran:#?}");
    }
    // The ConfigMap's policies are the example set: a schema, entities and
    // every policy load.
    let ran = validate_with(&config, &policies);
    assert!(
        ran.stdout.starts_with("ok: ") && ran.stdout.contains("schema loaded"),
        "{ran:#?}"
    );
    let reference = validate_with(&config, &crate_dir().join("policies"));
    // The content digest only: `policies/` may also carry its git commit.
    let revision = |out: &str| {
        out.rsplit("revision ")
            .next()
            .and_then(|r| r.split([',', '+']).next())
            .map(str::trim)
            .map(String::from)
    };
    assert_eq!(
        revision(&ran.stdout),
        revision(&reference.stdout),
        "the policies ConfigMap is not the example set:\n{ran:#?}\n{reference:#?}"
    );
}

/// `major.minor` of a version string like `1.91` or `1.89.0`.
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap_or(0))
}

#[test]
fn the_dockerfile_rust_is_new_enough_for_every_locked_dependency() {
    let dockerfile = std::fs::read_to_string(crate_dir().join("deploy/Dockerfile")).unwrap();
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .unwrap_or_else(|| panic!("deploy/Dockerfile has no `ARG RUST_VERSION=`"));
    assert!(
        dockerfile.contains("FROM rust:${RUST_VERSION}-"),
        "the build stage does not use RUST_VERSION"
    );
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "metadata",
        "--locked",
        "--format-version",
        "1",
        "--filter-platform",
    ])
    .arg(host_triple())
    .current_dir(crate_dir());
    let ran = run(cmd, CHECK_DEADLINE);
    assert!(ran.status.success(), "cargo metadata failed: {ran:#?}");
    let metadata: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    assert!(packages.len() > 50, "{} packages", packages.len());
    let (needed, by) = packages
        .iter()
        .filter_map(|p| {
            Some((
                major_minor(p["rust_version"].as_str()?),
                p["name"].as_str()?,
            ))
        })
        .max()
        .unwrap();
    assert!(
        major_minor(image) >= needed,
        "deploy/Dockerfile builds with Rust {image}, but `{by}` needs {}.{}",
        needed.0,
        needed.1
    );
}

/// This machine's target triple, from `rustc -vV`.
fn host_triple() -> String {
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .to_string()
}

/// The image ships the release profile's binary as built, and that profile
/// keeps symbols and debug info out of it (issue 33); the profiling profile
/// keeps them, off the image. The image also offers AuthZEN's port, which
/// `CEDAR_PDP_AUTHZEN_LISTEN` opens (tests/cli.rs runs that).
#[test]
fn the_image_ships_a_stripped_release_binary_and_can_serve_authzen() {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(crate_dir().join("Cargo.toml")).unwrap()).unwrap();
    let profile = |name: &str| manifest["profile"][name].as_table().unwrap().clone();
    let release = profile("release");
    assert_eq!(release["strip"].as_str(), Some("symbols"), "{release:?}");
    assert_eq!(release["debug"].as_bool(), Some(false), "{release:?}");
    let profiling = profile("profiling");
    assert_eq!(profiling["inherits"].as_str(), Some("release"));
    assert_eq!(profiling["strip"].as_str(), Some("none"));

    let dockerfile = std::fs::read_to_string(crate_dir().join("deploy/Dockerfile")).unwrap();
    let text = dockerfile.replace("\\\n", " ");
    let build = text
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("the Dockerfile builds the binary");
    assert!(
        build.contains("--release")
            && !build.contains("--profile")
            && build.contains("install -D -m 0755 target/release/cedar-pdp /out/cedar-pdp"),
        "{build}"
    );
    let expose = text
        .lines()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("EXPOSE");
    assert!(expose.split_whitespace().any(|p| p == "8180"), "{expose}");
    assert!(
        !text.contains("--authzen-listen"),
        "a CMD flag would beat CEDAR_PDP_AUTHZEN_LISTEN"
    );
}
