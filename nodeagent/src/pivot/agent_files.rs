//! Only CP-A runs the agent: the pivot removes the agent's files and install command from the
//! copies of the KubeadmControlPlane and of its machines' KubeadmConfigs. The rule lives in the
//! generator ([`fledge_generator::workload::strip_agent`]), which renders the scale-out's
//! KubeadmControlPlane in the same form.

pub use fledge_generator::workload::{AGENT_FILES, strip_agent as strip};
