//! Writing an output directory atomically: every file is written and fsynced in a temporary
//! sibling directory, which then replaces the target with renames. On any error the target is
//! left as it was. A directory is only replaced when it is empty or was written by fledge
//! (it holds the `.fledge-output` marker), so `--out` can never wipe unrelated files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of the marker file in every output directory.
pub const MARKER: &str = ".fledge-output";

/// One file of an output directory.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// Path relative to the output directory.
    pub path: PathBuf,
    /// Contents.
    pub contents: Vec<u8>,
    /// Unix permission bits (0o600 for secrets).
    pub mode: u32,
}

impl OutputFile {
    /// A file readable by everyone (0644).
    pub fn public(path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        OutputFile {
            path: path.into(),
            contents: contents.into(),
            mode: 0o644,
        }
    }
}

/// Errors writing an output directory.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The target exists and was not written by fledge.
    #[error(
        "{0} exists and was not written by fledge (no {MARKER} file); choose a new or empty directory"
    )]
    NotOurs(PathBuf),
    /// The target exists and is not a directory.
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    /// A filesystem operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OutputError {
    let path = path.to_path_buf();
    move |source| OutputError::Io { op, path, source }
}

/// Writes `files` as the complete contents of `out`.
pub fn write_dir(out: &Path, files: &[OutputFile]) -> Result<(), OutputError> {
    match fs::symlink_metadata(out) {
        Ok(m) if !m.is_dir() => return Err(OutputError::NotADirectory(out.to_path_buf())),
        Ok(_) => {
            let empty = fs::read_dir(out).map_err(io("read", out))?.next().is_none();
            if !empty && !out.join(MARKER).is_file() {
                return Err(OutputError::NotOurs(out.to_path_buf()));
            }
        }
        Err(_) => {}
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let base = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{base}.tmp-"))
        .tempdir_in(&parent)
        .map_err(io("create a temporary directory in", &parent))?;

    let mut all = files.to_vec();
    all.push(OutputFile::public(
        MARKER,
        format!("written by fledge {}\n", env!("CARGO_PKG_VERSION")),
    ));
    for f in &all {
        let path = staging.path().join(&f.path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(&path)
            .map_err(io("create", &path))?;
        file.write_all(&f.contents).map_err(io("write", &path))?;
        file.sync_all().map_err(io("sync", &path))?;
    }
    sync_tree(staging.path())?;

    let staged = staging.keep();
    let old = parent.join(format!(".{base}.old-{}", std::process::id()));
    let had_old = out.exists();
    if had_old {
        fs::rename(out, &old).map_err(io("move aside", out))?;
    }
    if let Err(e) = fs::rename(&staged, out) {
        if had_old {
            let _ = fs::rename(&old, out);
        }
        let _ = fs::remove_dir_all(&staged);
        return Err(io("rename into place", out)(e));
    }
    sync_dir(&parent)?;
    if had_old {
        fs::remove_dir_all(&old).map_err(io("remove", &old))?;
    }
    Ok(())
}

/// Writes one file atomically: temporary file in the same directory (created if missing),
/// fsync, rename, and an fsync of the directory. The agent uses this for its state files too.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".fledge-tmp-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(&dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(&dir)?.sync_all()
}

/// [`write_file_atomic`] with the module's error type.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), OutputError> {
    write_file_atomic(path, contents, mode).map_err(io("write", path))
}

fn sync_tree(dir: &Path) -> Result<(), OutputError> {
    for entry in fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        if entry
            .file_type()
            .map_err(io("stat", &entry.path()))?
            .is_dir()
        {
            sync_tree(&entry.path())?;
        }
    }
    sync_dir(dir)
}

/// fsyncs a directory so that renames in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), OutputError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_its_own_output_and_refuses_foreign_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        write_dir(&out, &[OutputFile::public("a.yaml", "1")]).unwrap();
        let secret = OutputFile {
            path: "cp-a/secret".into(),
            contents: b"s".to_vec(),
            mode: 0o600,
        };
        write_dir(&out, &[OutputFile::public("b.yaml", "2"), secret]).unwrap();
        assert!(
            !out.join("a.yaml").exists(),
            "old files are replaced, not merged"
        );
        assert_eq!(fs::read_to_string(out.join("b.yaml")).unwrap(), "2");
        let mode = fs::metadata(out.join("cp-a/secret"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);

        let foreign = tmp.path().join("home");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("precious"), "x").unwrap();
        assert!(matches!(
            write_dir(&foreign, &[]),
            Err(OutputError::NotOurs(_))
        ));
        assert_eq!(fs::read_to_string(foreign.join("precious")).unwrap(), "x");
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            2,
            "no temporary directories left behind: {leftovers:?}"
        );
    }
}
