//! `fledge apply`: what it checks before it writes (is the namespace the cluster's own? was the
//! cluster pivoted?), and the apply of a request's management objects with the FledgeCluster as
//! the owner of the agent's access, then the agent's first token.

use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::Value;

use crate::spec::{CheckedCluster, FledgeCluster, PIVOT_ANNOTATION_PREFIX, pivot_state};
use crate::ssa::{Applied, ApplyError, ApplyOptions, apply};
use crate::target::Target;
use crate::token::{DEFAULT_DURATION, MintError, mint_agent_token};

/// Why `fledge apply` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyRequestError {
    /// The namespace already holds another cluster.
    #[error(
        "namespace {namespace} already holds cluster(s) {others}: the agent's access covers its whole namespace, so each cluster needs its own (set metadata.namespace, or leave it out to use the cluster's name); --allow-shared-namespace accepts the risk"
    )]
    SharedNamespace {
        /// The namespace.
        namespace: String,
        /// The other clusters, comma-separated.
        others: String,
    },
    /// Reading or applying an object failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The agent's first token could not be minted.
    #[error(transparent)]
    MintToken(#[from] MintError),
}

/// Refuses a namespace that holds other clusters ([`other_clusters`]).
pub async fn check_namespace_unshared(
    target: &Target,
    checked: &CheckedCluster,
) -> Result<(), ApplyRequestError> {
    let others = other_clusters(target, checked).await?;
    if others.is_empty() {
        return Ok(());
    }
    Err(ApplyRequestError::SharedNamespace {
        namespace: checked.namespace.to_string(),
        others: others.join(", "),
    })
}

/// Why the cluster's Cluster API objects no longer belong on the management plane, if they do
/// not: its FledgeCluster's status says the pivot started or completed (or that the agent got
/// past the pivot), or its Cluster carries the pivot's annotations. An identity that may not
/// read one of them (403), or a type the server does not serve, counts as "no sign".
pub async fn pivoted(
    target: &Target,
    checked: &CheckedCluster,
) -> Result<Option<String>, ApplyError> {
    let ns = checked.namespace.as_str();
    let name = checked.name.as_str();
    let soft = |r| absent_if_unreadable(r, &format!("{ns}/{name}")).map(Option::flatten);
    let fc: Api<DynamicObject> = Api::namespaced_with(
        target.client.clone(),
        ns,
        &ApiResource::erase::<FledgeCluster>(&()),
    );
    if let Some(fc) = soft(fc.get_opt(name).await)? {
        let status = &fc.data["status"];
        let state = status["pivot"]["state"].as_str().unwrap_or_default();
        if [
            pivot_state::IN_PROGRESS,
            pivot_state::COMPLETE,
            pivot_state::UNPIVOTING,
        ]
        .contains(&state)
        {
            return Ok(Some(format!("its FledgeCluster says the pivot is {state}")));
        }
        // Unpivoted: the objects are back here, whatever phase the agent last reported.
        let phase = status["phase"].as_str().unwrap_or_default();
        if state != pivot_state::UNPIVOTED
            && crate::spec::Phase::parse(phase)
                .is_some_and(crate::spec::Phase::objects_in_the_cluster)
        {
            return Ok(Some(format!("its agent reports phase {phase}")));
        }
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        target.client.clone(),
        ns,
        &crate::capi::resource(checked.capi, "Cluster", "clusters"),
    );
    if let Some(c) = soft(api.get_opt(name).await)? {
        let marked = c
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .any(|k| k.starts_with(PIVOT_ANNOTATION_PREFIX));
        if marked {
            return Ok(Some(
                "its Cluster is being pivoted (pivot.fledge.dev annotations)".into(),
            ));
        }
    }
    Ok(None)
}

