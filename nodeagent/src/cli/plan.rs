//! `fledge-agent plan` and `fledge-agent providers`.

pub(super) fn providers(dir: &std::path::Path, images: bool, json: bool) -> anyhow::Result<()> {
    let baked = crate::clusterctl::components::baked(dir, &Default::default());
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

pub(super) fn plan(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use crate::phases;
    use crate::state::journal::Journal;
    let cfg = crate::config::AgentConfig::load(config)?;
    let opts = crate::daemon::run::RunOptions::default();
    let state_dir = cfg.state_dir.clone();
    let journal = Journal::load(&state_dir)?;
    let phase = phases::next(
        &journal,
        crate::state::deletion::deletion_requested(&state_dir),
    );
    let Some(cached) = crate::state::cache::load(&state_dir)? else {
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
        let management = crate::daemon::run::management_client(&cfg, &opts)?;
        let local =
            crate::clients::local_client(&cfg.local_kubeconfig(), Default::default()).await?;
        let ctx = phases::Context {
            cfg: cfg.clone(),
            root: opts.root.clone(),
            state_dir: state_dir.clone(),
            management,
            local,
            spec,
            generation: cached.generation,
            layer_clock: Default::default(),
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
