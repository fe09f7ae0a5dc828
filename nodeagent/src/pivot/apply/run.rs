//! The state machine: each pass reads both clusters and moves forward from wherever the move
//! stands (before cutover: pause, settle, create, verify, cutover; after it: delete, complete).

use super::*;

/// How one pass over the clusters ended.
pub(super) enum Attempt {
    Done,
    /// The source changed under a rollback (another run got past cutover, or the source is
    /// gone): read the state again and complete the move.
    Again(PivotError),
}

/// Marks as shared the members whose copy in the target already serves another cluster (an
/// earlier pivot copied it there, and it has an owner that is not one of this pivot's copies):
/// this pivot adds its owners to them and a rollback never deletes them.
fn shared_in_target(graph: &mut Graph, existing: &Existing) {
    let ours: BTreeSet<&str> = existing
        .values()
        .filter_map(|o| o.metadata.uid.as_deref())
        .collect();
    let serving_others: Vec<String> = existing
        .iter()
        .filter(|(_, o)| {
            o.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| !ours.contains(r.uid.as_str()))
        })
        .map(|(src, _)| src.clone())
        .collect();
    graph.shared.extend(serving_others);
}

impl<'a> Pivot<'a> {
    /// [`Self::attempt`], again after a rollback that found the source changed under it.
    pub(super) async fn attempts(&self) -> Result<Summary, PivotError> {
        let mut summary = Summary::default();
        let mut again = 0;
        loop {
            match self.attempt(&mut summary).await? {
                Attempt::Done => return Ok(summary),
                Attempt::Again(cause) if again < 2 => {
                    again += 1;
                    tracing::warn!(
                        cluster = self.cluster,
                        cause = %cause,
                        "the source changed under the move: not rolling back; reading the state again to complete it"
                    );
                }
                Attempt::Again(cause) => return Err(PivotError::Incomplete(Box::new(cause))),
            }
        }
    }

    /// One pass: read both clusters, then move forward from wherever the move stands.
    async fn attempt(&self, summary: &mut Summary) -> Result<Attempt, PivotError> {
        let mut graph = match discover(self.source, self.namespace, self.cluster).await {
            Ok(g) => g,
            Err(DiscoverError::NoCluster { .. }) => {
                // Either the pivot completed (or got past deleting the source Cluster), or there
                // is nothing to move.
                self.finish_without_source(summary).await?;
                return Ok(Attempt::Done);
            }
            Err(e) => return Err(e.into()),
        };
        let plan = plan(&graph, self.namespace, self.cluster);
        if !plan.refused.is_empty() {
            return Err(PivotError::Refused(
                plan.refused
                    .iter()
                    .map(|(o, why)| format!("{o}: {why}"))
                    .collect(),
            ));
        }
        let served = self.check_target(&plan).await?;
        let existing = self.existing(&graph, &plan).await?;
        shared_in_target(&mut graph, &existing);
        let graph = graph;
        let past_cutover = existing
            .get(&self.root(&graph).obj.uid)
            .and_then(|c| c.metadata.annotations.as_ref()?.get(STATE).cloned())
            .is_some();
        (self.progress)(&Event::Checked {
            objects: plan.total,
            groups: plan.groups.len(),
        });
        if past_cutover {
            // The move lock, before the first write (the checks above only read).
            if !self.take_lock().await? {
                self.finish_without_source(summary).await?;
                return Ok(Attempt::Done);
            }
            let resumed = match self
                .resume(&graph, &plan, &served, &existing, summary)
                .await
            {
                Ok(()) => self.forward(&graph, &plan, existing, summary).await,
                Err(e) => Err(e),
            };
            resumed.map_err(|e| PivotError::Incomplete(Box::new(e)))?;
        } else {
            if self.opts.direction.checks_providers() {
                self.check_providers().await?;
            }
            if !self.take_lock().await? {
                self.finish_without_source(summary).await?;
                return Ok(Attempt::Done);
            }
            // Pause first, wait for the providers' block-move to clear, then discover again:
            // what is moved is what exists once nothing reconciles it any more.
            let settled = self
                .settled(&graph)
                .instrument(tracing::info_span!("settle"))
                .await;
            let (graph, plan, served, existing) = match settled {
                Ok(fresh) => fresh,
                Err(e) => return self.roll_back(&graph, &plan, e).await,
            };
            match self
                .before_cutover(&graph, &plan, &served, existing, summary)
                .await
            {
                Ok(existing) => self
                    .forward(&graph, &plan, existing, summary)
                    .await
                    .map_err(|e| PivotError::Incomplete(Box::new(e)))?,
                Err(e) => return self.roll_back(&graph, &plan, e).await,
            }
        }
        summary.moved = plan.total;
        Ok(Attempt::Done)
    }

