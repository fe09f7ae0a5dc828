//! `fledge-test-cert-manager`: a **test stand-in** for exactly two things cert-manager does, and
//! nothing else. It is **not cert-manager** and must never be shipped as one.
//!
//! cert-manager's own binaries cannot be built where fledge's tests run, yet the Cluster API
//! providers need cert-manager to be there. They use it for two things only, and this binary
//! does those two the way cert-manager v1.19 does:
//!
//! 1. **Issuance for `selfSigned` and `ca` Issuers/ClusterIssuers**: a `Certificate`
//!    (cert-manager.io/v1) whose `issuerRef` names such an issuer gets its `spec.secretName`
//!    Secret (type `kubernetes.io/tls`: `tls.crt`, `tls.key`, `ca.crt`; for selfSigned the
//!    certificate is its own CA) with `commonName`, `dnsNames`, `ipAddresses`, `uris`,
//!    `emailAddresses`, `isCA`, `duration` (default 90 days), `renewBefore`, `usages` and
//!    `secretTemplate` honoured, cert-manager's annotations on the Secret, and status
//!    `Ready=True`, `notBefore`, `notAfter`, `renewalTime`, `revision`. A Secret that still
//!    satisfies its Certificate is kept (renewal at two thirds of the lifetime). Issuers of
//!    those two types get `Ready` conditions; other issuer types and external issuers are left
//!    alone. Keys are ECDSA P-256 (P-384, Ed25519 on request) in PKCS#8: an `RSA` request gets
//!    ECDSA P-256, unlike cert-manager.
//! 2. **CA injection** as cainjector does it: objects annotated
//!    `cert-manager.io/inject-ca-from: <namespace>/<certificate>` (the Certificate's Secret
//!    must carry `cert-manager.io/certificate-name`) or
//!    `cert-manager.io/inject-ca-from-secret: <namespace>/<secret>` (the Secret must allow it
//!    with `cert-manager.io/allow-direct-injection: "true"`) get that Secret's `ca.crt` in every
//!    `webhooks[].clientConfig.caBundle` of Validating/MutatingWebhookConfigurations and in
//!    `spec.conversion.webhook.clientConfig.caBundle` of CRDs with a conversion webhook
//!    (server-side apply, field manager `cert-manager-cainjector`). APIServices are not handled.
//!
//! No ACME, Vault, CertificateRequests, approval, webhooks of its own or key rotation policies.
//! It runs in-cluster (or with `--kubeconfig`), reconciles everything on every watch event and
//! every `--resync` seconds, serves `/readyz` (after the first full pass) and `/livez`, logs to
//! stderr (never key material) and exits non-zero on a fatal error.

mod inject;
mod issue;
mod reconcile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "fledge-test-cert-manager",
    about = "Test stand-in for cert-manager's selfSigned/CA issuance and CA injection (not cert-manager)"
)]
struct Args {
    /// A kubeconfig to use instead of the in-cluster configuration.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where `/readyz` and `/livez` are served; `none` serves nothing.
    #[arg(long, default_value = "0.0.0.0:9403")]
    health_addr: String,
    /// Seconds between full passes when nothing changes.
    #[arg(long, default_value_t = 10)]
    resync: u64,
    /// The namespace of ClusterIssuers' CA Secrets (as cert-manager's flag of that name).
    #[arg(long, default_value = "cert-manager")]
    cluster_resource_namespace: String,
}

async fn client(args: &Args) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("cannot read kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("in-cluster configuration (or KUBECONFIG)")?,
    };
    kube::Client::try_from(config).context("kube client")
}

/// Answers `GET /livez` always and `GET /readyz` once `ready` is set.
async fn serve_health(listener: tokio::net::TcpListener, ready: Arc<AtomicBool>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
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
                "/livez" | "/healthz" => ("200 OK", "ok"),
                "/readyz" if ready.load(Ordering::SeqCst) => ("200 OK", "ok"),
                "/readyz" => ("503 Service Unavailable", "first pass not done"),
                _ => ("404 Not Found", "not found"),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

/// Spawns a watch on `api` (metadata only) that wakes the reconciler on every event.
fn watch<K>(api: Api<PartialObjectMeta<K>>, what: &'static str, wake: Arc<Notify>)
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + 'static,
    PartialObjectMeta<K>: kube::Resource + serde::de::DeserializeOwned,
{
    tokio::spawn(async move {
        let mut s = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(_) => wake.notify_one(),
                // The cert-manager CRDs may come later: the backoff retries.
                Err(e) => debug!(what, error = %e, "watch error (retrying)"),
            }
        }
    });
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = client(&args).await?;
    let ready = Arc::new(AtomicBool::new(false));
    if args.health_addr != "none" {
        let addr: SocketAddr = args
            .health_addr
            .parse()
            .with_context(|| format!("--health-addr {}", args.health_addr))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        info!(%addr, "serving /readyz and /livez");
        tokio::spawn(serve_health(listener, ready.clone()));
    }
    let wake = Arc::new(Notify::new());
    use reconcile::cm_resource;
    for (ar, what) in [
        (cm_resource("Certificate", "certificates"), "certificates"),
        (cm_resource("Issuer", "issuers"), "issuers"),
        (
            cm_resource("ClusterIssuer", "clusterissuers"),
            "clusterissuers",
        ),
    ] {
        watch(
            Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &ar),
            what,
            wake.clone(),
        );
    }
    watch(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        "secrets",
        wake.clone(),
    );
    watch(
        Api::<PartialObjectMeta<ValidatingWebhookConfiguration>>::all(client.clone()),
        "validatingwebhookconfigurations",
        wake.clone(),
    );
    watch(
        Api::<PartialObjectMeta<MutatingWebhookConfiguration>>::all(client.clone()),
        "mutatingwebhookconfigurations",
        wake.clone(),
    );
    watch(
        Api::<PartialObjectMeta<CustomResourceDefinition>>::all(client.clone()),
        "customresourcedefinitions",
        wake.clone(),
    );
    let settings = reconcile::Settings {
        cluster_resource_namespace: args.cluster_resource_namespace.clone(),
    };
    let resync = Duration::from_secs(args.resync.max(1));
    info!(
        resync_s = resync.as_secs(),
        "started (a test stand-in for cert-manager's selfSigned/CA issuance and CA injection)"
    );
    loop {
        match reconcile::reconcile_all(&client, &settings).await {
            Ok(s) => {
                if s.cert_manager_types && !ready.swap(true, Ordering::SeqCst) {
                    info!("first full pass done: ready");
                } else if !s.cert_manager_types {
                    debug!("cert-manager CRDs not installed yet");
                }
                if s.issued + s.injected > 0 {
                    debug!(issued = s.issued, injected = s.injected, "pass done");
                }
            }
            Err(e) => warn!(error = %format!("{e:#}"), "pass failed; retrying"),
        }
        // Coalesce a burst of events into one pass.
        let _ = tokio::time::timeout(resync, wake.notified()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "fatal");
            std::process::ExitCode::FAILURE
        }
    }
}
