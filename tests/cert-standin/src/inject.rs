//! Pure CA injection, as cert-manager's cainjector does it for the three kinds the Cluster API
//! providers use: which objects ask for a CA ([`source`]) and the patch that puts it in
//! ([`patch`], a server-side apply patch as cainjector sends).

use base64::Engine;
use serde_json::{Value, json};

/// The annotation naming a `Certificate` (`<namespace>/<name>`) whose Secret's `ca.crt` to inject.
pub const INJECT_CA_FROM: &str = "cert-manager.io/inject-ca-from";
/// The annotation naming a Secret (`<namespace>/<name>`) whose `ca.crt` to inject.
pub const INJECT_CA_FROM_SECRET: &str = "cert-manager.io/inject-ca-from-secret";
/// The annotation a Secret needs before [`INJECT_CA_FROM_SECRET`] may name it (as in
/// cert-manager).
pub const ALLOW_DIRECT_INJECTION: &str = "cert-manager.io/allow-direct-injection";

/// The kinds that get a CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// `ValidatingWebhookConfiguration`: every `webhooks[].clientConfig.caBundle`.
    Validating,
    /// `MutatingWebhookConfiguration`: every `webhooks[].clientConfig.caBundle`.
    Mutating,
    /// `CustomResourceDefinition` with a conversion webhook:
    /// `spec.conversion.webhook.clientConfig.caBundle`.
    Crd,
}

/// Where an object's CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Certificate: its Secret's `ca.crt`.
    Certificate {
        /// The Certificate's namespace.
        namespace: String,
        /// The Certificate's name.
        name: String,
    },
    /// A Secret's `ca.crt` directly.
    Secret {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
}

fn split(v: &str) -> Result<(String, String), String> {
    match v.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{v:?} is not <namespace>/<name>")),
    }
}

/// The source an object's annotations name, if any (`inject-ca-from` before
/// `inject-ca-from-secret`); an error for a malformed value.
pub fn source(obj: &Value) -> Result<Option<Source>, String> {
    let a = &obj["metadata"]["annotations"];
    if let Some(v) = a[INJECT_CA_FROM].as_str() {
        let (namespace, name) = split(v).map_err(|e| format!("{INJECT_CA_FROM}: {e}"))?;
        return Ok(Some(Source::Certificate { namespace, name }));
    }
    if let Some(v) = a[INJECT_CA_FROM_SECRET].as_str() {
        let (namespace, name) = split(v).map_err(|e| format!("{INJECT_CA_FROM_SECRET}: {e}"))?;
        return Ok(Some(Source::Secret { namespace, name }));
    }
    Ok(None)
}

/// The field manager of cert-manager's cainjector, which this stand-in uses for its applies.
pub const FIELD_MANAGER: &str = "cert-manager-cainjector";

