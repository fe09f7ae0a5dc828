//! fledge-agent baked into an image and installed on a live systemd system: the agent is baked
//! (`install --root`, no configuration) into the image of images/test-guest.sh, a Debian guest
//! (QEMU, TCG) boots it with a NoCloud seed made by `fledge seed`; the baked unit is enabled but
//! inactive until cloud-init's runcmd calls `fledge-agent install --config` (systemctl from
//! inside cloud-init must not deadlock),
//! waits for the unit to be active, outlives a watchdog period, records what systemd says,
//! uninstalls, and powers off. The results are read from the guest disk with debugfs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fledge_tests::missing;

fn vm_dir() -> PathBuf {
    std::env::var_os("FLEDGE_VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/fledge/vm-bookworm-1")
        })
}

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills QEMU if the test fails before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn debugfs_cat(disk: &Path, path: &str) -> String {
    let out = Command::new(tool("debugfs").unwrap())
        .args(["-R", &format!("cat {path}")])
        .arg(disk)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const TEST_SCRIPT: &str = r#"#!/bin/sh
# Runs from cloud-init's runcmd (inside cloud-final.service).
out=/var/lib/fledge-test
mkdir -p "$out"
exec >"$out/log" 2>&1
set -x
r() { echo "$1" >> "$out/results"; }
# Baked into the image: enabled, but inactive until its configuration exists.
r "baked_enabled=$(systemctl is-enabled fledge-agent)"
r "baked_active=$(systemctl is-active fledge-agent)"
r "baked_condition=$(systemctl show -p ConditionResult --value fledge-agent)"
/usr/local/bin/fledge-agent install --config /etc/fledge-seed/agent.yaml > "$out/install1.txt" 2>&1
r "install1=$?"
/usr/local/bin/fledge-agent install --config /etc/fledge-seed/agent.yaml > "$out/install2.txt" 2>&1
r "install2=$?"
i=0
until systemctl is-active --quiet fledge-agent || [ $i -ge 180 ]; do sleep 1; i=$((i+1)); done
r "active=$(systemctl is-active fledge-agent)"
r "waited=$i"
# Longer than WatchdogSec=30s: a starved watchdog would have restarted it by now.
sleep 45
systemctl show fledge-agent -p ActiveState -p SubState -p NRestarts -p Type -p WatchdogUSec -p StatusText >> "$out/results"
r "enabled=$(systemctl is-enabled fledge-agent)"
stat -c 'mode=%a %n' /etc/fledge/agent.yaml /usr/local/bin/fledge-agent >> "$out/results"
/usr/local/bin/fledge-agent status > "$out/status.txt" 2>&1
r "status=$?"
journalctl -u fledge-agent --no-pager -o cat > "$out/journal.txt" 2>&1
systemd-analyze security fledge-agent.service --no-pager > "$out/security.txt" 2>&1
systemd-analyze verify /etc/systemd/system/fledge-agent.service > "$out/verify.txt" 2>&1
r "verify=$?"
/usr/local/bin/fledge-agent uninstall > "$out/uninstall.txt" 2>&1
r "uninstall=$?"
r "after_uninstall_active=$(systemctl is-active fledge-agent)"
r "after_uninstall_unit=$(test -e /etc/systemd/system/fledge-agent.service && echo present || echo absent)"
r "after_uninstall_bin=$(test -e /usr/local/bin/fledge-agent && echo present || echo absent)"
r "done=1"
sync
"#;

#[test]
fn agent_baked_into_an_image_starts_under_systemd_once_cloud_init_installs_its_config() {
    let dir = vm_dir();
    let (Some(qemu), Some(_)) = (tool("qemu-system-x86_64"), tool("debugfs")) else {
        missing(
            "qemu-system-x86_64 and debugfs",
            "run images/test-guest.sh (scripts/test.sh does)",
        );
        return;
    };
    if !dir.join("disk.raw").is_file() {
        missing(
            &format!("guest image {}", dir.join("disk.raw").display()),
            "run images/test-guest.sh (scripts/test.sh does)",
        );
        return;
    }
    let agent = fledge_tests::binary("fledge-agent");
    let fledge = fledge_tests::binary("fledge");
    assert!(
        agent.is_file() && fledge.is_file(),
        "build the workspace first"
    );
    let work = tempfile::Builder::new()
        .prefix("fledge-vm-")
        .tempdir()
        .unwrap();
    let w = work.path();

    // The guest disk: a sparse copy of the cached image, with the agent binary (stripped of
    // debug info) written into it by debugfs, no mount needed.
    let disk = w.join("disk.raw");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(dir.join("disk.raw"))
        .arg(&disk));
    let bin = w.join("fledge-agent");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&agent)
        .arg(&bin));
    // Baked as an image pipeline would (images/bake-agent.sh): `install --root` into an empty
    // tree, no configuration; the tree is then copied into the guest disk.
    let bake = w.join("bake");
    std::fs::create_dir(&bake).unwrap();
    let out = run(Command::new(&bin).arg("install").arg("--root").arg(&bake));
    assert!(out.contains("no configuration"), "{out}");
    let mut cmds = String::new();
    copy_tree(&bake, Path::new("/"), &mut cmds);
    std::fs::write(w.join("debugfs.cmds"), cmds).unwrap();
    run(Command::new(tool("debugfs").unwrap())
        .args(["-w", "-f"])
        .arg(w.join("debugfs.cmds"))
        .arg(&disk));

    // The seed: user-data with the agent's config (a management plane the guest cannot reach,
    // a token made up for this run, a throw-away CA) and the test script.
    let token: String = format!("{:032x}", rand_u128());
    let ca = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=fledge-vm-test",
        "-days",
        "1",
        "-keyout",
        "/dev/null",
    ]));
    let agent_yaml = "apiVersion: fledge.dev/v1alpha1\nkind: AgentConfig\ncluster: {name: vm, namespace: default}\nmanagement: {server: \"https://10.0.2.100:6443\", tokenFile: /etc/fledge/token, caFile: /etc/fledge/ca.crt}\nstateDir: /var/lib/fledge\nmetricsAddress: \"127.0.0.1:9440\"\n";
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let user_data = format!(
        "#cloud-config\nwrite_files:\n  - path: /etc/fledge-seed/agent.yaml\n    permissions: '0600'\n    content: |\n{}  - path: /etc/fledge/token\n    permissions: '0600'\n    content: '{token}'\n  - path: /etc/fledge/ca.crt\n    permissions: '0644'\n    content: |\n{}  - path: /usr/local/sbin/fledge-vm-test\n    permissions: '0755'\n    content: |\n{}runcmd:\n  - [/usr/local/sbin/fledge-vm-test]\npower_state:\n  mode: poweroff\n  delay: now\n  condition: true\n",
        indent(agent_yaml),
        indent(&ca),
        indent(TEST_SCRIPT)
    );
    let seed_src = w.join("seed");
    std::fs::create_dir(&seed_src).unwrap();
    std::fs::write(seed_src.join("user-data"), &user_data).unwrap();
    std::fs::write(
        seed_src.join("meta-data"),
        "instance-id: fledge-vm-test\nlocal-hostname: fledge-vm\n",
    )
    .unwrap();
    let seed = w.join("seed.iso");
    run(Command::new(&fledge)
        .arg("seed")
        .arg(&seed_src)
        .arg("-o")
        .arg(&seed));

    // Boot (TCG: the /dev/kvm here hangs stock guest kernels), no network.
    let console = w.join("console.log");
    let child = Command::new(qemu)
        .args([
            "-accel", "tcg", "-m", "1536", "-smp", "2", "-display", "none",
        ])
        .args(["-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initrd.img"))
        .args(["-append", "root=/dev/vda rw console=ttyS0 panic=-1"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let started = Instant::now();
    let limit = Duration::from_secs(900);
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let tail = std::fs::read_to_string(&console).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("the guest did not power off within {limit:?}; console tail:\n{tail}");
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(status.success(), "qemu exited with {status}");
    println!("guest ran {:.0}s", started.elapsed().as_secs_f64());

    let results = debugfs_cat(&disk, "/var/lib/fledge-test/results");
    let file = |p: &str| debugfs_cat(&disk, &format!("/var/lib/fledge-test/{p}"));
    let context = format!(
        "results:\n{results}\nlog:\n{}\ninstall1:\n{}\njournal:\n{}\ncloud-init result:\n{}",
        file("log"),
        file("install1.txt"),
        file("journal.txt"),
        debugfs_cat(&disk, "/var/lib/cloud/data/result.json")
    );
    let has = |line: &str| results.lines().any(|l| l.trim() == line);
    for want in [
        "baked_enabled=enabled",
        "baked_active=inactive",
        "baked_condition=no",
        "install1=0",
        "install2=0",
        "active=active",
        "ActiveState=active",
        "SubState=running",
        "NRestarts=0",
        "Type=notify",
        "WatchdogUSec=30s",
        "enabled=enabled",
        "mode=600 /etc/fledge/agent.yaml",
        "mode=755 /usr/local/bin/fledge-agent",
        "status=0",
        "verify=0",
        "uninstall=0",
        "after_uninstall_active=inactive",
        "after_uninstall_unit=absent",
        "after_uninstall_bin=absent",
        "done=1",
    ] {
        assert!(has(want), "missing {want:?}\n{context}");
    }
    assert!(
        file("install2.txt").contains("up to date"),
        "second install: {}",
        file("install2.txt")
    );
    // The agent told systemd where it stands.
    assert!(
        results
            .lines()
            .any(|l| l.starts_with("StatusText=") && l.len() > "StatusText=".len()),
        "{context}"
    );
    let security = file("security.txt");
    let score = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default()
        .to_string();
    println!("systemd-analyze security (guest): {score}");
    assert!(!score.is_empty(), "security:\n{security}");
    // cloud-init finished without errors.
    let result_json = debugfs_cat(&disk, "/var/lib/cloud/data/result.json");
    let v: serde_json::Value = serde_json::from_str(&result_json)
        .unwrap_or_else(|e| panic!("result.json: {e}\n{result_json}"));
    assert_eq!(v["v1"]["errors"], serde_json::json!([]), "{result_json}");
}

/// debugfs commands that recreate the tree under `host` at `guest` (directories, files with
/// their modes, symbolic links).
fn copy_tree(host: &Path, guest: &Path, out: &mut String) {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(host)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let g = guest.join(p.file_name().unwrap());
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p).unwrap();
            out.push_str(&format!("symlink {} {}\n", g.display(), target.display()));
        } else if meta.is_dir() {
            out.push_str(&format!("mkdir {}\n", g.display()));
            copy_tree(&p, &g, out);
        } else {
            let mode = meta.permissions().mode() & 0o7777;
            out.push_str(&format!(
                "write {} {}\nsif {} mode 0100{mode:o}\n",
                p.display(),
                g.display(),
                g.display()
            ));
        }
    }
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    u128::from_le_bytes(b)
}
