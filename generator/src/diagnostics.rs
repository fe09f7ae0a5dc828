//! What both binaries report on stderr besides their output: the error chain they exit with,
//! a request's warnings, and the logging setup.

use std::path::Path;

use crate::spec::{self, CheckedCluster};

/// An error and its causes, each once, as both binaries print them before exiting non-zero.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut causes = causes(err.as_ref()).into_iter();
    let mut msg = format!("error: {}", causes.next().unwrap_or_default());
    for cause in causes {
        msg.push_str(&format!("\n  caused by: {cause}"));
    }
    msg
}

/// `err` and its sources, each as people read it. Errors carry what failed in their message and
/// why in their source ([`std::error::Error::source`]); this is where a source is shown. A
/// Kubernetes API error reads `HTTP <code> <reason>: <message>` (kube's own text repeats the
/// status as debug output, and its source is that same status).
pub fn causes(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(kube::Error::Api(s)) = e.downcast_ref::<kube::Error>() {
            out.push(format!("HTTP {} {}: {}", s.code, s.reason, s.message));
            break;
        }
        out.push(e.to_string());
        next = e.source();
    }
    out
}

/// Installs the tracing subscriber both binaries use: logs on stderr (stdout carries data),
/// filtered by `FLEDGE_LOG` (env-filter syntax), else `default`.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEDGE_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}

/// Prints what the request lacks that a real node needs, when it is not an error (on stderr).
pub fn print_warnings(request: &Path, checked: &CheckedCluster) {
    for w in spec::warnings(checked) {
        eprintln!("warning: {}: {w}", request.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read Cluster c1")]
    struct Reading(#[source] kube::Error);

    #[test]
    fn a_kubernetes_api_error_is_shown_once_as_people_read_it() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "clusters is forbidden"
        }))
        .unwrap();
        let e = Reading(kube::Error::Api(Box::new(status)));
        assert_eq!(
            causes(&e),
            [
                "cannot read Cluster c1",
                "HTTP 403 Forbidden: clusters is forbidden"
            ]
        );
        let chain = error_chain(&anyhow::Error::new(e).context("pivot"));
        assert_eq!(
            chain,
            "error: pivot\n  caused by: cannot read Cluster c1\n  caused by: HTTP 403 Forbidden: clusters is forbidden"
        );
    }
}
