//! The objects the agent creates in the workload cluster after the pivot (step 5 of the design):
//! per worker pool an infrastructure machine template, a KubeadmConfigTemplate and a
//! MachineDeployment (with Cluster API's autoscaler size annotations for an autoscaled pool),
//! then the control plane's machine template and the KubeadmControlPlane at the spec's replica
//! count, and last the MachineHealthChecks of the control plane and of each pool. Templates are named by their content
//! ([`capi::name_by_content`]), so a changed spec yields new templates and the objects
//! that point at them roll out; the same spec yields the same names. `fledge render` writes
//! them to `workload.yaml`; the agent applies the same list with server-side apply, so what a
//! user reads is what the agent creates.

use serde_json::{Value, json};

use crate::providers;
use crate::render::context::{self, Check, Context, Pool, StringMap};
use crate::render::{RenderError, Templates};
use crate::spec::{CheckedCluster, HealthCheck};
use crate::{capi, management};

/// Cluster API's annotation for the cluster-autoscaler's smallest size of a node group.
pub const AUTOSCALER_MIN_SIZE: &str = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size";
/// Cluster API's annotation for the cluster-autoscaler's largest size of a node group.
pub const AUTOSCALER_MAX_SIZE: &str = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size";

/// The object name of a worker pool's MachineDeployment and templates.
pub fn pool_name(cluster: &str, pool: &str) -> String {
    format!("{cluster}-{pool}")
}

/// Renders the post-pivot objects in apply order: each pool's templates before the
/// MachineDeployment that references them, the KubeadmControlPlane last.
pub fn objects(c: &CheckedCluster, templates: &Templates) -> Result<Vec<Value>, RenderError> {
    let mut ctx = Context::new(c, templates)?;
    let provider = providers::get(c.provider());
    let kind = provider.api(c.capi).machine_template_kind;
    let infra_template = providers::template_name(c.provider());
    let mut docs = Vec::new();
    for pool in &c.spec.workers {
        let name = pool_name(c.name.as_str(), &pool.name);
        let mut pctx = ctx.clone();
        pctx.names.derived.control_plane_template = name.clone();
        pctx.machine = context::machine(&pool.machine);
        pctx.aws_iam_role = provider.default_instance_profile(false);
        // An autoscaled pool: `replicas` is its initial size; the agent leaves it to the
        // autoscaler once the MachineDeployment exists (see the agent's day-2 plan).
        let annotations = pool.autoscaling.map(|a| {
            StringMap::default()
                .with(AUTOSCALER_MIN_SIZE, a.min.to_string())
                .with(AUTOSCALER_MAX_SIZE, a.max.to_string())
        });
        let selector = ctx
            .labels
            .clone()
            .with("cluster.x-k8s.io/deployment-name", name.as_str())
            .without("app.kubernetes.io/managed-by");
        let mut values = Pool {
            name: name.clone(),
            replicas: pool.replicas,
            selector,
            annotations,
            infrastructure_template: None,
            bootstrap_template: None,
        };
        pctx.pool = Some(values.clone());
        let mut infra = machine_template(templates, &infra_template, kind, &pctx)?;
        values.infrastructure_template = Some(capi::name_by_content(&name, c, &mut infra));
        docs.push(infra);
        pctx.pool = Some(values.clone());
        for mut bootstrap in
            templates.render_docs("workload/kubeadmconfigtemplate.yaml.j2", &pctx)?
        {
            values.bootstrap_template = Some(capi::name_by_content(&name, c, &mut bootstrap));
            docs.push(bootstrap);
        }
        pctx.pool = Some(values);
        docs.extend(templates.render_docs("workload/machinedeployment.yaml.j2", &pctx)?);
    }
    let mut cp = machine_template(templates, &infra_template, kind, &ctx)?;
    let base = management::Names::new(c.name.as_str()).control_plane_template;
    ctx.names.derived.control_plane_template = capi::name_by_content(&base, c, &mut cp);
    docs.push(cp);
    ctx.replicas = c.spec.control_plane.replicas;
    docs.extend(templates.render_docs("management/kubeadmcontrolplane.yaml.j2", &ctx)?);
    // Last, the health checks of what exists by now.
    for check in health_checks(c) {
        ctx.check = Some(check);
        docs.extend(templates.render_docs("workload/machinehealthcheck.yaml.j2", &ctx)?);
    }
    Ok(docs)
}

