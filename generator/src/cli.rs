//! The `fledge` command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use serde::Deserialize;

use crate::output::{self, OutputFile};
use crate::render::{Templates, yaml};
use crate::seed::{self, SeedFormat};
use crate::spec::{self, ClusterProfile, FledgeCluster};
use crate::{cloudinit, management, workload};

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

fn token_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
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
        Command::Render(args) => render(&args),
        Command::Apply(args) => apply(&args),
        Command::Validate(args) => {
            let checked = spec::load_request(&args.request)?;
            warn(&args.request, &checked);
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
        Command::Seed(args) => seed_cmd(&args),
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

/// Options of [`render_files`].
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Template override directory.
    pub templates: Option<PathBuf>,
    /// User-data limit; the provider's default when `None`.
    pub max_user_data: Option<usize>,
    /// Management credentials to embed in CP-A's user-data.
    pub credentials: cloudinit::Credentials,
    /// Seed image to build.
    pub seed: Option<SeedFormat>,
}

/// Renders every artifact of a request into memory, in output order.
pub fn render_files(request: &Path, opts: &RenderOptions) -> anyhow::Result<Vec<OutputFile>> {
    let checked = spec::load_request(request)?;
    warn(request, &checked);
    let templates = templates(opts.templates.as_deref())?;
    let objects = management::objects(&checked, &templates)?;
    let limit = opts
        .max_user_data
        .unwrap_or_else(|| cloudinit::default_limit(checked.provider()));
    let seed = cloudinit::render(&checked, &templates, &opts.credentials, limit)?;
    for path in &seed.compressed {
        tracing::info!(file = %path, "compressed with gzip+base64 to fit the user-data limit");
    }
    let mut files = vec![
        OutputFile::public("management.yaml", yaml::documents(&objects)),
        OutputFile {
            path: "cp-a/user-data".into(),
            contents: seed.user_data.into_bytes(),
            mode: 0o600,
        },
        OutputFile::public("cp-a/meta-data", seed.meta_data),
    ];
    if let Some(format) = opts.seed {
        let content = seed::SeedContent {
            user_data: files[1].contents.clone(),
            meta_data: files[2].contents.clone(),
            network_config: seed.network_config.as_ref().map(|n| n.clone().into_bytes()),
            vendor_data: None,
        };
        let image = seed::build(format, &content)?;
        files.push(OutputFile {
            path: PathBuf::from("cp-a").join(format.file_name()),
            contents: image,
            mode: 0o600,
        });
    }
    if let Some(net) = seed.network_config {
        files.push(OutputFile::public("cp-a/network-config", net));
    }
    let workload = workload::objects(&checked, &templates)?;
    files.push(OutputFile::public(
        "workload.yaml",
        yaml::documents(&workload),
    ));
    Ok(files)
}

/// Prints what the request lacks that a real node needs, when it is not an error (on stderr).
fn warn(request: &Path, checked: &spec::CheckedCluster) {
    for w in spec::warnings(checked) {
        eprintln!("warning: {}: {w}", request.display());
    }
}

