//! The plan: pure data. Groups in creation order (owners before dependants), object counts,
//! what is skipped and why, and owner references to objects that do not exist ("virtual" owners).

use std::collections::BTreeMap;

use serde::Serialize;

use super::ObjRef;
use super::graph::Graph;

/// One creation group: every object whose owners are all in earlier groups.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Position (0 first).
    pub index: usize,
    /// Objects, sorted by kind and name.
    pub objects: Vec<ObjRef>,
}

/// An ownerReference whose target does not exist.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualOwner {
    /// The object that names it.
    pub object: ObjRef,
    /// Owner kind.
    pub owner_kind: String,
    /// Owner name.
    pub owner_name: String,
    /// Owner uid.
    pub owner_uid: String,
}

/// What will be moved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Namespace.
    pub namespace: String,
    /// Cluster name.
    pub cluster: String,
    /// Creation groups.
    pub groups: Vec<Group>,
    /// Objects of the namespace that stay, and why.
    pub skipped: Vec<(ObjRef, String)>,
    /// Owner references to objects that do not exist.
    pub virtual_owners: Vec<VirtualOwner>,
    /// Objects copied to the target but kept in the source, and why.
    pub kept_in_source: Vec<(ObjRef, String)>,
    /// Types that could not be listed ("Kind group/version", why): none of their objects move.
    pub unlisted_types: Vec<(String, String)>,
    /// Objects the pivot cannot move correctly, and why: the pivot refuses to start.
    pub refused: Vec<(ObjRef, String)>,
    /// Objects to move.
    pub total: usize,
}

/// Computes the plan from a discovered graph.
pub fn plan(g: &Graph, namespace: &str, cluster: &str) -> Plan {
    // Depth: 0 without owners in the move set, else 1 + the deepest owner.
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    let mut changed = true;
    while changed {
        changed = false;
        for uid in &g.members {
            let n = &g.nodes[uid];
            let d = n
                .owners
                .iter()
                .filter(|o| g.members.contains(&o.uid) && o.uid != *uid)
                .map(|o| depth.get(o.uid.as_str()).copied().unwrap_or(0) + 1)
                .max()
                .unwrap_or(0)
                .min(g.members.len()); // cycles cannot grow without bound
            if depth.get(uid.as_str()) != Some(&d) {
                depth.insert(uid, d);
                changed = true;
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<ObjRef>> = BTreeMap::new();
    for (uid, d) in &depth {
        groups
            .entry(*d)
            .or_default()
            .push(g.nodes[*uid].obj.clone());
    }
    let groups: Vec<Group> = groups
        .into_values()
        .enumerate()
        .map(|(index, mut objects)| {
            objects.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
            Group { index, objects }
        })
        .collect();
    let mut virtual_owners = Vec::new();
    for uid in &g.members {
        let n = &g.nodes[uid];
        for o in &n.owners {
            if !g.nodes.contains_key(&o.uid) {
                virtual_owners.push(VirtualOwner {
                    object: n.obj.clone(),
                    owner_kind: o.kind.clone(),
                    owner_name: o.name.clone(),
                    owner_uid: o.uid.clone(),
                });
            }
        }
    }
    let mut skipped = g.excluded.clone();
    skipped.sort();
    let mut kept_in_source: Vec<(ObjRef, String)> = g
        .keep
        .iter()
        .map(|(uid, why)| (g.nodes[uid].obj.clone(), why.clone()))
        .collect();
    kept_in_source.sort_by(|a, b| (&a.0.kind, &a.0.name).cmp(&(&b.0.kind, &b.0.name)));
    Plan {
        namespace: namespace.into(),
        cluster: cluster.into(),
        total: g.members.len(),
        groups,
        skipped,
        virtual_owners,
        kept_in_source,
        unlisted_types: g.unlisted.clone(),
        refused: g.refused.clone(),
    }
}

/// A plan printed under a title other than "Pivot" (`Titled(&plan, "Unpivot")`).
pub struct Titled<'a>(pub &'a Plan, pub &'a str);

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Titled(self, "Pivot").fmt(f)
    }
}

impl std::fmt::Display for Titled<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Titled(plan, title) = *self;
        plan.table(f, title)
    }
}

impl Plan {
    fn table(&self, f: &mut std::fmt::Formatter<'_>, title: &str) -> std::fmt::Result {
        writeln!(
            f,
            "{title} plan for cluster {}/{}: {} objects in {} groups",
            self.namespace,
            self.cluster,
            self.total,
            self.groups.len()
        )?;
        writeln!(
            f,
            "{:<6} {:<28} {:<48} API VERSION",
            "GROUP", "KIND", "NAME"
        )?;
        for g in &self.groups {
            for o in &g.objects {
                writeln!(
                    f,
                    "{:<6} {:<28} {:<48} {}",
                    g.index, o.kind, o.name, o.api_version
                )?;
            }
        }
        if !self.skipped.is_empty() {
            writeln!(f, "\nSkipped:")?;
            for (o, why) in &self.skipped {
                writeln!(f, "  {o}: {why}")?;
            }
        }
        if !self.refused.is_empty() {
            writeln!(f, "\nRefused (the pivot will not start):")?;
            for (o, why) in &self.refused {
                writeln!(f, "  {o}: {why}")?;
            }
        }
        if !self.unlisted_types.is_empty() {
            writeln!(f, "\nTypes not listed (none of their objects are moved):")?;
            for (t, why) in &self.unlisted_types {
                writeln!(f, "  {t}: {why}")?;
            }
        }
        if !self.kept_in_source.is_empty() {
            writeln!(f, "\nCopied, but kept in the source:")?;
            for (o, why) in &self.kept_in_source {
                writeln!(f, "  {o}: {why}")?;
            }
        }
        if !self.virtual_owners.is_empty() {
            writeln!(
                f,
                "\nOwner references to objects that do not exist (dropped from the copies in the target):"
            )?;
            for v in &self.virtual_owners {
                writeln!(
                    f,
                    "  {} -> {}/{} (uid {})",
                    v.object, v.owner_kind, v.owner_name, v.owner_uid
                )?;
            }
        }
        Ok(())
    }
}
