//! What both binaries report on stderr besides their output: the error chain they exit with,
//! a request's warnings, and the logging setup.

use std::path::Path;

use crate::spec::{self, CheckedCluster};

/// An error and its causes, each once, as both binaries print them before exiting non-zero.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut msg = format!("error: {err}");
    for cause in err.chain().skip(1) {
        msg.push_str(&format!("\n  caused by: {cause}"));
    }
    msg
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
