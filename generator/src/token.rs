//! The agent's management credential: a bound, expiring service-account token from the
//! TokenRequest API, never a legacy token Secret (which never expires). `fledge apply` mints the
//! first one ([`mint_agent_token`]) into the Opaque Secret `<cluster>-fledge-agent-token` (keys
//! `token` and `ca.crt`, which CP-A's machine files read); the leading agent renews it for its
//! own ServiceAccount, by name, before it expires, by kubelet's rule for projected tokens: once
//! 80% of its lifetime has passed, or it is a day old.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::PostParams;

use crate::management::Names;
use crate::spec::CheckedCluster;
use crate::ssa::{Applied, Outcome, label};
use crate::target::Target;

/// How long a minted token lives unless told otherwise (`fledge apply --token-duration`).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest lifetime the API server grants.
pub const MIN_DURATION: Duration = Duration::from_secs(600);
/// A token this old is renewed whatever its lifetime (kubelet's rule).
pub const MAX_AGE: i64 = 24 * 3600;

/// The times in a token's claims (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires: i64,
}

impl Claims {
    /// The lifetime the token was minted with.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expires.saturating_sub(self.issued_at).max(0) as u64)
    }
}

/// The `iat` and `exp` claims of a JWT, read without checking its signature (they only time
/// its renewal; the API server checks the token). `None` for a token without both, such as a
/// legacy service-account token, which never expires.
pub fn claims(token: &str) -> Option<Claims> {
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(Claims {
        issued_at: v["iat"].as_i64()?,
        expires: v["exp"].as_i64()?,
    })
}

/// Whether a token with `claims` is due for renewal at `now`: 80% of its lifetime passed, or a
/// day old. Pure.
pub fn renewal_due(claims: &Claims, now: i64) -> bool {
    let life = claims.expires - claims.issued_at;
    now >= claims.issued_at + life * 8 / 10 || now - claims.issued_at >= MAX_AGE
}

/// Requests a token for the ServiceAccount `namespace/name`, valid for `duration` (at least
/// [`MIN_DURATION`]), for the API server's default audience.
pub async fn request(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    duration: Duration,
) -> Result<String, kube::Error> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(duration.max(MIN_DURATION).as_secs() as i64),
            ..Default::default()
        },
        ..Default::default()
    };
    let got = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    Ok(got.status.map(|s| s.token).unwrap_or_default())
}

