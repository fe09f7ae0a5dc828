//! Cluster API Provider Azure (CAPZ). CAPZ serves only `v1beta1`, even with a v1beta2 core.

use serde_json::Value;

use super::{
    InfraApi, InfraProvider, MachineRules, Need, TemplateSecretFile, UnsetImage, block_json,
};
use crate::spec::{CapiVersion, Infrastructure, Problems, check_dns_subdomain, check_text};

pub(super) struct Azure;

impl InfraProvider for Azure {
    fn api(&self, capi: CapiVersion) -> InfraApi {
        InfraApi {
            api_version: "infrastructure.cluster.x-k8s.io/v1beta1",
            cluster_kind: "AzureCluster",
            machine_template_kind: "AzureMachineTemplate",
            crd_dir: match capi {
                CapiVersion::V1beta2 => "cluster-api-provider-azure/v1.26.0",
                CapiVersion::V1beta1 => "cluster-api-provider-azure/v1.18.1",
            },
        }
    }
    fn machine_rules(&self) -> MachineRules {
        MachineRules {
            cpus: Need::Unused,
            memory_mib: Need::Unused,
            disk_gib: (Need::Optional, 30),
            instance_type: Need::Unused,
            vm_size: Need::Required,
            machine_type: Need::Unused,
        }
    }
    fn block(&self, infra: &Infrastructure) -> Option<Value> {
        block_json(infra.azure.as_ref())
    }
    /// CAPZ v1.26.0's AzureMachineTemplate controller writes `<template>-azure-json` with both
    /// keys (`controllers/helpers.go` `GetCloudProviderSecret`); its templates mount them at
    /// `/etc/kubernetes/azure.json`, where cloud-provider-azure and the kubelet read them.
    fn template_secret_file(&self) -> Option<TemplateSecretFile> {
        Some(TemplateSecretFile {
            path: "/etc/kubernetes/azure.json",
            suffix: "-azure-json",
            control_plane_key: "control-plane-azure.json",
            worker_key: "worker-node-azure.json",
        })
    }
    fn external_cloud_provider(&self) -> bool {
        true
    }
    fn unset_image(&self, infra: &Infrastructure) -> Option<UnsetImage> {
        infra
            .azure
            .as_ref()
            .is_some_and(|b| b.image_id.is_none())
            .then_some(UnsetImage {
                field: "spec.infrastructure.azure.imageID",
                what: "the resource id",
            })
    }
    fn validate_block(&self, infra: &Infrastructure, p: &mut Problems) {
        let Some(b) = &infra.azure else { return };
        let loc_ok = !b.location.is_empty()
            && b.location.len() <= 64
            && b.location
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !loc_ok {
            p.push(
                "spec.infrastructure.azure.location",
                format!(
                    "must be an Azure location such as westeurope (got {:?})",
                    b.location
                ),
            );
        }
        if !is_uuid(&b.subscription_id) {
            p.push(
                "spec.infrastructure.azure.subscriptionID",
                format!(
                    "must be a subscription id (a UUID) (got {:?})",
                    b.subscription_id
                ),
            );
        }
        if let Some(id) = &b.image_id {
            let ok = id.len() <= 1024
                && id.to_ascii_lowercase().starts_with("/subscriptions/")
                && !id
                    .bytes()
                    .any(|c| c.is_ascii_whitespace() || c.is_ascii_control());
            if !ok {
                p.push(
                    "spec.infrastructure.azure.imageID",
                    format!(
                        "must be an Azure resource id starting with /subscriptions/ (a managed image or a compute gallery image version) (got {id:?})"
                    ),
                );
            }
        }
        if let Some(rg) = &b.resource_group {
            let ok = check_text(rg, 90).is_ok()
                && rg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-()".contains(&c));
            if !ok {
                p.push(
                    "spec.infrastructure.azure.resourceGroup",
                    format!("must be a resource group name (got {rg:?})"),
                );
            }
        }
        p.check(
            "spec.infrastructure.azure.identityName",
            check_dns_subdomain(&b.identity_name),
        );
    }
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}
