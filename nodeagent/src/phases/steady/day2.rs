//! Day-2 planning, pure data: what the local cluster's Cluster API objects must change to match
//! the spec, how disruptive each change is, and which changes are refused or must wait. The
//! `Steady` phase ([`super`]) observes the objects, plans with [`plan`] and then
//! writes; `fledge-agent plan` prints the same plan as a diff.
//!
//! The desired objects are the generator's ([`fledge_generator::workload::objects`]): templates
//! named by their content, the worker MachineDeployments, the KubeadmControlPlane. A leaf of a
//! desired object that differs from the observed object is a change (fields the server added are
//! not compared). Each change is classified:
//! - **no-op**: nothing differs;
//! - **in-place**: a patch that replaces no machine (replicas, certificate days, labels, a new or
//!   removed pool, a missing template restored, any MachineHealthCheck change);
//! - **rollout**: machines are replaced (the Kubernetes version, a new machine or bootstrap
//!   template, the control plane's kubeadm configuration).
//!
//! Refused before anything is written: a downgrade, a skipped minor version. A
//! MachineDeployment whose version would be newer than the control plane's running version waits
//! until the control plane reports it (workers never run ahead of the control plane).
//!
//! An autoscaled pool (its MachineDeployment carries Cluster API's autoscaler size annotations)
//! leaves `replicas` to the autoscaler once it exists: [`for_autoscaler`] drops the field from
//! the desired object while the observed count lies within the bounds, and sets the nearest
//! bound when it does not.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// How disruptive a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Nothing changes.
    NoOp,
    /// Patched in place; no machine is replaced.
    InPlace,
    /// Machines are replaced.
    Rollout,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::NoOp => "no-op",
            Class::InPlace => "in-place",
            Class::Rollout => "rollout",
        })
    }
}

/// One change to one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `Kind/name`.
    pub object: String,
    /// The field path (`spec.version`), or empty for a whole object created or deleted.
    pub path: String,
    /// The observed value (None: absent).
    pub from: Option<Value>,
    /// The desired value (None: deleted).
    pub to: Option<Value>,
    /// Its class.
    pub class: Class,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| match v {
            None => "(none)".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        match (self.path.is_empty(), &self.from, &self.to) {
            (true, None, _) => write!(f, "+ {} ({})", self.object, self.class),
            (true, _, None) => write!(f, "- {} ({})", self.object, self.class),
            _ => write!(
                f,
                "~ {} {}: {} -> {} ({})",
                self.object,
                self.path,
                show(&self.from),
                show(&self.to),
                self.class
            ),
        }
    }
}

/// What the local cluster holds now.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The KubeadmControlPlane.
    pub kcp: Option<Value>,
    /// The cluster's MachineDeployments written by fledge, by name.
    pub machine_deployments: BTreeMap<String, Value>,
    /// Existing templates: (kind, name).
    pub templates: BTreeSet<(String, String)>,
    /// The cluster's MachineHealthChecks written by fledge, by name.
    pub machine_health_checks: BTreeMap<String, Value>,
}

/// The plan for one reconcile.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Every change, in write order.
    pub changes: Vec<Change>,
    /// Indexes (into the desired objects) to write now, in write order: templates, the
    /// KubeadmControlPlane, the MachineDeployments, then the MachineHealthChecks.
    #[serde(skip)]
    pub writes: Vec<usize>,
    /// MachineDeployments to delete (pools removed from the spec).
    pub deletes: Vec<String>,
    /// MachineHealthChecks to delete (switched off, or their pool removed).
    pub deleted_health_checks: Vec<String>,
    /// MachineDeployments that wait for the control plane, with the reason.
    pub deferred: Vec<String>,
}

impl Plan {
    /// The plan's class: its most disruptive change.
    pub fn class(&self) -> Class {
        self.changes
            .iter()
            .map(|c| c.class)
            .max()
            .unwrap_or(Class::NoOp)
    }

    /// The changes as diff lines, then what waits.
    pub fn diff(&self) -> Vec<String> {
        let mut out: Vec<String> = self.changes.iter().map(ToString::to_string).collect();
        out.extend(self.deferred.iter().map(|d| format!("waits: {d}")));
        out
    }
}

