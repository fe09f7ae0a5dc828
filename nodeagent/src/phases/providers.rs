//! `ProvidersInstalled`: cert-manager, then the core, kubeadm bootstrap, kubeadm control-plane
//! and infrastructure providers, from the directory baked into the image, as `clusterctl init`
//! installs them (see [`crate::clusterctl::components`]), with clusterctl's inventory so that clusterctl
//! recognises the installation later. Each provider is ready before the next is applied: every
//! CRD Established, every Deployment Available, every webhook answering a server-side dry-run
//! create.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use serde_json::Value;

use super::{Context, PhaseError, Step};
use crate::clusterctl::components::{self, Components, ComponentsError, Kind, Provider};

/// The field manager of everything the agent applies.
pub const FIELD_MANAGER: &str = "fledge-agent";

/// How long one attempt waits for a provider to become ready before it reports "waiting".
const READY_WAIT: Duration = Duration::from_secs(120);

/// Why the providers could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum ProvidersError {
    /// The components could not be read or prepared.
    #[error(transparent)]
    Components(#[from] ComponentsError),
    /// Applying them failed.
    #[error("{provider}: cannot apply its components")]
    Apply {
        /// The provider's label.
        provider: String,
        /// Why.
        #[source]
        source: fledge_generator::ssa::ApplyError,
    },
    /// A provider could not be fetched.
    #[error(transparent)]
    Fetch(#[from] crate::clusterctl::fetch::FetchError),
    /// The Secret named by `spec.infrastructure.variablesSecret` could not be read.
    #[error(
        "cannot read the providers' variables from Secret {namespace}/{name} on the management plane (spec.infrastructure.variablesSecret)"
    )]
    VariablesSecret {
        /// Its namespace (the cluster's).
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A key or value of that Secret is not a variable.
    #[error(
        "Secret {namespace}/{name} (spec.infrastructure.variablesSecret): key {key:?} {problem}"
    )]
    VariableKey {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A readiness check failed (not "not yet": the request itself).
    #[error("{provider}: cannot check {what}")]
    Check {
        /// The provider's label.
        provider: String,
        /// What was being checked.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// The providers the cluster needs, in install order, each with the directory it is read
/// from: the baked directory, else the fetched ones (`providers.fetch`, in the state directory).
pub fn wanted(ctx: &Context) -> Result<Vec<(Provider, PathBuf)>, ComponentsError> {
    let baked = crate::config::rooted(&ctx.root, &ctx.cfg.providers_dir());
    let fetched = crate::clusterctl::fetch::dir(&ctx.state_dir);
    let providers = ctx.cfg.providers.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (kind, name) in [
        (Kind::CertManager, "cert-manager"),
        (Kind::Core, "cluster-api"),
        (Kind::Bootstrap, "kubeadm"),
        (Kind::ControlPlane, "kubeadm"),
        (
            Kind::Infrastructure,
            // clusterctl names the infrastructure providers as requests do (`vsphere`, `aws`, ...).
            ctx.spec.provider().as_str(),
        ),
    ] {
        let mut p = Provider {
            kind,
            name: name.to_string(),
            version: String::new(),
        };
        let label = p.label();
        // A fetched version is named by its entry; otherwise the configured or only baked one.
        let fetch = providers.fetch.iter().find(|f| f.name == label);
        let configured = providers
            .versions
            .get(&label)
            .map(String::as_str)
            .or(fetch.map(|f| f.version.as_str()));
        let (version, base) = match components::resolve_version(&baked, &label, configured) {
            Ok(v) => (v, baked.clone()),
            Err(e) => match fetch {
                Some(f) if configured == Some(f.version.as_str()) => {
                    (f.version.clone(), fetched.clone())
                }
                _ => return Err(e),
            },
        };
        p.version = version;
        out.push((p, base));
    }
    Ok(out)
}

/// Fetches the `providers.fetch` entries not downloaded yet (pinned by sha256).
async fn fetch_missing(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), ProvidersError> {
    let base = crate::clusterctl::fetch::dir(&ctx.state_dir);
    for f in ctx.cfg.providers.iter().flat_map(|p| &p.fetch) {
        if crate::clusterctl::fetch::ensure(&base, f).await? {
            progress(&format!(
                "{} {}: fetched from {} (sha256 verified)",
                f.name, f.version, f.url
            ));
        }
    }
    Ok(())
}

/// The plan: each provider, and whether the local cluster's inventory already holds it.
pub async fn plan(ctx: &Context) -> Result<(Vec<String>, Option<String>), PhaseError> {
    let mut steps = Vec::new();
    let fetched = crate::clusterctl::fetch::dir(&ctx.state_dir);
    for f in ctx.cfg.providers.iter().flat_map(|p| &p.fetch) {
        if !crate::clusterctl::fetch::present(&fetched, f) {
            steps.push(format!(
                "fetch {} {} from {} (pinned by sha256)",
                f.name, f.version, f.url
            ));
        }
    }
    let wanted = match wanted(ctx) {
        Ok(w) => w,
        // Before the fetch, a fetched provider's directory does not exist yet.
        Err(_) if !steps.is_empty() => {
            steps.push("then install the providers as below once fetched".into());
            vec![]
        }
        Err(e) => return Err(ProvidersError::from(e).into()),
    };
    let installed = installed_versions(ctx).await;
    for (p, base) in wanted {
        let state = match installed.get(&p.label()).map(String::as_str) {
            Some(v) if v == p.version => "installed; check it is ready".to_string(),
            Some(v) => format!("installed at {v}; apply {}", p.version),
            None => "apply".to_string(),
        };
        steps.push(format!(
            "{} {} from {}: {state}",
            p.label(),
            p.version,
            p.dir(&base).display()
        ));
    }
    Ok((steps, None))
}

/// The versions clusterctl's inventory records in the local cluster, by provider label (one
/// list; empty when there is no inventory yet).
async fn installed_versions(ctx: &Context) -> std::collections::BTreeMap<String, String> {
    let api: Api<DynamicObject> = Api::all_with(
        ctx.local.clone(),
        &crate::clusterctl::inventory::inventory_resource(),
    );
    let items = api
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    items
        .into_iter()
        .filter_map(|o| {
            Some((
                o.metadata.name.clone()?,
                o.data["version"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The components' variables: the agent configuration's `providers.variables` (which holds no
/// secrets), then every key of the Secret the request names in
/// `spec.infrastructure.variablesSecret`, read from the management plane by name (the agent's
/// Role allows `get` on that one Secret). The Secret's values win; they are held in memory only,
/// for the substitution, and end up where `clusterctl init` puts them: in the provider's own
/// objects in the cluster (its bootstrap-credentials Secret). Returns the variables and the
/// names taken from the Secret.
pub async fn variables(
    ctx: &Context,
) -> Result<(BTreeMap<String, String>, Vec<String>), ProvidersError> {
    let mut out = ctx
        .cfg
        .providers
        .as_ref()
        .map(|p| p.variables.clone())
        .unwrap_or_default();
    let Some(name) = &ctx.spec.spec.infrastructure.variables_secret else {
        return Ok((out, Vec::new()));
    };
    let namespace = ctx.spec.namespace.as_str();
    let api: Api<Secret> = Api::namespaced(ctx.management.clone(), namespace);
    let secret = api
        .get(name)
        .await
        .map_err(|source| ProvidersError::VariablesSecret {
            namespace: namespace.to_string(),
            name: name.clone(),
            source,
        })?;
    let bad = |key: &str, problem| ProvidersError::VariableKey {
        namespace: namespace.to_string(),
        name: name.clone(),
        key: key.to_string(),
        problem,
    };
    let mut names = Vec::new();
    for (key, value) in secret.data.unwrap_or_default() {
        if !is_variable_name(&key) {
            return Err(bad(
                &key,
                "is not a variable name (letters, digits and '_', not starting with a digit)",
            ));
        }
        let value = String::from_utf8(value.0)
            .map_err(|_| bad(&key, "has a value that is not UTF-8 text"))?;
        out.insert(key.clone(), value);
        names.push(key);
    }
    Ok((out, names))
}

/// A name `${NAME}` can refer to: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_variable_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Installs every provider in order; each must be ready before the next one is applied.
pub async fn apply(
    ctx: &Context,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Step, PhaseError> {
    fetch_missing(ctx, progress).await?;
    let (variables, from_secret) = variables(ctx).await?;
    if !from_secret.is_empty() {
        progress(&format!(
            "variables from the management plane's Secret (spec.infrastructure.variablesSecret): {}",
            from_secret.join(", ")
        ));
    }
    let providers = wanted(ctx).map_err(ProvidersError::from)?;
    if let Some(why) = ensure_inventory_crd(ctx).await? {
        return Ok(Step::Waiting(why));
    }
    let mut done = Vec::new();
    for (p, base) in &providers {
        if p.kind != Kind::CertManager {
            components::check_contract(base, p, ctx.spec.capi.as_str())
                .map_err(ProvidersError::from)?;
        }
        let c = components::load(base, p, &variables).map_err(ProvidersError::from)?;
        components::check_crd_contract_labels(&c, ctx.spec.capi.as_str())
            .map_err(ProvidersError::from)?;
        for t in &c.tolerated {
            progress(&format!(
                "{}: {t} tolerates the control-plane taint (added: the first node is a tainted control-plane node)",
                p.label()
            ));
        }
        let label = p.label();
        let apply_err = |source| ProvidersError::Apply {
            provider: label.clone(),
            source,
        };
        super::apply_local(ctx, &c.foundation, |_| {})
            .await
            .map_err(apply_err)?;
        if let Some(why) = wait(READY_WAIT, || crds_established(ctx, &c)).await? {
            return Ok(Step::Waiting(format!("{label}: {why}")));
        }
        super::apply_local(ctx, &c.rest, |_| {})
            .await
            .map_err(apply_err)?;
        progress(&format!(
            "{label} {}: {} objects applied",
            p.version,
            c.foundation.len() + c.rest.len()
        ));
        if let Some(why) = wait(READY_WAIT, || deployments_available(ctx, &c)).await? {
            return Ok(Step::Waiting(format!("{label}: {why}")));
        }
        if let Some(why) = wait(READY_WAIT, || webhooks_answer(ctx, &c)).await? {
            return Ok(Step::Waiting(format!("{label}: {why}")));
        }
        if let Some(ns) = &c.namespace
            && let Some(inv) = components::inventory(p, ns)
        {
            super::apply_local(ctx, &[inv], |_| {})
                .await
                .map_err(apply_err)?;
        }
        progress(&format!("{label} {}: ready", p.version));
        done.push(format!("{label} {}", p.version));
    }
    Ok(Step::Done(format!(
        "{} ready (contract {})",
        done.join(", "),
        ctx.spec.capi.as_str()
    )))
}

/// Polls `check` (None = ready, Some(why) = not yet) until it is ready or `within` passes.
async fn wait<F, Fut>(within: Duration, mut check: F) -> Result<Option<String>, PhaseError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>, PhaseError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await? {
            None => return Ok(None),
            Some(why) if Instant::now() >= deadline => return Ok(Some(why)),
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn check_err(c: &Components, what: &str) -> impl FnOnce(kube::Error) -> PhaseError {
    let provider = c.provider.label();
    let what = what.to_string();
    move |source| {
        ProvidersError::Check {
            provider,
            what,
            source,
        }
        .into()
    }
}

/// Whether a CRD as read reports `Established=True`.
fn established(crd: Option<CustomResourceDefinition>) -> bool {
    crd.and_then(|g| g.status)
        .and_then(|s| s.conditions)
        .is_some_and(|cs| {
            cs.iter()
                .any(|x| x.type_ == "Established" && x.status == "True")
        })
}

async fn crds_established(ctx: &Context, c: &Components) -> Result<Option<String>, PhaseError> {
    let api: Api<CustomResourceDefinition> = Api::all(ctx.local.clone());
    for crd in c
        .foundation
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        let got = api.get_opt(name).await.map_err(check_err(c, name))?;
        if !established(got) {
            return Ok(Some(format!("CRD {name} is not Established yet")));
        }
    }
    Ok(None)
}

async fn deployments_available(
    ctx: &Context,
    c: &Components,
) -> Result<Option<String>, PhaseError> {
    for d in c.rest.iter().filter(|d| d["kind"] == "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let ns = d["metadata"]["namespace"]
            .as_str()
            .or(c.namespace.as_deref())
            .unwrap_or("default");
        let api: Api<Deployment> = Api::namespaced(ctx.local.clone(), ns);
        let got = api.get_opt(name).await.map_err(check_err(c, name))?;
        let available = got.as_ref().is_some_and(|g| {
            let observed = g.status.as_ref().and_then(|s| s.observed_generation);
            observed >= g.metadata.generation
                && g.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|x| x.type_ == "Available" && x.status == "True")
                    })
        });
        if !available {
            return Ok(Some(format!("Deployment {ns}/{name} is not Available yet")));
        }
    }
    Ok(None)
}

/// Every webhook with a CREATE rule on one of the provider's own CRDs answers a server-side
/// dry-run create of an empty object of that kind. A denial or a schema error is an answer;
/// "failed calling webhook" is not.
async fn webhooks_answer(ctx: &Context, c: &Components) -> Result<Option<String>, PhaseError> {
    for (hook, ar, namespaced) in probes(c) {
        let ns = c.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(ctx.local.clone(), &ns, &ar)
        } else {
            Api::all_with(ctx.local.clone(), &ar)
        };
        let mut obj = DynamicObject::new("", &ar);
        obj.metadata.name = None;
        obj.metadata.generate_name = Some("fledge-probe-".into());
        let pp = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        match api.create(&pp, &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook") => {
                return Ok(Some(format!(
                    "webhook {hook} does not answer yet: {}",
                    s.message
                )));
            }
            Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(check_err(c, &format!("webhook {hook}"))(e)),
        }
    }
    Ok(None)
}

/// (webhook name, resource, namespaced) for each webhook that has a CREATE rule on a CRD of
/// the same components.
fn probes(c: &Components) -> Vec<(String, ApiResource, bool)> {
    let crds: Vec<&Value> = c
        .foundation
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let mut out = Vec::new();
    for cfg in c.rest.iter().filter(|d| {
        d["kind"]
            .as_str()
            .is_some_and(|k| k.ends_with("WebhookConfiguration"))
    }) {
        for hook in cfg["webhooks"].as_array().into_iter().flatten() {
            let name = hook["name"].as_str().unwrap_or_default().to_string();
            let rule = hook["rules"].as_array().into_iter().flatten().find(|r| {
                r["operations"]
                    .as_array()
                    .is_some_and(|ops| ops.iter().any(|o| o == "CREATE" || o == "*"))
            });
            let Some(rule) = rule else { continue };
            let first = |k: &str| rule[k][0].as_str().unwrap_or_default().to_string();
            let (group, version, plural) =
                (first("apiGroups"), first("apiVersions"), first("resources"));
            let Some(crd) = crds.iter().find(|d| {
                d["spec"]["group"] == group.as_str()
                    && d["spec"]["names"]["plural"] == plural.as_str()
            }) else {
                continue;
            };
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            out.push((
                name,
                ApiResource {
                    api_version: format!("{group}/{version}"),
                    group,
                    version,
                    kind,
                    plural,
                },
                crd["spec"]["scope"] == "Namespaced",
            ));
        }
    }
    out
}

/// Creates clusterctl's inventory CRD when the cluster has none (an existing one is kept);
/// None once it is Established, else why not yet.
async fn ensure_inventory_crd(ctx: &Context) -> Result<Option<String>, PhaseError> {
    let api: Api<CustomResourceDefinition> = Api::all(ctx.local.clone());
    let crd = crate::clusterctl::inventory::inventory_crd();
    let name = crd["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let err = |source| -> PhaseError {
        ProvidersError::Check {
            provider: "clusterctl inventory".into(),
            what: format!("CRD {name}"),
            source,
        }
        .into()
    };
    if api.get_opt(&name).await.map_err(err)?.is_none() {
        let body: CustomResourceDefinition =
            serde_json::from_value(crd).expect("a well-formed CRD");
        match api.create(&PostParams::default(), &body).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(err(e)),
        }
    }
    wait(READY_WAIT, || async {
        let got = api.get_opt(&name).await.map_err(err)?;
        Ok((!established(got)).then(|| format!("CRD {name} is not Established yet")))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::is_variable_name;

    #[test]
    fn variable_names_are_what_a_components_file_can_refer_to() {
        for ok in ["VSPHERE_USERNAME", "_X", "a1", "AWS_B64ENCODED_CREDENTIALS"] {
            assert!(is_variable_name(ok), "{ok}");
        }
        for bad in ["", "1A", "MY-VAR", "A.B", "A B", "ÄRGER"] {
            assert!(!is_variable_name(bad), "{bad}");
        }
    }
}
