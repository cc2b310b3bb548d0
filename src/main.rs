//! The `cedar-pdp` binary: everything lives in the library.

// mimalloc, not glibc's malloc: Cedar's evaluation and loading are many
// small allocations, and uncached decisions and start-up both measured
// faster with it (BENCHMARKS.md, "The allocator").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cedar_pdp::cmd::main()
}
