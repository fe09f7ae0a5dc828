//! fledge's generator: turns a `FledgeCluster` request into the management-plane objects,
//! CP-A's cloud-init and seed images.
//!
//! The flow is parse → validate → render: [`spec::load_request`] gives a
//! [`spec::CheckedCluster`], the only input [`management::objects`] and friends accept.
//!
//! Where things live:
//! - the request: [`spec`] (types, parsing, validation; [`schema`] checks against CRD schemas,
//!   [`yaml`] reads outside YAML safely), [`providers`] (one module per infrastructure provider);
//! - rendering: [`render`] (the templates of `templates/`, embedded by `build.rs`,
//!   [`render::context`], the values they read, and [`render::pipeline`], a request to every
//!   output file), [`management`], [`workload`] and [`cloudinit`] (the objects and CP-A's seed
//!   content), [`capi`] (Cluster API's groups and types, template naming), [`seed`] (seed
//!   images), [`output`] (the atomic output directory);
//! - the management cluster: [`target`] (a client from a kubeconfig), [`ssa`] (server-side
//!   apply, shared with the agent), [`apply`], [`delete`], [`wait`], [`token`];
//! - the `fledge` binary: [`cli`] (clap definition and dispatch), [`commands`] (each
//!   subcommand's body), [`diagnostics`] (error chain, warnings, logging; the agent uses it too).

pub mod apply;
pub mod capi;
pub mod cli;
pub mod cloudinit;
pub mod commands;
pub mod delete;
pub mod diagnostics;
pub mod management;
pub mod output;
pub mod providers;
pub mod render;
pub mod schema;
pub mod seed;
pub mod spec;
pub mod ssa;
pub mod target;
pub mod token;
pub mod wait;
pub mod workload;
pub mod yaml;
