//! The `cedar-pdp` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    cedar_pdp::cmd::main()
}
