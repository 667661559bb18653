//! The container side of a launch: everything that runs after clone3 in the new
//! namespaces. PID 1 builds the rootfs, pivots, then either becomes the app (`--no-init`)
//! or forks it and stays as a minimal init: forwards signals, reaps zombies, reports the
//! app's status and exits with it.
//!
//! Talks to the outer `coracle run` only through pipes and sockets at fixed fds after the
//! clone (from 3, above any fds passed to the app): `alive` (EOF = the outer died),
//! `started` (one byte once the app is about to run, then the app's pid as this namespace
//! sees it), `status` (the app's wait status, from init), `error` (`<exit code>
//! <message>` when setup or exec fails), `exec`, and the sockets for the terminal, the
//! sd_notify relay and the filesystems the outer makes meanwhile ([`rootfs::Prebuilt`]).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use caps::{CapSet, CapsHashSet};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{setgroups, setresgid, setresuid, setsid, Gid, Pid, Uid};

use super::mounts::{Mount, Source, Target};
use super::rootfs::{self, Overlay};
use super::spec::Process;
use super::user;

/// Everything the container side needs, prepared by the outer process before the clone.
pub struct ChildConfig {
    pub overlay: Overlay,
    pub scratch: Scratch,
    pub plan: Vec<Mount>,
    pub privileged: bool,
    pub hostname: String,
    pub process: Process,
    pub app: AppOptions,
    pub init: bool,
    pub read_only: bool,
    pub network_none: bool,
    /// Taken by the child when it places them at their fixed fds.
    pub pipes: Option<ChildPipes>,
}

/// The container's scratch space: `upper/`, `work/`, `rootfs/` (the mount point of the
/// overlay) and the /etc files in `dir`, on a tmpfs attached in the container's mount
/// namespace when `tmpfs` is set (with its `size=`, if any), else on the store's disk.
pub struct Scratch {
    pub dir: PathBuf,
    pub tmpfs: Option<Option<String>>,
    /// Bind the sd_notify relay socket (the pipes' `notify`) in `dir` as notify.sock.
    pub notify: bool,
}

/// How the app process is set up (shared by `run` and `exec`).
#[derive(Clone)]
pub struct AppOptions {
    pub caps: CapsHashSet,
    pub privileged: bool,
    pub tty: bool,
    /// coracle's window size, for the container's terminal.
    pub winsize: Option<nix::pty::Winsize>,
    pub interactive: bool,
    /// Environment variables set to the app's own PID (in its namespace) just before
    /// exec: LISTEN_PID for socket activation, WATCHDOG_PID for the sd_notify watchdog.
    pub own_pid_env: Vec<String>,
    /// Installed last before execve (after capabilities and no_new_privs).
    pub seccomp: Option<super::seccomp::Filters>,
}

/// What `coracle exec` hands its child (already inside the container's namespaces).
pub struct ExecChild {
    pub process: Process,
    pub app: AppOptions,
    pub pipes: Option<ChildPipes>,
}

/// The container's ends of the pipes to the outer process.
pub struct ChildPipes {
    pub alive: Option<OwnedFd>,
    pub started: Option<OwnedFd>,
    pub status: Option<OwnedFd>,
    pub error: OwnedFd,
    /// With -t: the socket on which to send coracle the pty master made in here.
    pub tty: Option<OwnedFd>,
    /// Closed by the app's successful execve (close-on-exec, and init drops its copy);
    /// a failed one writes a byte first. EOF without data = the app is running.
    pub exec: Option<OwnedFd>,
    /// The unbound datagram socket the outer process relays sd_notify messages from:
    /// bound here, in the scratch dir, then bind-mounted into the container.
    pub notify: Option<OwnedFd>,
    /// The socket on which the outer process sends the filesystems it made for the
    /// plan ([`rootfs::Prebuilt`]).
    pub mounts: Option<OwnedFd>,
    /// fds 3..3+preserve stay open into the app (socket activation, --preserve-fds).
    pub preserve: RawFd,
}

/// The pipes' slots, counted from the first fd above those passed through to the app
/// (3 + `preserve_fds`).
const ALIVE: RawFd = 0;
const STARTED: RawFd = 1;
const STATUS: RawFd = 2;
const ERROR: RawFd = 3;
const TTY: RawFd = 4;
const EXEC: RawFd = 5;
const NOTIFY: RawFd = 6;
const MOUNTS: RawFd = 7;
const SLOTS: RawFd = 8;

