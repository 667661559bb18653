//! The outer side of `coracle run`: clones the container's init into new namespaces,
//! prepares the container beside it (locks, scratch, filesystems, the IPC namespace,
//! state), forwards every signal it receives, waits, cleans up, and reports how the app
//! ended. A plain foreground process: nothing
//! of it outlives the container, and nothing of the container outlives it.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use caps::CapsHashSet;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::pipe2;

use super::container::{self, AppOptions, ChildConfig, ChildPipes, EXIT_SETUP};
use super::mounts::{self, PlanOptions};
use super::notify;
use super::rootfs::{self, Overlay, Prebuilt};
use super::spec::Process;
use super::state::{self, State};
use crate::store::images::ImageRecord;
use crate::store::lock::Lock;
use crate::store::Store;
use crate::sys::{self, Forked};

/// Everything `coracle run` decided before launching.
pub struct Launch {
    pub store: Store,
    pub state_dir: PathBuf,
    pub image: ImageRecord,
    pub image_name: String,
    pub process: Process,
    pub plan: PlanOptions,
    /// `--hostname`, or the host's.
    pub hostname: String,
    pub name: Option<String>,
    pub caps: CapsHashSet,
    pub init: bool,
    pub tty: bool,
    pub interactive: bool,
    pub read_only: bool,
    pub scratch: Scratch,
    pub network_none: bool,
    /// The supervisor's NOTIFY_SOCKET and what to do with it (`--sdnotify`).
    pub notify: Option<(notify::Mode, notify::Target)>,
    /// fds 3..3+N passed through to the app (socket activation, `--preserve-fds`).
    pub preserve_fds: i32,
    /// Environment variables set to the app's own PID in its namespace (LISTEN_PID,
    /// WATCHDOG_PID).
    pub own_pid_env: Vec<String>,
    pub pid_file: Option<PathBuf>,
    /// `--cidfile`: the container ID is written there once the app starts.
    pub cidfile: Option<PathBuf>,
    /// `--replace`: a running container with our name is stopped first.
    pub replace: bool,
    /// The app's seccomp filters (none: unconfined) and the profile they came from.
    pub seccomp: Option<super::seccomp::Filters>,
    pub seccomp_profile: String,
}

/// Where the container's writable layer (overlay upper and work dirs) and its /etc
/// files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scratch {
    /// A tmpfs mounted in the container's own mount namespace (optionally `size=`): no
    /// disk work at start or exit, and nothing to clean up if coracle is SIGKILLed — the
    /// kernel frees it with the namespace.
    Tmpfs(Option<String>),
    /// `containers/<id>/` under the store root, removed on exit (or by `coracle gc` after
    /// a SIGKILL): for containers that write more than memory holds.
    Store,
}

impl std::str::FromStr for Scratch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "tmpfs" => Ok(Scratch::Tmpfs(None)),
            None if s == "store" => Ok(Scratch::Store),
            Some(("tmpfs", size)) if valid_size(size) => Ok(Scratch::Tmpfs(Some(size.to_owned()))),
            Some(("tmpfs", size)) => Err(format!("{size:?} is not a size (like 512m, 2g or 25%)")),
            _ => Err(format!("{s:?} is neither tmpfs[:SIZE] nor store")),
        }
    }
}

/// A tmpfs `size=`: digits with an optional k/m/g/t suffix or `%` (of RAM).
fn valid_size(s: &str) -> bool {
    let digits = s.strip_suffix(|c: char| "kKmMgGtT%".contains(c)).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && digits.bytes().any(|b| b != b'0')
}

/// How the app ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(i32),
}

/// A failure before or while starting the app, with the exit code it maps to (125 for
/// coracle's own, 126/127 for a command that cannot run).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    pub code: i32,
    pub message: String,
}

impl RunError {
    fn setup(what: &str, e: impl std::fmt::Display) -> RunError {
        RunError { code: EXIT_SETUP, message: format!("{what}: {e}") }
    }
}

