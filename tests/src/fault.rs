//! Failure injection in a client's service stack: a tower layer that makes the k-th write
//! (POST/PUT/PATCH/DELETE) fail, counting writes across every client that shares the layer.
//! Production code has no switch for this; the pivot only sees a request that failed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::Request;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What happens at the k-th write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The k-th write fails and every later request too: the process is as good as dead.
    Crash,
    /// Only the k-th write fails (a lost connection); later requests go through.
    Once,
}

/// Shared state of one injection.
#[derive(Debug)]
pub struct Fault {
    at: u64,
    mode: Mode,
    writes: AtomicU64,
    reads: AtomicU64,
    tripped: AtomicBool,
}

impl Fault {
    /// Fails the `at`-th write (1-based).
    pub fn new(at: u64, mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            at,
            mode,
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
        })
    }

    /// Only counts requests.
    pub fn never() -> Arc<Self> {
        Self::new(u64::MAX, Mode::Once)
    }

    /// Reads seen.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Whether the failure was injected.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::SeqCst)
    }

    /// Writes seen (including the failed one).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn fail(&self, is_write: bool) -> bool {
        if self.mode == Mode::Crash && self.tripped() {
            return true;
        }
        if !is_write {
            self.reads.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.at {
            self.tripped.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }
}

/// The layer.
#[derive(Debug, Clone)]
pub struct FaultLayer(pub Arc<Fault>);

impl<S> tower_layer::Layer<S> for FaultLayer {
    type Service = Faulty<S>;

    fn layer(&self, inner: S) -> Faulty<S> {
        Faulty {
            inner,
            fault: self.0.clone(),
        }
    }
}

/// The wrapped service.
#[derive(Debug, Clone)]
pub struct Faulty<S> {
    inner: S,
    fault: Arc<Fault>,
}

/// The error an injected failure gives.
#[derive(Debug, thiserror::Error)]
#[error("injected failure (write {0})")]
pub struct Injected(u64);

impl<S, B> tower_service::Service<Request<B>> for Faulty<S>
where
    S: tower_service::Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let write = fledge_agent_is_write(req.method());
        if self.fault.fail(write) {
            let n = self.fault.at;
            return Box::pin(async move { Err(Box::new(Injected(n)) as BoxError) });
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

fn fledge_agent_is_write(m: &http::Method) -> bool {
    !matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// A client for `kubeconfig` with `fault` in its stack.
pub async fn client_with(kubeconfig: &std::path::Path, fault: &Arc<Fault>) -> kube::Client {
    let config = fledge_generator::apply::config_from_kubeconfig(Some(kubeconfig))
        .await
        .expect("test kubeconfig loads");
    kube::client::ClientBuilder::try_from(config)
        .expect("client builds")
        .with_layer(&FaultLayer(fault.clone()))
        .build()
}

/// A layer that delays every request by a fixed time before sending it: a stand-in for the
/// round trip to an API server in another network (loopback has almost none).
#[derive(Debug, Clone, Copy)]
pub struct DelayLayer(pub std::time::Duration);

impl<S> tower_layer::Layer<S> for DelayLayer {
    type Service = Delayed<S>;

    fn layer(&self, inner: S) -> Delayed<S> {
        Delayed {
            inner,
            delay: self.0,
        }
    }
}

/// The wrapped service of [`DelayLayer`].
#[derive(Debug, Clone)]
pub struct Delayed<S> {
    inner: S,
    delay: std::time::Duration,
}

impl<S, B> tower_service::Service<Request<B>> for Delayed<S>
where
    S: tower_service::Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let delay = self.delay;
        let fut = self.inner.call(req);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            fut.await.map_err(Into::into)
        })
    }
}

/// A client for `kubeconfig` whose requests are counted by `fault` and delayed by `delay`.
pub async fn client_with_delay(
    kubeconfig: &std::path::Path,
    fault: &Arc<Fault>,
    delay: std::time::Duration,
) -> kube::Client {
    let config = fledge_generator::apply::config_from_kubeconfig(Some(kubeconfig))
        .await
        .expect("test kubeconfig loads");
    kube::client::ClientBuilder::try_from(config)
        .expect("client builds")
        .with_layer(&FaultLayer(fault.clone()))
        .with_layer(&DelayLayer(delay))
        .build()
}
