//! Processes and mounts seen from the host, shared by the tests that start containers:
//! pidfds, waiting with a limit, the subreaper, the host's mount table.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ExitStatus};
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
