//! Container escapes, as root: each test pins one known family of runtime breakouts (the
//! CVE named in its doc comment) and asserts on what the host sees afterwards (the
//! runtime's binary, the image's layers, sentinel files, the host's mount table, sysctl
//! values, a loop device's backing file), not only on what the container prints.
//!
//! What `tests/run.rs` already pins is not repeated: `/proc/1/exe` opened by the app
//! (CVE-2019-5736), `-w /proc/self/fd/N` for `run` (CVE-2024-21626), symlinked mount
//! targets in an image, the default masks. This file covers `coracle exec`'s process, a
//! busybox app, `CAP_SYS_PTRACE`, image `WorkingDir`s, mount targets through procfs
//! magic links, `/etc` files symlinked into `/proc`, racing swaps in volumes from the host
//! and from another container (CVE-2018-15664, CVE-2021-30465), the layers as read-only
//! lowers, writes to masked and read-only `/proc` and `/sys` paths, uid/gid overflows,
//! setuid binaries and device nodes, and mount propagation.
//!
//! Five of these found real bugs when they were written, all fixed since: device nodes
//! in image layers opened host devices (the rootfs is now `nodev`), a passwd uid of
//! 4294967295 ran the app as root (ids from the image are range-checked), init was
//! attackable with CAP_SYS_PTRACE (it now keeps only CAP_KILL, no_new_privs and the app's
//! seccomp filters), a volume target resolving to `/` covered the rootfs (refused), and
//! `coracle exec` read the container's `/dev/null` (it now passes the host's). Their doc
//! comments describe the bug as found.
//!
//! Cleanup: stores, sentinels and volumes live in the test's `Env` temp dir (removed on
//! drop). Every background `coracle run` / `coracle exec` is a `Running`, whose drop
//! SIGKILLs it and every container process the test learnt about (through pidfds, never
//! by name). Host mounts and loop devices the tests make are undone by drop guards, also
//! when an assertion fails midway.

mod util;

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::procs::*;
use util::*;

/// podman's default capability set (see tests/run.rs).
const DEFAULT_CAPS: u64 = 0x0000_0000_8004_05fb;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A shell function for the attack scripts: `t CMD` runs CMD (a redirection such as
/// `exec 3<>/proc/1/exe`) in a subshell and prints `OPENED CMD` or `refused CMD`.
/// (Its output goes to a file: the container's /dev/null may be a FIFO by then.)
const T: &str = r#"t() { if ( eval "$1" ) >/tmp/.t 2>&1; then echo "OPENED $1"; else echo "refused $1"; fi; }; "#;

// ---------------------------------------------------------------------------------------
// Fixture: a private store holding the default image as `fix` (as in tests/run.rs).

struct Fx {
    env: Env,
}

impl Fx {
    fn new() -> Fx {
        require_root();
        subreaper();
        let fx = Fx { env: Env::new() };
        fx.add_image("fix", default_built());
        fx
    }

    fn add_image(&self, tag: &str, img: &Built) {
        let dir = self.env.path(&format!("oci-{tag}"));
        write_oci_layout(&dir, &[(img, Some("latest"))]);
        self.env.ok(&["pull", "--tag", tag, &format!("oci:{}", dir.display())]);
    }

    /// The default layer plus `top`, with the config section `runtime`, pulled as `tag`;
    /// returns the top layer's directory in the store.
    fn add_layered(&self, tag: &str, top: LayerBuilder, runtime: Value) -> PathBuf {
        let mut img = Image::new(vec![(default_tar().to_vec(), Comp::None), (top.finish(), Comp::None)]);
        img.runtime = runtime;
        let built = build(&img);
        self.add_image(tag, &built);
        self.env.layer_root(&built.diff_ids[1])
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd();
        c.arg("run").args(args).stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        Out(self.cmd(args).output().unwrap())
    }

    /// `coracle exec ARGS...`, waited for (stdin /dev/null).
    fn exec(&self, args: &[&str]) -> Out {
        let mut c = self.env.cmd();
        c.arg("exec").args(args).stdin(Stdio::null());
        Out(c.output().unwrap())
    }

    fn exec_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.env.cmd();
        c.arg("exec").args(args).stdin(Stdio::null());
        c
    }

    /// `coracle run --name NAME --pid-file … FLAGS… fix ARGS…` in the background, once the
    /// app runs; returns it and the app's host pid.
    fn start(&self, name: &str, flags: &[&str], args: &[&str]) -> (Running, i32) {
        let pid_file = self.env.path(&format!("{name}.pid"));
        let mut full = vec!["--name", name, "--pid-file", pid_file.to_str().unwrap()];
        full.extend_from_slice(flags);
        full.push("fix");
        full.extend_from_slice(args);
        let mut run = Running::spawn(self.cmd(&full));
        let pid = wait_pid_file(&pid_file, &mut run);
        (run, pid)
    }

    fn layer(&self) -> PathBuf {
        self.env.layer_root(&default_built().diff_ids[0])
    }
}

/// Asserts exit 0 and returns stdout.
fn ok(o: &Out, what: &str) -> String {
    assert_eq!(o.code(), Some(0), "{what}: {:?}, stderr: {}", o.0.status, o.stderr());
    o.stdout()
}

/// Lines of an attack script's output that report a successful open.
fn opened(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("OPENED")).collect()
}

/// Everything under `dir`, never following symlinks: names, types, modes, owners, link
/// targets and file contents (hashed).
fn snapshot(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = fs::symlink_metadata(&d).unwrap();
        out.push_str(&format!("{} {:?} {:o} {}:{}", d.display(), md.file_type(), md.mode(), md.uid(), md.gid()));
        if md.is_dir() {
            let mut es: Vec<PathBuf> = fs::read_dir(&d).unwrap().flatten().map(|e| e.path()).collect();
            es.sort();
            stack.extend(es);
        } else if md.is_file() {
            out.push_str(&format!(" {}", sha256(&fs::read(&d).unwrap())));
        } else if md.file_type().is_symlink() {
            out.push_str(&format!(" -> {}", fs::read_link(&d).unwrap().display()));
        } else if md.file_type().is_char_device() || md.file_type().is_block_device() {
            out.push_str(&format!(" rdev {:x}", md.rdev()));
        }
        out.push('\n');
    }
    out
}

/// A sentinel dir beside the store: what an escape would most likely touch.
fn sentinel(env: &Env) -> PathBuf {
    let s = env.path("sentinel");
    fs::create_dir_all(s.join("dir")).unwrap();
    fs::write(s.join("file"), "sentinel\n").unwrap();
    fs::write(s.join("dir/inner"), "inner\n").unwrap();
    s
}

/// The sha256 of what an open file holds now (read from its start).
fn hash_of(f: &mut fs::File) -> String {
    f.rewind().unwrap();
    let mut data = Vec::new();
    f.read_to_end(&mut data).unwrap();
    sha256(&data)
}

/// `s` quoted for sh.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn host_sysctl(name: &str) -> String {
    fs::read_to_string(format!("/proc/sys/{name}")).unwrap()
}

/// A command run as the unprivileged host user nobody (65534, no groups, no
/// capabilities). setpriv keeps its capabilities until its own execve, so it execs a
/// shell, which then runs `args` with nothing but nobody's rights.
fn as_nobody(args: &[&str]) -> Out {
    need_tool("setpriv");
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/bin/sh", "-c", "exec \"$@\"", "sh"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Out(o)
}

// ---------------------------------------------------------------------------------------
// Processes (as in tests/run.rs): background runs and container processes, all killed on
// drop through pidfds.

/// Children of `pid` (all its threads).
fn children(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let c = fs::read_to_string(t.path().join("children")).unwrap_or_default();
        v.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    v
}

/// A mount the test made on the host, detached on drop.
struct HostMount(PathBuf);

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A loop device the test attached, detached on drop.
struct LoopDev(String);

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

// ---------------------------------------------------------------------------------------
// CVE-2019-5736: the runtime's binary through /proc/*/exe.

