//! The agent's management credential: a bound, expiring service-account token from the
//! TokenRequest API, never a legacy token Secret (which never expires). `fledge apply` mints the
//! first one into the Opaque Secret `<cluster>-fledge-agent-token` (keys `token` and `ca.crt`,
//! which CP-A's machine files read); the leading agent renews it for its own ServiceAccount,
//! by name, before it expires, by kubelet's rule for projected tokens: once 80% of its lifetime
//! has passed, or it is a day old.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

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
