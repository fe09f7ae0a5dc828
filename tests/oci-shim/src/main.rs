//! `fledge-oci-shim`: an OCI runtime shim for real-node tests.
//!
//! Registered with Docker (or containerd's runc `BinaryName`) in place of runc, it is invoked with
//! runc's own arguments. On machines whose capability bounding set lacks `CAP_SYS_RESOURCE`, a
//! privileged container cannot be created (runc fails with "unable to apply caps: operation not
//! permitted"), and lowering `oom_score_adj` below 0 fails too. So, before exec'ing the real runc
//! with the identical arguments, the shim
//!
//! - for `create` and `run`, edits `<bundle>/config.json` (`--bundle`/`-b`, default: the current
//!   directory): drops `CAP_SYS_RESOURCE` from every `process.capabilities` list and raises a
//!   negative `process.oomScoreAdj` to 0;
//! - for `exec`, edits the `--process`/`-p` file the same way (its lists are at `capabilities.*`,
//!   its score at `oomScoreAdj`).
//!
//! When the bounding set has `CAP_SYS_RESOURCE`, every call passes through unchanged. The real
//! runc is `$FLEDGE_OCI_SHIM_RUNC` if set, else `/usr/sbin/runc`, else `/usr/bin/runc`.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::Value;

/// The capability the shim removes.
const CAP_SYS_RESOURCE: &str = "CAP_SYS_RESOURCE";
/// Bit of `CAP_SYS_RESOURCE` in `CapBnd` (linux/capability.h).
const CAP_SYS_RESOURCE_BIT: u32 = 24;
/// The capability lists of an OCI process.
const CAP_LISTS: [&str; 5] = [
    "bounding",
    "effective",
    "inheritable",
    "permitted",
    "ambient",
];
/// Environment variable naming the real runc.
const RUNC_ENV: &str = "FLEDGE_OCI_SHIM_RUNC";
/// Where the real runc is looked for when [`RUNC_ENV`] is unset, in order.
const RUNC_PATHS: [&str; 2] = ["/usr/sbin/runc", "/usr/bin/runc"];

/// runc's global flags that take a value (`--root X`); every other global flag is boolean.
const GLOBAL_VALUE_FLAGS: [&str; 5] = ["root", "log", "log-format", "criu", "rootless"];
/// `create`/`run` flags that take a value (besides `--bundle`).
const CREATE_VALUE_FLAGS: [&str; 5] = [
    "console-socket",
    "pidfd-socket",
    "pid-file",
    "preserve-fds",
    "bundle",
];
/// `exec` flags that take a value (besides `--process`).
const EXEC_VALUE_FLAGS: [&str; 16] = [
    "console-socket",
    "pidfd-socket",
    "cwd",
    "env",
    "e",
    "process",
    "p",
    "pid-file",
    "process-label",
    "apparmor",
    "cap",
    "c",
    "preserve-fds",
    "user",
    "u",
    "cgroup",
];

/// What the shim has to edit before handing over to runc.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edit {
    /// Nothing: a subcommand that creates no process (or `exec` without `--process`).
    None,
    /// The bundle's `config.json` (`create`, `run`); the process is at `process`.
    Bundle(PathBuf),
    /// An `exec` process file; the process is the document itself.
    Process(PathBuf),
}

/// Splits a flag token into its name (without leading dashes) and an inline `=value`.
/// Returns `None` for positional arguments (and for `-`/`--`, which are not flags).
fn flag(token: &OsStr) -> Option<(&str, Option<&str>)> {
    // A non-UTF-8 token cannot be one of runc's flags: treat it as positional.
    let s = token.to_str()?;
    if !s.starts_with('-') || s == "-" || s == "--" {
        return None;
    }
    let body = s.trim_start_matches('-');
    match body.split_once('=') {
        Some((name, value)) => Some((name, Some(value))),
        None => Some((body, None)),
    }
}