    /// [`Self::acquire`]. A failure to take the lock (other than another run holding it) is a
    /// failure before cutover with nothing to undo but the lock itself, which the end of the
    /// run releases if the write landed.
    async fn take_lock(&self) -> Result<bool, PivotError> {
        match self.acquire().await {
            Err(e @ PivotError::Locked(_)) => Err(e),
            Err(e) => Err(PivotError::RolledBack(Box::new(e))),
            ok => ok,
        }
    }

    /// Pauses the source, waits (bounded) until no object of the cluster carries
    /// [`BLOCK_MOVE`], and discovers the cluster again; refuses objects being deleted.
    async fn settled(
        &self,
        graph: &Graph,
    ) -> Result<(Graph, Plan, HashMap<(String, String), Served>, Existing), PivotError> {
        self.ensure_namespace().await?;
        self.mark(Mark::InProgress).await?;
        self.pause_source(graph).await?;
        self.pause_class(graph).await?;
        let start = Instant::now();
        // Polls from 0.5 s, doubling up to 5 s.
        let mut poll = {
            use backon::BackoffBuilder;
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(5))
                .without_max_times()
                .build()
        };
        let graph = loop {
            let g = discover(self.source, self.namespace, self.cluster).await?;
            let mut blocked: Vec<&Node> = g
                .members
                .iter()
                .map(|u| &g.nodes[u])
                .filter(|n| n.data["metadata"]["annotations"][BLOCK_MOVE].is_string())
                .collect();
            if blocked.is_empty() {
                break g;
            }
            // Poll only the blocked objects; discover the whole cluster again once they clear.
            while !blocked.is_empty() {
                let names: Vec<String> = blocked.iter().map(|n| n.obj.to_string()).collect();
                let waited = start.elapsed().as_secs();
                if start.elapsed() >= self.opts.block_move_timeout {
                    return Err(PivotError::Blocked {
                        objects: names,
                        waited,
                    });
                }
                (self.progress)(&Event::Blocked {
                    objects: names,
                    waited,
                });
                tokio::time::sleep(poll.next().unwrap_or(Duration::from_secs(5))).await;
                let mut still = Vec::new();
                for n in blocked {
                    let api = self.member_api(self.source, &g, &n.obj);
                    let now = self
                        .retry(
                            || format!("reading the source {}", n.obj),
                            || async { api.get_opt(&n.obj.name).await },
                        )
                        .await?;
                    let held = now.is_some_and(|o| {
                        o.metadata
                            .annotations
                            .is_some_and(|a| a.contains_key(BLOCK_MOVE))
                    });
                    if held {
                        still.push(n);
                    }
                }
                blocked = still;
            }
        };
        let being_deleted: Vec<String> = graph
            .members
            .iter()
            .map(|u| &graph.nodes[u])
            .filter(|n| n.data["metadata"]["deletionTimestamp"].is_string())
            .map(|n| n.obj.to_string())
            .collect();
        if !being_deleted.is_empty() {
            return Err(PivotError::BeingDeleted(being_deleted));
        }
        let mut graph = graph;
        let plan = plan(&graph, self.namespace, self.cluster);
        let served = self.check_target(&plan).await?;
        let existing = self.existing(&graph, &plan).await?;
        shared_in_target(&mut graph, &existing);
        Ok((graph, plan, served, existing))
    }

    /// The plan's types, one each, of the members in the namespace.
    fn plan_types<'g>(graph: &'g Graph, plan: &Plan) -> Vec<&'g ApiResource> {
        let mut seen = BTreeSet::new();
        plan.groups
            .iter()
            .flat_map(|g| &g.objects)
            .filter(|o| graph.location(&o.uid).is_none())
            .filter(|o| seen.insert((o.api_version.clone(), o.kind.clone())))
            .filter_map(|o| graph.resource(o))
            .collect()
    }

    /// Lists the target and returns the objects this pivot created there (by source UID).
    /// Fails on an object of the same name it did not create.
    pub(super) async fn existing(
        &self,
        graph: &Graph,
        plan: &Plan,
    ) -> Result<Existing, PivotError> {
        let mut by_source = HashMap::new();
        let mut by_name = HashMap::new();
        // Collected before streaming, so the future stays `Send` (see `settle`).
        let work: Vec<_> = Self::plan_types(graph, plan)
            .into_iter()
            .map(|ar| async move {
                let api = self.api(self.target, ar);
                let list = self
                    .retry(
                        || format!("listing {} in the target", ar.plural),
                        || async { api.list(&ListParams::default()).await },
                    )
                    .await?;
                Ok::<_, PivotError>((ar, list.items))
            })
            .collect();
        let lists: Vec<(&ApiResource, Vec<DynamicObject>)> = futures::stream::iter(work)
            .buffered(crate::pivot::discover::LIST_PARALLELISM)
            .try_collect()
            .await?;
        for (ar, items) in lists {
            for obj in items {
                let name = obj.metadata.name.clone().unwrap_or_default();
                let src = obj
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SOURCE_UID))
                    .cloned();
                by_name.insert((ar.kind.clone(), name), src.clone());
                if let Some(src) = src {
                    by_source.insert(src, obj);
                }
            }
        }
        // Members outside the namespace (global identities, their Secrets), one by one: a
        // copy this pivot did not make is left as it is (clusterctl move does the same).
        for uid in graph.located.keys().filter(|u| graph.members.contains(*u)) {
            let o = &graph.nodes[uid].obj;
            let api = self.member_api(self.target, graph, o);
            let got = self
                .retry(
                    || format!("reading {o} in the target"),
                    || async { api.get_opt(&o.name).await },
                )
                .await?;
            if let Some(obj) = got {
                by_source.insert(uid.clone(), obj);
            }
        }
        for uid in &graph.members {
            let o = &graph.nodes[uid].obj;
            if graph.location(uid).is_some() {
                continue;
            }
            match by_name.get(&(o.kind.clone(), o.name.clone())) {
                None => {}
                Some(Some(src)) if src == uid => {}
                Some(Some(src)) => {
                    return Err(PivotError::Conflict {
                        object: o.to_string(),
                        why: format!(
                            "it was pivoted from another object, source uid {src}, not {uid}"
                        ),
                    });
                }
                Some(None) => {
                    return Err(PivotError::Conflict {
                        object: o.to_string(),
                        why: format!("it has no {SOURCE_UID} annotation"),
                    });
                }
            }
        }
        by_source.retain(|src, _| graph.members.contains(src));
        Ok(by_source)
    }

    pub(super) fn root<'g>(&self, graph: &'g Graph) -> &'g Node {
        graph
            .nodes
            .values()
            .find(|n| {
                n.obj.kind == "Cluster"
                    && n.obj.api_version.starts_with("cluster.x-k8s.io/")
                    && n.obj.name == self.cluster
                    && graph.members.contains(&n.obj.uid)
            })
            .expect("discover found the Cluster")
    }

    /// Pause, create, copy status, verify, cutover. Returns the target's objects.
    async fn before_cutover(
        &self,
        graph: &Graph,
        plan: &Plan,
        served: &HashMap<(String, String), Served>,
        mut existing: Existing,
        summary: &mut Summary,
    ) -> Result<Existing, PivotError> {
        let root = self.root(graph);
        // Paused by `settled` before this graph was discovered: its annotation says whether
        // this pivot paused it, and what to restore.
        let we_paused = root.data["metadata"]["annotations"][PAUSED_BY].as_str();
        let mut uids: HashMap<String, String> = existing
            .iter()
            .filter_map(|(src, obj)| Some((src.clone(), obj.metadata.uid.clone()?)))
            .collect();
        for group in &plan.groups {
            let results: Vec<(String, DynamicObject, bool, bool, usize)> =
                self.settle(group.objects.iter().map(|o| {
                    let node = &graph.nodes[&o.uid];
                    let known = existing.get(&o.uid).cloned();
                    let uids = &uids;
                    let is_root = o.uid == root.obj.uid;
                    async move {
                        let ar = graph.resource(o).expect("planned types are listed");
                        let st = served[&(o.api_version.clone(), o.kind.clone())];
                        let global = graph.global.contains(&o.uid);
                        let (obj, created, dropped) = match known {
                            // A global identity (or its Secret) already there stays as it is.
                            Some(obj) if global => (obj, false, 0),
                            // A shared object an earlier pivot copied: this cluster's owners
                            // join the ones already there.
                            Some(obj) if graph.shared.contains(&o.uid) => {
                                (self.add_owners(ar, node, obj, uids).await?, false, 0)
                            }
                            Some(obj) => (obj, false, 0),
                            None => {
                                let (body, dropped) = self.target_body(
                                    node,
                                    uids,
                                    is_root,
                                    we_paused,
                                    st.status_subresource,
                                );
                                if dropped > 0 {
                                    tracing::warn!(object = %o, dropped, "ownerReferences to objects that are not moved are dropped in the target");
                                }
                                let api = self.member_api(self.target, graph, o);
                                (self.create(&api, o, body).await?, true, dropped)
                            }
                        };
                        let copied = if self.opts.copy_status && st.status_subresource && !global {
                            self.copy_status(ar, o, node, &obj).await?
                        } else {
                            false
                        };
                        Ok::<_, PivotError>((o.uid.clone(), obj, created, copied, dropped))
                    }
                }))
                .instrument(tracing::info_span!("create", group = group.index))
                .await?;
            let (mut created, mut statuses) = (0, 0);
            for (src, obj, c, s, d) in results {
                created += usize::from(c);
                summary.dropped_owner_refs += d;
                statuses += usize::from(s);
                if let Some(uid) = obj.metadata.uid.clone() {
                    uids.insert(src.clone(), uid);
                }
                existing.insert(src, obj);
            }
            summary.created += created;
            summary.statuses += statuses;
            (self.progress)(&Event::Created {
                group: group.index,
                of: plan.groups.len(),
                objects: group.objects.len(),
                created,
                statuses,
            });
        }
        let existing = self
            .verify(graph, plan)
            .instrument(tracing::info_span!("verify"))
            .await?;
        // Cutover: from here on, only forward.
        let cluster_ar = graph.resource(&root.obj).expect("listed");
        let target_root = &existing[&root.obj.uid];
        let name = target_root.metadata.name.clone().unwrap_or_default();
        let api = self.api(self.target, cluster_ar);
        let patch = json!({"metadata": {"annotations": {STATE: "cutover"}}});
        self.merge(&api, &name, &patch, || {
            format!("marking the target {} cutover", root.obj)
        })
        .await?;
        (self.progress)(&Event::Cutover);
        Ok(existing)
    }

    /// A run resumed after cutover: checks that everything is in the target and copies any
    /// status an interrupted run did not, before [`Self::forward`] deletes anything.
    async fn resume(
        &self,
        graph: &Graph,
        plan: &Plan,
        served: &HashMap<(String, String), Served>,
        existing: &Existing,
        summary: &mut Summary,
    ) -> Result<(), PivotError> {
        if graph.members.iter().any(|u| !existing.contains_key(u)) {
            return Err(PivotError::Verify(
                "the target Cluster is marked cutover but objects are missing from the target; not deleting anything from the source".into(),
            ));
        }
        if self.opts.copy_status {
            for o in plan.groups.iter().flat_map(|g| &g.objects) {
                if served[&(o.api_version.clone(), o.kind.clone())].status_subresource
                    && !graph.global.contains(&o.uid)
                {
                    let ar = graph.resource(o).expect("listed");
                    summary.statuses += usize::from(
                        self.copy_status(ar, o, &graph.nodes[&o.uid], &existing[&o.uid])
                            .await?,
                    );
                }
            }
        }
        Ok(())
    }

    /// After cutover: delete from the source (the Cluster last), then unpause and complete the
    /// target.
    async fn forward(
        &self,
        graph: &Graph,
        plan: &Plan,
        existing: Existing,
        summary: &mut Summary,
    ) -> Result<(), PivotError> {
        let root = self.root(graph);
        // A ClusterClass that stays in the source (other clusters use it) is unpaused there
        // before anything is deleted, so that no crash can leave it paused.
        self.unpause_class(graph, true).await?;
        for group in plan.groups.iter().rev() {
            let objects: Vec<&ObjRef> = group
                .objects
                .iter()
                .filter(|o| o.uid != root.obj.uid && !graph.keep.contains_key(&o.uid))
                .collect();
            let deleted: Vec<bool> = self
                .settle(
                    objects
                        .iter()
                        .map(|o| self.delete(self.source, graph, &graph.nodes[&o.uid])),
                )
                .instrument(tracing::info_span!("delete", group = group.index))
                .await?;
            let mut n = deleted.iter().filter(|d| **d).count();
            if group.index == 0 {
                // The Cluster goes last, once nothing else of it is left in the source.
                n += usize::from(self.delete(self.source, graph, root).await?);
            }
            summary.deleted += n;
            (self.progress)(&Event::Deleted {
                group: group.index,
                objects: n,
            });
        }
        if !self.opts.direction.leaves_marks() {
            // The source is empty: the source UIDs have served their purpose. The target's
            // objects are discovered again, since a resumed run's graph lacks what an earlier
            // run already deleted from the source.
            self.unmark_discovered().await?;
        }
        let target_root = &existing[&root.obj.uid];
        self.complete(graph.resource(&root.obj).expect("listed"), target_root)
            .instrument(tracing::info_span!("complete"))
            .await
    }

    /// Unpauses the target Cluster if fledge paused it, and marks it complete.
    async fn complete(
        &self,
        ar: &ApiResource,
        target_root: &DynamicObject,
    ) -> Result<(), PivotError> {
        let ours = target_root
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PAUSED_BY));
        // A pivot marks its end on the target Cluster; an unpivot leaves the Cluster as it was
        // before it was ever pivoted (its end is marked on the FledgeCluster).
        let leaves_marks = self.opts.direction.leaves_marks();
        let state = if leaves_marks {
            json!("complete")
        } else {
            Value::Null
        };
        let mut patch = json!({"metadata": {"annotations": {STATE: state, PAUSED_BY: null}}});
        if let Some(origin) = ours {
            patch["spec"] = json!({"paused": unpaused(origin)});
        }
        if !leaves_marks {
            patch["metadata"]["annotations"][SOURCE_UID] = Value::Null;
        }
        let name = target_root.metadata.name.clone().unwrap_or_default();
        let api = self.api(self.target, ar);
        if self.opts.delete_target_cluster {
            self.delete_target_cluster(&api, target_root).await?;
        }
        // A move that removes its marks (an unpivot) marks the FledgeCluster before it unmarks
        // the Cluster: once the Cluster is unmarked, a second run finds nothing left to do, and
        // must find the mark in place.
        if !leaves_marks {
            self.mark(Mark::Complete).await?;
        }
        self.merge(&api, &name, &patch, || {
            format!("unpausing the target Cluster {name}")
        })
        .await?;
        if leaves_marks {
            self.mark(Mark::Complete).await?;
        }
        (self.progress)(&Event::Completed);
        Ok(())
    }

    /// The source Cluster is gone: complete the target if it is past cutover, report that the
    /// pivot already completed, or fail because there is no such cluster anywhere.
    async fn finish_without_source(&self, summary: &mut Summary) -> Result<(), PivotError> {
        let no_cluster = || {
            PivotError::Discover(DiscoverError::NoCluster {
                namespace: self.namespace.into(),
                name: self.cluster.into(),
            })
        };
        let types = crate::pivot::discover::move_types(self.target).await?;
        let Some(ar) = types
            .iter()
            .find(|t| t.group == "cluster.x-k8s.io" && t.kind == "Cluster")
        else {
            return Err(no_cluster());
        };
        let api = self.api(self.target, ar);
        let Some(c) = self
            .retry(
                || format!("reading Cluster {} in the target", self.cluster),
                || async { api.get_opt(self.cluster).await },
            )
            .await?
        else {
            return Err(no_cluster());
        };
        let state = c
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(STATE))
            .cloned();
        match (self.opts.direction.leaves_marks(), state.as_deref()) {
            (true, Some("complete")) => {
                summary.already_complete = true;
                Ok(())
            }
            (true, Some(_)) => self
                .complete(ar, &c)
                .await
                .map_err(|e| PivotError::Incomplete(Box::new(e))),
            (true, None) => Err(no_cluster()),
            // The cluster is in the target and was never pivoted from here, or an unpivot
            // finished (and removed its marks): nothing to move. An unpivot for deletion still
            // deletes it.
            (false, None) => {
                summary.already_complete = true;
                if self.opts.delete_target_cluster {
                    self.delete_target_cluster(&api, &c).await?;
                }
                Ok(())
            }
            (false, Some(_)) => {
                let finish = async {
                    self.unmark_discovered().await?;
                    self.complete(ar, &c).await
                };
                finish
                    .await
                    .map_err(|e| PivotError::Incomplete(Box::new(e)))
            }
        }
    }
}
