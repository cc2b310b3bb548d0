//! `cedar-pdp log verify`: checks a decision log's hash chain and signed
//! checkpoints; see `docs/audit.md`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Exit;
use crate::decision_log::chain::PublicKey;
use crate::decision_log::verify::{self, VerifyError, VerifyOptions};

/// Flags of `log`.
#[derive(Debug, Args)]
pub(super) struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Check sequence, links, hashes and signatures of decision log files.
    Verify(VerifyArgs),
}

/// Flags of `log verify`.
#[derive(Debug, Args)]
struct VerifyArgs {
    /// The log's files, rotated ones too, in any order (and its `.head` file).
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// Ed25519 public key (SPKI PEM) checkpoints are signed with; repeat
    /// for rotated keys. Without one, signatures are not checked.
    #[arg(long = "public-key", value_name = "FILE")]
    public_keys: Vec<PathBuf>,
    /// Accept records after the last checkpoint (recovery after a crash).
    #[arg(long)]
    allow_unsigned_tail: bool,
    /// The log's oldest files were rotated away (or it was written before
    /// start lines): accept a first file that starts after the genesis.
    #[arg(long)]
    start_rotated: bool,
    /// The instance the log must be (`decision_log.instance_id`, or the id
    /// the server logged at start): another replica's log fails.
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
}

/// 0 when the log is intact, 1 when it is not, 64 when it cannot be read.
pub(super) fn run(args: LogArgs) -> Exit {
    match args.command {
        LogCommand::Verify(args) => run_verify(args),
    }
}

fn run_verify(args: VerifyArgs) -> Exit {
    let mut keys = Vec::new();
    for path in &args.public_keys {
        match PublicKey::from_pem_file(path) {
            Ok(key) => keys.push(key),
            Err(e) => {
                eprintln!("cedar-pdp: --public-key: {e}");
                return Exit::Usage;
            }
        }
    }
    let options = VerifyOptions {
        keys,
        allow_unsigned_tail: args.allow_unsigned_tail,
        start_rotated: args.start_rotated,
        instance: args.instance,
    };
    match verify::verify(&args.files, &options) {
        Ok(v) => {
            println!(
                "verified {} records, {} checkpoints{}",
                v.records,
                v.checkpoints,
                v.instance
                    .as_ref()
                    .map_or(String::new(), |i| format!(", instance {i}"))
            );
            for (first, last) in &v.gaps {
                eprintln!(
                    "note: seqs {first} to {last} were never written: the writer recorded the gap (a failed write; counted in cedar_pdp_decision_log_dropped_total)"
                );
            }
            if options.keys.is_empty() && v.checkpoints > 0 {
                eprintln!("note: checkpoint signatures were not checked (no --public-key)");
            }
            if v.first_seq > 1 {
                eprintln!(
                    "note: the chain starts at seq {}: earlier records are in files not given, or rotated away",
                    v.first_seq
                );
            }
            if v.unsigned_tail > 0 || v.cut.is_some() {
                eprintln!(
                    "note: {} records after the last checkpoint are not signed{}",
                    v.unsigned_tail,
                    v.cut.map_or(String::new(), |l| format!(
                        "; the cut-off last line {l} was ignored"
                    ))
                );
            }
            Exit::Success
        }
        Err(e @ VerifyError::Io { .. }) => {
            eprintln!("cedar-pdp: {e}");
            Exit::Usage
        }
        Err(e) => {
            println!("FAILED: {e}");
            Exit::Failure
        }
    }
}
