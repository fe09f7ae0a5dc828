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

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum OutputFormat {
    Table,
    Json,
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
        /// already there. Not needed with --root or --no-start (image baking): the unit then
        /// waits for the file (ConditionPathExists).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Enable, but do not start or restart, the service.
        #[arg(long)]
        no_start: bool,
    },
    /// Run the agent (what the systemd unit starts): keep the spec cached and report status.
    ///
    /// The first SIGTERM or SIGINT stops new work and lets in-flight work finish; a second one
    /// exits at once.
    Run {
        /// Configuration file.
        #[arg(long, value_name = "FILE", default_value = fledge_agent::config::DEFAULT_PATH)]
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
    /// Show what the agent would do next and why: the next phase of the journal and its plan.
    ///
    /// Reads the journal and the cached spec, and asks the management plane and the local
    /// cluster what is there; changes nothing.
    Plan {
        /// Configuration file.
        #[arg(long, value_name = "FILE", default_value = fledge_agent::config::DEFAULT_PATH)]
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
        #[arg(long, value_name = "DIR", default_value = fledge_agent::components::DEFAULT_DIR)]
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
        #[arg(long, value_name = "FILE", default_value = fledge_agent::config::DEFAULT_PATH)]
        config: PathBuf,
        /// State directory.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/fledge")]
        state_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
            } else {
                install::apply(&target, &actions)?;
                for a in &actions {
                    println!("{a}");
                }
            }
            if target.config_pending() {
                println!(
                    "no configuration at {} yet: the service stays inactive until it exists; deliver it with `fledge-agent install --config FILE` (cloud-init does)",
                    fledge_agent::config::DEFAULT_PATH
                );
            }
            Ok(())
        }
        Cmd::Pivot(args) => pivot(args),
        Cmd::Providers {
            dir,
            images,
            output,
        } => providers(&dir, images, matches!(output, OutputFormat::Json)),
        Cmd::Plan { config, output } => plan(&config, matches!(output, OutputFormat::Json)),
        Cmd::Status {
            config,
            state_dir,
            json,
        } => status(&config, &state_dir, json),
        Cmd::Run { config } => {
            let cfg = fledge_agent::config::AgentConfig::load(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(fledge_agent::run::run(
                cfg,
                fledge_agent::run::RunOptions::default(),
                fledge_agent::run::Shared::default(),
                shutdown_signal(),
            ))?;
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

/// `fledge-agent pivot`'s arguments.
#[derive(clap::Args, Debug)]
struct PivotArgs {
    /// Kubeconfig of the source (management) cluster.
    #[arg(long, value_name = "KUBECONFIG")]
    from: PathBuf,
    /// Kubeconfig of the target (workload) cluster; not needed with --dry-run.
    #[arg(long, value_name = "KUBECONFIG", required_unless_present = "dry_run")]
    to: Option<PathBuf>,
    /// Namespace of the cluster's objects.
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// Name of the Cluster object.
    #[arg(long, value_name = "NAME")]
    cluster: String,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format: of the plan with --dry-run; otherwise of the progress lines (stderr)
    /// and the final summary (stdout).
    #[arg(long, short, value_enum, default_value = "table")]
    output: OutputFormat,
    /// Requests in flight at once within a group.
    #[arg(long, value_name = "N", default_value_t = fledge_agent::pivot::apply::DEFAULT_PARALLELISM as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallelism: u16,
    /// Do not copy status through the status subresource (providers that keep state in
    /// status may then re-provision).
    #[arg(long)]
    no_status: bool,
}

fn pivot(a: PivotArgs) -> anyhow::Result<()> {
    use fledge_agent::pivot::{apply, count, discover, plan};
    use std::sync::Arc;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let counts = Arc::new(count::Counts::default());
        let (source, source_url) = count::counted_client(Some(&a.from), counts.clone()).await?;
        let check = async |client: &kube::Client, server: String| {
            fledge_generator::apply::check_reachable(&fledge_generator::apply::Target {
                client: client.clone(),
                server,
            })
            .await
        };
        check(&source, source_url)
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("source cluster (--from {})", a.from.display())))?;
        if a.dry_run {
            let graph = discover::discover(&source, &a.namespace, &a.cluster).await?;
            let plan = plan::plan(&graph, &a.namespace, &a.cluster);
            match a.output {
                OutputFormat::Table => print!("{plan}"),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
            }
            return Ok(());
        }
        let to = a.to.as_deref().ok_or_else(|| anyhow::anyhow!("--to is required without --dry-run"))?;
        let (target, target_url) = count::counted_client(Some(to), counts.clone()).await?;
        check(&target, target_url)
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("target cluster (--to {})", to.display())))?;
        let json = matches!(a.output, OutputFormat::Json);
        let progress = move |e: &apply::Event| {
            if json {
                eprintln!("{}", serde_json::to_string(e).unwrap_or_default());
            } else {
                eprintln!("{e}");
            }
        };
        let opts = apply::Options {
            parallelism: usize::from(a.parallelism),
            copy_status: !a.no_status,
            ..apply::Options::default()
        };
        let summary = apply::Pivot::new(&source, &target, &a.namespace, &a.cluster, opts, &progress)
            .run()
            .await?;
        let requests = counts.total();
        if json {
            let mut v = serde_json::to_value(&summary)?;
            v["requests"] = requests.into();
            v["wallSeconds"] = summary.wall.as_secs_f64().into();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if summary.already_complete {
            println!(
                "Cluster {}/{} was already pivoted; nothing to do ({requests} requests, {:.1}s)",
                a.namespace,
                a.cluster,
                summary.wall.as_secs_f64()
            );
        } else {
            println!(
                "Pivoted cluster {}/{}: {} objects moved ({} created, {} statuses copied, {} deleted from the source), {requests} requests ({:.1} per object), {:.1}s",
                a.namespace,
                a.cluster,
                summary.moved,
                summary.created,
                summary.statuses,
                summary.deleted,
                requests as f64 / summary.moved.max(1) as f64,
                summary.wall.as_secs_f64()
            );
        }
        Ok(())
    })
}

