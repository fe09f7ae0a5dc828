//! What the agent knows, shared between its tasks, the metrics endpoint and tests: the
//! [`Snapshot`] behind [`Shared`], its Prometheus exposition (encoded from a snapshot at each
//! scrape with `prometheus-client`), and the loopback HTTP server for `/healthz` and `/metrics`
//! (`hyper`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Response, StatusCode, header};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clients::Counts;
use crate::state::journal::{Phase, chain};

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

impl crate::phases::runner::Report for Shared {
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
    pub fn healthz(&self) -> (StatusCode, String) {
        let s = self.snapshot();
        if !s.tasks_ended.is_empty() {
            let ended = s.tasks_ended.join(", ");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("task ended: {ended}\n"),
            );
        }
        let role = match s.following {
            Some(Some(holder)) => format!("ok: follower of {holder}\n"),
            Some(None) => "ok: leader\n".to_string(),
            None => "ok\n".to_string(),
        };
        (StatusCode::OK, role)
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

/// How long a client may take to send its request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the connections in flight may take to finish once the server stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The answer to a request for `path`.
fn respond(shared: &Shared, path: &str) -> Response<String> {
    let (status, content_type, body) = match path {
        "/healthz" => {
            let (status, body) = shared.healthz();
            (status, "text/plain; charset=utf-8", body)
        }
        "/metrics" => (
            StatusCode::OK,
            prometheus_text::CONTENT_TYPE,
            shared.metrics(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves `/healthz` and `/metrics` on `listener`, one task per connection, one request per
/// connection, until `stop` changes; then lets the connections in flight finish for at most
/// [`STOP_GRACE`].
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %chain(&e), "metrics: accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let response = respond(&shared, req.uri().path());
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %chain(&e), "metrics: connection failed");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("metrics: connections still open after the stop grace period");
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

    #[test]
    fn healthz_is_ok_with_the_role_until_a_task_ends() {
        let shared = Shared::default();
        assert_eq!(shared.healthz(), (StatusCode::OK, "ok\n".to_string()));
        shared.update(|s| s.following = Some(Some("cp-b".into())));
        assert_eq!(
            shared.healthz(),
            (StatusCode::OK, "ok: follower of cp-b\n".to_string())
        );
        shared.update(|s| s.following = Some(None));
        assert_eq!(
            shared.healthz(),
            (StatusCode::OK, "ok: leader\n".to_string())
        );
        shared.update(|s| s.tasks_ended = vec!["spec sync", "metrics"]);
        assert_eq!(
            shared.healthz(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "task ended: spec sync, metrics\n".to_string()
            )
        );
    }

    #[test]
    fn requests_are_routed_by_path() {
        let shared = Shared::default();
        assert_eq!(respond(&shared, "/healthz").status(), StatusCode::OK);
        let metrics = respond(&shared, "/metrics");
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            prometheus_text::CONTENT_TYPE
        );
        assert!(metrics.body().contains("fledge_agent_leader 0"));
        assert_eq!(respond(&shared, "/").status(), StatusCode::NOT_FOUND);
        assert_eq!(
            respond(&shared, "/metricsx").status(),
            StatusCode::NOT_FOUND
        );
        shared.update(|s| s.tasks_ended = vec!["metrics"]);
        assert_eq!(
            respond(&shared, "/healthz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    /// One request as the agent's readers send it (HTTP/1.1, no `Connection: close`), read to
    /// the end.
    async fn get(address: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn in_time<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(2), f)
            .await
            .expect("in time")
    }

    #[tokio::test]
    async fn a_silent_client_blocks_no_other_and_the_server_stops_on_the_signal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve_metrics(listener, Shared::default(), stop_rx));
        let _silent = tokio::net::TcpStream::connect(address).await.unwrap();
        let healthz = in_time(get(address, "/healthz")).await;
        assert!(healthz.starts_with("HTTP/1.1 200 OK\r\n"), "{healthz}");
        assert!(healthz.ends_with("\r\n\r\nok\n"), "{healthz}");
        let metrics = in_time(get(address, "/metrics")).await;
        assert!(metrics.contains("\nfledge_agent_leader 0\n"), "{metrics}");
        let other = in_time(get(address, "/other")).await;
        assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
        stop_tx.send(true).unwrap();
        in_time(server).await.unwrap();
    }
}
