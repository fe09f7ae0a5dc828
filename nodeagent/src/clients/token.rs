//! Keeping the management token alive ([`fledge_generator::token`]): the leader renews its
//! token for its own ServiceAccount before it expires and writes it to its token file (the
//! management client reads the file again within a minute); `Steady` keeps the cluster's copy,
//! `<cluster>-fledge-agent-token` in the local cluster, equal to that file; and a follower takes
//! a newer token from that copy, so that its spec sync keeps working and it can lead.
//!
//! A legacy token (no expiry claim) is never renewed: it never expires. Only a token that
//! expires later than the one in the file is ever taken, so an older copy never replaces a
//! newer token.

use std::path::Path;

use fledge_generator::token::{self, Claims};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::state::fsutil;

/// Errors renewing or taking a token.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The token file cannot be read or written.
    #[error("{path}: cannot {op}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// read or write.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The API server refused or could not be reached.
    #[error("cannot {what}")]
    Request {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The API server answered without a token.
    #[error("the token request for {0} returned no token")]
    Empty(String),
}

fn read(path: &Path) -> Result<String, RenewError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| RenewError::File {
            path: path.to_path_buf(),
            op: "read",
            source,
        })
}

fn write(path: &Path, token: &str) -> Result<(), RenewError> {
    fsutil::write_atomic(path, token.as_bytes(), 0o600).map_err(|source| RenewError::File {
        path: path.to_path_buf(),
        op: "write",
        source,
    })
}

/// Renews the token in `token_file` when [`token::renewal_due`] at `now`: a new token for the
/// ServiceAccount `namespace/service_account`, for the same lifetime, written in place (0600,
/// atomically). `Ok(None)` when not due, or for a token that never expires.
pub async fn renew_if_due(
    management: &kube::Client,
    namespace: &str,
    service_account: &str,
    token_file: &Path,
    now: i64,
) -> Result<Option<Claims>, RenewError> {
    let Some(current) = token::claims(&read(token_file)?) else {
        return Ok(None);
    };
    if !token::renewal_due(&current, now) {
        return Ok(None);
    }
    let who = format!("{namespace}/{service_account}");
    let fresh = token::request(management, namespace, service_account, current.lifetime())
        .await
        .map_err(|source| RenewError::Request {
            what: format!("request a new token for the ServiceAccount {who}"),
            source,
        })?;
    let Some(claims) = token::claims(&fresh) else {
        return Err(RenewError::Empty(who));
    };
    write(token_file, &fresh)?;
    Ok(Some(claims))
}

/// Takes the token from the local cluster's copy (`namespace/secret`, key `token`) into
/// `token_file` when it expires later than the one there. `Ok(None)` when there is no copy or
/// it is not newer.
pub async fn take_from_cluster(
    local: &kube::Client,
    namespace: &str,
    secret: &str,
    token_file: &Path,
) -> Result<Option<Claims>, RenewError> {
    let copy = Api::<Secret>::namespaced(local.clone(), namespace)
        .get_opt(secret)
        .await
        .map_err(|source| RenewError::Request {
            what: format!("read the Secret {namespace}/{secret} in the local cluster"),
            source,
        })?;
    let Some(theirs) = copy
        .and_then(|s| s.data?.get("token").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
    else {
        return Ok(None);
    };
    let ours = read(token_file).ok();
    if ours.as_deref() == Some(theirs.as_str()) {
        return Ok(None);
    }
    let Some(claims) = token::claims(&theirs) else {
        return Ok(None);
    };
    if ours
        .as_deref()
        .and_then(token::claims)
        .is_some_and(|o| o.expires >= claims.expires)
    {
        return Ok(None);
    }
    write(token_file, &theirs)?;
    Ok(Some(claims))
}
