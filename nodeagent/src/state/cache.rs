//! The local copy of the cluster's spec (`/var/lib/fledge/spec.yaml`): the accepted
//! `FledgeClusterSpec` with its generation, the object's UID and the sha256 of its canonical form
//! (compact JSON of the typed spec). A generation lower than the cached one for the same UID is
//! never accepted; a file whose hash does not match is reported as corrupt and never used.

use std::path::{Path, PathBuf};

use fledge_generator::spec::FledgeClusterSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One cached spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CachedSpec {
    /// `metadata.generation` of the FledgeCluster.
    pub generation: i64,
    /// `metadata.uid` of the FledgeCluster.
    pub uid: String,
    /// Lower-case hex sha256 of [`canonical`] of `spec`.
    pub sha256: String,
    /// The spec.
    pub spec: FledgeClusterSpec,
}

/// The canonical bytes of a spec: compact JSON of the typed value (fields in declaration order).
pub fn canonical(spec: &FledgeClusterSpec) -> Vec<u8> {
    serde_json::to_vec(spec).unwrap_or_default()
}

/// sha256 of the canonical form, as lower-case hex.
pub fn digest(spec: &FledgeClusterSpec) -> String {
    Sha256::digest(canonical(spec))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl CachedSpec {
    /// Wraps a spec received from the management plane.
    pub fn new(generation: i64, uid: &str, spec: FledgeClusterSpec) -> CachedSpec {
        CachedSpec {
            generation,
            uid: uid.to_string(),
            sha256: digest(&spec),
            spec,
        }
    }
}

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file is unreadable as a cache or its hash does not match.
    #[error("{path}: cached spec is corrupt ({problem}); it will not be used")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Reading or writing failed.
    #[error("{path}: cannot {op}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What to do with a spec received from the management plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Store and apply it.
    Accept,
    /// Same generation and content as the cache: nothing to do.
    Unchanged,
    /// Lower generation than the cache for the same object: refuse and report.
    Stale {
        /// Cached generation.
        cached: i64,
        /// Offered generation.
        offered: i64,
    },
    /// A different object (deleted and re-created on the management plane) whose generation
    /// is not higher than the cached one: refused, so that a re-created request never rolls the
    /// cluster back, unless it carries [`REPLACES_UID`] naming the cached object's UID.
    Recreated {
        /// UID of the cached object.
        cached_uid: String,
        /// Cached generation.
        cached: i64,
        /// Offered generation.
        offered: i64,
    },
    /// The spec fails fledge's validation: refused, never cached.
    Invalid(Vec<String>),
}

/// Annotation on a re-created FledgeCluster that lets the agent accept it although its
/// generation restarted: its value must be the UID of the object it replaces (the agent's
/// status and `fledge-agent status` show that UID).
pub const REPLACES_UID: &str = "fledge.dev/replaces-uid";

/// The cache file in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(super::layout::SPEC)
}

/// Loads the cache (`None` when there is none), checking the hash.
pub fn load(state_dir: &Path) -> Result<Option<CachedSpec>, CacheError> {
    let p = path(state_dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Io {
                path: p,
                op: "read",
                source,
            });
        }
    };
    let cached: CachedSpec = serde_norway::from_str(&text).map_err(|e| CacheError::Corrupt {
        path: p.clone(),
        problem: e.to_string(),
    })?;
    let actual = digest(&cached.spec);
    if actual != cached.sha256 {
        return Err(CacheError::Corrupt {
            path: p,
            problem: format!("sha256 is {actual}, recorded {}", cached.sha256),
        });
    }
    Ok(Some(cached))
}

/// Decides whether `offered` may replace `cached`; `replaces` is the offered object's
/// [`REPLACES_UID`] annotation.
pub fn decide(
    cached: Option<&CachedSpec>,
    offered: &CachedSpec,
    replaces: Option<&str>,
) -> Decision {
    match cached {
        Some(c)
            if c.uid != offered.uid
                && offered.generation <= c.generation
                && replaces != Some(c.uid.as_str()) =>
        {
            Decision::Recreated {
                cached_uid: c.uid.clone(),
                cached: c.generation,
                offered: offered.generation,
            }
        }
        Some(c) if c.uid == offered.uid && offered.generation < c.generation => Decision::Stale {
            cached: c.generation,
            offered: offered.generation,
        },
        Some(c)
            if c.uid == offered.uid
                && c.generation == offered.generation
                && c.sha256 == offered.sha256 =>
        {
            Decision::Unchanged
        }
        _ => Decision::Accept,
    }
}

/// Stores a spec durably (0600: the spec names the cluster's secrets).
pub fn store(state_dir: &Path, spec: &CachedSpec) -> Result<(), CacheError> {
    let p = path(state_dir);
    let text = serde_norway::to_string(spec).unwrap_or_default();
    crate::state::fsutil::write_atomic(&p, text.as_bytes(), 0o600).map_err(|source| {
        CacheError::Io {
            path: p,
            op: "write",
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FledgeClusterSpec {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/docker.yaml"
        ))
        .unwrap();
        fledge_generator::spec::parse_request("docker.yaml", text.as_bytes())
            .unwrap()
            .spec
    }

    #[test]
    fn store_and_load_round_trip_with_hash() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let c = CachedSpec::new(3, "uid-1", spec());
        store(dir.path(), &c).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(c));
    }

    #[test]
    fn a_corrupted_cache_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &CachedSpec::new(3, "uid-1", spec())).unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        std::fs::write(path(dir.path()), text.replace("v1.33.4", "v1.33.5")).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("cached spec is corrupt (sha256 is"),
            "{err}"
        );
        std::fs::write(path(dir.path()), "garbage: [").unwrap();
        assert!(matches!(load(dir.path()), Err(CacheError::Corrupt { .. })));
    }

    #[test]
    fn a_lower_generation_is_refused_for_the_same_object() {
        let cached = CachedSpec::new(5, "uid-1", spec());
        assert_eq!(
            decide(Some(&cached), &CachedSpec::new(4, "uid-1", spec()), None),
            Decision::Stale {
                cached: 5,
                offered: 4
            }
        );
        assert_eq!(
            decide(Some(&cached), &CachedSpec::new(5, "uid-1", spec()), None),
            Decision::Unchanged
        );
        assert_eq!(
            decide(Some(&cached), &CachedSpec::new(6, "uid-1", spec()), None),
            Decision::Accept
        );
        assert_eq!(decide(None, &cached, None), Decision::Accept);
    }

    #[test]
    fn a_recreated_object_does_not_roll_the_cluster_back() {
        let cached = CachedSpec::new(5, "uid-1", spec());
        // Deleted and re-created: generations restart at 1.
        assert_eq!(
            decide(Some(&cached), &CachedSpec::new(1, "uid-2", spec()), None),
            Decision::Recreated {
                cached_uid: "uid-1".into(),
                cached: 5,
                offered: 1
            }
        );
        // Naming another UID is not enough.
        assert!(matches!(
            decide(
                Some(&cached),
                &CachedSpec::new(1, "uid-2", spec()),
                Some("uid-9")
            ),
            Decision::Recreated { .. }
        ));
        // The explicit annotation naming the cached UID, or a higher generation, is accepted.
        assert_eq!(
            decide(
                Some(&cached),
                &CachedSpec::new(1, "uid-2", spec()),
                Some("uid-1")
            ),
            Decision::Accept
        );
        assert_eq!(
            decide(Some(&cached), &CachedSpec::new(6, "uid-2", spec()), None),
            Decision::Accept
        );
    }
}
