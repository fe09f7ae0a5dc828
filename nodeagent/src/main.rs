//! `fledge-agent`: parse the command line, set up logging, run, print the error chain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fledge_agent::install::{self, Target};

/// The fledge node agent: installs itself as a systemd service on a control-plane node.
#[derive(Parser, Debug)]
#[command(name = "fledge-agent", version = fledge_agent::VERSION, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Install this binary, its systemd unit and configuration, and enable (and start) it.
    ///
    /// On a live system (root / with systemd running) it runs systemctl daemon-reload, enable and
    /// start --no-block (safe from inside cloud-init). With --root (image baking) it only writes
    /// files and the enablement link. A second run reports "up to date" and changes nothing; a
    /// different binary is an upgrade, followed by a restart.
    Install {
        /// Filesystem root to install into.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Configuration to install as /etc/fledge/agent.yaml (mode 0600); default: use the one
        /// already there.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Enable, but do not start or restart, the service.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop, disable and remove the agent (keeps its configuration and state unless --purge).
    Uninstall {
        /// Filesystem root.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Also remove /etc/fledge/agent.yaml and /var/lib/fledge.
        #[arg(long)]
        purge: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Install {
            root,
            config,
            no_start,
        } => {
            let binary = std::env::current_exe()?;
            let target = Target::new(&root, binary, config, no_start);
            let actions = install::plan(&target)?;
            if actions.is_empty() {
                println!("fledge-agent {}: up to date", fledge_agent::VERSION);
                return Ok(());
            }
            install::apply(&target, &actions)?;
            for a in &actions {
                println!("{a}");
            }
            Ok(())
        }
        Cmd::Uninstall { root, purge } => {
            for line in install::uninstall(&root, purge)? {
                println!("{line}");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEDGE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut msg = format!("error: {err}");
            for cause in err.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
