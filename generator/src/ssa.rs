//! Server-side apply (SSA) of a list of objects, in order, with one field manager: what
//! `fledge apply`, `fledge delete` and the agent write with. Reports what was created,
//! configured or left unchanged, and turns an unreachable or unauthorised cluster into one
//! clear error (no retry storms).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{ApiCapabilities, Scope};
use serde_json::Value;

use crate::target::Target;

/// The field manager fledge applies with.
pub const FIELD_MANAGER: &str = "fledge";

/// Why an apply, or a request around one, failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The cluster did not answer.
    #[error("cannot reach the management cluster at {server}")]
    Unreachable {
        /// API server URL.
        server: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The credentials were rejected.
    #[error("the management cluster at {server} rejected the credentials (HTTP {code}: {message})")]
    Unauthorized {
        /// API server URL.
        server: String,
        /// 401 or 403.
        code: u16,
        /// The server's message.
        message: String,
    },
    /// The cluster does not serve a kind.
    #[error("the management cluster does not serve {kind} in {api_version}; install {hint}")]
    NotServed {
        /// apiVersion.
        api_version: String,
        /// kind.
        kind: String,
        /// What to install.
        hint: String,
    },
    /// A dry run cannot check objects in a namespace that does not exist yet.
    #[error(
        "namespace {namespace} does not exist, so the server cannot check the objects in it under --dry-run=server; create it first (kubectl create namespace {namespace})"
    )]
    NamespaceMissing {
        /// The namespace.
        namespace: String,
    },
    /// The server rejected an object.
    #[error("{object} was rejected: {message}")]
    Rejected {
        /// `kind/name`.
        object: String,
        /// The server's message (names the field and the rule).
        message: String,
    },
    /// The caller's guard refused to apply an object (the live object belongs to someone else).
    #[error("{object}: refused: {reason}")]
    Refused {
        /// `kind/name`.
        object: String,
        /// Why.
        reason: String,
    },
    /// A request failed for another reason.
    #[error("{object}: request failed")]
    Request {
        /// `kind/name`.
        object: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Following an object failed (a list or a watch).
    #[error("{object}: watch failed")]
    Watch {
        /// `kind/name`.
        object: String,
        /// The cause.
        #[source]
        source: kube::runtime::watcher::Error,
    },
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed and changed.
    Configured,
    /// It existed and did not change.
    Unchanged,
}

/// One applied object.
#[derive(Debug, Clone)]
pub struct Applied {
    /// `kind.group/name`, as kubectl prints it.
    pub object: String,
    /// What happened.
    pub outcome: Outcome,
    /// The server's resourceVersion afterwards (absent under dry run for new objects).
    pub resource_version: Option<String>,
    /// The namespace the object was applied in: the manifest's, the client's default for a
    /// namespaced object without one, `None` for a cluster-scoped object (whose manifest's
    /// namespace, if any, is ignored, as kubectl does).
    pub namespace: Option<String>,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.outcome {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        };
        write!(f, "{} {word}", self.object)
    }
}

/// How to apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Server-side dry run: validated and admitted by the server, not persisted.
    pub dry_run: bool,
    /// Take over fields another manager owns.
    pub force_conflicts: bool,
    /// Field manager; [`FIELD_MANAGER`] when `None`.
    pub field_manager: Option<String>,
    /// Lifetime of the agent's first management token, for [`crate::apply::apply_request`]
    /// ([`crate::token::mint_agent_token`]); [`crate::token::DEFAULT_DURATION`] when `None`.
    pub token_duration: Option<Duration>,
}

/// Checks that the cluster answers and accepts the credentials: one request, one error.
pub async fn check_reachable(target: &Target) -> Result<(), ApplyError> {
    match target.client.apiserver_version().await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => {
            Err(ApplyError::Unauthorized {
                server: target.server.clone(),
                code: s.code,
                message: s.message,
            })
        }
        Err(source) => Err(ApplyError::Unreachable {
            server: target.server.clone(),
            source,
        }),
    }
}

/// Applies `objects` in order. `progress` is called after each object.
pub async fn apply(
    target: &Target,
    objects: &[Value],
    opts: &ApplyOptions,
    progress: impl FnMut(&Applied),
) -> Result<Vec<Applied>, ApplyError> {
    apply_guarded(target, objects, opts, &|_, _| Ok(()), progress).await
}

/// What [`apply_guarded`] asks before each object: the object as it will be sent (namespace
/// normalised by the kind's scope) and the live object, if any. `Err(reason)` stops the apply
/// with [`ApplyError::Refused`] before that object is written.
pub type Guard<'a> =
    dyn Fn(&Value, Option<&DynamicObject>) -> Result<(), String> + Send + Sync + 'a;

