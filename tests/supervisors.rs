//! `coracle run` under real process supervisors, as root: Debian's runit (`runsv`, `sv`,
//! `svlogd`) and s6 (`s6-supervise`, `s6-svc`, `s6-svstat`), which the test
//! command installs. A service dir's `run` is `exec coracle run fix …`, so the supervised
//! process *is* `coracle run`: the supervisor's controls must do to it what they do to a
//! plain program, its `finish` script must see the app's status as mirrored by coracle,
//! the app's stdout must reach the log service unbuffered, and a restart loop must leave
//! no process, mount or state behind.
//!
//! The restart loop: runsv and s6-supervise both keep one second between two starts of a
//! service that ran for less than a second, so one service cannot restart 50 times in
//! under 50 s. By default the test runs 50 short-lived containers as 10 services (5
//! runit, 5 s6) restarting 5 times each, concurrently, on one store; that takes about
//! 6 s. `CORACLE_LONG_TESTS=1 cargo test --test supervisors` runs the literal case
//! instead: one runit and one s6 service restarting 50 times each (about 55 s).
//!
//! s6 readiness: coracle has no native s6 readiness, but with `--preserve-fds 1` the
//! pipe that s6-supervise hands `run` as its `notification-fd` reaches the app, which then
//! reports readiness itself. That test runs only when `coracle run --help` lists
//! `--preserve-fds`. TODO: `--sdnotify` (sd_notify relaying) exists too, but s6 does not
//! speak sd_notify; a test for it under s6 needs a bridge (e.g. s6-notifyoncheck or an
//! sd_notify-to-fd adapter), not something this file can test against Debian's s6 alone.
//!
//! Cleanup: every supervisor is a `Supervised`, whose drop (also when an assertion fails)
//! stops the supervisor, SIGKILLs every process below it and every container process the
//! test learnt about (through pidfds, never by name), then kills and reaps the supervisor
//! and reaps the orphans that were reparented to this test process (a subreaper). Service
//! dirs, logs, the store and the state dir live in the test's `Env` temp dir, removed on
//! drop. Containers mount only in their own mount namespace: nothing is unmounted here.

mod util;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::procs::*;
use util::*;

/// The host commands these tests drive (runit and s6 packages).
const TOOLS: &[&str] = &["runsv", "sv", "svlogd", "s6-supervise", "s6-svc", "s6-svstat"];

// ---------------------------------------------------------------------------------------
// Fixture: a private store holding the default image as `fix`.

struct Fx {
    env: Env,
    /// The host's mount table before anything ran.
    mounts: Vec<String>,
}

impl Fx {
    fn new() -> Fx {
        require_root();
        subreaper();
        for t in TOOLS {
            need_tool(t);
        }
        let env = Env::new();
        let dir = env.path("oci-fix");
        write_oci_layout(&dir, &[(default_built(), Some("latest"))]);
        env.ok(&["pull", "--tag", "fix", &format!("oci:{}", dir.display())]);
        let mounts = host_mounts(env.dir.path());
        Fx { env, mounts }
    }

    fn state(&self) -> PathBuf {
        self.env.path("state")
    }

    /// A service dir `NAME` in the temp dir: `run` execs `coracle run FLAGS… fix APP…`
    /// (stderr into stdout), `finish` appends "$1 $2" to a log. With `down`, the
    /// supervisor does not start it by itself; with `log`, `log/run` is `svlogd -tt LOG`.
    fn service(&self, name: &str, app: &[&str], flags: &[&str], down: bool, log: Option<&Path>) -> Service {
        let dir = self.env.path(&format!("svc-{name}"));
        fs::create_dir(&dir).unwrap();
        let svc = Service { dir, finish_log: self.env.path(&format!("{name}.finished")), flags: strings(flags) };
        svc.set_app(self, app);
        write_script(
            &svc.dir.join("finish"),
            &format!("#!/bin/sh\necho \"$1 $2\" >> {}\n", quote(svc.finish_log.to_str().unwrap())),
        );
        if down {
            fs::write(svc.dir.join("down"), "").unwrap();
        }
        if let Some(logdir) = log {
            fs::create_dir_all(logdir).unwrap();
            fs::create_dir(svc.dir.join("log")).unwrap();
            write_script(&svc.dir.join("log/run"), &format!("#!/bin/sh\nexec svlogd -tt {}\n", quote_path(logdir)));
        }
        svc
    }

