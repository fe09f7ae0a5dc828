//! Cluster API Provider AWS (CAPA). CAPA serves `v1beta2` of its own API under both contracts.

use serde_json::Value;

use super::{InfraApi, InfraProvider, MachineRules, Need, UnsetImage, block_json, text};
use crate::spec::{CapiVersion, Infrastructure, Problems, check_dns_subdomain};

pub(super) struct Aws;

const IDENTITY_KINDS: [&str; 3] = [
    "AWSClusterStaticIdentity",
    "AWSClusterRoleIdentity",
    "AWSClusterControllerIdentity",
];

impl InfraProvider for Aws {
    fn api(&self, capi: CapiVersion) -> InfraApi {
        InfraApi {
            api_version: "infrastructure.cluster.x-k8s.io/v1beta2",
            cluster_kind: "AWSCluster",
            machine_template_kind: "AWSMachineTemplate",
            crd_dir: match capi {
                CapiVersion::V1beta2 => "cluster-api-provider-aws/v2.11.1",
                CapiVersion::V1beta1 => "cluster-api-provider-aws/v2.7.1",
            },
        }
    }
    fn machine_rules(&self) -> MachineRules {
        MachineRules {
            cpus: Need::Unused,
            memory_mib: Need::Unused,
            disk_gib: (Need::Optional, 8),
            instance_type: Need::Required,
            vm_size: Need::Unused,
            machine_type: Need::Unused,
        }
    }
    fn block(&self, infra: &Infrastructure) -> Option<Value> {
        block_json(infra.aws.as_ref())
    }
    /// CAPA v2.11.1 `config/default/credentials.yaml`.
    fn credential_variables(&self) -> &'static [&'static str] {
        &["AWS_B64ENCODED_CREDENTIALS"]
    }
    fn global_identity(&self, infra: &Infrastructure) -> Option<(String, String)> {
        let id = infra.aws.as_ref()?.identity_ref.as_ref()?;
        // CAPA's identity kinds are cluster-scoped (its CRDs' resource names).
        let resource = match id.kind.as_str() {
            "AWSClusterStaticIdentity" => "awsclusterstaticidentities",
            "AWSClusterRoleIdentity" => "awsclusterroleidentities",
            "AWSClusterControllerIdentity" => "awsclustercontrolleridentities",
            _ => return None,
        };
        Some((resource.to_string(), id.name.clone()))
    }
    fn external_cloud_provider(&self) -> bool {
        true
    }
    /// CAPA's templates name nodes after the EC2 private DNS name.
    fn node_name(&self) -> Option<&'static str> {
        Some("{{ ds.meta_data.local_hostname }}")
    }
    /// CAPA's default instance profiles, `<role>.cluster-api-provider-aws.sigs.k8s.io`.
    fn default_instance_profile(&self, control_plane: bool) -> Option<&'static str> {
        Some(if control_plane {
            "control-plane"
        } else {
            "nodes"
        })
    }
    /// EC2's limit.
    fn user_data_limit(&self) -> usize {
        16384
    }
    fn unset_image(&self, infra: &Infrastructure) -> Option<UnsetImage> {
        infra
            .aws
            .as_ref()
            .is_some_and(|b| b.ami.is_none())
            .then_some(UnsetImage {
                field: "spec.infrastructure.aws.ami",
                what: "the AMI id",
            })
    }
    fn validate_block(&self, infra: &Infrastructure, p: &mut Problems) {
        let Some(b) = &infra.aws else { return };
        let region_ok = !b.region.is_empty()
            && b.region.len() <= 32
            && b.region
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if !region_ok {
            p.push(
                "spec.infrastructure.aws.region",
                format!(
                    "must be an AWS region such as eu-west-1 (got {:?})",
                    b.region
                ),
            );
        }
        if let Some(ami) = &b.ami {
            let ok = ami.starts_with("ami-")
                && ami.len() <= 21
                && ami[4..].bytes().all(|c| c.is_ascii_hexdigit());
            if !ok {
                p.push(
                    "spec.infrastructure.aws.ami",
                    format!("must be an AMI id such as ami-0123456789abcdef0 (got {ami:?})"),
                );
            }
        }
        text(
            p,
            "spec.infrastructure.aws.iamInstanceProfile",
            b.iam_instance_profile.as_ref(),
            128,
        );
        if let Some(id) = &b.identity_ref {
            if !IDENTITY_KINDS.contains(&id.kind.as_str()) {
                p.push(
                    "spec.infrastructure.aws.identityRef.kind",
                    format!(
                        "must be one of {} (got {:?})",
                        IDENTITY_KINDS.join(", "),
                        id.kind
                    ),
                );
            }
            p.check(
                "spec.infrastructure.aws.identityRef.name",
                check_dns_subdomain(&id.name),
            );
        }
    }
}
