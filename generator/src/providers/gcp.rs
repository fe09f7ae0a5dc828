//! Cluster API Provider GCP (CAPG). CAPG serves only `v1beta1`, even with a v1beta2 core.

use serde_json::Value;

use super::{InfraApi, InfraProvider, MachineRules, Need, UnsetImage, block_json, text};
use crate::spec::{CapiVersion, Infrastructure, Problems, check_dns_label, check_dns_subdomain};

pub(super) struct Gcp;

impl InfraProvider for Gcp {
    fn api(&self, capi: CapiVersion) -> InfraApi {
        InfraApi {
            api_version: "infrastructure.cluster.x-k8s.io/v1beta1",
            cluster_kind: "GCPCluster",
            machine_template_kind: "GCPMachineTemplate",
            crd_dir: match capi {
                CapiVersion::V1beta2 => "cluster-api-provider-gcp/v1.12.0",
                CapiVersion::V1beta1 => "cluster-api-provider-gcp/v1.8.1",
            },
        }
    }
    fn machine_rules(&self) -> MachineRules {
        MachineRules {
            cpus: Need::Unused,
            memory_mib: Need::Unused,
            disk_gib: (Need::Optional, 10),
            instance_type: Need::Unused,
            vm_size: Need::Unused,
            machine_type: Need::Required,
        }
    }
    fn block(&self, infra: &Infrastructure) -> Option<Value> {
        block_json(infra.gcp.as_ref())
    }
    /// CAPG v1.12.0 `config/default/credentials.yaml`.
    fn credential_variables(&self) -> &'static [&'static str] {
        &["GCP_B64ENCODED_CREDENTIALS"]
    }
    fn external_cloud_provider(&self) -> bool {
        true
    }
    fn unset_image(&self, infra: &Infrastructure) -> Option<UnsetImage> {
        infra
            .gcp
            .as_ref()
            .is_some_and(|b| b.image.is_none())
            .then_some(UnsetImage {
                field: "spec.infrastructure.gcp.image",
                what: "the self-link",
            })
    }
    fn validate_block(&self, infra: &Infrastructure, p: &mut Problems) {
        let Some(b) = &infra.gcp else { return };
        let project_ok =
            (6..=30).contains(&b.project.len()) && check_dns_label(&b.project, 30).is_ok();
        if !project_ok {
            p.push("spec.infrastructure.gcp.project", format!("must be a GCP project id: 6 to 30 lower-case letters, digits or '-' (got {:?})", b.project));
        }
        p.check(
            "spec.infrastructure.gcp.region",
            check_dns_label(&b.region, 63),
        );
        if let Some(n) = &b.network {
            p.check("spec.infrastructure.gcp.network", check_dns_label(n, 63));
        }
        text(p, "spec.infrastructure.gcp.image", b.image.as_ref(), 1024);
        p.check(
            "spec.infrastructure.gcp.credentialsSecret",
            check_dns_subdomain(&b.credentials_secret),
        );
    }
}