/// The server-side apply patch (cainjector's, field manager [`FIELD_MANAGER`], forced) that sets
/// `ca_pem` as the CA bundle of `obj` (a [`TargetKind`]), or `None` when it is already there
/// (or a CRD has no conversion webhook). It names only the bundles (webhooks by their `name`,
/// the list's key), so it owns nothing else.
pub fn patch(kind: TargetKind, obj: &Value, ca_pem: &[u8]) -> Option<Value> {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let head = |api_version: &str, kind: &str| {
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": obj["metadata"]["name"]},
        })
    };
    match kind {
        TargetKind::Validating | TargetKind::Mutating => {
            let webhooks = obj["webhooks"].as_array()?;
            if webhooks.is_empty()
                || webhooks
                    .iter()
                    .all(|w| w["clientConfig"]["caBundle"].as_str() == Some(bundle.as_str()))
            {
                return None;
            }
            let k = if kind == TargetKind::Validating {
                "ValidatingWebhookConfiguration"
            } else {
                "MutatingWebhookConfiguration"
            };
            let mut p = head("admissionregistration.k8s.io/v1", k);
            p["webhooks"] = webhooks
                .iter()
                .map(|w| json!({"name": w["name"], "clientConfig": {"caBundle": bundle}}))
                .collect();
            Some(p)
        }
        TargetKind::Crd => {
            let conv = &obj["spec"]["conversion"];
            if conv["strategy"] != "Webhook"
                || conv["webhook"]["clientConfig"]["caBundle"].as_str() == Some(bundle.as_str())
            {
                return None;
            }
            let mut p = head("apiextensions.k8s.io/v1", "CustomResourceDefinition");
            p["spec"] = json!({"conversion": {"webhook": {"clientConfig": {"caBundle": bundle}}}});
            Some(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    fn b64() -> String {
        base64::engine::general_purpose::STANDARD.encode(CA)
    }

    #[test]
    fn sources_come_from_the_two_annotations() {
        let none = json!({"metadata": {"name": "x"}});
        assert_eq!(source(&none), Ok(None));
        let cert =
            json!({"metadata": {"annotations": {INJECT_CA_FROM: "capi-system/capi-serving-cert"}}});
        assert_eq!(
            source(&cert),
            Ok(Some(Source::Certificate {
                namespace: "capi-system".into(),
                name: "capi-serving-cert".into()
            }))
        );
        let secret = json!({"metadata": {"annotations": {INJECT_CA_FROM_SECRET: "ns/s"}}});
        assert_eq!(
            source(&secret),
            Ok(Some(Source::Secret {
                namespace: "ns".into(),
                name: "s".into()
            }))
        );
        for bad in ["noslash", "/x", "x/", "a/b/c"] {
            let o = json!({"metadata": {"annotations": {INJECT_CA_FROM: bad}}});
            assert!(source(&o).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_webhook_gets_the_bundle_and_an_injected_object_is_left_alone() {
        let vwc = json!({
            "metadata": {"name": "v", "resourceVersion": "7"},
            "webhooks": [
                {"name": "a", "clientConfig": {"service": {"name": "s", "namespace": "n"}}, "sideEffects": "None"},
                {"name": "b", "clientConfig": {"caBundle": "b2xk", "service": {"name": "s", "namespace": "n"}}},
            ],
        });
        let p = patch(TargetKind::Validating, &vwc, CA).unwrap();
        assert_eq!(
            p,
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "v"},
                "webhooks": [
                    {"name": "a", "clientConfig": {"caBundle": b64()}},
                    {"name": "b", "clientConfig": {"caBundle": b64()}},
                ],
            })
        );
        assert_eq!(
            patch(TargetKind::Mutating, &vwc, CA).unwrap()["kind"],
            "MutatingWebhookConfiguration"
        );
        let mut done = vwc.clone();
        for w in done["webhooks"].as_array_mut().unwrap() {
            w["clientConfig"]["caBundle"] = json!(b64());
        }
        assert_eq!(patch(TargetKind::Validating, &done, CA), None);
        assert_eq!(
            patch(TargetKind::Validating, &json!({"metadata": {}}), CA),
            None
        );
    }

    #[test]
    fn crds_get_the_bundle_only_with_a_conversion_webhook() {
        let crd = json!({
            "metadata": {"name": "x", "resourceVersion": "3"},
            "spec": {"conversion": {"strategy": "Webhook", "webhook": {
                "conversionReviewVersions": ["v1"],
                "clientConfig": {"service": {"name": "s", "namespace": "n", "path": "/convert"}},
            }}},
        });
        let p = patch(TargetKind::Crd, &crd, CA).unwrap();
        assert_eq!(
            p,
            json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": "x"},
                "spec": {"conversion": {"webhook": {"clientConfig": {"caBundle": b64()}}}},
            })
        );
        let mut done = crd.clone();
        done["spec"]["conversion"]["webhook"]["clientConfig"]["caBundle"] = json!(b64());
        assert_eq!(patch(TargetKind::Crd, &done, CA), None);
        let none = json!({"spec": {"conversion": {"strategy": "None"}}});
        assert_eq!(patch(TargetKind::Crd, &none, CA), None);
    }
}