    /// `coracle ps --format json`. Note that ps also removes the state entries of dead
    /// containers: look at the state dir first.
    fn ps(&self) -> Vec<Value> {
        serde_json::from_str(&self.env.ok(&["ps", "--format", "json"])).unwrap()
    }

    fn store_containers(&self) -> Vec<String> {
        names(&self.env.root().join("containers"))
    }

    /// Container entries of the state dir (`names.lock` is the dir's own lock file).
    fn state_entries(&self) -> Vec<String> {
        names(&self.state()).into_iter().filter(|n| n != "names.lock").collect()
    }

    /// The container ids that have entries in the state dir.
    fn state_ids(&self) -> HashSet<String> {
        self.state_entries().iter().map(|e| e.split('.').next().unwrap_or(e).to_owned()).collect()
    }

    /// Asserts that nothing of any container is left: no process of this store (coracle or
    /// in a container), no state entry (unless `killed`: a SIGKILLed coracle cannot remove
    /// its own, and `ps` must then drop it), no scratch dir in the store, an unchanged
    /// host mount table, and an empty `coracle ps`.
    fn assert_clean(&self, killed: bool, when: &str) {
        let left = store_procs(&self.env.root());
        assert!(left.is_empty(), "processes of this store left {when}: {}", describe(&left));
        let entries = self.state_entries();
        if killed {
            // At most the killed container's (one id, whatever files it keeps there).
            assert!(self.state_ids().len() <= 1, "state entries {when}: {entries:?}");
        } else {
            assert!(entries.is_empty(), "state entries left {when}: {entries:?}");
        }
        assert!(
            self.store_containers().is_empty(),
            "scratch dirs left in the store {when}: {:?}",
            self.store_containers()
        );
        assert_same_mounts(&self.mounts, &host_mounts(self.env.dir.path()), when);
        let ps = self.ps();
        assert!(ps.is_empty(), "coracle ps {when}: {ps:?}");
        assert!(self.state_entries().is_empty(), "state entries after ps {when}: {:?}", self.state_entries());
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A shell word for `s`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_path(p: &Path) -> String {
    quote(p.to_str().unwrap())
}

/// Writes an executable script atomically (rename), so that a supervisor starting it
/// meanwhile runs either the old or the new one.
fn write_script(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

struct Service {
    dir: PathBuf,
    finish_log: PathBuf,
    flags: Vec<String>,
}

impl Service {
    /// Rewrites `run` for the next start.
    fn set_app(&self, fx: &Fx, app: &[&str]) {
        let mut words = vec![quote(coracle_bin()), "--root".into(), quote_path(&fx.env.root())];
        words.extend(["--state".into(), quote_path(&fx.state()), "run".into()]);
        words.extend(self.flags.iter().map(|f| quote(f)));
        words.push("fix".into());
        words.extend(app.iter().map(|a| quote(a)));
        write_script(&self.dir.join("run"), &format!("#!/bin/sh\nexec 2>&1\nexec {}\n", words.join(" ")));
    }

    /// The complete lines `finish` has written so far, one per end of `run`.
    fn finishes(&self) -> Vec<String> {
        let s = fs::read_to_string(&self.finish_log).unwrap_or_default();
        let complete = s.rfind('\n').map_or("", |i| &s[..i]);
        complete.lines().map(str::to_owned).collect()
    }

    /// Waits until `finish` has run `n` times; returns its lines.
    fn wait_finishes(&self, n: usize, limit: Duration) -> Vec<String> {
        poll(
            limit,
            || format!("finish ran {:?}, not {n} times", self.finishes()),
            || {
                let f = self.finishes();
                (f.len() >= n).then_some(f)
            },
        )
    }
}

/// Polls `f` every 5 ms until it returns something; panics with `what()` after `limit`.
fn poll<T>(limit: Duration, what: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "after {limit:?}: {}", what());
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// Processes.

fn pidfd_kill(fd: &OwnedFd, sig: i32) {
    // SAFETY: plain syscall on a pidfd; null siginfo.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<u8>(), 0) };
}

/// (state letter, parent) of a process, `None` when it is gone.
fn stat(pid: i32) -> Option<(char, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = s.rsplit_once(')')?.1.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.next()?.parse().ok()?))
}

fn parent(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.1)
}

fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(c, _)| c != 'Z' && c != 'X')
}

fn pid_ns(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

fn own_pid_ns() -> PathBuf {
    pid_ns(std::process::id() as i32).unwrap()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).collect()
}

/// Live host pids whose PID namespace is `ns`.
fn procs_in_ns(ns: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = all_pids().into_iter().filter(|&p| pid_ns(p).as_deref() == Some(ns) && alive(p)).collect();
    v.sort();
    v
}

/// Every process below `root` (zombies included), parents before children.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in all_pids() {
        if let Some((_, pp)) = stat(p) {
            children.entry(pp).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default()
}

/// Live processes that belong to the store at `store`: `coracle` runs against it (its
/// path is in their command line) and container processes (in another PID namespace,
/// with the store's layers in their mount table).
fn store_procs(store: &Path) -> Vec<i32> {
    let store = store.to_str().unwrap();
    let own = own_pid_ns();
    all_pids()
        .into_iter()
        .filter(|&p| alive(p))
        .filter(|&p| {
            cmdline(p).iter().any(|a| a.contains(store))
                || (pid_ns(p).is_some_and(|ns| ns != own)
                    && fs::read_to_string(format!("/proc/{p}/mountinfo")).is_ok_and(|m| m.contains(store)))
        })
        .collect()
}

fn describe(pids: &[i32]) -> String {
    pids.iter().map(|&p| format!("{p} {:?} (parent {:?})", cmdline(p), parent(p))).collect::<Vec<_>>().join("; ")
}

// ---------------------------------------------------------------------------------------
// Supervisors.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Runit,
    S6,
}

#[derive(Clone, Copy, Debug)]
enum Ctl {
    Up,
    Down,
    Once,
    Term,
    Kill,
    Exit,
}

impl Kind {
    fn supervisor(self) -> &'static str {
        match self {
            Kind::Runit => "runsv",
            Kind::S6 => "s6-supervise",
        }
    }

    /// What `finish` writes ("$1 $2") after `run` died by signal `sig`: runsv passes -1
    /// and the signal, s6-supervise 256 and the signal.
    fn signalled(self, sig: i32) -> String {
        match self {
            Kind::Runit => format!("-1 {sig}"),
            Kind::S6 => format!("256 {sig}"),
        }
    }

    /// … and after `run` exited with `code`: the code, and 0.
    fn exited(self, code: i32) -> String {
        format!("{code} 0")
    }
}

/// What the supervisor says about its service.
#[derive(Debug)]
struct Status {
    /// `sv status` / `s6-svstat` output, for messages.
    text: String,
    up: bool,
    pid: Option<i32>,
    /// Down, and the finish script done.
    down: bool,
}

/// A container as the host sees it.
#[derive(Debug)]
struct Container {
    id: String,
    name: String,
    coracle: i32,
    init: i32,
    app: i32,
    ns: PathBuf,
}

/// `runsv DIR` or `s6-supervise DIR`, a child of the test. Drop kills it and everything
/// it started (see the file's doc comment).
struct Supervised {
    kind: Kind,
    dir: PathBuf,
    child: Child,
    /// pidfds of processes (below the supervisor, or in its containers) to kill and reap
    /// on drop.
    known: Vec<(i32, OwnedFd)>,
}

