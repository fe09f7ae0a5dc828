//! What the agent knows of clusterctl's provider repository, and does as `clusterctl init`
//! would: the layout of a local repository (`<name>/<version>/components.yaml` and
//! `metadata.yaml`) and a provider's components prepared from it ([`components`]), provider
//! versions fetched into that layout from a release URL, pinned by sha256 ([`fetch`]), and
//! clusterctl's inventory of installed providers ([`inventory`]). Installing them into the
//! cluster is a phase of the agent's (`ProvidersInstalled`).

pub mod components;
pub mod fetch;
pub mod inventory;
