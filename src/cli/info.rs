//! `coracle info`: the build, the store and the state directory, and what the kernel
//! offers. Every probe is a cheap syscall or file read, and a failed probe is reported,
//! never fatal: `info` exits 0 whatever it finds. It creates nothing (not even the store).

use std::path::Path;

use clap::Args;
use serde_json::{json, Map, Value};

use super::images::Format;
use super::output::human_size;
use super::version::{GIT_REV, TARGET, VERSION};
use super::CmdResult;
use crate::store::usage::Usage;
use crate::store::Store;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Output format: a listing for people, a JSON object for scripts
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// The outcome of one probe: available or not, and a note (why not, or a detail).
struct Probe {
    ok: bool,
    note: Option<String>,
}

/// `EPERM: Operation not permitted`, as nix prints errors, rather than std's
/// `Operation not permitted (os error 1)`.
fn errno_text(e: &std::io::Error) -> String {
    e.raw_os_error().map_or_else(|| e.to_string(), |n| nix::errno::Errno::from_raw(n).to_string())
}

impl Probe {
    fn from(r: std::io::Result<()>) -> Probe {
        match r {
            Ok(()) => Probe { ok: true, note: None },
            Err(e) => Probe { ok: false, note: Some(errno_text(&e)) },
        }
    }

    fn human(&self) -> String {
        match (&self.note, self.ok) {
            (None, true) => "yes".into(),
            (None, false) => "no".into(),
            (Some(n), true) => format!("yes ({n})"),
            (Some(n), false) => format!("no ({n})"),
        }
    }
}

struct Kernel {
    release: Result<String, String>,
    probes: Vec<(&'static str, &'static str, Probe)>,
    cgroup: (&'static str, Option<String>),
}

fn kernel() -> Kernel {
    let release =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).map_err(|e| errno_text(&e));
    let probes = vec![
        ("overlay", "overlayfs", overlay(release.as_deref().ok())),
        ("openat2", "openat2", Probe::from(openat2().map_err(std::io::Error::from))),
        ("pidfd", "pidfd", Probe::from(crate::sys::pidfd_open(std::process::id() as libc::pid_t).map(drop))),
        ("clone3", "clone3", Probe::from(crate::sys::clone3_available())),
        ("mount_api", "mount API", Probe::from(fsopen())),
    ];
    Kernel { release, probes, cgroup: cgroup_mode() }
}

/// Listed in /proc/filesystems, or a module the first overlay mount will load.
fn overlay(release: Option<&str>) -> Probe {
    match std::fs::read_to_string("/proc/filesystems") {
        Ok(s) if s.lines().any(|l| l.split_whitespace().last() == Some("overlay")) => Probe { ok: true, note: None },
        Ok(_) => {
            let module = release.and_then(|r| {
                let dir = Path::new("/lib/modules").join(r).join("kernel/fs/overlayfs");
                std::fs::read_dir(dir)
                    .ok()?
                    .flatten()
                    .find(|e| e.file_name().to_string_lossy().starts_with("overlay.ko"))
            });
            match module {
                Some(_) => Probe { ok: true, note: Some("module, not loaded yet".into()) },
                None => Probe { ok: false, note: Some("not in /proc/filesystems, no module".into()) },
            }
        }
        Err(e) => Probe { ok: false, note: Some(format!("/proc/filesystems: {}", errno_text(&e))) },
    }
}

fn openat2() -> nix::Result<()> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT);
    nix::fcntl::openat2(nix::fcntl::AT_FDCWD, "/", how).map(drop)
}

/// fsopen(2) of a tmpfs, closed unused: the new mount API, which needs CAP_SYS_ADMIN.
fn fsopen() -> std::io::Result<()> {
    crate::sys::FsContext::open(c"tmpfs").map(drop).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => std::io::Error::other(format!("{}; needs CAP_SYS_ADMIN", errno_text(&e))),
        _ => e,
    })
}

/// `v2`, `hybrid` or `v1` (the JSON value), with an explanation when unknown.
fn cgroup_mode() -> (&'static str, Option<String>) {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC};
    match statfs("/sys/fs/cgroup").map(|s| s.filesystem_type()) {
        Ok(t) if t == CGROUP2_SUPER_MAGIC => ("v2", None),
        Ok(t) if t == TMPFS_MAGIC => {
            let unified = statfs("/sys/fs/cgroup/unified").is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
            (if unified { "hybrid" } else { "v1" }, None)
        }
        Ok(t) => ("unknown", Some(format!("/sys/fs/cgroup is not a cgroup file system (type {:#x})", t.0))),
        Err(e) => ("unknown", Some(format!("/sys/fs/cgroup: {e}"))),
    }
}

