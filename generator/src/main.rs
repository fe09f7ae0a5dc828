//! `fledge`: parse the command line, set up logging, run, print the error chain.

use std::process::ExitCode;

use clap::Parser;
use fledge_generator::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEDGE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", fledge_generator::cli::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
