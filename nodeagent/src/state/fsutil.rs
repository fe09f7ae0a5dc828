//! Durable file writes: temporary file in the same directory, fsync, rename, directory fsync;
//! moving a file aside without replacing another; resolving a path inside an image root.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Writes `bytes` to `path` atomically with permission bits `mode` (the generator's helper).
pub use fledge_generator::output::write_file_atomic as write_atomic;

/// Opens (creating it and its directory) the empty lock file `path`, mode 0600, for
/// `File::lock`/`File::try_lock` (`flock(2)`: the kernel releases a dead holder's lock).
pub fn open_lock_file(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Renames `path` to `<path>.<tag>` (`<path>.<tag>.1`, `.2`, … when that name is taken), never
/// replacing an existing file, and fsyncs the directory; returns the new name. `link(2)` takes
/// the new name atomically (it fails when the name exists), then the old name is removed: at
/// every moment at least one name holds the bytes.
pub fn move_aside(path: &Path, tag: &str) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    for n in 0..1000u32 {
        let mut new = name.to_os_string();
        new.push(format!(".{tag}"));
        if n > 0 {
            new.push(format!(".{n}"));
        }
        let to = path.with_file_name(new);
        match std::fs::hard_link(path, &to) {
            Ok(()) => {
                std::fs::remove_file(path)?;
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
                return Ok(to);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("1000 names {}.{tag}* are taken", path.display()),
    ))
}

/// Where the absolute `path` is inside the directory tree `root`, resolving symbolic links the
/// way the kernel would after `chroot(root)`: an absolute link target starts again at `root`,
/// and `..` stops at `root`, so the result is always under `root` whatever links the tree holds
/// (an image's `/usr/local/bin -> /tmp/x` is `<root>/tmp/x`). With `follow_last` false the last
/// component is not resolved (for a link to create or a name to remove). Components that do not
/// exist yet are kept as they are. `/` is returned unchanged (the kernel resolves it). Images
/// are not changed by someone else during an install: the result is checked, then used.
pub fn resolve_in_root(root: &Path, path: &Path, follow_last: bool) -> io::Result<PathBuf> {
    if root == Path::new("/") {
        return Ok(path.to_path_buf());
    }
    /// A path component still to resolve.
    enum Part {
        Up,
        Name(OsString),
    }
    fn push_parts(todo: &mut Vec<Part>, p: &Path) {
        // `todo` is a stack: the first component goes on last.
        for c in p.components().rev() {
            match c {
                Component::ParentDir => todo.push(Part::Up),
                Component::Normal(n) => todo.push(Part::Name(n.to_os_string())),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    let mut todo = Vec::new();
    push_parts(&mut todo, path);
    let mut done = PathBuf::new();
    let mut links = 0;
    let mut exists = true;
    while let Some(part) = todo.pop() {
        let name = match part {
            Part::Up => {
                done.pop();
                continue;
            }
            Part::Name(n) => n,
        };
        let here = root.join(&done).join(&name);
        if exists && (follow_last || !todo.is_empty()) {
            match std::fs::symlink_metadata(&here) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > 40 {
                        // ELOOP, as the kernel reports it.
                        return Err(io::Error::from_raw_os_error(40));
                    }
                    let target = std::fs::read_link(&here)?;
                    if target.is_absolute() {
                        done = PathBuf::new();
                    }
                    push_parts(&mut todo, &target);
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => exists = false,
                Err(e) => return Err(e),
            }
        }
        done.push(name);
    }
    Ok(root.join(done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_root_like_a_chroot() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("/tmp/elsewhere", root.join("usr/local")).unwrap();
        symlink("../../../../..", root.join("etc/up")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        let r = |p: &str, follow: bool| resolve_in_root(&root, Path::new(p), follow).unwrap();
        assert_eq!(r("/lib/x", true), root.join("usr/lib/x"));
        assert_eq!(
            r("/usr/local/bin/a", true),
            root.join("tmp/elsewhere/bin/a")
        );
        assert_eq!(r("/etc/up/etc/passwd", true), root.join("etc/passwd"));
        assert_eq!(r("/usr/../../../x", true), root.join("x"));
        // The last component is left alone when asked.
        assert_eq!(r("/lib", false), root.join("lib"));
        assert_eq!(r("/lib", true), root.join("usr/lib"));
        let err = resolve_in_root(&root, Path::new("/loop1/x"), true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(40), "{err}");
        assert_eq!(
            resolve_in_root(Path::new("/"), Path::new("/etc/x"), true).unwrap(),
            Path::new("/etc/x")
        );
    }
}
