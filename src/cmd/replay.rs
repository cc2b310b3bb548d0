//! `cedar-pdp replay`: evaluates recorded decisions again, against the
//! revision each names (provenance) or a candidate set (impact analysis);
//! see `docs/audit.md`.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use super::Exit;
use crate::policy_store::LoadOptions;
use crate::replay::{self, Difference, PolicySource, Replayed, Replayer, Tally};

/// Flags of `replay`.
#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    /// The decision log's files (rotated ones too).
    #[arg(long = "log", value_name = "FILE", required = true, num_args = 1..)]
    logs: Vec<PathBuf>,
    /// A candidate policy directory every record is evaluated against.
    /// Without it, each record is evaluated against the revision it names,
    /// rebuilt from `--source`.
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// The policy directory (a git checkout, for past revisions) recorded
    /// revisions are rebuilt from; default: the config's `policies`.
    #[arg(long, value_name = "DIR", conflicts_with = "policies")]
    source: Option<PathBuf>,
    /// Config file whose `[validation]` and `[evaluation]` the server ran with.
    #[arg(long, value_name = "FILE", env = "CEDAR_PDP_CONFIG")]
    config: Option<PathBuf>,
    /// `text` (one line per difference) or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Also write the result as JUnit XML, for CI.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

fn policies_list(p: &[String]) -> String {
    format!("[{}]", p.join(", "))
}

fn print_difference(format: Format, d: &Difference, out: &mut impl std::io::Write) {
    let _ = match format {
        Format::Text => {
            let new = match &d.new.failure {
                Some(f) => format!("refused ({f})"),
                None => d.new.decision.clone(),
            };
            writeln!(
                out,
                "{}: {} -> {}, {} -> {}",
                d.decision_id,
                d.old.decision,
                new,
                policies_list(&d.old.determining_policies),
                policies_list(&d.new.determining_policies)
            )
        }
        Format::Json => writeln!(out, "{}", serde_json::json!({"difference": d})),
    };
}

/// The last line of `--format json`: `{"summary": {...}}`.
#[derive(Debug, serde::Serialize)]
struct JsonSummaryLine<'a> {
    summary: JsonSummary<'a>,
}

/// The JSON summary: the tally's counts in its order, then the rate.
#[derive(Debug, serde::Serialize)]
struct JsonSummary<'a> {
    #[serde(flatten)]
    tally: &'a Tally,
    records_per_second: f64,
}

/// 0 when every replayable decision reproduces, 1 when one differs, 2 when
/// the input is unusable.
pub(super) fn run(args: ReplayArgs) -> Exit {
    let config = match super::checked_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("cedar-pdp: {e}");
            return Exit::Unusable;
        }
    };
    let load = LoadOptions::from_config(&config);
    let source = match &args.policies {
        Some(dir) => match replay::load(dir, &load) {
            Ok(snapshot) => PolicySource::Candidate(Arc::new(snapshot)),
            Err(e) => {
                eprintln!("cedar-pdp: {e}");
                return Exit::Unusable;
            }
        },
        None => PolicySource::Recorded {
            dir: args
                .source
                .clone()
                .unwrap_or_else(|| config.policies.clone()),
            load,
        },
    };
    let mut replayer = Replayer::new(source, config.evaluation.on_forbid_error);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut differences = Vec::new();
    let mut skipped = Vec::new();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for entry in replay::records(&args.logs) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let _ = out.flush();
                eprintln!("cedar-pdp: {e}");
                return Exit::Unusable;
            }
        };
        let replayed = replayer.replay(&entry.record, &entry.file);
        tally.count(&replayed);
        match replayed {
            Replayed::Same => {}
            Replayed::Differs(d) => {
                print_difference(args.format, &d, &mut out);
                if args.junit.is_some() {
                    differences.push(*d);
                }
            }
            Replayed::NotReplayable(reason) => {
                if args.junit.is_some() {
                    let id = entry.record["decision_id"].as_str().unwrap_or_default();
                    skipped.push((id.to_string(), reason));
                }
            }
        }
    }
    let rate = tally.replayed as f64 / started.elapsed().as_secs_f64().max(1e-9);
    // Flips first, then reason-only changes, in both formats.
    let _ = match args.format {
        Format::Text => writeln!(out, "{tally}"),
        // Serialized straight from the structs, which keep their field
        // order (a `serde_json::Value` would sort the keys).
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string(&JsonSummaryLine {
                summary: JsonSummary {
                    tally: &tally,
                    records_per_second: rate.round(),
                },
            })
            .unwrap_or_default()
        ),
    };
    let _ = out.flush();
    eprintln!("replayed at {rate:.0} records/s");
    if tally.replayed == 0 {
        eprintln!("cedar-pdp: no decision records in the files given");
        return Exit::Unusable;
    }
    if let Some(path) = &args.junit {
        let xml = junit(&differences, &skipped, tally.replayed);
        let written = xml
            .map_err(|e| e.to_string())
            .and_then(|xml| std::fs::write(path, xml).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("cedar-pdp: cannot write `{}`: {e}", path.display());
            return Exit::Unusable;
        }
    }
    if tally.differ > 0 {
        Exit::Failure
    } else {
        Exit::Success
    }
}

/// One failing case per difference, one skipped per record that could not
/// be replayed, and one passing case for the rest.
fn junit(
    differences: &[Difference],
    skipped: &[(String, String)],
    replayed: u64,
) -> Result<String, quick_junit::SerializeError> {
    let mut report = quick_junit::Report::new("cedar-pdp replay");
    let mut suite = TestSuite::new("replay");
    for d in differences {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status
            .set_message(format!("{} -> {}", d.old.decision, d.new.decision))
            .set_type("difference")
            .set_description(format!(
                "determining policies {} -> {}\nerrors {:?} -> {:?}{}",
                policies_list(&d.old.determining_policies),
                policies_list(&d.new.determining_policies),
                d.old.errors,
                d.new.errors,
                d.new
                    .failure
                    .as_ref()
                    .map_or(String::new(), |f| format!("\nrefused: {f}"))
            ));
        let mut case = TestCase::new(d.decision_id.as_str(), status);
        case.set_classname("replay");
        suite.add_test_case(case);
    }
    for (id, reason) in skipped {
        let mut status = TestCaseStatus::skipped();
        status.set_message(reason.as_str());
        let mut case = TestCase::new(id.as_str(), status);
        case.set_classname("replay");
        suite.add_test_case(case);
    }
    let same = replayed - differences.len() as u64 - skipped.len() as u64;
    let mut case = TestCase::new(
        format!("{same} decisions reproduce"),
        TestCaseStatus::success(),
    );
    case.set_classname("replay");
    suite.add_test_case(case);
    report.add_test_suite(suite);
    report.to_string()
}
