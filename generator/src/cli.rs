//! The `fledge` command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use serde::Deserialize;

use crate::management;
use crate::output::{self, OutputFile};
use crate::render::{Templates, yaml};
use crate::spec::{self, ClusterProfile, FledgeCluster};

/// Render Cluster API objects, cloud-init and seed images for a decentralized cluster.
///
/// fledge turns one FledgeCluster request into what a management cluster needs to launch the
/// first control-plane machine (CP-A); the fledge-agent on CP-A then takes the cluster over.
#[derive(Parser, Debug)]
#[command(
    name = "fledge",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Render the management-plane objects into DIR/management.yaml.
    ///
    /// The output directory is written atomically: on any error nothing is written. An existing
    /// directory is replaced only when fledge wrote it.
    Render(RenderArgs),
    /// Render and server-side apply the management objects to a management cluster.
    ///
    /// Objects are applied in order with field manager "fledge"; each line of output says
    /// whether an object was created, configured or unchanged. Applying twice changes nothing.
    Apply(ApplyArgs),
    /// Check a request and report every problem in it.
    Validate(ValidateArgs),
    /// Print the CustomResourceDefinitions of FledgeCluster and ClusterProfile.
    Crd,
}

/// Arguments of `fledge render`.
#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// The FledgeCluster request (YAML).
    #[arg(value_name = "REQUEST")]
    pub request: PathBuf,
    /// Output directory.
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
    /// Directory of template overrides; any file with an embedded template's name
    /// (for example management/cluster.yaml.j2) replaces it.
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

/// Arguments of `fledge apply`.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// The FledgeCluster request (YAML).
    #[arg(value_name = "REQUEST")]
    pub request: PathBuf,
    /// Kubeconfig of the management cluster; default: $KUBECONFIG, then ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// "server": the server validates and admits every object but persists nothing;
    /// "none": apply for real.
    #[arg(long, value_name = "MODE", default_value = "none", num_args = 0..=1, default_missing_value = "server")]
    pub dry_run: DryRun,
    /// First install fledge's own CRDs (needs cluster-wide rights on the management cluster).
    #[arg(long)]
    pub install_crds: bool,
    /// Take over fields that another field manager owns.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Directory of template overrides (see `fledge render --help`).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

/// `--dry-run` modes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DryRun {
    /// Apply for real.
    None,
    /// Server-side dry run.
    Server,
}

/// Arguments of `fledge validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The FledgeCluster request (YAML).
    #[arg(value_name = "REQUEST")]
    pub request: PathBuf,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Render(args) => render(&args),
        Command::Apply(args) => apply(&args),
        Command::Validate(args) => {
            let checked = spec::load_request(&args.request)?;
            eprintln!(
                "{}: valid FledgeCluster {}/{} ({}, CAPI {})",
                args.request.display(),
                checked.namespace,
                checked.name,
                checked.provider().as_str(),
                checked.capi.as_str()
            );
            Ok(())
        }
        Command::Crd => {
            let text = crd_yaml();
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to stdout")?;
            Ok(())
        }
    }
}

/// The CRDs of fledge's own resources as a multi-document YAML stream.
pub fn crd_yaml() -> String {
    let docs: Vec<serde_json::Value> = [FledgeCluster::crd(), ClusterProfile::crd()]
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .collect();
    yaml::documents(&docs)
}

fn templates(dir: Option<&Path>) -> anyhow::Result<Templates> {
    Ok(match dir {
        Some(d) => Templates::with_overrides(d)?,
        None => Templates::embedded(),
    })
}

/// Renders every artifact of a request into memory, in output order.
pub fn render_files(
    request: &Path,
    template_dir: Option<&Path>,
) -> anyhow::Result<Vec<OutputFile>> {
    let checked = spec::load_request(request)?;
    let templates = templates(template_dir)?;
    let objects = management::objects(&checked, &templates)?;
    Ok(vec![OutputFile::public(
        "management.yaml",
        yaml::documents(&objects),
    )])
}

fn apply(args: &ApplyArgs) -> anyhow::Result<()> {
    let checked = spec::load_request(&args.request)?;
    let templates = templates(args.templates.as_deref())?;
    let mut objects = management::objects(&checked, &templates)?;
    if args.install_crds {
        let crds = serde_yaml::Deserializer::from_str(&crd_yaml())
            .map(serde_json::Value::deserialize)
            .collect::<Result<Vec<_>, _>>()?;
        objects.splice(0..0, crds);
    }
    let opts = crate::apply::ApplyOptions {
        dry_run: args.dry_run == DryRun::Server,
        force_conflicts: args.force_conflicts,
    };
    let suffix = if opts.dry_run {
        " (server dry run)"
    } else {
        ""
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let target = crate::apply::client_from_kubeconfig(args.kubeconfig.as_deref()).await?;
        let results =
            crate::apply::apply(&target, &objects, &opts, |a| println!("{a}{suffix}")).await?;
        let changed = results
            .iter()
            .filter(|a| a.outcome != crate::apply::Outcome::Unchanged)
            .count();
        eprintln!(
            "{} objects applied to {}, {changed} changed{suffix}",
            results.len(),
            target.server
        );
        Ok::<_, anyhow::Error>(())
    })
}

fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let files = render_files(&args.request, args.templates.as_deref())?;
    output::write_dir(&args.out, &files)?;
    for f in &files {
        eprintln!("wrote {}", args.out.join(&f.path).display());
    }
    Ok(())
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