/// The scratch dir of one container under the store; removed on drop.
struct ScratchDir {
    store: Store,
    dir: PathBuf,
    _lock: Lock,
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Under the shared store lock: gc (exclusive) must not find the dir half
        // removed, its lock file already gone, and take it for a dead container's.
        let _hold = self.store.lock_shared();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn random_id() -> io::Result<String> {
    let mut b = [0u8; 32];
    // SAFETY: getrandom(2) fills at most the buffer's length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(if n < 0 { io::Error::last_os_error() } else { io::ErrorKind::UnexpectedEof.into() });
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The host's hostname, the container's by default.
pub fn host_hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

pub fn run(l: Launch) -> Result<Outcome, RunError> {
    let id = random_id().map_err(|e| RunError::setup("container id", e))?;
    let hostname = l.hostname.clone();
    let name = l.name.clone().unwrap_or_else(|| id[..12].to_owned());
    // A --name must be free among running containers; the names lock is held until our
    // state exists, so two runs with one name cannot both start.
    let name_lock = match &l.name {
        Some(n) => Some(claim_name(&l.state_dir, n, l.replace)?),
        None => None,
    };
    let containers = l.store.root().join("containers");
    let dir = match l.scratch {
        // Init attaches the scratch tmpfs over containers/ in its own mount namespace.
        Scratch::Tmpfs(_) => containers,
        // Made once the container's layers are pinned (pin).
        Scratch::Store => containers.join(&id),
    };
    let mut plan = l.plan.clone();
    plan.etc_files = rootfs::ETC_FILES.iter().map(|(file, target)| (dir.join(file), *target)).collect();
    let relay = matches!(l.notify, Some((notify::Mode::Container, _)));
    if relay {
        plan.notify_socket = Some(dir.join(notify::SCRATCH_NAME));
    }
    let scratch = container::Scratch {
        tmpfs: match &l.scratch {
            Scratch::Tmpfs(size) => Some(size.clone()),
            Scratch::Store => None,
        },
        notify: relay,
        dir,
    };

    // Every signal is blocked from here on and read from a signalfd: none is lost
    // between the clone and the forwarding loop, and each is forwarded once.
    let mut old_mask = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old_mask))
        .map_err(|e| RunError::setup("block signals", e))?;
    let result = launch(&l, scratch, plan, hostname, &id, &name, name_lock);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    result
}

/// What keeps the container's image and scratch in place while it runs: the layers'
/// locks (gc skips layers whose lock a running container holds) and, with a store
/// scratch, its dir (locked: gc skips it while we live; removed on drop).
struct Pinned {
    _layers: Vec<Lock>,
    _scratch: Option<ScratchDir>,
}

/// Pins the image's layers and, with a store scratch, makes and fills its dir.
fn pin(l: &Launch, scratch: &container::Scratch, hostname: &str) -> Result<Pinned, RunError> {
    // Under the shared store lock: gc (exclusive) cannot run between the check and the
    // locks, nor see the scratch dir half made.
    let _hold = l.store.lock_shared().map_err(|e| RunError::setup("lock store", e))?;
    let mut layers = Vec::new();
    for layer in &l.image.layers {
        layers.push(
            Lock::shared(&l.store.layer_lock_path(&layer.diff_id)).map_err(|e| RunError::setup("lock layer", e))?,
        );
        if l.store.layer_marker(&layer.diff_id).is_none() {
            return Err(RunError::setup(
                &format!("image {}", l.image_name),
                format!(
                    "layer {} is missing from the store (run `coracle fsck --repair` and pull again)",
                    layer.diff_id
                ),
            ));
        }
    }
    let scratch_dir = match scratch.tmpfs {
        Some(_) => None,
        None => {
            let dir = &scratch.dir;
            fs::DirBuilder::new().mode(0o700).create(dir).map_err(|e| RunError::setup("create container dir", e))?;
            let lock = Lock::exclusive(&dir.join("lock")).map_err(|e| RunError::setup("lock container dir", e))?;
            let guard = ScratchDir { store: l.store.clone(), dir: dir.clone(), _lock: lock };
            let d = nix::fcntl::open(
                dir,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| RunError::setup("open container dir", e))?;
            rootfs::fill_scratch(d.as_fd(), dir, &rootfs::etc_files(hostname))
                .map_err(|e| RunError::setup("fill container dir", e))?;
            Some(guard)
        }
    };
    Ok(Pinned { _layers: layers, _scratch: scratch_dir })
}

/// Init, from the clone until the outer process starts waiting for it: on an error in
/// between, dropping this kills init (and so the container) and reaps it before what it
/// holds (the pinned layers, a store scratch) is let go.
struct Starting<'a> {
    pidfd: &'a OwnedFd,
    armed: bool,
    pinned: Option<Pinned>,
}

