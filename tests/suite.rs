//! Every integration test, as one test binary.
//!
//! One binary links the crate and its dependencies once, where one binary per
//! file linked them thirty-eight times. Each file under `tests/` is a module
//! here, but for the few that install process-wide state (the tracing
//! subscriber), which are their own `[[test]]` targets in `Cargo.toml`.
//! `autotests = false` would leave a new file unbuilt, so
//! `every_test_file_is_built` fails until it is declared in one place or the
//! other. One file's tests: `cargo test --test suite reload::`.

#![allow(clippy::expect_used, reason = "tests")]

mod common;
mod corpus;
mod tenants;

mod admin;
mod api;
mod audit_chain;
mod authzen;
mod authzen_interop;
mod authzen_search;
mod authzen_tls;
mod bench_cli;
mod cli;
mod conformance;
mod connections;
mod context_keys;
mod convert_props;
mod decision_cache;
mod decision_log;
mod decision_log_binary;
mod delegation;
mod deploy;
mod differential;
mod entity_claims;
mod ext_authz;
mod forbid_errors;
mod git_provenance;
mod inline_evaluation;
mod layout;
mod limits;
mod links;
mod memory;
mod mtls;
mod outcomes;
mod pipeline_props;
mod policy_tests;
mod reflection;
mod reload;
mod replay;
mod server_time;
mod shadow;
mod stream;
mod tokens;
mod uds;

#[test]
fn every_test_file_is_built() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let suite = include_str!("suite.rs");
    let manifest = include_str!("../Cargo.toml");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/ is readable") {
        let path = entry.expect("tests/ entry").path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let declared = if path.extension().is_some_and(|e| e == "rs") {
            suite.contains(&format!("\nmod {name};\n"))
                || manifest.contains(&format!("path = \"tests/{name}.rs\"\n"))
        } else if path.join("mod.rs").is_file() {
            suite.contains(&format!("\nmod {name};\n"))
        } else {
            true
        };
        if !declared {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "neither a module of tests/suite.rs nor a [[test]] in Cargo.toml: {missing:?}"
    );
}
