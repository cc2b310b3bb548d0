//! `cedar-pdp test`: load a policy directory as the server does, run its
//! test files, print one line per case and a summary, and exit 1 on any
//! failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::cli::EXIT_USAGE;
use crate::config::Config;
use crate::policy_store::{LoadError, LoadOptions, build, read_dir};

use super::{junit, read_suite, run};

/// Flags of `cedar-pdp test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Policy directory; its `*.test.yaml` / `*.test.json` files are run.
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    /// Also write the results as JUnit XML to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Config file whose `[validation]` settings apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Runs `cedar-pdp test`. Exit codes: 0 every case passed, 1 a case failed or
/// the policies or tests do not load, 64 bad usage or config.
pub fn main(args: TestArgs) -> ExitCode {
    let validate_policies = match &args.config {
        Some(path) => match Config::from_path(path) {
            Ok(c) => c.validation.policies,
            Err(e) => {
                eprintln!("cedar-pdp: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => true,
    };
    let options = LoadOptions { validate_policies };
    let snapshot = match read_dir(&args.policies).and_then(|s| build(s, &options, 1)) {
        Ok(snapshot) => snapshot,
        Err(e) => return load_failed(&args.policies, "the policy set does not load", &e),
    };
    let suite = match read_suite(&args.policies) {
        Ok(suite) => suite,
        Err(e) => return load_failed(&args.policies, "the test files do not load", &e),
    };
    if suite.case_count() == 0 {
        eprintln!(
            "cedar-pdp: no test files (`*.test.yaml`, `*.test.yml`, `*.test.json`) under `{}`",
            args.policies.display()
        );
        return ExitCode::FAILURE;
    }

    let report = run(&snapshot, &suite);
    for (file, case) in report.cases() {
        let path = args.policies.join(file);
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
            return ExitCode::FAILURE;
        }
    }
    if report.failed() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints a load error as `DIR/file:line:column: message` lines.
fn load_failed(dir: &Path, what: &str, e: &LoadError) -> ExitCode {
    match e {
        LoadError::Invalid(problems) => {
            for p in problems {
                let file = dir.join(&p.file);
                eprintln!("{}:{}:{}: {}", file.display(), p.line, p.column, p.message);
            }
            eprintln!("cedar-pdp: {what}: {} error(s)", problems.len());
        }
        other => eprintln!("cedar-pdp: {what}: {other}"),
    }
    ExitCode::FAILURE
}
