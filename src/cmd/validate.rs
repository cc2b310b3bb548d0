//! `cedar-pdp validate`: load a policy directory as the server would, and
//! report every error and warning, as text lines or one JSON object.

use std::path::PathBuf;

use clap::Args;

use super::Exit;
use super::problems::{self, Severity};
use crate::engine::SourceProblem;
use crate::policy_store::load_dir;

/// Flags of `validate`.
#[derive(Debug, Args)]
pub(super) struct ValidateArgs {
    /// Policy directory.
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    /// Config file whose `[validation]` settings apply.
    #[arg(long, value_name = "FILE", env = "CEDAR_PDP_CONFIG")]
    config: Option<PathBuf>,
    /// `text` (`file:line:col: message` lines) or `json` (one object, for tools).
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Exit 1 on warnings too.
    #[arg(long)]
    deny_warnings: bool,
}

/// How `validate` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

/// Loads the directory and reports; 1 on an error (or, with
/// `--deny-warnings`, a warning).
pub(super) fn run(args: ValidateArgs) -> Exit {
    let options = match super::load_options(args.config.as_deref()) {
        Ok(options) => options,
        Err(e) => return super::usage(&e),
    };
    let dir = &args.policies;
    let loaded = load_dir(dir, &options);
    let (snapshot, errors) = match loaded {
        Ok(snapshot) => (Some(snapshot), Vec::new()),
        Err(e) => (None, problems::of_load_error(dir, &e)),
    };
    let warnings: Vec<SourceProblem> = snapshot
        .as_ref()
        .map(|s| {
            s.warnings
                .iter()
                .map(|p| problems::located(dir, p))
                .collect()
        })
        .unwrap_or_default();
    let failed = !errors.is_empty() || (args.deny_warnings && !warnings.is_empty());
    match args.format {
        ReportFormat::Json => {
            let problem = |p: &SourceProblem| serde_json::json!({"file": p.file, "line": p.line, "column": p.column, "message": p.message});
            let report = serde_json::json!({
                "ok": !failed,
                "policies": dir.display().to_string(),
                "revision": snapshot.as_ref().map(|s| s.revision.clone()),
                "policy_count": snapshot.as_ref().map(|s| s.engine.policy_count()),
                "entity_count": snapshot.as_ref().map(|s| s.engine.entity_count()),
                "schema": snapshot.as_ref().map(|s| s.engine.schema().is_some()),
                "errors": errors.iter().map(problem).collect::<Vec<_>>(),
                "warnings": warnings.iter().map(problem).collect::<Vec<_>>(),
            });
            println!("{report}");
        }
        ReportFormat::Text => {
            problems::print(&errors, Severity::Error);
            problems::print(&warnings, Severity::Warning);
            match &snapshot {
                Some(s) => println!(
                    "ok: {} policies, {} entities, schema {}, revision {}, {} warning(s)",
                    s.engine.policy_count(),
                    s.engine.entity_count(),
                    if s.engine.schema().is_some() {
                        "loaded"
                    } else {
                        "absent"
                    },
                    s.revision,
                    warnings.len(),
                ),
                None => eprintln!("{} error(s)", errors.len()),
            }
        }
    }
    if failed { Exit::Failure } else { Exit::Success }
}