fn apply(args: &ApplyArgs) -> anyhow::Result<()> {
    if args.wait.is_some() && args.dry_run != DryRun::None {
        anyhow::bail!(
            "--wait waits for an agent on a cluster that was applied; it cannot be combined with --dry-run"
        );
    }
    let checked = spec::load_request(&args.request)?;
    warn(&args.request, &checked);
    let templates = templates(args.templates.as_deref())?;
    let mut objects = management::objects(&checked, &templates)?;
    if args.install_crds {
        let crds = serde_yaml::Deserializer::from_str(&crd_yaml())
            .map(serde_json::Value::deserialize)
            .collect::<Result<Vec<_>, _>>()?;
        objects.splice(0..0, crds);
    }
    if args.dry_run == DryRun::Client {
        for o in &objects {
            let api_version = o["apiVersion"].as_str().unwrap_or_default();
            let group = api_version.split_once('/').map_or("", |(g, _)| g);
            let kind = o["kind"].as_str().unwrap_or_default();
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            println!("{} (dry run)", crate::apply::label(kind, group, name));
        }
        return Ok(());
    }
    let opts = crate::apply::ApplyOptions {
        dry_run: args.dry_run == DryRun::Server,
        force_conflicts: args.force_conflicts,
        field_manager: None,
        token_duration: Some(args.token_duration),
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
        crate::apply::check_reachable(&target).await?;
        if !args.allow_shared_namespace {
            let others = crate::apply::other_clusters(&target, &checked).await?;
            if !others.is_empty() {
                return Err(crate::apply::ApplyError::SharedNamespace {
                    namespace: checked.namespace.to_string(),
                    others: others.join(", "),
                }
                .into());
            }
        }
        if !args.force_management_objects
            && let Some(why) = crate::apply::pivoted(&target, &checked).await?
        {
            eprintln!(
                "cluster {}/{} was pivoted into its workload cluster ({why}): applying only its FledgeCluster, whose new generation the agent picks up; --force-management-objects applies the Cluster API objects too",
                checked.namespace, checked.name
            );
            objects = crate::apply::after_pivot(objects);
        }
        let results = crate::apply::apply_request(&target, &checked, objects, &opts, |a| {
            println!("{a}{suffix}")
        })
        .await?;
        let changed = results
            .iter()
            .filter(|a| a.outcome != crate::apply::Outcome::Unchanged)
            .count();
        eprintln!(
            "{} objects applied to {}, {changed} changed{suffix}",
            results.len(),
            target.server
        );
        if let Some(timeout) = args.wait {
            let outcome = crate::wait::wait_for_agent(
                &target.client,
                &checked,
                args.agent_grace,
                timeout,
                std::time::Duration::from_secs(5),
                |line| eprintln!("{line}"),
            )
            .await?;
            match outcome {
                Ok(line) => eprintln!("{line}"),
                Err(why) => anyhow::bail!("{}/{}: {why}", checked.namespace, checked.name),
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

fn seed_cmd(args: &SeedArgs) -> anyhow::Result<()> {
    let read = |name: &str| -> anyhow::Result<Option<Vec<u8>>> {
        let p = args.src.join(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", p.display()))),
        }
    };
    let need = |name: &str| -> anyhow::Result<Vec<u8>> {
        read(name)?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no {name} file (a seed needs user-data and meta-data)",
                args.src.display()
            )
        })
    };
    let content = seed::SeedContent {
        user_data: need("user-data")?,
        meta_data: need("meta-data")?,
        network_config: read("network-config")?,
        vendor_data: read("vendor-data")?,
    };
    let image = seed::build(args.format, &content)?;
    // User-data may carry the management token and CA (render --management-token): like
    // user-data itself, the image is readable by its owner only.
    output::write_file(&args.output, &image, 0o600)?;
    eprintln!(
        "wrote {} ({} bytes, {:?})",
        args.output.display(),
        image.len(),
        args.format
    );
    Ok(())
}

fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} file {}", path.display()))?;
    let trimmed = text.trim().to_string();
    anyhow::ensure!(
        !trimmed.is_empty(),
        "{}: {what} file is empty",
        path.display()
    );
    Ok(trimmed)
}

fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let mut credentials = cloudinit::Credentials::default();
    if let Some(p) = &args.management_token {
        let token = read_secret_file(p, "management token")?;
        anyhow::ensure!(
            token.chars().all(|c| c.is_ascii_graphic()),
            "{}: management token must be a single word of printable characters",
            p.display()
        );
        credentials.token = Some(token);
    }
    if let Some(p) = &args.management_ca {
        let ca = read_secret_file(p, "management CA")?;
        anyhow::ensure!(
            ca.starts_with("-----BEGIN CERTIFICATE-----") && !ca.contains("PRIVATE KEY"),
            "{}: management CA must be PEM certificates (-----BEGIN CERTIFICATE-----)",
            p.display()
        );
        credentials.ca_pem = Some(ca + "\n");
    }
    let opts = RenderOptions {
        templates: args.templates.clone(),
        max_user_data: args.max_user_data,
        credentials,
        seed: args.seed,
    };
    let files = render_files(&args.request, &opts)?;
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
