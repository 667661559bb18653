//! sd_notify for containers. A supervisor's `NOTIFY_SOCKET` is never handed to the
//! container: systemd (with the default `NotifyAccess=main`) accepts messages only from
//! the unit's main process, which is `coracle run`, and a PID the app reports means
//! nothing outside its namespace. So, with `--sdnotify=container`, the container gets a
//! socket of its own (bound in the scratch dir, bind-mounted at [`CONTAINER_PATH`]) and
//! coracle relays what arrives there, from its own PID, after dropping what cannot
//! cross the namespace boundary (`MAINPID=`, file-descriptor store messages, barriers).
//! With `--sdnotify=started`, coracle itself sends `READY=1` once the app has been
//! exec'd.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sys::socket::{recv, sendto, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

/// Where the container finds its notify socket (its `NOTIFY_SOCKET`), as podman does.
pub const CONTAINER_PATH: &str = "/run/notify/notify.sock";

/// The socket's name in the container's scratch dir.
pub const SCRATCH_NAME: &str = "notify.sock";

/// `--sdnotify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The container gets its own notify socket; coracle relays its messages (default)
    Container,
    /// coracle sends READY=1 once the app has been exec'd; the container gets no socket
    Started,
    /// Nothing is sent, and the container gets no socket
    Ignore,
}

/// The supervisor's socket: `NOTIFY_SOCKET` as sd_notify(3) reads it, a path or an
/// abstract name (`@…`).
#[derive(Debug, Clone)]
pub struct Target(UnixAddr);

impl Target {
    /// Parses `NOTIFY_SOCKET`; `None` for an empty or unsupported value (vsock:).
    pub fn parse(value: &std::ffi::OsStr) -> Option<Target> {
        let b = value.as_bytes();
        match b.first()? {
            b'/' => UnixAddr::new(value).ok().map(Target),
            b'@' => UnixAddr::new_abstract(&b[1..]).ok().map(Target),
            _ => None,
        }
    }

    /// From coracle's own environment.
    pub fn from_env() -> Option<Target> {
        std::env::var_os("NOTIFY_SOCKET").and_then(|v| Target::parse(&v))
    }

    /// Sends one message from this process.
    pub fn send(&self, msg: &str) -> io::Result<()> {
        let s = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
        sendto(s.as_raw_fd(), msg.as_bytes(), &self.0, MsgFlags::MSG_NOSIGNAL)?;
        Ok(())
    }
}

/// The container's side: an unbound datagram socket made here, bound by the container's
/// init inside the scratch dir (the same socket: the fd is shared across the clone).
pub struct Relay {
    socket: OwnedFd,
    target: Target,
}

impl Relay {
    pub fn new(target: Target) -> io::Result<Relay> {
        let socket =
            socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
        Ok(Relay { socket, target })
    }

    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Forwards every pending datagram (filtered); returns the messages sent, for the
    /// debug log. Errors sending to the supervisor are not the container's problem:
    /// they are returned for logging and the relay goes on.
    pub fn pump(&self) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // No control buffer: file descriptors sent along (FDSTORE=1) are discarded
            // (closed) by the kernel.
            let n = match recv(self.socket.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC) {
                Ok(n) => n.min(buf.len()),
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(msg) = filter(&text) {
                out.push(match self.target.send(&msg) {
                    Ok(()) => Ok(msg),
                    Err(e) => Err(format!("relaying {msg:?} to NOTIFY_SOCKET: {e}")),
                });
            }
        }
        out
    }
}

/// The variables that mean the same thing outside the container; everything else
/// (`MAINPID=`, `FDSTORE=`, `FDNAME=`, `FDSTOREREMOVE=`, `FDPOLL=`, `BARRIER=`,
/// `NOTIFYACCESS=`, unknown ones) is dropped.
const RELAYED: &[&str] = &[
    "READY",
    "RELOADING",
    "STOPPING",
    "STATUS",
    "ERRNO",
    "BUSERROR",
    "WATCHDOG",
    "WATCHDOG_USEC",
    "EXTEND_TIMEOUT_USEC",
    "MONOTONIC_USEC",
];

/// The relayed part of one sd_notify datagram (newline-separated `KEY=VALUE` lines), or
/// `None` when nothing of it crosses.
pub fn filter(msg: &str) -> Option<String> {
    let kept: Vec<&str> =
        msg.split('\n').filter(|l| l.split_once('=').is_some_and(|(k, _)| RELAYED.contains(&k))).collect();
    (!kept.is_empty()).then(|| kept.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_keeps_state_and_drops_pids_and_fds() {
        assert_eq!(filter("READY=1").as_deref(), Some("READY=1"));
        assert_eq!(filter("READY=1\nMAINPID=2\nSTATUS=up").as_deref(), Some("READY=1\nSTATUS=up"));
        assert_eq!(filter("MAINPID=2"), None);
        assert_eq!(filter("FDSTORE=1\nFDNAME=x"), None);
        assert_eq!(filter("WATCHDOG=1\n").as_deref(), Some("WATCHDOG=1"));
        assert_eq!(filter("STATUS=a=b").as_deref(), Some("STATUS=a=b"));
        assert_eq!(filter("garbage"), None);
        assert_eq!(filter("RELOADING=1\nMONOTONIC_USEC=5").as_deref(), Some("RELOADING=1\nMONOTONIC_USEC=5"));
    }

    #[test]
    fn notify_socket_values() {
        assert!(Target::parse(std::ffi::OsStr::new("/run/systemd/notify")).is_some());
        assert!(Target::parse(std::ffi::OsStr::new("@abstract")).is_some());
        assert!(Target::parse(std::ffi::OsStr::new("")).is_none());
        assert!(Target::parse(std::ffi::OsStr::new("vsock:2:1")).is_none());
        assert!(Target::parse(std::ffi::OsStr::new("relative")).is_none());
    }
}
