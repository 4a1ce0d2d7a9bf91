//! The `mad-search` binary: parse the command line, run the library, print
//! errors once with their whole chain.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, keeping freed memory: see `mad_search::alloc` (measured there:
/// half a model step went to page faults under glibc's allocator).
#[global_allocator]
static ALLOC: mad_search::alloc::Allocator = mad_search::alloc::Allocator;

fn main() -> ExitCode {
    mad_search::alloc::keep_freed_memory();
    let cli = mad_search::cli::Cli::parse();
    match mad_search::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", mad_search::cli::error_text(&err));
            ExitCode::FAILURE
        }
    }
}
