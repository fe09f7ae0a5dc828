//! What only an unpivot does: the providers check before any write, removing the pivot's marks
//! from the target objects once the source is empty, and deleting the target Cluster for a
//! deletion.

use super::*;

impl<'a> Pivot<'a> {
    /// Fails, before any write, unless the target's inventory holds every provider of the
    /// source's at the same or a newer version.
    pub(super) async fn check_providers(&self) -> Result<(), PivotError> {
        use crate::clusterctl::inventory::inventory;
        use crate::pivot::providers::compare;
        let read = |side: &'static str, client: &'a kube::Client| async move {
            self.retry(
                || format!("listing clusterctl's provider inventory in the {side}"),
                || inventory(client),
            )
            .await
            .map_err(|e| match e {
                PivotError::Request { source, .. } => PivotError::Inventory { side, source },
                other => other,
            })
        };
        let Some(source) = read("source", self.source).await? else {
            tracing::warn!(
                "the source has no clusterctl inventory; the target's providers cannot be compared with it"
            );
            return Ok(());
        };
        let target = read("target", self.target).await?.unwrap_or_default();
        let problems = compare(&source, &target);
        if !problems.is_empty() {
            return Err(PivotError::Providers(problems));
        }
        (self.progress)(&Event::ProvidersChecked {
            providers: source.len(),
        });
        Ok(())
    }

    /// Removes [`SOURCE_UID`] from the given target objects that carry it.
    pub(super) async fn unmark(
        &self,
        objects: impl Iterator<Item = (&ApiResource, &DynamicObject)>,
    ) -> Result<(), PivotError> {
        let marked: Vec<(&ApiResource, &DynamicObject)> = objects
            .filter(|(_, o)| {
                o.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(SOURCE_UID))
            })
            .collect();
        let patch = json!({"metadata": {"annotations": {SOURCE_UID: null}}});
        let done = self
            .settle(marked.iter().map(|(ar, o)| {
                let api = self.api(self.target, ar);
                let name = o.metadata.name.clone().unwrap_or_default();
                let patch = &patch;
                async move {
                    match self
                        .merge(&api, &name, patch, || {
                            format!("removing {SOURCE_UID} from {} {name}", ar.kind)
                        })
                        .await
                    {
                        Ok(_) => Ok(1),
                        Err(PivotError::Request { source, .. }) if is_status(&source, 404) => Ok(0),
                        Err(e) => Err(e),
                    }
                }
            }))
            .await?;
        (self.progress)(&Event::Unmarked {
            objects: done.iter().sum(),
        });
        Ok(())
    }

    /// [`Self::unmark`] once the source is empty: the target's objects of the cluster come from
    /// discovering it there (the Cluster itself is unmarked last, by [`Self::complete`]).
    pub(super) async fn unmark_discovered(&self) -> Result<(), PivotError> {
        let graph = discover(self.target, self.namespace, self.cluster).await?;
        // Global identities stay as they are on the management plane (a copy the unpivot made
        // keeps its mark; it is never deleted).
        let objects: Vec<(&ApiResource, DynamicObject)> = graph
            .members
            .iter()
            .filter(|u| graph.location(u).is_none())
            .map(|u| &graph.nodes[u])
            .filter(|n| !(n.obj.kind == "Cluster" && n.obj.name == self.cluster))
            .filter_map(|n| {
                Some((
                    graph.resource(&n.obj)?,
                    serde_json::from_value(n.data.clone()).ok()?,
                ))
            })
            .collect();
        self.unmark(objects.iter().map(|(ar, o)| (*ar, o))).await
    }

    /// Deletes the target Cluster (only the one discovered: UID precondition), unless it is
    /// already being deleted.
    pub(super) async fn delete_target_cluster(
        &self,
        api: &Api<DynamicObject>,
        cluster: &DynamicObject,
    ) -> Result<(), PivotError> {
        if cluster.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: cluster.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self
            .retry(
                || format!("deleting the target Cluster {name}"),
                || async { api.delete(&name, &dp).await },
            )
            .await
        {
            Ok(_) => {}
            Err(PivotError::Request { source, .. })
                if is_status(&source, 404) || is_status(&source, 409) => {}
            Err(e) => return Err(e),
        }
        (self.progress)(&Event::ClusterDeleted);
        Ok(())
    }
}