/// Finds the runc subcommand: the first positional argument after the global flags.
/// Returns its index in `args` (which excludes argv\[0\]).
fn subcommand_index(args: &[OsString]) -> Option<usize> {
    let mut i = 0;
    while i < args.len() {
        match flag(&args[i]) {
            Some((name, None)) if GLOBAL_VALUE_FLAGS.contains(&name) => i += 2,
            Some(_) => i += 1,
            None if args[i] == "--" => return (i + 1 < args.len()).then_some(i + 1),
            None => return Some(i),
        }
    }
    None
}

/// Finds the value of the subcommand flag `wanted` (long name) or `short` among `args`, which
/// follow the subcommand. Flag parsing stops at the first positional argument or at `--`, as
/// runc's does. `value_flags` are the flags whose separate value must be skipped.
fn flag_value(
    args: &[OsString],
    wanted: &str,
    short: &str,
    value_flags: &[&str],
) -> Result<Option<PathBuf>, String> {
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let Some((name, inline)) = flag(&args[i]) else {
            break;
        };
        let takes_value = name == wanted || name == short || value_flags.contains(&name);
        let value = match (inline, takes_value) {
            (Some(v), _) => Some(OsString::from(v)),
            (None, true) => {
                i += 1;
                Some(
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("flag --{name} needs a value"))?,
                )
            }
            (None, false) => None,
        };
        if name == wanted || name == short {
            // The last occurrence wins, as with runc's flag parser.
            found = value.map(PathBuf::from);
        }
        i += 1;
    }
    Ok(found)
}

/// Decides what to edit for runc's arguments (`args` excludes argv\[0\]).
fn plan(args: &[OsString]) -> Result<Edit, String> {
    let Some(sub) = subcommand_index(args) else {
        return Ok(Edit::None);
    };
    let rest = &args[sub + 1..];
    match args[sub].to_str() {
        Some("create" | "run") => {
            let bundle = flag_value(rest, "bundle", "b", &CREATE_VALUE_FLAGS)?
                .unwrap_or_else(|| PathBuf::from("."));
            Ok(Edit::Bundle(bundle.join("config.json")))
        }
        Some("exec") => {
            Ok(flag_value(rest, "process", "p", &EXEC_VALUE_FLAGS)?
                .map_or(Edit::None, Edit::Process))
        }
        _ => Ok(Edit::None),
    }
}

/// Drops `CAP_SYS_RESOURCE` from the capability lists of an OCI process object and raises a
/// negative `oomScoreAdj` to 0. Returns whether anything changed.
fn edit_process(process: &mut Value) -> bool {
    let mut changed = false;
    if let Some(caps) = process
        .get_mut("capabilities")
        .and_then(Value::as_object_mut)
    {
        for list in CAP_LISTS {
            if let Some(items) = caps.get_mut(list).and_then(Value::as_array_mut) {
                let before = items.len();
                items.retain(|c| c.as_str() != Some(CAP_SYS_RESOURCE));
                changed |= items.len() != before;
            }
        }
    }
    if let Some(score) = process.get_mut("oomScoreAdj") {
        let negative =
            score.as_i64().is_some_and(|n| n < 0) || score.as_f64().is_some_and(|n| n < 0.0);
        if negative {
            *score = Value::from(0);
            changed = true;
        }
    }
    changed
}

/// Applies the edit to a parsed document: `config.json` (`bundle = true`, process at `process`) or
/// an exec process file. Returns whether anything changed.
fn edit_document(doc: &mut Value, bundle: bool) -> bool {
    if bundle {
        doc.get_mut("process").is_some_and(edit_process)
    } else {
        edit_process(doc)
    }
}

/// Whether a `/proc/<pid>/status` text shows `CAP_SYS_RESOURCE` in the bounding set.
fn bounding_has_sys_resource(status: &str) -> Result<bool, String> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .ok_or("no CapBnd line in /proc/self/status")?
        .trim();
    let bits = u64::from_str_radix(hex, 16).map_err(|e| format!("CapBnd {hex:?}: {e}"))?;
    Ok(bits & (1 << CAP_SYS_RESOURCE_BIT) != 0)
}