impl Starting<'_> {
    /// The container runs: what it holds stays held until the caller drops it.
    fn started(mut self) -> Option<Pinned> {
        self.armed = false;
        self.pinned.take()
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
            let _ = waitid(Id::PIDFd(self.pidfd.as_fd()), WaitPidFlag::WEXITED);
        }
    }
}

/// Where init starts. Here a new process is queued on its parent's CPU and would wait
/// there until the parent sleeps, so the outer process's share of the setup
/// (rootfs::Prebuilt) and init's would run one after the other. When another CPU this
/// process may use is idle, init is moved to the others as soon as it exists, and let go
/// again before it gets the first message (so before it can start anything that would
/// inherit the narrower set). When none is idle, moving it would only queue it behind
/// another task: it stays.
struct Spread {
    allowed: nix::sched::CpuSet,
}

impl Spread {
    /// Moves `pid` off this CPU if another allowed one looks idle; None if not moved.
    fn start(pid: i32) -> Option<Spread> {
        let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
        let cpus = (0..nix::sched::CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).count();
        // The kernel's count of runnable tasks (4th field of /proc/loadavg,
        // "running/total"), this one and init (queued behind it) included: the others
        // leave a CPU idle if they are fewer than our CPUs less this one.
        let loadavg = fs::read_to_string("/proc/loadavg").ok()?;
        let running: usize = loadavg.split_whitespace().nth(3)?.split('/').next()?.parse().ok()?;
        if running.saturating_sub(2) + 1 >= cpus {
            return None;
        }
        // SAFETY: sched_getcpu(3) only reads.
        let here = unsafe { libc::sched_getcpu() };
        Spread::off(pid, allowed, usize::try_from(here).ok()?)
    }

    /// Restricts `pid` to the CPUs of `allowed` other than `here`; None if there are none
    /// or that fails.
    fn off(pid: i32, allowed: nix::sched::CpuSet, here: usize) -> Option<Spread> {
        let mut others = allowed;
        others.unset(here).ok()?;
        let none = (0..nix::sched::CpuSet::count()).all(|c| !others.is_set(c).unwrap_or(false));
        if none {
            return None;
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &others).ok()?;
        Some(Spread { allowed })
    }

    /// Gives `pid` back all the CPUs it may use.
    fn release(&self, pid: i32) -> nix::Result<()> {
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &self.allowed)
    }
}

/// A new IPC namespace for the container, made by this process while init sets up its
/// mounts rather than by the clone, which init waits for: making one (its sysctl
/// tables, its mqueue superblock) costs ~80 µs. Returns an nsfd of it, for init to
/// join; this process goes back to its own IPC namespace.
fn new_ipc_namespace() -> io::Result<OwnedFd> {
    const SELF_IPC: &str = "/proc/thread-self/ns/ipc";
    let open = || nix::fcntl::open(SELF_IPC, OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty());
    let own = open()?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC)?;
    let new = open();
    if let Err(e) = nix::sched::setns(own, nix::sched::CloneFlags::CLONE_NEWIPC) {
        // Harmless (this process uses no System V IPC or message queue), but unexpected.
        crate::log::debug(&format!("back to coracle's IPC namespace: {e}"));
    }
    Ok(new?)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RunError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| RunError::setup("pipe", e))
}

