//! One full pass over the cluster ([`reconcile_all`]): issuer readiness, then Certificates
//! (issued only when their Secret no longer satisfies them), then CA injection. The pure parts
//! (conditions, the Secret's apply patch, an issuer's type) are separate functions.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{debug, info, warn};

use crate::inject::{self, Source, TargetKind};
use crate::issue::{self, CaKeyPair, ISSUER_GROUP, Request};

/// The field manager of cert-manager's issuing controller, used for the Secrets.
pub const ISSUING_MANAGER: &str = "cert-manager-certificates-issuing";

/// A cert-manager.io/v1 kind.
pub fn cm_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: ISSUER_GROUP.into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Settings of a pass.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where a ClusterIssuer's `spec.ca.secretName` lives (cert-manager's
    /// `--cluster-resource-namespace`, default `cert-manager`).
    pub cluster_resource_namespace: String,
}

/// What an issuer issues with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerType {
    /// `spec.selfSigned`.
    SelfSigned,
    /// `spec.ca.secretName`, in the given namespace.
    Ca {
        /// The Secret's namespace (the Issuer's, or the cluster resource namespace).
        namespace: String,
        /// `spec.ca.secretName`.
        secret: String,
    },
    /// Any other issuer type (ACME, Vault, ...): not handled by this stand-in.
    Unsupported,
}

/// An issuer's type from its spec (`ca_namespace`: where its CA Secret would be).
pub fn issuer_type(spec: &Value, ca_namespace: &str) -> IssuerType {
    if spec["selfSigned"].is_object() {
        IssuerType::SelfSigned
    } else if let Some(s) = spec["ca"]["secretName"].as_str() {
        IssuerType::Ca {
            namespace: ca_namespace.to_string(),
            secret: s.to_string(),
        }
    } else {
        IssuerType::Unsupported
    }
}

/// A status condition as cert-manager writes it: `lastTransitionTime` kept from the existing
/// condition of the same type while its status does not change.
pub fn condition(
    existing: &Value,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let old = existing
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_));
    let since = match old {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut c = json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    });
    if let Some(g) = generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn now() -> String {
    rfc3339(
        OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc()),
    )
}

