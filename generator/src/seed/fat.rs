//! FAT12 with VFAT long file names, sized to its content. Layout: boot sector, two FATs, the
//! fixed root directory (volume label entry first), then data clusters in sorted order.

use jiff::Timestamp;

use super::{Dir, SeedError, civil};

const SECTOR: usize = 512;
const MAX_FAT12_CLUSTERS: usize = 4084;

fn dos_datetime(t: Timestamp) -> (u16, u16) {
    let c = civil(t);
    let date = (((c.year() - 1980).clamp(0, 127) as u16) << 9)
        | ((c.month() as u16) << 5)
        | c.day() as u16;
    let time = ((c.hour() as u16) << 11) | ((c.minute() as u16) << 5) | (c.second() as u16 / 2);
    (date, time)
}

/// Short (8.3) name for `name`, unique in `taken`.
fn short_name(name: &str, taken: &mut Vec<[u8; 11]>) -> [u8; 11] {
    let keep = |s: &str| -> Vec<u8> {
        s.bytes()
            .map(|b| b.to_ascii_uppercase())
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
            .collect()
    };
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    let (base, ext) = (keep(base), keep(ext));
    for n in 1.. {
        let suffix = format!("~{n}");
        let mut out = [b' '; 11];
        let stem_len = base.len().min(8 - suffix.len());
        out[..stem_len].copy_from_slice(&base[..stem_len]);
        out[stem_len..stem_len + suffix.len()].copy_from_slice(suffix.as_bytes());
        let el = ext.len().min(3);
        out[8..8 + el].copy_from_slice(&ext[..el]);
        if !taken.contains(&out) {
            taken.push(out);
            return out;
        }
    }
    unreachable!("an unused short name always exists")
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &c| {
        ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(c)
    })
}

/// The LFN entries for `name`, in on-disk order (last part first).
fn lfn_entries(name: &str, checksum: u8) -> Vec<[u8; 32]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if !units.len().is_multiple_of(13) {
        units.push(0);
        while !units.len().is_multiple_of(13) {
            units.push(0xFFFF);
        }
    }
    let parts = units.len() / 13;
    let mut out = Vec::new();
    for p in (0..parts).rev() {
        let chunk = &units[p * 13..p * 13 + 13];
        let mut e = [0u8; 32];
        e[0] = (p as u8 + 1) | if p == parts - 1 { 0x40 } else { 0 };
        let slots = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (u, off) in chunk.iter().zip(slots) {
            e[off..off + 2].copy_from_slice(&u.to_le_bytes());
        }
        e[11] = 0x0F;
        e[13] = checksum;
        out.push(e);
    }
    out
}

fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, t: Timestamp) -> [u8; 32] {
    let (date, time) = dos_datetime(t);
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

fn entry_count(d: &Dir) -> usize {
    d.files
        .keys()
        .chain(d.dirs.keys())
        .map(|n| 1 + n.encode_utf16().count().div_ceil(13))
        .sum()
}

struct Alloc {
    cluster_bytes: usize,
    fat: Vec<u16>,
    data: Vec<u8>,
}

impl Alloc {
    /// Allocates a chain for `bytes` bytes (at least one cluster when `min_one`).
    fn chain(&mut self, bytes: &[u8], min_one: bool) -> u32 {
        let n = bytes
            .len()
            .div_ceil(self.cluster_bytes)
            .max(usize::from(min_one));
        if n == 0 {
            return 0;
        }
        let first = self.fat.len() as u32;
        for i in 0..n {
            let this = self.fat.len() as u16;
            self.fat.push(if i + 1 == n { 0xFFF } else { this + 1 });
        }
        let mut chunk = bytes.to_vec();
        chunk.resize(n * self.cluster_bytes, 0);
        self.data.extend_from_slice(&chunk);
        first
    }
}

fn clusters_needed(d: &Dir, cluster_bytes: usize, is_root: bool) -> usize {
    let own = if is_root {
        0
    } else {
        ((2 + entry_count(d)) * 32).div_ceil(cluster_bytes).max(1)
    };
    own + d
        .files
        .values()
        .map(|f| f.len().div_ceil(cluster_bytes))
        .sum::<usize>()
        + d.dirs
            .values()
            .map(|s| clusters_needed(s, cluster_bytes, false))
            .sum::<usize>()
}

/// Writes the entries of `d` (whose own first cluster is `own`, parent's `parent`) and
/// allocates its files and subdirectories. Returns the directory's entry bytes.
fn write_dir(
    d: &Dir,
    own: u32,
    parent: u32,
    alloc: &mut Alloc,
    t: Timestamp,
    root_label: Option<&[u8; 11]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(label) = root_label {
        out.extend_from_slice(&short_entry(label, 0x08, 0, 0, t));
    } else {
        let mut dot = [b' '; 11];
        dot[0] = b'.';
        out.extend_from_slice(&short_entry(&dot, 0x10, own, 0, t));
        dot[1] = b'.';
        out.extend_from_slice(&short_entry(&dot, 0x10, parent, 0, t));
    }
    let mut taken = Vec::new();
    for (name, data) in &d.files {
        let short = short_name(name, &mut taken);
        let cluster = alloc.chain(data, false);
        for e in lfn_entries(name, lfn_checksum(&short)) {
            out.extend_from_slice(&e);
        }
        out.extend_from_slice(&short_entry(&short, 0x20, cluster, data.len() as u32, t));
    }
    for (name, sub) in &d.dirs {
        let short = short_name(name, &mut taken);
        // Reserve the subdirectory's clusters first, fill them after its children are placed.
        let size = ((2 + entry_count(sub)) * 32)
            .div_ceil(alloc.cluster_bytes)
            .max(1)
            * alloc.cluster_bytes;
        let start = alloc.data.len();
        let cluster = alloc.chain(&vec![0; size], true);
        let bytes = write_dir(
            sub,
            cluster,
            if root_label.is_some() { 0 } else { own },
            alloc,
            t,
            None,
        );
        alloc.data[start..start + bytes.len()].copy_from_slice(&bytes);
        for e in lfn_entries(name, lfn_checksum(&short)) {
            out.extend_from_slice(&e);
        }
        out.extend_from_slice(&short_entry(&short, 0x10, cluster, 0, t));
    }
    out
}

/// Builds the image.
pub(super) fn build(
    root: &Dir,
    label: &str,
    serial: u32,
    t: Timestamp,
) -> Result<Vec<u8>, SeedError> {
    let mut label11 = [b' '; 11];
    for (i, b) in label.bytes().take(11).enumerate() {
        label11[i] = b.to_ascii_uppercase();
    }
    let root_entries = (1 + entry_count(root)).div_ceil(16).max(1) * 16;
    let root_sectors = root_entries * 32 / SECTOR;
    let mut spc = 1usize;
    let clusters = loop {
        let c = clusters_needed(root, spc * SECTOR, true).max(1);
        if c <= MAX_FAT12_CLUSTERS {
            break c;
        }
        if spc == 128 {
            return Err(SeedError::TooLarge {
                image: "a FAT12 seed image",
            });
        }
        spc *= 2;
    };
    let fat_sectors = ((clusters + 2) * 3).div_ceil(2).div_ceil(SECTOR);
    let data_start = 1 + 2 * fat_sectors + root_sectors;
    let total = data_start + clusters * spc;

    let mut alloc = Alloc {
        cluster_bytes: spc * SECTOR,
        fat: vec![0xFF8, 0xFFF],
        data: Vec::new(),
    };
    let root_bytes = write_dir(root, 0, 0, &mut alloc, t, Some(&label11));
    debug_assert_eq!(alloc.fat.len() - 2, clusters);

    let mut img = vec![0u8; total * SECTOR];
    // Boot sector / BPB.
    let b = &mut img[..SECTOR];
    b[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
    b[3..11].copy_from_slice(b"FLEDGE  ");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = spc as u8;
    b[14..16].copy_from_slice(&1u16.to_le_bytes());
    b[16] = 2;
    b[17..19].copy_from_slice(&(root_entries as u16).to_le_bytes());
    if total < 65536 {
        b[19..21].copy_from_slice(&(total as u16).to_le_bytes());
    } else {
        b[32..36].copy_from_slice(&(total as u32).to_le_bytes());
    }
    b[21] = 0xF8;
    b[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
    b[24..26].copy_from_slice(&32u16.to_le_bytes());
    b[26..28].copy_from_slice(&2u16.to_le_bytes());
    b[36] = 0x80;
    b[38] = 0x29;
    b[39..43].copy_from_slice(&serial.to_le_bytes());
    b[43..54].copy_from_slice(&label11);
    b[54..62].copy_from_slice(b"FAT12   ");
    // A boot stub that halts: `cli; hlt; jmp $-2` at the jump target.
    b[62..66].copy_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]);
    b[510] = 0x55;
    b[511] = 0xAA;
    // FATs.
    let mut fat = vec![0u8; fat_sectors * SECTOR];
    for (n, &v) in alloc.fat.iter().enumerate() {
        let o = n * 3 / 2;
        if n % 2 == 0 {
            fat[o] = v as u8;
            fat[o + 1] = (fat[o + 1] & 0xF0) | ((v >> 8) as u8 & 0x0F);
        } else {
            fat[o] = (fat[o] & 0x0F) | (((v & 0x0F) as u8) << 4);
            fat[o + 1] = (v >> 4) as u8;
        }
    }
    for copy in 0..2 {
        let at = (1 + copy * fat_sectors) * SECTOR;
        img[at..at + fat.len()].copy_from_slice(&fat);
    }
    let at = (1 + 2 * fat_sectors) * SECTOR;
    img[at..at + root_bytes.len()].copy_from_slice(&root_bytes);
    let at = data_start * SECTOR;
    img[at..at + alloc.data.len()].copy_from_slice(&alloc.data);
    Ok(img)
}
