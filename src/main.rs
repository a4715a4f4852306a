//! The `hookrelay` binary: parse arguments, hand over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// jemalloc returns freed memory to the system within seconds; glibc's per-thread arenas kept the
/// dispatcher's resident memory at its high-water mark (see BENCHMARKS.md, memory at 10,000 in flight).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = hookrelay::cli::Cli::parse();
    match hookrelay::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookrelay: {e:#}");
            ExitCode::from(2)
        }
    }
}
