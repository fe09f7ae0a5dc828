//! What the agent knows of clusterctl's provider repository, and does as `clusterctl init`
//! would: the layout of a local repository (`<name>/<version>/components.yaml` and
//! `metadata.yaml`) and a provider's components prepared from it ([`components`]), and provider
//! versions fetched into that layout from a release URL, pinned by sha256 ([`fetch`]); clusterctl's inventory of installed providers ([`inventory`]).
//! Installing them into the cluster is a phase ([`crate::phases::providers`]).

pub mod components;
pub mod fetch;
pub mod inventory;