/// A spec change the agent will not make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

/// A `vMAJOR.MINOR.PATCH` version.
fn version(s: &str) -> Option<(u64, u64, u64)> {
    let core = s.strip_prefix('v').unwrap_or(s);
    let core = core.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Checks a control-plane version change: no downgrade, no skipped minor.
pub fn check_upgrade(from: &str, to: &str) -> Result<(), Refused> {
    let (Some(f), Some(t)) = (version(from), version(to)) else {
        return Err(Refused(format!(
            "cannot compare Kubernetes versions {from:?} and {to:?}"
        )));
    };
    if t < f {
        return Err(Refused(format!(
            "spec.kubernetesVersion {to} is a downgrade from {from}; Kubernetes does not support downgrades"
        )));
    }
    if t.0 != f.0 || t.1 > f.1 + 1 {
        return Err(Refused(format!(
            "spec.kubernetesVersion {to} skips a minor version after {from}; upgrade to v{}.{}.x first",
            f.0,
            f.1 + 1
        )));
    }
    Ok(())
}

fn name(o: &Value) -> String {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn label(o: &Value) -> String {
    format!("{}/{}", o["kind"].as_str().unwrap_or_default(), name(o))
}

/// Whether two JSON scalars are the same value (`1` and `1.0` are).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// The leaves of `desired` that differ in `observed`, as (path, observed, desired).
pub fn leaf_diff(path: &str, desired: &Value, observed: &Value, out: &mut Vec<(String, Value)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match desired {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                leaf_diff(&join(k), v, observed.get(k).unwrap_or(&Value::Null), out);
            }
        }
        Value::Array(a) => match observed.as_array() {
            Some(o) if o.len() == a.len() => {
                for (i, (d, o)) in a.iter().zip(o).enumerate() {
                    leaf_diff(&format!("{path}[{i}]"), d, o, out);
                }
            }
            _ => out.push((path.to_string(), observed.clone())),
        },
        scalar => {
            if !same(scalar, observed) {
                out.push((path.to_string(), observed.clone()));
            }
        }
    }
}

fn value_at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('.') {
        let (key, idx) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = &cur[key];
        if let Some(i) = idx {
            cur = &cur[i];
        }
    }
    cur
}

/// The class of a changed field of a KubeadmControlPlane, MachineDeployment or
/// MachineHealthCheck.
fn class_of(kind: &str, path: &str) -> Class {
    let in_place = kind == "MachineHealthCheck"
        || path == "spec.replicas"
        || path.starts_with("metadata.")
        || (kind == "KubeadmControlPlane"
            && (path.starts_with("spec.rollout") || path.starts_with("spec.remediation")))
        || (kind == "MachineDeployment" && !path.starts_with("spec.template."));
    if in_place {
        Class::InPlace
    } else {
        Class::Rollout
    }
}

/// The compared part of a desired object: labels, annotations and spec.
fn compared(o: &Value) -> Value {
    serde_json::json!({
        "metadata": {"labels": o["metadata"]["labels"], "annotations": o["metadata"]["annotations"]},
        "spec": o["spec"],
    })
}

