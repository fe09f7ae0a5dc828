//! Cluster API Provider vSphere (CAPV).

use super::{InfraApi, InfraProvider, MachineRules, Need, text};
use crate::spec::{
    CapiVersion, Infrastructure, Problems, check_dns_subdomain, check_host, check_text,
};

pub(super) struct Vsphere;

impl InfraProvider for Vsphere {
    fn api(&self, capi: CapiVersion) -> InfraApi {
        match capi {
            CapiVersion::V1beta2 => InfraApi {
                api_version: "infrastructure.cluster.x-k8s.io/v1beta2",
                cluster_kind: "VSphereCluster",
                machine_template_kind: "VSphereMachineTemplate",
                crd_dir: "cluster-api-provider-vsphere/v1.16.1",
            },
            CapiVersion::V1beta1 => InfraApi {
                api_version: "infrastructure.cluster.x-k8s.io/v1beta1",
                cluster_kind: "VSphereCluster",
                machine_template_kind: "VSphereMachineTemplate",
                crd_dir: "cluster-api-provider-vsphere/v1.12.0",
            },
        }
    }
    fn machine_rules(&self) -> MachineRules {
        MachineRules {
            cpus: Need::Required,
            memory_mib: Need::Required,
            disk_gib: (Need::Required, 20),
            instance_type: Need::Unused,
            vm_size: Need::Unused,
            machine_type: Need::Unused,
        }
    }
    fn external_cloud_provider(&self) -> bool {
        true
    }
    fn needs_endpoint(&self) -> bool {
        true
    }
    fn validate_block(&self, infra: &Infrastructure, p: &mut Problems) {
        let Some(b) = &infra.vsphere else { return };
        let at = |f: &str| format!("spec.infrastructure.vsphere.{f}");
        p.check(&at("server"), check_host(&b.server));
        if let Some(t) = &b.thumbprint {
            let ok = t
                .split(':')
                .all(|o| o.len() == 2 && o.bytes().all(|c| c.is_ascii_hexdigit()))
                && [20, 32].contains(&t.split(':').count());
            if !ok {
                p.push(
                    at("thumbprint"),
                    format!(
                        "must be a SHA-1 or SHA-256 fingerprint as colon-separated hex (got {t:?})"
                    ),
                );
            }
        }
        for (f, v) in [
            ("datacenter", &b.datacenter),
            ("datastore", &b.datastore),
            ("network", &b.network),
            ("template", &b.template),
        ] {
            p.check(&at(f), check_text(v, 2048));
        }
        text(p, &at("resourcePool"), b.resource_pool.as_ref(), 2048);
        text(p, &at("folder"), b.folder.as_ref(), 2048);
        p.check(
            &at("credentialsSecret"),
            check_dns_subdomain(&b.credentials_secret),
        );
    }
}
