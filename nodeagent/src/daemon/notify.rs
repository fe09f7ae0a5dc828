//! systemd's notification protocol (`sd_notify`): READY=1, WATCHDOG=1, STATUS=... on the
//! datagram socket named by `$NOTIFY_SOCKET` (path or abstract `@name`). Without the variable
//! (not under systemd) every call is a no-op.

use crate::state::journal::chain;
use std::os::unix::net::UnixDatagram;

/// A handle on the notification socket.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<String>,
}

impl Notifier {
    /// From the environment.
    pub fn from_env() -> Notifier {
        Notifier {
            target: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }

    /// Sends one message (`KEY=VALUE` lines). Errors are logged, never fatal.
    pub fn send(&self, msg: &str) {
        let Some(target) = &self.target else { return };
        let result = UnixDatagram::unbound().and_then(|sock| {
            if let Some(name) = target.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sock.send_to_addr(msg.as_bytes(), &addr)
            } else {
                sock.send_to(msg.as_bytes(), target)
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %chain(&e), "cannot notify systemd");
        }
    }

    /// The watchdog interval systemd asked for, halved (`WATCHDOG_USEC`).
    pub fn watchdog_interval() -> Option<std::time::Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        Some(std::time::Duration::from_micros(usec / 2))
    }
}
