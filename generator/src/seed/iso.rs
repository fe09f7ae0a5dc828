//! ISO9660 (ECMA-119) with a Joliet supplementary volume descriptor, so that names such as
//! `user-data` are visible as-is to Linux guests. Layout, in 2048-byte sectors:
//! 0-15 system area, 16 PVD, 17 Joliet SVD, 18 terminator, then the four path tables, the
//! primary and Joliet directory extents (breadth-first), then file data in sorted order.

use jiff::Timestamp;

use super::{Dir, SeedError, civil};

const SECTOR: usize = 2048;

/// One directory in breadth-first order.
struct DirInfo<'a> {
    dir: &'a Dir,
    name: String,
    /// ISO level-1 name, as in the parent's directory record (empty for the root).
    primary_name: Vec<u8>,
    parent: usize, // index into the list (root: itself)
    // Extents (sector, byte length) for the primary and Joliet trees.
    primary: (u32, u32),
    joliet: (u32, u32),
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn sectors(bytes: usize) -> usize {
    bytes.div_ceil(SECTOR)
}

/// ISO level-1 name: upper-case d-characters, 8.3, with `;1` for files.
fn primary_name(name: &str, is_dir: bool, taken: &mut Vec<String>) -> String {
    let clean = |s: &str, n: usize| -> String {
        s.chars()
            .map(|c| c.to_ascii_uppercase())
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(n)
            .collect()
    };
    let (base, ext) = match (is_dir, name.rsplit_once('.')) {
        (false, Some((b, e))) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    let mut stem = clean(base, 8);
    let ext = clean(ext, 3);
    let mut n = 1;
    loop {
        let candidate = if is_dir {
            stem.clone()
        } else {
            format!("{stem}.{ext};1")
        };
        if !taken.contains(&candidate) {
            taken.push(candidate.clone());
            return candidate;
        }
        let suffix = format!("~{n}");
        stem = format!("{}{suffix}", clean(base, 8 - suffix.len()));
        n += 1;
    }
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

fn date7(t: Timestamp) -> [u8; 7] {
    let c = civil(t);
    [
        (c.year() - 1900) as u8,
        c.month() as u8,
        c.day() as u8,
        c.hour() as u8,
        c.minute() as u8,
        c.second() as u8,
        0,
    ]
}

fn date17(t: Timestamp) -> [u8; 17] {
    let c = civil(t);
    let s = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        c.year(),
        c.month(),
        c.day(),
        c.hour(),
        c.minute(),
        c.second()
    );
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(s.as_bytes());
    out
}

fn record(name: &[u8], extent: u32, len: u32, is_dir: bool, t: Timestamp) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(extent));
    r[10..18].copy_from_slice(&both32(len));
    r[18..25].copy_from_slice(&date7(t));
    r[25] = if is_dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = name.len() as u8;
    r.extend_from_slice(name);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

/// Lays records into sectors so that none crosses a sector boundary.
fn pack(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let used = out.len() % SECTOR;
        if used + r.len() > SECTOR {
            out.resize(out.len() + SECTOR - used, 0);
        }
        out.extend_from_slice(r);
    }
    let len = sectors(out.len()).max(1) * SECTOR;
    out.resize(len, 0);
    out
}

struct Entry {
    primary: Vec<u8>,
    joliet: Vec<u8>,
    sort_primary: Vec<u8>,
    sort_joliet: Vec<u8>,
    target: Target,
}

enum Target {
    Dir(usize),
    File(usize), // index into files
}

fn put_str(buf: &mut [u8], at: usize, width: usize, s: &[u8], pad: &[u8]) {
    let mut i = 0;
    while i < width {
        buf[at + i] = if i < s.len() {
            s[i]
        } else {
            pad[i % pad.len()]
        };
        i += 1;
    }
}

