//! Fault injection in a client's service stack: a tower layer that counts and records the
//! requests of every client sharing it, can make the k-th write (POST/PUT/PATCH/DELETE) fail
//! before it is sent or lose its answer after the server carried it out, and can delay every
//! request (a stand-in for a network round trip, which loopback lacks). It can also hold the
//! k-th write before it is sent until the test lets it go ([`Fault::holding`]), to interleave
//! two runs at a chosen point.
//! Production code has no switch for any of this; the pivot only sees requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;

use fledge_agent::clients::is_write;
use http::Request;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What happens at the k-th write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The k-th write fails before it is sent, and every later request too: the process is as
    /// good as dead.
    Crash,
    /// Only the k-th write fails before it is sent (a lost connection); later requests go
    /// through.
    Once,
    /// The k-th write reaches the server and takes effect, but its answer is lost; every later
    /// request fails (the process died while the answer was on its way).
    CrashAnswerLost,
    /// The k-th write takes effect and its answer is lost; later requests go through (a retry
    /// then meets what the lost write did: 409 AlreadyExists, 404 on a second delete...).
    OnceAnswerLost,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 4] = [
        Mode::Crash,
        Mode::Once,
        Mode::CrashAnswerLost,
        Mode::OnceAnswerLost,
    ];

    fn crashes(self) -> bool {
        matches!(self, Mode::Crash | Mode::CrashAnswerLost)
    }

    fn answer_lost(self) -> bool {
        matches!(self, Mode::CrashAnswerLost | Mode::OnceAnswerLost)
    }
}

/// What the layer does with one request.
enum Verdict {
    Send,
    Hold,
    FailBeforeSend,
    LoseAnswer,
}

/// Shared state of one injection.
#[derive(Debug)]
pub struct Fault {
    at: u64,
    mode: Mode,
    delay: Duration,
    writes: AtomicU64,
    reads: AtomicU64,
    tripped: AtomicBool,
    log: Mutex<Vec<String>>,
    /// Hold the `at`-th write instead of failing it.
    hold: bool,
    /// Hold the first write whose `METHOD path` contains this instead.
    hold_matching: Option<String>,
    /// Notified once the held write is waiting.
    held: Notify,
    /// Notified to let the held write go.
    release: Notify,
}

impl Fault {
    /// Fails the `at`-th write (1-based).
    pub fn new(at: u64, mode: Mode) -> Arc<Self> {
        Self::build(at, mode, Duration::ZERO)
    }

    /// Only counts and records requests.
    pub fn never() -> Arc<Self> {
        Self::build(u64::MAX, Mode::Once, Duration::ZERO)
    }

    /// Counts and records requests, each delayed by `delay` before it is sent.
    pub fn delaying(delay: Duration) -> Arc<Self> {
        Self::build(u64::MAX, Mode::Once, delay)
    }

    /// Holds the `at`-th write (1-based) before it is sent, until [`Fault::release`]; every
    /// other request goes through. [`Fault::reached`] waits until the write is held.
    pub fn holding(at: u64) -> Arc<Self> {
        let mut f = Self::unshared(at, Mode::Once, Duration::ZERO);
        f.hold = true;
        Arc::new(f)
    }

    /// Holds the first write whose `METHOD path` contains `pattern` (whatever else writes
    /// meanwhile, such as a lock renewal on a timer), like [`Fault::holding`].
    pub fn holding_first(pattern: &str) -> Arc<Self> {
        let mut f = Self::unshared(u64::MAX, Mode::Once, Duration::ZERO);
        f.hold = true;
        f.hold_matching = Some(pattern.into());
        Arc::new(f)
    }

    fn build(at: u64, mode: Mode, delay: Duration) -> Arc<Self> {
        Arc::new(Self::unshared(at, mode, delay))
    }

    fn unshared(at: u64, mode: Mode, delay: Duration) -> Self {
        Self {
            at,
            mode,
            delay,
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            hold: false,
            hold_matching: None,
            held: Notify::new(),
            release: Notify::new(),
        }
    }

    /// Waits until the write of [`Fault::holding`] is held (returns at once if it already
    /// was).
    pub async fn reached(&self) {
        self.held.notified().await;
    }

    /// Lets the held write go.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// Reads seen.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Writes seen (including the failed one).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Whether the failure was injected.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::SeqCst)
    }

    /// Every write so far, in order, as `METHOD path`.
    pub fn write_log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn verdict<B>(&self, req: &Request<B>) -> Verdict {
        if self.mode.crashes() && self.tripped() {
            return Verdict::FailBeforeSend;
        }
        if !is_write(req.method()) {
            self.reads.fetch_add(1, Ordering::SeqCst);
            return Verdict::Send;
        }
        let line = format!("{} {}", req.method(), req.uri().path());
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(pattern) = &self.hold_matching {
            if let Ok(mut log) = self.log.lock() {
                log.push(line.clone());
            }
            if line.contains(pattern.as_str()) && !self.tripped.swap(true, Ordering::SeqCst) {
                return Verdict::Hold;
            }
            return Verdict::Send;
        }
        if let Ok(mut log) = self.log.lock() {
            log.push(line);
        }
        if n == self.at {
            self.tripped.store(true, Ordering::SeqCst);
            if self.hold {
                return Verdict::Hold;
            }
            return if self.mode.answer_lost() {
                Verdict::LoseAnswer
            } else {
                Verdict::FailBeforeSend
            };
        }
        Verdict::Send
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
        let n = self.fault.at;
        let verdict = self.fault.verdict(&req);
        if matches!(verdict, Verdict::FailBeforeSend) {
            return Box::pin(async move { Err(Box::new(Injected(n)) as BoxError) });
        }
        let delay = self.fault.delay;
        let fault = self.fault.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            if matches!(verdict, Verdict::Hold) {
                // The inner future sends nothing until it is polled.
                fault.held.notify_one();
                fault.release.notified().await;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let answer = fut.await.map_err(Into::into);
            match verdict {
                // The server did it; the client never hears.
                Verdict::LoseAnswer => {
                    drop(answer);
                    Err(Box::new(Injected(n)) as BoxError)
                }
                _ => answer,
            }
        })
    }
}

/// A client for `kubeconfig` with `fault` in its stack.
pub async fn client_with(kubeconfig: &std::path::Path, fault: &Arc<Fault>) -> kube::Client {
    let config = fledge_generator::target::config_from_kubeconfig(Some(kubeconfig))
        .await
        .expect("test kubeconfig loads");
    kube::client::ClientBuilder::try_from(config)
        .expect("client builds")
        .with_layer(&FaultLayer(fault.clone()))
        .build()
}