/// 3 + the number of fds passed through to the app; set once, first thing in the child.
static FD_BASE: AtomicI32 = AtomicI32::new(3);

fn fd(slot: RawFd) -> RawFd {
    FD_BASE.load(Ordering::Relaxed) + slot
}

/// Exit codes of setup failures, as docker uses them.
pub const EXIT_SETUP: i32 = 125;
pub const EXIT_CANNOT_EXEC: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

struct Failure(i32, String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(EXIT_SETUP, e.to_string())
    }
}

/// Runs in the clone child; never returns.
pub fn main(cfg: ChildConfig) -> ! {
    let code = match setup_and_run(cfg) {
        Ok(never) => match never {},
        Err(Failure(code, msg)) => {
            report_error(code, &msg);
            code
        }
    };
    // SAFETY: _exit skips atexit handlers and stdio flushing that belong to the parent.
    unsafe { libc::_exit(code) }
}

/// Joins the container's IPC namespace, which the outer process made (its third message
/// on `sock`), or makes one if it did not; nothing if `sock` is None (joined already).
fn join_ipc(sock: Option<BorrowedFd<'_>>) -> Result<(), Failure> {
    let Some(sock) = sock else { return Ok(()) };
    match rootfs::Prebuilt::receive_ipc(sock) {
        Some(ns) => nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWIPC)?,
        None => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC)?,
    }
    Ok(())
}

fn report_error(code: i32, msg: &str) {
    // SAFETY: fd(ERROR) is the error pipe we placed at this number; ManuallyDrop keeps
    // it open for the other processes sharing it.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd(ERROR)) });
    let _ = f.write_all(format!("{code} {}", msg.replace('\n', " ")).as_bytes());
    // And a byte on the exec pipe (if this process still has it): "the app never ran".
    // SAFETY: a plain write to our own slot; EBADF when it is not open is fine.
    let _ = unsafe { libc::write(fd(EXEC), b"x".as_ptr().cast(), 1) };
}

enum Never {}