/// Plans one reconcile of `desired` (the generator's objects) against `observed`.
pub fn plan(desired: &[Value], observed: &Observed) -> Result<Plan, Refused> {
    let mut plan = Plan::default();
    let kcp_index = desired
        .iter()
        .position(|o| o["kind"] == "KubeadmControlPlane");
    // The control plane: refused changes first, before anything is written.
    let target = kcp_index
        .and_then(|i| desired[i]["spec"]["version"].as_str())
        .unwrap_or_default()
        .to_string();
    let mut running = String::new();
    if let Some(kcp) = &observed.kcp {
        let from = kcp["spec"]["version"].as_str().unwrap_or_default();
        if from != target {
            check_upgrade(from, &target)?;
        }
        // The lowest version the control plane's machines run (v1beta1 and v1beta2 alike).
        running = kcp["status"]["version"]
            .as_str()
            .unwrap_or(from)
            .to_string();
    }
    let cp_at_target = observed.kcp.is_none() || running == target;

    let mut templates = Vec::new();
    let mut kcp_writes = Vec::new();
    let mut md_writes = Vec::new();
    let mut mhc_writes = Vec::new();
    for (i, o) in desired.iter().enumerate() {
        let kind = o["kind"].as_str().unwrap_or_default();
        if kind.ends_with("Template") {
            if !observed.templates.contains(&(kind.to_string(), name(o))) {
                plan.changes.push(Change {
                    object: label(o),
                    path: String::new(),
                    from: None,
                    to: Some(Value::String(name(o))),
                    class: Class::InPlace,
                });
            }
            templates.push(i);
            continue;
        }
        let current = match kind {
            "KubeadmControlPlane" => observed.kcp.as_ref(),
            "MachineDeployment" => observed.machine_deployments.get(&name(o)),
            "MachineHealthCheck" => observed.machine_health_checks.get(&name(o)),
            _ => None,
        };
        let writes = match kind {
            "KubeadmControlPlane" => &mut kcp_writes,
            "MachineHealthCheck" => &mut mhc_writes,
            _ => &mut md_writes,
        };
        let Some(current) = current else {
            plan.changes.push(Change {
                object: label(o),
                path: String::new(),
                from: None,
                to: Some(Value::String(name(o))),
                class: Class::InPlace,
            });
            writes.push(i);
            continue;
        };
        let mut diffs = Vec::new();
        leaf_diff("", &compared(o), current, &mut diffs);
        let upgrades_version = diffs.iter().any(|(p, _)| p == "spec.template.spec.version");
        if kind == "MachineDeployment" && upgrades_version && !cp_at_target {
            plan.deferred.push(format!(
                "MachineDeployment/{} moves to {target} once the control plane runs it (it runs {running})",
                name(o)
            ));
            continue;
        }
        for (path, from) in diffs {
            plan.changes.push(Change {
                object: label(o),
                class: class_of(kind, &path),
                to: Some(value_at(o, &path).clone()),
                from: (!from.is_null()).then_some(from),
                path,
            });
        }
        // Written every reconcile: server-side apply of an unchanged object changes nothing,
        // and it restores a managed field changed by hand.
        writes.push(i);
    }
    let wanted: BTreeSet<String> = desired
        .iter()
        .filter(|o| o["kind"] == "MachineDeployment")
        .map(name)
        .collect();
    for md in observed.machine_deployments.keys() {
        if !wanted.contains(md) {
            plan.changes.push(Change {
                object: format!("MachineDeployment/{md}"),
                path: String::new(),
                from: Some(Value::String(md.clone())),
                to: None,
                class: Class::InPlace,
            });
            plan.deletes.push(md.clone());
        }
    }
    let wanted: BTreeSet<String> = desired
        .iter()
        .filter(|o| o["kind"] == "MachineHealthCheck")
        .map(name)
        .collect();
    for mhc in observed.machine_health_checks.keys() {
        if !wanted.contains(mhc) {
            plan.changes.push(Change {
                object: format!("MachineHealthCheck/{mhc}"),
                path: String::new(),
                from: Some(Value::String(mhc.clone())),
                to: None,
                class: Class::InPlace,
            });
            plan.deleted_health_checks.push(mhc.clone());
        }
    }
    plan.writes = templates
        .into_iter()
        .chain(kcp_writes)
        .chain(md_writes)
        .chain(mhc_writes)
        .collect();
    Ok(plan)
}

/// An autoscaled MachineDeployment's bounds: its `(min, max)` size annotations.
fn autoscaler_bounds(md: &Value) -> Option<(i64, i64)> {
    let a = &md["metadata"]["annotations"];
    let bound = |key: &str| a[key].as_str().and_then(|v| v.parse::<i64>().ok());
    Some((
        bound(fledge_generator::workload::AUTOSCALER_MIN_SIZE)?,
        bound(fledge_generator::workload::AUTOSCALER_MAX_SIZE)?,
    ))
}

