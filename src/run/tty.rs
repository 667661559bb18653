//! `-t`: a pseudo-terminal for the app, relayed to coracle's own stdio. coracle's
//! terminal goes to raw mode for the container's life (restored on every way out), and
//! window-size changes (SIGWINCH) are copied onto the container's terminal.

use std::io;

use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::pty::Winsize;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// A socket pair to hand the pty master from the container to coracle. The pty is made
/// inside the container, on its own devpts instance, so that the app's terminal has a
/// name there (/dev/pts/0) as runc and podman do it.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    Ok(socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?)
}

/// Container side: opens a new pty on the container's /dev/ptmx, sends the master over
/// `sock`, returns the slave.
pub fn make_in_container(sock: BorrowedFd<'_>, size: Option<&Winsize>) -> io::Result<OwnedFd> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use nix::sys::stat::Mode;
    let master = open("/dev/ptmx", OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty())?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER returns a new fd for the slave
    // without a path lookup (Linux 4.13).
    let slave = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    };
    if let Some(ws) = size {
        set_window_size(master.as_fd(), ws);
    }
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[io::IoSlice::new(b"m")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(slave)
}

/// coracle's side: receives the master sent by [`make_in_container`].
pub fn receive_master(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS installed this descriptor in our table for us.
                return Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::other("the container sent no terminal"))
}

pub fn window_size(fd: BorrowedFd<'_>) -> Option<Winsize> {
    let mut ws = Winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

pub fn set_window_size(fd: BorrowedFd<'_>, ws: &Winsize) {
    // SAFETY: TIOCSWINSZ reads the struct we pass.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws);
    }
}

/// coracle's own window size, to copy onto the container's terminal.
pub fn own_window_size() -> Option<Winsize> {
    window_size(io::stdout().as_fd()).or_else(|| window_size(io::stdin().as_fd()))
}

/// coracle's terminal in raw mode until dropped.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        let stdin = io::stdin();
        let Ok(saved) = tcgetattr(stdin.as_fd()) else { return RawMode { saved: None } };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}

/// Copies what is available from `from` to `to`; `Ok(false)` at EOF (or EIO: the pty's
/// other side is gone).
pub fn pump(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<bool> {
    let mut buf = [0u8; 16 << 10];
    match nix::unistd::read(from, &mut buf) {
        Ok(0) | Err(Errno::EIO) => Ok(false),
        Ok(n) => write_all(to, &buf[..n]).map(|_| true),
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut p = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::NONE);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
