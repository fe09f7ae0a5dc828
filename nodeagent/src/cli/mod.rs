//! The `fledge-agent` command line: the clap definitions (the doc comments are the help text)
//! and one function per subcommand. `main.rs` parses, starts logging, calls [`run`] and prints
//! the error chain. The subcommands with more to them have a module each: `pivot` (`pivot`,
//! `unpivot`), `plan` (`plan`, `providers`), `status`.

mod pivot;
pub use pivot::{PivotArgs, UnpivotArgs};
mod plan;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::install::{self, Target};

/// The fledge node agent: a systemd service on a cluster's control-plane nodes; the one that
/// leads installs the Cluster API providers, takes the cluster's objects over from the
/// management plane, scales the cluster out and keeps it running from a local copy of its spec.
#[derive(Parser, Debug)]
#[command(name = "fledge-agent", version = crate::VERSION, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    /// The subcommand.
    pub command: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
/// How to print a result.
pub enum OutputFormat {
    /// A table, for people.
    Table,
    /// JSON, for programs.
    Json,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Install this binary, its systemd unit and configuration, and enable (and start) it.
    ///
    /// On a live system (root / with systemd running) it runs systemctl daemon-reload, enable and
    /// start --no-block (safe from inside cloud-init). With --root (image baking) it only writes
    /// files and the enablement link. A second run reports "up to date" and changes nothing; a
    /// different binary is an upgrade, followed by a restart.
    Install {
        /// Filesystem root to install into. Symbolic links in it are resolved inside it, as after
        /// chroot (an image's /usr/local/bin -> /tmp/x means DIR/tmp/x): nothing is written
        /// outside DIR.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Configuration to install as /etc/fledge/agent.yaml (mode 0600); default: use the one
        /// already there. Not needed with --root or --no-start (image baking): the unit then
        /// waits for the file (ConditionPathExists).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Enable, but do not start or restart, the service.
        #[arg(long)]
        no_start: bool,
    },
    /// Run the agent (what the systemd unit starts): keep the spec cached, run the phases, report
    /// status.
    ///
    /// The phases (CoreLayers, ProvidersInstalled, Pivoted, ScaledOut, AddonsReady, then Steady
    /// for good) run from the journal in the state directory; a restart resumes where the last
    /// run stopped (`fledge-agent plan` shows what comes next). Deleting the FledgeCluster makes
    /// the agent unpivot into the management plane, which deletes the cluster (Unpivoted,
    /// Released). The first SIGTERM or SIGINT stops new work and lets in-flight work finish; a
    /// second one exits at once.
    Run {
        /// Configuration file.
        #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Move a cluster's Cluster API objects from one cluster to another (a safer clusterctl move).
    ///
    /// Pauses the source Cluster, creates the objects in the target group by group (owners
    /// first, ownerReferences rewritten, status copied), verifies them, then deletes them from the
    /// source (finalizers released first, so no provider deletes real infrastructure) and
    /// unpauses the target. Every created object carries its source UID
    /// (pivot.fledge.dev/source-uid), so running the same command again after any interruption
    /// converges: before cutover a failed run rolls back (source unpaused, target clean), after
    /// cutover it only moves forward, and after success it does nothing.
    Pivot(PivotArgs),
    /// Move the cluster's Cluster API objects from the local cluster back to a management plane
    /// (the pivot in reverse): to delete the cluster from there, or to re-home it.
    ///
    /// Run on the node. Before any write it checks that the target serves every type and runs
    /// every provider of the local cluster (clusterctl's inventory) at the same or a newer
    /// version. Then the same engine as `pivot`, with the same guarantees: rollback before
    /// cutover, only forward after, converges when run again. At the end the objects carry no
    /// pivot.fledge.dev annotations, so they read as before the pivot, and the FledgeCluster (if
    /// the target has it) records status.pivot.state Unpivoted. The journal records the unpivot,
    /// and the running agent stops managing the cluster. Deleting the FledgeCluster does the same
    /// automatically, followed by the cluster's deletion.
    Unpivot(UnpivotArgs),
    /// Show what the agent would do next and why: the next phase of the journal and its plan.
    ///
    /// Reads the journal and the cached spec, and asks the management plane and the local
    /// cluster what is there; changes nothing.
    Plan {
        /// Configuration file.
        #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// List the providers baked into a providers directory: versions, contracts, images.
    ///
    /// Checks each as the agent loads it (layout, metadata.yaml, components.yaml, variables)
    /// and exits 1 if one is unusable. `--images` prints only the container images, one per
    /// line, for an image build to pre-pull (see images/bake-providers.sh).
    Providers {
        /// The providers directory.
        #[arg(long, value_name = "DIR", default_value = crate::clusterctl::components::DEFAULT_DIR)]
        dir: PathBuf,
        /// Print only the container images, one per line.
        #[arg(long)]
        images: bool,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Print the journal and the cached spec's generation and hash, for a person on the node.
    Status {
        /// Configuration file (for the metrics address, to ask the running agent).
        #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_PATH)]
        config: PathBuf,
        /// State directory.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/fledge")]
        state_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop, disable and remove the agent (keeps its configuration, secrets and state unless
    /// --purge); prints each path it removed.
    Uninstall {
        /// Filesystem root (symbolic links in it are resolved inside it, as for install).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Also remove /etc/fledge/agent.yaml, the management token and CA files it names
        /// (management.tokenFile, management.caFile) and /var/lib/fledge. Fails, removing
        /// nothing, when the configuration cannot be read to find them.
        #[arg(long)]
        purge: bool,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
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
                println!("fledge-agent {}: up to date", crate::VERSION);
            } else {
                install::apply(&target, &actions)?;
                for a in &actions {
                    println!("{a}");
                }
            }
            if target.config_pending() {
                println!(
                    "no configuration at {} yet: the service stays inactive until it exists; deliver it with `fledge-agent install --config FILE` (cloud-init does)",
                    crate::config::DEFAULT_PATH
                );
            }
            Ok(())
        }
        Cmd::Pivot(args) => pivot::pivot(args),
        Cmd::Unpivot(args) => pivot::unpivot(args),
        Cmd::Providers {
            dir,
            images,
            output,
        } => plan::providers(&dir, images, matches!(output, OutputFormat::Json)),
        Cmd::Plan { config, output } => plan::plan(&config, matches!(output, OutputFormat::Json)),
        Cmd::Status {
            config,
            state_dir,
            json,
        } => status::status(&config, &state_dir, json),
        Cmd::Run { config } => {
            let cfg = crate::config::AgentConfig::load(&config)?;
            // One runtime for every task of the agent. Two workers: a phase busy on the CPU
            // (parsing a provider's components) never delays the Lease renewal or `/metrics`.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let result = runtime.block_on(crate::daemon::run::run(
                cfg,
                crate::daemon::run::RunOptions::default(),
                crate::daemon::metrics::Shared::default(),
                shutdown_signal(),
            ));
            // A task wedged past the shutdown grace period must not keep the process alive:
            // systemd restarts it on the non-zero exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result?;
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

/// Resolves on the first SIGTERM/SIGINT; a second one exits the process at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
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
