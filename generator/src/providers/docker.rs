//! CAPI's Docker test provider: `DockerCluster` (v1beta1) or its successor `DevCluster` with the
//! docker backend (v1beta2, where the `Docker*` kinds are deprecated).

use serde_json::Value;

use super::{InfraApi, InfraProvider, MachineRules, Need, block_json, text};
use crate::spec::{CapiVersion, Infrastructure, Problems};

pub(super) struct Docker;

impl InfraProvider for Docker {
    fn api(&self, capi: CapiVersion) -> InfraApi {
        match capi {
            CapiVersion::V1beta2 => InfraApi {
                api_version: "infrastructure.cluster.x-k8s.io/v1beta2",
                cluster_kind: "DevCluster",
                machine_template_kind: "DevMachineTemplate",
                crd_dir: "cluster-api/v1.13.5",
            },
            CapiVersion::V1beta1 => InfraApi {
                api_version: "infrastructure.cluster.x-k8s.io/v1beta1",
                cluster_kind: "DockerCluster",
                machine_template_kind: "DockerMachineTemplate",
                crd_dir: "cluster-api/v1.9.11",
            },
        }
    }
    fn machine_rules(&self) -> MachineRules {
        MachineRules {
            cpus: Need::Unused,
            memory_mib: Need::Unused,
            disk_gib: (Need::Unused, 0),
            instance_type: Need::Unused,
            vm_size: Need::Unused,
            machine_type: Need::Unused,
        }
    }
    fn block(&self, infra: &Infrastructure) -> Option<Value> {
        block_json(infra.docker.as_ref())
    }
    /// Optional: without `customImage`, CAPD uses `kindest/node:<version>`.
    fn requires_block(&self) -> bool {
        false
    }
    fn external_cloud_provider(&self) -> bool {
        false
    }
    /// CAPD runs only a cloud-config's `write_files` and `runcmd` and fails on any other
    /// module; its machines are containers.
    fn bootstrap_users(&self) -> bool {
        false
    }
    fn validate_block(&self, infra: &Infrastructure, p: &mut Problems) {
        if let Some(b) = &infra.docker {
            text(
                p,
                "spec.infrastructure.docker.customImage",
                b.custom_image.as_ref(),
                512,
            );
        }
    }
}
