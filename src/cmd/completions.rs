//! `cedar-pdp completions SHELL`: the shell completion script clap derives
//! from the command line itself, so it can never fall behind the flags.

use clap::Args;
use clap_complete::Shell;

use super::Exit;

/// Flags of `completions`.
#[derive(Debug, Args)]
pub(super) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Writes the script for `command` to stdout.
pub(super) fn run(args: CompletionsArgs, mut command: clap::Command) -> Exit {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "cedar-pdp", &mut out);
    use std::io::Write as _;
    // A closed pipe (`| head`) is the reader's choice, not a failure.
    match std::io::stdout().write_all(&out) {
        Ok(()) => Exit::Success,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Success,
        Err(e) => {
            eprintln!("cedar-pdp: cannot write the completions: {e}");
            Exit::Failure
        }
    }
}
