//! What both binaries' `main` does around running its command line (`fledge` here,
//! `fledge-agent` in the node agent): logging on stderr, and the error chain printed before
//! exiting non-zero.

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