/// Attacks on the process `$p` of every argument: its exe (read, read-write, append,
/// and reopened for writing through /proc/self/fd), its fds, memory, environment,
/// map_files, cwd and root.
const PROC_ATTACKS: &str = r#"for p in "$@"; do
  t "exec 3</proc/$p/exe"; t "exec 3<>/proc/$p/exe"; t "exec 3>>/proc/$p/exe"
  t "exec 3</proc/$p/exe; exec 4<>/proc/self/fd/3"
  t "/bin/busybox readlink /proc/$p/exe"; t "/bin/busybox readlink /proc/$p/cwd"; t "/bin/busybox readlink /proc/$p/root"
  t "exec 3</proc/$p/mem"; t "exec 3<>/proc/$p/mem"; t "exec 3</proc/$p/environ"
  t "/bin/busybox ls /proc/$p/map_files/ | /bin/busybox grep -q ."
  for f in 0 1 2 3 4 5 6 7 8 9 10 11 12; do t "exec 3</proc/$p/fd/$f"; t "exec 3>>/proc/$p/fd/$f"; done
done"#;

/// CVE-2019-5736, beyond the container's init (tests/run.rs): `coracle exec`'s process,
/// which runs coracle's code inside the container until its execve, and a busybox app,
/// whose `/proc/self/exe` is the image's binary. Nothing in the container may open
/// coracle's binary (or its fds or memory) through `/proc/PID/…` of init or of an exec
/// child caught before its execve; writes through a busybox app's `/proc/self/exe` land
/// in the container's own writable layer, never in the store's layer; and the binary on
/// the host is byte for byte unchanged afterwards.
#[test]
fn cve_2019_5736_exec_and_busybox_apps_cannot_reach_the_runtime_binary() {
    let fx = Fx::new();
    let mut bin = fs::File::open(coracle_bin()).unwrap();
    let bin_hash = hash_of(&mut bin);
    let layer_before = snapshot(&fx.layer());
    let (run, _) = fx.start("c5736", &[], &["/bin/busybox", "sleep", "60"]);

    // From an exec'd process: init (PID 1, coracle's code) is out of reach; the busybox
    // app (PID 2) is text-busy.
    let o = fx.exec(&["-i", "c5736", "/bin/sh", "-c", &format!("{T}{PROC_ATTACKS}"), "sh", "1"]);
    let out = ok(&o, "exec of the attack script");
    assert!(opened(&out).is_empty(), "init reachable from an exec'd process: {:?}", opened(&out));
    let o = fx.exec(&["-i", "c5736", "/bin/sh", "-c", &format!("{T}t 'exec 3<>/proc/2/exe'; t 'exec 3>>/proc/2/exe'")]);
    let out = ok(&o, "busybox app's exe");
    assert!(opened(&out).is_empty(), "the running busybox app's exe opened for writing: {out}");

    // A racer in the container tries every /proc/N/exe while exec children come and go:
    // it may only ever open the image's own binaries.
    let mut racer = Running::spawn(fx.exec_cmd(&[
        "-i",
        "c5736",
        "/bin/sh",
        "-c",
        "echo racing; while [ ! -e /tmp/stop ]; do for p in /proc/[0-9]*; do \
         ( exec 3<$p/exe && /bin/busybox readlink /proc/self/fd/3 ) 2>/dev/null; done; done | /bin/busybox sort -u",
    ]));
    assert_eq!(racer.line(Duration::from_secs(10)), "racing");
    for _ in 0..10 {
        ok(&fx.exec(&["-i", "c5736", "/bin/probe", "pid"]), "exec during the race");
    }
    ok(&fx.exec(&["-i", "c5736", "/bin/busybox", "touch", "/tmp/stop"]), "stop the racer");
    let (st, seen, err) = racer.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "racer: {err}");
    assert!(
        seen.iter().all(|l| l == "/bin/busybox" || l == "/bin/probe"),
        "the racer opened something else than the image's binaries: {seen:?}"
    );

    // An exec child caught before its execve. Today the container can stall it: `coracle
    // exec` without -i opens the container's /dev/null, which the container may replace
    // by a FIFO (see exec_stdin_does_not_depend_on_the_containers_dev_null). While it
    // waits there it is coracle's code in the container, with all of coracle's
    // capabilities: nothing may open its exe, fds or memory.
    ok(&fx.exec(&["-i", "c5736", "/bin/sh", "-c", "rm /dev/null && /bin/busybox mkfifo /dev/null"]), "mkfifo");
    let mut stalled = Running::spawn(fx.exec_cmd(&["c5736", "/bin/probe", "echo", "released"]));
    let canon = fs::canonicalize(coracle_bin()).unwrap();
    let end = Instant::now() + Duration::from_secs(2);
    let mut caught = None;
    while caught.is_none() && Instant::now() < end && stalled.child.try_wait().unwrap().is_none() {
        for c in children(stalled.pid()) {
            let status = fs::read_to_string(format!("/proc/{c}/status")).unwrap_or_default();
            let blocked = status.lines().any(|l| l.starts_with("State:") && l.contains("S (sleeping)"));
            if blocked && fs::read_link(format!("/proc/{c}/exe")).ok().as_deref() == Some(canon.as_path()) {
                let ns = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or_default();
                caught = ns.split_whitespace().last().map(|p| (c, p.to_owned()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match caught {
        Some((host_pid, ns_pid)) => {
            stalled.adopt(host_pid);
            eprintln!("caught the exec child before its execve: host pid {host_pid}, pid {ns_pid} inside");
            let o = fx.exec(&["-i", "c5736", "/bin/sh", "-c", &format!("{T}{PROC_ATTACKS}"), "sh", &ns_pid]);
            let out = ok(&o, "attacks on the stalled exec child");
            assert!(opened(&out).is_empty(), "the exec child (pid {ns_pid} inside) reachable: {:?}", opened(&out));
            // Opening the FIFO for writing releases the reader; writing to it could SIGPIPE.
            ok(&fx.exec(&["-i", "c5736", "/bin/sh", "-c", "exec 3>/dev/null"]), "release the FIFO");
            let (st, out, err) = stalled.finish(Duration::from_secs(10));
            assert_eq!((st.code(), out), (Some(0), vec!["released".to_owned()]), "{err}");
        }
        None => eprintln!("coracle exec did not stall on a FIFO /dev/null: no exec child to attack before execve"),
    }
    drop(run);

    // A busybox app writes through its own /proc/self/exe once nothing executes busybox
    // any more: the container's copy changes, the store's layer does not.
    let o = fx.run(&[
        "--no-init",
        "fix",
        "/bin/sh",
        "-c",
        "exec 3</proc/self/exe; exec /bin/probe write /proc/self/fd/3 pwned-by-the-container",
    ]);
    eprintln!("write through a busybox app's /proc/self/exe: exit {:?} {}", o.code(), o.stderr().trim());
    assert!(matches!(o.code(), Some(0 | 99)), "{}", o.stderr());
    let o = fx.run(&["fix", "/bin/sh", "-c", "echo intact"]);
    assert_eq!(ok(&o, "the image's busybox after the write"), "intact\n");
    assert_eq!(snapshot(&fx.layer()), layer_before, "the store's layer changed");
    assert_eq!(hash_of(&mut bin), bin_hash, "coracle's binary changed");
}

/// CVE-2019-5736 with `--cap-add SYS_PTRACE`: the app may then open `/proc/1/exe`
/// read-only (the kernel's non-dumpable guard yields to CAP_SYS_PTRACE), but the binary
/// executes as init for as long as any container process lives, so it can never be
/// opened for writing (ETXTBSY), directly or reopened through `/proc/self/fd`.
#[test]
fn cve_2019_5736_runtime_binary_stays_unwritable_with_cap_sys_ptrace() {
    let fx = Fx::new();
    let mut bin = fs::File::open(coracle_bin()).unwrap();
    let bin_hash = hash_of(&mut bin);
    let script = format!(
        "{T}t 'exec 3</proc/1/exe'; t 'exec 3<>/proc/1/exe'; t 'exec 3>>/proc/1/exe'; \
         t 'exec 3</proc/1/exe; exec 4<>/proc/self/fd/3'; t 'exec 3</proc/1/exe; exec 4>>/proc/self/fd/3'"
    );
    for flags in [&["--cap-add", "SYS_PTRACE"][..], &["--privileged"]] {
        let mut args = flags.to_vec();
        args.extend(["fix", "/bin/sh", "-c", &script]);
        let out = ok(&fx.run(&args), "attack script");
        let writable: Vec<&str> = opened(&out).into_iter().filter(|l| *l != "OPENED exec 3</proc/1/exe").collect();
        assert!(writable.is_empty(), "{flags:?}: coracle's binary opened for writing: {writable:?}");
    }
    assert_eq!(hash_of(&mut bin), bin_hash, "coracle's binary changed");
}

/// BUG (CVE-2019-5736 family, the runtime's process rather than its file): the
/// container's init is coracle's own code and keeps every capability coracle has, no
/// seccomp filter and no no_new_privs. With `--cap-add SYS_PTRACE` (a flag docker users
/// pass for debuggers) the non-dumpable guard yields, and the app can open
/// `/proc/1/mem` read-write: writing code into init gives it the host's full capability
/// set (CAP_SYS_ADMIN, CAP_SYS_MODULE, …) unconfined. The same holds for `coracle exec`'s
/// child before its execve. runc has no such process: its init execs the app.
///
/// Reproducer: `coracle run --cap-add SYS_PTRACE IMAGE /bin/sh -c 'exec 3<>/proc/1/mem
/// && echo opened; grep CapEff /proc/1/status'` prints `opened` and
/// `CapEff: 000001fffeffffff`.
#[test]
fn init_is_no_way_out_with_cap_sys_ptrace() {
    let fx = Fx::new();
    let o = fx.run(&[
        "--cap-add",
        "SYS_PTRACE",
        "fix",
        "/bin/sh",
        "-c",
        &format!(
            "{T}t 'exec 3<>/proc/1/mem'; t 'exec 3</proc/1/mem'; \
             /bin/busybox grep -E '^(CapEff|Seccomp|NoNewPrivs):' /proc/1/status"
        ),
    ]);
    let out = ok(&o, "probe init");
    let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().trim().to_owned();
    let init_caps = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(u64::MAX);
    let app_caps = DEFAULT_CAPS | CAP_SYS_PTRACE;
    let mem_writable = out.contains("OPENED exec 3<>/proc/1/mem");
    assert!(
        !mem_writable || (init_caps & !app_caps == 0 && field("Seccomp:") != "0"),
        "the app can write the memory of init, which holds capabilities {init_caps:#x} (the app {app_caps:#x}), \
         seccomp {}, no_new_privs {}:\n{out}",
        field("Seccomp:"),
        field("NoNewPrivs:")
    );
}

// ---------------------------------------------------------------------------------------
// CVE-2024-21626: leaked fds and a cwd through /proc/self/fd.

/// Asserts that a run or exec either failed cleanly (125, one line starting with
/// `prefix`) or printed a cwd inside the container whose listing shows nothing of the
/// host or the store.
fn assert_inside_or_refused(o: &Out, prefix: &str, what: &str) {
    if o.code() == Some(0) {
        let out = o.stdout();
        let cwd = out.lines().next().unwrap_or("");
        assert!(cwd.starts_with('/') && !cwd.contains("unreachable"), "{what}: cwd {cwd:?} outside the root");
        for bad in ["upper", "work", "rootfs", "lock", "blobs", "layers", "containers", "store", "sentinel"] {
            assert!(
                !out.lines().skip(1).any(|l| l.split(' ').next() == Some(bad)),
                "{what}: the cwd listing shows {bad:?}, a host/store entry: {out}"
            );
        }
    } else {
        assert_fails(o, 125, prefix);
    }
}

/// CVE-2024-21626 beyond `run -w` (tests/run.rs): `coracle exec -w` with procfs magic
/// links, an image whose `WorkingDir` is one, mount targets through them, and the fds
/// an exec'd process and init expose. Every case is refused or stays inside.
#[test]
fn cve_2024_21626_exec_workdirs_image_workdirs_and_mount_targets_through_proc_fds() {
    let fx = Fx::new();
    let sentinel = sentinel(&fx.env);
    let before = snapshot(&sentinel);
    let (_run, _) = fx.start("c21626", &[], &["/bin/probe", "sleep", "60"]);
    let script = "/bin/probe cwd && /bin/probe ls .";
    let mut wds: Vec<String> = (3..=12).map(|n| format!("/proc/self/fd/{n}")).collect();
    wds.extend(
        ["/proc/self/cwd", "/proc/1/cwd", "/proc/1/root", "/proc/2/cwd", "/dev/fd/4", "/proc/self/root/.."]
            .map(String::from),
    );
    for wd in &wds {
        let o = fx.exec(&["-w", wd, "c21626", "/bin/sh", "-c", script]);
        assert_inside_or_refused(&o, "coracle: exec: ", &format!("exec -w {wd}"));
    }
    // Only 0-2 reach an exec'd process, with or without -i; init's fds, cwd and root
    // cannot even be read.
    for flags in [&[][..], &["-i"]] {
        let mut args = flags.to_vec();
        args.extend(["c21626", "/bin/probe", "fds"]);
        let out = ok(&fx.exec(&args), "exec probe fds");
        assert_eq!(out.lines().next(), Some("[0,1,2]"), "{flags:?}: {out}");
    }
    let o = fx.exec(&[
        "c21626",
        "/bin/sh",
        "-c",
        &format!(
            "{T}for f in 0 1 2 3 4 5 6 7 8 9; do t \"/bin/busybox readlink /proc/1/fd/$f\"; done; \
             t '/bin/busybox readlink /proc/1/cwd'; t '/bin/busybox readlink /proc/1/root'; t 'cd /proc/1/cwd'"
        ),
    ]);
    let out = ok(&o, "init's fds");
    assert!(opened(&out).is_empty(), "init's fds or cwd readable: {:?}", opened(&out));

    // An image's WorkingDir.
    for wd in ["/proc/self/fd/3", "/proc/self/fd/5", "/proc/self/fd/7", "/proc/self/cwd", "/proc/1/cwd"] {
        let tag = format!("wd{}", wd.replace('/', "-"));
        let mut img = Image::new(vec![(default_tar().to_vec(), Comp::None)]);
        img.runtime = json!({"Env": [DEFAULT_PATH], "WorkingDir": wd});
        fx.add_image(&tag, &build(&img));
        let o = fx.run(&[&tag, "/bin/sh", "-c", script]);
        assert_inside_or_refused(&o, "coracle: run: ", &format!("WorkingDir {wd}"));
    }

    // Mount targets through magic links.
    let vol = fx.env.path("vol");
    fs::create_dir_all(&vol).unwrap();
    let v = |t: &str| format!("{}:{t}", vol.display());
    for flags in [
        vec!["-v".to_owned(), v("/proc/self/fd/5")],
        vec!["-v".to_owned(), v("/proc/self/fd/6/x")],
        vec!["-v".to_owned(), v("/dev/fd/3/x")],
        vec!["-v".to_owned(), v("/proc/self/root/escape")],
        vec!["-v".to_owned(), v("/proc/1/cwd/escape")],
        vec!["--tmpfs".to_owned(), "/proc/self/cwd".to_owned()],
        vec!["--tmpfs".to_owned(), "/proc/self/fd/4/t".to_owned()],
        vec!["--tmpfs".to_owned(), "/dev/stdout".to_owned()],
    ] {
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend(["fix", "/bin/probe", "write", "/x", "x"]);
        let o = fx.run(&args);
        assert_fails(&o, 125, "coracle: run: ");
    }
    assert_eq!(names(&vol), Vec::<String>::new(), "the volume got entries");
    assert_eq!(snapshot(&sentinel), before, "the sentinel changed");
}

// ---------------------------------------------------------------------------------------
// /proc, /dev and /dev/null swapped for symlinks (CVE-2019-16884, CVE-2019-19921,
// CVE-2025-31133 families).

/// CVE-2019-19921 / CVE-2019-16884 / CVE-2025-31133 family: an image whose `/etc`
/// files (bind-mount targets) are symlinks into `/proc/sys`, and whose own `/dev/null`
/// is a symlink to `core_pattern`. The binds land on the container's view of those proc
/// files, the read-only `/proc/sys` covers them, the image's `/dev` is hidden by a fresh
/// one, and a container that later replaces its `/dev/null` with a symlink into
/// `/proc/sys` gets nothing written through it by `coracle exec`. The host's sysctls are
/// unchanged throughout (every write attempt writes the host's current value, so even a
/// leak would change nothing).
#[test]
fn etc_and_dev_null_symlinked_into_proc_do_not_reach_the_hosts_sysctls() {
    let fx = Fx::new();
    let core = host_sysctl("kernel/core_pattern");
    let domain = host_sysctl("kernel/domainname");
    let hostname = host_sysctl("kernel/hostname");
    let top = LayerBuilder::new()
        .symlink("etc/resolv.conf", "/proc/sys/kernel/core_pattern")
        .symlink("etc/hostname", "/proc/sys/kernel/domainname")
        .symlink("etc/hosts", "../proc/sys/kernel/hostname")
        .dir("dev", 0o755)
        .symlink("dev/null", "/proc/sys/kernel/core_pattern")
        .symlink("dev/shm", "/");
    fx.add_layered("procetc", top, json!({"Env": [DEFAULT_PATH]}));
    let script = format!(
        "/bin/probe stat /dev/null; for f in /etc/resolv.conf /proc/sys/kernel/core_pattern; do \
         /bin/probe write $f {} 2>&1; done; /bin/probe write /etc/hostname {} 2>&1; \
         /bin/probe write /etc/hosts {} 2>&1; /bin/probe write /dev/shm/x x && echo shm-ok; true",
        sq(core.trim_end()),
        sq(domain.trim_end()),
        sq(hostname.trim_end())
    );
    let o = fx.run(&["procetc", "/bin/sh", "-c", &script]);
    if o.code() == Some(0) {
        let out = o.stdout();
        let null: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(
            (null["type"].as_str(), null["rdev_major"].as_u64(), null["rdev_minor"].as_u64()),
            (Some("c"), Some(1), Some(3)),
            "{out}"
        );
        let writes: Vec<&str> = out.lines().filter(|l| l.starts_with("probe: write")).collect();
        assert_eq!(writes.len(), 4, "every write into /proc/sys must fail: {out}");
        assert!(writes.iter().all(|l| l.contains("Read-only file system")), "{out}");
        assert!(out.contains("shm-ok"), "/dev/shm is the fresh tmpfs: {out}");
    } else {
        assert_fails(&o, 125, "coracle: run: ");
    }

    // A running container swaps its /dev/null for a symlink into /proc/sys; `coracle exec`
    // (which opens /dev/null for the exec'd process's stdin) runs normally and writes
    // nothing there.
    let (_run, _) = fx.start("devnull", &[], &["/bin/probe", "sleep", "60"]);
    ok(
        &fx.exec(&["-i", "devnull", "/bin/sh", "-c", "rm /dev/null && ln -s /proc/sys/kernel/core_pattern /dev/null"]),
        "swap /dev/null",
    );
    let o = fx.exec(&["devnull", "/bin/probe", "echo", "exec ran"]);
    assert_eq!(ok(&o, "exec after the swap"), "exec ran\n");

    assert_eq!(host_sysctl("kernel/core_pattern"), core, "the host's core_pattern changed");
    assert_eq!(host_sysctl("kernel/domainname"), domain, "the host's domainname changed");
    assert_eq!(host_sysctl("kernel/hostname"), hostname, "the host's hostname changed");
}

/// CVE-2019-16884 / CVE-2019-19921 family, persistence: the layers are read-only lower
/// directories of the overlay, so a container that unmounts /proc, /dev and /sys and
/// replaces them (and /etc files, binaries, modes) with symlinks to `/` changes only its
/// own writable layer. The store's layer is identical afterwards, with either scratch,
/// and the next container gets the pristine image.
#[test]
fn a_container_cannot_persist_symlinks_or_writes_into_the_image_layers() {
    let fx = Fx::new();
    let before = snapshot(&fx.layer());
    let script = "B=/bin/busybox; \
        $B umount -l /proc; $B umount -l /sys; $B umount -l /dev; \
        rmdir /proc /sys /dev; ln -s / /proc; ln -s / /sys; ln -s /etc /dev; \
        rm -f /etc/passwd; ln -s /proc/sys/kernel/core_pattern /etc/passwd; echo pwned > /etc/os-release; \
        $B cp /bin/busybox /bin/probe; $B chmod 4777 /bin/probe; $B chown 1000 /bin/busybox; \
        $B mkdir /new; $B mknod /bin/null c 1 3 2>/dev/null; \
        [ -L /proc ] && [ -L /sys ] && [ -L /dev ] && echo replaced";
    for scratch in ["tmpfs", "store"] {
        let o = fx.run(&["--scratch", scratch, "--cap-add", "SYS_ADMIN", "fix", "/bin/sh", "-c", script]);
        assert_eq!(ok(&o, scratch).trim(), "replaced", "{scratch}: {}", o.stderr());
        assert_eq!(snapshot(&fx.layer()), before, "{scratch}: the store's layer changed");
        let o = fx.run(&[
            "fix",
            "/bin/sh",
            "-c",
            "/bin/probe stat /proc && /bin/probe cat /etc/os-release && /bin/probe mounts",
        ]);
        let out = ok(&o, "the next container");
        let proc: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(proc["type"], "d", "{scratch}: /proc in the next container: {out}");
        assert!(!out.contains("pwned"), "{scratch}: the next container sees the write: {out}");
        assert!(out.lines().any(|l| l.split(' ').nth(4) == Some("/proc")), "{scratch}: /proc mounted: {out}");
    }
}

// ---------------------------------------------------------------------------------------
// Racing swaps inside volumes (CVE-2018-15664, CVE-2021-30465).

fn rename_exchange(a: &Path, b: &Path) -> bool {
    let a = std::ffi::CString::new(a.as_os_str().as_encoded_bytes()).unwrap();
    let b = std::ffi::CString::new(b.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: two valid NUL-terminated paths; renameat2 with RENAME_EXCHANGE.
    unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        ) == 0
    }
}

/// Counts how a raced `coracle run … probe cwd` ended: it ran; the app started but its
/// working directory was swapped away under it (probe's own error, exit 99); or coracle
/// refused cleanly (125, one line).
/// How raced runs ended: [ran, ran but lost its cwd, refused, ran with the volume
/// mounted over its `/`].
type Outcomes = [usize; 4];

/// Counts how a raced `coracle run … probe mounts; probe cwd` ended: it ran; the app
/// started but its working directory was swapped away under it (probe's own error, exit
/// 99); or coracle refused cleanly (125, one line). A container that started has the
/// image's overlay as its first root mount; the only other mount allowed on `/` is the
/// raced volume `other` (a target that resolved to the container's root: see
/// `a_volume_whose_target_resolves_to_the_root_is_not_mounted_over_it`).
fn count_outcome(o: &Out, other: &Path, outcomes: &mut Outcomes) {
    match o.code() {
        Some(0) => outcomes[0] += 1,
        Some(99) if o.stderr().starts_with("probe: cwd: ") => outcomes[1] += 1,
        _ => {
            assert_fails(o, 125, "coracle: run: ");
            outcomes[2] += 1;
            return;
        }
    }
    let out = o.stdout();
    let roots: Vec<&str> = out.lines().filter(|l| l.split(' ').nth(4) == Some("/")).collect();
    assert!(
        roots.first().is_some_and(|r| r.contains(" - overlay ")),
        "the container's root is not the overlay:\n{out}"
    );
    for r in &roots[1..] {
        assert_eq!(r.split(' ').nth(3), other.to_str(), "a mount over the container's root:\n{out}");
        outcomes[3] += 1;
    }
}

/// A host thread exchanging `dir/a` with `dir/alt1`..`alt3` until stopped; stopped and
/// joined on drop too, so that it never races the temp dir's removal after a failure.
struct Swapper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Swapper {
    fn start(dir: &Path) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), dir.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if !rename_exchange(&dir.join("a"), &dir.join(format!("alt{}", n % 3 + 1))) {
                    break;
                }
                n += 1;
            }
            n
        });
        Swapper { stop, thread: Some(thread) }
    }

    /// Stops the thread; returns how many exchanges it made.
    fn finish(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The raced containers' command: their mount table, then their working directory.
const RACED: [&str; 3] = ["/bin/sh", "-c", "/bin/probe mounts && exec /bin/probe cwd"];

/// A unique name for mount targets that an escape would create in the host's `/`.
/// 20 runs with `vol` on /data while something swaps `dir` (under /data): half with a
/// volume of `other` on `dir`, half with one, a tmpfs and the working directory under
/// it; alternately with a tmpfs and a store scratch. Their outcomes counted.
fn raced_runs(fx: &Fx, vol: &str, dir: &str, name: &str, other: &Path) -> Outcomes {
    let on = format!("{}:{dir}", other.display());
    let under = format!("{}:{dir}/{name}-v", other.display());
    let (tmpfs, wd) = (format!("{dir}/{name}-t"), format!("{dir}/{name}-w"));
    let mut outcomes: Outcomes = [0; 4];
    for i in 0..20 {
        let scratch = if i % 2 == 0 { "tmpfs" } else { "store" };
        let mut args = vec!["--scratch", scratch, "-v", vol];
        if i % 4 < 2 {
            args.extend(["-v", &on]);
        } else {
            args.extend(["-v", &under, "--tmpfs", &tmpfs, "-w", &wd]);
        }
        args.push("fix");
        args.extend(RACED);
        count_outcome(&fx.run(&args), other, &mut outcomes);
    }
    outcomes
}

fn escape_name() -> String {
    format!("coracle-escape-{}", std::process::id())
}

fn assert_nothing_at_host_root(name: &str) {
    for suffix in ["t", "v", "w", "m"] {
        let p = Path::new("/").join(format!("{name}-{suffix}"));
        assert!(fs::symlink_metadata(&p).is_err(), "{} was created on the host", p.display());
    }
}

/// CVE-2021-30465 family, raced from the host: while `coracle run` starts, a host thread
/// keeps exchanging (renameat2 RENAME_EXCHANGE) a directory inside a `-v` source with
/// symlinks to `/`, to a host sentinel and to `../../..`. The volume's nested targets
/// (`--tmpfs`, `-v`, `-w`) are resolved with openat2 RESOLVE_IN_ROOT and attached to fds,
/// so each run either fails cleanly or mounts inside its own root: nothing is created or
/// mounted on the host.
#[test]
fn cve_2021_30465_host_swapping_a_volume_dir_during_start_reaches_nothing() {
    let fx = Fx::new();
    let ours = fx.env.dir.path().to_path_buf();
    let sentinel = sentinel(&fx.env);
    let before_sentinel = snapshot(&sentinel);
    let src = fx.env.path("vol");
    let other = fx.env.path("other");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(&other).unwrap();
    std::os::unix::fs::symlink("/", src.join("alt1")).unwrap();
    std::os::unix::fs::symlink(&sentinel, src.join("alt2")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../..", src.join("alt3")).unwrap();
    let name = escape_name();
    assert_nothing_at_host_root(&name);
    let before_mounts = host_mounts(&ours);

    let mut swapper = Swapper::start(&src);
    let vol = format!("{}:/data", src.display());
    let outcomes = raced_runs(&fx, &vol, "/data/a", &name, &other);
    let swaps = swapper.finish();
    assert!(swaps > 100, "the swapper stopped early (renameat2 failed) after {swaps} exchanges");
    eprintln!("{swaps} swaps; runs, lost cwds, refusals, volume over /: {outcomes:?}");
    assert_eq!(snapshot(&sentinel), before_sentinel, "the host sentinel changed");
    assert_nothing_at_host_root(&name);
    assert_eq!(names(&other), Vec::<String>::new(), "the nested volume got entries");
    assert_same_mounts(&before_mounts, &host_mounts(&ours), "after the raced runs");
}

/// CVE-2018-15664 / CVE-2021-30465: a container keeps replacing `/data/x` (inside a
/// shared volume) with symlinks to `/`, to a host path and to `../../..`, while a second
/// container with `-v SRC:/data` and mounts on or under `/data/x` starts and stops 20
/// times (both scratch kinds, so its teardown runs too). No file outside the volume is
/// touched (sentinels beside it, the host's `/`), the host's mount table is unchanged,
/// and the volume holds nothing but what the containers made there.
#[test]
fn cve_2018_15664_a_container_swapping_a_volume_target_for_a_symlink_to_root() {
    let fx = Fx::new();
    let ours = fx.env.dir.path().to_path_buf();
    let sentinel = sentinel(&fx.env);
    let before_sentinel = snapshot(&sentinel);
    let src = fx.env.path("vol");
    let other = fx.env.path("other");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&other).unwrap();
    let name = escape_name();
    assert_nothing_at_host_root(&name);
    let host_root = names(Path::new("/"));
    let before_mounts = host_mounts(&ours);

    // rm -f never removes a directory and rmdir never a non-empty one: whatever the
    // symlinks point at, the racer deletes nothing but its own links and empty dirs; ln -T
    // never creates a link inside a directory coracle made meanwhile.
    let racer_script = format!(
        "echo racing; while [ ! -e /data/stop ]; do for to in / {} ../../../../../../..; do \
         [ -L /data/x ] || rmdir /data/x/* /data/x 2>/dev/null; rm -f /data/x 2>/dev/null; ln -sT $to /data/x 2>/dev/null; \
         rm -f /data/x 2>/dev/null; mkdir /data/x 2>/dev/null; done; done; echo racer-done",
        sentinel.display()
    );
    let vol = format!("{}:/data", src.display());
    let mut racer = Running::spawn(fx.cmd(&["-v", &vol, "fix", "/bin/sh", "-c", &racer_script]));
    assert_eq!(racer.line(Duration::from_secs(10)), "racing");

    let outcomes = raced_runs(&fx, &vol, "/data/x", &name, &other);
    fs::write(src.join("stop"), "").unwrap();
    let (st, rest, err) = racer.finish(Duration::from_secs(10));
    assert_eq!((st.code(), rest), (Some(0), vec!["racer-done".to_owned()]), "racer: {err}");
    eprintln!("runs, lost cwds, refusals, volume over /: {outcomes:?}");

    assert_eq!(snapshot(&sentinel), before_sentinel, "the host sentinel changed");
    assert_nothing_at_host_root(&name);
    assert_eq!(names(Path::new("/")), host_root, "the host's / changed");
    assert_eq!(names(&other), Vec::<String>::new(), "the other volume got entries");
    assert_same_mounts(&before_mounts, &host_mounts(&ours), "after the raced runs");
    // The volume: only the racer's x (a dir or a link), the stop file, and the mount
    // points coracle made in x; no bind of / (its entries would show up here).
    let snap = snapshot(&src);
    let allowed = ["x", "stop", &format!("{name}-v"), &format!("{name}-t"), &format!("{name}-w")];
    for l in snap.lines() {
        let p = Path::new(l.split(' ').next().unwrap());
        if p != src {
            let n = p.file_name().unwrap().to_string_lossy();
            assert!(allowed.contains(&n.as_ref()), "unexpected entry in the volume: {l}\n{snap}");
        }
    }
}

/// BUG (CVE-2021-30465 family, inside the container): a directory volume whose target
/// resolves to the container's own `/` (an image's `/data -> /` symlink, or another
/// container sharing the volume that swaps `/data/x` for a symlink to `/` while this one
/// starts, as in the two tests above) is attached on top of the rootfs root. The app does
/// not notice (lookups from a process's root do not cross a mount stacked on that root),
/// but setns(2) into the mount namespace follows it: `coracle exec` then runs with the
/// volume as its root and fails (`coracle: exec: ENOENT: No such file or directory`, no
/// `/dev/null` there), or runs the volume's own binaries with the container's
/// capabilities when it has some. Not a host escape (the volume is a host directory the
/// caller chose to share), but the mount is not where it was asked for, and a hostile
/// image or a neighbour container decides what `exec` runs. The fix would refuse a mount
/// destination that is the rootfs itself.
///
/// Reproducer: an image with `ln -s / data`; `coracle run --name c -v /srv/x:/data IMAGE
/// sleep 60 &`; its `/proc/self/mountinfo` shows `/srv/x` mounted on `/`, and `coracle
/// exec c /bin/true` fails with `coracle: exec: ENOENT: No such file or directory`.
#[test]
fn a_volume_whose_target_resolves_to_the_root_is_not_mounted_over_it() {
    let fx = Fx::new();
    let other = fx.env.path("other");
    fs::create_dir_all(&other).unwrap();
    fx.add_layered("dataroot", LayerBuilder::new().symlink("data", "/"), json!({"Env": [DEFAULT_PATH]}));
    let v = format!("{}:/data", other.display());
    let pid_file = fx.env.path("dr.pid");
    let mut run = Running::spawn(fx.cmd(&[
        "--name",
        "dr",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "-v",
        &v,
        "dataroot",
        "/bin/probe",
        "sleep",
        "60",
    ]));
    let end = Instant::now() + Duration::from_secs(10);
    while !pid_file.exists() {
        if run.child.try_wait().unwrap().is_some() {
            // Refused: the fix may well be an error.
            let (st, _, err) = run.finish(Duration::from_secs(1));
            assert_eq!((st.code(), err.lines().count()), (Some(125), 1), "{err}");
            assert!(err.starts_with("coracle: run: "), "{err}");
            return;
        }
        assert!(Instant::now() < end, "no pid file after 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let app = wait_pid_file(&pid_file, &mut run);
    let mounts = fs::read_to_string(format!("/proc/{app}/mountinfo")).unwrap();
    let roots: Vec<&str> = mounts.lines().filter(|l| l.split(' ').nth(4) == Some("/")).collect();
    let o = fx.exec(&["dr", "/bin/probe", "ls", "/"]);
    assert!(
        roots.len() == 1 && o.code() == Some(0) && o.stdout().lines().any(|l| l.starts_with("bin ")),
        "the volume is mounted over the container's root ({} mounts on /), and exec gives {:?} {}:\n{mounts}",
        roots.len(),
        o.code(),
        o.stderr()
    );
}

// ---------------------------------------------------------------------------------------
// Masked and read-only /proc and /sys paths.

/// Writes to the read-only and masked `/proc` and `/sys` paths (podman's lists, and the
/// sysctls of the host's own network namespace, which the container shares) fail with
/// EROFS, and the host's values are unchanged. Every write writes the host's current
/// value, or nothing, so a leak could not change the host either. Masked files are
/// `/dev/null`, masked directories empty and read-only.
#[test]
fn writes_to_masked_and_read_only_proc_and_sys_paths_fail() {
    let fx = Fx::new();
    let sysctls = [
        "kernel/core_pattern",
        "kernel/hostname",
        "kernel/domainname",
        "kernel/modprobe",
        "kernel/panic",
        "vm/overcommit_memory",
        "net/ipv4/ip_forward",
        "net/ipv4/conf/all/forwarding",
        "fs/suid_dumpable",
    ];
    let before: Vec<(String, String)> = sysctls
        .iter()
        .filter(|s| Path::new("/proc/sys").join(s).exists())
        .map(|s| (format!("/proc/sys/{s}"), host_sysctl(s)))
        .collect();
    // (path, content): "" writes nothing even if the open went through.
    // (path, content, ENOENT accepted too).
    let mut writes: Vec<(String, String, bool)> =
        before.iter().map(|(p, v)| (p.clone(), v.trim_end().to_owned(), false)).collect();
    for p in [
        "/proc/sysrq-trigger",
        "/proc/sys/vm/drop_caches",
        "/proc/irq/default_smp_affinity",
        "/sys/kernel/uevent_helper",
        "/sys/power/state",
        "/sys/class/net/lo/mtu",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ] {
        if Path::new(p).exists() {
            writes.push((p.to_owned(), String::new(), false));
        }
    }
    // New entries in read-only and masked directories (procfs and sysfs refuse to create
    // any file, ENOENT, before the mount's flags are looked at; the masks' tmpfs says
    // EROFS).
    for (d, kernel_fs) in [
        ("/proc/bus", true),
        ("/proc/fs", true),
        ("/proc/irq", true),
        ("/proc/asound", true),
        ("/sys/kernel", true),
        ("/proc/acpi", false),
        ("/proc/scsi", false),
        ("/sys/firmware", false),
        ("/sys/dev/block", false),
        ("/sys/fs/selinux", false),
        ("/sys/devices/virtual/powercap", false),
    ] {
        if Path::new(d).is_dir() {
            writes.push((format!("{d}/coracle-test"), String::new(), kernel_fs));
        }
    }
    let mut script = String::new();
    for (p, v, _) in &writes {
        script.push_str(&format!("/bin/probe write {} {} 2>&1 || true; ", sq(p), sq(v)));
    }
    let out = ok(&fx.run(&["fix", "/bin/sh", "-c", &script]), "write script");
    for (p, _, enoent) in &writes {
        let line = out.lines().find(|l| l.starts_with(&format!("probe: write: {p}:"))).unwrap_or_else(|| {
            panic!("writing {p} did not fail:\n{out}");
        });
        let why = line.contains("Read-only file system") || (*enoent && line.contains("No such file or directory"));
        assert!(why, "{p}: {line}");
    }
    for (p, v) in &before {
        assert_eq!(&fs::read_to_string(p).unwrap(), v, "the host's {p} changed");
    }

    // Masks: files are the host's /dev/null, directories empty.
    let mut script = String::new();
    for p in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/latency_stats",
        "/proc/timer_stats",
    ] {
        if Path::new(p).exists() {
            script.push_str(&format!("echo {p}; /bin/probe stat {p}; /bin/probe cat {p}; "));
        }
    }
    for d in [
        "/proc/acpi",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/dev/block",
        "/sys/fs/selinux",
        "/sys/devices/virtual/powercap",
    ] {
        if Path::new(d).is_dir() {
            script.push_str(&format!("echo {d}; /bin/probe ls {d}; "));
        }
    }
    let out = ok(&fx.run(&["fix", "/bin/sh", "-c", &script]), "mask script");
    let mut lines = out.lines().peekable();
    while let Some(p) = lines.next() {
        assert!(p.starts_with('/'), "unexpected line {p:?} in\n{out}");
        if let Some(stat) = lines.next_if(|l| l.starts_with('{')) {
            let s: Value = serde_json::from_str(stat).unwrap();
            assert_eq!(
                (s["type"].as_str(), s["rdev_major"].as_u64(), s["rdev_minor"].as_u64()),
                (Some("c"), Some(1), Some(3)),
                "{p} is not /dev/null: {s}"
            );
        }
        assert!(lines.peek().is_none_or(|l| l.starts_with('/')), "{p} shows contents in the container:\n{out}");
    }
}

// ---------------------------------------------------------------------------------------
// uid/gid overflows.

/// uid/gid overflow values in `--user` and in an image's `User` (2^32-1 is `(uid_t)-1`,
/// which setresuid(2) reads as "leave unchanged", i.e. root) are a clean 125 error naming
/// the value, and nothing runs.
#[test]
fn uid_and_gid_overflow_values_in_user_are_refused() {
    let fx = Fx::new();
    let vol = fx.env.path("vol");
    fs::create_dir_all(&vol).unwrap();
    let v = format!("{}:/data", vol.display());
    let ran = vol.join("ran");
    for (flag, needle) in [
        ("-u=4294967295", "4294967295"),
        ("-u=4294967296", "4294967296"),
        ("-u=0:4294967295", "4294967295"),
        ("-u=4294967295:0", "4294967295"),
        ("-u=-1", "-1"),
        ("-u=0:-1", "-1"),
        ("-u=99999999999999999999", "99999999999999999999"),
        ("-u=2147483648", "2147483648"),
        ("-u=18446744073709551615", "18446744073709551615"),
    ] {
        let o = fx.run(&[flag, "-v", &v, "fix", "/bin/probe", "write", "/data/ran", "x"]);
        o.assert_error(needle);
        assert!(!ran.exists(), "{flag}: the app ran");
    }
    // `-u -1` is read as a flag: a usage error, also 125.
    let o = fx.run(&["-u", "-1", "-v", &v, "fix", "/bin/probe", "write", "/data/ran", "x"]);
    o.assert_error("-1");
    assert!(!ran.exists(), "-u -1: the app ran");

    for user in ["4294967295", "4294967296", "0:4294967295", "-1", "99999999999999999999"] {
        let tag = format!("user{}", user.replace(':', "-"));
        let mut img = Image::new(vec![(default_tar().to_vec(), Comp::None)]);
        img.runtime = json!({"Env": [DEFAULT_PATH], "User": user});
        fx.add_image(&tag, &build(&img));
        let o = fx.run(&["-v", &v, &tag, "/bin/probe", "write", "/data/ran", "x"]);
        o.assert_error(user.rsplit(':').next().unwrap());
        assert!(!ran.exists(), "image User {user}: the app ran");
    }
}

/// BUG (uid overflow through the image's own files): the range check applies to numeric
/// `--user` values only. A user *name* whose `/etc/passwd` entry has uid 4294967295
/// ((uid_t)-1) makes setresuid(-1, -1, -1) a no-op, so the app runs as root with the
/// full default capability set while the caller asked for an unprivileged user; uid
/// 3000000000 (outside the documented 0..2^31-1) is accepted too; a group with gid
/// 4294967295 fails with an unclear `EINVAL: Invalid argument`.
///
/// Reproducer: an image with `evil:x:4294967295:0::/:/bin/sh` in /etc/passwd;
/// `coracle run -u evil IMAGE id` prints `uid=0(root) gid=0(root)`.
#[test]
fn uid_and_gid_overflow_values_in_the_images_passwd_and_group_are_refused() {
    let fx = Fx::new();
    let base = fs::read_to_string(fixtures_dir().join("base/etc/passwd")).unwrap();
    let group = fs::read_to_string(fixtures_dir().join("base/etc/group")).unwrap();
    let passwd = format!(
        "{base}evil:x:4294967295:0::/:/bin/sh\nhuge:x:3000000000:0::/:/bin/sh\nbiggid:x:1000:4294967295::/:/bin/sh\n"
    );
    let group = format!("{group}bigg:x:4294967295:\n");
    let top =
        LayerBuilder::new().file("etc/passwd", 0o644, passwd.as_bytes()).file("etc/group", 0o644, group.as_bytes());
    fx.add_layered("overflow", top, json!({"Env": [DEFAULT_PATH]}));
    let top = LayerBuilder::new().file("etc/passwd", 0o644, passwd.as_bytes());
    fx.add_layered("overflow-user", top, json!({"Env": [DEFAULT_PATH], "User": "evil"}));
    let vol = fx.env.path("vol");
    fs::create_dir_all(&vol).unwrap();
    // Writable for whatever uid the app ends up with.
    fs::set_permissions(&vol, fs::Permissions::from_mode(0o777)).unwrap();
    let v = format!("{}:/data", vol.display());
    let mut failures = Vec::new();
    for (image, user, needle) in [
        ("overflow", Some("evil"), "4294967295"),
        ("overflow", Some("huge"), "3000000000"),
        ("overflow", Some("biggid"), "4294967295"),
        ("overflow", Some("0:bigg"), "4294967295"),
        ("overflow", Some("app:bigg"), "4294967295"),
        ("overflow-user", None, "4294967295"),
    ] {
        let mut args = vec!["-v", &v];
        if let Some(u) = user {
            args.extend(["-u", u]);
        }
        args.extend([image, "/bin/sh", "-c", "/bin/probe id > /data/ran"]);
        let o = fx.run(&args);
        let id = fs::read_to_string(vol.join("ran")).unwrap_or_default();
        let _ = fs::remove_file(vol.join("ran"));
        let err = o.stderr();
        if o.code() != Some(125) || !err.contains(needle) || !id.is_empty() {
            failures.push(format!("{image} -u {user:?}: exit {:?}, stderr {err:?}, ran as {id:?}", o.code()));
        }
    }
    assert!(failures.is_empty(), "overflowing ids from the image's files were not refused:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// setuid binaries and device nodes in layers.

/// Layers legitimately hold setuid-root binaries and device nodes. An unprivileged host
/// user must reach neither: the store is 0700 root (the test opens the temp dir around
/// it so that only the store's own mode stands in the way), and a setuid binary reached
/// through a running container's `/proc/PID/root` grants nothing (the kernel honours
/// setuid only on mounts of the caller's own mount namespace). Inside the container,
/// no_new_privs keeps a setuid-root binary run by uid 1000 at euid 1000.
#[test]
fn setuid_binaries_and_device_nodes_in_layers_are_unreachable_for_unprivileged_users() {
    let fx = Fx::new();
    let probe_bin = fs::read(probe()).unwrap();
    let top = LayerBuilder::new()
        .file_owned("bin/suid-probe", 0o4755, 0, 0, &probe_bin)
        .char_dev("bin/zero", 1, 5)
        .char_dev("bin/null", 1, 3);
    let layer = fx.add_layered("suid", top, json!({"Env": [DEFAULT_PATH]}));
    let suid = layer.join("bin/suid-probe");
    let md = fs::metadata(&suid).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o4755, 0), "the layer keeps the setuid-root file");
    assert!(fs::metadata(layer.join("bin/zero")).unwrap().file_type().is_char_device());

    let store = fx.env.root();
    let smd = fs::metadata(&store).unwrap();
    assert_eq!((smd.mode() & 0o7777, smd.uid()), (0o700, 0), "the store root must be 0700 root");
    fs::set_permissions(fx.env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(as_nobody(&["stat", store.to_str().unwrap()]).status(), "nobody can reach the store's own entry");
    for args in [
        vec!["ls", store.to_str().unwrap()],
        vec!["stat", suid.to_str().unwrap()],
        vec![suid.to_str().unwrap(), "id"],
        vec!["head", "-c", "1", layer.join("bin/zero").to_str().unwrap()],
        vec!["head", "-c", "1", layer.join("bin/null").to_str().unwrap()],
    ] {
        let o = as_nobody(&args);
        assert!(!o.status(), "nobody ran {args:?}: {}", o.stdout());
        assert!(o.stderr().contains("Permission denied"), "{args:?}: {}", o.stderr());
    }

    // Inside: no_new_privs.
    let s: Value =
        serde_json::from_str(&ok(&fx.run(&["suid", "/bin/probe", "stat", "/bin/suid-probe"]), "stat")).unwrap();
    assert_eq!((s["mode"].as_str(), s["uid"].as_u64()), (Some("4755"), Some(0)), "{s}");
    let id: Value =
        serde_json::from_str(&ok(&fx.run(&["-u", "1000", "suid", "/bin/suid-probe", "id"]), "suid id")).unwrap();
    assert_eq!((id["uid"].as_u64(), id["euid"].as_u64()), (Some(1000), Some(1000)), "setuid honoured: {id}");

    // Through a running container's /proc/PID/root. As root the app's root is out of
    // reach for nobody; as 65534 it is reachable (same uid), but setuid is not honoured.
    for user in ["0", "65534"] {
        let pid_file = fx.env.path(&format!("suid-{user}.pid"));
        let mut run = Running::spawn(fx.cmd(&[
            "-u",
            user,
            "--pid-file",
            pid_file.to_str().unwrap(),
            "suid",
            "/bin/probe",
            "sleep",
            "60",
        ]));
        let pid = wait_pid_file(&pid_file, &mut run);
        let path = format!("/proc/{pid}/root/bin/suid-probe");
        let o = as_nobody(&[&path, "id"]);
        if o.status() {
            let id: Value = serde_json::from_str(o.stdout().trim()).unwrap();
            assert_eq!(id["euid"].as_u64(), Some(65534), "-u {user}: nobody gained euid 0 through {path}: {id}");
        } else {
            assert!(o.stderr().contains("Permission denied"), "-u {user}: {}", o.stderr());
        }
        drop(run);
    }
}

/// BUG (device access; docker and podman deny it with the devices cgroup): the
/// container's rootfs overlay is not mounted `nodev`, and coracle has no device cgroup,
/// so a device node shipped in an image opens the host's device. A block node with the
/// major:minor of the host's disk gives the container (root, default capabilities, or
/// any uid when the node is 0666) raw read-write access to it. Here a loop device over
/// a temp file stands in for the disk. (The same holds for a node made in `/dev` or in a
/// volume with `--cap-add MKNOD`.)
///
/// Reproducer: `losetup -f --show disk.img` (say /dev/loop0, 7:0); an image with
/// `mknod /bin/disk b 7 0`; `coracle run IMAGE sh -c 'echo hi | dd of=/bin/disk
/// conv=notrunc'` writes `hi` into disk.img on the host.
#[test]
fn device_nodes_in_an_image_do_not_open_host_devices() {
    let fx = Fx::new();
    need_tool("losetup");
    let backing = fx.env.path("disk.img");
    fs::write(&backing, vec![0u8; 64 << 10]).unwrap();
    let dev = sh(Command::new("losetup").args(["--find", "--show"]).arg(&backing)).trim().to_owned();
    let _guard = LoopDev(dev.clone());
    let rdev = fs::metadata(&dev).unwrap().rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Block);
    h.set_mode(0o666);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_device_major(major).unwrap();
    h.set_device_minor(minor).unwrap();
    fx.add_layered("dev", LayerBuilder::new().raw(h, "bin/disk", None, &[]), json!({"Env": [DEFAULT_PATH]}));
    let mut leaks = Vec::new();
    for user in ["0", "65534"] {
        let marker = format!("coracle-wrote-this-as-{user}");
        let o = fx.run(&[
            "-u",
            user,
            "dev",
            "/bin/sh",
            "-c",
            &format!("echo {marker} | /bin/busybox dd of=/bin/disk conv=notrunc,fsync 2>&1; true"),
        ]);
        let data = fs::read(&backing).unwrap();
        if data.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            leaks.push(format!("-u {user}: wrote {dev} ({major}:{minor}): {}", o.stdout().trim()));
        }
    }
    assert!(leaks.is_empty(), "the container wrote a host block device:\n{}", leaks.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Mount propagation.

/// Mount propagation (the reason runc makes the rootfs rslave/rprivate, and docker's
/// volumes default to rprivate): a container with CAP_SYS_ADMIN (which the default
/// seccomp profile then allows to mount) makes its whole tree rshared and mounts a tmpfs
/// inside a volume whose source is itself a *shared* mount on the host: the host never
/// sees that mount or its file. The other way, a tmpfs the host mounts inside the volume
/// source while the container runs stays invisible to the container (docker's rprivate
/// default: nothing), and the volume's bind carries no `shared:` or `master:` tag.
#[test]
fn mounts_do_not_propagate_between_container_and_host() {
    let fx = Fx::new();
    let ours = fx.env.dir.path().to_path_buf();
    let vol = fx.env.path("vol");
    fs::create_dir_all(vol.join("cmnt")).unwrap();
    fs::create_dir_all(vol.join("hostmnt")).unwrap();
    use nix::mount::{mount, MsFlags};
    mount(Some(&vol), &vol, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
    let _shared = HostMount(vol.clone());
    mount(None::<&str>, &vol, None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
    let before = host_mounts(&ours);
    assert!(
        before.iter().any(|l| l.split(' ').nth(4) == vol.to_str() && l.contains(" shared:")),
        "the volume source is a shared mount on the host: {before:#?}"
    );

    let script = "B=/bin/busybox; $B grep ' /data ' /proc/self/mountinfo; \
        $B mount --make-rshared / || exit 3; $B mount -t tmpfs coracle-prop /data/cmnt || exit 4; \
        echo from-container > /data/cmnt/file; echo ready; \
        while [ ! -e /data/go ]; do $B sleep 0.02; done; echo listing; /bin/probe ls /data/hostmnt; echo done";
    let v = format!("{}:/data", vol.display());
    let mut run = Running::spawn(fx.cmd(&["--cap-add", "SYS_ADMIN", "-v", &v, "fix", "/bin/sh", "-c", script]));
    let line = run.line(Duration::from_secs(10));
    let fields: Vec<&str> = line.split(" - ").next().unwrap_or("").split(' ').collect();
    assert_eq!(fields.get(4), Some(&"/data"), "the volume's line: {line}");
    assert!(
        !fields.iter().skip(6).any(|f| f.starts_with("shared:") || f.starts_with("master:")),
        "the volume bind propagates: {line}"
    );
    assert_eq!(run.line(Duration::from_secs(10)), "ready");

    let now = host_mounts(&ours);
    assert!(!now.iter().any(|l| l.contains("coracle-prop")), "the container's tmpfs reached the host: {now:#?}");
    assert_same_mounts(&before, &now, "while the container runs");
    assert!(!vol.join("cmnt/file").exists(), "the host sees the container's file");

    mount(Some("coracle-host"), &vol.join("hostmnt"), Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap();
    let _hostmnt = HostMount(vol.join("hostmnt"));
    fs::write(vol.join("hostmnt/hostfile"), "host").unwrap();
    fs::write(vol.join("go"), "").unwrap();
    assert_eq!(run.line(Duration::from_secs(10)), "listing");
    let (st, rest, err) = run.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{err}");
    assert_eq!(rest, ["done"], "the host's mount inside the volume reached the container");
    drop(_hostmnt);
    assert_same_mounts(&before, &host_mounts(&ours), "after the container");
}

// ---------------------------------------------------------------------------------------
// exec and the container's /dev/null.

/// BUG (CVE-2025-31133 family: the runtime trusting the container's /dev/null):
/// `coracle exec` without `-i` opens `/dev/null` *inside* the running container for the
/// exec'd process's stdin, while the container may have replaced it. A FIFO there hangs
/// `coracle exec` before the command starts, with all signals blocked, so SIGTERM and
/// SIGINT do nothing (only SIGKILL ends it); meanwhile its child sits in the container
/// as coracle's code with all of coracle's capabilities. runc hands the process its
/// stdio from outside.
///
/// Reproducer: `coracle run --name c IMAGE sleep 60 &`; `coracle exec -i c sh -c 'rm
/// /dev/null; mkfifo /dev/null'`; `coracle exec c true` never returns, and `kill -TERM`
/// does not end it.
#[test]
fn exec_stdin_does_not_depend_on_the_containers_dev_null() {
    let fx = Fx::new();
    let (_run, _) = fx.start("fifo", &[], &["/bin/probe", "sleep", "60"]);
    ok(&fx.exec(&["-i", "fifo", "/bin/sh", "-c", "rm /dev/null && /bin/busybox mkfifo /dev/null"]), "mkfifo");
    let mut e = Running::spawn(fx.exec_cmd(&["fifo", "/bin/probe", "echo", "ran"]));
    let done = wait_timeout(&mut e.child, Duration::from_secs(3));
    if done.is_none() {
        for c in children(e.pid()) {
            e.adopt(c);
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(e.pid(), libc::SIGTERM) };
        let after_term = wait_timeout(&mut e.child, Duration::from_secs(2));
        panic!(
            "coracle exec hung on the container's FIFO /dev/null; SIGTERM then {}",
            match after_term {
                Some(st) => format!("ended it ({st:?})"),
                None => "did nothing".to_owned(),
            }
        );
    }
    let (st, out, err) = e.finish(Duration::from_secs(5));
    assert_eq!((st.code(), out), (Some(0), vec!["ran".to_owned()]), "{err}");
}