fn setup_and_run(mut cfg: ChildConfig) -> Result<Never, Failure> {
    // PR_SET_PDEATHSIG first, then check the parent is still there: if it died before the
    // prctl, the `alive` pipe already reads EOF (its write end was in the parent only).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    place_pipes(cfg.pipes.take().ok_or(Failure(EXIT_SETUP, "pipes already taken".into()))?)?;
    let mut pfd = [libc::pollfd { fd: fd(ALIVE), events: libc::POLLIN, revents: 0 }];
    // SAFETY: valid pollfd array of length 1; zero timeout.
    if unsafe { libc::poll(pfd.as_mut_ptr(), 1, 0) } > 0 && pfd[0].revents & (libc::POLLHUP | libc::POLLIN) != 0 {
        // SAFETY: plain exit of this child.
        unsafe { libc::_exit(EXIT_SETUP) };
    }
    // Out of the terminal's foreground process group: a terminal's Ctrl-C reaches the
    // outer `coracle run` only, which forwards it once.
    setsid()?;
    // Init is coracle's own binary: keep other processes in the container from opening
    // /proc/1/exe and rewriting it (CVE-2019-5736).
    nix::sys::prctl::set_dumpable(false)?;

    umask(Mode::empty());
    rootfs::make_private()?;
    let notify = cfg.scratch.notify.then(|| unsafe_borrow(fd(NOTIFY)));
    let mounts = unsafe_borrow(fd(MOUNTS));
    // While the outer process pins the image and makes the scratch: what only init can
    // make.
    let own = rootfs::Prebuilt::make_own(&cfg.plan, cfg.network_none);
    // The outer process's first message, once it holds the image's layers: the tmpfs
    // scratch, if it made one (rootfs::Prebuilt).
    let scratch = rootfs::Prebuilt::receive_scratch(mounts)?;
    let rootfs_dir =
        rootfs::prepare_scratch(&cfg.scratch.dir, cfg.scratch.tmpfs.as_ref(), scratch, &cfg.hostname, notify)?;
    if notify.is_some() {
        // SAFETY: bound: the outer process keeps its own copy of the socket. (Without a
        // relay the slot is empty, and a descriptor received since may have its number.)
        unsafe { libc::close(fd(NOTIFY)) };
    }
    rootfs::mount_rootfs(&cfg.overlay, &rootfs_dir)?;
    let root = nix::fcntl::open(&rootfs_dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    // What the outer process made meanwhile (it is done by now, as a rule).
    let mut prebuilt = rootfs::Prebuilt::receive(mounts, cfg.plan.len());
    prebuilt.add(own);
    let mut ipc = Some(mounts);
    for (i, m) in cfg.plan.iter().enumerate() {
        // /dev/mqueue is the mqueue of the IPC namespace its mounter is in.
        if m.source == Source::Fs("mqueue") {
            join_ipc(ipc.take())?;
        }
        rootfs::apply(root.as_fd(), m, prebuilt.take(i))?;
    }
    join_ipc(ipc.take())?;
    // SAFETY: closing our own slot.
    unsafe { libc::close(fd(MOUNTS)) };
    if !cfg.privileged {
        rootfs::protect_paths(root.as_fd(), prebuilt.take_mask())?;
    }
    drop(prebuilt);
    if cfg.read_only {
        rootfs::make_read_only(root.as_fd())?;
    }
    nix::unistd::sethostname(&cfg.hostname)?;
    if cfg.network_none {
        crate::sys::loopback_up()?;
    }
    rootfs::pivot(root.as_fd())?;
    drop(root);
    umask(Mode::from_bits_truncate(0o022));

    let passwd = rootfs::read_small("/etc/passwd", 4 << 20)?.unwrap_or_default();
    let group = rootfs::read_small("/etc/group", 4 << 20)?.unwrap_or_default();
    let user = user::resolve(&cfg.process.user, &passwd, &group)?;
    let mut process = cfg.process.clone();
    if !process.env.iter().any(|(k, _)| k == "HOME") {
        process.env.push(("HOME".into(), user.home.clone()));
    }

    if cfg.app.tty {
        make_tty(&cfg.app)?;
    }
    if !cfg.init {
        started(None);
        return exec_app(&process, &user, &cfg.app, false, None);
    }
    // An app with CAP_SYS_PTRACE can attach to init despite its non-dumpable flag, so
    // init must be confined (below) before any code of the app's runs: such an app is
    // forked and waits on a gate that init opens once confined. Any other app shares
    // init's memory until it execs (no copy of init's address space, ~0.15 ms less per
    // start); init is suspended meanwhile.
    let ptrace = cfg.app.caps.contains(&caps::Capability::CAP_SYS_PTRACE);
    let (child, gate) = if ptrace {
        let (gate_r, gate_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // SAFETY: init is single-threaded; the child only runs exec_app, then execs or
        // exits.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                drop(gate_w);
                let code = run_app(&process, &user, &cfg.app, Some(gate_r.as_fd()));
                // SAFETY: the app process ends without running anything of init's.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(gate_r);
                (child, Some(gate_w))
            }
        }
    } else {
        let mut app = || run_app(&process, &user, &cfg.app, None);
        // SAFETY: init is single-threaded (a clone3 child of a single-threaded parent),
        // holds no lock, has every signal blocked (the outer process blocked them before
        // the clone) and installs no handler; the app unblocks them only for execve,
        // after its last allocation (exec_app). `app` execs or returns its exit status.
        let child = Pid::from_raw(unsafe { crate::sys::spawn_shared_vm(&mut app) }?);
        // The app's uid change reset the dumpable flag of the memory it shared with init
        // (to fs.suid_dumpable): init's own again.
        nix::sys::prctl::set_dumpable(false)?;
        (child, None)
    };
    // Only the app holds the exec pipe: this closes init's copy.
    // SAFETY: closing our own slot.
    unsafe { libc::close(fd(EXEC)) };
    started(Some(child));
    // With CAP_SYS_PTRACE, init gets the app's seccomp filters too (~0.1 ms).
    if let Err(e) = confine_init(cfg.app.seccomp.as_ref().filter(|_| ptrace)) {
        report_error(EXIT_SETUP, &format!("init: {}", e.1));
        let _ = kill(child, Signal::SIGKILL);
        // SAFETY: plain exit.
        unsafe { libc::_exit(EXIT_SETUP) }
    }
    if let Some(g) = gate {
        // Confined: the app may exec.
        let _ = nix::unistd::write(&g, b"1");
    }
    init_loop(child)
}

