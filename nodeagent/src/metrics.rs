//! What the agent knows, shared between its tasks, the metrics endpoint and tests: the
//! [`Snapshot`] behind [`Shared`], its Prometheus exposition, and the loopback HTTP server for
//! `/healthz` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::journal::Phase;
use crate::pivot::count::Counts;

/// What the agent knows, shared with the metrics endpoint and tests.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Latest succeeded phase.
    pub phase: Option<Phase>,
    /// Generation of the cached spec.
    pub spec_generation: Option<i64>,
    /// Unix time of the last successful sync with the management plane.
    pub last_sync: Option<i64>,
    /// Whether the last request to the management plane succeeded.
    pub reachable: bool,
    /// Errors by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Watchdog notifications sent.
    pub watchdog_pings: u64,
    /// A status update waits for the management plane.
    pub status_pending: bool,
    /// Status updates delivered.
    pub status_sent: u64,
    /// When the spec-sync task last showed it is alive (it beats every few seconds, also while
    /// it waits on a watch or a back-off).
    pub sync_beat: Option<std::time::Instant>,
    /// Phase attempts that failed, by phase.
    pub phase_failures: BTreeMap<Phase, u64>,
    /// Requests sent to the management plane and to the local cluster.
    pub requests: Option<(Arc<Counts>, Arc<Counts>)>,
    /// The state directory (the add-on layers' states are read from it).
    pub state_dir: Option<std::path::PathBuf>,
    /// Tasks of the agent that ended (returned or panicked); `/healthz` fails while any has.
    pub tasks_ended: Vec<&'static str>,
    /// Leader election: None before the first round, Some(None) while this agent leads,
    /// Some(Some(holder)) while it follows `holder`.
    pub following: Option<Option<String>>,
}

impl crate::phases::Report for Shared {
    fn failed(&self, phase: Phase) {
        self.update(|s| *s.phase_failures.entry(phase).or_default() += 1);
    }
}

/// Shared state.
#[derive(Debug, Default, Clone)]
pub struct Shared(Arc<Mutex<Snapshot>>);

impl Shared {
    /// A copy of the current state.
    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
    pub(crate) fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        if let Ok(mut s) = self.0.lock() {
            f(&mut s);
        }
    }
    pub(crate) fn error(&self, kind: &'static str) {
        self.update(|s| *s.errors.entry(kind).or_default() += 1);
    }

    /// `/healthz`: ok while every task of the agent runs.
    pub fn healthz(&self) -> (&'static str, String) {
        let ended = self.snapshot().tasks_ended;
        if ended.is_empty() {
            let role = match self.snapshot().following {
                Some(Some(holder)) => format!("ok: follower of {holder}\n"),
                Some(None) => "ok: leader\n".to_string(),
                None => "ok\n".to_string(),
            };
            ("200 OK", role)
        } else {
            (
                "503 Service Unavailable",
                format!("task ended: {}\n", ended.join(", ")),
            )
        }
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let s = self.snapshot();
        let mut out = String::new();
        out.push_str("# HELP fledge_agent_phase The agent's latest completed phase.\n# TYPE fledge_agent_phase gauge\n");
        for p in Phase::ALL {
            out.push_str(&format!(
                "fledge_agent_phase{{phase=\"{p}\"}} {}\n",
                u8::from(s.phase == Some(p))
            ));
        }
        out.push_str("# HELP fledge_agent_leader 1 while this agent holds the cluster's leader Lease and acts, 0 while it follows.\n# TYPE fledge_agent_leader gauge\n");
        out.push_str(&format!(
            "fledge_agent_leader {}\n",
            u8::from(s.following == Some(None))
        ));
        out.push_str("# HELP fledge_agent_spec_generation Generation of the cached spec.\n# TYPE fledge_agent_spec_generation gauge\n");
        out.push_str(&format!(
            "fledge_agent_spec_generation {}\n",
            s.spec_generation.unwrap_or(0)
        ));
        out.push_str("# HELP fledge_agent_last_sync_timestamp_seconds Last successful sync with the management plane.\n# TYPE fledge_agent_last_sync_timestamp_seconds gauge\n");
        out.push_str(&format!(
            "fledge_agent_last_sync_timestamp_seconds {}\n",
            s.last_sync.unwrap_or(0)
        ));
        out.push_str("# HELP fledge_agent_management_reachable 1 when the management plane answered the last request.\n# TYPE fledge_agent_management_reachable gauge\n");
        out.push_str(&format!(
            "fledge_agent_management_reachable {}\n",
            u8::from(s.reachable)
        ));
        out.push_str("# HELP fledge_agent_errors_total Errors by kind.\n# TYPE fledge_agent_errors_total counter\n");
        for (k, v) in &s.errors {
            out.push_str(&format!("fledge_agent_errors_total{{kind=\"{k}\"}} {v}\n"));
        }
        out.push_str("# HELP fledge_agent_phase_failures_total Failed phase attempts (each is retried with backoff).\n# TYPE fledge_agent_phase_failures_total counter\n");
        for (p, v) in &s.phase_failures {
            out.push_str(&format!(
                "fledge_agent_phase_failures_total{{phase=\"{p}\"}} {v}\n"
            ));
        }
        if let Some((m, l)) = &s.requests {
            out.push_str("# HELP fledge_agent_requests_total Requests sent, by cluster.\n# TYPE fledge_agent_requests_total counter\n");
            out.push_str(&format!(
                "fledge_agent_requests_total{{cluster=\"management\"}} {}\nfledge_agent_requests_total{{cluster=\"local\"}} {}\n",
                m.total(),
                l.total()
            ));
        }
        if let Some(dir) = &s.state_dir {
            let layers = crate::phases::addons::states(dir);
            if !layers.is_empty() {
                out.push_str("# HELP fledge_agent_addon_layer_healthy 1 when every object of the add-on layer is healthy.\n# TYPE fledge_agent_addon_layer_healthy gauge\n");
                for (name, st) in &layers {
                    out.push_str(&format!(
                        "fledge_agent_addon_layer_healthy{{layer=\"{name}\",state=\"{}\"}} {}\n",
                        st.state,
                        u8::from(st.state == "Healthy")
                    ));
                }
            }
        }
        out.push_str("# HELP fledge_agent_watchdog_pings_total Watchdog notifications sent to systemd.\n# TYPE fledge_agent_watchdog_pings_total counter\n");
        out.push_str(&format!(
            "fledge_agent_watchdog_pings_total {}\n",
            s.watchdog_pings
        ));
        out
    }
}

pub(crate) async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.changed() => return,
        };
        let Ok((mut sock, _)) = conn else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = match path {
                "/healthz" => shared.healthz(),
                "/metrics" => ("200 OK", shared.metrics()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
