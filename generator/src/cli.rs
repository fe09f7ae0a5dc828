//! The `fledge` command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

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
