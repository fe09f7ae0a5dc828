//! fledge's generator: turns a `FledgeCluster` request into the management-plane objects,
//! CP-A's cloud-init and seed images.
//!
//! The flow is parse → validate → render: [`spec::load_request`] gives a
//! [`spec::CheckedCluster`], the only input [`management::objects`] and friends accept.

pub mod apply;
pub mod cli;
pub mod cloudinit;
pub mod management;
pub mod output;
pub mod process;
pub mod providers;
pub mod render;
pub mod schema;
pub mod seed;
pub mod spec;
pub mod token;
pub mod wait;
pub mod workload;
pub mod yaml;