#[allow(clippy::too_many_arguments)]
fn launch(
    l: &Launch,
    scratch: container::Scratch,
    plan: PlanOptions,
    hostname: String,
    id: &str,
    name: &str,
    name_lock: Option<Lock>,
) -> Result<Outcome, RunError> {
    let (alive_r, alive_w) = pipe()?;
    let (started_r, started_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let (error_r, error_w) = pipe()?;
    let (exec_r, exec_w) = pipe()?;
    let relay = match &l.notify {
        Some((notify::Mode::Container, target)) => {
            Some(notify::Relay::new(target.clone()).map_err(|e| RunError::setup("notify socket", e))?)
        }
        _ => None,
    };
    // The filesystems this process makes for the container while init sets up
    // (rootfs::Prebuilt).
    let (mounts_tx, mounts_rx) = super::tty::socketpair().map_err(|e| RunError::setup("socketpair", e))?;
    let console =
        if l.tty { Some(super::tty::socketpair().map_err(|e| RunError::setup("socketpair", e))?) } else { None };
    let _raw = (l.tty && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)).then(super::tty::RawMode::enter);
    // The IPC namespace is made after the clone (new_ipc_namespace).
    let mut flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS) as u64;
    if l.network_none {
        flags |= libc::CLONE_NEWNET as u64;
    }
    let cfg = ChildConfig {
        overlay: Overlay {
            lowers: l.image.layers.iter().rev().map(|x| l.store.layer_root(&x.diff_id)).collect(),
            // Always an upper: mount points are created there (scratch); --read-only
            // then makes the rootfs mount read-only.
            upper: Some((scratch.dir.join("upper"), scratch.dir.join("work"))),
            nodev: !plan.privileged,
        },
        scratch,
        plan: mounts::plan(&plan),
        privileged: plan.privileged,
        hostname,
        process: l.process.clone(),
        app: AppOptions {
            caps: l.caps.clone(),
            privileged: plan.privileged,
            tty: l.tty,
            winsize: if l.tty { super::tty::own_window_size() } else { None },
            interactive: l.interactive,
            own_pid_env: l.own_pid_env.clone(),
            seccomp: l.seccomp.clone(),
        },
        init: l.init,
        read_only: l.read_only,
        network_none: l.network_none,
        pipes: Some(ChildPipes {
            alive: Some(alive_r),
            started: Some(started_w),
            status: Some(status_w),
            error: error_w,
            tty: console
                .as_ref()
                .map(|(_, theirs)| theirs.try_clone())
                .transpose()
                .map_err(|e| RunError::setup("dup socket", e))?,
            exec: Some(exec_w),
            notify: relay
                .as_ref()
                .map(|r| r.socket().try_clone_to_owned())
                .transpose()
                .map_err(|e| RunError::setup("dup socket", e))?,
            mounts: Some(mounts_rx),
            preserve: l.preserve_fds,
        }),
    };
    let (init_pid, pidfd) = match sys::clone3_fork(flags).map_err(|e| RunError::setup("clone3", e))? {
        Forked::Child => container::main(cfg),
        Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    // Init starts on its namespace while this process pins the image, makes what it can
    // for it and sends it (rootfs::Prebuilt), then the state file. An error from here on
    // kills init before returning.
    let spread = Spread::start(init_pid);
    let mut starting = Starting { pidfd: &pidfd, armed: true, pinned: None };
    starting.pinned = Some(pin(l, &cfg.scratch, &cfg.hostname)?);
    // Failing to make or send the filesystems is no error here: init then makes them
    // itself (the /etc files it binds excepted).
    let dir = &cfg.scratch.dir;
    let scratch = cfg.scratch.tmpfs.as_ref().and_then(|size| rootfs::scratch_fs(dir, size.as_deref(), &[]).ok());
    if let Some(s) = &spread {
        s.release(init_pid).map_err(|e| RunError::setup("give init its CPUs back", e))?;
    }
    let _ = Prebuilt::send_scratch(mounts_tx.as_fd(), scratch.as_ref().map(|s| s.as_fd()));
    // The /etc files after the scratch, which init needs first: init binds them only
    // once it has the next message.
    if let Some(s) = scratch {
        rootfs::write_etc_files(s.as_fd(), dir, &rootfs::etc_files(&cfg.hostname))
            .map_err(|e| RunError::setup("write the container's /etc files", e))?;
    }
    let _ = Prebuilt::send(mounts_tx.as_fd(), &cfg.plan, l.network_none, plan.privileged);
    let _ = Prebuilt::send_ipc(mounts_tx.as_fd(), new_ipc_namespace().ok().as_ref().map(|n| n.as_fd()));
    drop(mounts_tx);
    drop(cfg);
    let sfd = SignalFd::with_flags(&SigSet::all(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| RunError::setup("signalfd", e))?;
    // The state file, locked and not yet visible, while init builds the container.
    let pending = state::prepare(&l.state_dir, id).map_err(|e| RunError::setup("write state", e))?;
    let _alive = alive_w;
    let console = console.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });

    // Wait for the app to be about to start (or for setup to fail: EOF).
    let mut started = String::new();
    let _ = File::from(started_r).read_to_string(&mut started);
    let master = match (&console, started.is_empty()) {
        (Some(sock), false) => {
            Some(super::tty::receive_master(sock.as_fd()).map_err(|e| RunError::setup("receive terminal", e))?)
        }
        _ => None,
    };
    let app_pid = match started.trim().parse::<i32>() {
        Ok(1) => Some(init_pid),
        Ok(_) => first_child(init_pid),
        Err(_) => None,
    };
    let state = match app_pid {
        Some(pid) => {
            let s = State {
                id: id.to_owned(),
                name: name.to_owned(),
                pid,
                init_pid,
                image: l.image_name.clone(),
                image_digest: l.image.digest.to_string(),
                command: l.process.args.clone(),
                started: crate::image::rootfs::rfc3339_now(),
                store: l.store.root().to_path_buf(),
                env: l.process.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                cwd: l.process.cwd.clone(),
                user: l.process.user.clone(),
                caps: {
                    let mut c: Vec<String> = l.caps.iter().map(|c| c.to_string()).collect();
                    c.sort();
                    c
                },
                privileged: plan.privileged,
                seccomp: l.seccomp_profile.clone(),
            };
            let held = pending.commit(&s).map_err(|e| RunError::setup("write state", e))?;
            // The ID and pid files last: whoever waits for them finds the container in
            // `ps` too.
            if let Some(p) = &l.cidfile {
                write_file_atomic(p, id).map_err(|e| RunError::setup(&format!("write cidfile {}", p.display()), e))?;
            }
            if let Some(p) = &l.pid_file {
                write_file_atomic(p, &pid.to_string())
                    .map_err(|e| RunError::setup(&format!("write pid file {}", p.display()), e))?;
            }
            crate::log::debug(&format!("container {id} ({name}) started: app pid {pid}, init pid {init_pid}"));
            Some(held)
        }
        None => None,
    };

    drop(name_lock);
    // Init is waited for from here on, whatever happens; the layers stay pinned until
    // then.
    let _pinned = starting.started();
    // The container's bookkeeping goes as soon as its app has ended: the state file,
    // and the pid and ID files, which name a container that is gone (if still ours).
    let ended = move || {
        drop(state);
        if let (Some(p), Some(pid)) = (&l.pid_file, app_pid) {
            if fs::read_to_string(p).is_ok_and(|c| c.trim() == pid.to_string()) {
                let _ = fs::remove_file(p);
            }
        }
        if let (Some(p), Some(_)) = (&l.cidfile, app_pid) {
            if fs::read_to_string(p).is_ok_and(|c| c.trim() == id) {
                let _ = fs::remove_file(p);
            }
        }
    };
    // Init reports the app's end on its status pipe, then exits; without init the pipe
    // only ends with the app's exec (close-on-exec), which says nothing.
    let (status, status_r) = if l.init { (Some(status_r), None) } else { (None, Some(status_r)) };
    let mut watch = Watch {
        relay: relay.as_ref(),
        exec: Some(exec_r),
        announce: match &l.notify {
            Some((notify::Mode::Started, target)) => Some(target),
            _ => None,
        },
        status,
        reported: String::new(),
        ended: Some(Box::new(ended)),
    };
    let init_status = supervise(&sfd, &pidfd, master.as_ref(), l.interactive, Some(&mut watch))?;
    if let Some(f) = watch.ended.take() {
        f();
    }
    let reported = match watch.status.take().or(status_r) {
        Some(fd) => {
            let mut s = String::new();
            let _ = File::from(fd).read_to_string(&mut s);
            s
        }
        None => std::mem::take(&mut watch.reported),
    };
    outcome(init_status, error_r, &reported)
}

