//! `fledge-agent pivot`.

use std::path::PathBuf;

use super::OutputFormat;

/// `fledge-agent pivot`'s arguments.
#[derive(clap::Args, Debug)]
pub struct PivotArgs {
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
    #[arg(long, value_name = "N", default_value_t = crate::pivot::apply::DEFAULT_PARALLELISM as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallelism: u16,
    /// Do not copy status through the status subresource (providers that keep state in
    /// status may then re-provision).
    #[arg(long)]
    no_status: bool,
}

/// One move, from either subcommand.
struct Move {
    from: PathBuf,
    to: Option<PathBuf>,
    namespace: String,
    cluster: String,
    dry_run: bool,
    output: OutputFormat,
    opts: crate::pivot::apply::Options,
    /// The agent's state directory, to journal an unpivot in.
    journal: Option<PathBuf>,
}

pub(super) fn pivot(a: PivotArgs) -> anyhow::Result<()> {
    run_move(Move {
        from: a.from,
        to: a.to,
        namespace: a.namespace,
        cluster: a.cluster,
        dry_run: a.dry_run,
        output: a.output,
        opts: crate::pivot::apply::Options {
            parallelism: usize::from(a.parallelism),
            copy_status: !a.no_status,
            ..crate::pivot::apply::Options::default()
        },
        journal: None,
    })
}

/// `fledge-agent unpivot`'s arguments.
#[derive(clap::Args, Debug)]
pub struct UnpivotArgs {
    /// Kubeconfig of the management plane that takes the cluster back (this one, or another
    /// for re-homing). Its identity needs to create, patch and delete the cluster's objects in
    /// the namespace, and to read CRDs and clusterctl's provider inventory.
    #[arg(long, value_name = "KUBECONFIG")]
    to: PathBuf,
    /// Kubeconfig of the local cluster; default: the agent's (localKubeconfig in --config).
    #[arg(long, value_name = "KUBECONFIG")]
    from: Option<PathBuf>,
    /// The agent's configuration: the defaults of --from, --namespace and --cluster, and the
    /// state directory whose journal records the unpivot (so that the running agent stops
    /// managing the cluster). Not needed when all three are given.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Namespace of the cluster's objects; default: the agent's.
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Name of the Cluster object; default: the agent's.
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format: of the plan with --dry-run; otherwise of the progress lines (stderr)
    /// and the final summary (stdout).
    #[arg(long, short, value_enum, default_value = "table")]
    output: OutputFormat,
    /// Requests in flight at once within a group.
    #[arg(long, value_name = "N", default_value_t = crate::pivot::apply::DEFAULT_PARALLELISM as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallelism: u16,
}

pub(super) fn unpivot(a: UnpivotArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // The agent's configuration supplies what the command line leaves out.
    let cfg = match crate::config::AgentConfig::load(&a.config) {
        Ok(cfg) => Some(cfg),
        Err(_) if a.from.is_some() && a.namespace.is_some() && a.cluster.is_some() => None,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(
                "the agent's configuration gives the defaults of --from, --namespace and --cluster; pass all three without it",
            ));
        }
    };
    let pick = |given: Option<String>, configured: Option<&str>, flag: &str| {
        given
            .or(configured.map(str::to_string))
            .with_context(|| format!("{flag} is required"))
    };
    let namespace = pick(
        a.namespace,
        cfg.as_ref().map(|c| c.cluster.namespace.as_str()),
        "--namespace",
    )?;
    let cluster = pick(
        a.cluster,
        cfg.as_ref().map(|c| c.cluster.name.as_str()),
        "--cluster",
    )?;
    let from = match (a.from, &cfg) {
        (Some(f), _) => f,
        (None, Some(c)) => c.local_kubeconfig(),
        (None, None) => anyhow::bail!("--from is required"),
    };
    run_move(Move {
        from,
        to: Some(a.to),
        namespace,
        cluster,
        dry_run: a.dry_run,
        output: a.output,
        opts: crate::pivot::apply::Options {
            direction: crate::pivot::apply::Direction::Unpivot,
            parallelism: usize::from(a.parallelism),
            ..crate::pivot::apply::Options::default()
        },
        journal: cfg.map(|c| c.state_dir),
    })
}

fn run_move(a: Move) -> anyhow::Result<()> {
    use crate::pivot::apply::Direction;
    use crate::state::journal::{Journal, Outcome, Phase};
    let noun = a.opts.direction.noun();
    // Only the side the objects leave from needs to be read for a dry run.
    use crate::clients;
    use crate::pivot::{apply, plan};
    use std::sync::Arc;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let counts = Arc::new(clients::Counts::default());
        let (source, source_url) = clients::counted_client(Some(&a.from), counts.clone()).await?;
        let direction = a.opts.direction;
        let from_side = direction.source_side();
        let check = async |client: &kube::Client, server: String| {
            fledge_generator::ssa::check_reachable(&fledge_generator::target::Target {
                client: client.clone(),
                server,
                ca_certs: None,
            })
            .await
        };
        check(&source, source_url)
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("{from_side} (--from {})", a.from.display())))?;
        if a.dry_run {
            // The plan reads only the source: no target is needed.
            let plan = apply::Pivot::plan(&source, &a.namespace, &a.cluster, direction).await?;
            match a.output {
                OutputFormat::Table => print!("{}", plan::Titled(&plan, direction.title())),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
            }
            return Ok(());
        }
        let to = a.to.as_deref().ok_or_else(|| anyhow::anyhow!("--to is required without --dry-run"))?;
        let (target, target_url) = clients::counted_client(Some(to), counts.clone()).await?;
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
        // An unpivot is journaled in the agent's state directory before its first write: the
        // running agent sees it and stops reconciling the cluster. The run lock, held until
        // the outcome is journaled, keeps the agent's attempts and this move apart.
        let mut _run = None;
        let mut journal = match &a.journal {
            Some(dir) if direction == Direction::Unpivot => {
                _run = Some(
                    crate::state::runlock::acquire(dir, |p| {
                        eprintln!("waiting for the agent's current attempt to finish (it holds {})", p.display())
                    })
                    .await
                    .map_err(|e| anyhow::Error::new(e).context(format!("run lock {}", crate::state::runlock::path(dir).display())))?,
                );
                let mut j = Journal::load(dir)?;
                j.record(dir, Phase::Unpivoted, Outcome::Started, None, Some(format!("to {}", to.display())))?;
                Some((dir.clone(), j))
            }
            _ => None,
        };
        let result = apply::Pivot::new(&source, &target, &a.namespace, &a.cluster, a.opts, &progress)
            .run()
            .await;
        if let Some((dir, j)) = journal.as_mut() {
            let (outcome, message) = match &result {
                Ok(s) => (Outcome::Succeeded, format!("to {}: {}", to.display(), s.describe())),
                Err(e) => (Outcome::Failed, crate::state::journal::chain(e)),
            };
            j.record(dir, Phase::Unpivoted, outcome, None, Some(message))?;
        }
        let summary = result?;
        let requests = counts.total();
        if json {
            let mut v = serde_json::to_value(&summary)?;
            v["requests"] = requests.into();
            v["wallSeconds"] = summary.wall.as_secs_f64().into();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if summary.already_complete {
            println!(
                "Cluster {}/{} was already {noun}ed; nothing to do ({requests} requests, {:.1}s)",
                a.namespace,
                a.cluster,
                summary.wall.as_secs_f64()
            );
        } else {
            println!(
                "{} cluster {}/{}: {} objects moved ({} created, {} statuses copied, {} deleted from the source), {requests} requests ({:.1} per object), {:.1}s",
                direction.done(),
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