/// The annotations and labels cert-manager puts on a Certificate's Secret (with
/// `spec.secretTemplate`'s).
pub fn secret_metadata(
    certificate: &str,
    req: &Request,
    secret_template: &Value,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut annotations = BTreeMap::new();
    let mut labels = BTreeMap::new();
    let strings = |v: &Value| -> Vec<(String, String)> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    annotations.extend(strings(&secret_template["annotations"]));
    labels.extend(strings(&secret_template["labels"]));
    let a = |k: &str, v: String| (format!("cert-manager.io/{k}"), v);
    let join = |v: &[String]| v.join(",");
    annotations.extend([
        a("certificate-name", certificate.to_string()),
        a("issuer-name", req.issuer.name.clone()),
        a("issuer-kind", req.issuer.kind.clone()),
        a("issuer-group", req.issuer.group.clone()),
        a("common-name", req.common_name.clone().unwrap_or_default()),
        a("alt-names", join(&req.dns_names)),
        a(
            "ip-sans",
            req.ip_addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        a("uri-sans", join(&req.uris)),
        a("email-sans", join(&req.email_addresses)),
    ]);
    if !req.organizations.is_empty() {
        annotations.extend([a("subject-organizations", join(&req.organizations))]);
    }
    labels.insert("controller.cert-manager.io/fao".into(), "true".into());
    (annotations, labels)
}

/// The server-side apply patch of a Certificate's Secret (type `kubernetes.io/tls`); `data`
/// holds `tls.crt`, `tls.key`, `ca.crt` (plain PEM; encoded here).
pub fn secret_apply(
    namespace: &str,
    name: &str,
    metadata: &(BTreeMap<String, String>, BTreeMap<String, String>),
    data: Option<[(&str, &str); 3]>,
) -> Value {
    let mut s = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": metadata.0,
            "labels": metadata.1,
        },
        "type": "kubernetes.io/tls",
    });
    if let Some(data) = data {
        let enc = base64::engine::general_purpose::STANDARD;
        s["data"] = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(enc.encode(v))))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    s
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct Summary {
    /// The cert-manager CRDs were there to list.
    pub cert_manager_types: bool,
    /// Certificates issued.
    pub issued: usize,
    /// Objects given a CA bundle.
    pub injected: usize,
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

async fn list_cm(
    client: &Client,
    ar: &ApiResource,
) -> Result<Option<Vec<DynamicObject>>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
    match api.list(&ListParams::default()).await {
        Ok(l) => Ok(Some(l.items)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn secret_bytes<'a>(s: &'a Secret, key: &str) -> Option<&'a [u8]> {
    s.data.as_ref()?.get(key).map(|b| b.0.as_slice())
}

struct IssuerEntry {
    ty: IssuerType,
    ready: bool,
}

/// Issuer readiness; returns every issuer keyed by (kind, namespace, name).
async fn issuers(
    client: &Client,
    settings: &Settings,
    items: Vec<(DynamicObject, &'static str)>,
) -> anyhow::Result<HashMap<(String, String, String), IssuerEntry>> {
    let mut out = HashMap::new();
    for (obj, kind) in items {
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let ca_ns = if kind == "ClusterIssuer" {
            settings.cluster_resource_namespace.as_str()
        } else {
            ns.as_str()
        };
        let ty = issuer_type(&obj.data["spec"], ca_ns);
        let (ready, reason, message) = match &ty {
            IssuerType::SelfSigned => (true, "IsReady", String::new()),
            IssuerType::Ca { namespace, secret } => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match api.get_opt(secret).await? {
                    None => (
                        false,
                        "ErrGetKeyPair",
                        format!(
                            "Error getting keypair for CA issuer: secret \"{secret}\" not found"
                        ),
                    ),
                    Some(s) => match ca_check(&s) {
                        Ok(()) => (true, "KeyPairVerified", "Signing CA verified".into()),
                        Err(e) => (
                            false,
                            "ErrInvalidKeyPair",
                            format!("Error getting keypair for CA issuer: {e}"),
                        ),
                    },
                }
            }
            IssuerType::Unsupported => {
                debug!(kind, namespace = %ns, name = %name, "issuer type not handled by this stand-in; left alone");
                out.insert(
                    (kind.to_string(), ns, name),
                    IssuerEntry { ty, ready: false },
                );
                continue;
            }
        };
        let existing = &obj.data["status"]["conditions"];
        let c = condition(
            existing,
            "Ready",
            ready,
            reason,
            &message,
            obj.metadata.generation,
            &now(),
        );
        if existing.as_array().map(Vec::as_slice) != Some(std::slice::from_ref(&c)) {
            let ar = if kind == "ClusterIssuer" {
                cm_resource("ClusterIssuer", "clusterissuers")
            } else {
                cm_resource("Issuer", "issuers")
            };
            let api: Api<DynamicObject> = if kind == "ClusterIssuer" {
                Api::all_with(client.clone(), &ar)
            } else {
                Api::namespaced_with(client.clone(), &ns, &ar)
            };
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": [c]}})),
            )
            .await?;
            info!(kind, namespace = %ns, name = %name, ready, reason, "issuer status written");
        }
        out.insert((kind.to_string(), ns, name), IssuerEntry { ty, ready });
    }
    Ok(out)
}

/// Whether a CA Secret holds a CA certificate and its key (checked by signing nothing: the
/// parse and the key match of [`issue::issue`]).
fn ca_check(s: &Secret) -> Result<(), String> {
    let crt = secret_bytes(s, "tls.crt").ok_or("no tls.crt")?;
    let key = secret_bytes(s, "tls.key").ok_or("no tls.key")?;
    let der = issue::pem_certs(crt)
        .into_iter()
        .next()
        .ok_or("tls.crt holds no certificate")?;
    let info = issue::CertInfo::parse(&der)?;
    if !info.is_ca {
        return Err("tls.crt is not a CA certificate".into());
    }
    let kp = std::str::from_utf8(key)
        .ok()
        .and_then(|k| rcgen::KeyPair::from_pem(k).ok())
        .ok_or("tls.key cannot be parsed (PKCS#8 expected)")?;
    if kp.public_key_raw() != info.public_key.as_slice() {
        return Err("tls.key does not match tls.crt".into());
    }
    Ok(())
}

