//! `coracle exec`: one more process in a running container. coracle joins the
//! container's namespaces through a pidfd of its PID 1 (setns(2) with a pidfd, Linux 5.8),
//! clones the process there with the container's environment, user and capability
//! rules, forwards signals to it and mirrors its exit status, as `coracle run` does.

use std::os::fd::AsFd;
use std::path::Path;

use caps::{Capability, CapsHashSet};
use nix::fcntl::OFlag;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::pipe2;

use super::container::{self, AppOptions, ChildPipes, ExecChild, EXIT_SETUP};
use super::launch::{outcome, supervise, Outcome, RunError};
use super::spec::Process;
use super::state;
use crate::sys::{self, Forked};

pub struct ExecRequest {
    pub container: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub tty: bool,
    pub interactive: bool,
}

fn setup(what: &str, e: impl std::fmt::Display) -> RunError {
    RunError { code: EXIT_SETUP, message: format!("{what}: {e}") }
}

pub fn exec(state_dir: &Path, r: ExecRequest) -> Result<Outcome, RunError> {
    let s = state::find(state_dir, &r.container)
        .map_err(|e| setup("read state", e))?
        .ok_or_else(|| RunError { code: EXIT_SETUP, message: format!("no running container {:?}", r.container) })?;
    let pidfd = sys::pidfd_open(s.init_pid)
        .map_err(|_| RunError { code: EXIT_SETUP, message: format!("container {} has exited", s.name) })?;
    if !matches!(state::find(state_dir, &s.id), Ok(Some(again)) if again.init_pid == s.init_pid) {
        return Err(RunError { code: EXIT_SETUP, message: format!("container {} has exited", s.name) });
    }
    let mut env: Vec<(String, String)> =
        s.env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    for e in &r.env {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => match std::env::var(e) {
                Ok(v) => (e.clone(), v),
                Err(_) => continue,
            },
        };
        env.retain(|(x, _)| *x != k);
        env.push((k, v));
    }
    if r.tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }
    if r.args.is_empty() {
        return Err(RunError { code: EXIT_SETUP, message: "no command given".into() });
    }
    let process = Process {
        args: r.args.clone(),
        env,
        cwd: r.workdir.clone().unwrap_or_else(|| s.cwd.clone()),
        user: r.user.clone().unwrap_or_else(|| s.user.clone()),
    };
    let caps: CapsHashSet = s.caps.iter().filter_map(|c| c.parse::<Capability>().ok()).collect();
    let profile = super::seccomp::Profile::parse(&s.seccomp);
    let seccomp = super::seccomp::filters(&profile, &caps, s.privileged).map_err(|e| setup("seccomp", e))?;

    let mut old_mask = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old_mask))
        .map_err(|e| setup("block signals", e))?;
    let sfd = SignalFd::with_flags(&SigSet::all(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| setup("signalfd", e))?;
    let (started_r, started_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| setup("pipe", e))?;
    let (error_r, error_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| setup("pipe", e))?;
    let console = if r.tty { Some(super::tty::socketpair().map_err(|e| setup("socketpair", e))?) } else { None };
    let winsize = if r.tty { super::tty::own_window_size() } else { None };

    // Our child runs coracle's code inside the container until it execs: non-dumpable
    // from birth (inherited), so no container process can open its /proc/PID/exe
    // (CVE-2019-5736). execve resets the flag for the command itself.
    nix::sys::prctl::set_dumpable(false).map_err(|e| setup("prctl", e))?;
    // Without -i the command reads the *host's* /dev/null, opened before we enter the
    // container: the container's own /dev/null is whatever its processes made of it (a
    // fifo there would block us forever, with our privileges, inside it).
    let stdin_is_null = !r.interactive && !r.tty;
    if stdin_is_null {
        let null = nix::fcntl::open("/dev/null", OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .map_err(|e| setup("open /dev/null", e))?;
        nix::unistd::dup2_stdin(&null).map_err(|e| setup("dup2 /dev/null", e))?;
    }
    // Into the container's namespaces; our children are born in its PID namespace.
    let ns = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    setns(pidfd.as_fd(), ns).map_err(|e| match e {
        // It exited between our checks and now.
        nix::errno::Errno::ESRCH => RunError { code: EXIT_SETUP, message: format!("container {} has exited", s.name) },
        e => setup("join the container's namespaces", e),
    })?;
    let child = ExecChild {
        process,
        app: AppOptions {
            caps,
            privileged: s.privileged,
            tty: r.tty,
            winsize,
            // Standard input is already set (above) when it is not the caller's.
            interactive: r.interactive || stdin_is_null,
            own_pid_env: Vec::new(),
            seccomp,
        },
        pipes: Some(ChildPipes {
            alive: None,
            started: Some(started_w),
            status: None,
            error: error_w,
            tty: console
                .as_ref()
                .map(|(_, theirs)| theirs.try_clone())
                .transpose()
                .map_err(|e| setup("dup socket", e))?,
            exec: None,
            notify: None,
            mounts: None,
            preserve: 0,
        }),
    };
    let child_pidfd = match sys::clone3_fork(0).map_err(|e| setup("clone3", e))? {
        Forked::Child => container::exec_main(child),
        Forked::Parent { pidfd, .. } => pidfd,
    };
    drop(child);
    let mut started = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(started_r), &mut started);
    let master = match (&console, started.is_empty()) {
        (Some((ours, _)), false) => {
            Some(super::tty::receive_master(ours.as_fd()).map_err(|e| setup("receive terminal", e))?)
        }
        _ => None,
    };
    drop(console);
    let _raw =
        (master.is_some() && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)).then(super::tty::RawMode::enter);
    let status = supervise(&sfd, &child_pidfd, master.as_ref(), r.interactive, None);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    outcome(status?, error_r, "")
}