/// The app process: exec_app, and on failure its error reported and its exit status
/// returned. A panic (debug builds unwind) becomes a setup failure rather than an abort
/// in the middle of memory the app may share with init.
fn run_app(p: &Process, u: &user::ExecUser, cfg: &AppOptions, gate: Option<BorrowedFd<'_>>) -> i32 {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exec_app(p, u, cfg, true, gate)));
    match r {
        Ok(Ok(never)) => match never {},
        Ok(Err(Failure(code, msg))) => {
            report_error(code, &msg);
            code
        }
        Err(_) => {
            report_error(EXIT_SETUP, "the app's setup panicked");
            EXIT_SETUP
        }
    }
}

/// Moves the pipes to their fixed fds and closes every other fd above 2: nothing the outer
/// process had open (lock files, the store) stays reachable from the container.
fn place_pipes(p: ChildPipes) -> Result<(), Failure> {
    FD_BASE.store(3 + p.preserve, Ordering::Relaxed);
    // First above the target range, then down, so no dup clobbers a pipe not yet moved.
    let slots = [
        (p.alive, ALIVE),
        (p.started, STARTED),
        (p.status, STATUS),
        (Some(p.error), ERROR),
        (p.tty, TTY),
        (p.exec, EXEC),
        (p.notify, NOTIFY),
        (p.mounts, MOUNTS),
    ];
    let mut high = Vec::new();
    for (f, slot) in slots {
        if let Some(f) = f {
            let n = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(fd(SLOTS) + 100))?;
            // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor we own.
            high.push((unsafe { OwnedFd::from_raw_fd(n) }, slot));
        }
    }
    for slot in ALIVE..SLOTS {
        match high.iter().find(|(_, s)| *s == slot) {
            // SAFETY: dup3 onto a fixed number; the previous holder of that number (if
            // any) is one of our originals, which we no longer use.
            Some((f, _)) => {
                if unsafe { libc::dup3(f.as_raw_fd(), fd(slot), libc::O_CLOEXEC) } < 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
            }
            // SAFETY: nothing of ours lives at an unused slot.
            None => unsafe {
                libc::close(fd(slot));
            },
        }
    }
    // The `high` copies are closed by close_range below; forget them.
    high.into_iter().for_each(|(f, _)| std::mem::forget(f));
    crate::sys::close_from(fd(SLOTS) as u32)?;
    // The passed fds reach the app as they are, close-on-exec cleared.
    for n in 3..3 + p.preserve {
        nix::fcntl::fcntl(unsafe_borrow(n), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))?;
    }
    Ok(())
}

/// Init keeps only what it needs to forward signals to an app of any uid (CAP_KILL),
/// with no_new_privs, and (given `seccomp`) the app's filters: a container given
/// CAP_SYS_PTRACE can attach to it despite its non-dumpable flag, and must then find
/// nothing more than the app already has. Done once the app is started: after its
/// execve for an app that shares init's memory, before it for one with CAP_SYS_PTRACE.
fn confine_init(seccomp: Option<&super::seccomp::Filters>) -> Result<(), Failure> {
    let keep = caps::Capability::CAP_KILL.bitmask();
    crate::sys::bounding_keep_only(keep)?;
    let _ = caps::clear(None, CapSet::Ambient);
    crate::sys::capset(keep, keep, 0)?;
    nix::sys::prctl::set_no_new_privs()?;
    if let Some(f) = seccomp {
        super::seccomp::install(f).map_err(|e| Failure(EXIT_SETUP, format!("seccomp: {e}")))?;
    }
    Ok(())
}

/// Tells the outer process the app is about to run, and its pid in this namespace.
fn started(app: Option<Pid>) {
    // SAFETY: fd(STARTED) is ours; it is closed right after (one message only).
    let mut f = unsafe { std::fs::File::from_raw_fd(fd(STARTED)) };
    let _ = f.write_all(format!("{}", app.map_or(1, |p| p.as_raw())).as_bytes());
}