/// Why the agent's first token could not be minted (see [`mint_agent_token`]).
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The token Secret could not be read.
    #[error("cannot read {object} in namespace {namespace}")]
    ReadSecret {
        /// `secret/<name>`.
        object: String,
        /// Its namespace.
        namespace: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A legacy token Secret of that name could not be deleted.
    #[error("cannot delete {object} in namespace {namespace}, a legacy token Secret")]
    DeleteLegacySecret {
        /// `secret/<name>`.
        object: String,
        /// Its namespace.
        namespace: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The TokenRequest failed.
    #[error("cannot request a token for serviceaccount/{service_account} in namespace {namespace}")]
    RequestToken {
        /// The agent's ServiceAccount.
        service_account: String,
        /// Its namespace.
        namespace: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The namespace's CA bundle could not be read.
    #[error("cannot read configmap/kube-root-ca.crt in namespace {namespace}")]
    ReadRootCa {
        /// The namespace.
        namespace: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Neither the namespace nor the kubeconfig names a CA.
    #[error(
        "{object}: refused: no CA for the agent to trust {server} by: namespace {namespace} has no kube-root-ca.crt ConfigMap (kube-controller-manager publishes it) and the kubeconfig names no certificate-authority"
    )]
    NoCa {
        /// `secret/<name>`.
        object: String,
        /// The API server URL.
        server: String,
        /// The namespace.
        namespace: String,
    },
    /// The token Secret could not be written.
    #[error("cannot write {object} in namespace {namespace}")]
    WriteSecret {
        /// `secret/<name>`.
        object: String,
        /// Its namespace.
        namespace: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Mints the agent's first management token: a bound, expiring token for its
/// ServiceAccount, in the Opaque Secret `<cluster>-fledge-agent-token` with the CA the agent
/// trusts the management plane by (the namespace's `kube-root-ca.crt`, else the kubeconfig's).
/// A token not yet due for renewal is kept, so that applying again changes nothing; a legacy
/// token Secret (which never expires) is replaced. The Secret is owned by the FledgeCluster
/// (`uid`), like the rest of the agent's access.
pub async fn mint_agent_token(
    target: &Target,
    c: &CheckedCluster,
    duration: Duration,
    uid: Option<&str>,
) -> Result<Applied, MintError> {
    let names = Names::new(c.name.as_str());
    let ns = c.namespace.as_str();
    let object = label("Secret", "", &names.agent_token);
    let secrets: Api<Secret> = Api::namespaced(target.client.clone(), ns);
    let existing = secrets
        .get_opt(&names.agent_token)
        .await
        .map_err(|source| MintError::ReadSecret {
            object: object.clone(),
            namespace: ns.to_string(),
            source,
        })?;
    let legacy = existing
        .as_ref()
        .is_some_and(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"));
    let current = existing.as_ref().filter(|_| !legacy).and_then(|s| {
        let token = s.data.as_ref()?.get("token")?;
        claims(&String::from_utf8_lossy(&token.0))
    });
    if let (Some(s), Some(claims)) = (&existing, current)
        && !renewal_due(&claims, jiff::Timestamp::now().as_second())
    {
        return Ok(Applied {
            object,
            outcome: Outcome::Unchanged,
            resource_version: s.metadata.resource_version.clone(),
            namespace: Some(ns.to_string()),
        });
    }
    if legacy {
        secrets
            .delete(&names.agent_token, &Default::default())
            .await
            .map_err(|source| MintError::DeleteLegacySecret {
                object: object.clone(),
                namespace: ns.to_string(),
                source,
            })?;
    }
    let token = request(&target.client, ns, &names.agent, duration)
        .await
        .map_err(|source| MintError::RequestToken {
            service_account: names.agent.clone(),
            namespace: ns.to_string(),
            source,
        })?;
    let root_ca = Api::<ConfigMap>::namespaced(target.client.clone(), ns)
        .get_opt("kube-root-ca.crt")
        .await
        .map_err(|source| MintError::ReadRootCa {
            namespace: ns.to_string(),
            source,
        })?
        .and_then(|cm| cm.data?.get("ca.crt").cloned());
    let Some(ca) = root_ca.or_else(|| target.ca_certs.as_deref().map(pem)) else {
        return Err(MintError::NoCa {
            object,
            server: target.server.clone(),
            namespace: ns.to_string(),
        });
    };
    let mut secret = Secret::default();
    secret.metadata.name = Some(names.agent_token.clone());
    secret.metadata.namespace = Some(ns.to_string());
    secret.metadata.labels = Some(
        [
            ("cluster.x-k8s.io/cluster-name", c.name.as_str()),
            ("app.kubernetes.io/managed-by", "fledge"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    if let Some(uid) = uid {
        secret.metadata.owner_references = Some(vec![OwnerReference {
            api_version: crate::spec::API_VERSION.into(),
            kind: "FledgeCluster".into(),
            name: c.name.to_string(),
            uid: uid.to_string(),
            ..Default::default()
        }]);
    }
    secret.type_ = Some("Opaque".into());
    secret.data = Some(
        [
            ("token".to_string(), ByteString(token.into_bytes())),
            ("ca.crt".to_string(), ByteString(ca.into_bytes())),
        ]
        .into(),
    );
    let pp = PostParams::default();
    let (written, outcome) = match existing.filter(|_| !legacy) {
        Some(old) => {
            secret.metadata.resource_version = old.metadata.resource_version;
            (
                secrets.replace(&names.agent_token, &pp, &secret).await,
                Outcome::Configured,
            )
        }
        None => (secrets.create(&pp, &secret).await, Outcome::Created),
    };
    let written = written.map_err(|source| MintError::WriteSecret {
        object: object.clone(),
        namespace: ns.to_string(),
        source,
    })?;
    Ok(Applied {
        object,
        outcome,
        resource_version: written.metadata.resource_version,
        namespace: Some(ns.to_string()),
    })
}

/// DER certificates as a PEM bundle.
fn pem(ders: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", e(r#"{"alg":"RS256"}"#), e(claims))
    }

    #[test]
    fn claims_are_read_from_the_payload_and_a_token_without_them_has_none() {
        let c = claims(&jwt(r#"{"iat":1000,"exp":5000,"sub":"x"}"#)).unwrap();
        assert_eq!(
            c,
            Claims {
                issued_at: 1000,
                expires: 5000
            }
        );
        assert_eq!(c.lifetime(), Duration::from_secs(4000));
        // A legacy token has no exp; garbage has nothing.
        assert_eq!(claims(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(claims("not-a-jwt"), None);
        assert_eq!(claims("a.!!!.c"), None);
    }

    #[test]
    fn a_token_is_renewed_after_80_percent_of_its_lifetime_or_a_day() {
        let c = Claims {
            issued_at: 0,
            expires: 1000,
        };
        assert!(!renewal_due(&c, 799));
        assert!(renewal_due(&c, 800));
        let week = Claims {
            issued_at: 0,
            expires: 7 * 86400,
        };
        assert!(!renewal_due(&week, 86399));
        assert!(renewal_due(&week, 86400));
    }
}
