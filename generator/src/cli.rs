//! The `fledge` command line: its clap definition (the doc comments are the help text) and
//! [`run`], which hands each subcommand to [`crate::commands`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::seed::SeedFormat;

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
    /// Render DIR/management.yaml, CP-A's cloud-init seed content in DIR/cp-a/, and
    /// DIR/workload.yaml: what the agent creates after the pivot.
    ///
    /// The output directory is written atomically: on any error nothing is written. An existing
    /// directory is replaced only when fledge wrote it.
    Render(RenderArgs),
    /// Render and server-side apply the management objects to a management cluster.
    ///
    /// Objects are applied in order with field manager "fledge"; each line of output says
    /// whether an object was created, configured or unchanged. Applying twice changes nothing.
    Apply(ApplyArgs),
    /// Delete a cluster: its FledgeCluster, which makes the agent move the cluster's Cluster API
    /// objects back to the management cluster and delete the Cluster there.
    ///
    /// The agent gives up its move rights on the management cluster once the pivot is done;
    /// this binds them again (their Role and RoleBinding, labelled fledge.dev/rights=move and
    /// owned by the FledgeCluster) after the deletion is requested. Cluster API then
    /// deprovisions the machines, and the agent releases the FledgeCluster. Running it again
    /// re-binds the rights of an unpivot that waits for them. With kubectl: `kubectl delete
    /// fledgecluster NAME --wait=false`, then `kubectl apply -f management.yaml -l
    /// fledge.dev/rights=move`.
    Delete(DeleteArgs),
    /// Check a request and report every problem in it.
    Validate(ValidateArgs),
    /// Print the CustomResourceDefinitions of FledgeCluster and ClusterProfile.
    Crd,
    /// Build a cloud-init seed image from a directory holding user-data and meta-data
    /// (and optionally network-config, vendor-data): a drop-in for cloud-localds.
    Seed(SeedArgs),
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
    /// Largest user-data the target platform accepts, in bytes. Default: 16384 (EC2's raw
    /// limit) for aws, 65536 elsewhere. Over it, large files are gzip+base64 encoded; if it
    /// still does not fit, rendering fails.
    #[arg(long, value_name = "BYTES")]
    pub max_user_data: Option<usize>,
    /// File holding the agent's management service-account token, embedded into CP-A's
    /// user-data (which is then written with mode 0600): a bound token, for example from
    /// `kubectl -n NS create token CLUSTER-fledge-agent --duration=168h`, which the agent renews
    /// before it expires. Without it the token is expected from CABPK (the
    /// KubeadmControlPlane's contentFrom) or placed on the node by other means.
    #[arg(long, value_name = "FILE")]
    pub management_token: Option<PathBuf>,
    /// File holding the management API server's CA bundle (PEM), embedded like the token.
    #[arg(long, value_name = "FILE")]
    pub management_ca: Option<PathBuf>,
    /// Also write a seed image: DIR/cp-a/seed.iso (nocloud-iso, config-drive) or
    /// DIR/cp-a/seed.img (nocloud-vfat).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub seed: Option<SeedFormat>,
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
    /// As kubectl: "none" applies for real; "server" has the server validate and admit every
    /// object but persist nothing; "client" only prints what would be applied. Written with
    /// `=` (`--dry-run=server`); a bare `--dry-run` means server.
    #[arg(long, value_name = "MODE", default_value = "none", num_args = 0..=1,
          require_equals = true, default_missing_value = "server")]
    pub dry_run: DryRun,
    /// Apply the Cluster API objects even though the cluster was pivoted into its workload
    /// cluster. Without it, a pivoted cluster gets only its FledgeCluster (the day-2 path), so
    /// that Cluster API on the management plane never launches a second first machine.
    #[arg(long)]
    pub force_management_objects: bool,
    /// Apply although the namespace already holds another cluster. Each cluster's agent may
    /// read and change everything its Role grants in its namespace, so by default fledge
    /// refuses to put two clusters in one.
    #[arg(long)]
    pub allow_shared_namespace: bool,
    /// First install fledge's own CRDs (needs cluster-wide rights on the management cluster).
    #[arg(long)]
    pub install_crds: bool,
    /// Take over fields that another field manager owns.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Directory of template overrides (see `fledge render --help`).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// After applying, wait until CP-A's fledge-agent reports on the FledgeCluster's status, at
    /// most DURATION (`90s`, `30m`, `1h`; a bare `--wait` is 30m). Fails when CP-A's node is up
    /// for `--agent-grace` and no agent has reported: an image without fledge-agent would
    /// otherwise leave a one-node cluster that nothing takes over, without a word.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true,
          default_missing_value = "30m", value_parser = humantime::parse_duration)]
    pub wait: Option<std::time::Duration>,
    /// Lifetime of the agent's first management token: a bound, expiring token (TokenRequest)
    /// for its ServiceAccount, kept in the Secret `<cluster>-fledge-agent-token`, which CP-A
    /// reads when it boots. CP-A must boot within it; the agent renews the token after 80% of
    /// its lifetime or a day. At least 10m. Applying again keeps a token not yet due for renewal.
    #[arg(long, value_name = "DURATION", default_value = "168h",
          value_parser = token_duration)]
    pub token_duration: std::time::Duration,
    /// With `--wait`: how long CP-A's node may be up without an agent report.
    #[arg(long, value_name = "DURATION", default_value = "5m", requires = "wait",
          value_parser = humantime::parse_duration)]
    pub agent_grace: std::time::Duration,
}

