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

pub(super) fn pivot(a: PivotArgs) -> anyhow::Result<()> {
    use crate::pivot::{apply, count, discover, plan};
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
