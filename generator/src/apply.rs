//! `fledge apply`: server-side apply of the management objects, in order, with field manager
//! `fledge`. Reports what was created, configured or left unchanged, and turns an unreachable
//! or unauthorised cluster into one clear error (no retry storms).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, Scope};
use serde_json::Value;

use crate::spec::{CheckedCluster, FledgeCluster, PIVOT_ANNOTATION_PREFIX, pivot_state};

/// The field manager fledge applies with.
pub const FIELD_MANAGER: &str = "fledge";

/// Errors from applying.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The kubeconfig could not be loaded.
    #[error("cannot load kubeconfig {}", path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(KUBECONFIG or ~/.kube/config)".into()))]
    Kubeconfig {
        /// The file, when one was named.
        path: Option<PathBuf>,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// A dry run cannot check objects in a namespace that does not exist yet.
    #[error(
        "namespace {0} does not exist, so the server cannot check the objects in it under --dry-run=server; create it first (kubectl create namespace {0})"
    )]
    NamespaceMissing(String),
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
    /// Lifetime of the agent's first management token ([`crate::token`]);
    /// [`crate::token::DEFAULT_DURATION`] when `None`.
    pub token_duration: Option<Duration>,
}

/// A cluster to apply to: a client and the API server URL it talks to.
#[derive(Clone)]
pub struct Target {
    /// The client.
    pub client: kube::Client,
    /// The API server URL, for messages.
    pub server: String,
    /// The CA certificates (DER) the kubeconfig trusts it by, if it names any.
    pub ca_certs: Option<Vec<Vec<u8>>>,
}

/// Builds a client from a kubeconfig file (or the default locations), with short timeouts.
pub async fn client_from_kubeconfig(path: Option<&Path>) -> Result<Target, ApplyError> {
    let config = config_from_kubeconfig(path).await?;
    let server = config.cluster_url.to_string();
    let ca_certs = config.root_cert.clone();
    let client = kube::Client::try_from(config).map_err(|e| ApplyError::Kubeconfig {
        path: path.map(Path::to_path_buf),
        source: Box::new(e),
    })?;
    Ok(Target {
        client,
        server,
        ca_certs,
    })
}

/// Loads a kubeconfig file (or the default locations) into a client configuration with short
/// timeouts, for callers that add layers to the client.
pub async fn config_from_kubeconfig(path: Option<&Path>) -> Result<kube::Config, ApplyError> {
    let kerr = |e: Box<dyn std::error::Error + Send + Sync>| ApplyError::Kubeconfig {
        path: path.map(Path::to_path_buf),
        source: e,
    };
    let mut config = match path {
        Some(p) => {
            let kc = Kubeconfig::read_from(p).map_err(|e| kerr(Box::new(e)))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| kerr(Box::new(e)))?
        }
        None => kube::Config::infer().await.map_err(|e| kerr(Box::new(e)))?,
    };
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(config)
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
                ApplyError::NamespaceMissing(namespace.clone().unwrap_or_default())
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

/// How kubectl names an object: `kind.group/name`, or `kind/name` for the core group.
pub fn label(kind: &str, group: &str, name: &str) -> String {
    if group.is_empty() {
        format!("{}/{name}", kind.to_lowercase())
    } else {
        format!("{}.{group}/{name}", kind.to_lowercase())
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
) -> Result<Vec<Applied>, ApplyError> {
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
        let minted = mint_agent_token(target, c, opts, uid.as_deref()).await?;
        progress(&minted);
        results.push(minted);
    }
    Ok(results)
}

fn names_agent(c: &CheckedCluster) -> String {
    crate::management::Names::new(c.name.as_str()).agent
}

