//! `cedar-pdp fmt`: format the `.cedar` files of a policy directory, or with
//! `--check` only show the diff of each that would change.

use std::path::PathBuf;

use clap::Args;

use super::Exit;
use super::problems::{self, Severity};
use crate::policy_format;

/// Flags of `fmt`.
#[derive(Debug, Args)]
pub(super) struct FmtArgs {
    /// Policy directory.
    #[arg(long, value_name = "DIR", default_value = "policies")]
    policies: PathBuf,
    /// Change nothing; print the unified diff formatting would apply, and
    /// exit 1 when a file would change.
    #[arg(long)]
    check: bool,
    /// Preferred line width.
    #[arg(long, value_name = "N", default_value_t = 80)]
    line_width: usize,
}

/// Formats (or checks) the directory; 1 when a file does not format, or
/// with `--check` when one would change.
pub(super) fn run(args: FmtArgs) -> Exit {
    let dir = &args.policies;
    let report = match policy_format::format_dir(dir, args.check, args.line_width) {
        Ok(report) => report,
        Err(e) => {
            problems::print(&problems::of_load_error(dir, &e), Severity::Error);
            return Exit::Failure;
        }
    };
    let path = |rel: &str| dir.join(rel).display().to_string();
    for (i, rel) in report.changed.iter().enumerate() {
        if args.check {
            println!("would reformat: {}", path(rel));
            if let Some(diff) = report.diffs.get(i) {
                print!("{diff}");
            }
        } else {
            println!("reformatted: {}", path(rel));
        }
    }
    let failed: Vec<_> = report
        .failed
        .iter()
        .map(|p| problems::located(dir, p))
        .collect();
    problems::print(&failed, Severity::Error);
    let total = report.changed.len() + report.unchanged.len() + report.failed.len();
    println!(
        "{total} file(s): {} {}, {} already formatted, {} failed",
        report.changed.len(),
        if args.check {
            "would change"
        } else {
            "reformatted"
        },
        report.unchanged.len(),
        report.failed.len()
    );
    if !report.failed.is_empty() || (args.check && !report.changed.is_empty()) {
        Exit::Failure
    } else {
        Exit::Success
    }
}