async fn certificate(
    client: &Client,
    issuers: &HashMap<(String, String, String), IssuerEntry>,
    obj: &DynamicObject,
) -> anyhow::Result<bool> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &cm_resource("Certificate", "certificates"),
    );
    let existing = &obj.data["status"];
    let write_status = |ready: bool, reason: &str, message: String, extra: Value| {
        let c = condition(
            &existing["conditions"],
            "Ready",
            ready,
            reason,
            &message,
            obj.metadata.generation,
            &now(),
        );
        let mut status = json!({"conditions": [c]});
        if let Some(o) = extra.as_object() {
            for (k, v) in o {
                status[k] = v.clone();
            }
        }
        let unchanged = [
            "conditions",
            "notBefore",
            "notAfter",
            "renewalTime",
            "revision",
        ]
        .iter()
        .all(|k| status[k] == existing[k]);
        let api = api.clone();
        let name = name.clone();
        async move {
            if unchanged {
                return Ok::<_, kube::Error>(());
            }
            // Unset what this status does not name (a Ready=False status has no validity).
            for k in ["notBefore", "notAfter", "renewalTime"] {
                if status.get(k).is_none() && !existing[k].is_null() {
                    status[k] = Value::Null;
                }
            }
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map(|_| ())
        }
    };
    let req = match Request::from_spec(&obj.data["spec"]) {
        Ok(r) => r,
        Err(e) => {
            warn!(namespace = %ns, name = %name, error = %e, "certificate cannot be issued");
            write_status(false, "BadConfig", e.to_string(), json!({})).await?;
            return Ok(false);
        }
    };
    if req.issuer.group != ISSUER_GROUP {
        debug!(namespace = %ns, name = %name, group = %req.issuer.group, "external issuer; left alone");
        return Ok(false);
    }
    let key = match req.issuer.kind.as_str() {
        "ClusterIssuer" => (
            "ClusterIssuer".to_string(),
            String::new(),
            req.issuer.name.clone(),
        ),
        _ => ("Issuer".to_string(), ns.clone(), req.issuer.name.clone()),
    };
    let Some(issuer) = issuers.get(&key) else {
        let msg = format!("Referenced \"{}\" not found: {}", key.0, key.2);
        write_status(false, "IssuerNotFound", msg, json!({})).await?;
        return Ok(false);
    };
    if issuer.ty == IssuerType::Unsupported {
        debug!(namespace = %ns, name = %name, "issuer type not handled by this stand-in; left alone");
        return Ok(false);
    }
    if !issuer.ready {
        let msg = format!("Referenced {} {} is not ready", key.0, key.2);
        write_status(false, "IssuerNotReady", msg, json!({})).await?;
        return Ok(false);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets.get_opt(&req.secret_name).await?;
    let annotations = secret
        .as_ref()
        .map(|s| serde_json::to_value(s.annotations()).unwrap_or_default())
        .unwrap_or_default();
    let reason = match &secret {
        None => Some("the Secret does not exist".to_string()),
        Some(s) => issue::needs_issuance(
            &req,
            secret_bytes(s, "tls.crt"),
            secret_bytes(s, "tls.key"),
            &annotations,
            OffsetDateTime::now_utc(),
        ),
    };
    let metadata = secret_metadata(&name, &req, &obj.data["spec"]["secretTemplate"]);
    let params = PatchParams::apply(ISSUING_MANAGER).force();
    let mut revision = existing["revision"].as_i64().unwrap_or(0);
    let (not_before, not_after) = match reason {
        Some(why) => {
            let ca_secret = match &issuer.ty {
                IssuerType::Ca { namespace, secret } => {
                    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                    Some(api.get(secret).await?)
                }
                _ => None,
            };
            let text = |s: &'_ Secret, k: &str| -> String {
                String::from_utf8_lossy(secret_bytes(s, k).unwrap_or_default()).into_owned()
            };
            let ca_pems = ca_secret
                .as_ref()
                .map(|s| (text(s, "tls.crt"), text(s, "tls.key")));
            let ca = ca_pems.as_ref().map(|(c, k)| CaKeyPair {
                cert_pem: c,
                key_pem: k,
            });
            let issued = match issue::issue(&req, ca.as_ref()) {
                Ok(i) => i,
                Err(e) => {
                    warn!(namespace = %ns, name = %name, error = %e, "issuance failed");
                    write_status(false, "Failed", e.to_string(), json!({})).await?;
                    return Ok(false);
                }
            };
            let body = secret_apply(
                &ns,
                &req.secret_name,
                &metadata,
                Some([
                    ("tls.crt", issued.tls_crt.as_str()),
                    ("tls.key", issued.tls_key.as_str()),
                    ("ca.crt", issued.ca_crt.as_str()),
                ]),
            );
            secrets
                .patch(&req.secret_name, &params, &Patch::Apply(body))
                .await?;
            revision += 1;
            info!(
                namespace = %ns,
                certificate = %name,
                secret = %req.secret_name,
                issuer = %format!("{}/{}", req.issuer.kind, req.issuer.name),
                not_after = %rfc3339(issued.not_after),
                reason = %why,
                "certificate issued"
            );
            (issued.not_before, issued.not_after)
        }
        None => {
            let s = secret
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("secret vanished"))?;
            // Keep the Secret's metadata as cert-manager does (annotations, secretTemplate).
            let have = (s.annotations(), s.labels());
            let missing = metadata.0.iter().any(|(k, v)| have.0.get(k) != Some(v))
                || metadata.1.iter().any(|(k, v)| have.1.get(k) != Some(v));
            if missing {
                let body = secret_apply(&ns, &req.secret_name, &metadata, None);
                secrets
                    .patch(&req.secret_name, &params, &Patch::Apply(body))
                    .await?;
            }
            let der = issue::pem_certs(secret_bytes(s, "tls.crt").unwrap_or_default());
            let first = der
                .first()
                .ok_or_else(|| anyhow::anyhow!("tls.crt holds no certificate"))?;
            let info = issue::CertInfo::parse(first).map_err(|e| anyhow::anyhow!(e))?;
            (info.not_before, info.not_after)
        }
    };
    write_status(
        true,
        "Ready",
        "Certificate is up to date and has not expired".into(),
        json!({
            "notBefore": rfc3339(not_before),
            "notAfter": rfc3339(not_after),
            "renewalTime": rfc3339(not_after - req.renew_before),
            "revision": revision.max(1),
        }),
    )
    .await?;
    Ok(revision > existing["revision"].as_i64().unwrap_or(0))
}

