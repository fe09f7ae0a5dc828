//! `fledge-agent status`.

/// Asks the running agent: `Some(true|false)` from its metrics, `None` when it does not answer.
fn live_reachability(config: &std::path::Path) -> Option<bool> {
    use std::io::{Read, Write};
    let cfg = crate::config::AgentConfig::load(config).ok()?;
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

pub(super) fn status(
    config: &std::path::Path,
    state_dir: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    let reachable = live_reachability(config);
    let journal = crate::state::journal::Journal::load(state_dir)?;
    let cached = crate::state::cache::load(state_dir);
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
    let show = |p: Option<crate::state::journal::Phase>| {
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
