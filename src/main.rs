//! The `mad-search` binary: parse the command line, run the library, print
//! errors once with their whole chain.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = mad_search::cli::Cli::parse();
    match mad_search::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