/// Other clusters in the request's namespace (their FledgeClusters and Cluster API Clusters).
/// The agent's Role covers its whole namespace (RBAC cannot restrict by label), so a second
/// cluster there would be within reach of the first one's node.
pub async fn other_clusters(
    target: &Target,
    checked: &CheckedCluster,
) -> Result<Vec<String>, ApplyError> {
    let ns = checked.namespace.as_str();
    let mut found = std::collections::BTreeSet::new();
    for ar in [
        ApiResource::erase::<FledgeCluster>(&()),
        crate::capi::resource(checked.capi, "Cluster", "clusters"),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(target.client.clone(), ns, &ar);
        let list = api.list_metadata(&Default::default()).await;
        if let Some(list) = absent_if_unreadable(list, &format!("namespace {ns}"))? {
            found.extend(
                list.items
                    .into_iter()
                    .filter_map(|o| o.metadata.name)
                    .filter(|n| n != checked.name.as_str()),
            );
        }
    }
    Ok(found.into_iter().collect())
}

/// A read that found nothing, or may not look (404: not there or not served; 403: not
/// readable by this identity), is `None`: no sign either way.
fn absent_if_unreadable<T>(
    r: Result<T, kube::Error>,
    object: &str,
) -> Result<Option<T>, ApplyError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => Ok(None),
        Err(source) => Err(ApplyError::Request {
            object: object.to_string(),
            source,
        }),
    }
}

/// Applies a request's management objects (in their order): up to its FledgeCluster first,
/// then the rest with the FledgeCluster as the owner of the agent's access objects
/// ([`crate::management::own_access`]), so that deleting it revokes them. A server dry run
/// persists no FledgeCluster, so there it applies them without an owner.
pub async fn apply_request(
    target: &Target,
    c: &CheckedCluster,
    mut objects: Vec<Value>,
    opts: &ApplyOptions,
    mut progress: impl FnMut(&Applied),
) -> Result<Vec<Applied>, ApplyRequestError> {
    let split = objects
        .iter()
        .position(|o| o["kind"] == "FledgeCluster")
        .map_or(0, |i| i + 1);
    let mut rest = objects.split_off(split);
    let mut results = apply(target, &objects, opts, &mut progress).await?;
    let uid = if !opts.dry_run && split > 0 {
        fledge_cluster_uid(target, c).await?
    } else {
        None
    };
    if let Some(uid) = &uid {
        crate::management::own_access(&mut rest, c, uid);
    }
    let access = rest
        .iter()
        .any(|o| o["kind"] == "ServiceAccount" && o["metadata"]["name"] == names_agent(c));
    results.extend(apply(target, &rest, opts, &mut progress).await?);
    if access && !opts.dry_run {
        let duration = opts.token_duration.unwrap_or(DEFAULT_DURATION);
        let minted = mint_agent_token(target, c, duration, uid.as_deref()).await?;
        progress(&minted);
        results.push(minted);
    }
    Ok(results)
}

fn names_agent(c: &CheckedCluster) -> String {
    crate::management::Names::new(c.name.as_str()).agent
}

/// The UID of the request's FledgeCluster on the management plane, if it exists.
pub async fn fledge_cluster_uid(
    target: &Target,
    c: &CheckedCluster,
) -> Result<Option<String>, ApplyError> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        target.client.clone(),
        c.namespace.as_str(),
        &ApiResource::erase::<FledgeCluster>(&()),
    );
    let got = api
        .get_opt(c.name.as_str())
        .await
        .map_err(|source| ApplyError::Request {
            object: format!("FledgeCluster/{}", c.name),
            source,
        })?;
    Ok(got.and_then(|o| o.metadata.uid))
}

/// Of the management objects, what to apply once the cluster was pivoted: only its
/// FledgeCluster (a new generation is the day-2 path; the agent picks it up).
pub fn after_pivot(objects: Vec<Value>) -> Vec<Value> {
    objects
        .into_iter()
        .filter(|o| o["apiVersion"] == crate::spec::API_VERSION && o["kind"] == "FledgeCluster")
        .collect()
}
