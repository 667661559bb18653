//! `coracle run` end to end, as root: every test pulls the default fixture image into a
//! private store and asserts on what the probe prints inside the container (PID, caps,
//! ids, cwd, env, mounts, fds, signals, exit status), and on what the host sees (its
//! mount table, its processes, the store's scratch and state dirs, sentinel files).
//!
//! Cleanup: stores, sentinels and volumes live in the test's `Env` temp dir (removed on
//! drop); every `coracle run` started in the background is a `Running`, whose drop
//! SIGKILLs it and every container process the test learnt about (through pidfds, never
//! by name), also when an assertion fails midway. Containers mount only inside their own
//! mount namespace, so no test unmounts anything on the host.

mod util;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::procs::*;
use util::*;

/// podman's default capability set: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL,
/// NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT.
const DEFAULT_CAPS: u64 = 0x0000_0000_8004_05fb;
const CAP_NET_ADMIN: u64 = 1 << 12;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// ---------------------------------------------------------------------------------------
// Fixture: a private store holding the default image as `fix`.

struct Fx {
    env: Env,
}

impl Fx {
    /// A fresh store with the default image pulled as `fix`.
    fn new() -> Fx {
        require_root();
        subreaper();
        let fx = Fx { env: Env::new() };
        fx.add_image("fix", default_built());
        fx
    }

    /// Writes `img` as an OCI layout in the temp dir and pulls it as `tag`; returns the
    /// layout dir.
    fn add_image(&self, tag: &str, img: &Built) -> PathBuf {
        let dir = self.env.path(&format!("oci-{tag}"));
        write_oci_layout(&dir, &[(img, Some("latest"))]);
        self.env.ok(&["pull", "--tag", tag, &format!("oci:{}", dir.display())]);
        dir
    }

    /// `coracle run ARGS...` as a command (stdin /dev/null unless changed).
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd();
        c.arg("run").args(args).stdin(Stdio::null());
        c
    }

    /// `coracle run ARGS...`, waited for.
    fn run(&self, args: &[&str]) -> Out {
        Out(self.cmd(args).output().unwrap())
    }

    /// `coracle run ARGS...` with extra environment variables, waited for.
    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.cmd(args);
        c.envs(env.iter().copied());
        Out(c.output().unwrap())
    }

    /// `coracle run FLAGS... fix probe VERB...`; asserts exit 0 and returns stdout.
    fn probe(&self, flags: &[&str], verb: &[&str]) -> String {
        let mut args: Vec<&str> = flags.to_vec();
        args.push("fix");
        args.push("/bin/probe");
        args.extend_from_slice(verb);
        let o = self.run(&args);
        assert_eq!(o.code(), Some(0), "coracle run {args:?}: status {:?}, stderr: {}", o.0.status, o.stderr());
        o.stdout()
    }

    /// Same, parsed as the probe's one JSON line.
    fn probe_json(&self, flags: &[&str], verb: &[&str]) -> Value {
        let out = self.probe(flags, verb);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("probe {verb:?} printed {out:?}: {e}"))
    }

    fn store_containers(&self) -> Vec<String> {
        names(&self.env.root().join("containers"))
    }

    /// Container entries of the state dir (`names.lock` is the dir's own lock file).
    fn state_entries(&self) -> Vec<String> {
        names(&self.env.path("state")).into_iter().filter(|n| n != "names.lock").collect()
    }
}

/// First column of `probe ls` output.
fn ls_names(out: &str) -> Vec<String> {
    out.lines().filter_map(|l| l.split(' ').next()).map(str::to_owned).collect()
}

fn hex_caps(v: &Value, key: &str) -> u64 {
    u64::from_str_radix(v[key].as_str().unwrap_or_else(|| panic!("{key} missing in {v}")), 16).unwrap()
}

fn host_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned()
}

/// Our own bounding set, from /proc/self/status.
fn host_cap_bnd() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    let v = s.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim().to_owned();
    u64::from_str_radix(&v, 16).unwrap()
}

// ---------------------------------------------------------------------------------------
// Processes: background runs and the container's processes, all killed on drop.

/// State letter of a process (`R`, `S`, `Z`, …), `None` when it is gone.
fn proc_state(pid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|c| c != 'Z' && c != 'X')
}

fn pid_ns(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Live host pids whose PID namespace is `ns`.
fn procs_in_ns(ns: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| pid_ns(p).as_deref() == Some(ns) && alive(p))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Namespaces and the process list.

#[test]
fn pid_is_2_under_init_and_1_without() {
    let fx = Fx::new();
    let p = fx.probe_json(&[], &["pid"]);
    assert_eq!((p["pid"].as_i64(), p["ppid"].as_i64()), (Some(2), Some(1)), "{p}");
    assert_eq!(p["sid"].as_i64(), Some(2), "the app leads its own session: {p}");
    let p = fx.probe_json(&["--no-init"], &["pid"]);
    assert_eq!(p["pid"].as_i64(), Some(1), "{p}");
    // /proc lists only the container's processes: init and the app (the probe itself).
    let numeric = |out: &str| -> Vec<i64> { ls_names(out).iter().filter_map(|n| n.parse().ok()).collect() };
    assert_eq!(numeric(&fx.probe(&[], &["ls", "/proc"])), [1, 2]);
    assert_eq!(numeric(&fx.probe(&["--no-init"], &["ls", "/proc"])), [1]);
}

#[test]
fn own_pid_mount_uts_and_ipc_namespaces_while_coracle_stays_in_the_hosts() {
    let fx = Fx::new();
    let host = |kind: &str| fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
    for (kind, own) in [("pid", true), ("mnt", true), ("uts", true), ("ipc", true), ("net", false)] {
        let p = fx.probe_json(&[], &["stat", &format!("/proc/self/ns/{kind}")]);
        let inside = PathBuf::from(p["link"].as_str().unwrap());
        assert_eq!(inside != host(kind), own, "{kind}: {inside:?} inside, {:?} outside", host(kind));
    }
    // coracle makes the container's IPC namespace itself, then goes back to its own; the
    // app and init run on the CPUs coracle may use, though init may start on fewer (when
    // a CPU is idle: launch's Spread, whose own test moves a process for sure).
    let (mut run, pid) = start_named(&fx, "ns", &["/bin/probe", "sleep", "30"]);
    let ns_of = |pid: i32, kind: &str| fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    assert_eq!(ns_of(run.pid(), "ipc"), host("ipc"));
    assert_ne!(ns_of(pid, "ipc"), host("ipc"));
    let cpus = |status: &str| status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap().to_owned();
    let outer = cpus(&fs::read_to_string(format!("/proc/{}/status", run.pid())).unwrap());
    assert_eq!(cpus(&fs::read_to_string(format!("/proc/{pid}/status")).unwrap()), outer, "the app");
    let init = fx.env.ok(&["exec", "ns", "/bin/probe", "cat", "/proc/1/status"]);
    assert_eq!(cpus(&init), outer, "init");
    run.signal(libc::SIGTERM);
    let _ = run.finish(Duration::from_secs(10));
}

#[test]
fn a_closed_stdin_reaches_the_app_as_dev_null_never_as_a_descriptor_of_coracles() {
    // With fd 0 closed, the first descriptor coracle opened (a lock file of the store, a
    // pipe) would take number 0 and reach the app as its stdin.
    let fx = Fx::new();
    let mut c = fx.cmd(&["fix", "/bin/probe", "stat", "/proc/self/fd/0"]);
    // SAFETY: only close(2) between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::close(0);
            Ok(())
        });
    }
    let o = Out(c.output().unwrap());
    assert_eq!(o.code(), Some(0), "{}", o.stderr());
    let p: Value = serde_json::from_str(o.stdout().trim()).unwrap();
    assert_eq!(p["link"], "/dev/null", "{p}");
}

#[test]
fn host_network_by_default_and_only_lo_with_network_none() {
    let fx = Fx::new();
    let host = names(Path::new("/sys/class/net"));
    assert_eq!(ls_names(&fx.probe(&[], &["ls", "/sys/class/net"])), host);
    assert_eq!(ls_names(&fx.probe(&["--network", "none"], &["ls", "/sys/class/net"])), ["lo"]);
    // lo is up in the new namespace (flags 0x9 = IFF_UP|IFF_LOOPBACK, plus RUNNING).
    let flags = fx.probe(&["--network", "none"], &["cat", "/sys/class/net/lo/flags"]);
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo must be up with --network none");
}

#[test]
fn hostname_default_and_flag() {
    let fx = Fx::new();
    let host = host_hostname();
    assert_eq!(fx.probe(&[], &["hostname"]).trim(), host);
    assert_eq!(fx.probe(&[], &["cat", "/etc/hostname"]).trim(), host);
    assert_eq!(fx.probe(&["--hostname", "box"], &["hostname"]), "box\n");
    assert_eq!(fx.probe(&["--hostname", "box"], &["cat", "/etc/hostname"]), "box\n");
    assert_eq!(host_hostname(), host, "the host's hostname is untouched");
}

/// /dev: the character devices with their numbers and exact modes (whatever the umask
/// coracle was started with), and the links docker and podman make; the container's `/`
/// and /etc files keep their modes under that umask too.
#[test]
fn dev_has_the_standard_nodes_and_links() {
    let fx = Fx::new();
    let nodes = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];
    let links =
        [("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")];
    // And what the scratch holds: the upper layer's root (the container's `/`) and the
    // /etc files bound from it.
    let scratch = [("/", "0755"), ("/etc/hostname", "0644"), ("/etc/hosts", "0644"), ("/etc/resolv.conf", "0644")];
    let script: Vec<String> = nodes
        .iter()
        .map(|(n, _, _)| format!("/bin/probe stat /dev/{n}"))
        .chain(links.iter().map(|(n, _)| format!("/bin/probe stat /dev/{n}")))
        .chain(scratch.iter().map(|(p, _)| format!("/bin/probe stat {p}")))
        .collect();
    let script = script.join("; ");
    let mut cmd = fx.cmd(&["fix", "/bin/sh", "-c", &script]);
    // A restrictive umask in coracle's caller must not reach the modes.
    // SAFETY: umask(2) only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::umask(0o077);
            Ok(())
        })
    };
    let o = Out(cmd.output().unwrap());
    assert_eq!(o.code(), Some(0), "{}", o.stderr());
    let out = o.stdout();
    let stats: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for ((name, major, minor), st) in nodes.iter().zip(&stats) {
        assert_eq!(
            (st["type"].as_str(), st["mode"].as_str(), st["rdev_major"].as_u64(), st["rdev_minor"].as_u64()),
            (Some("c"), Some("0666"), Some(*major), Some(*minor)),
            "/dev/{name}: {st}"
        );
    }
    for ((name, target), st) in links.iter().zip(&stats[nodes.len()..]) {
        assert_eq!((st["type"].as_str(), st["link"].as_str()), (Some("l"), Some(*target)), "/dev/{name}: {st}");
    }
    for ((path, mode), st) in scratch.iter().zip(&stats[nodes.len() + links.len()..]) {
        assert_eq!(st["mode"].as_str(), Some(*mode), "{path}: {st}");
    }
}