/// Takes the names lock of the state dir and checks `name` is free; with `replace`, a
/// running container of that name is stopped first (under the lock, so that no other
/// run takes the name meanwhile).
fn claim_name(state_dir: &Path, name: &str, replace: bool) -> Result<Lock, RunError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| RunError::setup("create state dir", e))?;
    let lock = Lock::exclusive(&state_dir.join("names.lock")).map_err(|e| RunError::setup("lock names", e))?;
    let find = || -> Result<Option<State>, RunError> {
        Ok(state::list(state_dir).map_err(|e| RunError::setup("read state", e))?.into_iter().find(|s| s.name == name))
    };
    if let (Some(other), true) = (find()?, replace) {
        crate::log::info(&format!("--replace: stopping running container {} ({name})", &other.id[..12]));
        match super::control::stop(state_dir, &other.id, std::time::Duration::from_secs(10)) {
            // It ended by itself meanwhile.
            Ok(_) | Err(super::control::ControlError::NotFound(_)) => {}
            Err(e) => return Err(RunError::setup(&format!("--replace: stop {}", &other.id[..12]), e)),
        }
    }
    if let Some(other) = find()? {
        return Err(RunError {
            code: EXIT_SETUP,
            message: format!(
                "the name {name:?} is in use by running container {} (stop it, or choose another name)",
                &other.id[..12]
            ),
        });
    }
    Ok(lock)
}

