//! `fledge delete`: deletes a cluster from the management plane side. Deleting its FledgeCluster
//! makes the agent move the cluster's Cluster API objects back (the unpivot) and delete the
//! Cluster there, after which Cluster API deprovisions its machines and the agent releases its
//! finalizer. The agent gave up its move rights after the pivot, so this binds them again: their
//! Role and RoleBinding, owned by the FledgeCluster, go with it.
//!
//! The order is delete, then bind: once the deletion is requested the agent keeps its move
//! rights, while a binding made before could be given up again by an agent that has not seen
//! the deletion yet.

use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Preconditions, PropagationPolicy};
use serde_json::Value;

use crate::management::Names;
use crate::spec::{CheckedCluster, FledgeCluster};
use crate::ssa::{Applied, ApplyError, ApplyOptions, apply};
use crate::target::Target;

/// What [`delete`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// There was no FledgeCluster.
    NotFound,
    /// The FledgeCluster is gone (no agent held it: nothing was pivoted).
    Gone,
    /// The agent holds the FledgeCluster until its unpivot is done; its move rights are bound.
    Unpivoting,
}

fn fledge_clusters(target: &Target, c: &CheckedCluster) -> Api<DynamicObject> {
    Api::namespaced_with(
        target.client.clone(),
        c.namespace.as_str(),
        &ApiResource::erase::<FledgeCluster>(&()),
    )
}

fn request(target: &Target, object: String) -> impl FnOnce(kube::Error) -> ApplyError {
    let server = target.server.clone();
    move |source| match source {
        kube::Error::Api(s) if s.code == 401 || s.code == 403 => ApplyError::Unauthorized {
            server,
            code: s.code,
            message: s.message,
        },
        source => ApplyError::Request { object, source },
    }
}

/// Deletes the request's FledgeCluster (background propagation, as kubectl) unless its deletion
/// was requested before, then binds the agent's move rights (`objects`: the request's rendered
/// management objects, of which the move Role and RoleBinding are taken) while the agent holds
/// it. `progress` gets each line kubectl would print. Idempotent: running it again re-binds the
/// rights of an unpivot that is still waiting for them.
pub async fn delete(
    target: &Target,
    c: &CheckedCluster,
    objects: &[Value],
    mut progress: impl FnMut(&str),
) -> Result<Deleted, ApplyError> {
    let (ns, name) = (c.namespace.as_str(), c.name.as_str());
    let label = format!("fledgecluster.fledge.dev/{name}");
    let api = fledge_clusters(target, c);
    let Some(fc) = api
        .get_opt(name)
        .await
        .map_err(request(target, label.clone()))?
    else {
        return Ok(Deleted::NotFound);
    };
    if fc.metadata.deletion_timestamp.is_none() {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: fc.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &dp).await {
            // The answer is the object while a finalizer holds it, a Status once it is gone.
            Ok(answer) => {
                progress(&format!("{label} deleted"));
                if answer.is_right() {
                    return Ok(Deleted::Gone);
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Deleted::Gone),
            Err(e) => return Err(request(target, label)(e)),
        }
    }
    // Still there: the agent holds it until the cluster's objects are back and the Cluster is
    // deleted here.
    let names = Names::new(name);
    let mut rights: Vec<Value> = objects
        .iter()
        .filter(|o| {
            o["metadata"]["name"] == names.agent_move.as_str()
                && o["metadata"]["namespace"] == ns
                && (o["kind"] == "Role" || o["kind"] == "RoleBinding")
        })
        .cloned()
        .collect();
    if let Some(uid) = &fc.metadata.uid {
        crate::management::own_access(&mut rights, c, uid);
    }
    apply(target, &rights, &ApplyOptions::default(), |a: &Applied| {
        progress(&a.to_string())
    })
    .await?;
    Ok(Deleted::Unpivoting)
}

/// What `--wait` shows of a FledgeCluster being deleted: the agent's phase and pivot state, and
/// the first condition that is not True (what the agent waits for).
fn status_line(fc: &DynamicObject) -> String {
    let status = &fc.data["status"];
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut line = format!(
        "agent phase {}, pivot {}",
        text(&status["phase"]),
        text(&status["pivot"]["state"])
    );
    let waiting = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["status"] != "True");
    if let Some(c) = waiting {
        line.push_str(&format!(
            "; {} {}: {}",
            text(&c["type"]),
            text(&c["reason"]),
            text(&c["message"])
        ));
    }
    line
}

/// Waits until the FledgeCluster is gone, at most `timeout`, following it with `kube::runtime`'s
/// watcher (as `kubectl delete --wait` watches); `progress` gets each new status line. Ok(true)
/// when gone, Ok(false) at the timeout; a failed list or watch is an error.
pub async fn wait_gone(
    target: &Target,
    c: &CheckedCluster,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<bool, ApplyError> {
    use futures::TryStreamExt;
    let object = format!("fledgecluster.fledge.dev/{}", c.name);
    let changes = kube::runtime::watcher::watch_object(fledge_clusters(target, c), c.name.as_str());
    let gone = async {
        let mut changes = std::pin::pin!(changes);
        let mut last = String::new();
        while let Some(seen) = changes
            .try_next()
            .await
            .map_err(|source| ApplyError::Watch {
                object: object.clone(),
                source,
            })?
        {
            let Some(fc) = seen else {
                return Ok(true);
            };
            let line = status_line(&fc);
            if line != last {
                progress(&line);
                last = line;
            }
        }
        Ok(false)
    };
    tokio::time::timeout(timeout, gone)
        .await
        .unwrap_or(Ok(false))
}
