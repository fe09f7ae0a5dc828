//! Cluster API Provider vSphere (CAPV).

use serde_json::Value;

use super::{
    CloudSecret, EndpointVip, InfraApi, InfraProvider, MachineRules, Need, block_json, text,
};
use crate::spec::{
    CapiVersion, Infrastructure, KubeVip, Problems, check_dns_subdomain, check_host, check_text,
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
    fn block(&self, infra: &Infrastructure) -> Option<Value> {
        block_json(infra.vsphere.as_ref())
    }
    /// CAPV v1.16.1 `config/base/credentials.yaml`.
    fn credential_variables(&self) -> &'static [&'static str] {
        &["VSPHERE_USERNAME", "VSPHERE_PASSWORD"]
    }
    fn external_cloud_provider(&self) -> bool {
        true
    }
    fn needs_endpoint(&self) -> bool {
        true
    }
    fn validate_endpoint_host(&self, _infra: &Infrastructure, host: &str) -> Result<(), String> {
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(());
        }
        Err(format!(
            "must be an IP address for vsphere (got {host:?}): kube-vip on the control-plane nodes announces it as a virtual IP on their network, and vSphere has no load balancer or DNS record to serve a name"
        ))
    }
    /// cloud-provider-vsphere reads vCenter's credentials from a Secret holding
    /// `<server>.username` and `<server>.password`; CAPV's template names it
    /// `kube-system/cloud-provider-vsphere-credentials` and fills it with the cluster's
    /// credentials, which here are `credentialsSecret`'s `username` and `password`. The `cloud`
    /// layer's `vsphere.conf` names it (`secretName`, `secretNamespace`).
    fn cloud_secret(&self, infra: &Infrastructure) -> Option<CloudSecret> {
        let b = infra.vsphere.as_ref()?;
        Some(CloudSecret {
            source: b.credentials_secret.clone(),
            namespace: "kube-system",
            name: "cloud-provider-vsphere-credentials",
            keys: vec![
                ("username", format!("{}.username", b.server)),
                ("password", format!("{}.password", b.server)),
            ],
        })
    }
    fn endpoint_vip(&self, infra: &Infrastructure) -> Option<EndpointVip> {
        let kv = infra
            .vsphere
            .as_ref()
            .and_then(|b| b.kube_vip.clone())
            .unwrap_or_default();
        Some(EndpointVip {
            image: kv
                .image
                .unwrap_or_else(|| KubeVip::DEFAULT_IMAGE.to_string()),
            interface: kv.interface,
        })
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
        if let Some(kv) = &b.kube_vip {
            if let Some(image) = &kv.image {
                p.check(&at("kubeVip.image"), check_image(image));
            }
            if let Some(name) = &kv.interface {
                p.check(&at("kubeVip.interface"), check_interface(name));
            }
        }
    }
}

/// A container image reference: no whitespace, no scheme, a repository before any tag.
fn check_image(s: &str) -> Result<(), String> {
    check_text(s, 512)?;
    let ok = !s.contains(char::is_whitespace)
        && !s.contains("://")
        && !s.starts_with([':', '@', '/'])
        && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a container image reference such as {} (got {s:?})",
            KubeVip::DEFAULT_IMAGE
        ))
    }
}

/// A Linux network interface name: 1 to 15 bytes, no '/', ':' or whitespace, not '.' or '..'.
fn check_interface(s: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"/:".contains(&b))
        && s != "."
        && s != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a network interface name of 1 to 15 characters without '/', ':' or spaces, such as ens192 (got {s:?})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_must_be_an_address_and_kube_vip_fields_are_checked() {
        let i: Infrastructure =
            serde_json::from_value(serde_json::json!({"provider": "vsphere"})).unwrap();
        for ok in ["10.0.0.100", "fd00::100"] {
            assert_eq!(Vsphere.validate_endpoint_host(&i, ok), Ok(()), "{ok}");
        }
        let e = Vsphere
            .validate_endpoint_host(&i, "api.example.invalid")
            .unwrap_err();
        assert!(e.contains("must be an IP address"), "{e}");
        for ok in [
            "ghcr.io/kube-vip/kube-vip:v0.6.4",
            "kube-vip@sha256:0a",
            "registry.local:5000/kv",
        ] {
            assert_eq!(check_image(ok), Ok(()), "{ok}");
        }
        for bad in ["", "https://x/kv", "kube vip", ":v1"] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
        for ok in ["ens192", "eth0", "bond0.100"] {
            assert_eq!(check_interface(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a/b", "en:1", "averyverylongname0", "..", "e th"] {
            assert!(check_interface(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kube_vip_defaults_to_capvs_image_and_the_default_route() {
        let i: Infrastructure = serde_json::from_value(serde_json::json!({
            "provider": "vsphere",
            "vsphere": {"server": "vc", "datacenter": "d", "datastore": "s", "network": "n",
                        "template": "t", "credentialsSecret": "c"}
        }))
        .unwrap();
        assert_eq!(
            Vsphere.endpoint_vip(&i),
            Some(EndpointVip {
                image: KubeVip::DEFAULT_IMAGE.into(),
                interface: None
            })
        );
    }
}