/// Reads, edits and (if changed) atomically rewrites the JSON file at `path`: a temporary file in
/// the same directory with the same permissions, renamed over the original.
fn edit_file(path: &Path, bundle: bool) -> Result<(), String> {
    let show = path.display();
    let text = fs::read(path).map_err(|e| format!("reading {show}: {e}"))?;
    let mut doc: Value =
        serde_json::from_slice(&text).map_err(|e| format!("parsing {show}: {e}"))?;
    if !edit_document(&mut doc, bundle) {
        return Ok(());
    }
    let out = serde_json::to_vec(&doc).map_err(|e| format!("serialising {show}: {e}"))?;
    let perms = fs::metadata(path)
        .map_err(|e| format!("stat {show}: {e}"))?
        .permissions();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.json".into());
    let tmp = dir.join(format!(".{name}.fledge-oci-shim.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&out)?;
        f.set_permissions(perms.clone())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        // Best effort: do not leave the temporary file behind.
        let _ = fs::remove_file(&tmp);
        format!("writing {show}: {e}")
    })
}

/// The real runc: `$FLEDGE_OCI_SHIM_RUNC`, else the first of [`RUNC_PATHS`] that exists.
fn real_runc() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(RUNC_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    RUNC_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| format!("no runc found ({RUNC_ENV} unset; tried {RUNC_PATHS:?})"))
}

