//! The README's layout section tells the truth: every path it lists exists,
//! every module of `src/` is listed, and the two rooms it draws hold: only
//! `src/engine/` names Cedar's core crate, and the policy store names no
//! Cedar crate at all.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first code block under `## Layout`.
fn layout_block() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Layout\n")
        .nth(1)
        .expect("README.md has a `## Layout` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let block = section
        .split("```")
        .nth(1)
        .expect("the layout section has a code block");
    block.to_string()
}

/// Every word of the block that names a path: `src/x.rs`, `src/x/`, `proto/`.
fn listed_paths(block: &str) -> BTreeSet<String> {
    block
        .split_whitespace()
        .map(|w| w.trim_end_matches([',', ';', ':']))
        .filter(|w| {
            (w.contains('/') || w.ends_with(".rs"))
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
                && !w.starts_with('/')
                && !w.contains("..")
        })
        .map(str::to_string)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_path_the_readme_layout_lists_exists() {
    let listed = listed_paths(&layout_block());
    assert!(listed.len() > 20, "too few paths found: {listed:?}");
    let missing: Vec<&String> = listed
        .iter()
        .filter(|p| {
            let path = root().join(p);
            if p.ends_with('/') {
                !path.is_dir()
            } else {
                !path.exists()
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "README layout lists missing paths: {missing:?}"
    );
}

#[test]
fn every_module_of_src_is_in_the_readme_layout() {
    let listed = listed_paths(&layout_block());
    let mut unlisted = Vec::new();
    for entry in std::fs::read_dir(root().join("src")).expect("src/") {
        let path = entry.expect("src entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let shown = if path.is_dir() {
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        };
        if !listed.contains(&shown) {
            unlisted.push(shown);
        }
    }
    assert!(
        unlisted.is_empty(),
        "not in the README layout: {unlisted:?}"
    );
}

#[test]
fn only_the_engine_imports_cedar_core_and_the_store_no_cedar() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let engine = root().join("src/engine");
    let store = root().join("src/policy_store");
    let mut wrong = Vec::new();
    for file in files {
        // Code only: docs may name the crate.
        let text: String = std::fs::read_to_string(&file)
            .expect("source file")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        if !file.starts_with(&engine) && text.contains("cedar_policy_core") {
            wrong.push(format!("{} names cedar_policy_core", file.display()));
        }
        if file.starts_with(&store) && text.contains("cedar_policy") {
            wrong.push(format!("{} names a Cedar crate", file.display()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
