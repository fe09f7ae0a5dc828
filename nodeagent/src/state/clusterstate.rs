//! The state directory's copy in the local cluster: what a new leader needs when the node that
//! led is gone (CP-A replaced by a control-plane rollout, or dead). The leader keeps the Secret
//! `kube-system/fledge-agent-state` equal to its journal, accepted spec (generation and UID),
//! add-on layer states and deletion request, each write numbered by a sequence; an agent that
//! becomes leader takes it before its first phase when its number is higher than the one its own
//! disk last wrote or took. The on-disk files stay the offline cache.
//!
//! Nothing rolls the cluster back: of two accepted specs the higher generation wins (the rule of
//! [`cache::decide`]), and SpecFetched keeps the newer of the two; a node that comes back with an
//! older copy takes the cluster's. A Secret, not a ConfigMap: the spec names the cluster's
//! secrets, and on disk it is 0600.
//!
//! Every write carries the resourceVersion it read, so two agents that both believe they lead
//! (for the few seconds a lost Lease takes to notice) cannot overwrite each other unseen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;

use super::{deletion, layout};
use crate::state::cache::{self, CachedSpec, Decision};
use crate::state::journal::{Journal, JournalError};

/// Namespace of the Secret.
pub const NAMESPACE: &str = "kube-system";
/// Name of the Secret.
pub const NAME: &str = "fledge-agent-state";
/// Its key holding the write's sequence number.
pub const SEQUENCE: &str = "sequence";
/// Its key holding the node that wrote it.
pub const HOLDER: &str = "holder";

/// Keys of the held files, in the Secret.
pub const JOURNAL: &str = "journal.json";
/// The accepted spec (the on-disk `spec.yaml`).
pub const SPEC: &str = "spec.yaml";
/// The add-on layers' states (`addons/status.json`).
pub const LAYERS: &str = "addons-status.json";
/// The deletion request (`deletion-requested`).
pub const DELETION: &str = "deletion-requested";

/// The held files' contents by key (absent: no such file).
pub type Files = BTreeMap<&'static str, Vec<u8>>;

/// Errors of the cluster-held copy.
#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    /// A request to the local cluster failed.
    #[error("cannot {what} the Secret {NAMESPACE}/{NAME} in the local cluster")]
    Request {
        /// read, create, replace.
        what: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A state file cannot be read or written.
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
    /// The journal cannot be written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The spec cannot be written.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
}

/// The held keys.
pub const KEYS: [&str; 4] = [JOURNAL, SPEC, LAYERS, DELETION];

/// Each held key with its file in `state_dir`.
fn paths(state_dir: &Path) -> [(&'static str, PathBuf); 4] {
    [
        (JOURNAL, crate::state::journal::path(state_dir)),
        (SPEC, cache::path(state_dir)),
        (LAYERS, layout::addons_status(state_dir)),
        (DELETION, deletion::request_path(state_dir)),
    ]
}

/// The file in the state directory that keeps the sequence number this node last wrote or took.
pub fn sequence_path(state_dir: &Path) -> PathBuf {
    state_dir.join(layout::CLUSTER_STATE_SEQUENCE)
}

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> HeldError {
    let path = path.to_path_buf();
    move |source| HeldError::Io { path, op, source }
}

/// The held files as they are on disk.
pub fn read_files(state_dir: &Path) -> Result<Files, HeldError> {
    let mut files = Files::new();
    for (key, path) in paths(state_dir) {
        match std::fs::read(&path) {
            Ok(bytes) => {
                files.insert(key, bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, "read")(e)),
        }
    }
    Ok(files)
}

/// The sequence number this node last wrote or took (0: none).
pub fn disk_sequence(state_dir: &Path) -> u64 {
    std::fs::read_to_string(sequence_path(state_dir))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_sequence(state_dir: &Path, n: u64) -> Result<(), HeldError> {
    let p = sequence_path(state_dir);
    crate::state::fsutil::write_atomic(&p, format!("{n}\n").as_bytes(), 0o600)
        .map_err(io(&p, "write"))
}

/// The cluster's copy: its sequence number and files.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Held {
    /// The write's number.
    pub sequence: u64,
    /// The node that wrote it.
    pub holder: String,
    /// The files.
    pub files: Files,
}

impl Held {
    fn from_secret(s: &Secret) -> Held {
        let data = s.data.clone().unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        };
        let files = KEYS
            .into_iter()
            .filter_map(|k| Some((k, data.get(k)?.0.clone())))
            .collect();
        Held {
            sequence: text(SEQUENCE).and_then(|s| s.parse().ok()).unwrap_or(0),
            holder: text(HOLDER).unwrap_or_default(),
            files,
        }
    }
}

fn parse_spec(bytes: &[u8]) -> Option<CachedSpec> {
    let c: CachedSpec = serde_norway::from_slice(bytes).ok()?;
    (cache::digest(&c.spec) == c.sha256).then_some(c)
}

