//! The source side of the pivot: pausing the Cluster (and its ClusterClass), the state marks,
//! the deletes after cutover (finalizers released first), and the rollback before cutover.

use super::*;

impl<'a> Pivot<'a> {
    /// The cluster's ClusterClass, when it uses one.
    pub(super) fn class<'g>(&self, graph: &'g Graph) -> Option<&'g Node> {
        graph
            .shared
            .iter()
            .map(|u| &graph.nodes[u])
            .find(|n| n.obj.kind == "ClusterClass")
    }

    /// Pauses the cluster's ClusterClass in the source (annotation `cluster.x-k8s.io/paused`),
    /// unless it already is.
    pub(super) async fn pause_class(&self, graph: &Graph) -> Result<(), PivotError> {
        let Some(cc) = self.class(graph) else {
            return Ok(());
        };
        if cc.data["metadata"]["annotations"][CLASS_PAUSED].is_string() {
            return Ok(());
        }
        let ar = graph.resource(&cc.obj).expect("listed");
        let api = self.api(self.source, ar);
        let patch =
            json!({"metadata": {"annotations": {CLASS_PAUSED: "true", PAUSED_BY: "was-unset"}}});
        self.merge(&api, &cc.obj.name, &patch, || {
            format!("pausing the source {}", cc.obj)
        })
        .await?;
        Ok(())
    }

    /// Unpauses the ClusterClass in the source if fledge paused it (`only_kept`: only when it
    /// stays there).
    pub(super) async fn unpause_class(
        &self,
        graph: &Graph,
        only_kept: bool,
    ) -> Result<(), PivotError> {
        let Some(cc) = self.class(graph) else {
            return Ok(());
        };
        if only_kept && !graph.keep.contains_key(&cc.obj.uid) {
            return Ok(());
        }
        let ar = graph.resource(&cc.obj).expect("listed");
        let api = self.api(self.source, ar);
        let Some(current) = self
            .retry(
                || format!("reading the source {}", cc.obj),
                || async { api.get_opt(&cc.obj.name).await },
            )
            .await?
        else {
            return Ok(());
        };
        if current
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(PAUSED_BY))
        {
            let patch = json!({"metadata": {"annotations": {CLASS_PAUSED: null, PAUSED_BY: null}}});
            self.merge(&api, &cc.obj.name, &patch, || {
                format!("unpausing the source {}", cc.obj)
            })
            .await?;
        }
        Ok(())
    }

    /// Pauses the source Cluster; returns whether fledge paused it (now or in an earlier run).
    pub(super) async fn pause_source(&self, graph: &Graph) -> Result<Option<String>, PivotError> {
        let root = self.root(graph);
        let paused = root.data["spec"]["paused"].as_bool() == Some(true);
        let ours = root.data["metadata"]["annotations"][PAUSED_BY]
            .as_str()
            .map(str::to_string);
        if paused {
            (self.progress)(&Event::Paused { now: false });
            return Ok(ours);
        }
        // Remember what to restore: `false`, or no value at all.
        let origin = if root.data["spec"]["paused"].is_boolean() {
            "was-false"
        } else {
            "was-unset"
        };
        let ar = graph.resource(&root.obj).expect("listed");
        let api = self.api(self.source, ar);
        let patch =
            json!({"spec": {"paused": true}, "metadata": {"annotations": {PAUSED_BY: origin}}});
        self.merge(&api, &root.obj.name, &patch, || {
            format!("pausing the source {}", root.obj)
        })
        .await?;
        (self.progress)(&Event::Paused { now: true });
        Ok(Some(origin.to_string()))
    }

    /// Releases an object's finalizers, then deletes it (only if its UID is still the one
    /// discovered). Returns whether this call deleted it.
    pub(super) async fn delete(
        &self,
        client: &kube::Client,
        graph: &Graph,
        node: &Node,
    ) -> Result<bool, PivotError> {
        let ar = graph.resource(&node.obj).expect("listed");
        let api = self.api(client, ar);
        let uid = node.data["metadata"]["uid"]
            .as_str()
            .unwrap_or(&node.obj.uid)
            .to_string();
        let name = node.obj.name.clone();
        let has_finalizers = node.data["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let release = json!({"metadata": {"finalizers": null, "uid": uid}});
        if has_finalizers {
            match self
                .merge(&api, &name, &release, || {
                    format!("releasing the finalizers of {}", node.obj)
                })
                .await
            {
                Ok(_) => {}
                Err(PivotError::Request { source, .. })
                    if is_status(&source, 404) || is_status(&source, 409) =>
                {
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self
            .retry(
                || format!("deleting {}", node.obj),
                || async { api.delete(&name, &dp).await },
            )
            .await
        {
            Ok(either) => {
                // Still there: a finalizer came back after the release. Release it again.
                if let either::Either::Left(obj) = either
                    && obj.metadata.finalizers.is_some_and(|f| !f.is_empty())
                {
                    self.merge(&api, &name, &release, || {
                        format!("releasing the finalizers of {}", node.obj)
                    })
                    .await?;
                }
                Ok(true)
            }
            Err(PivotError::Request { source, .. })
                if is_status(&source, 404) || is_status(&source, 409) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Records the move's state in the management plane's FledgeCluster (`status.pivot`): the
    /// source's for a pivot, the target's for an unpivot. `fledge apply` reads it there: it
    /// stops applying the Cluster API objects once a pivot has started, and applies them again
    /// once an unpivot has completed. Without a FledgeCluster of the cluster's name (a plain
    /// Cluster API cluster) or the right to write its status, there is nothing to mark.
    pub(super) async fn mark(&self, mark: Mark) -> Result<(), PivotError> {
        use fledge_generator::spec::FledgeCluster;
        let direction = self.opts.direction;
        let client = if direction.marks_source() {
            self.source
        } else {
            self.target
        };
        let state = direction.mark_state(mark);
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            self.namespace,
            &ApiResource::erase::<FledgeCluster>(&()),
        );
        let patch = json!({"status": {"pivot": {
            "state": state,
            "lastTransitionTime": crate::time::now_rfc3339(),
        }}});
        let r = self
            .retry(
                || {
                    format!(
                        "recording pivot state {state} on FledgeCluster {}",
                        self.cluster
                    )
                },
                || async {
                    api.patch_status(self.cluster, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                },
            )
            .await;
        match r {
            Err(PivotError::Request { source, .. })
                if is_status(&source, 404) || is_status(&source, 403) =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Undoes a failure before cutover: deletes what this pivot created in the target and
    /// unpauses the source if fledge paused it. Returns the error to report, or, when the
    /// source changed under the move (another run got past cutover, or source objects are
    /// gone, so that the target copies may be the only ones), [`Attempt::Again`]: the state is
    /// read again and the move completed instead.
    pub(super) async fn roll_back(
        &self,
        graph: &Graph,
        plan: &Plan,
        cause: PivotError,
    ) -> Result<Attempt, PivotError> {
        if self.lock_lost() {
            // Another run holds the cluster now: whatever this one would undo is its to use.
            return Err(match cause {
                e @ PivotError::LockLost { .. } => e,
                _ => self.check_lock().err().unwrap_or(cause),
            });
        }
        let rolled_back = match self.try_roll_back(graph, plan).await {
            Ok(RollBack::Done(deleted)) => self.mark(Mark::RolledBack).await.map(|()| deleted),
            Ok(RollBack::SourceChanged(why)) => {
                tracing::warn!(cluster = self.cluster, %why, cause = %cause, "not rolling back");
                return Ok(Attempt::Again(cause));
            }
            Err(e) => Err(e),
        };
        match rolled_back {
            Ok(deleted) => {
                (self.progress)(&Event::RolledBack { deleted });
                Err(PivotError::RolledBack(Box::new(cause)))
            }
            Err(e) => Err(PivotError::RollbackFailed {
                cause: Box::new(cause),
                rollback: e.to_string(),
            }),
        }
    }

    /// Whether the source still holds `o` (the object discovered, by UID).
    async fn in_source(&self, graph: &Graph, o: &ObjRef) -> Result<bool, PivotError> {
        let ar = graph.resource(o).expect("listed");
        let api = self.api(self.source, ar);
        let now = self
            .retry(
                || format!("reading the source {o}"),
                || async { api.get_opt(&o.name).await },
            )
            .await?;
        Ok(now.is_some_and(|n| n.metadata.uid.as_deref() == Some(o.uid.as_str())))
    }

    /// The rollback's writes. Nothing is deleted from the target while the target Cluster is
    /// past cutover or the source Cluster is gone, and no target object whose source copy is
    /// gone: then it may be the only copy.
    pub(super) async fn try_roll_back(
        &self,
        graph: &Graph,
        plan: &Plan,
    ) -> Result<RollBack, PivotError> {
        let root = self.root(graph);
        let cluster_ar = graph.resource(&root.obj).expect("listed");
        let target_api = self.api(self.target, cluster_ar);
        let target_root = self
            .retry(
                || format!("reading the target {}", root.obj),
                || async { target_api.get_opt(&root.obj.name).await },
            )
            .await?;
        let ours_past_cutover = target_root.as_ref().is_some_and(|c| {
            let ann = c.metadata.annotations.as_ref();
            ann.and_then(|a| a.get(SOURCE_UID)) == Some(&root.obj.uid)
                && ann.is_some_and(|a| a.contains_key(STATE))
        });
        if ours_past_cutover {
            return Ok(RollBack::SourceChanged(format!(
                "the target {} is past cutover",
                root.obj
            )));
        }
        if !self.in_source(graph, &root.obj).await? {
            return Ok(RollBack::SourceChanged(format!(
                "the source {} is gone",
                root.obj
            )));
        }
        let existing = self.existing(graph, plan).await?;
        let mut deleted = 0;
        let mut gone = Vec::new();
        for group in plan.groups.iter().rev() {
            for o in &group.objects {
                // The ClusterClass and its templates may serve clusters pivoted earlier.
                let Some(t) = existing
                    .get(&o.uid)
                    .filter(|_| !graph.shared.contains(&o.uid))
                else {
                    continue;
                };
                if !self.in_source(graph, o).await? {
                    gone.push(o.to_string());
                    continue;
                }
                let node = Node {
                    obj: ObjRef {
                        uid: t.metadata.uid.clone().unwrap_or_default(),
                        ..o.clone()
                    },
                    owners: Vec::new(),
                    data: serde_json::to_value(t).unwrap_or_default(),
                };
                deleted += usize::from(self.delete(self.target, graph, &node).await?);
            }
        }
        if !gone.is_empty() {
            return Ok(RollBack::SourceChanged(format!(
                "{} gone from the source; their target copies are kept",
                gone.join(", ")
            )));
        }
        self.unpause_class(graph, false).await?;
        // Read the source Cluster again: the pause may have landed after discovery.
        let ar = graph.resource(&root.obj).expect("listed");
        let api = self.api(self.source, ar);
        let current = self
            .retry(
                || format!("reading the source {}", root.obj),
                || async { api.get(&root.obj.name).await },
            )
            .await?;
        if let Some(origin) = current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PAUSED_BY))
        {
            let patch = json!({"spec": {"paused": unpaused(origin)}, "metadata": {"annotations": {PAUSED_BY: null}}});
            self.merge(&api, &root.obj.name, &patch, || {
                format!("unpausing the source {}", root.obj)
            })
            .await?;
        }
        Ok(RollBack::Done(deleted))
    }
}

/// What a rollback did.
pub(super) enum RollBack {
    /// Deleted this many objects from the target and unpaused the source.
    Done(usize),
    /// Stopped before deleting anything it should not: the source changed under the move.
    SourceChanged(String),
}
