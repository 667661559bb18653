//! Processes and mounts seen from the host, shared by the tests that start containers:
//! pidfds, waiting with a limit, the subreaper, the host's mount table, a background
//! `coracle run` that kills and reaps its container whatever happens.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a returned fd is new and owned by us.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: the kernel just returned this descriptor.
    (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r as i32) })
}

pub fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: plain syscall on a live pidfd; null siginfo.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0) };
}

pub fn parent(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Makes this test process the reaper of orphaned descendants: when coracle is SIGKILLed,
/// the container's init is reparented here instead of to the host's PID 1 (which, on some
/// hosts, never reaps), and `Running` reaps it. Idempotent; every test sets it.
pub fn subreaper() {
    // SAFETY: prctl with integer arguments.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
}

/// The host's mount table, minus mount points under the temp dir that are not this
/// test's (other test binaries mount tmpfs there for their own purposes).
pub fn host_mounts(ours: &Path) -> Vec<String> {
    let tmp = std::env::temp_dir();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            let mp = Path::new(l.split(' ').nth(4).unwrap_or(""));
            !(mp.starts_with(&tmp) && !mp.starts_with(ours) && mp != tmp)
        })
        .map(str::to_owned)
        .collect()
}

pub fn assert_same_mounts(before: &[String], after: &[String], when: &str) {
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    let new: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    assert!(gone.is_empty() && new.is_empty(), "host mount table changed {when}: gone {gone:#?}, new {new:#?}");
}

/// A `coracle run` (or `coracle exec`) in the background with its stdout read line by line.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    /// pidfds of container processes, SIGKILLed on drop.
    container: Vec<OwnedFd>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Running { child, lines, stderr: Some(stderr), container: Vec::new() }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Remembers a container process so that drop kills it whatever happens.
    pub fn adopt(&mut self, pid: i32) {
        if let Some(fd) = pidfd_open(pid) {
            self.container.push(fd);
        }
    }

    pub fn line(&self, limit: Duration) -> String {
        self.lines.recv_timeout(limit).unwrap_or_else(|e| panic!("no line from the container within {limit:?}: {e}"))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own, not yet reaped, child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill {sig}");
    }

    /// Waits for the exit; returns the status, the rest of stdout and stderr.
    pub fn finish(&mut self, limit: Duration) -> (ExitStatus, Vec<String>, String) {
        let st =
            wait_timeout(&mut self.child, limit).unwrap_or_else(|| panic!("coracle still running after {limit:?}"));
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            rest.push(l);
        }
        let err = self.stderr.take().map(|h| h.join().unwrap()).unwrap_or_default();
        (st, rest, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for fd in &self.container {
            pidfd_kill(fd);
        }
        // Container processes orphaned by the kill of coracle were reparented to us (see
        // `subreaper`): reap them, so that not even a zombie is left.
        let end = Instant::now() + Duration::from_secs(1);
        for fd in &self.container {
            while !reap(fd) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Reaps the process behind `fd` if it is our child and has exited; true when there is
/// nothing (more) to wait for.
pub fn reap(fd: &OwnedFd) -> bool {
    // SAFETY: siginfo_t is plain data that waitid fills in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on a live pidfd (P_PIDFD = 3) with a valid siginfo pointer.
    let r = unsafe { libc::waitid(3, fd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG) };
    // SAFETY: reading the pid field of the siginfo waitid filled in (0 when no child was
    // waitable yet).
    r != 0 || unsafe { info.si_pid() } != 0
}

/// Waits for a pid file written by `--pid-file` and returns the pid.
pub fn wait_pid_file(p: &Path, run: &mut Running) -> i32 {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = fs::read_to_string(p) {
            if let Ok(pid) = s.trim().parse::<i32>() {
                run.adopt(pid);
                // The container's init, unless the app is PID 1 itself (--no-init).
                if let Some(init) = parent(pid).filter(|&p| p != run.pid()) {
                    run.adopt(init);
                }
                return pid;
            }
        }
        if let Ok(Some(st)) = run.child.try_wait() {
            panic!("coracle exited ({st:?}) before writing {}", p.display());
        }
        assert!(Instant::now() < end, "no pid file {} after 10 s", p.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A tmpfs mounted for one test, unmounted on drop (lazily if something still holds it).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// A tmpfs of `size` (`24m`) whose root has `mode` (`0700`) on `at`.
    pub fn mount(at: &Path, size: &str, mode: &str) -> Tmpfs {
        use nix::mount::{mount, MsFlags};
        fs::create_dir_all(at).unwrap();
        let opts = format!("size={size},mode={mode}");
        mount(Some("tmpfs"), at, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts.as_str()))
            .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", at.display()));
        Tmpfs(at.to_path_buf())
    }

    /// Bytes available.
    pub fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.0).unwrap();
        st.blocks_available() * st.fragment_size()
    }

    /// Writes a ballast file at `path` (on this fs) that leaves `left` bytes free.
    pub fn fill(&self, path: &Path, left: u64) {
        let mut f = fs::File::create(path).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        let mut todo = self.free().saturating_sub(left);
        while todo > 0 {
            let n = todo.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            todo -= n as u64;
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use nix::mount::{umount2, MntFlags};
        if umount2(&self.0, MntFlags::empty()).is_err() {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}