/// What a new leader takes from the cluster's copy, given its own files: the files to write
/// (an empty map when its disk is as new as the cluster's). Pure.
///
/// - Only a copy numbered higher than `disk_sequence` is taken: a copy this node wrote, or
///   already took, is never newer than its disk.
/// - The spec with the higher generation wins ([`cache::decide`]); a held spec that does not
///   parse or whose hash does not match is never taken.
/// - The journal is the cluster's, but keeps this node's `Installed` and the newer
///   `SpecFetched` (the spec sync on this node may have fetched a newer spec than the leader).
/// - The layers' states and the deletion request are the cluster's when it has them.
pub fn merge(disk: &Files, disk_sequence: u64, held: &Held) -> Files {
    let mut take = Files::new();
    if held.sequence <= disk_sequence {
        return take;
    }
    if let Some(theirs) = held.files.get(SPEC).and_then(|b| parse_spec(b)) {
        let ours = disk.get(SPEC).and_then(|b| parse_spec(b));
        if ours.is_none() || cache::decide(ours.as_ref(), &theirs, None) == Decision::Accept {
            take.insert(SPEC, held.files[SPEC].clone());
        }
    }
    let journal = |b: Option<&Vec<u8>>| b.and_then(|b| serde_json::from_slice::<Journal>(b).ok());
    if let Some(theirs) = journal(held.files.get(JOURNAL)) {
        let ours = journal(disk.get(JOURNAL)).unwrap_or_default();
        let merged = crate::state::journal::merged(&ours, &theirs);
        if Some(&merged) != journal(disk.get(JOURNAL)).as_ref() {
            take.insert(
                JOURNAL,
                serde_json::to_vec_pretty(&merged).unwrap_or_default(),
            );
        }
    }
    for key in [LAYERS, DELETION] {
        if let Some(b) = held.files.get(key)
            && disk.get(key) != Some(b)
        {
            take.insert(key, b.clone());
        }
    }
    take
}

fn api(local: &kube::Client) -> Api<Secret> {
    Api::namespaced(local.clone(), NAMESPACE)
}

/// Reads the cluster's copy (`None`: there is none yet).
pub async fn read(local: &kube::Client) -> Result<Option<(Held, Secret)>, HeldError> {
    let secret = api(local)
        .get_opt(NAME)
        .await
        .map_err(|source| HeldError::Request {
            what: "read",
            source,
        })?;
    Ok(secret.map(|s| (Held::from_secret(&s), s)))
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Restored {
    /// The cluster copy's number (0: there was none).
    pub sequence: u64,
    /// The node that wrote it.
    pub holder: String,
    /// The files taken from it.
    pub taken: Vec<&'static str>,
    /// The spec taken from it (now in the cache), if it was.
    pub spec: Option<CachedSpec>,
}

/// Takes the cluster's copy into the state directory where it is newer ([`merge`]). Run by a
/// new leader before its first phase, under the run lock.
pub async fn restore(local: &kube::Client, state_dir: &Path) -> Result<Restored, HeldError> {
    let Some((held, _)) = read(local).await? else {
        return Ok(Restored::default());
    };
    let ours = disk_sequence(state_dir);
    let take = merge(&read_files(state_dir)?, ours, &held);
    let (mut taken, mut taken_spec) = (Vec::new(), None);
    for (key, bytes) in &take {
        match *key {
            JOURNAL => {
                if let Ok(theirs) = serde_json::from_slice::<Journal>(bytes) {
                    Journal::adopt(state_dir, &theirs)?;
                }
            }
            SPEC => {
                if let Some(spec) = parse_spec(bytes) {
                    cache::store(state_dir, &spec)?;
                    taken_spec = Some(spec);
                }
            }
            DELETION => deletion::adopt_request(state_dir, bytes)
                .map_err(io(&deletion::request_path(state_dir), "write"))?,
            _ => {
                let path = layout::addons_status(state_dir);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io(dir, "create"))?;
                }
                crate::state::fsutil::write_atomic(&path, bytes, 0o600)
                    .map_err(io(&path, "write"))?;
            }
        }
        taken.push(*key);
    }
    if held.sequence > ours {
        write_sequence(state_dir, held.sequence)?;
    }
    Ok(Restored {
        sequence: held.sequence,
        holder: held.holder,
        taken,
        spec: taken_spec,
    })
}

