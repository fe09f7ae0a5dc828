//! Cluster API Provider MAAS (CAPMAAS, Spectro Cloud). Its API stays `v1beta1` under both contracts.

use serde_json::Value;

use super::{InfraApi, InfraProvider, MachineRules, Need, block_json, text};
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
    fn block(&self, infra: &Infrastructure) -> Option<Value> {
        block_json(infra.maas.as_ref())
    }
    /// CAPMAAS v0.9.0 `config/default/credentials.yaml`.
    fn credential_variables(&self) -> &'static [&'static str] {
        &["MAAS_ENDPOINT", "MAAS_API_KEY"]
    }
    fn external_cloud_provider(&self) -> bool {
        false
    }
    fn needs_endpoint(&self) -> bool {
        true
    }
    /// CAPMAAS publishes the control-plane endpoint as a DNS record in MAAS, holding the addresses
    /// of the control-plane machines (`Cluster.spec.controlPlaneEndpoint.host` is the record's
    /// name); nothing else serves it. An IP address, or a name outside the MAAS zone, never
    /// reaches those machines and `kubeadm init` fails on it.
    fn validate_endpoint_host(&self, infra: &Infrastructure, host: &str) -> Result<(), String> {
        let Some(zone) = infra.maas.as_ref().map(|b| b.dns_domain.as_str()) else {
            return Ok(());
        };
        // DNS names compare without regard to case.
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let zone_lc = zone.trim_end_matches('.').to_ascii_lowercase();
        let within = name
            .strip_suffix(zone_lc.as_str())
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|head| !head.is_empty());
        if host.parse::<std::net::IpAddr>().is_err() && within {
            return Ok(());
        }
        Err(format!(
            "must be a DNS name in the MAAS zone spec.infrastructure.maas.dnsDomain ({zone}), such as <cluster>.{zone} (got {host:?}): CAPMAAS publishes the control-plane endpoint as a MAAS DNS record holding the control-plane machines' addresses, and nothing else serves it"
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn infra(zone: &str) -> Infrastructure {
        serde_json::from_value(serde_json::json!({
            "provider": "maas",
            "maas": {"dnsDomain": zone, "image": "custom/u-2404"}
        }))
        .unwrap()
    }

    #[test]
    fn the_endpoint_is_a_name_inside_the_maas_zone_in_any_case() {
        let i = infra("maas.example.invalid");
        for ok in [
            "api.maas.example.invalid",
            "API.Maas.Example.Invalid",
            "a.b.maas.example.invalid",
        ] {
            assert_eq!(Maas.validate_endpoint_host(&i, ok), Ok(()), "{ok}");
        }
        for bad in [
            "10.0.0.10",
            "fd00::10",
            "maas.example.invalid",
            "xmaas.example.invalid",
            "api.corp.example.invalid",
        ] {
            let e = Maas.validate_endpoint_host(&i, bad).unwrap_err();
            assert!(
                e.contains("must be a DNS name in the MAAS zone"),
                "{bad}: {e}"
            );
        }
    }
}
