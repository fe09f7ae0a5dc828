//! Cluster API Provider MAAS (CAPMAAS, Spectro Cloud). Its API stays `v1beta1` under both contracts.

use super::{InfraApi, InfraProvider, MachineRules, Need, text};
use crate::spec::{CapiVersion, Infrastructure, Problems, check_dns_subdomain, check_text};

pub(super) struct Maas;

impl InfraProvider for Maas {
    fn api(&self, capi: CapiVersion) -> InfraApi {
        InfraApi {
            api_version: "infrastructure.cluster.x-k8s.io/v1beta1",
            cluster_kind: "MaasCluster",
            machine_template_kind: "MaasMachineTemplate",
            crd_dir: match capi {
                CapiVersion::V1beta2 => "cluster-api-provider-maas/v0.9.0",
                CapiVersion::V1beta1 => "cluster-api-provider-maas/v0.6.0",
            },
        }
    }
    fn machine_rules(&self) -> MachineRules {
        MachineRules {
            cpus: Need::Required,
            memory_mib: Need::Required,
            disk_gib: (Need::Optional, 20),
            instance_type: Need::Unused,
            vm_size: Need::Unused,
            machine_type: Need::Unused,
        }
    }
    fn external_cloud_provider(&self) -> bool {
        false
    }
    fn needs_endpoint(&self) -> bool {
        true
    }
    fn validate_block(&self, infra: &Infrastructure, p: &mut Problems) {
        let Some(b) = &infra.maas else { return };
        p.check(
            "spec.infrastructure.maas.dnsDomain",
            check_dns_subdomain(&b.dns_domain),
        );
        p.check("spec.infrastructure.maas.image", check_text(&b.image, 256));
        text(
            p,
            "spec.infrastructure.maas.resourcePool",
            b.resource_pool.as_ref(),
            256,
        );
    }
}