/// Makes the cluster's copy equal to the state directory, numbered one higher than both the
/// copy and this node's last number. `last` is what this process last published: nothing is
/// written (and `Ok(None)` returned) while the files are unchanged. Run by the leader after each
/// attempt, under the run lock.
pub async fn publish(
    local: &kube::Client,
    state_dir: &Path,
    holder: &str,
    last: &mut Option<Files>,
) -> Result<Option<u64>, HeldError> {
    let files = read_files(state_dir)?;
    if last.as_ref() == Some(&files) {
        return Ok(None);
    }
    let current = read(local).await?;
    let sequence = current
        .as_ref()
        .map_or(0, |(h, _)| h.sequence)
        .max(disk_sequence(state_dir))
        + 1;
    let mut data: BTreeMap<String, ByteString> = files
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
        .collect();
    data.insert(
        SEQUENCE.into(),
        ByteString(sequence.to_string().into_bytes()),
    );
    data.insert(HOLDER.into(), ByteString(holder.as_bytes().to_vec()));
    let written = match current {
        None => {
            let mut s = Secret::default();
            s.metadata.name = Some(NAME.into());
            s.metadata.namespace = Some(NAMESPACE.into());
            s.metadata.labels = Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "fledge".to_string(),
                )]
                .into(),
            );
            s.type_ = Some("Opaque".into());
            s.data = Some(data);
            api(local)
                .create(&PostParams::default(), &s)
                .await
                .map_err(|source| HeldError::Request {
                    what: "create",
                    source,
                })
        }
        Some((_, mut s)) => {
            // With the resourceVersion read: a concurrent writer makes this a 409.
            s.data = Some(data);
            s.string_data = None;
            api(local)
                .replace(NAME, &PostParams::default(), &s)
                .await
                .map_err(|source| HeldError::Request {
                    what: "replace",
                    source,
                })
        }
    };
    written?;
    write_sequence(state_dir, sequence)?;
    *last = Some(files);
    Ok(Some(sequence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::journal::{Entry, Outcome, Phase};

    fn spec(generation: i64, uid: &str, workers: i64) -> Vec<u8> {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/docker.yaml"
        ))
        .unwrap();
        let mut s = fledge_generator::spec::parse_request("docker.yaml", text.as_bytes())
            .unwrap()
            .spec;
        s.workers[0].replicas = workers;
        serde_norway::to_string(&CachedSpec::new(generation, uid, s))
            .unwrap()
            .into_bytes()
    }

    fn entry(phase: Phase, time: &str, generation: i64) -> Entry {
        Entry {
            phase,
            outcome: Outcome::Succeeded,
            time: time.into(),
            message: None,
            generation: Some(generation),
        }
    }

    fn journal(entries: Vec<Entry>) -> Vec<u8> {
        serde_json::to_vec_pretty(&Journal {
            version: 1,
            phases: entries,
        })
        .unwrap()
    }

    fn held(sequence: u64, files: Files) -> Held {
        Held {
            sequence,
            holder: "cp-a".into(),
            files,
        }
    }

    #[test]
    fn a_copy_not_newer_than_the_disk_is_not_taken() {
        let disk = Files::from([(SPEC, spec(1, "u", 1))]);
        let theirs = Files::from([(SPEC, spec(2, "u", 2)), (DELETION, b"{}".to_vec())]);
        assert!(merge(&disk, 7, &held(7, theirs.clone())).is_empty());
        assert!(merge(&disk, 8, &held(7, theirs.clone())).is_empty());
        assert_eq!(
            merge(&disk, 6, &held(7, theirs))
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [DELETION, SPEC]
        );
    }

    #[test]
    fn of_two_specs_the_higher_generation_wins_and_a_corrupt_one_is_never_taken() {
        let newer = spec(3, "u", 3);
        let older = spec(2, "u", 2);
        // The cluster's is newer: taken, over an older disk copy or none.
        let take = merge(
            &Files::from([(SPEC, older.clone())]),
            0,
            &held(5, Files::from([(SPEC, newer.clone())])),
        );
        assert_eq!(take.get(SPEC), Some(&newer));
        let take = merge(
            &Files::new(),
            0,
            &held(5, Files::from([(SPEC, newer.clone())])),
        );
        assert_eq!(take.get(SPEC), Some(&newer));
        // The disk's is newer (this node's spec sync fetched it): kept.
        let take = merge(
            &Files::from([(SPEC, newer.clone())]),
            0,
            &held(5, Files::from([(SPEC, older)])),
        );
        assert!(!take.contains_key(SPEC));
        // A held spec whose hash does not match.
        let forged = String::from_utf8(newer)
            .unwrap()
            .replace("replicas: 3", "replicas: 9")
            .into_bytes();
        let take = merge(&Files::new(), 0, &held(5, Files::from([(SPEC, forged)])));
        assert!(!take.contains_key(SPEC), "{take:?}");
    }

    #[test]
    fn the_journal_is_the_clusters_with_this_nodes_installed_and_the_newer_spec_fetched() {
        let ours = journal(vec![
            entry(Phase::Installed, "b-installed", 0),
            entry(Phase::SpecFetched, "b-fetched", 4),
        ]);
        let theirs = journal(vec![
            entry(Phase::Installed, "a-installed", 0),
            entry(Phase::SpecFetched, "a-fetched", 3),
            entry(Phase::ProvidersInstalled, "a-providers", 1),
            entry(Phase::Steady, "a-steady", 3),
        ]);
        let take = merge(
            &Files::from([(JOURNAL, ours)]),
            0,
            &held(2, Files::from([(JOURNAL, theirs)])),
        );
        let j: Journal = serde_json::from_slice(&take[JOURNAL]).unwrap();
        let times: Vec<_> = j.phases.iter().map(|e| e.time.as_str()).collect();
        assert_eq!(
            times,
            ["b-installed", "b-fetched", "a-providers", "a-steady"]
        );
        assert!(j.done(Phase::Steady));
    }
}