fn cgroup_human(mode: &str) -> &'static str {
    match mode {
        "v2" => "v2 (unified)",
        "hybrid" => "hybrid (v1, and v2 at /sys/fs/cgroup/unified)",
        "v1" => "v1 (legacy)",
        _ => "unknown",
    }
}

pub fn info(root: &Path, state_dir: &Path, a: InfoArgs) -> CmdResult {
    let store = Store::open_existing(root);
    let usage: Option<Result<Usage, String>> = store.as_ref().map(|s| s.usage().map_err(|e| e.to_string()));
    let state_exists = state_dir.is_dir();
    let running = crate::run::state::list(state_dir).map(|l| l.len()).map_err(|e| errno_text(&e));
    let k = kernel();
    let is_root = nix::unistd::geteuid().is_root();
    match a.format {
        Format::Json => {
            let u = usage.as_ref().and_then(|u| u.as_ref().ok());
            let n = |f: fn(&Usage) -> u64| u.map(f);
            let mut notes = Map::new();
            let mut kernel = Map::new();
            kernel.insert("release".into(), k.release.as_ref().ok().map_or(Value::Null, |r| json!(r)));
            if let Err(e) = &k.release {
                notes.insert("release".into(), json!(e));
            }
            for (key, _, p) in &k.probes {
                kernel.insert((*key).into(), json!(p.ok));
                if let Some(note) = &p.note {
                    notes.insert((*key).into(), json!(note));
                }
            }
            kernel.insert("cgroup".into(), json!(k.cgroup.0));
            if let Some(note) = &k.cgroup.1 {
                notes.insert("cgroup".into(), json!(note));
            }
            kernel.insert("notes".into(), Value::Object(notes));
            let v = json!({
                "version": env!("CARGO_PKG_VERSION"),
                "revision": GIT_REV,
                "target": TARGET,
                "store": {
                    "path": root.to_string_lossy(),
                    "exists": store.is_some(),
                    "error": usage.as_ref().and_then(|u| u.as_ref().err()),
                    "images": n(|u| u.images),
                    "names": n(|u| u.names),
                    "blobs": n(|u| u.blobs),
                    "blob_bytes": n(|u| u.blob_bytes),
                    "layers": n(|u| u.layers),
                    "layer_bytes": n(|u| u.layer_bytes),
                    "incomplete_layers": n(|u| u.incomplete_layers),
                    "total_bytes": n(Usage::total_bytes),
                },
                "state": {
                    "path": state_dir.to_string_lossy(),
                    "exists": state_exists,
                    "error": running.as_ref().err(),
                    "running": running.as_ref().ok(),
                },
                "kernel": kernel,
                "root": is_root,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => {
            let mut rows: Vec<(String, String)> = Vec::new();
            let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
            let path = root.display();
            match &usage {
                None => row("store", format!("{path} (does not exist yet: the first command that uses it creates it)")),
                Some(Err(e)) => row("store", format!("{path} (unreadable: {e})")),
                Some(Ok(u)) => {
                    row("store", path.to_string());
                    row("  images", format!("{} ({} name{})", u.images, u.names, if u.names == 1 { "" } else { "s" }));
                    row("  blobs", format!("{}, {}", u.blobs, human_size(u.blob_bytes)));
                    let incomplete = match u.incomplete_layers {
                        0 => String::new(),
                        i => format!(" ({i} incomplete: gc removes them)"),
                    };
                    row("  layers", format!("{}, {} uncompressed{incomplete}", u.layers, human_size(u.layer_bytes)));
                    row("  total", human_size(u.total_bytes()));
                }
            }
            let state = match &running {
                Ok(n) if !state_exists => format!("{} (does not exist yet), {n} running", state_dir.display()),
                Ok(1) => format!("{}, 1 running container", state_dir.display()),
                Ok(n) => format!("{}, {n} running containers", state_dir.display()),
                Err(e) => format!("{} (unreadable: {e})", state_dir.display()),
            };
            row("state", state);
            row("kernel", k.release.clone().unwrap_or_else(|e| format!("unknown (/proc/sys/kernel/osrelease: {e})")));
            for (_, label, p) in &k.probes {
                row(&format!("  {label}"), p.human());
            }
            let cgroup = match &k.cgroup.1 {
                Some(note) => format!("{} ({note})", cgroup_human(k.cgroup.0)),
                None => cgroup_human(k.cgroup.0).to_owned(),
            };
            row("  cgroup", cgroup);
            let uid = nix::unistd::geteuid();
            row("user", if is_root { "root".into() } else { format!("uid {uid} (not root)") });

            println!("coracle {VERSION}");
            let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
            for (k, v) in rows {
                println!("{:<w$} {v}", format!("{k}:"));
            }
        }
    }
    Ok(0)
}
