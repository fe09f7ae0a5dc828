//! The agent's Kubernetes clients. Their requests are counted: a client layer counts the
//! requests a client sends, by kind (reads and writes), so that the pivot can report "requests
//! made" in its summary and `/metrics` the agent's requests per cluster. A counted client is
//! built from a kubeconfig ([`counted_client`]; the local cluster's: [`local_client`]) or, for
//! the management plane, from the agent's token and CA files; [`token`] keeps that token alive.

pub mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Method, Request};

/// Request counts, shared between the layer and whoever reports them.
#[derive(Debug, Default)]
pub struct Counts {
    reads: AtomicU64,
    writes: AtomicU64,
}

impl Counts {
    /// GET/LIST/WATCH requests so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// POST/PUT/PATCH/DELETE requests so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// All requests so far.
    pub fn total(&self) -> u64 {
        self.reads() + self.writes()
    }
}

/// Whether a request changes state on the server.
pub fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The layer: `kube::client::ClientBuilder::with_layer(&CountLayer::new(counts))`.
#[derive(Debug, Clone)]
pub struct CountLayer {
    counts: Arc<Counts>,
}

impl CountLayer {
    /// A layer adding to `counts`.
    pub fn new(counts: Arc<Counts>) -> Self {
        Self { counts }
    }
}

impl<S> tower_layer::Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counts: self.counts.clone(),
        }
    }
}

/// The service [`CountLayer`] wraps around a client's stack.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    counts: Arc<Counts>,
}

impl<S, B> tower_service::Service<Request<B>> for Counted<S>
where
    S: tower_service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let counter = if is_write(req.method()) {
            &self.counts.writes
        } else {
            &self.counts.reads
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// Builds a client from a kubeconfig (or the default locations) whose requests are counted.
pub async fn counted_client(
    path: Option<&std::path::Path>,
    counts: Arc<Counts>,
) -> anyhow::Result<(kube::Client, String)> {
    let config = fledge_generator::target::config_from_kubeconfig(path).await?;
    let server = config.cluster_url.to_string();
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&CountLayer::new(counts))
        .build();
    Ok((client, server))
}

/// The local cluster's kubeconfig is unusable.
#[derive(Debug, thiserror::Error)]
#[error("local cluster kubeconfig {path}: {message}")]
pub struct LocalKubeconfigError {
    /// The file.
    pub path: std::path::PathBuf,
    /// Why.
    pub message: String,
}

/// A client for the local cluster from its kubeconfig, counting its requests.
pub async fn local_client(
    path: &std::path::Path,
    counts: Arc<Counts>,
) -> Result<kube::Client, LocalKubeconfigError> {
    counted_client(Some(path), counts)
        .await
        .map(|(client, _)| client)
        .map_err(|e| LocalKubeconfigError {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })
}
