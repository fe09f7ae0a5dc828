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
