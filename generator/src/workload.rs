//! The objects the agent creates in the workload cluster after the pivot (step 5 of the design):
//! the KubeadmControlPlane at the spec's replica count, and per worker pool an infrastructure
//! machine template, a KubeadmConfigTemplate and a MachineDeployment. `fledge render` writes
//! them to `workload.yaml`; the agent applies the same list with server-side apply, so what a
//! user reads is what the agent creates.

use serde_json::{Value, json};

use crate::management;
use crate::providers;
use crate::render::{RenderError, Templates};
use crate::spec::CheckedCluster;

/// The object name of a worker pool's MachineDeployment and templates.
pub fn pool_name(cluster: &str, pool: &str) -> String {
    format!("{cluster}-{pool}")
}

/// Renders the post-pivot objects in apply order: each pool's templates before the
/// MachineDeployment that references them, the KubeadmControlPlane last.
pub fn objects(c: &CheckedCluster, templates: &Templates) -> Result<Vec<Value>, RenderError> {
    let mut ctx = management::context(c, templates)?;
    let provider = providers::get(c.provider());
    let api = provider.api(c.capi);
    let infra_template = providers::template_name(c.provider());
    let schema = crate::spec::spec_schema();
    let mut docs = Vec::new();
    for pool in &c.spec.workers {
        let name = pool_name(c.name.as_str(), &pool.name);
        let mut pctx = ctx.clone();
        pctx["names"]["control_plane_template"] = json!(name);
        pctx["machine"] = management::with_nulls(
            serde_json::to_value(&pool.machine).unwrap_or(Value::Null),
            &schema["properties"]["controlPlane"]["properties"]["machine"],
        );
        pctx["aws_iam_role"] = json!("nodes");
        let mut selector = ctx["labels"].clone();
        selector["cluster.x-k8s.io/deployment-name"] = json!(name);
        selector
            .as_object_mut()
            .map(|m| m.remove("app.kubernetes.io/managed-by"));
        pctx["pool"] = json!({"name": name, "replicas": pool.replicas, "selector": selector});
        // The provider's template renders the infrastructure cluster too; only its machine
        // template is the pool's.
        docs.extend(
            templates
                .render_docs(&infra_template, &pctx)?
                .into_iter()
                .filter(|d| d["kind"] == api.machine_template_kind),
        );
        docs.extend(templates.render_docs("workload/kubeadmconfigtemplate.yaml.j2", &pctx)?);
        docs.extend(templates.render_docs("workload/machinedeployment.yaml.j2", &pctx)?);
    }
    ctx["replicas"] = json!(c.spec.control_plane.replicas);
    docs.extend(templates.render_docs("management/kubeadmcontrolplane.yaml.j2", &ctx)?);
    Ok(docs)
}

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