/// Arguments of `fledge delete`.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// The FledgeCluster request (YAML) that was applied: it names the cluster and its
    /// namespace, and renders the agent's move rights.
    #[arg(value_name = "REQUEST")]
    pub request: PathBuf,
    /// Kubeconfig of the management cluster; default: $KUBECONFIG, then ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Wait until the FledgeCluster is gone (the agent moved the objects back and released
    /// it), at most DURATION (`90s`, `30m`, `1h`; a bare `--wait` is 30m), printing the agent's
    /// progress. Without it, return once the deletion is requested and the rights are bound.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true,
          default_missing_value = "30m", value_parser = humantime::parse_duration)]
    pub wait: Option<std::time::Duration>,
    /// Succeed when the FledgeCluster does not exist (as kubectl's --ignore-not-found).
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Directory of template overrides (see `fledge render --help`), as given to `fledge apply`.
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

fn token_duration(
    s: &str,
) -> Result<std::time::Duration, Box<dyn std::error::Error + Send + Sync>> {
    let d = humantime::parse_duration(s)?;
    if d < crate::token::MIN_DURATION {
        return Err("must be at least 10m (the API server's shortest token lifetime)".into());
    }
    Ok(d)
}

/// `--dry-run` modes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DryRun {
    /// Apply for real.
    None,
    /// Print what would be applied; contact no server.
    Client,
    /// Server-side dry run.
    Server,
}

/// Arguments of `fledge seed`.
#[derive(clap::Args, Debug)]
pub struct SeedArgs {
    /// Directory with user-data and meta-data (network-config and vendor-data are optional).
    #[arg(value_name = "SRC_DIR")]
    pub src: PathBuf,
    /// Image file to write (replaced atomically).
    #[arg(short, long, value_name = "IMAGE")]
    pub output: PathBuf,
    /// Image format.
    #[arg(short, long, value_enum, default_value = "nocloud-iso")]
    pub format: SeedFormat,
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
        Command::Render(args) => commands::render(&args),
        Command::Apply(args) => commands::apply(&args),
        Command::Delete(args) => commands::delete(&args),
        Command::Validate(args) => commands::validate(&args),
        Command::Seed(args) => commands::seed(&args),
        Command::Crd => commands::crd(),
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

    fn apply_args(args: &[&str]) -> ApplyArgs {
        let cli = Cli::try_parse_from(["fledge", "apply"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Apply(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dry_run_takes_its_mode_only_after_an_equals_sign_like_kubectl() {
        // A bare --dry-run before the request does not swallow the request as its mode.
        let a = apply_args(&["--dry-run", "cluster.yaml"]);
        assert_eq!(a.request, PathBuf::from("cluster.yaml"));
        assert_eq!(a.dry_run, DryRun::Server);
        for (flag, mode) in [
            ("--dry-run=server", DryRun::Server),
            ("--dry-run=client", DryRun::Client),
            ("--dry-run=none", DryRun::None),
        ] {
            assert_eq!(apply_args(&[flag, "c.yaml"]).dry_run, mode);
        }
        assert_eq!(apply_args(&["c.yaml"]).dry_run, DryRun::None);
        assert!(Cli::try_parse_from(["fledge", "apply", "--dry-run=bogus", "c.yaml"]).is_err());
    }
}