/// The MachineHealthChecks' values: the control plane's (its KubeadmControlPlane's machines,
/// label `cluster.x-k8s.io/control-plane`), then each pool's (label
/// `cluster.x-k8s.io/deployment-name`), named like what they check; none for a switched-off
/// check. They are rendered for the workload cluster only, where the agent applies them after
/// the pivot: on the management plane the KubeadmControlPlane has one machine, which Cluster
/// API never remediates once the control plane is initialized (docs/request.md, "Health checks").
fn health_checks(c: &CheckedCluster) -> Vec<Check> {
    let cluster = c.name.as_str();
    let selector = StringMap::default().with("cluster.x-k8s.io/cluster-name", cluster);
    let mut out = Vec::new();
    let cp = c
        .spec
        .control_plane
        .health_check
        .clone()
        .unwrap_or_default();
    if cp.enabled() {
        let max = cp
            .max_unhealthy
            .as_ref()
            .map_or(json!("100%"), |m| m.to_json());
        out.push(check(
            management::Names::new(cluster).control_plane,
            selector.clone().with("cluster.x-k8s.io/control-plane", ""),
            &cp,
            max,
        ));
    }
    for pool in &c.spec.workers {
        let hc = pool.health_check.clone().unwrap_or_default();
        if !hc.enabled() {
            continue;
        }
        let name = pool_name(cluster, &pool.name);
        let size = pool.autoscaling.map_or(pool.replicas, |a| a.max);
        let max = hc
            .max_unhealthy
            .as_ref()
            .map_or(json!(default_max_unhealthy(size)), |m| m.to_json());
        let selector = selector
            .clone()
            .with("cluster.x-k8s.io/deployment-name", name.as_str());
        out.push(check(name, selector, &hc, max));
    }
    out
}

/// A pool's default remediation limit: 40% of its size (Cluster API's example), at least one
/// machine, so that a pool of one or two is remediated too.
pub fn default_max_unhealthy(size: i64) -> i64 {
    (size * 40 / 100).max(1)
}

fn check(name: String, selector: StringMap, hc: &HealthCheck, max_unhealthy: Value) -> Check {
    Check {
        name,
        selector,
        ready_false_seconds: hc.ready_false_seconds(),
        ready_unknown_seconds: hc.ready_unknown_seconds(),
        node_startup_seconds: hc.node_startup_seconds(),
        max_unhealthy,
    }
}

/// The provider's machine template rendered with `ctx` (the provider's template file renders
/// the infrastructure cluster too).
fn machine_template(
    templates: &Templates,
    file: &str,
    kind: &str,
    ctx: &Context,
) -> Result<Value, RenderError> {
    templates
        .render_docs(file, ctx)?
        .into_iter()
        .find(|d| d["kind"] == kind)
        .ok_or_else(|| RenderError::MissingKind {
            name: file.to_string(),
            kind: kind.to_string(),
        })
}

// Every control-plane node runs the agent (one of them leads; see the agent's `leader`). The
// KubeadmControlPlane keeps the agent's files (its configuration, and the management token and
// CA from `<cluster>-fledge-agent-token`) and the `postKubeadmCommands` entry that installs it,
// in the management plane's copy and, after the pivot, in the cluster's: there the leading
// agent keeps a Secret of that name (token and CA) for CABPK to read, so each control-plane
// machine KCP adds, and each one a rollout replaces CP-A with, runs the agent too. The
// scale-out's KubeadmControlPlane is rendered as the management plane's.

/// Desired machine counts: (object kind, name, replicas), for progress reports.
pub fn desired(c: &CheckedCluster) -> Vec<(&'static str, String, i64)> {
    let names = management::Names::new(c.name.as_str());
    let mut out = vec![(
        "KubeadmControlPlane",
        names.control_plane,
        c.spec.control_plane.replicas,
    )];
    for pool in &c.spec.workers {
        out.push((
            "MachineDeployment",
            pool_name(c.name.as_str(), &pool.name),
            pool.replicas,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checked(version: &str, image: Option<&str>) -> CheckedCluster {
        let mut req: Value = serde_norway::from_str(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/cases/docker-v1beta2/input.yaml"),
            )
            .unwrap(),
        )
        .unwrap();
        req["spec"]["kubernetesVersion"] = json!(version);
        if let Some(i) = image {
            req["spec"]["infrastructure"]["docker"] = json!({"customImage": i});
        }
        crate::spec::parse_request(
            "input.yaml",
            serde_norway::to_string(&req).unwrap().as_bytes(),
        )
        .unwrap()
    }

    fn template_names(c: &CheckedCluster) -> Vec<String> {
        objects(c, &Templates::embedded())
            .unwrap()
            .iter()
            .filter(|o| o["kind"].as_str().unwrap().ends_with("Template"))
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn templates_are_named_by_their_content_and_version() {
        let base = template_names(&checked("v1.33.4", None));
        assert!(base.iter().all(|n| n.len() > 11), "{base:?}");
        // The same spec: the same names (a replay creates nothing new).
        assert_eq!(template_names(&checked("v1.33.4", None)), base);
        // A new version: every template is new.
        let upgraded = template_names(&checked("v1.34.1", None));
        assert!(upgraded.iter().all(|n| !base.contains(n)), "{upgraded:?}");
        // A new image: new machine templates, the same bootstrap template.
        let image = template_names(&checked("v1.33.4", Some("kindest/node:v1.33.4")));
        let changed: Vec<bool> = image.iter().map(|n| !base.contains(n)).collect();
        assert_eq!(changed, vec![true, false, true], "{image:?} vs {base:?}");
    }
}
