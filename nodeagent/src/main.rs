//! `fledge-agent` entry point (skeleton).

use clap::Parser;

/// The fledge node agent (not yet implemented beyond --help and --version).
#[derive(Parser, Debug)]
#[command(name = "fledge-agent", version = fledge_agent::VERSION)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "fledge-agent {}: no subcommands are implemented yet",
        fledge_agent::VERSION
    );
    std::process::exit(2);
}