/// Builds the image.
pub(super) fn build(root: &Dir, volume_id: &str, t: Timestamp) -> Result<Vec<u8>, SeedError> {
    // Breadth-first directory list (path tables require it).
    let mut dirs = vec![DirInfo {
        dir: root,
        name: String::new(),
        primary_name: Vec::new(),
        parent: 0,
        primary: (0, 0),
        joliet: (0, 0),
    }];
    let mut i = 0;
    while i < dirs.len() {
        let d = dirs[i].dir;
        for (name, sub) in &d.dirs {
            dirs.push(DirInfo {
                dir: sub,
                name: name.clone(),
                primary_name: Vec::new(),
                parent: i,
                primary: (0, 0),
                joliet: (0, 0),
            });
        }
        i += 1;
    }
    // Files in order: directory order, then name.
    let mut files: Vec<&[u8]> = Vec::new();
    let mut entries: Vec<Vec<Entry>> = Vec::new();
    let mut dir_names: Vec<(usize, Vec<u8>)> = Vec::new();
    for (di, info) in dirs.iter().enumerate() {
        let mut taken = Vec::new();
        let mut list = Vec::new();
        for (name, data) in &info.dir.files {
            check_name(name)?;
            let p = primary_name(name, false, &mut taken);
            list.push(Entry {
                sort_primary: p.as_bytes().to_vec(),
                primary: p.into_bytes(),
                joliet: ucs2(name),
                sort_joliet: ucs2(name),
                target: Target::File(files.len()),
            });
            files.push(data);
        }
        for (child, info2) in dirs
            .iter()
            .enumerate()
            .filter(|(c, d)| d.parent == di && *c != 0)
        {
            check_name(&info2.name)?;
            let p = primary_name(&info2.name, true, &mut taken);
            dir_names.push((child, p.clone().into_bytes()));
            list.push(Entry {
                sort_primary: p.as_bytes().to_vec(),
                primary: p.into_bytes(),
                joliet: ucs2(&info2.name),
                sort_joliet: ucs2(&info2.name),
                target: Target::Dir(child),
            });
        }
        entries.push(list);
    }

    for (child, name) in dir_names {
        dirs[child].primary_name = name;
    }

    // Sizes of each directory extent (records depend only on name lengths, not on extents).
    let dir_len = |di: usize, joliet: bool| -> usize {
        let mut recs = vec![record(&[0], 0, 0, true, t), record(&[1], 0, 0, true, t)];
        for e in &entries[di] {
            let name = if joliet { &e.joliet } else { &e.primary };
            recs.push(record(name, 0, 0, false, t));
        }
        pack(&recs).len()
    };

    // Path tables.
    let path_table = |joliet: bool, big_endian: bool, dirs: &[DirInfo]| -> Vec<u8> {
        let mut out = Vec::new();
        for d in dirs {
            let name: Vec<u8> = if d.name.is_empty() {
                vec![0]
            } else if joliet {
                ucs2(&d.name)
            } else {
                d.primary_name.clone()
            };
            let extent = if joliet { d.joliet.0 } else { d.primary.0 };
            out.push(name.len() as u8);
            out.push(0);
            out.extend_from_slice(&if big_endian {
                extent.to_be_bytes()
            } else {
                extent.to_le_bytes()
            });
            let parent = (d.parent + 1) as u16;
            out.extend_from_slice(&if big_endian {
                parent.to_be_bytes()
            } else {
                parent.to_le_bytes()
            });
            out.extend_from_slice(&name);
            if name.len() % 2 == 1 {
                out.push(0);
            }
        }
        out
    };
    let pt_primary_len = path_table(false, false, &dirs).len();
    let pt_joliet_len = path_table(true, false, &dirs).len();

    // Allocate sectors.
    let mut next = 19usize;
    let pt = [
        next,
        next + sectors(pt_primary_len),
        next + 2 * sectors(pt_primary_len),
        next + 2 * sectors(pt_primary_len) + sectors(pt_joliet_len),
    ];
    next = pt[3] + sectors(pt_joliet_len);
    for (di, d) in dirs.iter_mut().enumerate() {
        let len = dir_len(di, false);
        d.primary = (next as u32, len as u32);
        next += sectors(len);
    }
    for (di, d) in dirs.iter_mut().enumerate() {
        let len = dir_len(di, true);
        d.joliet = (next as u32, len as u32);
        next += sectors(len);
    }
    let mut file_extent = Vec::new();
    for f in &files {
        file_extent.push(next as u32);
        next += sectors(f.len());
    }
    let total = next;
    if total > u32::MAX as usize / SECTOR {
        return Err(SeedError::TooLarge { image: "ISO9660" });
    }

    let mut img = vec![0u8; total * SECTOR];
    // Directory extents.
    for joliet in [false, true] {
        for di in 0..dirs.len() {
            let own = if joliet {
                dirs[di].joliet
            } else {
                dirs[di].primary
            };
            let parent = if joliet {
                dirs[dirs[di].parent].joliet
            } else {
                dirs[dirs[di].parent].primary
            };
            let mut recs = vec![
                record(&[0], own.0, own.1, true, t),
                record(&[1], parent.0, parent.1, true, t),
            ];
            let mut list: Vec<&Entry> = entries[di].iter().collect();
            list.sort_by(|a, b| {
                if joliet {
                    a.sort_joliet.cmp(&b.sort_joliet)
                } else {
                    a.sort_primary.cmp(&b.sort_primary)
                }
            });
            for e in list {
                let name = if joliet { &e.joliet } else { &e.primary };
                let r = match e.target {
                    Target::File(fi) => {
                        record(name, file_extent[fi], files[fi].len() as u32, false, t)
                    }
                    Target::Dir(ci) => {
                        let ext = if joliet {
                            dirs[ci].joliet
                        } else {
                            dirs[ci].primary
                        };
                        record(name, ext.0, ext.1, true, t)
                    }
                };
                recs.push(r);
            }
            let bytes = pack(&recs);
            let at = own.0 as usize * SECTOR;
            img[at..at + bytes.len()].copy_from_slice(&bytes);
        }
    }
    // Path tables.
    for (k, (joliet, be)) in [(false, false), (false, true), (true, false), (true, true)]
        .into_iter()
        .enumerate()
    {
        let bytes = path_table(joliet, be, &dirs);
        let at = pt[k] * SECTOR;
        img[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    // File data.
    for (fi, f) in files.iter().enumerate() {
        let at = file_extent[fi] as usize * SECTOR;
        img[at..at + f.len()].copy_from_slice(f);
    }
    // Volume descriptors.
    for joliet in [false, true] {
        let at = if joliet { 17 } else { 16 } * SECTOR;
        let d = &mut img[at..at + SECTOR];
        d[0] = if joliet { 2 } else { 1 };
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        let text = |s: &str| -> Vec<u8> {
            if joliet {
                ucs2(s)
            } else {
                s.as_bytes().to_vec()
            }
        };
        let pad: &[u8] = if joliet { &[0, 0x20] } else { b" " };
        put_str(d, 8, 32, &text("LINUX"), pad);
        put_str(d, 40, 32, &text(volume_id), pad);
        d[80..88].copy_from_slice(&both32(total as u32));
        if joliet {
            d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
        }
        d[120..124].copy_from_slice(&both16(1));
        d[124..128].copy_from_slice(&both16(1));
        d[128..132].copy_from_slice(&both16(SECTOR as u16));
        let (pt_len, l, m) = if joliet {
            (pt_joliet_len, pt[2], pt[3])
        } else {
            (pt_primary_len, pt[0], pt[1])
        };
        d[132..140].copy_from_slice(&both32(pt_len as u32));
        d[140..144].copy_from_slice(&(l as u32).to_le_bytes());
        d[148..152].copy_from_slice(&(m as u32).to_be_bytes());
        let root = if joliet {
            dirs[0].joliet
        } else {
            dirs[0].primary
        };
        let rec = record(&[0], root.0, root.1, true, t);
        d[156..156 + 34].copy_from_slice(&rec);
        for (off, width) in [
            (190, 128),
            (318, 128),
            (446, 128),
            (574, 128),
            (702, 37),
            (739, 37),
            (776, 37),
        ] {
            put_str(d, off, width, &[], pad);
        }
        put_str(d, 574, 128, &text("FLEDGE"), pad);
        let date = date17(t);
        d[813..830].copy_from_slice(&date);
        d[830..847].copy_from_slice(&date);
        d[847..863].copy_from_slice(b"0000000000000000");
        d[864..881].copy_from_slice(&date);
        d[881] = 1;
    }
    let term = &mut img[18 * SECTOR..19 * SECTOR];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    Ok(img)
}

fn check_name(name: &str) -> Result<(), SeedError> {
    if name.is_empty() || name.encode_utf16().count() > 64 || name.contains(['/', '\0', ';']) {
        return Err(SeedError::BadName(name.to_string()));
    }
    Ok(())
}
