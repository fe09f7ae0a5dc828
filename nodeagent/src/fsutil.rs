//! Durable file writes: temporary file in the same directory, fsync, rename, directory fsync.

/// Writes `bytes` to `path` atomically with permission bits `mode` (the generator's helper).
pub use fledge_generator::output::write_file_atomic as write_atomic;
pub use fledge_generator::time::rfc3339;

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// Opens (creating it and its directory) the empty lock file `path`, mode 0600, for
/// `File::lock`/`File::try_lock` (`flock(2)`: the kernel releases a dead holder's lock).
pub fn open_lock_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
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
