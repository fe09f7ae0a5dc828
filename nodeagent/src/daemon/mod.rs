//! The long-running service, `fledge-agent run`: its loop and the tasks it supervises
//! ([`run`]), the spec sync with the management plane ([`spec_sync`]), `/healthz` and
//! `/metrics` over what the tasks share ([`metrics`]), systemd's notifications ([`notify`]),
//! the leader election among the control-plane nodes' agents ([`leader`]). The phases it runs
//! are [`crate::phases`]; the management token it keeps alive is [`crate::clients::token`].

pub mod leader;
pub mod metrics;
pub mod notify;
pub mod run;
pub mod spec_sync;
