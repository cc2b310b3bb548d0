//! `cedar-pdp test`: load a policy directory as the server does, run its
//! test files, print one line per case and a summary, and exit 1 on any
//! failure.

use std::path::{Path, PathBuf};

use clap::Args;

use super::Exit;
use super::problems::{self, Severity};
use crate::pipeline::PipelineOptions;
use crate::policy_store::{LoadError, LoadOptions, build, read_dir};
use crate::policy_tests::{junit, parse_suite, run as run_suite};

/// Flags of `cedar-pdp test`.
#[derive(Debug, Args)]
pub(super) struct TestArgs {
    /// Policy directory; its `*.test.yaml` / `*.test.json` files are run.
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    /// Also write the results as JUnit XML to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Config file whose `[validation]`, `[limits]` and `[caller]` settings
    /// apply, as the server would apply them.
    #[arg(long, value_name = "FILE", env = "CEDAR_PDP_CONFIG")]
    config: Option<PathBuf>,
}

/// Runs the cases: 0 every case passed, 1 a case failed or the policies or
/// tests do not load, 64 bad usage or config.
pub(super) fn run(args: TestArgs) -> Exit {
    let (options, judge) = match super::checked_config(args.config.as_deref()) {
        Ok(config) => (
            LoadOptions::from_config(&config),
            PipelineOptions::from_config(&config),
        ),
        Err(e) => return super::usage(&e),
    };
    let dir = &args.policies;
    // One read: the tests run against exactly the files that were loaded.
    let sources = match read_dir(dir) {
        Ok(sources) => sources,
        Err(e) => return load_failed(dir, "the policy set does not load", &e.into()),
    };
    let mut tests = sources.tests();
    let snapshot = match build(sources, &options, 1) {
        Ok(snapshot) => snapshot,
        Err(e) => return load_failed(dir, "the policy set does not load", &e),
    };
    let suite = match parse_suite(&mut tests) {
        Ok(suite) => suite,
        Err(e) => return load_failed(dir, "the test files do not load", &e),
    };
    if suite.case_count() == 0 {
        eprintln!(
            "cedar-pdp: no test files (`*.test.yaml`, `*.test.yml`, `*.test.json`) under `{}`",
            dir.display()
        );
        return Exit::Failure;
    }

    let report = run_suite(&snapshot, &suite, &judge);
    for (file, case) in report.cases() {
        let path = dir.join(file);
        if case.passed() {
            println!("ok      {}: {}", path.display(), case.name);
        } else {
            println!("FAILED  {}:{}: {}", path.display(), case.line, case.name);
            for m in &case.mismatches {
                println!("        {m}");
            }
        }
    }
    println!("{}", report.summary());

    if let Some(out) = &args.junit {
        let written = junit::to_xml(&report)
            .map_err(|e| e.to_string())
            .and_then(|xml| std::fs::write(out, xml).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("cedar-pdp: cannot write `{}`: {e}", out.display());
            return Exit::Failure;
        }
    }
    if report.failed() > 0 {
        Exit::Failure
    } else {
        Exit::Success
    }
}

/// Prints a load error's problems, then what did not load.
fn load_failed(dir: &Path, what: &str, e: &LoadError) -> Exit {
    let found = problems::of_load_error(dir, e);
    problems::print(&found, Severity::Error);
    eprintln!("cedar-pdp: {what}: {} error(s)", found.len());
    Exit::Failure
}
