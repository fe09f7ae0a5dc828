//! `fledge apply --wait`: after the apply, wait until CP-A's fledge-agent reports on the
//! FledgeCluster's status, and turn a missing agent into an error instead of silence.
//!
//! In the KubeadmControlPlane path CP-A runs the agent only from its machine image. An image
//! without it brings CP-A up as a one-node cluster that nothing takes over, and nothing on the
//! management plane says so. Once CP-A's Machine has a node (kubeadm ran, so cloud-init's
//! commands, the agent's install among them, ran too), the agent has `--agent-grace` to report;
//! after that the wait fails and says what to check.
//!
//! It looks (a get and a list) every few seconds rather than watching, unlike `fledge delete
//! --wait`: its verdict turns on time as much as on the objects (how long CP-A's node has been
//! up), and it reads two kinds.

use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, ListParams};
use serde_json::Value;

use crate::spec::{CheckedCluster, FledgeCluster};

/// What one look at the management plane found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// `status.lastSeen` of the FledgeCluster: set once an agent reported.
    pub agent_seen: Option<String>,
    /// `status.phase`.
    pub agent_phase: Option<String>,
    /// CP-A's Machine (the oldest control-plane Machine of the cluster), if it exists.
    pub machine: Option<Machine>,
}

/// CP-A's Machine as the management plane has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Machine {
    /// Its name.
    pub name: String,
    /// `status.phase`.
    pub phase: Option<String>,
    /// `status.nodeRef.name`: set once the node registered.
    pub node: Option<String>,
}

/// Where the wait stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The agent reported; done.
    Reported(String),
    /// Not yet; what is awaited.
    Waiting(String),
    /// CP-A's node is up, and no agent reported within the grace period.
    NoAgent(String),
    /// The whole wait ran out first.
    TimedOut(String),
}

/// Decides from one observation: `node_up_for` is how long CP-A's node has been seen, `elapsed`
/// how long the wait has run. Pure.
pub fn verdict(
    o: &Observed,
    agent_path: &str,
    node_up_for: Option<Duration>,
    elapsed: Duration,
    grace: Duration,
    timeout: Duration,
) -> Verdict {
    if o.agent_seen.is_some() {
        return Verdict::Reported(format!(
            "fledge-agent reported (phase {})",
            o.agent_phase.as_deref().unwrap_or("unknown")
        ));
    }
    let waiting = match &o.machine {
        None => "waiting for CP-A's Machine".to_string(),
        Some(m) => match &m.node {
            None => format!(
                "waiting for CP-A: Machine {} is {}",
                m.name,
                m.phase.as_deref().unwrap_or("without a phase")
            ),
            Some(node) => format!(
                "waiting for fledge-agent on CP-A: Machine {} has node {node}",
                m.name
            ),
        },
    };
    if let (Some(m), Some(up)) = (&o.machine, node_up_for)
        && up >= grace
    {
        return Verdict::NoAgent(format!(
            "CP-A's node {} (Machine {}) has been up for {}, and no fledge-agent has reported on the FledgeCluster: CP-A's image probably has no fledge-agent at {agent_path} (spec.agent.path; bake it in with images/bake-agent.sh), or the agent cannot reach the management plane (on the node: journalctl -u fledge-agent)",
            m.node.as_deref().unwrap_or_default(),
            m.name,
            humantime::format_duration(Duration::from_secs(up.as_secs())),
        ));
    }
    if elapsed >= timeout {
        return Verdict::TimedOut(format!(
            "timed out after {}: {waiting}",
            humantime::format_duration(Duration::from_secs(timeout.as_secs()))
        ));
    }
    Verdict::Waiting(waiting)
}

/// Why the wait could not look.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} on the management plane")]
pub struct WaitError {
    /// What was read.
    pub what: String,
    /// Why.
    #[source]
    pub source: kube::Error,
}