/// The CA a source names, if it is there (as cainjector: a Certificate's Secret must carry
/// that Certificate's name; a Secret named directly must allow direct injection).
async fn read_ca(client: &Client, source: &Source) -> anyhow::Result<Option<Vec<u8>>> {
    let (ns, secret_name, owner) = match source {
        Source::Certificate { namespace, name } => {
            let api: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                namespace,
                &cm_resource("Certificate", "certificates"),
            );
            let cert = match api.get_opt(name).await {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(None),
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let Some(secret) = cert.data["spec"]["secretName"].as_str() else {
                return Ok(None);
            };
            (namespace.clone(), secret.to_string(), Some(name.clone()))
        }
        Source::Secret { namespace, name } => (namespace.clone(), name.clone(), None),
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let Some(s) = api.get_opt(&secret_name).await? else {
        return Ok(None);
    };
    let a = s.annotations();
    match owner {
        Some(cert) if a.get("cert-manager.io/certificate-name") != Some(&cert) => {
            debug!(namespace = %ns, secret = %secret_name, "secret not issued for the certificate; not injected");
            return Ok(None);
        }
        None if a.get(inject::ALLOW_DIRECT_INJECTION).map(String::as_str) != Some("true") => {
            debug!(namespace = %ns, secret = %secret_name, "secret does not allow direct injection; not injected");
            return Ok(None);
        }
        _ => {}
    }
    Ok(secret_bytes(&s, "ca.crt")
        .filter(|b| !b.is_empty())
        .map(<[u8]>::to_vec))
}

async fn inject_all(client: &Client) -> anyhow::Result<usize> {
    let targets = [
        (
            TargetKind::Validating,
            ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
        ),
        (
            TargetKind::Mutating,
            ApiResource::erase::<MutatingWebhookConfiguration>(&()),
        ),
        (
            TargetKind::Crd,
            ApiResource::erase::<CustomResourceDefinition>(&()),
        ),
    ];
    let mut injected = 0;
    let params = PatchParams::apply(inject::FIELD_MANAGER).force();
    for (kind, ar) in targets {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        for obj in api.list(&ListParams::default()).await?.items {
            let mut v = serde_json::to_value(&obj)?;
            v["apiVersion"] = json!(ar.api_version);
            let name = obj.name_any();
            let source = match inject::source(&v) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    warn!(kind = %ar.kind, name = %name, error = %e, "bad injection annotation");
                    continue;
                }
            };
            let Some(ca) = read_ca(client, &source).await? else {
                debug!(kind = %ar.kind, name = %name, ?source, "CA not available yet");
                continue;
            };
            if let Some(p) = inject::patch(kind, &v, &ca) {
                api.patch(&name, &params, &Patch::Apply(p)).await?;
                injected += 1;
                info!(kind = %ar.kind, name = %name, ?source, "CA bundle injected");
            }
        }
    }
    Ok(injected)
}