/// [`apply`], asking `guard` before each write.
pub async fn apply_guarded(
    target: &Target,
    objects: &[Value],
    opts: &ApplyOptions,
    guard: &Guard<'_>,
    mut progress: impl FnMut(&Applied),
) -> Result<Vec<Applied>, ApplyError> {
    check_reachable(target).await?;
    let client = &target.client;
    let mut kinds: HashMap<(String, String), (ApiResource, ApiCapabilities)> = HashMap::new();
    let mut results = Vec::new();
    let mut pp = PatchParams::apply(opts.field_manager.as_deref().unwrap_or(FIELD_MANAGER));
    pp.dry_run = opts.dry_run;
    pp.force = opts.force_conflicts;
    for obj in objects {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let manifest_namespace = obj["metadata"]["namespace"]
            .as_str()
            .filter(|ns| !ns.is_empty())
            .map(str::to_string);
        let key = (api_version.clone(), kind.clone());
        if !kinds.contains_key(&key) {
            let (group, version) = api_version
                .split_once('/')
                .unwrap_or(("", api_version.as_str()));
            let gvk = GroupVersionKind::gvk(group, version, &kind);
            let found = kube::discovery::pinned_kind(client, &gvk)
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 404 => not_served(&api_version, &kind),
                    kube::Error::Discovery(_) => not_served(&api_version, &kind),
                    other => ApplyError::Request {
                        object: format!("{kind}/{name}"),
                        source: other,
                    },
                })?;
            kinds.insert(key.clone(), found);
        }
        let (ar, caps) = &kinds[&key];
        let label = label(&ar.kind, &ar.group, &name);
        // The namespace by the kind's scope: a namespaced object without one goes to the
        // client's default namespace, and says so in its body; a cluster-scoped object's body
        // carries none (published manifests often set one).
        let namespace = match caps.scope {
            Scope::Namespaced => Some(
                manifest_namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string()),
            ),
            Scope::Cluster => None,
        };
        let mut body = obj.clone();
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            match &namespace {
                Some(ns) => {
                    meta.insert("namespace".into(), Value::String(ns.clone()));
                }
                None => {
                    meta.remove("namespace");
                }
            }
        }
        let api: Api<DynamicObject> = match &namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        };
        let request_err = |source: kube::Error| match source {
            kube::Error::Api(s)
                if s.code == 404 && opts.dry_run && s.message.contains("namespaces") =>
            {
                ApplyError::NamespaceMissing {
                    namespace: namespace.clone().unwrap_or_default(),
                }
            }
            kube::Error::Api(s) if s.code == 401 || s.code == 403 => ApplyError::Unauthorized {
                server: target.server.clone(),
                code: s.code,
                message: s.message,
            },
            kube::Error::Api(s) if [400, 404, 409, 422].contains(&s.code) => ApplyError::Rejected {
                object: label.clone(),
                message: s.message,
            },
            // A server-side apply body whose types do not fit the schema: the apiserver answers
            // 500, but it is the object's fault, not the server's.
            kube::Error::Api(s)
                if s.code == 500 && s.message.contains("failed to create typed patch object") =>
            {
                ApplyError::Rejected {
                    object: label.clone(),
                    message: s.message,
                }
            }
            other => ApplyError::Request {
                object: label.clone(),
                source: other,
            },
        };
        let before = api.get_opt(&name).await.map_err(request_err)?;
        guard(&body, before.as_ref()).map_err(|reason| ApplyError::Refused {
            object: label.clone(),
            reason,
        })?;
        let after = api
            .patch(&name, &pp, &Patch::Apply(&body))
            .await
            .map_err(request_err)?;
        let outcome = match &before {
            None => Outcome::Created,
            Some(b) if opts.dry_run => {
                if comparable(b) == comparable(&after) {
                    Outcome::Unchanged
                } else {
                    Outcome::Configured
                }
            }
            Some(b) if b.metadata.resource_version == after.metadata.resource_version => {
                Outcome::Unchanged
            }
            Some(_) => Outcome::Configured,
        };
        let applied = Applied {
            object: label,
            outcome,
            resource_version: after.metadata.resource_version.clone(),
            namespace,
        };
        progress(&applied);
        results.push(applied);
    }
    Ok(results)
}

/// How kubectl names an object: `kind.group/name`, or `kind/name` for the core group.
pub fn label(kind: &str, group: &str, name: &str) -> String {
    if group.is_empty() {
        format!("{}/{name}", kind.to_lowercase())
    } else {
        format!("{}.{group}/{name}", kind.to_lowercase())
    }
}

fn not_served(api_version: &str, kind: &str) -> ApplyError {
    let hint = if api_version.starts_with("fledge.dev/") {
        "fledge's CRDs first (fledge apply --install-crds, or fledge crd | kubectl apply -f -)"
            .to_string()
    } else {
        "the Cluster API provider that serves it (clusterctl init)".to_string()
    };
    ApplyError::NotServed {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        hint,
    }
}

fn comparable(o: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or_default();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "resourceVersion",
            "managedFields",
            "generation",
            "creationTimestamp",
            "uid",
        ] {
            m.remove(k);
        }
    }
    v
}
