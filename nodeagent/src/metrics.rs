//! What the agent knows, shared between its tasks, the metrics endpoint and tests: the
//! [`Snapshot`] behind [`Shared`], its Prometheus exposition (encoded from a snapshot at each
//! scrape with `prometheus-client`), and the loopback HTTP server for `/healthz` and `/metrics`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
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

    /// Prometheus text exposition (format 0.0.4).
    pub fn metrics(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(self.snapshot())));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).expect("writing to a String does not fail");
        out
    }
}

/// The metrics of one [`Snapshot`], in a fixed order.
#[derive(Debug)]
struct Exposition(Snapshot);

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let phases = Phase::ALL.map(|p| ([("phase", p.to_string())], gauge(s.phase == Some(p))));
        family(
            &mut e,
            "fledge_agent_phase",
            "The agent's latest completed phase.",
            MetricType::Gauge,
            phases,
        )?;
        one(
            &mut e,
            "fledge_agent_leader",
            "1 while this agent holds the cluster's leader Lease and acts, 0 while it follows.",
            None,
            gauge(s.following == Some(None)),
        )?;
        one(
            &mut e,
            "fledge_agent_spec_generation",
            "Generation of the cached spec.",
            None,
            ConstGauge::new(s.spec_generation.unwrap_or(0)),
        )?;
        one(
            &mut e,
            "fledge_agent_last_sync_timestamp",
            "Last successful sync with the management plane.",
            Some(&Unit::Seconds),
            ConstGauge::new(s.last_sync.unwrap_or(0)),
        )?;
        one(
            &mut e,
            "fledge_agent_management_reachable",
            "1 when the management plane answered the last request.",
            None,
            gauge(s.reachable),
        )?;
        // Counters: the encoder adds `_total` to their names.
        let errors = s
            .errors
            .iter()
            .map(|(k, v)| ([("kind", *k)], ConstCounter::new(*v)));
        family(
            &mut e,
            "fledge_agent_errors",
            "Errors by kind.",
            MetricType::Counter,
            errors,
        )?;
        let failures = s
            .phase_failures
            .iter()
            .map(|(p, v)| ([("phase", p.to_string())], ConstCounter::new(*v)));
        family(
            &mut e,
            "fledge_agent_phase_failures",
            "Failed phase attempts (each is retried with backoff).",
            MetricType::Counter,
            failures,
        )?;
        if let Some((management, local)) = &s.requests {
            family(
                &mut e,
                "fledge_agent_requests",
                "Requests sent, by cluster.",
                MetricType::Counter,
                [("management", management), ("local", local)]
                    .map(|(cluster, c)| ([("cluster", cluster)], ConstCounter::new(c.total()))),
            )?;
        }
        let layers = s
            .state_dir
            .as_deref()
            .map(crate::phases::addons::states)
            .unwrap_or_default();
        if !layers.is_empty() {
            family(
                &mut e,
                "fledge_agent_addon_layer_healthy",
                "1 when every object of the add-on layer is healthy.",
                MetricType::Gauge,
                layers.iter().map(|(name, st)| {
                    let labels = [("layer", name.as_str()), ("state", st.state.as_str())];
                    (labels, gauge(st.state == "Healthy"))
                }),
            )?;
        }
        one(
            &mut e,
            "fledge_agent_watchdog_pings",
            "Watchdog notifications sent to systemd.",
            None,
            ConstCounter::new(s.watchdog_pings),
        )
    }
}

/// A 0/1 gauge.
fn gauge(on: bool) -> ConstGauge {
    ConstGauge::new(i64::from(on))
}

/// A metric without labels.
fn one(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: impl EncodeMetric,
) -> fmt::Result {
    metric.encode(e.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// A metric with one sample per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot with every metric present: a phase, errors, failures, requests, a layer.
    fn busy(state_dir: &std::path::Path) -> Shared {
        let addons = crate::phases::addons::dir(state_dir);
        std::fs::create_dir_all(&addons).unwrap();
        std::fs::write(
            addons.join("status.json"),
            r#"{"hello": {"state": "Healthy", "objects": 2}, "mesh": {"state": "Progressing", "objects": 5}}"#,
        )
        .unwrap();
        let shared = Shared::default();
        shared.update(|s| {
            s.phase = Some(Phase::CoreLayers);
            s.following = Some(None);
            s.spec_generation = Some(7);
            s.last_sync = Some(1_700_000_000);
            s.reachable = true;
            s.errors.insert("unreachable", 3);
            s.phase_failures.insert(Phase::Pivoted, 2);
            s.requests = Some(Default::default());
            s.watchdog_pings = 11;
            s.state_dir = Some(state_dir.to_path_buf());
        });
        shared
    }

    #[test]
    fn the_exposition_has_every_metric_with_its_type_help_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let text = busy(dir.path()).metrics();
        for line in [
            "# HELP fledge_agent_phase The agent's latest completed phase.",
            "# TYPE fledge_agent_phase gauge",
            "fledge_agent_phase{phase=\"Installed\"} 0",
            "fledge_agent_phase{phase=\"CoreLayers\"} 1",
            "# TYPE fledge_agent_leader gauge",
            "fledge_agent_leader 1",
            "# TYPE fledge_agent_spec_generation gauge",
            "fledge_agent_spec_generation 7",
            "# HELP fledge_agent_last_sync_timestamp_seconds Last successful sync with the management plane.",
            "# TYPE fledge_agent_last_sync_timestamp_seconds gauge",
            "fledge_agent_last_sync_timestamp_seconds 1700000000",
            "# TYPE fledge_agent_management_reachable gauge",
            "fledge_agent_management_reachable 1",
            "# HELP fledge_agent_errors_total Errors by kind.",
            "# TYPE fledge_agent_errors_total counter",
            "fledge_agent_errors_total{kind=\"unreachable\"} 3",
            "# TYPE fledge_agent_phase_failures_total counter",
            "fledge_agent_phase_failures_total{phase=\"Pivoted\"} 2",
            "# TYPE fledge_agent_requests_total counter",
            "fledge_agent_requests_total{cluster=\"management\"} 0",
            "fledge_agent_requests_total{cluster=\"local\"} 0",
            "# TYPE fledge_agent_addon_layer_healthy gauge",
            "fledge_agent_addon_layer_healthy{layer=\"hello\",state=\"Healthy\"} 1",
            "fledge_agent_addon_layer_healthy{layer=\"mesh\",state=\"Progressing\"} 0",
            "# HELP fledge_agent_watchdog_pings_total Watchdog notifications sent to systemd.",
            "# TYPE fledge_agent_watchdog_pings_total counter",
            "fledge_agent_watchdog_pings_total 11",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        assert_eq!(
            text.matches("fledge_agent_phase{").count(),
            Phase::ALL.len()
        );
    }

    #[test]
    fn a_fresh_agent_exposes_zeros_and_no_requests_or_layers() {
        let text = Shared::default().metrics();
        assert!(text.contains("\nfledge_agent_leader 0\n"), "{text}");
        assert!(text.contains("\nfledge_agent_management_reachable 0\n"));
        assert!(text.contains("# TYPE fledge_agent_errors_total counter\n"));
        assert!(!text.contains("fledge_agent_errors_total{"));
        assert!(!text.contains("fledge_agent_requests_total"));
        assert!(!text.contains("fledge_agent_addon_layer_healthy"));
    }
}
