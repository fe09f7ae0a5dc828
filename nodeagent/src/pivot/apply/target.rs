//! The target side of the pivot: what it must serve, the bodies it receives (source UID,
//! remapped owners, the agent's files removed), creation group by group, status copies, and
//! the verification before cutover.

use super::*;

impl<'a> Pivot<'a> {
    /// The types of the plan the target serves, failing (before any write) on missing ones.
    pub(super) async fn check_target(
        &self,
        plan: &Plan,
    ) -> Result<HashMap<(String, String), Served>, PivotError> {
        let list = self
            .retry(
                || "listing CRDs in the target".into(),
                || crate::pivot::crds::list(self.target),
            )
            .await?;
        let mut served = HashMap::new();
        for crd in list {
            for v in &crd.spec.versions {
                if v.served {
                    served.insert(
                        (
                            format!("{}/{}", crd.spec.group, v.name),
                            crd.spec.names.kind.clone(),
                        ),
                        Served {
                            status_subresource: v
                                .subresources
                                .as_ref()
                                .is_some_and(|s| s.status.is_some()),
                        },
                    );
                }
            }
        }
        for kind in ["Secret", "ConfigMap"] {
            served.insert(
                ("v1".into(), kind.into()),
                Served {
                    status_subresource: false,
                },
            );
        }
        let missing: BTreeSet<String> = plan
            .groups
            .iter()
            .flat_map(|g| &g.objects)
            .filter(|o| !served.contains_key(&(o.api_version.clone(), o.kind.clone())))
            .map(|o| format!("{} {}", o.kind, o.api_version))
            .collect();
        if missing.is_empty() {
            Ok(served)
        } else {
            Err(PivotError::MissingTypes(missing.into_iter().collect()))
        }
    }