fn providers(dir: &std::path::Path, images: bool, json: bool) -> anyhow::Result<()> {
    let baked = fledge_agent::components::baked(dir, &Default::default());
    if baked.is_empty() {
        anyhow::bail!(
            "{}: no providers baked (expected <name>/<version>/components.yaml)",
            dir.display()
        );
    }
    if images {
        let all: std::collections::BTreeSet<&String> =
            baked.iter().flat_map(|b| &b.images).collect();
        for i in all {
            println!("{i}");
        }
    } else if json {
        println!("{}", serde_json::to_string_pretty(&baked)?);
    } else {
        println!(
            "{:<28} {:<10} {:<9} {:>7}  IMAGES",
            "PROVIDER", "VERSION", "CONTRACT", "OBJECTS"
        );
        for b in &baked {
            println!(
                "{:<28} {:<10} {:<9} {:>7}  {}",
                b.label,
                b.version,
                b.contract.as_deref().unwrap_or("-"),
                b.objects,
                b.images.join(", ")
            );
            if !b.needs.is_empty() {
                println!("    needs providers.variables: {}", b.needs.join(", "));
            }
            if let Some(p) = &b.problem {
                println!("    unusable: {p}");
            }
        }
    }
    let bad: Vec<String> = baked
        .iter()
        .filter_map(|b| {
            b.problem
                .as_ref()
                .map(|p| format!("{} {}: {p}", b.label, b.version))
        })
        .collect();
    if !bad.is_empty() {
        anyhow::bail!(
            "{} unusable provider version(s):\n  {}",
            bad.len(),
            bad.join("\n  ")
        );
    }
    Ok(())
}

fn plan(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use fledge_agent::journal::Journal;
    use fledge_agent::phases;
    let cfg = fledge_agent::config::AgentConfig::load(config)?;
    let opts = fledge_agent::run::RunOptions::default();
    let state_dir = cfg.state_dir.clone();
    let journal = Journal::load(&state_dir)?;
    let Some(phase) = phases::RUN.into_iter().find(|p| !journal.done(*p)) else {
        println!(
            "every phase this agent runs has succeeded ({}); nothing to do",
            journal.current().map(|p| p.to_string()).unwrap_or_default()
        );
        return Ok(());
    };
    let Some(cached) = fledge_agent::cache::load(&state_dir)? else {
        println!(
            "next phase: {phase}\nwaiting: no spec cached yet (the agent fetches it from {})",
            cfg.management.server
        );
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let spec = phases::checked(&cfg, &cached)?;
        let management = fledge_agent::run::management_client(&cfg, &opts)?;
        let local = phases::local_client(&cfg.local_kubeconfig(), Default::default()).await?;
        let ctx = phases::Context {
            cfg: cfg.clone(),
            root: opts.root.clone(),
            state_dir: state_dir.clone(),
            management,
            local,
            spec,
            generation: cached.generation,
        };
        let plan = phases::plan(&ctx, phase).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            if let Some(e) = journal.entry(phase) {
                println!(
                    "last attempt: {:?} at {}{}",
                    e.outcome,
                    e.time,
                    e.message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
            }
            print!("{plan}");
        }
        Ok(())
    })
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

/// Asks the running agent: `Some(true|false)` from its metrics, `None` when it does not answer.
fn live_reachability(config: &std::path::Path) -> Option<bool> {
    use std::io::{Read, Write};
    let cfg = fledge_agent::config::AgentConfig::load(config).ok()?;
    let addr: std::net::SocketAddr = cfg.metrics_address.parse().ok()?;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let line = body
        .lines()
        .find(|l| l.starts_with("fledge_agent_management_reachable "))?;
    Some(line.ends_with(" 1"))
}

fn status(config: &std::path::Path, state_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let reachable = live_reachability(config);
    let journal = fledge_agent::journal::Journal::load(state_dir)?;
    let cached = fledge_agent::cache::load(state_dir);
    let spec = match &cached {
        Ok(Some(c)) => {
            serde_json::json!({"generation": c.generation, "uid": c.uid, "sha256": c.sha256})
        }
        Ok(None) => serde_json::Value::Null,
        Err(e) => serde_json::json!({"error": e.to_string()}),
    };
    if json {
        let out = serde_json::json!({"phase": journal.current(), "next": journal.next(), "journal": journal.phases, "spec": spec, "managementReachable": reachable});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let show = |p: Option<fledge_agent::journal::Phase>| {
        p.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    };
    println!(
        "phase: {}   next: {}",
        show(journal.current()),
        show(journal.next())
    );
    for e in &journal.phases {
        println!(
            "  {:<20} {:<10} {}  {}",
            e.phase.to_string(),
            format!("{:?}", e.outcome),
            e.time,
            e.message.as_deref().unwrap_or("")
        );
    }
    println!(
        "management: {}",
        match reachable {
            Some(true) => "reachable",
            Some(false) => "unreachable (running from the cached spec)",
            None => "unknown (the agent is not running or not answering on its metrics address)",
        }
    );
    match cached {
        Ok(Some(c)) => println!(
            "spec: generation {} uid {} sha256 {}",
            c.generation, c.uid, c.sha256
        ),
        Ok(None) => println!("spec: none cached"),
        Err(e) => println!("spec: {e}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    fledge_generator::cli::init_logging("info");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", fledge_generator::cli::error_chain(&err));
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