/// One pass: issuers, Certificates, injection. Errors of one object are logged and the pass
/// goes on; the first is returned at the end.
pub async fn reconcile_all(client: &Client, settings: &Settings) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut first_err: Option<anyhow::Error> = None;
    let issuer_list = list_cm(client, &cm_resource("Issuer", "issuers")).await?;
    let cluster_issuer_list =
        list_cm(client, &cm_resource("ClusterIssuer", "clusterissuers")).await?;
    let certificates = list_cm(client, &cm_resource("Certificate", "certificates")).await?;
    summary.cert_manager_types =
        issuer_list.is_some() && cluster_issuer_list.is_some() && certificates.is_some();
    let items = issuer_list
        .unwrap_or_default()
        .into_iter()
        .map(|o| (o, "Issuer"))
        .chain(
            cluster_issuer_list
                .unwrap_or_default()
                .into_iter()
                .map(|o| (o, "ClusterIssuer")),
        )
        .collect();
    let issuers = issuers(client, settings, items).await?;
    for c in certificates.unwrap_or_default() {
        match certificate(client, &issuers, &c).await {
            Ok(true) => summary.issued += 1,
            Ok(false) => {}
            Err(e) => {
                warn!(namespace = %c.namespace().unwrap_or_default(), name = %c.name_any(), error = %e, "certificate reconcile failed");
                first_err.get_or_insert(e);
            }
        }
    }
    match inject_all(client).await {
        Ok(n) => summary.injected = n,
        Err(e) => {
            warn!(error = %e, "CA injection failed");
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_types_and_where_a_ca_secret_lives() {
        assert_eq!(
            issuer_type(&json!({"selfSigned": {}}), "ns"),
            IssuerType::SelfSigned
        );
        assert_eq!(
            issuer_type(&json!({"ca": {"secretName": "root"}}), "cert-manager"),
            IssuerType::Ca {
                namespace: "cert-manager".into(),
                secret: "root".into()
            }
        );
        assert_eq!(
            issuer_type(&json!({"acme": {"server": "x"}}), "ns"),
            IssuerType::Unsupported
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let old = json!([{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]);
        let c = condition(
            &old,
            "Ready",
            true,
            "Ready",
            "m",
            Some(2),
            "2030-01-01T00:00:00Z",
        );
        assert_eq!(c["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(c["observedGeneration"], 2);
        let c = condition(&old, "Ready", false, "X", "m", None, "2030-01-01T00:00:00Z");
        assert_eq!(c["lastTransitionTime"], "2030-01-01T00:00:00Z");
        assert_eq!(c["status"], "False");
    }

    #[test]
    fn the_secret_carries_cert_managers_annotations_and_the_template() {
        let req = Request::from_spec(&json!({
            "secretName": "tls",
            "issuerRef": {"name": "ss", "kind": "ClusterIssuer"},
            "dnsNames": ["a", "b"],
            "ipAddresses": ["127.0.0.1"],
        }))
        .unwrap();
        let md = secret_metadata(
            "cert",
            &req,
            &json!({"annotations": {"x": "y"}, "labels": {"l": "v"}}),
        );
        let a = &md.0;
        assert_eq!(a["cert-manager.io/certificate-name"], "cert");
        assert_eq!(a["cert-manager.io/issuer-name"], "ss");
        assert_eq!(a["cert-manager.io/issuer-kind"], "ClusterIssuer");
        assert_eq!(a["cert-manager.io/issuer-group"], "cert-manager.io");
        assert_eq!(a["cert-manager.io/alt-names"], "a,b");
        assert_eq!(a["cert-manager.io/ip-sans"], "127.0.0.1");
        assert_eq!(a["x"], "y");
        assert_eq!(md.1["l"], "v");
        assert_eq!(md.1["controller.cert-manager.io/fao"], "true");
        let s = secret_apply(
            "ns",
            "tls",
            &md,
            Some([("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "A")]),
        );
        assert_eq!(s["type"], "kubernetes.io/tls");
        assert_eq!(s["metadata"]["namespace"], "ns");
        assert_eq!(s["data"]["tls.crt"], "Qw==");
        assert_eq!(s["data"]["ca.crt"], "QQ==");
        assert!(secret_apply("ns", "tls", &md, None).get("data").is_none());
    }
}
