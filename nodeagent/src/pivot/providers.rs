//! The providers check of an unpivot, before any write: every provider clusterctl's inventory
//! records in the source must be in the target's inventory at the same or a newer version, so
//! that the target's controllers understand every object (and every field) the move brings. The
//! inventory itself is read with [`crate::clusterctl::inventory`].

use std::collections::BTreeMap;

/// `v1.13.5` (the leading `v` optional) as a semantic version.
fn parse(v: &str) -> Option<semver::Version> {
    semver::Version::parse(v.strip_prefix('v').unwrap_or(v)).ok()
}

/// What keeps `target` from taking the source's objects: each source provider the target lacks,
/// runs older, or records a version that is not a semantic version. Empty when all is well.
pub fn compare(
    source: &BTreeMap<String, String>,
    target: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, want) in source {
        let Some(have) = target.get(name) else {
            problems.push(format!("{name} {want} is not installed in the target"));
            continue;
        };
        match (parse(want), parse(have)) {
            (Some(w), Some(h)) if h >= w => {}
            (Some(_), Some(_)) => problems.push(format!(
                "{name} is {have} in the target, older than {want} in the source"
            )),
            _ => problems.push(format!(
                "{name}: cannot compare version {have} (target) with {want} (source)"
            )),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_target_needs_every_source_provider_at_the_same_or_a_newer_version() {
        let source = inv(&[
            ("cluster-api", "v1.13.5"),
            ("infrastructure-docker", "v1.13.5"),
        ]);
        let newer = inv(&[
            ("cluster-api", "v1.14.0"),
            ("infrastructure-docker", "v1.13.5"),
            ("ipam-in-cluster", "v1.0.0"),
        ]);
        assert!(compare(&source, &newer).is_empty());
        let problems = compare(
            &source,
            &inv(&[
                ("cluster-api", "v1.13.4"),
                ("infrastructure-docker", "nightly"),
            ]),
        );
        assert_eq!(
            problems,
            [
                "cluster-api is v1.13.4 in the target, older than v1.13.5 in the source",
                "infrastructure-docker: cannot compare version nightly (target) with v1.13.5 (source)",
            ]
        );
        assert_eq!(
            compare(&source, &inv(&[("cluster-api", "v1.13.5")])),
            ["infrastructure-docker v1.13.5 is not installed in the target"]
        );
        // A pre-release is older than its release.
        assert_eq!(
            compare(
                &inv(&[("cluster-api", "v1.13.5")]),
                &inv(&[("cluster-api", "v1.13.5-rc.1")])
            )
            .len(),
            1
        );
    }
}