// ---------------------------------------------------------------------------------------
// Capabilities and users.

#[test]
fn default_caps_and_no_new_privs() {
    let fx = Fx::new();
    let c = fx.probe_json(&[], &["caps"]);
    assert_eq!(hex_caps(&c, "inh"), 0, "{c}");
    assert_eq!(hex_caps(&c, "amb"), 0, "{c}");
    for k in ["eff", "prm", "bnd"] {
        assert_eq!(hex_caps(&c, k), DEFAULT_CAPS, "{k}: {c}");
    }
    assert_eq!(c["no_new_privs"], 1, "{c}");

    let c = fx.probe_json(&["--cap-drop", "ALL"], &["caps"]);
    for k in ["inh", "prm", "eff", "bnd", "amb"] {
        assert_eq!(hex_caps(&c, k), 0, "--cap-drop ALL {k}: {c}");
    }
    let c = fx.probe_json(&["--cap-add", "NET_ADMIN"], &["caps"]);
    for k in ["eff", "prm", "bnd"] {
        assert_eq!(hex_caps(&c, k), DEFAULT_CAPS | CAP_NET_ADMIN, "--cap-add NET_ADMIN {k}: {c}");
    }
    let c = fx.probe_json(&["-u", "app"], &["caps"]);
    assert_eq!((hex_caps(&c, "eff"), hex_caps(&c, "prm")), (0, 0), "-u app: {c}");
    assert_eq!(hex_caps(&c, "bnd"), DEFAULT_CAPS, "-u app keeps the bounding set: {c}");
    assert_eq!(c["no_new_privs"], 1, "{c}");

    // The container's init (PID 1) keeps CAP_KILL alone, in every set but the
    // inheritable and ambient ones, which are empty.
    let status = fx.probe(&[], &["cat", "/proc/1/status"]);
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("?").to_owned();
    for k in ["CapBnd:", "CapPrm:", "CapEff:"] {
        assert_eq!(field(k), "0000000000000020", "init's {k}\n{status}");
    }
    for k in ["CapInh:", "CapAmb:"] {
        assert_eq!(field(k), "0000000000000000", "init's {k}\n{status}");
    }
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");

    // An app with CAP_SYS_PTRACE could attach to init: init is confined (and under the
    // app's seccomp filter) before the app's first instruction, every time.
    for _ in 0..20 {
        let status = fx.probe(&["--cap-add", "SYS_PTRACE"], &["cat", "/proc/1/status"]);
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("?").to_owned();
        assert_eq!(field("CapEff:"), "0000000000000020", "init when the app starts: {status}");
        assert_eq!((field("NoNewPrivs:"), field("Seccomp:")), ("1".into(), "2".into()), "{status}");
    }
}

/// `--privileged` gives every capability coracle itself has. Runs where coracle's own
/// bounding set lacks one the kernel knows (this VM drops CAP_SYS_RESOURCE; also any
/// supervisor with CapabilityBoundingSet=, or a nested container) must still work.
#[test]
fn privileged_gets_all_of_coracles_caps() {
    let fx = Fx::new();
    let o = fx.run(&["--privileged", "fix", "/bin/probe", "caps"]);
    assert_eq!(o.code(), Some(0), "--privileged failed: {}", o.stderr());
    let c: Value = serde_json::from_str(o.stdout().trim()).unwrap();
    let bnd = host_cap_bnd();
    for k in ["eff", "prm", "bnd"] {
        assert_eq!(hex_caps(&c, k), bnd, "{k}: {c}");
    }
    assert_eq!(c["no_new_privs"], 0, "{c}");
    let o = fx.run(&["--cap-add", "ALL", "fix", "/bin/probe", "caps"]);
    assert_eq!(o.code(), Some(0), "--cap-add ALL failed: {}", o.stderr());
}

#[test]
fn users_and_groups() {
    let fx = Fx::new();
    let id = |u: &str| fx.probe_json(&["-u", u], &["id"]);
    let groups =
        |v: &Value| -> BTreeSet<i64> { v["groups"].as_array().unwrap().iter().filter_map(Value::as_i64).collect() };

    let root = fx.probe_json(&[], &["id"]);
    assert_eq!((root["uid"].as_i64(), root["gid"].as_i64()), (Some(0), Some(0)), "{root}");

    let app = id("app");
    assert_eq!((app["uid"].as_i64(), app["gid"].as_i64()), (Some(1000), Some(1000)), "{app}");
    assert_eq!((app["euid"].as_i64(), app["egid"].as_i64()), (Some(1000), Some(1000)), "{app}");
    assert_eq!(groups(&app), [10, 1000].into(), "app is in wheel (10) by /etc/group: {app}");

    let v = id("1000:10");
    assert_eq!((v["uid"].as_i64(), v["gid"].as_i64(), v["egid"].as_i64()), (Some(1000), Some(10), Some(10)), "{v}");
    assert!(groups(&v).contains(&10), "{v}");

    let v = id("4242");
    assert_eq!((v["uid"].as_i64(), v["gid"].as_i64()), (Some(4242), Some(0)), "{v}");
    assert_eq!(groups(&v), [0].into(), "{v}");

    fx.run(&["-u", "nosuchuser", "fix", "/bin/probe", "id"]).assert_error("nosuchuser");
    fx.run(&["-u", "2147483648", "fix", "/bin/probe", "id"]).assert_error("2147483648");
}

// ---------------------------------------------------------------------------------------
// Working directory.

#[test]
fn working_directory() {
    let fx = Fx::new();
    assert_eq!(fx.probe(&[], &["cwd"]), "/\n");
    assert_eq!(fx.probe(&["-w", "/tmp"], &["cwd"]), "/tmp\n");
    assert_eq!(fx.probe(&["-w", "/new/dir"], &["cwd"]), "/new/dir\n");
    assert_eq!(fx.probe(&["-w", "/new/dir", "-u", "app"], &["ls", "."]), "", "a created workdir is empty");
}