/// Edits what runc's arguments call for, then execs runc; returns only on failure.
fn run(args: &[OsString]) -> Result<(), String> {
    let edit = plan(args)?;
    if edit != Edit::None {
        let status = fs::read_to_string("/proc/self/status")
            .map_err(|e| format!("reading /proc/self/status: {e}"))?;
        if !bounding_has_sys_resource(&status)? {
            match &edit {
                Edit::Bundle(p) => edit_file(p, true)?,
                Edit::Process(p) => edit_file(p, false)?,
                Edit::None => {}
            }
        }
    }
    let runc = real_runc()?;
    let err = Command::new(&runc).arg0(&runc).args(args).exec();
    Err(format!("exec {}: {err}", runc.display()))
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fledge-oci-shim: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn create_with_global_flags_finds_the_bundle_in_every_form() {
        let a = args(&[
            "--root",
            "/run/containerd/runc/moby",
            "--log",
            "/x/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b1",
            "--pid-file",
            "/b1/init.pid",
            "id1",
        ]);
        assert_eq!(plan(&a), Ok(Edit::Bundle("/b1/config.json".into())));
        let a = args(&["--debug", "create", "--bundle=/b2", "id"]);
        assert_eq!(plan(&a), Ok(Edit::Bundle("/b2/config.json".into())));
        let a = args(&["run", "-b", "/b3", "-d", "id"]);
        assert_eq!(plan(&a), Ok(Edit::Bundle("/b3/config.json".into())));
        let a = args(&["create", "-b=/b4", "id"]);
        assert_eq!(plan(&a), Ok(Edit::Bundle("/b4/config.json".into())));
    }

    #[test]
    fn create_without_bundle_uses_the_current_directory() {
        let a = args(&["--root", "/r", "create", "--pid-file", "p", "id"]);
        assert_eq!(plan(&a), Ok(Edit::Bundle("./config.json".into())));
    }

    #[test]
    fn a_global_flag_value_is_not_the_subcommand() {
        // `--root create` names a root directory called "create"; the subcommand is `state`.
        let a = args(&["--root", "create", "--rootless", "auto", "state", "id"]);
        assert_eq!(plan(&a), Ok(Edit::None));
        let a = args(&[
            "--root=/r",
            "--criu",
            "/c",
            "exec",
            "-p",
            "/tmp/p.json",
            "id",
        ]);
        assert_eq!(plan(&a), Ok(Edit::Process("/tmp/p.json".into())));
    }

    #[test]
    fn exec_finds_the_process_file_and_skips_other_values() {
        let a = args(&[
            "--root",
            "/r",
            "exec",
            "--cwd",
            "--process",
            "--process",
            "/p.json",
            "--detach",
            "id",
        ]);
        assert_eq!(plan(&a), Ok(Edit::Process("/p.json".into())));
        let a = args(&["exec", "--process=/q.json", "id"]);
        assert_eq!(plan(&a), Ok(Edit::Process("/q.json".into())));
        // Without a process file there is nothing to edit.
        let a = args(&["exec", "-t", "id", "sh", "-p", "/nope"]);
        assert_eq!(plan(&a), Ok(Edit::None));
    }

    #[test]
    fn other_subcommands_and_empty_arguments_pass_through() {
        for a in [
            args(&[]),
            args(&["--version"]),
            args(&["--root", "/r", "delete", "--force", "id"]),
            args(&["start", "id"]),
            args(&["--root", "/r"]),
            args(&["--", "create"]),
        ] {
            let expected = if a.last().is_some_and(|l| l == "create") {
                Edit::Bundle("./config.json".into())
            } else {
                Edit::None
            };
            assert_eq!(plan(&a), Ok(expected), "{a:?}");
        }
    }

    #[test]
    fn a_missing_flag_value_is_an_error() {
        assert!(plan(&args(&["create", "--bundle"])).is_err());
        assert!(plan(&args(&["exec", "-p"])).is_err());
    }

    #[test]
    fn config_loses_sys_resource_everywhere_and_negative_oom_score() {
        let all = json!(["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"]);
        let mut doc = json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["/init"],
                "oomScoreAdj": -998,
                "capabilities": {
                    "bounding": all, "effective": all, "inheritable": all,
                    "permitted": all, "ambient": all,
                },
            },
            "root": {"path": "rootfs"},
        });
        assert!(edit_document(&mut doc, true));
        let kept = json!(["CAP_CHOWN", "CAP_NET_ADMIN"]);
        for list in CAP_LISTS {
            assert_eq!(doc["process"]["capabilities"][list], kept, "{list}");
        }
        assert_eq!(doc["process"]["oomScoreAdj"], json!(0));
        assert_eq!(doc["root"], json!({"path": "rootfs"}));
        // A second pass changes nothing.
        assert!(!edit_document(&mut doc, true));
    }

    #[test]
    fn exec_process_file_is_edited_at_the_top_level() {
        let mut doc = json!({
            "args": ["sh"],
            "oomScoreAdj": -5,
            "capabilities": {"bounding": ["CAP_SYS_RESOURCE"], "effective": ["CAP_KILL"]},
        });
        assert!(edit_document(&mut doc, false));
        assert_eq!(doc["capabilities"]["bounding"], json!([]));
        assert_eq!(doc["capabilities"]["effective"], json!(["CAP_KILL"]));
        assert_eq!(doc["oomScoreAdj"], json!(0));
    }

    #[test]
    fn unprivileged_or_odd_documents_are_left_alone() {
        let mut doc = json!({
            "process": {"oomScoreAdj": 100, "capabilities": {"bounding": ["CAP_KILL"]}},
        });
        let before = doc.clone();
        assert!(!edit_document(&mut doc, true));
        assert_eq!(doc, before);
        for mut odd in [
            json!({}),
            json!({"process": null}),
            json!({"process": {"capabilities": "x", "oomScoreAdj": "y"}}),
            json!([1, 2]),
        ] {
            let before = odd.clone();
            assert!(!edit_document(&mut odd, true));
            assert!(!edit_document(&mut odd, false));
            assert_eq!(odd, before);
        }
    }

    #[test]
    fn cap_bnd_bit_24_is_read_from_status() {
        let status = "Name:\tx\nCapEff:\t0\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n";
        assert_eq!(bounding_has_sys_resource(status), Ok(false));
        let status = "CapBnd:\t000001ffffffffff\n";
        assert_eq!(bounding_has_sys_resource(status), Ok(true));
        assert!(bounding_has_sys_resource("Name:\tx\n").is_err());
        assert!(bounding_has_sys_resource("CapBnd:\tzz\n").is_err());
    }

    #[test]
    fn file_edit_is_atomic_and_keeps_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fledge-oci-shim-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("config.json");
        let doc = json!({"process": {"capabilities": {"bounding": ["CAP_SYS_RESOURCE"]}}});
        fs::write(&path, doc.to_string()).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        edit_file(&path, true).expect("edit");
        let text = fs::read_to_string(&path).expect("read");
        let back: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back["process"]["capabilities"]["bounding"], json!([]));
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![OsString::from("config.json")]);
        assert!(edit_file(&dir.join("missing.json"), true).is_err());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
