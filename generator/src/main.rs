//! `fledge`: parse the command line, set up logging, run, print the error chain.

use std::process::ExitCode;

use clap::Parser;
use fledge_generator::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    fledge_generator::process::init_logging("warn");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", fledge_generator::process::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
