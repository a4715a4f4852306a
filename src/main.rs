//! The `hookrelay` binary: parse arguments, hand over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's allocator: the dispatcher allocates and frees many small buffers per send on
/// several threads, and glibc's malloc with its page faults took about a fifth of the dispatcher's CPU
/// (BENCHMARKS.md, "Where the dispatcher's time goes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