/// What `coracle run` watches besides signals and the pty: the container's sd_notify
/// socket, and the app's exec pipe (EOF without data: the app was exec'd; then
/// `--sdnotify=started` sends READY=1).
pub(crate) struct Watch<'a> {
    pub relay: Option<&'a notify::Relay>,
    pub exec: Option<OwnedFd>,
    pub announce: Option<&'a notify::Target>,
    /// Init's status pipe: readable once the app has ended and init reports how, just
    /// before it exits (EOF if it exits without a word).
    pub status: Option<OwnedFd>,
    /// What init reported there.
    pub reported: String,
    /// Run once the status pipe is readable: the container's bookkeeping (state file, pid
    /// and ID files) goes while init tears the container down, not after.
    pub ended: Option<Box<dyn FnOnce() + 'a>>,
}

impl Watch<'_> {
    fn exec_pipe_ready(&mut self) {
        let Some(fd) = self.exec.take() else { return };
        let mut b = [0u8; 1];
        match nix::unistd::read(&fd, &mut b) {
            Err(Errno::EINTR | Errno::EAGAIN) => self.exec = Some(fd),
            // EOF: the app's execve succeeded (its copy was close-on-exec).
            Ok(0) => {
                if let Some(t) = self.announce {
                    match t.send("READY=1") {
                        Ok(()) => crate::log::debug("sent READY=1 to NOTIFY_SOCKET (--sdnotify=started)"),
                        Err(e) => crate::log::warn(&format!("sending READY=1 to NOTIFY_SOCKET: {e}")),
                    }
                }
            }
            // A byte or an error: the app never ran.
            _ => {}
        }
    }

    fn status_ready(&mut self) {
        let Some(fd) = self.status.take() else { return };
        let mut b = [0u8; 64];
        match nix::unistd::read(&fd, &mut b) {
            Err(Errno::EINTR | Errno::EAGAIN) => {
                self.status = Some(fd);
                return;
            }
            // One write of a few bytes: all of it, or EOF.
            Ok(n) => self.reported = String::from_utf8_lossy(&b[..n]).into_owned(),
            Err(_) => {}
        }
        if let Some(f) = self.ended.take() {
            f();
        }
    }

    fn relay_ready(&self) {
        for r in self.relay.map(|r| r.pump()).unwrap_or_default() {
            match r {
                Ok(msg) => crate::log::debug(&format!("relayed to NOTIFY_SOCKET: {}", msg.replace('\n', " "))),
                Err(e) => crate::log::warn(&e),
            }
        }
    }
}