/// PID 1 while the app runs: forward every signal to it, reap every child, and exit
/// with the app's status once it is gone.
fn init_loop(app: Pid) -> ! {
    // SAFETY: init has no use for the pty slave (the app has it on 0-2).
    unsafe { libc::close(fd(TTY)) };
    let mask = SigSet::all();
    let sfd = match SignalFd::new(&mask) {
        Ok(s) => s,
        Err(e) => {
            report_error(EXIT_SETUP, &format!("init: signalfd: {e}"));
            let _ = kill(app, Signal::SIGKILL);
            // SAFETY: plain exit.
            unsafe { libc::_exit(EXIT_SETUP) }
        }
    };
    loop {
        let sig = match sfd.read_signal() {
            Ok(Some(info)) => info.ssi_signo as i32,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(_) => libc::SIGCHLD,
        };
        if sig != libc::SIGCHLD {
            if let Ok(s) = Signal::try_from(sig) {
                let _ = kill(app, s);
            }
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == app => finish(&format!("exit {code}"), code),
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == app => {
                    finish(&format!("signal {}", s as i32), 128 + s as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

fn finish(status: &str, code: i32) -> ! {
    // SAFETY: fd(STATUS) is ours.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd(STATUS)) });
    let _ = f.write_all(status.as_bytes());
    // SAFETY: plain exit; the kernel then kills whatever is left in this PID namespace.
    unsafe { libc::_exit(code) }
}

/// The app: session, credentials, capabilities, working directory, then execve.
/// The pty comes from the container's own devpts: the socket at fd(TTY) is replaced by
/// the slave, which the app takes as its stdio.
fn make_tty(app: &AppOptions) -> Result<(), Failure> {
    let slave = super::tty::make_in_container(unsafe_borrow(fd(TTY)), app.winsize.as_ref())?;
    // SAFETY: dup3 onto our fixed slot, replacing the socket.
    if unsafe { libc::dup3(slave.as_raw_fd(), fd(TTY), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// `coracle exec`'s child, already in the container's namespaces (joined by its parent
/// through a pidfd); never returns.
pub fn exec_main(mut cfg: ExecChild) -> ! {
    let r = (|| -> Result<Never, Failure> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        // The parent (`coracle exec`) lives outside this PID namespace: getppid() is 0
        // while it lives and the container's init (1) once it died before the prctl.
        if nix::unistd::getppid().as_raw() != 0 {
            return Err(Failure(EXIT_SETUP, "coracle exec died".into()));
        }
        place_pipes(cfg.pipes.take().ok_or(Failure(EXIT_SETUP, "pipes already taken".into()))?)?;
        let passwd = rootfs::read_small("/etc/passwd", 4 << 20)?.unwrap_or_default();
        let group = rootfs::read_small("/etc/group", 4 << 20)?.unwrap_or_default();
        let user = user::resolve(&cfg.process.user, &passwd, &group)?;
        if !cfg.process.env.iter().any(|(k, _)| k == "HOME") {
            cfg.process.env.push(("HOME".into(), user.home.clone()));
        }
        if cfg.app.tty {
            make_tty(&cfg.app)?;
        }
        started(None);
        exec_app(&cfg.process, &user, &cfg.app, true, None)
    })();
    let code = match r {
        Ok(never) => match never {},
        Err(Failure(code, msg)) => {
            report_error(code, &msg);
            code
        }
    };
    // SAFETY: plain exit of this child.
    unsafe { libc::_exit(code) }
}

/// `gate`: wait for a byte on it before execve (init confining itself first).
fn exec_app(
    p: &Process,
    u: &user::ExecUser,
    cfg: &AppOptions,
    forked: bool,
    gate: Option<BorrowedFd<'_>>,
) -> Result<Never, Failure> {
    // SAFETY: closing our copies of the pipes the app has no business with.
    unsafe {
        libc::close(fd(ALIVE));
        libc::close(fd(STATUS));
        libc::close(fd(STARTED));
    }
    if forked {
        setsid()?;
    }
    if cfg.tty {
        for n in 0..3 {
            // SAFETY: dup2 of our pty slave onto the standard fds.
            if unsafe { libc::dup2(fd(TTY), n) } < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        // SAFETY: the slave now lives on 0-2.
        unsafe { libc::close(fd(TTY)) };
        crate::sys::set_controlling_tty(unsafe_borrow(0))?;
    } else if !cfg.interactive {
        // docker semantics: without -i the app reads from /dev/null.
        let null = nix::fcntl::open("/dev/null", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        nix::unistd::dup2_stdin(&null)?;
    }
    // Working directory: resolved inside the rootfs without magic links, so a WORKDIR of
    // /proc/self/fd/N cannot reach anything (CVE-2024-21626); created if missing.
    let root = nix::fcntl::open("/", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let wd = match rootfs::open_in_root(root.as_fd(), &p.cwd, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => rootfs::target(root.as_fd(), &p.cwd, Target::Dir)?,
        Err(e) => return Err(Failure(EXIT_SETUP, format!("working directory {}: {e}", p.cwd))),
    };
    nix::unistd::fchdir(&wd)?;
    drop((root, wd));

    set_credentials(u, &cfg.caps, cfg.privileged)?;
    if let Some(f) = &cfg.seccomp {
        super::seccomp::install(f).map_err(|e| Failure(EXIT_SETUP, format!("seccomp: {e}")))?;
    }

    let own_pid = nix::unistd::getpid().as_raw().to_string();
    let env: Vec<CString> = p
        .env
        .iter()
        .filter(|(k, _)| !cfg.own_pid_env.contains(k))
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .chain(cfg.own_pid_env.iter().map(|k| CString::new(format!("{k}={own_pid}"))))
        .collect::<Result<_, _>>()?;
    let args: Vec<CString> = p.args.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    let path = p.env.iter().find(|(k, _)| k == "PATH").map_or(super::spec::DEFAULT_PATH, |(_, v)| v.as_str());
    let candidates: Vec<CString> = if p.args[0].contains('/') {
        CString::new(p.args[0].as_str()).into_iter().collect()
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .filter_map(|d| CString::new(format!("{d}/{}", p.args[0])).ok())
            .collect()
    };
    // Everything execve needs is allocated now: from the unblocking of signals on, this
    // process makes only system calls (killed there, it leaves no lock of the memory it
    // may share with init taken).
    let argv: Vec<*const libc::c_char> =
        args.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> =
        env.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    if let Some(g) = gate {
        let mut b = [0u8; 1];
        if !matches!(nix::unistd::read(g, &mut b), Ok(1)) {
            return Err(Failure(EXIT_SETUP, "init ended before the app could start".into()));
        }
    }
    // Signals unblocked: the app starts with an empty mask. Dispositions our caller set to
    // "ignore" stay ignored across exec, as they would for the app run directly.
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let mut last = Errno::ENOENT;
    let mut seen_eacces = false;
    for c in &candidates {
        // SAFETY: NUL-terminated path, argv and envp arrays ending in a null pointer, all
        // alive across the call.
        unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = Errno::last();
        if e == Errno::EACCES {
            seen_eacces = true;
        }
        if e != Errno::ENOENT && e != Errno::ENOTDIR {
            last = e;
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None);
    if seen_eacces || (last != Errno::ENOENT && last != Errno::ENOTDIR) {
        let e = if seen_eacces { Errno::EACCES } else { last };
        return Err(Failure(EXIT_CANNOT_EXEC, format!("exec {}: {}", p.args[0], e.desc())));
    }
    let what = if p.args[0].contains('/') {
        "no such file or directory".to_owned()
    } else {
        "executable file not found in $PATH".to_owned()
    };
    Err(Failure(EXIT_NOT_FOUND, format!("exec {}: {what}", p.args[0])))
}

fn unsafe_borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: used for fds 0-2, the passed-through fds and our slots, which stay open
    // while borrowed.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Bounding set first (needs CAP_SETPCAP, which we still have), then the ids with
/// KEEPCAPS, then the final permitted/effective sets; inheritable and ambient are empty
/// and no_new_privs is set (unless --privileged).
fn set_credentials(u: &user::ExecUser, capset: &CapsHashSet, privileged: bool) -> Result<(), Failure> {
    let mask = capset.iter().fold(0u64, |m, c| m | c.bitmask());
    crate::sys::bounding_keep_only(mask)?;
    let _ = caps::clear(None, CapSet::Ambient);
    nix::sys::prctl::set_keepcaps(true)?;
    let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups)?;
    setresgid(Gid::from_raw(u.gid), Gid::from_raw(u.gid), Gid::from_raw(u.gid))?;
    setresuid(Uid::from_raw(u.uid), Uid::from_raw(u.uid), Uid::from_raw(u.uid))?;
    nix::sys::prctl::set_keepcaps(false)?;
    // One call: effective and permitted to the app's set (kept across the uid change
    // by KEEPCAPS), inheritable empty.
    crate::sys::capset(mask, mask, 0)?;
    if !privileged {
        nix::sys::prctl::set_no_new_privs()?;
    }
    Ok(())
}