impl Supervised {
    fn start(kind: Kind, svc: &Service) -> Supervised {
        let child = Command::new(kind.supervisor())
            .arg(&svc.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let s = Supervised { kind, dir: svc.dir.clone(), child, known: Vec::new() };
        poll(
            Duration::from_secs(5),
            || format!("{} {} never answered", kind.supervisor(), s.dir.display()),
            || s.try_status(),
        );
        s
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Remembers a process so that drop kills and reaps it whatever happens.
    fn adopt(&mut self, pid: i32) {
        if self.known.iter().any(|(p, _)| *p == pid) {
            return;
        }
        if let Some(fd) = pidfd_open(pid) {
            self.known.push((pid, fd));
        }
    }

    fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// Sends a command through `sv` (with the service dir's full path, so `SVDIR` does
    /// not matter) or `s6-svc`.
    fn ctl(&self, c: Ctl) {
        let mut cmd = match self.kind {
            Kind::Runit => {
                let verb = match c {
                    Ctl::Up => "up",
                    Ctl::Down => "down",
                    Ctl::Once => "once",
                    Ctl::Term => "term",
                    Ctl::Kill => "kill",
                    Ctl::Exit => "exit",
                };
                let mut cmd = Command::new("sv");
                cmd.args([verb, self.dir()]);
                cmd
            }
            Kind::S6 => {
                let flag = match c {
                    Ctl::Up => "-u",
                    Ctl::Down => "-d",
                    Ctl::Once => "-o",
                    Ctl::Term => "-t",
                    Ctl::Kill => "-k",
                    Ctl::Exit => "-x",
                };
                let mut cmd = Command::new("s6-svc");
                cmd.args([flag, self.dir()]);
                cmd
            }
        };
        let o = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(
            o.status.success(),
            "{cmd:?} failed ({:?}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn try_status(&self) -> Option<Status> {
        match self.kind {
            Kind::Runit => {
                // "run: /dir: (pid 123) 4s, normally down; run: log: (pid 122) 4s",
                // "down: /dir: 1s; …", "finish: /dir: (pid 130) 0s; …".
                let o = Command::new("sv").args(["status", self.dir()]).stdin(Stdio::null()).output().unwrap();
                let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                if !o.status.success() || text.starts_with("fail:") || text.starts_with("warning:") {
                    return None;
                }
                let main = text.split("; ").next().unwrap_or("");
                let state = main.split(':').next().unwrap_or("");
                let pid =
                    main.split_once("(pid ").and_then(|(_, r)| r.split_once(')')).and_then(|(p, _)| p.parse().ok());
                Some(Status { up: state == "run", pid: pid.filter(|_| state == "run"), down: state == "down", text })
            }
            Kind::S6 => {
                let o =
                    Command::new("s6-svstat").args(["-o", "up,pid", self.dir()]).stdin(Stdio::null()).output().unwrap();
                if !o.status.success() {
                    return None;
                }
                let fields = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                let human = Command::new("s6-svstat").arg(self.dir()).output().unwrap();
                let text = format!("{fields} / {}", String::from_utf8_lossy(&human.stdout).trim());
                let mut f = fields.split_whitespace();
                let up = f.next() == Some("true");
                let pid = f.next().and_then(|p| p.parse().ok()).filter(|&p: &i32| p > 0);
                // Down, with finish done: the flags byte of supervise/status (35 bytes in
                // s6 2.11: two TAI64N stamps, pid, wait status, flags) has no "finishing"
                // bit (0x02). Read directly: s6-svwait -D would leave an orphaned
                // s6-ftrigrd helper behind it.
                let status = fs::read(self.dir.join("supervise/status")).unwrap();
                assert_eq!(status.len(), 35, "unknown s6 supervise/status format: {status:?}");
                let down = !up && status[34] & 0x02 == 0;
                Some(Status { up, pid, down, text })
            }
        }
    }

    fn status(&self) -> Status {
        self.try_status().unwrap_or_else(|| panic!("{} {} does not answer", self.kind.supervisor(), self.dir()))
    }

    /// Waits until the service runs a container whose app is up: checks that the
    /// supervised pid is `coracle run` itself, a child of the supervisor, and that the app
    /// runs in a PID namespace of its own under coracle's init. Adopts all three.
    fn wait_running(&mut self, fx: &Fx, not: Option<i32>) -> Container {
        let limit = Duration::from_secs(10);
        let coracle = poll(
            limit,
            || format!("service not up: {:?}", self.status()),
            || {
                let st = self.status();
                let pid = st.pid.filter(|&p| st.up && Some(p) != not)?;
                // Until run's `exec`, the pid is /bin/sh's.
                (cmdline(pid).first().map(String::as_str) == Some(coracle_bin())).then_some(pid)
            },
        );
        self.adopt(coracle);
        assert_eq!(parent(coracle), Some(self.pid()), "coracle is the supervisor's own child");
        let entry = poll(
            limit,
            || format!("coracle {coracle} never listed in ps: {:?}", fx.ps()),
            || {
                let ps = fx.ps();
                ps.into_iter().find(|c| parent(c["init_pid"].as_i64().unwrap_or(0) as i32) == Some(coracle))
            },
        );
        let app = entry["pid"].as_i64().unwrap() as i32;
        let init = entry["init_pid"].as_i64().unwrap() as i32;
        self.adopt(init);
        self.adopt(app);
        let ns = pid_ns(app).expect("the app's pid namespace");
        assert_ne!(ns, own_pid_ns(), "the app runs in a PID namespace of its own");
        assert_eq!(pid_ns(init).as_ref(), Some(&ns), "init and the app share the container's namespace");
        for p in procs_in_ns(&ns) {
            self.adopt(p);
        }
        let id = entry["id"].as_str().unwrap_or("").to_owned();
        Container { id, name: entry["name"].as_str().unwrap_or("").to_owned(), coracle, init, app, ns }
    }

    /// Waits until the service is down and its finish script has run.
    fn wait_down(&self) {
        poll(
            Duration::from_secs(10),
            || format!("service not down: {:?}", self.status()),
            || self.status().down.then_some(()),
        );
    }

    /// Ends the supervisor the supervisor's way (`sv exit`, `s6-svc -x`) and waits for it.
    fn exit(&mut self) {
        self.ctl(Ctl::Exit);
        let end = Instant::now() + Duration::from_secs(10);
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < end, "{} still running 10 s after exit", self.kind.supervisor());
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(st.success(), "{} exited {st:?}", self.kind.supervisor());
        let below = descendants(self.pid());
        assert!(below.is_empty(), "{} exited and left {}", self.kind.supervisor(), describe(&below));
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let sup = self.pid();
            // Stopped, it starts nothing new (and restarts nothing) while its tree dies.
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(sup, libc::SIGSTOP) };
            let end = Instant::now() + Duration::from_secs(2);
            loop {
                let below = descendants(sup);
                for &p in &below {
                    self.adopt(p);
                }
                for (_, fd) in &self.known {
                    pidfd_kill(fd, libc::SIGKILL);
                }
                if !below.iter().any(|&p| alive(p)) || Instant::now() > end {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Container processes adopted earlier that were reparented elsewhere.
        for (_, fd) in &self.known {
            pidfd_kill(fd, libc::SIGKILL);
        }
        // The supervisor's orphans were reparented to this test process (a subreaper):
        // reap them, so that not even a zombie is left.
        let end = Instant::now() + Duration::from_secs(1);
        for (_, fd) in &self.known {
            while !reap(fd) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Waits until no process of the container is left (zombies count as gone); returns
/// how long that took from `since`.
fn wait_gone(c: &Container, since: Instant, limit: Duration) -> Duration {
    loop {
        let mut left: Vec<i32> = [c.coracle, c.init, c.app].into_iter().filter(|&p| alive(p)).collect();
        for p in procs_in_ns(&c.ns) {
            if !left.contains(&p) {
                left.push(p);
            }
        }
        if left.is_empty() {
            return since.elapsed();
        }
        assert!(since.elapsed() < limit, "container processes alive {limit:?} later: {}", describe(&left));
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------
// The controls, the finish script, the status.

/// up, term (restarted), kill (restarted), kill under once (not restarted), an app
/// exiting 3, down: the supervised process is coracle, coracle dies the way its app died
/// and the finish script sees that, a SIGKILL of coracle takes the whole container down at
/// once, and the container's fixed `--name` is free again for the supervisor's restart
/// even though the killed coracle could not clear its state entry.
fn controls(kind: Kind) {
    let fx = Fx::new();
    let svc = fx.service("app", &["/bin/probe", "sleep", "300"], &["--name", "app"], true, None);
    let mut sup = Supervised::start(kind, &svc);
    let st = sup.status();
    assert!(!st.up && st.pid.is_none(), "the down file keeps it down: {st:?}");
    assert!(fx.ps().is_empty());

    // Up: the supervised process is coracle, its container in a PID namespace of its own.
    sup.ctl(Ctl::Up);
    let c1 = sup.wait_running(&fx, None);
    eprintln!("{kind:?}: up: {c1:?}");

    // SIGTERM to coracle reaches the app; coracle dies by it; the service comes back.
    sup.ctl(Ctl::Term);
    let f = svc.wait_finishes(1, Duration::from_secs(10));
    assert_eq!(f, [kind.signalled(libc::SIGTERM)], "finish after term");
    wait_gone(&c1, Instant::now(), Duration::from_secs(2));
    let c2 = sup.wait_running(&fx, Some(c1.coracle));
    assert_ne!(c2.ns, c1.ns, "the restart made a new container");

    // SIGKILL to coracle: the container is gone within a second, the finish script sees
    // SIGKILL, and the restart gets the name (nothing ran `ps` or `gc` in between).
    sup.ctl(Ctl::Kill);
    let took = wait_gone(&c2, Instant::now(), Duration::from_secs(1));
    eprintln!("{kind:?}: container gone {took:?} after the kill");
    let f = svc.wait_finishes(2, Duration::from_secs(10));
    assert_eq!(f[1], kind.signalled(libc::SIGKILL), "finish after kill: {f:?}");
    // The restart wrote a state entry of its own (nothing but the restarted coracle ran
    // meanwhile, and it may have cleared the killed one's): it took the name.
    poll(
        Duration::from_secs(10),
        || format!("no new state entry: {:?}; finish: {:?}", fx.state_entries(), svc.finishes()),
        || fx.state_ids().iter().any(|id| *id != c2.id).then_some(()),
    );
    let c3 = sup.wait_running(&fx, Some(c2.coracle));
    assert_eq!(c3.name, "app", "{c3:?}");

    // Once, then SIGKILL: not restarted; nothing is left (the state entry goes with ps).
    sup.ctl(Ctl::Once);
    sup.ctl(Ctl::Kill);
    wait_gone(&c3, Instant::now(), Duration::from_secs(1));
    let f = svc.wait_finishes(3, Duration::from_secs(10));
    assert_eq!(f[2], kind.signalled(libc::SIGKILL), "finish after kill: {f:?}");
    sup.wait_down();
    if kind == Kind::S6 {
        assert!(sup.status().text.contains("down (signal SIGKILL)"), "{:?}", sup.status());
    }
    fx.assert_clean(true, "after the kill of coracle");

    // An app that exits 3: coracle exits 3.
    svc.set_app(&fx, &["/bin/probe", "exit", "3"]);
    sup.ctl(Ctl::Once);
    let f = svc.wait_finishes(4, Duration::from_secs(10));
    assert_eq!(f[3], kind.exited(3), "finish after exit 3: {f:?}");
    sup.wait_down();
    if kind == Kind::S6 {
        assert!(sup.status().text.contains("down (exitcode 3)"), "{:?}", sup.status());
    }
    fx.assert_clean(false, "after exit 3");

    // Up and down: SIGTERM (and SIGCONT), not restarted.
    svc.set_app(&fx, &["/bin/probe", "sleep", "300"]);
    sup.ctl(Ctl::Up);
    let c4 = sup.wait_running(&fx, None);
    sup.ctl(Ctl::Down);
    let f = svc.wait_finishes(5, Duration::from_secs(10));
    assert_eq!(f[4], kind.signalled(libc::SIGTERM), "finish after down: {f:?}");
    sup.wait_down();
    wait_gone(&c4, Instant::now(), Duration::from_secs(2));
    fx.assert_clean(false, "after down");
    std::thread::sleep(Duration::from_millis(1200));
    assert!(sup.status().down, "down stays down: {:?}", sup.status());
    assert_eq!(svc.finishes().len(), 5, "nothing ran after down: {:?}", svc.finishes());

    sup.exit();
    fx.assert_clean(false, "after the supervisor exited");
}

#[test]
fn runit_sv_controls_coracle_like_a_plain_program() {
    controls(Kind::Runit);
}

#[test]
fn s6_svc_controls_coracle_like_a_plain_program() {
    controls(Kind::S6);
}

// ---------------------------------------------------------------------------------------
// The log service.

/// A log service (`svlogd -tt`) gets the app's stdout and stderr line by line as they are
/// written: coracle passes its fds on, no copy, no buffer.
#[test]
fn runit_svlogd_gets_the_apps_output_unbuffered() {
    let fx = Fx::new();
    let logdir = fx.env.path("log");
    let app = ["/bin/sh", "-c", "echo one; echo err >&2; sleep 2; echo two; exec /bin/probe sleep 300"];
    let svc = fx.service("logged", &app, &[], false, Some(&logdir));
    let mut sup = Supervised::start(Kind::Runit, &svc);
    let current = logdir.join("current");
    let read = || fs::read_to_string(&current).unwrap_or_default();
    let t = Instant::now();
    let first = poll(
        Duration::from_secs(10),
        || format!("no 'one' in the log: {:?}", read()),
        || {
            let s = read();
            s.lines().any(|l| l.ends_with(" one")).then_some(s)
        },
    );
    let seen = t.elapsed();
    assert!(!first.contains(" two"), "'one' reached the log only with 'two' ({seen:?}): {first:?}");
    let c = sup.wait_running(&fx, None);
    assert!(alive(c.app), "the app still runs when its first line is in the log");
    let all = poll(
        Duration::from_secs(10),
        || format!("no 'two' in the log: {:?}", read()),
        || {
            let s = read();
            s.lines().any(|l| l.ends_with(" two")).then_some(s)
        },
    );
    let lines: Vec<&str> = all.lines().collect();
    let text: Vec<&str> = lines.iter().map(|l| l.split_once(' ').map_or("", |(_, t)| t)).collect();
    assert_eq!(text, ["one", "err", "two"], "log: {all:?}");
    for l in &lines {
        // -tt: a "YYYY-MM-DD_HH:MM:SS.xxxxx " prefix.
        let (stamp, _) = l.split_once(' ').unwrap();
        assert!(stamp.len() == 25 && stamp.as_bytes()[10] == b'_', "not an svlogd -tt line: {l:?}");
    }
    eprintln!("first line in the log {seen:?} after the start");

    sup.ctl(Ctl::Down);
    assert_eq!(svc.wait_finishes(1, Duration::from_secs(10)), [Kind::Runit.signalled(libc::SIGTERM)]);
    sup.wait_down();
    sup.exit();
    fx.assert_clean(false, "after the logged service");
}

// ---------------------------------------------------------------------------------------
// Restart loops.

/// Services whose app exits 0 after 50 ms, restarted by their supervisor until each ran
/// its share of the runs (50 in all; see the file's doc comment for the long mode), then
/// brought down: every run exited 0 (the fixed `--name` was free again each time),
/// and no process, state entry, scratch dir or mount is left; `gc` finds nothing dead.
#[test]
fn restart_loops_leave_nothing_behind() {
    let long = std::env::var("CORACLE_LONG_TESTS").is_ok_and(|v| v == "1");
    let plan: Vec<(Kind, usize)> = if long {
        vec![(Kind::Runit, 50), (Kind::S6, 50)]
    } else {
        (0..10).map(|i| (if i % 2 == 0 { Kind::Runit } else { Kind::S6 }, 5)).collect()
    };
    let fx = Fx::new();
    let t = Instant::now();
    let mut running = Vec::new();
    for (i, &(kind, runs)) in plan.iter().enumerate() {
        let name = format!("loop{i}");
        let svc = fx.service(&name, &["/bin/probe", "sleep", "0.05"], &["--name", &name], false, None);
        let sup = Supervised::start(kind, &svc);
        running.push((kind, runs, svc, sup));
    }
    let most = plan.iter().map(|p| p.1).max().unwrap() as u64;
    for (kind, runs, svc, sup) in &mut running {
        let f = svc.wait_finishes(*runs, Duration::from_secs(most * 2 + 10));
        sup.ctl(Ctl::Down);
        let bad: Vec<&String> = f[..*runs].iter().filter(|l| **l != kind.exited(0)).collect();
        assert!(bad.is_empty(), "{kind:?} {}: runs that did not exit 0: {f:?}", svc.dir.display());
    }
    let total: usize = running.iter().map(|r| r.1).sum();
    for (kind, runs, svc, sup) in &mut running {
        sup.wait_down();
        // The run under way when `down` came may have been stopped by its SIGTERM.
        let f = svc.finishes();
        for l in &f[*runs..] {
            assert!(
                *l == kind.exited(0) || *l == kind.signalled(libc::SIGTERM),
                "{kind:?} {}: the last run ended {l:?}: {f:?}",
                svc.dir.display()
            );
        }
        sup.exit();
    }
    eprintln!("{total} supervised runs in {:?}", t.elapsed());
    fx.assert_clean(false, "after the restart loops");
    let gc = fx.env.run(&["gc"]);
    assert!(gc.status(), "gc: {}", gc.stderr());
    let out = gc.stdout();
    assert!(!out.contains("dead container") && !out.contains("deleted container"), "gc found dead containers: {out}");
    assert!(out.contains(" 0 containers"), "gc: {out}");
    assert!(fx.state_entries().is_empty() && fx.store_containers().is_empty());
}

// ---------------------------------------------------------------------------------------
// s6 readiness.

/// With `notification-fd` 3, s6-supervise starts `run` with the write end of a pipe as
/// fd 3 and counts the service ready when a newline arrives there. `--preserve-fds 1`
/// passes that fd through coracle to the app, so the service is ready when the *app* says
/// so (after 0.5 s here), not when coracle starts.
#[test]
fn s6_readiness_through_notification_fd() {
    let help = Command::new(coracle_bin()).args(["run", "--help"]).output().unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("--preserve-fds") {
        eprintln!("skipped: this coracle has no --preserve-fds, so no fd can carry s6 readiness into the container");
        return;
    }
    let fx = Fx::new();
    let app = ["/bin/sh", "-c", "/bin/probe sleep 0.5; echo >&3; exec /bin/probe sleep 300"];
    let svc = fx.service("ready", &app, &["--preserve-fds", "1"], true, None);
    fs::write(svc.dir.join("notification-fd"), "3\n").unwrap();
    let mut sup = Supervised::start(Kind::S6, &svc);
    let ready = |sup: &Supervised| {
        let o = Command::new("s6-svstat").args(["-o", "ready", sup.dir()]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim() == "true"
    };
    let t = Instant::now();
    sup.ctl(Ctl::Up);
    let c = sup.wait_running(&fx, None);
    if t.elapsed() < Duration::from_millis(400) {
        assert!(!ready(&sup), "ready before the app said so: {:?}", sup.status());
    }
    poll(Duration::from_secs(10), || format!("never ready: {:?}", sup.status()), || ready(&sup).then_some(()));
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(500), "ready {took:?} after up, before the app wrote to fd 3");
    assert!(alive(c.app), "the app runs on after reporting readiness");
    eprintln!("ready {took:?} after up");

    sup.ctl(Ctl::Down);
    assert_eq!(svc.wait_finishes(1, Duration::from_secs(10)), [Kind::S6.signalled(libc::SIGTERM)]);
    sup.wait_down();
    sup.exit();
    fx.assert_clean(false, "after the ready service");
}