/// Reads the FledgeCluster's status and CP-A's Machine.
pub async fn observe(client: &kube::Client, c: &CheckedCluster) -> Result<Observed, WaitError> {
    let ns = c.namespace.as_str();
    let name = c.name.as_str();
    let fc = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<FledgeCluster>(&()),
    )
    .get(name)
    .await
    .map_err(|source| WaitError {
        what: format!("FledgeCluster {ns}/{name}"),
        source,
    })?;
    let status = &fc.data["status"];
    let text = |v: &Value| v.as_str().map(str::to_string);
    let machines = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        ns,
        &crate::capi::resource(c.capi, "Machine", "machines"),
    )
    .list(&ListParams::default().labels(&format!(
        "cluster.x-k8s.io/cluster-name={name},cluster.x-k8s.io/control-plane"
    )))
    .await
    .map_err(|source| WaitError {
        what: format!("the Machines of cluster {ns}/{name}"),
        source,
    })?;
    let machine = machines
        .items
        .into_iter()
        .min_by(|a, b| {
            let key = |m: &DynamicObject| {
                (
                    m.metadata.creation_timestamp.clone().map(|t| t.0),
                    m.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        })
        .map(|m| Machine {
            name: m.metadata.name.clone().unwrap_or_default(),
            phase: text(&m.data["status"]["phase"]),
            node: text(&m.data["status"]["nodeRef"]["name"]),
        });
    Ok(Observed {
        agent_seen: text(&status["lastSeen"]),
        agent_phase: text(&status["phase"]),
        machine,
    })
}

/// Waits as [`verdict`] decides, looking every `every`; `progress` gets each new waiting line.
/// Ok with the report line, or Err with the NoAgent or TimedOut message.
pub async fn wait_for_agent(
    client: &kube::Client,
    c: &CheckedCluster,
    grace: Duration,
    timeout: Duration,
    every: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Result<String, String>, WaitError> {
    let start = tokio::time::Instant::now();
    let mut node_since: Option<(String, tokio::time::Instant)> = None;
    let mut last = String::new();
    loop {
        let o = observe(client, c).await?;
        let now = tokio::time::Instant::now();
        match o.machine.as_ref().and_then(|m| m.node.clone()) {
            Some(node) if node_since.as_ref().is_none_or(|(n, _)| *n != node) => {
                node_since = Some((node, now));
            }
            Some(_) => {}
            None => node_since = None,
        }
        let up = node_since.as_ref().map(|(_, t)| now - *t);
        match verdict(&o, c.agent_path(), up, now - start, grace, timeout) {
            Verdict::Reported(line) => return Ok(Ok(line)),
            Verdict::NoAgent(why) | Verdict::TimedOut(why) => return Ok(Err(why)),
            Verdict::Waiting(line) => {
                if line != last {
                    progress(&line);
                    last = line;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(300);
    const TIMEOUT: Duration = Duration::from_secs(1800);
    const PATH: &str = "/usr/local/bin/fledge-agent";

    fn machine(node: Option<&str>) -> Option<Machine> {
        Some(Machine {
            name: "demo-control-plane-abcde".into(),
            phase: Some(
                if node.is_some() {
                    "Running"
                } else {
                    "Provisioning"
                }
                .into(),
            ),
            node: node.map(Into::into),
        })
    }

    #[test]
    fn a_report_ends_the_wait_and_a_silent_agent_fails_it_after_the_grace() {
        let secs = Duration::from_secs;
        let reported = Observed {
            agent_seen: Some("2026-12-07T12:00:00Z".into()),
            agent_phase: Some("ProvidersInstalled".into()),
            machine: machine(Some("cp-a")),
        };
        let silent = Observed {
            machine: machine(Some("cp-a")),
            ..Default::default()
        };
        let booting = Observed {
            machine: machine(None),
            ..Default::default()
        };
        let table: [(&Observed, Option<Duration>, Duration, &str); 6] = [
            (&reported, Some(secs(900)), secs(2000), "reported"),
            (
                &Observed::default(),
                None,
                secs(10),
                "waiting for CP-A's Machine",
            ),
            (&booting, None, secs(60), "is Provisioning"),
            (&silent, Some(secs(299)), secs(400), "has node cp-a"),
            (
                &silent,
                Some(secs(300)),
                secs(400),
                "no fledge-agent has reported",
            ),
            (&booting, None, secs(1800), "timed out after 30m"),
        ];
        for (o, up, elapsed, want) in table {
            let got = verdict(o, PATH, up, elapsed, GRACE, TIMEOUT);
            let text = match &got {
                Verdict::Reported(s)
                | Verdict::Waiting(s)
                | Verdict::NoAgent(s)
                | Verdict::TimedOut(s) => s,
            };
            assert!(text.contains(want), "{o:?} {up:?}: {got:?}");
        }
        assert!(matches!(
            verdict(&silent, PATH, Some(secs(301)), secs(400), GRACE, TIMEOUT),
            Verdict::NoAgent(s) if s.contains(PATH) && s.contains("images/bake-agent.sh") && s.contains("5m 1s")
        ));
    }
}