/// The agent's first management token ([`crate::token`]): a bound, expiring token for its
/// ServiceAccount, in the Opaque Secret `<cluster>-fledge-agent-token` with the CA the agent
/// trusts the management plane by (the namespace's `kube-root-ca.crt`, else the kubeconfig's).
/// A token not yet due for renewal is kept, so that applying again changes nothing; a legacy
/// token Secret (which never expires) is replaced. The Secret is owned by the FledgeCluster
/// (`uid`), like the rest of the agent's access.
pub async fn mint_agent_token(
    target: &Target,
    c: &CheckedCluster,
    opts: &ApplyOptions,
    uid: Option<&str>,
) -> Result<Applied, ApplyError> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let names = crate::management::Names::new(c.name.as_str());
    let ns = c.namespace.as_str();
    let object = label("Secret", "", &names.agent_token);
    let request = |source| ApplyError::Request {
        object: object.clone(),
        source,
    };
    let secrets: Api<Secret> = Api::namespaced(target.client.clone(), ns);
    let existing = secrets.get_opt(&names.agent_token).await.map_err(request)?;
    let legacy = existing
        .as_ref()
        .is_some_and(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"));
    let current = existing.as_ref().filter(|_| !legacy).and_then(|s| {
        let token = s.data.as_ref()?.get("token")?;
        crate::token::claims(&String::from_utf8_lossy(&token.0))
    });
    if let (Some(s), Some(claims)) = (&existing, current)
        && !crate::token::renewal_due(&claims, jiff::Timestamp::now().as_second())
    {
        return Ok(Applied {
            object,
            outcome: Outcome::Unchanged,
            resource_version: s.metadata.resource_version.clone(),
            namespace: Some(ns.to_string()),
        });
    }
    if legacy {
        secrets
            .delete(&names.agent_token, &Default::default())
            .await
            .map_err(request)?;
    }
    let duration = opts
        .token_duration
        .unwrap_or(crate::token::DEFAULT_DURATION);
    let token = crate::token::request(&target.client, ns, &names.agent, duration)
        .await
        .map_err(request)?;
    let root_ca = Api::<ConfigMap>::namespaced(target.client.clone(), ns)
        .get_opt("kube-root-ca.crt")
        .await
        .map_err(request)?
        .and_then(|cm| cm.data?.get("ca.crt").cloned());
    let Some(ca) = root_ca.or_else(|| target.ca_certs.as_deref().map(pem)) else {
        return Err(ApplyError::Refused {
            object,
            reason: format!(
                "no CA for the agent to trust {} by: namespace {ns} has no kube-root-ca.crt ConfigMap (kube-controller-manager publishes it) and the kubeconfig names no certificate-authority",
                target.server
            ),
        });
    };
    let mut secret = Secret::default();
    secret.metadata.name = Some(names.agent_token.clone());
    secret.metadata.namespace = Some(ns.to_string());
    secret.metadata.labels = Some(
        [
            ("cluster.x-k8s.io/cluster-name", c.name.as_str()),
            ("app.kubernetes.io/managed-by", "fledge"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    if let Some(uid) = uid {
        secret.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: crate::spec::API_VERSION.into(),
                kind: "FledgeCluster".into(),
                name: c.name.to_string(),
                uid: uid.to_string(),
                ..Default::default()
            },
        ]);
    }
    secret.type_ = Some("Opaque".into());
    secret.data = Some(
        [
            ("token".to_string(), ByteString(token.into_bytes())),
            ("ca.crt".to_string(), ByteString(ca.into_bytes())),
        ]
        .into(),
    );
    let pp = kube::api::PostParams::default();
    let (written, outcome) = match existing.filter(|_| !legacy) {
        Some(old) => {
            secret.metadata.resource_version = old.metadata.resource_version;
            (
                secrets.replace(&names.agent_token, &pp, &secret).await,
                Outcome::Configured,
            )
        }
        None => (secrets.create(&pp, &secret).await, Outcome::Created),
    };
    let written = written.map_err(request)?;
    Ok(Applied {
        object,
        outcome,
        resource_version: written.metadata.resource_version,
        namespace: Some(ns.to_string()),
    })
}

/// DER certificates as a PEM bundle.
fn pem(ders: &[Vec<u8>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
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