/// CVE-2024-21626: a workdir of /proc/self/fd/N must not leave the container through an
/// fd coracle still holds when it chdirs. Either the run fails with one clean line, or
/// the cwd is inside the container and shows none of the host's or the store's files.
#[test]
fn workdir_through_proc_self_fd_stays_inside() {
    let fx = Fx::new();
    let store = fx.env.root();
    for n in 3..=7 {
        let wd = format!("/proc/self/fd/{n}");
        let o = fx.run(&["-w", &wd, "fix", "/bin/sh", "-c", "/bin/probe cwd && /bin/probe ls ."]);
        if o.code() == Some(0) {
            let out = o.stdout();
            let cwd = out.lines().next().unwrap_or("");
            assert!(cwd.starts_with('/') && !cwd.contains("unreachable"), "-w {wd}: cwd {cwd:?} outside the root");
            assert!(!cwd.contains(store.to_str().unwrap()), "-w {wd}: cwd {cwd:?} is in the store");
            for bad in ["upper", "work", "rootfs", "lock", "blobs", "layers", "containers", "hostname"] {
                assert!(
                    !ls_names(&out).iter().skip(1).any(|x| x == bad),
                    "-w {wd}: the cwd listing shows {bad:?}, a host/store entry: {out}"
                );
            }
            eprintln!("-w {wd}: ran with cwd {cwd}");
        } else {
            assert_fails(&o, 125, "coracle: run: ");
            eprintln!("-w {wd}: refused: {}", o.stderr().trim());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Environment.

#[test]
fn environment() {
    let fx = Fx::new();
    let env = |flags: &[&str], image: &str, extra: &[(&str, &str)]| -> Vec<String> {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend([image, "/bin/probe", "env"]);
        let mut c = fx.cmd(&args);
        for (k, v) in extra {
            c.env(k, v);
        }
        let o = Out(c.output().unwrap());
        assert_eq!(o.code(), Some(0), "{args:?}: {}", o.stderr());
        o.stdout().lines().map(str::to_owned).collect()
    };
    let has = |e: &[String], kv: &str| e.iter().any(|l| l == kv);

    // An image without Env gets the default PATH.
    let mut img = Image::new(vec![(default_tar().to_vec(), Comp::None)]);
    img.runtime = json!({});
    fx.add_image("noenv", &build(&img));
    let e = env(&[], "noenv", &[]);
    assert!(has(&e, &format!("PATH={DEFAULT_PATH}")), "{e:?}");

    let e = env(&[], "fix", &[]);
    assert!(has(&e, &format!("HOSTNAME={}", host_hostname())), "{e:?}");
    assert!(has(&e, "HOME=/root"), "{e:?}");
    let e = env(&["-u", "app"], "fix", &[]);
    assert!(has(&e, "HOME=/home/app"), "{e:?}");
    let e = env(&["--hostname", "box"], "fix", &[]);
    assert!(has(&e, "HOSTNAME=box"), "{e:?}");

    let file = fx.env.path("env-file");
    fs::write(&file, "# a comment\nFROM_FILE=one\n\nSPACED=two words\nBOTH=file\n").unwrap();
    let e = env(
        &[
            "-e",
            "K=V",
            "-e",
            "CORACLE_TEST_FROM_HOST",
            "-e",
            "CORACLE_TEST_UNSET",
            "--env-file",
            file.to_str().unwrap(),
            "-e",
            "BOTH=flag",
        ],
        "fix",
        &[("CORACLE_TEST_FROM_HOST", "host value")],
    );
    for kv in ["K=V", "CORACLE_TEST_FROM_HOST=host value", "FROM_FILE=one", "SPACED=two words", "BOTH=flag"] {
        assert!(has(&e, kv), "{kv} missing: {e:?}");
    }
    assert!(!e.iter().any(|l| l.starts_with("CORACLE_TEST_UNSET")), "an unset -e K is dropped: {e:?}");
    assert!(!e.iter().any(|l| l.starts_with("CARGO")), "coracle's own environment does not leak: {e:?}");
}

// ---------------------------------------------------------------------------------------
// Masked and read-only paths, fds, the host's mount table.

#[test]
fn masked_and_read_only_paths() {
    let fx = Fx::new();
    let stat = |flags: &[&str], p: &str| fx.probe_json(flags, &["stat", p]);
    // /proc/kcore does not exist on every kernel (CONFIG_PROC_KCORE); mask it when it does.
    let mut masked_files = vec!["/proc/keys"];
    if Path::new("/proc/kcore").exists() {
        masked_files.push("/proc/kcore");
    } else {
        eprintln!("this kernel has no /proc/kcore: only /proc/keys checked");
    }
    for p in &masked_files {
        let s = stat(&[], p);
        assert_eq!(
            (s["type"].as_str(), s["rdev_major"].as_u64(), s["rdev_minor"].as_u64()),
            (Some("c"), Some(1), Some(3)),
            "{p} must be /dev/null: {s}"
        );
        assert_eq!(fx.probe(&[], &["cat", p]), "", "{p} reads empty");
    }
    let s = stat(&[], "/sys/firmware");
    assert_eq!(s["type"], "d", "{s}");
    assert_eq!(fx.probe(&[], &["ls", "/sys/firmware"]), "", "/sys/firmware is empty");

    // Read-only /proc/sys and /sys.
    let o = fx.run(&["fix", "/bin/probe", "write", "/proc/sys/kernel/hostname", "x"]);
    assert_eq!(o.code(), Some(99), "writing /proc/sys must fail: {}", o.stderr());
    assert!(o.stderr().contains("Read-only file system"), "{}", o.stderr());
    // A name that does not exist in sysfs: harmless even if the write went through.
    let o = fx.run(&["fix", "/bin/probe", "write", "/sys/coracle-test-file", "x"]);
    assert_eq!(o.code(), Some(99), "writing under /sys must fail: {}", o.stderr());
    assert!(o.stderr().contains("Read-only file system"), "{}", o.stderr());
    let mounts = fx.probe(&[], &["mounts"]);
    let sys = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/sys")).expect("/sys mounted");
    assert!(sys.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"), "/sys must be read-only: {sys}");
    let o = fx.run(&["fix", "/bin/probe", "write", "/sys/firmware/x", "x"]);
    assert_eq!(o.code(), Some(99), "the /sys/firmware mask is read-only: {}", o.stderr());
}

/// The container's mount table holds only its own mounts: the rootfs, the API
/// filesystems, the /etc files, masks, volumes and tmpfs; nothing of the host's.
#[test]
fn container_sees_only_its_own_mounts() {
    let fx = Fx::new();
    let vol = fx.env.path("vol");
    fs::create_dir_all(&vol).unwrap();
    let v = format!("{}:/data", vol.display());
    let mounts = fx.probe(&["-v", &v, "--tmpfs", "/scratch"], &["mounts"]);
    let allowed = |mp: &str| {
        mp == "/"
            || ["/proc", "/dev", "/sys", "/data", "/scratch"]
                .iter()
                .any(|p| mp == *p || mp.starts_with(&format!("{p}/")))
            || ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"].contains(&mp)
    };
    for l in mounts.lines() {
        let mp = l.split(' ').nth(4).unwrap_or("");
        assert!(allowed(mp), "a mount the container should not see: {l}\n{mounts}");
    }
    let root: Vec<&str> = mounts.lines().filter(|l| l.split(' ').nth(4) == Some("/")).collect();
    assert_eq!(root.len(), 1, "one root mount: {mounts}");
    assert!(root[0].contains(" - overlay "), "the root is the overlay: {}", root[0]);
}

/// `--privileged` lifts the masks and makes /sys and /proc/sys writable. Capabilities
/// coracle does not have itself are dropped explicitly so that this test does not depend
/// on `privileged_gets_all_of_coracles_caps`.
#[test]
fn privileged_lifts_masked_and_read_only_paths() {
    let fx = Fx::new();
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap().trim().parse().unwrap();
    let bnd = host_cap_bnd();
    let missing: Vec<String> = (0..=last).filter(|c| bnd & (1 << c) == 0).map(|c| c.to_string()).collect();
    let mut flags: Vec<String> = vec!["--privileged".into()];
    for c in &missing {
        let name = cap_name(c.parse().unwrap());
        flags.extend(["--cap-drop".into(), name]);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let s = fx.probe_json(&flags, &["stat", "/proc/keys"]);
    assert_eq!(s["type"], "f", "/proc/keys is the real file with --privileged: {s}");
    let mounts = fx.probe(&flags, &["mounts"]);
    let sys = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/sys")).expect("/sys mounted");
    assert!(sys.split(' ').nth(5).unwrap().split(',').any(|o| o == "rw"), "/sys is writable: {sys}");
    assert!(
        !mounts.lines().any(|l| l.split(' ').nth(4) == Some("/sys/firmware")),
        "/sys/firmware is not masked: {mounts}"
    );
    // The container has its own UTS namespace: writing its hostname is harmless.
    let mut args = flags.clone();
    args.extend(["fix", "/bin/sh", "-c", "/bin/probe write /proc/sys/kernel/hostname priv && /bin/probe hostname"]);
    let o = fx.run(&args);
    assert_eq!((o.code(), o.stdout().as_str()), (Some(0), "priv\n"), "{}", o.stderr());
    assert_ne!(host_hostname(), "priv");
}

fn cap_name(n: u32) -> String {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES[n as usize].to_owned()
}

#[test]
fn only_stdio_fds_reach_the_app() {
    let fx = Fx::new();
    for flags in [&[][..], &["--no-init"], &["-i"]] {
        let out = fx.probe(flags, &["fds"]);
        assert_eq!(out.lines().next(), Some("[0,1,2]"), "{flags:?}: {out}");
    }
}

/// The app starts with nothing blocked, ignored or caught when coracle itself was started
/// clean (coracle blocks every signal for its signalfd; none of that may leak into the
/// app). The test harness runs with some signals ignored (SIGPIPE and glibc's 32/33 here),
/// and ignored dispositions are inherited through exec, so coracle is started with every
/// disposition reset to the default.
#[test]
fn app_starts_with_clean_signal_state() {
    use std::os::unix::process::CommandExt;
    let fx = Fx::new();
    for flags in [&[][..], &["--no-init"]] {
        let mut args = flags.to_vec();
        args.extend(["fix", "/bin/probe", "signals"]);
        let mut c = fx.cmd(&args);
        // SAFETY: only async-signal-safe calls (signal, sigprocmask) between fork and exec.
        unsafe {
            c.pre_exec(|| {
                // The raw syscall: glibc's signal() refuses its internal signals 32 and 33.
                #[repr(C)]
                struct KSigaction {
                    handler: usize,
                    flags: u64,
                    restorer: usize,
                    mask: u64,
                }
                let dfl = KSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
                for sig in 1..=64 {
                    if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                        libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, std::ptr::null_mut::<KSigaction>(), 8);
                    }
                }
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let o = Out(c.output().unwrap());
        assert_eq!(o.code(), Some(0), "{}", o.stderr());
        let s: Value = serde_json::from_str(o.stdout().trim()).unwrap();
        let clean = json!({"blocked":"0000000000000000","ignored":"0000000000000000","caught":"0000000000000000"});
        assert_eq!(s, clean, "{flags:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Exit status and signals.

#[test]
fn every_exit_status_is_mirrored() {
    let fx = Fx::new();
    let t = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let fx = &fx;
                s.spawn(move || {
                    for n in (w..=255).step_by(4) {
                        let code = n.to_string();
                        let o = fx.run(&["fix", "/bin/probe", "exit", &code]);
                        assert_eq!(o.code(), Some(n), "probe exit {n}: {:?} {}", o.0.status, o.stderr());
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    eprintln!("256 runs in {:?}", t.elapsed());
    // Through a shell too, and without init.
    for n in [0, 1, 42, 255] {
        let o = fx.run(&["fix", "/bin/sh", "-c", &format!("exit {n}")]);
        assert_eq!(o.code(), Some(n), "sh exit {n}: {}", o.stderr());
        let o = fx.run(&["--no-init", "fix", "/bin/probe", "exit", &n.to_string()]);
        assert_eq!(o.code(), Some(n), "--no-init exit {n}: {}", o.stderr());
    }
}

#[test]
fn death_by_signal_is_mirrored() {
    let fx = Fx::new();
    for (name, sig) in [("TERM", 15), ("INT", 2), ("KILL", 9), ("SEGV", 11)] {
        let o = fx.run(&["fix", "/bin/probe", "kill-self", name]);
        assert_eq!(o.0.status.signal(), Some(sig), "kill-self {name}: {:?}, stderr {}", o.0.status, o.stderr());
        assert!(!o.0.status.core_dumped(), "coracle must not dump core");
    }
}

#[test]
fn signals_reach_the_app_exactly_once() {
    let fx = Fx::new();
    let wait = Duration::from_secs(10);
    let mut r = Running::spawn(fx.cmd(&["fix", "/bin/probe", "trap", "TERM", "INT", "HUP", "USR1"]));
    assert_eq!(r.line(wait), "ready");
    for (sig, name) in
        [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT"), (libc::SIGHUP, "SIGHUP"), (libc::SIGUSR1, "SIGUSR1")]
    {
        r.signal(sig);
        assert_eq!(r.line(wait), format!("got {name}"));
    }
    std::thread::sleep(Duration::from_millis(100));
    r.signal(libc::SIGUSR2);
    let (st, rest, err) = r.finish(wait);
    assert_eq!(st.code(), Some(0), "USR2 ends the probe with 0: {st:?} {err}");
    assert!(rest.is_empty(), "each signal must arrive once; extra lines: {rest:?}");

    let mut r = Running::spawn(fx.cmd(&["--no-init", "fix", "/bin/probe", "trap", "TERM"]));
    assert_eq!(r.line(wait), "ready");
    r.signal(libc::SIGTERM);
    assert_eq!(r.line(wait), "got SIGTERM");
    std::thread::sleep(Duration::from_millis(100));
    r.signal(libc::SIGUSR2);
    let (st, rest, err) = r.finish(wait);
    assert_eq!(st.code(), Some(0), "--no-init: {st:?} {err}");
    assert!(rest.is_empty(), "--no-init: extra lines {rest:?}");
}

#[test]
fn init_reaps_zombies() {
    let fx = Fx::new();
    let o = fx.run(&["fix", "/bin/sh", "-c", "/bin/probe spawn-orphan 0.1; sleep 1; cat /proc/[0-9]*/stat"]);
    assert_eq!(o.code(), Some(0), "{}", o.stderr());
    let out = o.stdout();
    let stats: Vec<&str> = out.lines().skip(1).collect();
    assert!(stats.len() >= 2, "expected init and cat at least: {out}");
    for l in &stats {
        let state = l.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
        assert_ne!(state, Some("Z"), "a zombie in the container: {l}");
    }
}

#[test]
fn sigkill_of_coracle_takes_the_container_down_and_leaves_no_scratch() {
    sigkill_case("tmpfs");
}

#[test]
fn sigkill_of_coracle_with_a_store_scratch_and_gc_cleans_up() {
    sigkill_case("store");
}

/// SIGKILL of `coracle run` with the scratch (upper, work) in a tmpfs of the container's
/// mount namespace (the default: it dies with the namespace, nothing to collect) or in
/// the store (`--scratch store`: gc removes the dead container's dir).
fn sigkill_case(scratch: &str) {
    let fx = Fx::new();
    let pid_file = fx.env.path("app.pid");
    let mut cmd = fx.cmd(&[
        "--scratch",
        scratch,
        "--pid-file",
        pid_file.to_str().unwrap(),
        "fix",
        "/bin/sh",
        "-c",
        "/bin/probe spawn-orphan 30; /bin/probe sleep 30",
    ]);
    cmd.stdout(Stdio::null());
    let mut r = Running::spawn(cmd);
    let app = wait_pid_file(&pid_file, &mut r);
    let ns = pid_ns(app).expect("the app's pid namespace");
    assert_ne!(Some(&ns), pid_ns(std::process::id() as i32).as_ref(), "the app is in its own PID namespace");
    // init, the app (sh, which execs the last command: `probe sleep` once spawn-orphan is
    // done) and the orphan, a child of init.
    let end = Instant::now() + Duration::from_secs(10);
    let procs = loop {
        let p = procs_in_ns(&ns);
        let comm = fs::read_to_string(format!("/proc/{app}/comm")).unwrap_or_default();
        if p.len() >= 3 && comm.trim() == "probe" {
            break p;
        }
        assert!(Instant::now() < end, "the container never had its 3 processes: {p:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    for &p in &procs {
        r.adopt(p);
    }
    let scratch_dirs = usize::from(scratch == "store");
    assert_eq!(fx.store_containers().len(), scratch_dirs, "scratch dirs in the store while running ({scratch})");
    assert_eq!(fx.state_entries().len(), 1, "one state file while running");

    r.signal(libc::SIGKILL);
    let t = Instant::now();
    let st = wait_timeout(&mut r.child, Duration::from_secs(5)).expect("coracle survived SIGKILL");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    loop {
        let mut left: Vec<i32> = procs.iter().copied().filter(|&p| alive(p)).collect();
        for p in procs_in_ns(&ns) {
            if !left.contains(&p) {
                left.push(p);
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1), "container processes alive 1 s after SIGKILL: {left:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("container gone {:?} after SIGKILL of coracle", t.elapsed());
    assert_eq!(fx.store_containers().len(), scratch_dirs, "the killed container's scratch ({scratch})");
    assert!(
        !fs::read_to_string("/proc/self/mountinfo").unwrap().contains(fx.env.root().to_str().unwrap()),
        "a mount of the store is in the host's table"
    );

    let o = fx.env.run(&["gc"]);
    assert!(o.status(), "gc: {}", o.stderr());
    assert!(fx.store_containers().is_empty(), "gc left the dead container's scratch dir: {:?}", fx.store_containers());
    assert!(
        fx.state_entries().is_empty(),
        "the dead container's state file under --state is still there after gc: {:?}",
        fx.state_entries()
    );
}

// ---------------------------------------------------------------------------------------
// Errors before the app runs; image sources.

#[test]
fn exec_errors_and_missing_images() {
    let fx = Fx::new();
    let o = fx.run(&["fix", "nosuchcommand"]);
    assert_fails(&o, 127, "coracle: run: exec nosuchcommand");
    let o = fx.run(&["fix", "/no/such/file"]);
    assert_fails(&o, 127, "coracle: run: exec /no/such/file");
    let o = fx.run(&["fix", "/etc/passwd"]);
    assert_fails(&o, 126, "coracle: run: exec /etc/passwd");
    let o = fx.run(&["--no-init", "fix", "nosuchcommand"]);
    assert_fails(&o, 127, "coracle: run: exec nosuchcommand");

    let o = fx.run(&["--pull", "never", "not-pulled", "/bin/probe", "pid"]);
    o.assert_error("coracle pull");
    assert!(fx.store_containers().is_empty() && fx.state_entries().is_empty());

    let layout = fx.env.path("oci-fix");
    let o = fx.run(&[&format!("oci:{}", layout.display()), "/bin/probe", "pid"]);
    assert_eq!(o.code(), Some(0), "running straight from oci:DIR: {}", o.stderr());
    let p: Value = serde_json::from_str(o.stdout().trim()).unwrap();
    assert_eq!(p["pid"], 2);
}

// ---------------------------------------------------------------------------------------
// Hostile images: symlinked mount targets.

/// Everything under `dir`: names, types, modes and file contents.
fn snapshot(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = fs::symlink_metadata(&d).unwrap();
        out.push_str(&format!(
            "{} {:?} {:o}\n",
            d.display(),
            md.file_type(),
            std::os::unix::fs::PermissionsExt::mode(&md.permissions())
        ));
        if md.is_dir() {
            let mut es: Vec<PathBuf> = fs::read_dir(&d).unwrap().flatten().map(|e| e.path()).collect();
            es.sort();
            stack.extend(es);
        } else if md.is_file() {
            out.push_str(&String::from_utf8_lossy(&fs::read(&d).unwrap()));
            out.push('\n');
        }
    }
    out
}

#[test]
fn symlinked_mount_targets_leave_the_host_untouched() {
    let fx = Fx::new();
    let ours = fx.env.dir.path().to_path_buf();
    let sentinel = fx.env.path("sentinel");
    fs::create_dir_all(sentinel.join("dir")).unwrap();
    fs::write(sentinel.join("file"), "sentinel\n").unwrap();
    fs::write(sentinel.join("dir/inner"), "inner\n").unwrap();
    let abs = sentinel.to_str().unwrap().to_owned();
    let abs_file = format!("{abs}/file");
    let deep = format!("{}{}", "../".repeat(12), &abs[1..]);
    let vol = fx.env.path("vol");
    fs::create_dir_all(&vol).unwrap();
    let vol_arg = format!("{}:/data", vol.display());

    type Case<'a> = (&'a str, LayerBuilder, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        ("proc-to-root", LayerBuilder::new().symlink("proc", "/"), vec![]),
        ("proc-escape", LayerBuilder::new().symlink("proc", &deep), vec![]),
        ("proc-abs", LayerBuilder::new().symlink("proc", &abs), vec![]),
        ("dev-abs", LayerBuilder::new().symlink("dev", &abs), vec![]),
        ("devpts-abs", LayerBuilder::new().dir("dev", 0o755).symlink("dev/pts", &abs), vec![]),
        ("sys-abs", LayerBuilder::new().symlink("sys", &abs), vec![]),
        ("sys-escape", LayerBuilder::new().symlink("sys", &deep), vec![]),
        ("resolv-abs", LayerBuilder::new().symlink("etc/resolv.conf", &abs_file), vec![]),
        ("hostname-abs", LayerBuilder::new().symlink("etc/hostname", &abs_file), vec![]),
        ("hosts-escape", LayerBuilder::new().symlink("etc/hosts", &format!("{deep}/file")), vec![]),
        ("volume-target-abs", LayerBuilder::new().symlink("data", &abs), vec!["-v", &vol_arg]),
        ("tmpfs-target-abs", LayerBuilder::new().symlink("scratch", &abs), vec!["--tmpfs", "/scratch"]),
    ];
    let before_sentinel = snapshot(&sentinel);
    let before_mounts = host_mounts(&ours);
    let mut report = Vec::new();
    for (name, layer, flags) in cases {
        let img = Image::new(vec![(default_tar().to_vec(), Comp::None), (layer.finish(), Comp::None)]);
        fx.add_image(name, &build(&img));
        let mut args = flags.clone();
        args.extend([name, "/bin/sh", "-c", "/bin/probe pid && /bin/probe write /etc/hostname x; /bin/probe write /data/x x; /bin/probe write /scratch/x x; true"]);
        let o = fx.run(&args);
        match o.code() {
            Some(0) => report.push(format!("{name}: ran")),
            _ => {
                assert_fails(&o, 125, "coracle: run: ");
                report.push(format!("{name}: refused: {}", o.stderr().trim()));
            }
        }
        assert_eq!(snapshot(&sentinel), before_sentinel, "{name}: the host sentinel changed");
        assert_same_mounts(&before_mounts, &host_mounts(&ours), &format!("by image {name}"));
        assert!(names(&vol).iter().all(|n| n == "x"), "{name}: volume got {:?}", names(&vol));
    }
    assert!(fx.store_containers().is_empty(), "{:?}", fx.store_containers());
    eprintln!("{}", report.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Read-only rootfs, volumes, tmpfs.

/// `--read-only` with the default image, which (like many minimal images) has no /proc,
/// /dev, /sys or /etc/hostname of its own: the mount targets must still be made.
#[test]
fn read_only_rootfs() {
    let fx = Fx::new();
    let o = fx.run(&["--read-only", "fix", "/bin/probe", "write", "/x", "y"]);
    assert_eq!(o.code(), Some(99), "writing / must fail in the app (probe exit 99), not in coracle: {}", o.stderr());
    assert!(o.stderr().contains("Read-only file system"), "{}", o.stderr());
    let o = fx.run(&["--read-only", "--tmpfs", "/scratch", "fix", "/bin/probe", "write", "/scratch/x", "y"]);
    assert_eq!(o.code(), Some(0), "--tmpfs is writable under --read-only: {}", o.stderr());
}

/// `--scratch`: the writable layer in a tmpfs of the container's own mount namespace (the
/// default; `tmpfs:SIZE` caps it) or on disk under the store (`store`). Writes work in
/// both, the host sees no mount, a full tmpfs is the app's ENOSPC, a store scratch exists
/// only while its container runs, and bad values are usage errors that start nothing.
#[test]
fn scratch_in_memory_or_in_the_store() {
    let fx = Fx::new();
    let before = host_mounts(&fx.env.root());
    for scratch in ["tmpfs", "tmpfs:64m", "store"] {
        fx.probe(&["--scratch", scratch], &["write", "/written", "data"]);
        let o = fx.run(&["--scratch", scratch, "fix", "/bin/sh", "-c", "echo hello > /etc/new && cat /etc/new"]);
        assert_eq!((o.code(), o.stdout().trim()), (Some(0), "hello"), "{scratch}: {}", o.stderr());
    }
    // A store scratch is containers/<id> while the container runs.
    let pid_file = fx.env.path("store-scratch.pid");
    let mut r = Running::spawn(fx.cmd(&[
        "--scratch",
        "store",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "fix",
        "/bin/probe",
        "sleep",
        "30",
    ]));
    wait_pid_file(&pid_file, &mut r);
    assert_eq!(fx.store_containers().len(), 1, "--scratch store: containers/<id> while running");
    r.signal(libc::SIGTERM);
    wait_timeout(&mut r.child, Duration::from_secs(5)).expect("coracle run ends on SIGTERM");
    assert!(fx.store_containers().is_empty(), "--scratch store: removed on exit: {:?}", fx.store_containers());

    // The tmpfs size is the app's limit: ENOSPC inside, not a coracle error.
    let o = fx.run(&[
        "--scratch",
        "tmpfs:1m",
        "fix",
        "/bin/sh",
        "-c",
        "dd if=/dev/zero of=/big bs=64k count=64 2>&1; exit 0",
    ]);
    assert_eq!(o.code(), Some(0), "{}", o.stderr());
    assert!(o.stdout().contains("No space left on device"), "a 4 MiB write to a 1 MiB scratch: {}", o.stdout());

    for bad in ["disk", "tmpfs:", "tmpfs:0", "tmpfs:12q", "tmpfs:-1", "store:1g"] {
        let o = fx.run(&["--scratch", bad, "fix", "/bin/true"]);
        assert_fails(&o, 125, "coracle: invalid value");
        assert!(o.stderr().contains("--scratch"), "{bad}: {}", o.stderr());
    }
    assert_same_mounts(&before, &host_mounts(&fx.env.root()), "after runs with every --scratch");
    assert!(fx.store_containers().is_empty() && fx.state_entries().is_empty());
}

/// `--read-only` with an image that already has every mount target: the read-only
/// behaviour itself, apart from creating targets.
#[test]
fn read_only_rootfs_with_mount_targets_in_the_image() {
    let fx = Fx::new();
    let top = LayerBuilder::new()
        .dir("proc", 0o555)
        .dir("sys", 0o555)
        .dir("dev", 0o755)
        .file("etc/hostname", 0o644, b"")
        .file("etc/hosts", 0o644, b"")
        .file("etc/resolv.conf", 0o644, b"")
        .dir("scratch", 0o755)
        .dir("data", 0o755);
    let img = Image::new(vec![(default_tar().to_vec(), Comp::None), (top.finish(), Comp::None)]);
    fx.add_image("targets", &build(&img));
    let o = fx.run(&["--read-only", "targets", "/bin/probe", "write", "/x", "y"]);
    assert_eq!(o.code(), Some(99), "writing / must fail: {}", o.stderr());
    assert!(o.stderr().contains("Read-only file system"), "{}", o.stderr());
    let o = fx.run(&["--read-only", "targets", "/bin/probe", "write", "/tmp/x", "y"]);
    assert_eq!(o.code(), Some(99), "writing /tmp must fail too: {}", o.stderr());
    let vol = fx.env.path("vol");
    fs::create_dir_all(&vol).unwrap();
    let v = format!("{}:/data", vol.display());
    let o = fx.run(&[
        "--read-only",
        "--tmpfs",
        "/scratch",
        "-v",
        &v,
        "targets",
        "/bin/sh",
        "-c",
        "/bin/probe write /scratch/a 1 && /bin/probe write /data/b 2",
    ]);
    assert_eq!(o.code(), Some(0), "tmpfs and volumes stay writable: {}", o.stderr());
    assert_eq!(fs::read_to_string(vol.join("b")).unwrap(), "2");
}

/// A symlink inside a host volume that points outside the container (dangling as seen
/// from the container's root) must not be deleted or replaced on the host when it lies
/// on the path of a mount target or the working directory. docker/runc resolve such
/// paths inside the root and never unlink what the user mounted.
#[test]
fn symlink_in_a_volume_is_not_replaced_on_the_host() {
    let fx = Fx::new();
    let vol = fx.env.path("vol");
    let other = fx.env.path("other");
    fs::create_dir_all(&vol).unwrap();
    fs::create_dir_all(&other).unwrap();
    let away = fx.env.path("not-in-the-container");
    let link = vol.join("link");
    let v = format!("{}:/data", vol.display());
    let v2 = format!("{}:/data/link/sub", other.display());
    let cases: [(&str, Vec<&str>); 3] = [
        ("workdir", vec!["-v", &v, "-w", "/data/link"]),
        ("volume", vec!["-v", &v, "-v", &v2]),
        ("tmpfs", vec!["-v", &v, "--tmpfs", "/data/link/t"]),
    ];
    for (name, flags) in cases {
        let _ = fs::remove_dir_all(&link);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&away, &link).unwrap();
        let before = snapshot(&vol);
        let mut args = flags.clone();
        args.extend(["fix", "/bin/probe", "cwd"]);
        let o = fx.run(&args);
        let after = snapshot(&vol);
        assert_eq!(
            fs::read_link(&link).ok().as_deref(),
            Some(away.as_path()),
            "{name}: the host's symlink {} was replaced (run: {:?} {}); volume now:\n{after}",
            link.display(),
            o.code(),
            o.stderr()
        );
        assert_eq!(after, before, "{name}: the host volume changed");
        assert!(!away.exists(), "{name}: created {} on the host", away.display());
    }
}

#[test]
fn volumes_and_tmpfs() {
    let fx = Fx::new();
    let vol = fx.env.path("vol");
    fs::create_dir_all(&vol).unwrap();
    fs::write(vol.join("from-host"), "host\n").unwrap();
    let rw = format!("{}:/data", vol.display());
    let ro = format!("{}:/data:ro", vol.display());
    assert_eq!(fx.probe(&["-v", &rw], &["cat", "/data/from-host"]), "host\n");
    fx.probe(&["-v", &rw], &["write", "/data/new", "written"]);
    assert_eq!(fs::read_to_string(vol.join("new")).unwrap(), "written");

    let o = fx.run(&["-v", &ro, "fix", "/bin/probe", "write", "/data/nope", "x"]);
    assert_eq!(o.code(), Some(99), ":ro volume write must fail: {}", o.stderr());
    assert!(o.stderr().contains("Read-only file system"), "{}", o.stderr());
    assert!(!vol.join("nope").exists());
    assert_eq!(fx.probe(&["-v", &ro], &["cat", "/data/from-host"]), "host\n");

    let out = fx.probe(&["--tmpfs", "/scratch"], &["ls", "/scratch"]);
    assert_eq!(out, "", "a fresh tmpfs is empty");
    let o = fx.run(&[
        "--tmpfs",
        "/scratch",
        "fix",
        "/bin/sh",
        "-c",
        "/bin/probe write /scratch/a hello && /bin/probe cat /scratch/a",
    ]);
    assert_eq!((o.code(), o.stdout().as_str()), (Some(0), "hello"), "{}", o.stderr());
}

// ---------------------------------------------------------------------------------------
// Stdin.

#[test]
fn stdin_is_dev_null_without_i() {
    let fx = Fx::new();
    let o = fx.env.run_stdin(&["run", "fix", "/bin/probe", "stdin"], b"data from the host\n");
    assert_eq!((o.code(), o.stdout().as_str()), (Some(0), ""), "{}", o.stderr());
    let o = fx.env.run_stdin(&["run", "-i", "fix", "/bin/probe", "stdin"], b"data from the host\n");
    assert_eq!((o.code(), o.stdout().as_str()), (Some(0), "data from the host\n"), "{}", o.stderr());
    let o = fx.env.run_stdin(&["run", "-i", "--no-init", "fix", "/bin/probe", "stdin"], b"abc");
    assert_eq!((o.code(), o.stdout().as_str()), (Some(0), "abc"), "{}", o.stderr());
}

// ---------------------------------------------------------------------------------------
// Many layers, many containers.

#[test]
fn image_with_120_layers_runs() {
    let fx = Fx::new();
    let mut layers = vec![(default_tar().to_vec(), Comp::None)];
    for i in 1..120 {
        let l = LayerBuilder::new().dir("layers", 0o755).file(
            &format!("layers/{i}"),
            0o644,
            format!("layer {i}\n").as_bytes(),
        );
        let l = if i == 119 { l.file("top", 0o644, b"top\n") } else { l };
        layers.push((l.finish(), Comp::None));
    }
    let t = Instant::now();
    fx.add_image("many", &build(&Image::new(layers)));
    eprintln!("pulled 120 layers in {:?}", t.elapsed());
    let o = fx.run(&[
        "many",
        "/bin/sh",
        "-c",
        "/bin/probe cat /etc/passwd && /bin/probe cat /layers/1 && /bin/probe cat /top && /bin/probe ls /layers",
    ]);
    assert_eq!(o.code(), Some(0), "{}", o.stderr());
    let out = o.stdout();
    assert!(out.starts_with("root:x:0:0:"), "bottom layer's /etc/passwd: {out}");
    assert!(out.contains("layer 1\ntop\n"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(" f 0644 0 0 ")).count(), 119, "every layer's file: {out}");
}

#[test]
fn twenty_concurrent_runs() {
    let fx = Fx::new();
    let mut runs: Vec<Running> = (0..20)
        .map(|i| {
            let n = i.to_string();
            Running::spawn(fx.cmd(&["fix", "/bin/probe", "echo", "run", &n]))
        })
        .collect();
    for (i, r) in runs.iter_mut().enumerate() {
        let (st, out, err) = r.finish(Duration::from_secs(30));
        assert_eq!(st.code(), Some(0), "run {i}: {st:?} {err}");
        assert_eq!(out, [format!("run {i}")], "run {i}");
    }
    assert!(fx.store_containers().is_empty(), "{:?}", fx.store_containers());
    assert!(fx.state_entries().is_empty(), "{:?}", fx.state_entries());
}

// ---------------------------------------------------------------------------------------
// Running containers from other processes: ps, kill, stop, exec; images in use.

/// Starts `coracle run --name NAME --pid-file … fix ARGS…` in the background and waits
/// until the app runs.
fn start_named(fx: &Fx, name: &str, args: &[&str]) -> (Running, i32) {
    let pid_file = fx.env.path(&format!("{name}.pid"));
    let mut full = vec!["--name", name, "--pid-file", pid_file.to_str().unwrap(), "fix"];
    full.extend_from_slice(args);
    let mut run = Running::spawn(fx.cmd(&full));
    let pid = wait_pid_file(&pid_file, &mut run);
    (run, pid)
}

fn ps_json(fx: &Fx) -> Vec<Value> {
    serde_json::from_str(&fx.env.ok(&["ps", "--format", "json"])).unwrap()
}

#[test]
fn ps_lists_running_containers_only() {
    let fx = Fx::new();
    assert!(ps_json(&fx).is_empty());
    let (mut run, pid) = start_named(&fx, "web", &["/bin/probe", "sleep", "30"]);
    let list = ps_json(&fx);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["pid"], pid);
    assert_eq!(list[0]["command"], serde_json::json!(["/bin/probe", "sleep", "30"]));
    let table = fx.env.ok(&["ps"]);
    assert!(table.contains("web") && table.contains(&pid.to_string()), "{table}");
    // A dead container (coracle SIGKILLed) is gone from ps at once, state cleared.
    run.signal(libc::SIGKILL);
    let _ = run.finish(Duration::from_secs(5));
    assert!(ps_json(&fx).is_empty());
    assert!(fx.state_entries().is_empty(), "{:?}", fx.state_entries());
}

#[test]
fn kill_sends_one_signal_through_init() {
    let fx = Fx::new();
    let (mut run, _) = start_named(&fx, "trapper", &["/bin/probe", "trap", "USR1"]);
    assert_eq!(run.line(Duration::from_secs(10)), "ready");
    let o = fx.env.run(&["kill", "-s", "USR1", "trapper"]);
    assert!(o.status(), "{}", o.stderr());
    assert_eq!(run.line(Duration::from_secs(5)), "got SIGUSR1");
    fx.env.ok(&["kill", "-s", "SIGUSR2", "trapper"]);
    let (st, rest, _) = run.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{rest:?}");
    assert!(rest.is_empty(), "the signal arrived more than once: {rest:?}");
    let o = fx.env.run(&["kill", "trapper"]);
    assert_fails(&o, 125, "coracle: kill: no running container");
    let o = fx.env.run(&["kill", "-s", "NOPE", "x"]);
    assert_fails(&o, 125, "coracle: kill: invalid signal");
}

#[test]
fn stop_ends_a_polite_app_and_kills_one_that_ignores_sigterm() {
    let fx = Fx::new();
    let (mut run, _) = start_named(&fx, "polite", &["/bin/probe", "sleep", "30"]);
    let t = Instant::now();
    fx.env.ok(&["stop", "-t", "10", "polite"]);
    assert!(t.elapsed() < Duration::from_secs(5), "stop of an app that dies on SIGTERM took {:?}", t.elapsed());
    let (st, _, _) = run.finish(Duration::from_secs(5));
    assert_eq!(st.signal(), Some(libc::SIGTERM));

    // Trapping TERM means ignoring it here: only SIGKILL after the grace time ends it.
    let (mut run, _) = start_named(&fx, "stubborn", &["/bin/probe", "trap", "TERM"]);
    assert_eq!(run.line(Duration::from_secs(10)), "ready");
    let t = Instant::now();
    let o = fx.env.run(&["stop", "-t", "1", "stubborn"]);
    assert!(o.status(), "{}", o.stderr());
    assert!(o.stderr().contains("killed"), "{}", o.stderr());
    assert!(t.elapsed() >= Duration::from_secs(1), "SIGKILL came before the grace time: {:?}", t.elapsed());
    let (st, rest, _) = run.finish(Duration::from_secs(5));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{rest:?}");
    assert_eq!(rest, ["got SIGTERM"]);
    assert!(ps_json(&fx).is_empty());
}

#[test]
fn exec_joins_the_container() {
    let fx = Fx::new();
    let (_run, app) = start_named(&fx, "host", &["/bin/probe", "sleep", "30"]);
    let exec = |args: &[&str]| {
        let mut c = fx.env.cmd();
        c.arg("exec").args(args).stdin(Stdio::null());
        Out(c.output().unwrap())
    };
    // Same PID namespace: it sees the container's init and app, and only them.
    let o = exec(&["host", "/bin/probe", "ls", "/proc"]);
    assert!(o.status(), "{}", o.stderr());
    let pids: Vec<String> = ls_names(&o.stdout()).into_iter().filter(|n| n.parse::<u32>().is_ok()).collect();
    assert!(pids.contains(&"1".to_owned()) && pids.contains(&"2".to_owned()) && pids.len() == 3, "{pids:?}");
    // Same mount namespace and root: the container's hostname file; same UTS namespace.
    let host_name = fs::read_to_string(format!("/proc/{app}/root/etc/hostname")).unwrap();
    assert_eq!(exec(&["host", "/bin/probe", "cat", "/etc/hostname"]).stdout(), host_name);
    // The container's environment, user and capability rules, with -e/-u/-w on top.
    let env = exec(&["-e", "EXTRA=1", "host", "/bin/probe", "env"]).stdout();
    assert!(env.contains("EXTRA=1") && env.contains(&format!("PATH={DEFAULT_PATH}")), "{env}");
    let id: Value = serde_json::from_str(exec(&["-u", "app", "host", "/bin/probe", "id"]).stdout().trim()).unwrap();
    assert_eq!(id["uid"], 1000);
    assert_eq!(exec(&["-w", "/tmp", "host", "/bin/probe", "cwd"]).stdout().trim(), "/tmp");
    let caps: Value = serde_json::from_str(exec(&["host", "/bin/probe", "caps"]).stdout().trim()).unwrap();
    assert_eq!(hex_caps(&caps, "eff"), DEFAULT_CAPS);
    assert_eq!(caps["no_new_privs"], 1);
    // Exit status mirrored; exec errors as for run.
    assert_eq!(exec(&["host", "/bin/sh", "-c", "exit 7"]).code(), Some(7));
    assert_fails(&exec(&["host", "nosuch"]), 127, "coracle: exec: exec nosuch");
    assert_fails(&exec(&["nobody-here", "/bin/true"]), 125, "coracle: exec: ");
}

#[test]
fn rmi_refuses_an_image_a_running_container_uses() {
    let fx = Fx::new();
    let (mut run, _) = start_named(&fx, "user", &["/bin/probe", "sleep", "30"]);
    let o = fx.env.run(&["rmi", "fix"]);
    assert_fails(&o, 125, "coracle: rmi: image \"fix\" is in use by running container user");
    // Another name of the same image may go; the last may not.
    fx.env.ok(&["tag", "fix", "other:1"]);
    fx.env.ok(&["rmi", "other:1"]);
    // gc keeps everything the running container needs.
    fx.env.ok(&["gc"]);
    assert_eq!(fx.env.images().len(), 1);
    run.signal(libc::SIGKILL);
    let _ = run.finish(Duration::from_secs(5));
    fx.env.ok(&["rmi", "fix"]);
}

/// `-t`: the app gets a terminal of the container's own devpts (so it has a name there),
/// with coracle's window size; input and output are relayed. Driven through script(1),
/// which gives coracle a terminal of its own.
#[test]
fn tty_gets_a_pty_with_the_callers_size() {
    let fx = Fx::new();
    need_tool("script");
    let coracle =
        format!("{} --root {} --state {}", coracle_bin(), fx.env.root().display(), fx.env.path("state").display());
    let cmd = format!("stty rows 33 cols 77; {coracle} run -t fix /bin/sh -c 'tty; stty size; /bin/probe tty; exit 5'");
    let o = Command::new("script").args(["-qec", &cmd, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(5), "{out}");
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("33 77"), "{out}");
    assert!(out.contains(r#""stdin":true,"stdout":true,"stderr":true,"rows":33,"cols":77"#), "{out}");
    let input = "echo typed-$((6*7)); exit 3\n";
    let mut child = Command::new("script")
        .args(["-qec", &format!("{coracle} run -it fix /bin/sh"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("typed-42"), "{out}");
}

/// CVE-2019-5736: the container's init is coracle's own binary; nothing in the container
/// may open it through /proc/1/exe (for writing or at all).
#[test]
fn regression_cve_2019_5736_runtime_binary_unreachable() {
    let fx = Fx::new();
    let before = fs::read(coracle_bin()).unwrap();
    for verb in [&["write", "/proc/1/exe", "pwned"][..], &["cat", "/proc/1/exe"]] {
        let mut args = vec!["fix", "/bin/probe"];
        args.extend_from_slice(verb);
        let o = fx.run(&args);
        assert_eq!(o.code(), Some(99), "probe {verb:?} must fail: {}", o.stderr());
    }
    assert!(fs::read(coracle_bin()).unwrap() == before, "coracle's binary changed");
}

/// A tmux server of this test's own (private socket), killed on drop.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let o = Command::new("tmux").arg("-L").arg(&self.0).args(args).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn screen_until(&self, want: &str) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.cmd(&["capture-pane", "-p"]);
            if s.contains(want) || Instant::now() > end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.0).arg("kill-server").output();
    }
}

/// `-t` in a real terminal: resizing it reaches the app (SIGWINCH copied onto the
/// container's pty), and Ctrl-C goes to the app's shell, not to coracle.
#[test]
fn tty_follows_window_size_and_ctrl_c_reaches_the_app() {
    let fx = Fx::new();
    need_tool("tmux");
    let t = Tmux(format!("coracle-test-{}", std::process::id()));
    let cmd = format!(
        "{} --root {} --state {} run -it fix /bin/sh",
        coracle_bin(),
        fx.env.root().display(),
        fx.env.path("state").display()
    );
    t.cmd(&["new-session", "-d", "-x", "100", "-y", "30", &cmd]);
    t.screen_until("/ #");
    t.cmd(&["send-keys", "stty size", "Enter"]);
    assert!(t.screen_until("30 100").contains("30 100"));
    t.cmd(&["resize-window", "-x", "120", "-y", "40"]);
    std::thread::sleep(Duration::from_millis(200));
    t.cmd(&["send-keys", "stty size", "Enter"]);
    let s = t.screen_until("40 120");
    assert!(s.contains("40 120"), "{s}");
    t.cmd(&["send-keys", "C-c"]);
    t.cmd(&["send-keys", "echo still-$((40+2))", "Enter"]);
    let s = t.screen_until("still-42");
    assert!(s.contains("still-42"), "Ctrl-C ended the container: {s}");
    t.cmd(&["send-keys", "exit", "Enter"]);
}

// ---------------------------------------------------------------------------------------
// Made for supervisors: sd_notify, socket activation, --preserve-fds, --cidfile,
// --replace, --log-level, systemd's KillMode=control-group.

/// systemd's side of NOTIFY_SOCKET: a datagram socket with SO_PASSCRED, so every message
/// comes with the sender's PID as the kernel saw it.
struct NotifyHarness {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifyHarness {
    fn new(fx: &Fx) -> NotifyHarness {
        let path = fx.env.path("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        NotifyHarness { sock, path }
    }

    /// Every message received until 300 ms pass without one: (text, sender pid).
    fn drain(&self) -> Vec<(String, i32)> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let mut out = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let Ok(msg) = recvmsg::<()>(self.sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()) else {
                break;
            };
            let pid = msg
                .cmsgs()
                .unwrap()
                .find_map(|c| match c {
                    ControlMessageOwned::ScmCredentials(cr) => Some(cr.pid()),
                    _ => None,
                })
                .unwrap_or(-1);
            let n = msg.bytes;
            out.push((String::from_utf8_lossy(&buf[..n]).into_owned(), pid));
        }
        out
    }
}

/// Makes `fd` (close-on-exec in this process) appear at each of `at` in the child,
/// without close-on-exec, as a supervisor passes fds.
fn pass_fd(cmd: &mut Command, fd: i32, at: &'static [i32]) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec. The fd is first copied
    // above every target, since dup2 onto itself would keep close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            let high = libc::fcntl(fd, libc::F_DUPFD, 100);
            if high < 0 || at.iter().any(|&n| libc::dup2(high, n) < 0) {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(high);
            Ok(())
        });
    }
}

#[test]
fn sd_notify_is_relayed_from_coracles_pid() {
    let fx = Fx::new();
    let h = NotifyHarness::new(&fx);
    // container (the default): the app gets its own socket; READY/STATUS/WATCHDOG cross,
    // MAINPID and fd-store messages do not; the sender is coracle, never the app.
    let mut cmd = fx.cmd(&[
        "fix",
        "/bin/sh",
        "-c",
        "echo \"$NOTIFY_SOCKET $WATCHDOG_USEC $WATCHDOG_PID $$\"; \
         /bin/probe notify \"$(printf 'READY=1\\nMAINPID=2\\nSTATUS=serving')\"; \
         /bin/probe notify MAINPID=7; /bin/probe notify FDSTORE=1; /bin/probe notify WATCHDOG=1; exit 3",
    ]);
    cmd.env("NOTIFY_SOCKET", &h.path).env("WATCHDOG_USEC", "5000000");
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let coracle = child.id() as i32;
    let o = Out(child.wait_with_output().unwrap());
    assert_eq!(o.code(), Some(3), "{}", o.stderr());
    let words: Vec<String> = o.stdout().split_whitespace().map(str::to_owned).collect();
    assert_eq!(words[0], "/run/notify/notify.sock", "the container's NOTIFY_SOCKET");
    assert_eq!(words[1], "5000000", "WATCHDOG_USEC passes on");
    assert_eq!(words[2], words[3], "WATCHDOG_PID is the app's own PID in its namespace");
    let got = h.drain();
    let texts: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, ["READY=1\nSTATUS=serving", "WATCHDOG=1"], "relayed messages");
    assert!(got.iter().all(|(_, pid)| *pid == coracle), "sender must be coracle ({coracle}): {got:?}");

    // started: coracle itself says READY=1 once the app is exec'd; no socket inside.
    let mut cmd = fx.cmd(&["--sdnotify", "started", "fix", "/bin/sh", "-c", "echo \"[$NOTIFY_SOCKET]\""]);
    cmd.env("NOTIFY_SOCKET", &h.path);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let coracle = child.id() as i32;
    let o = Out(child.wait_with_output().unwrap());
    assert_eq!((o.code(), o.stdout().trim()), (Some(0), "[]"), "{}", o.stderr());
    assert_eq!(h.drain(), [("READY=1".to_owned(), coracle)]);
    // … and not when the command cannot be exec'd.
    let mut cmd = fx.cmd(&["--sdnotify", "started", "fix", "/no/such/command"]);
    cmd.env("NOTIFY_SOCKET", &h.path);
    let o = Out(cmd.output().unwrap());
    assert_eq!(o.code(), Some(127), "{}", o.stderr());
    assert!(h.drain().is_empty(), "READY=1 sent for an app that never ran");

    // ignore: nothing is sent, the container sees no NOTIFY_SOCKET.
    let mut cmd = fx.cmd(&["--sdnotify", "ignore", "fix", "/bin/sh", "-c", "echo \"[$NOTIFY_SOCKET]\""]);
    cmd.env("NOTIFY_SOCKET", &h.path);
    let o = Out(cmd.output().unwrap());
    assert_eq!((o.code(), o.stdout().trim()), (Some(0), "[]"), "{}", o.stderr());
    assert!(h.drain().is_empty());
}

#[test]
fn socket_activation_passes_the_listening_socket() {
    let fx = Fx::new();
    need_tool("systemd-socket-activate");
    // Find a free port, then let systemd-socket-activate listen on it and exec coracle
    // on the first connection.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = Command::new("systemd-socket-activate");
    c.arg("-l").arg(format!("127.0.0.1:{port}")).arg(coracle_bin());
    c.arg("--root").arg(fx.env.root()).arg("--state").arg(fx.env.path("state"));
    c.args(["run", "fix", "/bin/sh", "-c", "exec /bin/probe accept"]);
    let mut r = Running::spawn(c);
    let end = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < end, "systemd-socket-activate never listened: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello from probe\n", "served from inside the container");
    let (st, _, err) = r.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{err}");

    // LISTEN_PID is the app's own PID (1 without init, 2 under it); only the passed fds
    // are open; LISTEN_FDS meant for another process is not ours to pass.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for (flags, pid) in [(vec![], "2"), (vec!["--no-init"], "1")] {
        let mut args = flags.clone();
        args.extend(["fix", "/bin/probe", "listen-fds"]);
        let mut cmd = fx.cmd(&args);
        cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "web");
        pass_fd(&mut cmd, listener.as_raw_fd(), &[3]);
        // LISTEN_PID unset: taken as meant for us (sd_listen_fds accepts it too).
        let o = Out(cmd.output().unwrap());
        assert_eq!(o.code(), Some(0), "{}", o.stderr());
        let first = o.stdout().lines().next().unwrap_or_default().to_owned();
        let v: Value = serde_json::from_str(&first).unwrap();
        assert_eq!(v["LISTEN_PID"], pid, "{flags:?}: {v}");
        assert_eq!(v["LISTEN_FDS"], "1");
        assert_eq!(v["LISTEN_FDNAMES"], "web");
        assert!(o.stdout().contains("3 socket:["), "fd 3 is the socket: {}", o.stdout());
    }
    let o = fx.run_env(&["fix", "/bin/probe", "listen-fds"], &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")]);
    let v: Value = serde_json::from_str(o.stdout().lines().next().unwrap()).unwrap();
    assert_eq!(v["LISTEN_FDS"], Value::Null, "LISTEN_FDS for PID 1 is not coracle's: {v}");

    // Bad values are coracle's errors, before anything starts.
    let o = fx.run_env(&["fix", "/bin/true"], &[("LISTEN_FDS", "lots")]);
    assert_fails(&o, 125, "coracle: run: LISTEN_FDS=\"lots\"");
    let o = fx.run_env(&["fix", "/bin/true"], &[("LISTEN_FDS", "40")]);
    assert_fails(&o, 125, "coracle: run: LISTEN_FDS=40: file descriptor");
}

#[test]
fn preserve_fds_passes_exactly_those() {
    let fx = Fx::new();
    let file = fx.env.path("passed");
    fs::write(&file, "x").unwrap();
    let f = fs::File::open(&file).unwrap();
    let mut cmd = fx.cmd(&["--preserve-fds", "2", "fix", "/bin/probe", "fds"]);
    pass_fd(&mut cmd, f.as_raw_fd(), &[3, 4, 5]);
    let o = Out(cmd.output().unwrap());
    assert_eq!(o.code(), Some(0), "{}", o.stderr());
    let fds: Value = serde_json::from_str(o.stdout().lines().next().unwrap_or_default()).unwrap();
    assert_eq!(fds, json!([0, 1, 2, 3, 4]), "fds 3 and 4 passed, 5 not: {}", o.stdout());
    assert!(o.stdout().contains("/passed"), "{}", o.stdout());
    let o = fx.run(&["--preserve-fds", "3", "fix", "/bin/true"]);
    assert_fails(&o, 125, "coracle: run: --preserve-fds: file descriptor 3 is not open");
}

#[test]
fn cidfile_and_replace() {
    let fx = Fx::new();
    let cid = fx.env.path("web.cid");
    let pid_file = fx.env.path("web.pid");
    let mut first = Running::spawn(fx.cmd(&[
        "--name",
        "web",
        "--cidfile",
        cid.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "fix",
        "/bin/probe",
        "trap",
        "TERM",
    ]));
    wait_pid_file(&pid_file, &mut first);
    assert_eq!(first.line(Duration::from_secs(10)), "ready");
    let id = fs::read_to_string(&cid).unwrap().trim().to_owned();
    assert_eq!(id.len(), 64, "{id:?}");
    let ps: Value = serde_json::from_str(&fx.env.ok(&["ps", "--format", "json"])).unwrap();
    assert_eq!(ps[0]["id"], id.as_str());

    // The cidfile names a running container: refused. The name too.
    let o = fx.run(&["--cidfile", cid.to_str().unwrap(), "fix", "/bin/true"]);
    assert_fails(&o, 125, "coracle: run: --cidfile");
    let o = fx.run(&["--name", "web", "fix", "/bin/true"]);
    assert_fails(&o, 125, "coracle: run: the name \"web\" is in use");
    let o = fx.run(&["--replace", "fix", "/bin/true"]);
    assert_fails(&o, 125, "coracle: ");

    // --replace stops it (SIGTERM: the trap sees it once and the app exits), then runs.
    let cid2 = fx.env.path("web2.cid");
    let o = fx.run(&[
        "--name",
        "web",
        "--replace",
        "--cidfile",
        cid2.to_str().unwrap(),
        "fix",
        "/bin/probe",
        "echo",
        "second",
    ]);
    assert_eq!((o.code(), o.stdout().trim()), (Some(0), "second"), "{}", o.stderr());
    let (st, rest, _) = first.finish(Duration::from_secs(15));
    assert!(rest.contains(&"got SIGTERM".to_owned()), "the replaced app got SIGTERM: {rest:?}");
    assert!(st.code().is_some() || st.signal().is_some());
    assert!(!cid.exists() && !cid2.exists(), "cidfiles are removed when their containers exit");

    // A cidfile left by a killed run (its container is gone) is replaced.
    fs::write(&cid, format!("{}\n", "ab".repeat(32))).unwrap();
    let o = fx.run(&["--cidfile", cid.to_str().unwrap(), "fix", "/bin/sh", "-c", "true"]);
    assert_eq!(o.code(), Some(0), "{}", o.stderr());
}

#[test]
fn log_level_debug_goes_to_stderr_only() {
    let fx = Fx::new();
    let o = fx.run(&["fix", "/bin/probe", "echo", "out"]);
    assert_eq!((o.stdout().as_str(), o.stderr().as_str()), ("out\n", ""), "quiet by default");
    let mut c = fx.env.cmd();
    c.args(["--log-level", "debug", "run", "fix", "/bin/probe", "echo", "out"]).stdin(Stdio::null());
    let o = Out(c.output().unwrap());
    assert_eq!(o.stdout(), "out\n", "nothing of coracle's on stdout");
    assert!(o.stderr().lines().any(|l| l.starts_with("coracle: debug: container ")), "{}", o.stderr());
    assert!(o.stderr().lines().all(|l| l.starts_with("coracle: ")), "{}", o.stderr());
    let mut c = fx.env.cmd();
    c.args(["--log-level", "loud", "run", "fix", "/bin/true"]);
    assert_fails(&Out(c.output().unwrap()), 125, "coracle: invalid value 'loud' for '--log-level");
}

/// systemd's default KillMode=control-group: SIGTERM reaches coracle, the container's
/// init and the app at once. The app must still end normally, coracle mirror its status
/// promptly, and nothing be left.
#[test]
fn sigterm_to_every_process_at_once_ends_cleanly() {
    let fx = Fx::new();
    let pid_file = fx.env.path("app.pid");
    let mut r = Running::spawn(fx.cmd(&["--pid-file", pid_file.to_str().unwrap(), "fix", "/bin/probe", "sleep", "30"]));
    let app = wait_pid_file(&pid_file, &mut r);
    let init = parent(app).expect("the app's parent, the container's init");
    for pid in [r.pid(), init, app] {
        // SAFETY: signalling processes this test started (coracle and its container).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let t = Instant::now();
    let (st, _, err) = r.finish(Duration::from_secs(10));
    assert_eq!(st.signal(), Some(libc::SIGTERM), "death by SIGTERM mirrored: {err}");
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert!(!alive(app) && !alive(init));
    assert!(fx.state_entries().is_empty() && fx.store_containers().is_empty());
}

// ---------------------------------------------------------------------------------------
// seccomp.

/// x86_64 syscall numbers the seccomp test uses.
const NR_GETPID: &str = "39";
const NR_KEYCTL: &str = "250";
const NR_UNSHARE: &str = "272";
const NR_CLONE3: &str = "435";
const CLONE_NEWUSER: &str = "0x10000000";

#[test]
fn seccomp_default_profile_and_its_options() {
    if !cfg!(target_arch = "x86_64") {
        eprintln!("the default seccomp profile is x86_64-only so far; nothing to test here");
        return;
    }
    let fx = Fx::new();
    let call = |flags: &[&str], args: &[&str]| -> String {
        let mut verb = vec!["syscall"];
        verb.extend(args);
        fx.probe(flags, &verb).trim().to_owned()
    };
    // The kernel keyring is not namespaced: refused (EPERM) by default, reachable
    // unconfined (ENOKEY or a keyring id: anything but EPERM).
    let keyctl = [NR_KEYCTL, "0", "-3", "0"];
    assert_eq!(call(&[], &keyctl), "errno 1", "keyctl under the default profile");
    let unconfined = call(&["--security-opt", "seccomp=unconfined"], &keyctl);
    assert_ne!(unconfined, "errno 1", "keyctl unconfined");
    assert_eq!(call(&["--privileged"], &keyctl), unconfined, "--privileged runs unconfined");
    // Namespaces need CAP_SYS_ADMIN (a user namespace needs no capability at all
    // without the filter).
    let unshare = [NR_UNSHARE, CLONE_NEWUSER];
    assert_eq!(call(&[], &unshare), "errno 1");
    assert_eq!(call(&["--security-opt", "seccomp=unconfined"], &unshare), "ok 0");
    assert_eq!(call(&["--cap-add", "SYS_ADMIN"], &unshare), "ok 0");
    // clone3 looks unknown (ENOSYS: libcs fall back to clone), unconfined the kernel
    // itself rejects the empty argument (EINVAL); an unknown number is ENOSYS.
    assert_eq!(call(&[], &[NR_CLONE3, "0", "0"]), "errno 38");
    assert_eq!(call(&["--security-opt", "seccomp=unconfined"], &[NR_CLONE3, "0", "0"]), "errno 22");
    assert_eq!(call(&[], &["1000"]), "errno 38");
    // Ordinary programs are unaffected.
    let o = fx.run(&["fix", "/bin/sh", "-c", "ls / >/dev/null && echo fine"]);
    assert_eq!((o.code(), o.stdout().trim()), (Some(0), "fine"), "{}", o.stderr());

    // A docker-format profile file.
    let profile = fx.env.path("profile.json");
    fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["getpid"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
            {"names":["no_such_call_anywhere"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    assert_eq!(call(&["--security-opt", &opt], &[NR_GETPID]), "errno 13");
    assert_eq!(call(&["--security-opt", &opt], &keyctl), unconfined, "allowed by the file's default");

    // `coracle exec` adds processes under the container's profile.
    let pid_file = fx.env.path("sc.pid");
    let mut r = Running::spawn(fx.cmd(&[
        "--name",
        "sc",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "fix",
        "/bin/probe",
        "sleep",
        "30",
    ]));
    wait_pid_file(&pid_file, &mut r);
    let o = fx.env.run(&["exec", "sc", "/bin/probe", "syscall", NR_KEYCTL, "0", "-3", "0"]);
    assert_eq!(o.stdout().trim(), "errno 1", "exec under the default profile: {}", o.stderr());
    drop(r);

    // Bad options and files: one-line errors, nothing runs.
    for (opt, msg) in [
        ("apparmor=x".to_owned(), "coracle: run: --security-opt \"apparmor=x\": only seccomp"),
        ("seccomp=/no/such/profile.json".to_owned(), "coracle: run: seccomp profile /no/such/profile.json"),
    ] {
        assert_fails(&fx.run(&["--security-opt", &opt, "fix", "/bin/true"]), 125, msg);
    }
    fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap();
    assert_fails(&fx.run(&["--security-opt", &opt, "fix", "/bin/true"]), 125, "coracle: run: seccomp profile");
    fs::write(&profile, "not json").unwrap();
    assert_fails(&fx.run(&["--security-opt", &opt, "fix", "/bin/true"]), 125, "coracle: run: seccomp profile");
}

/// `--privileged` with an explicit profile: the filter applies, and no_new_privs stays
/// unset (the filter is installed with CAP_SYS_ADMIN, not through no_new_privs).
#[test]
fn seccomp_file_under_privileged_keeps_no_new_privs_unset() {
    if !cfg!(target_arch = "x86_64") {
        return;
    }
    let fx = Fx::new();
    let profile = fx.env.path("profile.json");
    fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getpid"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = fx.probe(&["--privileged", "--security-opt", &opt], &["syscall", NR_GETPID]);
    assert_eq!(out.trim(), "errno 13");
    let caps = fx.probe_json(&["--privileged", "--security-opt", &opt], &["caps"]);
    assert_eq!(caps["no_new_privs"], json!(0), "{caps}");
}
