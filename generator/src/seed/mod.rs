//! Seed images written natively: NoCloud ISO9660 (+Joliet, volume id `cidata`), NoCloud vfat
//! (FAT12/16, label `CIDATA`), and OpenStack config-drive v2 (ISO9660, label `config-2`).
//!
//! Images are byte-for-byte deterministic: files are laid out in sorted order, every timestamp
//! is `SOURCE_DATE_EPOCH` (or 2000-01-01T00:00:00Z), and the vfat serial is derived from the
//! content.

mod fat;
mod iso;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::Offset;

/// Seed image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeedFormat {
    /// NoCloud on ISO9660 with Joliet names, volume id `cidata` (like `cloud-localds`).
    NocloudIso,
    /// NoCloud on vfat, label `CIDATA` (like `cloud-localds -f vfat`).
    NocloudVfat,
    /// OpenStack config-drive v2 on ISO9660, label `config-2`.
    ConfigDrive,
}

impl SeedFormat {
    /// The file name `fledge render` writes the image to.
    pub fn file_name(self) -> &'static str {
        match self {
            SeedFormat::NocloudVfat => "seed.img",
            _ => "seed.iso",
        }
    }
}

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The content does not fit the format's limits.
    #[error("seed content is too large for {image}")]
    TooLarge {
        /// The image format's name, such as `ISO9660`.
        image: &'static str,
    },
    /// A file name cannot be represented.
    #[error("file name {0:?} cannot be stored in the image")]
    BadName(String),
    /// Static addressing with config-drive is not supported (it needs network_data.json).
    #[error(
        "static addressing (network-config) cannot be put on a config-drive yet; use nocloud-iso or nocloud-vfat"
    )]
    NetworkOnConfigDrive,
}

/// The NoCloud / config-drive content of a seed.
#[derive(Debug, Clone)]
pub struct SeedContent {
    /// user-data bytes.
    pub user_data: Vec<u8>,
    /// meta-data bytes (YAML with instance-id and local-hostname).
    pub meta_data: Vec<u8>,
    /// network-config bytes, if any.
    pub network_config: Option<Vec<u8>>,
    /// vendor-data bytes, if any.
    pub vendor_data: Option<Vec<u8>>,
}

/// A directory tree of the image.
#[derive(Debug, Default, Clone)]
pub(crate) struct Dir {
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: BTreeMap<String, Dir>,
}

impl Dir {
    /// A hash of every path and its bytes, in order.
    fn digest(&self) -> [u8; 32] {
        fn feed(d: &Dir, prefix: &str, h: &mut Sha256) {
            for (name, data) in &d.files {
                h.update(format!("{prefix}{name}\0{}\0", data.len()).as_bytes());
                h.update(data);
            }
            for (name, sub) in &d.dirs {
                feed(sub, &format!("{prefix}{name}/"), h);
            }
        }
        let mut h = Sha256::new();
        feed(self, "", &mut h);
        h.finalize().into()
    }

    fn insert(&mut self, path: &str, data: Vec<u8>) {
        match path.split_once('/') {
            Some((d, rest)) => self
                .dirs
                .entry(d.to_string())
                .or_default()
                .insert(rest, data),
            None => {
                self.files.insert(path.to_string(), data);
            }
        }
    }
}

/// The time of every timestamp in an image.
pub fn timestamp() -> Timestamp {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|&t| (315_532_800..=4_102_444_800).contains(&t)) // 1980..2100: what FAT and ISO can hold
        .and_then(|t| Timestamp::from_second(t).ok())
        .unwrap_or(Timestamp::constant(946_684_800, 0)) // 2000-01-01T00:00:00Z
}

/// `t` as a UTC calendar time, the form FAT and ISO9660 record.
pub(crate) fn civil(t: Timestamp) -> DateTime {
    Offset::UTC.to_datetime(t)
}

/// Builds an image of `format` from `content`.
pub fn build(format: SeedFormat, content: &SeedContent) -> Result<Vec<u8>, SeedError> {
    let t = timestamp();
    let mut root = Dir::default();
    match format {
        SeedFormat::NocloudIso | SeedFormat::NocloudVfat => {
            root.insert("user-data", content.user_data.clone());
            root.insert("meta-data", content.meta_data.clone());
            if let Some(n) = &content.network_config {
                root.insert("network-config", n.clone());
            }
            if let Some(v) = &content.vendor_data {
                root.insert("vendor-data", v.clone());
            }
        }
        SeedFormat::ConfigDrive => {
            if content.network_config.is_some() {
                return Err(SeedError::NetworkOnConfigDrive);
            }
            root.insert(
                "openstack/latest/meta_data.json",
                config_drive_meta(&content.meta_data),
            );
            root.insert("openstack/latest/user_data", content.user_data.clone());
            if let Some(v) = &content.vendor_data {
                root.insert("openstack/latest/vendor_data.json", v.clone());
            }
        }
    }
    match format {
        SeedFormat::NocloudIso => iso::build(&root, "cidata", t),
        SeedFormat::ConfigDrive => iso::build(&root, "config-2", t),
        SeedFormat::NocloudVfat => {
            let serial = root.digest();
            fat::build(
                &root,
                "CIDATA",
                u32::from_le_bytes([serial[0], serial[1], serial[2], serial[3]]),
                t,
            )
        }
    }
}

/// OpenStack's meta_data.json from NoCloud meta-data (`instance-id`, `local-hostname`).
fn config_drive_meta(meta: &[u8]) -> Vec<u8> {
    // Bounded like every YAML fledge reads (a meta-data file is the user's input).
    let v = crate::yaml::parse_documents(&String::from_utf8_lossy(meta))
        .ok()
        .and_then(|d| d.into_iter().next())
        .unwrap_or_default();
    let id = v["instance-id"].as_str().unwrap_or("fledge");
    let host = v["local-hostname"].as_str().unwrap_or("localhost");
    let out = serde_json::json!({"uuid": id, "hostname": host, "name": host});
    let mut bytes = serde_json::to_vec(&out).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_drive_meta_reads_meta_data_with_the_bounded_reader() {
        let out = config_drive_meta(b"instance-id: i-1\nlocal-hostname: cp-a\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"uuid\":\"i-1\",\"hostname\":\"cp-a\",\"name\":\"cp-a\"}\n"
        );
        // A repeated key is refused by the bounded reader (plain serde_norway lets the last win),
        // so the meta-data is unusable and the defaults apply.
        let out = config_drive_meta(b"instance-id: i-1\ninstance-id: i-2\n");
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("\"uuid\":\"fledge\""), "{out}");
    }

    #[test]
    fn civil_dates() {
        let c = civil(Timestamp::constant(946_684_800, 0));
        assert_eq!((c.year(), c.month(), c.day(), c.hour()), (2000, 1, 1, 0));
        let c = civil(Timestamp::constant(1_700_000_000, 0));
        assert_eq!(
            (
                c.year(),
                c.month(),
                c.day(),
                c.hour(),
                c.minute(),
                c.second()
            ),
            (2023, 11, 14, 22, 13, 20)
        );
    }
}