/// The desired objects with `replicas` left to the autoscaler: for each autoscaled
/// MachineDeployment that exists already, `spec.replicas` is dropped while the observed count
/// lies within the bounds (whoever set it, the autoscaler or a person, keeps it), and is the
/// nearest bound when it does not. A new MachineDeployment keeps the rendered replicas (the
/// pool's initial size); a pool without bounds keeps its replicas enforced.
pub fn for_autoscaler(desired: &[Value], observed: &Observed) -> Vec<Value> {
    let mut out = desired.to_vec();
    for o in &mut out {
        if o["kind"] != "MachineDeployment" {
            continue;
        }
        let (Some((min, max)), Some(current)) = (
            autoscaler_bounds(o),
            observed.machine_deployments.get(&name(o)),
        ) else {
            continue;
        };
        let Some(spec) = o["spec"].as_object_mut() else {
            continue;
        };
        match current["spec"]["replicas"].as_i64() {
            Some(n) if (min..=max).contains(&n) => {
                spec.remove("replicas");
            }
            Some(n) => {
                spec.insert("replicas".into(), Value::from(n.clamp(min, max)));
            }
            None => {
                spec.insert("replicas".into(), Value::from(min));
            }
        }
    }
    out
}

/// The templates `objects` point at: (kind, name), from KubeadmControlPlanes,
/// MachineDeployments and MachineSets (v1beta2 and v1beta1 layouts).
pub fn referenced_templates(objects: &[Value]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for o in objects {
        let refs = [
            &o["spec"]["machineTemplate"]["spec"]["infrastructureRef"],
            &o["spec"]["machineTemplate"]["infrastructureRef"],
            &o["spec"]["template"]["spec"]["infrastructureRef"],
            &o["spec"]["template"]["spec"]["bootstrap"]["configRef"],
        ];
        for r in refs {
            if let (Some(k), Some(n)) = (r["kind"].as_str(), r["name"].as_str()) {
                out.insert((k.to_string(), n.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_are_checked_before_writing() {
        assert!(check_upgrade("v1.33.4", "v1.33.5").is_ok());
        assert!(check_upgrade("v1.33.4", "v1.34.0").is_ok());
        let down = check_upgrade("v1.34.1", "v1.33.4").unwrap_err().0;
        assert!(down.contains("downgrade"), "{down}");
        let skip = check_upgrade("v1.33.4", "v1.35.0").unwrap_err().0;
        assert!(
            skip.contains("skips a minor") && skip.contains("v1.34.x"),
            "{skip}"
        );
        assert!(check_upgrade("v1.33.4", "v2.0.0").is_err());
    }

    #[test]
    fn only_desired_leaves_are_compared() {
        let mut out = Vec::new();
        leaf_diff(
            "",
            &json!({"spec": {"replicas": 3, "a": [1, 2], "b": {}}}),
            &json!({"spec": {"replicas": 3.0, "a": [1, 2], "defaulted": true}}),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        leaf_diff(
            "",
            &json!({"spec": {"replicas": 3, "a": [1]}}),
            &json!({"spec": {"replicas": 1, "a": [1, 2]}}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                ("spec.replicas".to_string(), json!(1)),
                ("spec.a".to_string(), json!([1, 2]))
            ]
        );
    }

    fn md(replicas: Option<i64>, bounds: Option<(i64, i64)>) -> Value {
        let mut o = json!({"kind": "MachineDeployment", "metadata": {"name": "c-md-0"},
            "spec": {"clusterName": "c"}});
        if let Some(r) = replicas {
            o["spec"]["replicas"] = json!(r);
        }
        if let Some((min, max)) = bounds {
            o["metadata"]["annotations"] = json!({
                fledge_generator::workload::AUTOSCALER_MIN_SIZE: min.to_string(),
                fledge_generator::workload::AUTOSCALER_MAX_SIZE: max.to_string(),
            });
        }
        o
    }

    fn observed_md(replicas: i64, bounds: Option<(i64, i64)>) -> Observed {
        Observed {
            machine_deployments: [("c-md-0".to_string(), md(Some(replicas), bounds))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_autoscaled_pools_replicas_stay_within_bounds_and_are_clamped_outside() {
        let desired = [md(Some(2), Some((1, 5)))];
        // Created with the pool's initial size.
        let new = for_autoscaler(&desired, &Observed::default());
        assert_eq!(new[0]["spec"]["replicas"], 2);
        // Within the bounds (the autoscaler's or a person's count): left alone, no change.
        for n in [1, 4, 5] {
            let obs = observed_md(n, Some((1, 5)));
            let d = for_autoscaler(&desired, &obs);
            assert!(d[0]["spec"].get("replicas").is_none(), "{n}: {d:?}");
            let p = plan(&d, &obs).unwrap();
            assert_eq!(p.class(), Class::NoOp, "{n}: {:?}", p.changes);
            assert_eq!(
                p.writes,
                [0],
                "still written: the annotations stay enforced"
            );
        }
        // Outside them: the nearest bound, an in-place change.
        for (n, want) in [(7, 5), (0, 1)] {
            let obs = observed_md(n, Some((1, 5)));
            let d = for_autoscaler(&desired, &obs);
            assert_eq!(d[0]["spec"]["replicas"], want);
            let p = plan(&d, &obs).unwrap();
            assert_eq!(
                p.diff(),
                [format!(
                    "~ MachineDeployment/c-md-0 spec.replicas: {n} -> {want} (in-place)"
                )]
            );
        }
        // A pool without bounds keeps its replicas enforced.
        let fixed = [md(Some(2), None)];
        let obs = observed_md(4, None);
        let p = plan(&for_autoscaler(&fixed, &obs), &obs).unwrap();
        assert_eq!(
            p.diff(),
            ["~ MachineDeployment/c-md-0 spec.replicas: 4 -> 2 (in-place)"]
        );
    }

    fn mhc(name: &str, timeout: i64) -> Value {
        json!({"kind": "MachineHealthCheck", "metadata": {"name": name},
            "spec": {"clusterName": "c", "checks": {"unhealthyNodeConditions": [
                {"type": "Ready", "status": "Unknown", "timeoutSeconds": timeout}]}}})
    }

    #[test]
    fn health_check_changes_are_in_place_and_switched_off_checks_are_deleted() {
        let observed = Observed {
            machine_health_checks: [
                ("c-control-plane".to_string(), mhc("c-control-plane", 300)),
                ("c-md-0".to_string(), mhc("c-md-0", 300)),
            ]
            .into(),
            ..Default::default()
        };
        // The same: nothing to do (written anyway, which changes nothing).
        let same = [mhc("c-control-plane", 300), mhc("c-md-0", 300)];
        let p = plan(&same, &observed).unwrap();
        assert_eq!(p.class(), Class::NoOp);
        assert_eq!(p.writes, [0, 1]);
        // A timeout changed, md-0's check switched off.
        let p = plan(&[mhc("c-control-plane", 600)], &observed).unwrap();
        assert_eq!(
            p.diff(),
            [
                "~ MachineHealthCheck/c-control-plane spec.checks.unhealthyNodeConditions[0].timeoutSeconds: 300 -> 600 (in-place)",
                "- MachineHealthCheck/c-md-0 (in-place)"
            ]
        );
        assert_eq!(p.class(), Class::InPlace);
        assert_eq!(p.deleted_health_checks, ["c-md-0"]);
        // A new one is created, after the MachineDeployments.
        let p = plan(
            &[mhc("c-md-1", 300), md(Some(1), None)],
            &Observed::default(),
        )
        .unwrap();
        assert_eq!(p.writes, [1, 0]);
    }

    #[test]
    fn references_are_read_from_both_layouts() {
        let refs = referenced_templates(&[
            json!({"spec": {"machineTemplate": {"spec": {"infrastructureRef": {"kind": "A", "name": "a"}}}}}),
            json!({"spec": {"machineTemplate": {"infrastructureRef": {"kind": "B", "name": "b"}}}}),
            json!({"spec": {"template": {"spec": {"infrastructureRef": {"kind": "C", "name": "c"},
                "bootstrap": {"configRef": {"kind": "D", "name": "d"}}}}}}),
        ]);
        let names: Vec<&str> = refs.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }
}