    /// Creates the namespace in the target when it is missing.
    pub(super) async fn ensure_namespace(&self) -> Result<(), PivotError> {
        use k8s_openapi::api::core::v1::Namespace;
        let api: Api<Namespace> = Api::all(self.target.clone());
        let ns = self.namespace;
        if self
            .retry(
                || format!("reading namespace {ns} in the target"),
                || async { api.get_opt(ns).await },
            )
            .await?
            .is_some()
        {
            return Ok(());
        }
        let body: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))
            .map_err(|e| PivotError::Verify(e.to_string()))?;
        match self
            .retry(
                || format!("creating namespace {ns} in the target"),
                || async { api.create(&PostParams::default(), &body).await },
            )
            .await
        {
            Err(PivotError::Request { source, .. }) if is_status(&source, 409) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The object to create in the target, and how many ownerReferences were dropped.
    /// `status` stays in the body when the target's type has no status subresource (the
    /// apiserver keeps it from the create then, and there is no other way to write it).
    pub(super) fn target_body(
        &self,
        node: &Node,
        uids: &HashMap<String, String>,
        is_root: bool,
        we_paused: Option<&str>,
        status_subresource: bool,
    ) -> (Value, usize) {
        let mut v = node.data.clone();
        let mut dropped = 0;
        if let Some(md) = v["metadata"].as_object_mut() {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "managedFields",
                "selfLink",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                md.remove(k);
            }
            let ann = md
                .entry("annotations")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(ann) = ann {
                // An object pivoted before (an unpivot's source) carries the marks of that
                // move: they are replaced, never copied.
                ann.remove(STATE);
                // Another run's (or this run's) move lock stays with the source.
                ann.remove(LOCK);
                ann.insert(SOURCE_UID.into(), Value::String(node.obj.uid.clone()));
                if let (true, Some(origin)) = (is_root, we_paused) {
                    ann.insert(PAUSED_BY.into(), Value::String(origin.into()));
                }
            }
            if let Some(Value::Array(owners)) = md.get_mut("ownerReferences") {
                owners.retain_mut(|o| {
                    let src = o["uid"].as_str().unwrap_or_default().to_string();
                    // An owner with no copy in the target (one that exists nowhere, or a member
                    // not created yet, which only an ownership cycle gives) is left out rather
                    // than pointed at nothing, where the garbage collector would delete the copy.
                    match uids.get(&src) {
                        Some(t) => {
                            o["uid"] = Value::String(t.clone());
                            true
                        }
                        None => {
                            dropped += 1;
                            false
                        }
                    }
                });
                if owners.is_empty() {
                    md.remove("ownerReferences");
                }
            }
        }
        if is_root {
            v["spec"]["paused"] = Value::Bool(true);
        } else if let Some(ann) = v["metadata"]["annotations"].as_object_mut()
            && ann.remove(PAUSED_BY).is_some()
        {
            // A ClusterClass fledge paused in the source: its copy is not paused.
            ann.remove(CLASS_PAUSED);
        }
        if let Some(o) = v.as_object_mut()
            && (status_subresource || !self.opts.copy_status)
        {
            o.remove("status");
        }
        (v, dropped)
    }

    /// Adds to a target object the owners its source has that are now in the target but not yet
    /// among its ownerReferences (a shared object copied by an earlier pivot of another cluster).
    /// Only one owner may be the controller.
    pub(super) async fn add_owners(
        &self,
        ar: &ApiResource,
        node: &Node,
        obj: DynamicObject,
        uids: &HashMap<String, String>,
    ) -> Result<DynamicObject, PivotError> {
        let mut owners: Vec<Value> = obj
            .metadata
            .owner_references
            .iter()
            .flatten()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect();
        let has_controller = owners.iter().any(|o| o["controller"] == true);
        let mut added = 0;
        for src in node.data["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(t) = src["uid"].as_str().and_then(|u| uids.get(u)) else {
                continue;
            };
            if owners.iter().any(|o| o["uid"] == t.as_str()) {
                continue;
            }
            let mut o = src.clone();
            o["uid"] = Value::String(t.clone());
            if has_controller {
                o["controller"] = Value::Bool(false);
            }
            owners.push(o);
            added += 1;
        }
        if added == 0 {
            return Ok(obj);
        }
        let name = obj.metadata.name.clone().unwrap_or_default();
        let api = self.api(self.target, ar);
        let patch = json!({"metadata": {"ownerReferences": owners}});
        self.merge(&api, &name, &patch, || {
            format!("adding owners to the target {}", node.obj)
        })
        .await
    }

    pub(super) async fn create(
        &self,
        api: &Api<DynamicObject>,
        o: &ObjRef,
        body: Value,
    ) -> Result<DynamicObject, PivotError> {
        let obj: DynamicObject =
            serde_json::from_value(body).map_err(|e| PivotError::Verify(format!("{o}: {e}")))?;
        match self
            .retry(
                || format!("creating {o} in the target"),
                || async { api.create(&PostParams::default(), &obj).await },
            )
            .await
        {
            Ok(created) => Ok(created),
            // Created by an attempt whose answer was lost: take it if it is ours.
            Err(PivotError::Request { source, .. }) if is_status(&source, 409) => {
                let got = self
                    .retry(|| format!("reading {o} in the target"), || api.get(&o.name))
                    .await?;
                let src = got
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SOURCE_UID));
                if src == Some(&o.uid) {
                    Ok(got)
                } else {
                    Err(PivotError::Conflict {
                        object: o.to_string(),
                        why: "it appeared while the pivot ran".into(),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Copies the source status unless the target already has it; returns whether it wrote.
    pub(super) async fn copy_status(
        &self,
        ar: &ApiResource,
        o: &ObjRef,
        node: &Node,
        target: &DynamicObject,
    ) -> Result<bool, PivotError> {
        let status = &node.data["status"];
        let empty = status.is_null() || status.as_object().is_some_and(|m| m.is_empty());
        if empty || target.data.get("status") == Some(status) {
            return Ok(false);
        }
        let api = self.api(self.target, ar);
        let name = target.metadata.name.clone().unwrap_or_default();
        let patch = json!({ "status": status });
        self.retry(
            || format!("copying the status of {o}"),
            || async {
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            },
        )
        .await?;
        Ok(true)
    }

    /// Lists the target again and checks every member is there, not being deleted, with its
    /// owners pointing at the target copies of its source owners.
    pub(super) async fn verify(&self, graph: &Graph, plan: &Plan) -> Result<Existing, PivotError> {
        let existing = self.existing(graph, plan).await?;
        let uids: HashMap<&str, &str> = existing
            .iter()
            .filter_map(|(s, o)| Some((s.as_str(), o.metadata.uid.as_deref()?)))
            .collect();
        let mut problems = Vec::new();
        for uid in &graph.members {
            let n = &graph.nodes[uid];
            let Some(t) = existing.get(uid) else {
                problems.push(format!("{} is missing", n.obj));
                continue;
            };
            if t.metadata.deletion_timestamp.is_some() {
                problems.push(format!("{} is being deleted", n.obj));
            }
            let want: BTreeSet<&str> = n
                .owners
                .iter()
                .filter_map(|o| uids.get(o.uid.as_str()).copied())
                .collect();
            let have: BTreeSet<&str> = t
                .metadata
                .owner_references
                .iter()
                .flatten()
                .map(|o| o.uid.as_str())
                .collect();
            // A shared object may also have owners from clusters pivoted before this one; a
            // global one found in the target is left as it was.
            let owners_ok = if graph.global.contains(uid) {
                true
            } else if graph.shared.contains(uid) {
                want.is_subset(&have)
            } else {
                want == have
            };
            if !owners_ok {
                problems.push(format!("{} has owners {have:?}, expected {want:?}", n.obj));
            }
        }
        if problems.is_empty() {
            (self.progress)(&Event::Verified {
                objects: existing.len(),
            });
            Ok(existing)
        } else {
            Err(PivotError::Verify(problems.join("; ")))
        }
    }
}
