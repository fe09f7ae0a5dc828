//! The stand-in against a real kube-apiserver: cert-manager's real CRDs and the RBAC from
//! `components.sh`, the binary running as the `cert-manager` ServiceAccount (so the ClusterRole
//! is tested too), selfSigned and CA issuance checked with `openssl`, injection into webhook
//! configurations and a CRD, and no reissue of a Secret that is still valid.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};

const CERT_MANAGER: &str = "v1.19.1";

/// Kills the stand-in when the test ends, however it ends.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Issuer" => "issuers".to_string(),
        "ClusterIssuer" => "clusterissuers".to_string(),
        "Certificate" => "certificates".to_string(),
        k => {
            let l = k.to_lowercase();
            if l.ends_with('s') {
                format!("{l}es")
            } else {
                format!("{l}s")
            }
        }
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

async fn apply(client: &kube::Client, obj: &Value) {
    let ar = resource(
        obj["apiVersion"].as_str().unwrap(),
        obj["kind"].as_str().unwrap(),
    );
    let name = obj["metadata"]["name"].as_str().unwrap();
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {} {name}: {e}", ar.kind));
}

async fn get(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> Option<Value> {
    let ar = resource(api_version, kind);
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.get_opt(name)
        .await
        .unwrap()
        .map(|o| serde_json::to_value(o).unwrap())
}

/// Polls `check` until it gives `Some` or `within` passes (then panics with `what` and the log).
async fn until<T, F, Fut>(what: &str, log: &Path, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; stand-in log:\n{}",
                fledge_tests::cluster::tail(log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn secret_data(s: &Secret, k: &str) -> Vec<u8> {
    s.data
        .as_ref()
        .and_then(|d| d.get(k))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks a Secret with openssl: ca.crt verifies tls.crt, tls.key belongs to it; returns the
/// text dump of tls.crt.
fn check_keypair(dir: &Path, s: &Secret) -> String {
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.join(k), secret_data(s, k)).unwrap();
    }
    let verify = openssl(dir, &["verify", "-CAfile", "ca.crt", "tls.crt"]);
    assert!(verify.trim().ends_with("OK"), "{verify}");
    assert_eq!(
        openssl(dir, &["x509", "-in", "tls.crt", "-noout", "-pubkey"]),
        openssl(dir, &["pkey", "-in", "tls.key", "-pubout"]),
        "tls.key belongs to tls.crt"
    );
    openssl(dir, &["x509", "-in", "tls.crt", "-noout", "-text"])
}

fn bundle(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_default())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn issues_and_injects_against_a_real_apiserver() {
    let started = Instant::now();
    let Some(cluster) = fledge_tests::cluster::start_or_skip(Default::default()).await else {
        return;
    };
    let client = cluster.client().await;
    let work = tempfile::tempdir().unwrap();

    // The components, as the agent would read them (its labels aside).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("components.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(work.path())
        .args([CERT_MANAGER, "example.invalid/fledge-test-cert-manager:dev"])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{} failed (cert-manager's Go module {CERT_MANAGER} must be downloadable): {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(
        work.path()
            .join(format!("cert-manager/{CERT_MANAGER}/components.yaml")),
    )
    .unwrap();
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "CustomResourceDefinition")
            .count(),
        6
    );
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deploy["metadata"]["name"], "cert-manager");
    assert_eq!(
        deploy["metadata"]["labels"]["app.kubernetes.io/name"],
        "cert-manager"
    );
    for d in &docs {
        apply(&client, d).await; // the Deployment just sits: no controller-manager here
    }
    let log = work.path().join("standin.log");
    for crd in [
        "certificates.cert-manager.io",
        "issuers.cert-manager.io",
        "clusterissuers.cert-manager.io",
    ] {
        until(
            &format!("CRD {crd} established"),
            &log,
            Duration::from_secs(10),
            || async {
                let c = get(
                    &client,
                    "apiextensions.k8s.io/v1",
                    "CustomResourceDefinition",
                    None,
                    crd,
                )
                .await?;
                c["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
                    .then_some(())
            },
        )
        .await;
    }

    // The stand-in runs as the cert-manager ServiceAccount: the ClusterRole must suffice.
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "cert-manager");
    let token = sa
        .create_token_request(
            "cert-manager",
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kubeconfig = work.path().join("sa-kubeconfig");
    std::fs::write(
        &kubeconfig,
        fledge_tests::cluster::kubeconfig_yaml(&cluster.url, &cluster.ca_pem, &token),
    )
    .unwrap();
    let health = fledge_tests::cluster::free_port().unwrap();
    let _standin = Proc(
        Command::new(env!("CARGO_BIN_EXE_fledge-test-cert-manager"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([&format!("--health-addr=127.0.0.1:{health}"), "--resync=2"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the stand-in starts"),
    );

    let ns = "webhook-system";
    let cm = "cert-manager.io/v1";
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": cm, "kind": "Issuer", "metadata": {"name": "selfsigned", "namespace": ns},
               "spec": {"selfSigned": {}}}),
        json!({"apiVersion": cm, "kind": "Certificate", "metadata": {"name": "serving-cert", "namespace": ns},
               "spec": {"secretName": "webhook-server-cert", "issuerRef": {"kind": "Issuer", "name": "selfsigned"},
                        "dnsNames": ["webhook-service.webhook-system.svc", "webhook-service.webhook-system.svc.cluster.local"],
                        "ipAddresses": ["127.0.0.1"], "commonName": "webhook-service"}}),
        // A CA from a selfSigned ClusterIssuer, and a CA ClusterIssuer signing with it.
        json!({"apiVersion": cm, "kind": "ClusterIssuer", "metadata": {"name": "bootstrap"},
               "spec": {"selfSigned": {}}}),
        json!({"apiVersion": cm, "kind": "Certificate", "metadata": {"name": "root-ca", "namespace": "cert-manager"},
               "spec": {"secretName": "root-ca", "isCA": true, "commonName": "root-ca", "duration": "2160h",
                        "issuerRef": {"kind": "ClusterIssuer", "name": "bootstrap", "group": "cert-manager.io"},
                        "secretTemplate": {"annotations": {"cert-manager.io/allow-direct-injection": "true"}}}}),
        json!({"apiVersion": cm, "kind": "ClusterIssuer", "metadata": {"name": "root"},
               "spec": {"ca": {"secretName": "root-ca"}}}),
        json!({"apiVersion": cm, "kind": "Certificate", "metadata": {"name": "leaf", "namespace": ns},
               "spec": {"secretName": "leaf-tls", "dnsNames": ["leaf.example"], "duration": "24h",
                        "issuerRef": {"kind": "ClusterIssuer", "name": "root"}}}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
               "metadata": {"name": "vwc", "annotations": {"cert-manager.io/inject-ca-from": "webhook-system/serving-cert"}},
               "webhooks": ([1, 2].map(|i| json!({
                   "name": format!("v{i}.example.invalid"), "sideEffects": "None", "admissionReviewVersions": ["v1"],
                   "failurePolicy": "Ignore", "timeoutSeconds": 1,
                   "clientConfig": {"service": {"name": "webhook-service", "namespace": ns, "path": "/validate"}},
                   "rules": [{"apiGroups": ["example.invalid"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["things"]}]})))}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": "mwc", "annotations": {"cert-manager.io/inject-ca-from-secret": "cert-manager/root-ca"}},
               "webhooks": [{"name": "m.example.invalid", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                   "failurePolicy": "Ignore", "timeoutSeconds": 1,
                   "clientConfig": {"service": {"name": "webhook-service", "namespace": ns, "path": "/mutate"}},
                   "rules": [{"apiGroups": ["example.invalid"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["things"]}]}]}),
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "things.example.invalid", "annotations": {"cert-manager.io/inject-ca-from": "webhook-system/serving-cert"}},
               "spec": {"group": "example.invalid", "scope": "Namespaced",
                        "names": {"plural": "things", "singular": "thing", "kind": "Thing", "listKind": "ThingList"},
                        "versions": (["v1alpha1", "v1"].map(|v| json!({"name": v, "served": true, "storage": v == "v1",
                            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}))),
                        "conversion": {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"],
                            "clientConfig": {"service": {"name": "webhook-service", "namespace": ns, "path": "/convert"}}}}}}),
    ] {
        apply(&client, &obj).await;
    }

    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let serving = until(
        "the selfSigned serving certificate's Secret",
        &log,
        Duration::from_secs(15),
        || async {
            secrets
                .get_opt("webhook-server-cert")
                .await
                .unwrap()
                .filter(|s| !secret_data(s, "ca.crt").is_empty())
        },
    )
    .await;
    let text = check_keypair(work.path(), &serving);
    for want in [
        "DNS:webhook-service.webhook-system.svc",
        "DNS:webhook-service.webhook-system.svc.cluster.local",
        "IP Address:127.0.0.1",
        "Subject: CN = webhook-service",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    assert_eq!(
        secret_data(&serving, "tls.crt"),
        secret_data(&serving, "ca.crt"),
        "selfSigned: its own CA"
    );
    let a = serving.metadata.annotations.clone().unwrap_or_default();
    for (k, v) in [
        ("cert-manager.io/certificate-name", "serving-cert"),
        ("cert-manager.io/issuer-name", "selfsigned"),
        ("cert-manager.io/issuer-kind", "Issuer"),
        ("cert-manager.io/issuer-group", "cert-manager.io"),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "annotation {k}");
    }
    let ca = secret_data(&serving, "ca.crt");

    let status = until(
        "serving-cert Ready",
        &log,
        Duration::from_secs(10),
        || async {
            let c = get(&client, cm, "Certificate", Some(ns), "serving-cert").await?;
            (c["status"]["conditions"][0]["type"] == "Ready"
                && c["status"]["conditions"][0]["status"] == "True")
                .then(|| c["status"].clone())
        },
    )
    .await;
    assert!(
        status["notBefore"].is_string() && status["notAfter"].is_string(),
        "{status}"
    );
    let issuer = get(&client, cm, "Issuer", Some(ns), "selfsigned")
        .await
        .unwrap();
    assert_eq!(
        issuer["status"]["conditions"][0]["status"], "True",
        "{issuer}"
    );

    // Injection: every webhook of the VWC, the CRD's conversion webhook, the MWC from a Secret.
    until(
        "the VWC's caBundles",
        &log,
        Duration::from_secs(10),
        || async {
            let v = get(
                &client,
                "admissionregistration.k8s.io/v1",
                "ValidatingWebhookConfiguration",
                None,
                "vwc",
            )
            .await?;
            let ws = v["webhooks"].as_array()?;
            (ws.len() == 2
                && ws
                    .iter()
                    .all(|w| bundle(&w["clientConfig"]["caBundle"]) == ca))
            .then_some(())
        },
    )
    .await;
    until(
        "the CRD's conversion caBundle",
        &log,
        Duration::from_secs(10),
        || async {
            let c = get(
                &client,
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                "things.example.invalid",
            )
            .await?;
            (bundle(&c["spec"]["conversion"]["webhook"]["clientConfig"]["caBundle"]) == ca)
                .then_some(())
        },
    )
    .await;
    let root_secrets: Api<Secret> = Api::namespaced(client.clone(), "cert-manager");
    let root = until(
        "the root CA Secret",
        &log,
        Duration::from_secs(10),
        || async { root_secrets.get_opt("root-ca").await.unwrap() },
    )
    .await;
    let root_text = check_keypair(work.path(), &root);
    assert!(root_text.contains("CA:TRUE"), "{root_text}");
    until(
        "the MWC's caBundle (inject-ca-from-secret)",
        &log,
        Duration::from_secs(10),
        || async {
            let m = get(
                &client,
                "admissionregistration.k8s.io/v1",
                "MutatingWebhookConfiguration",
                None,
                "mwc",
            )
            .await?;
            (bundle(&m["webhooks"][0]["clientConfig"]["caBundle"]) == secret_data(&root, "ca.crt"))
                .then_some(())
        },
    )
    .await;

    // The CA issuer: the leaf verifies against the root, which is ca.crt.
    let leaf = until(
        "the CA-issued leaf Secret",
        &log,
        Duration::from_secs(10),
        || async { secrets.get_opt("leaf-tls").await.unwrap() },
    )
    .await;
    assert_eq!(secret_data(&leaf, "ca.crt"), secret_data(&root, "tls.crt"));
    let leaf_text = check_keypair(work.path(), &leaf);
    assert!(
        leaf_text.contains("DNS:leaf.example") && leaf_text.contains("Issuer: CN = root-ca"),
        "{leaf_text}"
    );

    // Ready while serving.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", health)).unwrap();
    std::io::Write::write_all(&mut sock, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut sock, &mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // A valid Secret is kept over several resyncs (2 s); a deleted one is issued again.
    let rv = serving.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = secrets.get("webhook-server-cert").await.unwrap();
    assert_eq!(
        again.metadata.resource_version, rv,
        "a valid Secret was rewritten"
    );
    secrets
        .delete("webhook-server-cert", &Default::default())
        .await
        .unwrap();
    let reissued = until(
        "the reissued Secret",
        &log,
        Duration::from_secs(10),
        || async { secrets.get_opt("webhook-server-cert").await.unwrap() },
    )
    .await;
    assert_ne!(
        secret_data(&reissued, "tls.crt"),
        secret_data(&serving, "tls.crt")
    );
    let new_ca = secret_data(&reissued, "ca.crt");
    until(
        "the VWC re-injected with the new CA",
        &log,
        Duration::from_secs(10),
        || async {
            let v = get(
                &client,
                "admissionregistration.k8s.io/v1",
                "ValidatingWebhookConfiguration",
                None,
                "vwc",
            )
            .await?;
            v["webhooks"]
                .as_array()?
                .iter()
                .all(|w| bundle(&w["clientConfig"]["caBundle"]) == new_ca)
                .then_some(())
        },
    )
    .await;

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("PRIVATE KEY"), "key material in the log");
    assert!(logged.contains("certificate issued"), "{logged}");
    eprintln!("cert stand-in test took {:?}", started.elapsed());
}
