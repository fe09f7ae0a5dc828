//! When a layer is healthy: each of its objects by its kind's rule ([`health`]), and how long it
//! has not been, on the monotonic clock ([`LayerClock`]) for its timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::applyset::{Kinds, group_kind, key};
use crate::phases::{Context, PhaseError};

/// When each layer was first seen unhealthy, on the monotonic clock (a wall clock that jumps,
/// as on a node that boots before its time is synchronised, must not fail a layer early or
/// late). Kept by the runner across attempts; a restarted agent gives a layer its full timeout
/// again.
#[derive(Debug, Clone, Default)]
pub struct LayerClock(std::sync::Arc<std::sync::Mutex<BTreeMap<String, std::time::Instant>>>);

impl LayerClock {
    /// How long `layer` has been unhealthy (zero on the first call since it was healthy).
    pub fn unhealthy_for(&self, layer: &str, now: std::time::Instant) -> Duration {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        now.saturating_duration_since(*m.entry(layer.to_string()).or_insert(now))
    }

    /// `layer` is healthy (or gone): its timer stops.
    pub fn healthy(&self, layer: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(layer);
    }
}

/// Why the first unhealthy object of `objects` is not healthy; None when all are.
pub(super) async fn unhealthy(
    ctx: &Context,
    kinds: &mut Kinds,
    objects: &[Value],
) -> Result<Option<String>, PhaseError> {
    let mut waiting = Vec::new();
    for o in objects {
        let gk = group_kind(o);
        let (_, ns, name) = key(o);
        let Some(api) = kinds
            .api(&ctx.local, &gk, (!ns.is_empty()).then_some(ns.as_str()))
            .await?
        else {
            waiting.push(format!("{gk} {name}: the kind is not served"));
            continue;
        };
        let live = api
            .get_opt(&name)
            .await
            .map_err(|source| PhaseError::Request {
                what: format!("read {gk} {ns}/{name}"),
                source,
            })?;
        let why = match live {
            None => Some("not found".to_string()),
            Some(l) => health(&gk, &serde_json::to_value(&l).unwrap_or_default()),
        };
        if let Some(why) = why {
            waiting.push(format!(
                "{gk} {}{name} {why}",
                if ns.is_empty() {
                    String::new()
                } else {
                    format!("{ns}/")
                }
            ));
        }
    }
    Ok((!waiting.is_empty()).then(|| waiting.join("; ")))
}

fn condition_true(o: &Value, kind: &str) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

/// Why a live object is not healthy yet (None: healthy). Pure.
pub fn health(group_kind: &str, o: &Value) -> Option<String> {
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let observed = n(&o["status"]["observedGeneration"]) >= n(&o["metadata"]["generation"]);
    let replicas = o["spec"]["replicas"].as_i64().unwrap_or(1);
    let s = &o["status"];
    match group_kind {
        "Deployment.apps" => {
            let (up, avail) = (n(&s["updatedReplicas"]), n(&s["availableReplicas"]));
            (!(observed && up >= replicas && avail >= replicas))
                .then(|| format!("{avail}/{replicas} available, {up} updated"))
        }
        "StatefulSet.apps" => {
            let (up, ready) = (n(&s["updatedReplicas"]), n(&s["readyReplicas"]));
            let observed = observed && s.get("observedGeneration").is_some();
            (!(observed && up >= replicas && ready >= replicas))
                .then(|| format!("{ready}/{replicas} ready, {up} updated"))
        }
        "DaemonSet.apps" => {
            let want = n(&s["desiredNumberScheduled"]);
            let (up, avail) = (n(&s["updatedNumberScheduled"]), n(&s["numberAvailable"]));
            let observed = observed && s.get("observedGeneration").is_some();
            (!(observed && up >= want && avail >= want))
                .then(|| format!("{avail}/{want} available, {up} updated"))
        }
        "CustomResourceDefinition.apiextensions.k8s.io" => {
            (!condition_true(o, "Established")).then(|| "not Established".to_string())
        }
        "Job.batch" => (!condition_true(o, "Complete")).then(|| "not Complete".to_string()),
        "APIService.apiregistration.k8s.io" => {
            (!condition_true(o, "Available")).then(|| "not Available".to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_layer_timeout_runs_on_the_monotonic_clock() {
        let clock = LayerClock::default();
        let t0 = std::time::Instant::now();
        assert_eq!(clock.unhealthy_for("net", t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(clock.unhealthy_for("net", later), Duration::from_secs(30));
        clock.healthy("net");
        assert_eq!(clock.unhealthy_for("net", later), Duration::ZERO);
    }

    #[test]
    fn health_rules() {
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 1}});
        assert_eq!(
            health("Deployment.apps", &d).as_deref(),
            Some("1/2 available, 2 updated")
        );
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert_eq!(health("Deployment.apps", &d), None);
        assert!(health("Job.batch", &json!({})).is_some());
        assert!(
            health(
                "Job.batch",
                &json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
            )
            .is_none()
        );
        assert!(health("ConfigMap", &json!({})).is_none());
        // A DaemonSet the controller has not looked at yet is not healthy.
        assert!(health("DaemonSet.apps", &json!({"metadata": {"generation": 1}})).is_some());
    }
}
