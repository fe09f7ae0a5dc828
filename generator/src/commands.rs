//! The bodies of `fledge`'s subcommands, each taking its parsed arguments from [`crate::cli`],
//! which dispatches to them.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::cli::{ApplyArgs, DeleteArgs, DryRun, RenderArgs, SeedArgs, ValidateArgs};
use crate::diagnostics::print_warnings;
use crate::output;
use crate::render::Templates;
use crate::render::pipeline::{RenderOptions, render_files};
use crate::{apply, cloudinit, delete, management, seed, spec, ssa, target, wait};

/// `fledge render`: reads the credential files, renders the request and writes the output
/// directory.
pub fn render(args: &RenderArgs) -> anyhow::Result<()> {
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

/// A credential file's text, trimmed; an empty file is an error.
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

/// `fledge apply`: renders the management objects and applies them (with `--dry-run=client`,
/// prints them), then, with `--wait`, waits for CP-A's agent.
pub fn apply(args: &ApplyArgs) -> anyhow::Result<()> {
    if args.wait.is_some() && args.dry_run != DryRun::None {
        anyhow::bail!(
            "--wait waits for an agent on a cluster that was applied; it cannot be combined with --dry-run"
        );
    }
    let checked = spec::load_request(&args.request)?;
    print_warnings(&args.request, &checked);
    let templates = Templates::load(args.templates.as_deref())?;
    let mut objects = management::objects(&checked, &templates)?;
    if args.install_crds {
        let crds = serde_norway::Deserializer::from_str(&spec::crd_yaml())
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
            println!("{} (dry run)", ssa::label(kind, group, name));
        }
        return Ok(());
    }
    let opts = ssa::ApplyOptions {
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
        let target = target::client_from_kubeconfig(args.kubeconfig.as_deref()).await?;
        ssa::check_reachable(&target).await?;
        if !args.allow_shared_namespace {
            apply::check_namespace_unshared(&target, &checked).await?;
        }
        if !args.force_management_objects
            && let Some(why) = apply::pivoted(&target, &checked).await?
        {
            eprintln!(
                "cluster {}/{} was pivoted into its workload cluster ({why}): applying only its FledgeCluster, whose new generation the agent picks up; --force-management-objects applies the Cluster API objects too",
                checked.namespace, checked.name
            );
            objects = apply::after_pivot(objects);
        }
        let results = apply::apply_request(&target, &checked, objects, &opts, |a| {
            println!("{a}{suffix}")
        })
        .await?;
        let changed = results
            .iter()
            .filter(|a| a.outcome != ssa::Outcome::Unchanged)
            .count();
        eprintln!(
            "{} objects applied to {}, {changed} changed{suffix}",
            results.len(),
            target.server
        );
        if let Some(timeout) = args.wait {
            let outcome = wait::wait_for_agent(
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

/// `fledge delete`: requests the FledgeCluster's deletion and binds the agent's move rights;
/// with `--wait`, waits until it is gone.
pub fn delete(args: &DeleteArgs) -> anyhow::Result<()> {
    use delete::Deleted;
    let checked = spec::load_request(&args.request)?;
    let templates = Templates::load(args.templates.as_deref())?;
    let objects = management::objects(&checked, &templates)?;
    let (ns, name) = (checked.namespace.as_str(), checked.name.as_str());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let target = target::client_from_kubeconfig(args.kubeconfig.as_deref()).await?;
        ssa::check_reachable(&target).await?;
        match delete::delete(&target, &checked, &objects, |line| println!("{line}"))
            .await?
        {
            Deleted::NotFound if args.ignore_not_found => return Ok(()),
            Deleted::NotFound => anyhow::bail!(
                "FledgeCluster {ns}/{name} not found on {} (--ignore-not-found accepts that)",
                target.server
            ),
            Deleted::Gone => {
                eprintln!("FledgeCluster {ns}/{name} is gone: no agent held it (the cluster was not pivoted; its Cluster API objects, if any, are on the management cluster)");
                return Ok(());
            }
            Deleted::Unpivoting => eprintln!(
                "the agent of {ns}/{name} moves the cluster's objects back and deletes the Cluster; the FledgeCluster goes once that is done"
            ),
        }
        if let Some(timeout) = args.wait {
            let gone = delete::wait_gone(
                &target,
                &checked,
                timeout,
                |line| eprintln!("{line}"),
            )
            .await?;
            if !gone {
                anyhow::bail!(
                    "FledgeCluster {ns}/{name} is still there after {}: the agent has not finished the unpivot (its status says why; run fledge delete again if it waits for its move rights)",
                    humantime::format_duration(timeout)
                );
            }
            eprintln!("FledgeCluster {ns}/{name} deleted");
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// `fledge validate`: checks the request; prints its warnings and a summary on stderr.
pub fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let checked = spec::load_request(&args.request)?;
    print_warnings(&args.request, &checked);
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

/// `fledge seed`: a seed image from a directory of cloud-init files.
pub fn seed(args: &SeedArgs) -> anyhow::Result<()> {
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

/// `fledge crd`: fledge's CRDs on stdout.
pub fn crd() -> anyhow::Result<()> {
    let text = spec::crd_yaml();
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("cannot write to stdout")?;
    Ok(())
}
