//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes a
//! descriptor set for gRPC server reflection; records the git commit and the
//! Cedar version for `--version` and `cedar_pdp_build_info`.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    build_info();
    let proto = "proto/cedar_pdp/v1/authorizer.proto";
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("cedar_pdp_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Envoy's ext_authz service, for reflection only: its Rust types come
    // from envoy-types, whose proto files are vendored in proto/vendor.
    let envoy = protox::compile(
        ["envoy/service/auth/v3/external_auth.proto"],
        ["proto/vendor"],
    )?;
    std::fs::write(
        out.join("envoy_ext_authz_descriptor.bin"),
        prost::Message::encode_to_vec(&envoy),
    )?;
    // google.rpc's error details, for reflection only: error statuses
    // carry them, and their types come from tonic-types.
    let rpc = protox::compile(["google/rpc/error_details.proto"], ["proto/rpc"])?;
    std::fs::write(
        out.join("google_rpc_descriptor.bin"),
        prost::Message::encode_to_vec(&rpc),
    )?;
    tonic_prost_build::configure()
        // Ordered maps convert to the same JSON every time, so equal
        // requests get equal decision-cache keys.
        .btree_map(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

/// Sets `CEDAR_PDP_GIT_COMMIT` (the checkout's commit, or `unknown`) and
/// `CEDAR_PDP_CEDAR_VERSION` (cedar-policy's version in `Cargo.lock`) for
/// the crate. Read from the files, without the `git` binary: a build needs
/// nothing but the toolchain.
fn build_info() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    // An image built without `.git` can pass the commit in.
    println!("cargo:rerun-if-env-changed=CEDAR_PDP_GIT_COMMIT");
    let commit = match std::env::var("CEDAR_PDP_GIT_COMMIT") {
        Ok(commit) if !commit.is_empty() => commit,
        _ => git_commit(&root).unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=CEDAR_PDP_GIT_COMMIT={commit}");
    let lock = root.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let cedar = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| locked_version(&text, "cedar-policy"))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CEDAR_PDP_CEDAR_VERSION={cedar}");
}

/// The version `Cargo.lock` pins for `package`.
fn locked_version(lock: &str, package: &str) -> Option<String> {
    let name = format!("name = \"{package}\"");
    lock.split("[[package]]").find_map(|block| {
        let mut lines = block.lines().map(str::trim);
        lines.find(|l| *l == name)?;
        let version = lines.find_map(|l| l.strip_prefix("version = "))?;
        Some(version.trim_matches('"').to_string())
    })
}

/// The commit checked out at `root` or a directory above it: `HEAD`, and
/// the branch it names as a loose ref or in `packed-refs`. A worktree's
/// `.git` is a file naming its git directory, whose `commondir` holds the
/// shared refs. Cargo reruns this when `HEAD` or the ref changes.
fn git_commit(root: &Path) -> Option<String> {
    let dot_git = root
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|p| p.exists())?;
    let git_dir = if dot_git.is_dir() {
        dot_git
    } else {
        let text = std::fs::read_to_string(&dot_git).ok()?;
        let target = text.trim().strip_prefix("gitdir:")?.trim();
        dot_git.parent()?.join(target)
    };
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(text) => git_dir.join(text.trim()),
        Err(_) => git_dir.clone(),
    };
    let head_path = git_dir.join("HEAD");
    let head = std::fs::read_to_string(&head_path).ok()?;
    println!("cargo:rerun-if-changed={}", head_path.display());
    let Some(reference) = head.trim().strip_prefix("ref:").map(str::trim) else {
        // Detached: HEAD holds the commit itself.
        return object_id(head.trim());
    };
    for dir in [&git_dir, &common] {
        let loose = dir.join(reference);
        if let Ok(text) = std::fs::read_to_string(&loose) {
            println!("cargo:rerun-if-changed={}", loose.display());
            return object_id(text.trim());
        }
    }
    let packed = common.join("packed-refs");
    // Only paths that exist: cargo reruns every build for one that does not.
    if packed.exists() {
        println!("cargo:rerun-if-changed={}", packed.display());
    }
    // The next commit writes a loose ref, into a directory that exists.
    if let Some(dir) = common.join(reference).parent().filter(|d| d.is_dir()) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    std::fs::read_to_string(packed)
        .ok()?
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
        .find_map(|l| {
            let (id, name) = l.split_once(' ')?;
            (name.trim() == reference).then(|| object_id(id)).flatten()
        })
}

/// `text` when it is a SHA-1 or SHA-256 object id in hex.
fn object_id(text: &str) -> Option<String> {
    let ok = matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| text.to_ascii_lowercase())
}
