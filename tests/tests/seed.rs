//! Seed images read back with independent tools: blkid, isoinfo, xorriso, fsck.vfat, mtools.

use std::path::Path;
use std::process::Command;

use fledge_generator::seed::{SeedContent, SeedFormat, build};
use fledge_tests::missing;

fn tool(cmd: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        missing(cmd, "run scripts/install-test-deps.sh");
    }
    ok
}

fn run(cmd: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
    let o = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    (
        o.status.success(),
        o.stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn content() -> SeedContent {
    let user_data = format!(
        "#cloud-config\nruncmd:\n  - [echo, \"ünïcødé\"]\n{}",
        "# padding line\n".repeat(300)
    );
    SeedContent {
        user_data: user_data.into_bytes(),
        meta_data: b"instance-id: \"fledge-0123456789abcdef\"\nlocal-hostname: \"cp-a\"\n".to_vec(),
        network_config: Some(
            b"version: 2\nethernets:\n  primary:\n    match: {name: \"e*\"}\n    dhcp4: true\n"
                .to_vec(),
        ),
        vendor_data: None,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

/// Extracts `path` from an ISO with xorriso (an independent reader) and returns its bytes.
fn xorriso_extract(img: &str, path: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("x{}", path.replace('/', "_")));
    let (ok, _, err) = run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            img,
            "-extract",
            path,
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "xorriso {path}: {err}");
    std::fs::read(&out).unwrap()
}

fn blkid(path: &str) -> String {
    let (ok, out, err) = run("blkid", &["-p", "-o", "export", path]);
    assert!(ok, "blkid {path}: {err}");
    String::from_utf8(out).unwrap()
}

#[test]
fn nocloud_iso_reads_back_exactly() {
    if !(tool("blkid") && tool("isoinfo") && tool("xorriso")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = content();
    let img = write(
        dir.path(),
        "seed.iso",
        &build(SeedFormat::NocloudIso, &c).unwrap(),
    );
    let ids = blkid(&img);
    assert!(
        ids.contains("TYPE=iso9660") && ids.contains("LABEL=cidata"),
        "{ids}"
    );
    let (ok, out, _) = run("isoinfo", &["-d", "-i", &img]);
    let d = String::from_utf8(out).unwrap();
    assert!(
        ok && d.contains("Volume id: cidata") && d.contains("Joliet"),
        "{d}"
    );
    let (_, listing, _) = run("isoinfo", &["-J", "-f", "-i", &img]);
    let names = String::from_utf8(listing).unwrap();
    for (name, want) in [
        ("user-data", &c.user_data),
        ("meta-data", &c.meta_data),
        ("network-config", c.network_config.as_ref().unwrap()),
    ] {
        assert!(
            names.lines().any(|l| l == format!("/{name}")),
            "{name} not visible as-is: {names}"
        );
        let (ok, got, err) = run("isoinfo", &["-J", "-x", &format!("/{name}"), "-i", &img]);
        assert!(ok, "{err}");
        assert!(&got == want, "isoinfo {name}: bytes differ");
        assert!(
            &xorriso_extract(&img, &format!("/{name}"), dir.path()) == want,
            "xorriso {name}: bytes differ"
        );
    }
}

#[test]
fn nocloud_vfat_passes_fsck_and_reads_back_exactly() {
    if !(tool("blkid") && tool("fsck.vfat") && tool("mtype") && tool("mdir")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = content();
    let bytes = build(SeedFormat::NocloudVfat, &c).unwrap();
    let img = write(dir.path(), "seed.img", &bytes);
    let ids = blkid(&img);
    assert!(
        ids.contains("TYPE=vfat")
            && ids.contains("LABEL=CIDATA")
            && ids.contains("LABEL_FATBOOT=CIDATA"),
        "{ids}"
    );
    let (ok, out, err) = run("fsck.vfat", &["-n", &img]);
    assert!(ok, "fsck.vfat: {}{err}", String::from_utf8_lossy(&out));
    let (ok, out, _) = run("mdir", &["-i", &img, "::"]);
    let listing = String::from_utf8(out).unwrap();
    assert!(
        ok && listing.contains("Volume in drive : is CIDATA"),
        "{listing}"
    );
    for (name, want) in [
        ("user-data", &c.user_data),
        ("meta-data", &c.meta_data),
        ("network-config", c.network_config.as_ref().unwrap()),
    ] {
        assert!(listing.contains(name), "{name} not listed: {listing}");
        let (ok, got, err) = run("mtype", &["-i", &img, &format!("::/{name}")]);
        assert!(ok, "{err}");
        assert!(&got == want, "mtype {name}: bytes differ");
    }
    // Sized to its content: no more than one cluster of slack per file, plus metadata.
    let payload: usize =
        c.user_data.len() + c.meta_data.len() + c.network_config.as_ref().unwrap().len();
    assert!(
        bytes.len() < payload + 8 * 1024,
        "image {} bytes for {payload} bytes of content",
        bytes.len()
    );
}

#[test]
fn config_drive_reads_back_exactly() {
    if !(tool("blkid") && tool("xorriso")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = content();
    c.network_config = None;
    let img = write(
        dir.path(),
        "cd.iso",
        &build(SeedFormat::ConfigDrive, &c).unwrap(),
    );
    let ids = blkid(&img);
    assert!(
        ids.contains("TYPE=iso9660") && ids.contains("LABEL=config-2"),
        "{ids}"
    );
    // Plain ISO9660 readers use the primary path table: its names must be the directory names
    // of the primary tree (the 8-character ones), not the long Joliet names.
    let (ok, out, _) = run("isoinfo", &["-p", "-i", &img]);
    assert!(ok);
    let table: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| {
            l.trim_start()
                .split(':')
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    let (_, out, _) = run("isoinfo", &["-l", "-i", &img]);
    let listed: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("Directory listing of /"))
        .filter_map(|p| {
            p.trim_end_matches('/')
                .rsplit('/')
                .next()
                .map(str::to_string)
        })
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(table, vec!["OPENSTAC", "LATEST"]);
    assert_eq!(table, listed);
    assert_eq!(
        xorriso_extract(&img, "/openstack/latest/user_data", dir.path()),
        c.user_data
    );
    let meta = xorriso_extract(&img, "/openstack/latest/meta_data.json", dir.path());
    let v: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(v["uuid"], "fledge-0123456789abcdef");
    assert_eq!(v["hostname"], "cp-a");
}

#[test]
fn images_are_byte_for_byte_deterministic() {
    let c = content();
    for f in [
        SeedFormat::NocloudIso,
        SeedFormat::NocloudVfat,
        SeedFormat::ConfigDrive,
    ] {
        let mut c = c.clone();
        if f == SeedFormat::ConfigDrive {
            c.network_config = None;
        }
        assert!(build(f, &c).unwrap() == build(f, &c).unwrap(), "{f:?}");
    }
    let mut other = c.clone();
    other.user_data.push(b'\n');
    assert!(
        build(SeedFormat::NocloudIso, &c).unwrap()
            != build(SeedFormat::NocloudIso, &other).unwrap()
    );
}

#[test]
fn render_with_seed_writes_the_image_next_to_user_data() {
    if !tool("isoinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let request = fledge_tests::workspace_root().join("examples/gcp.yaml");
    let o = Command::new(fledge_tests::binary("fledge"))
        .args([
            "render",
            request.to_str().unwrap(),
            "--out",
            "out",
            "--seed",
            "nocloud-iso",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = dir.path().join("out/cp-a/seed.iso");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&img), 0o600, "the seed carries user-data");
    // `fledge seed` from the rendered directory: the same mode (user-data may hold the token).
    let seeded = dir.path().join("again.iso");
    let o = Command::new(fledge_tests::binary("fledge"))
        .args(["seed", "out/cp-a", "-o"])
        .arg(&seeded)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        mode(&seeded),
        0o600,
        "fledge seed wrote a world-readable image"
    );
    let (ok, got, _) = run(
        "isoinfo",
        &["-J", "-x", "/user-data", "-i", img.to_str().unwrap()],
    );
    assert!(ok);
    assert_eq!(
        got,
        std::fs::read(dir.path().join("out/cp-a/user-data")).unwrap()
    );
}