/// Forwards signals to `pidfd`'s process and relays the pty (and, for `run`, what
/// [`Watch`] holds) until that process exits; returns its wait status.
pub(crate) fn supervise(
    sfd: &SignalFd,
    pidfd: &OwnedFd,
    master: Option<&OwnedFd>,
    interactive: bool,
    mut watch: Option<&mut Watch<'_>>,
) -> Result<WaitStatus, RunError> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut relay_stdin = master.is_some() && interactive;
    let mut relay_out = master.is_some();
    loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN), PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        if let (Some(m), true) = (master, relay_out) {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
        }
        if relay_stdin {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        // Optional watches go last, at indexes found by position.
        let base = fds.len();
        let (relay_fd, exec_fd, status_fd) = match &watch {
            Some(w) => {
                (w.relay.map(|r| r.socket()), w.exec.as_ref().map(|f| f.as_fd()), w.status.as_ref().map(|f| f.as_fd()))
            }
            None => (None, None, None),
        };
        for f in [relay_fd, exec_fd, status_fd].into_iter().flatten() {
            fds.push(PollFd::new(f, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(RunError::setup("poll", e)),
            Ok(_) => {}
        }
        let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        let (sig_ready, exited, out_ready) = (ready(0), ready(1), relay_out && ready(2));
        let in_ready = relay_stdin && ready(if relay_out { 3 } else { 2 });
        let notify_ready = relay_fd.is_some() && ready(base);
        let exec_ready = exec_fd.is_some() && ready(base + usize::from(relay_fd.is_some()));
        let status_ready =
            status_fd.is_some() && ready(base + usize::from(relay_fd.is_some()) + usize::from(exec_fd.is_some()));
        drop(fds);
        if let Some(w) = watch.as_deref_mut() {
            if notify_ready {
                w.relay_ready();
            }
            if exec_ready {
                w.exec_pipe_ready();
            }
            if status_ready {
                w.status_ready();
            }
        }
        if sig_ready {
            while let Ok(Some(info)) = sfd.read_signal() {
                let sig = info.ssi_signo as i32;
                match (master, sig) {
                    (_, libc::SIGCHLD) => {}
                    // With a pty the kernel tells the app about size changes itself.
                    (Some(m), libc::SIGWINCH) => {
                        if let Some(ws) = super::tty::window_size(stdout.as_fd()) {
                            super::tty::set_window_size(m.as_fd(), &ws);
                        }
                    }
                    _ => {
                        let _ = sys::pidfd_send_signal(pidfd.as_fd(), sig);
                    }
                }
            }
        }
        if let (Some(m), true) = (master, out_ready) {
            relay_out = super::tty::pump(m.as_fd(), stdout.as_fd()).unwrap_or(false);
        }
        if let (Some(m), true) = (master, in_ready) {
            relay_stdin = super::tty::pump(stdin.as_fd(), m.as_fd()).unwrap_or(false);
        }
        if exited {
            break;
        }
    }
    // Messages sent just before the app exited.
    if let Some(w) = watch.as_deref() {
        w.relay_ready();
    }
    if let Some(m) = master {
        // What the app wrote just before exiting is still in the pty.
        let _ = nix::fcntl::fcntl(m, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        while relay_out {
            relay_out = super::tty::pump(m.as_fd(), stdout.as_fd()).unwrap_or(false);
            let mut probe = [PollFd::new(m.as_fd(), PollFlags::POLLIN)];
            if poll(&mut probe, PollTimeout::ZERO).unwrap_or(0) == 0 {
                break;
            }
        }
    }
    waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED).map_err(|e| RunError::setup("wait", e))
}

/// How the app ended: an error the container reported (setup or exec), else the status
/// init reported, else the status of the process we waited for.
pub(crate) fn outcome(init_status: WaitStatus, error_r: OwnedFd, status: &str) -> Result<Outcome, RunError> {
    let mut error = String::new();
    let _ = File::from(error_r).read_to_string(&mut error);
    if let Some((code, msg)) = error.split_once(' ') {
        return Err(RunError { code: code.parse().unwrap_or(EXIT_SETUP), message: msg.to_owned() });
    }
    let parsed = status.split_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse::<i32>().ok()?)));
    Ok(match (parsed, init_status) {
        (Some((k, n)), _) if k == "exit" => Outcome::Exited(n),
        (Some((k, n)), _) if k == "signal" => Outcome::Signaled(n),
        (_, WaitStatus::Exited(_, code)) => Outcome::Exited(code),
        (_, WaitStatus::Signaled(_, s, _)) => Outcome::Signaled(s as i32),
        (_, other) => return Err(RunError::setup("wait", format!("unexpected status {other:?}"))),
    })
}

/// The app's host pid: the only child of the container's init.
fn first_child(init: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{init}/task/{init}/children")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// `content` and a newline in `path`, by rename from a temporary file next to it.
fn write_file_atomic(path: &Path, content: &str) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".coracle-").tempfile_in(dir)?;
    io::Write::write_all(&mut tmp, format!("{content}\n").as_bytes())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_moves_a_process_off_this_cpu_and_gives_it_all_back() {
        let me = nix::unistd::Pid::from_raw(0);
        let allowed = nix::sched::sched_getaffinity(me).unwrap();
        let cpus: Vec<usize> = (0..nix::sched::CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap()).collect();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let of = |pid: i32| nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(pid)).unwrap();
        let spread = Spread::off(pid, allowed, cpus[0]);
        if cpus.len() == 1 {
            assert!(spread.is_none(), "nowhere else to go");
        } else {
            let spread = spread.expect("moved");
            let mut others = allowed;
            others.unset(cpus[0]).unwrap();
            assert_eq!(of(pid), others);
            spread.release(pid).unwrap();
        }
        assert_eq!(of(pid), allowed);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
