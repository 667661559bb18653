//! The only home of `unsafe`: thin wrappers over libc calls that nix and std do not cover.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// fsetxattr(2) on an open file or directory.
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: fd is a live descriptor for the duration of the call; name is NUL-terminated;
    // value pointer/length describe a valid slice that the kernel only reads.
    check(unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

/// lsetxattr(2) on `name` inside the directory `dir`, without following a final symlink.
/// The path goes through /proc/self/fd so that only our own directory fd is resolved.
pub fn lsetxattr_at(dir: BorrowedFd<'_>, leaf: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(leaf.to_bytes());
    let path = std::ffi::CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid
    // slice the kernel only reads.
    check(unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

/// fgetxattr(2); `Ok(None)` when the attribute is absent.
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    // SAFETY: buf is a writable buffer of buf.len() bytes for the duration of the call.
    let n = unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) { Ok(None) } else { Err(e) };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// posix_fadvise(POSIX_FADV_SEQUENTIAL) hint for a file we stream once.
pub fn advise_sequential(fd: BorrowedFd<'_>) {
    // SAFETY: advisory call on a live fd; failure is harmless and ignored.
    unsafe {
        libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// Starts asynchronous writeback of a file's dirty pages (sync_file_range(2) with
/// SYNC_FILE_RANGE_WRITE), so that the final syncfs finds little left to write.
pub fn start_writeback(fd: BorrowedFd<'_>) {
    // SAFETY: advisory call on a live fd; failure is harmless and ignored.
    unsafe {
        libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Opens /dev/null on whichever of fds 0, 1 and 2 is closed (as std's runtime does before
/// a Rust `main`): a descriptor coracle opens must never take one of their numbers, where
/// its messages, or a child's, would be written to it.
pub fn open_standard_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a plain open; the lowest free number is `fd` itself. A failure
            // leaves it closed, as it was.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// Restores the default SIGPIPE disposition, which coracle's caller may have left ignored
/// (an ignored disposition survives execve): a container's app must not inherit it, and
/// `coracle images | head` should end quietly like any Unix tool.
pub fn default_sigpipe() {
    // SAFETY: setting a signal to SIG_DFL installs no handler code; nothing else runs yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

// ---------------------------------------------------------------------------------------
// Process creation, signals and mounts for `coracle run`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn check_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `struct clone_args` (linux/sched.h), version 2 (size 88).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What `clone3` returned on this side.
pub enum Forked {
    /// We are the new child.
    Child,
    /// We are the parent of `pid`, with a pidfd for it.
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
}

/// clone3(2) with fork semantics (no new stack) and `CLONE_PIDFD`, into new namespaces
/// given by `ns_flags` (`CLONE_NEWPID | CLONE_NEWNS | …`). The caller must be
/// single-threaded: the child continues from here with a copy of this thread only.
pub fn clone3_fork(ns_flags: u64) -> io::Result<Forked> {
    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: ns_flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: args is a valid clone_args of the size we pass; with stack 0 the child runs
    // on a copy of our stack like fork(2). The pidfd slot outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match ret {
        r if r < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        // SAFETY: CLONE_PIDFD stored a new descriptor that only we own.
        pid => Ok(Forked::Parent { pid: pid as libc::pid_t, pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) } }),
    }
}

/// pidfd_send_signal(2): signals exactly the process the pidfd names, never a recycled pid.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a live fd; null siginfo means "as kill(2)".
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), sig, std::ptr::null::<u8>(), 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// close_range(2): closes every fd from `first` up.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: closing descriptors we do not hold references to (callers guarantee this
    // runs right before exec, when no Rust object still owns them).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;

/// A filesystem being configured with the new mount API (fsopen(2)/fsconfig(2)).
pub struct FsContext(OwnedFd);

impl FsContext {
    pub fn open(fstype: &CStr) -> io::Result<FsContext> {
        // SAFETY: fstype is NUL-terminated; returns a new fd.
        check_fd(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) }).map(FsContext)
    }

    fn config(&self, cmd: libc::c_uint, key: Option<&CStr>, value: Option<&CStr>) -> io::Result<()> {
        let key = key.map_or(std::ptr::null(), CStr::as_ptr);
        let value = value.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: strings are NUL-terminated or null as the command requires.
        let r = unsafe { libc::syscall(libc::SYS_fsconfig, self.0.as_raw_fd(), cmd, key, value, 0) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn set_string(&self, key: &CStr, value: &CStr) -> io::Result<()> {
        self.config(FSCONFIG_SET_STRING, Some(key), Some(value))
    }

    pub fn set_flag(&self, key: &CStr) -> io::Result<()> {
        self.config(FSCONFIG_SET_FLAG, Some(key), None)
    }

    /// Creates the superblock and returns a detached mount of it with `attrs`
    /// (`MOUNT_ATTR_*`).
    pub fn mount(self, attrs: u64) -> io::Result<OwnedFd> {
        self.config(FSCONFIG_CMD_CREATE, None, None)?;
        // SAFETY: plain syscall on our fs context fd; returns a new fd.
        check_fd(unsafe { libc::syscall(libc::SYS_fsmount, self.0.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })
    }
}

/// open_tree(2) with OPEN_TREE_CLONE: a detached copy of the mount tree at `path`
/// (recursive when `recursive`), for a bind mount.
pub fn clone_tree(path: &CStr, recursive: bool) -> io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: path is NUL-terminated; returns a new fd.
    check_fd(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })
}

/// open_tree(2) with OPEN_TREE_CLONE of the mount at `fd` itself (AT_EMPTY_PATH): a
/// detached copy, no path looked up.
pub fn clone_tree_at(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE
        | OPEN_TREE_CLOEXEC
        | libc::AT_EMPTY_PATH as libc::c_uint
        | if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: fd is a valid descriptor and the path an empty NUL-terminated string.
    check_fd(unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) })
}

/// mount_setattr(2): sets `MOUNT_ATTR_*` flags on a (detached) mount tree.
pub fn mount_setattr(mnt: BorrowedFd<'_>, set: u64, recursive: bool) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: attr is a valid mount_attr of the size passed; the empty path names the fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// move_mount(2) of the detached mount `mnt` onto the directory or file `target` (an fd
/// opened beneath the container's root): no path is resolved at mount time.
pub fn move_mount_to_fd(mnt: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both fds are live; empty paths name the fds themselves.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets the controlling terminal of this session (TIOCSCTTY).
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: ioctl with an integer argument on a live tty fd.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) })
}

/// Lowers RLIMIT_CORE to 0 (always allowed) so that dying by a signal dumps no core.
pub fn no_core_dumps() {
    let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid rlimit struct; lowering a limit needs no privilege.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}

/// Brings up `lo` in a fresh network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket used only for the interface ioctls below.
    let s = check_fd(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as libc::c_long)?;
    // SAFETY: ifreq is plain data; zeroed is a valid initial value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: valid ifreq for SIOCGIFFLAGS on a live socket.
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: union field written by the kernel above.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: valid ifreq for SIOCSIFFLAGS.
    check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })
}

/// Ends this process by signal `sig`, the way the container's app ended, with core dumps
/// off; falls back to exit 128+sig for signals whose default action is not to terminate.
pub fn die_by_signal(sig: libc::c_int) -> ! {
    no_core_dumps();
    // SAFETY: resetting the disposition and unmasking only `sig`, then raising it.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig)
    }
}

/// pidfd_open(2).
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall returning a new fd.
    check_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// Whether clone3(2) is there, without creating anything: a zero-sized `clone_args` is
/// refused with EINVAL by a kernel that has it, ENOSYS otherwise (also what seccomp
/// filters that hide clone3 answer).
pub fn clone3_available() -> io::Result<()> {
    // SAFETY: a null pointer with size 0 is rejected by the size check before the kernel
    // reads any memory; nothing is created.
    let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<CloneArgs>(), 0usize) };
    let e = io::Error::last_os_error();
    if r < 0 && e.raw_os_error() == Some(libc::EINVAL) {
        Ok(())
    } else {
        Err(e)
    }
}

/// seccomp(2) SECCOMP_SET_MODE_FILTER with a compiled program. Unlike seccompiler's
/// `apply_filter` it does not set no_new_privs itself: the caller has (unprivileged
/// apps) or holds CAP_SYS_ADMIN (`--privileged` with an explicit profile).
pub fn seccomp_install(prog: &[seccompiler::sock_filter]) -> io::Result<()> {
    const _: () = assert!(std::mem::size_of::<seccompiler::sock_filter>() == std::mem::size_of::<libc::sock_filter>());
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fprog = libc::sock_fprog { len, filter: prog.as_ptr() as *mut libc::sock_filter };
    // SAFETY: fprog points at `len` instructions laid out as the kernel's sock_filter
    // (same size and fields); the kernel copies them before returning.
    let r = unsafe {
        libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops from this thread's bounding set every capability whose bit is clear in `keep`:
/// one prctl per capability, up to the first number the kernel does not know (EINVAL),
/// without reading the set first (dropping a dropped one succeeds).
pub fn bounding_keep_only(keep: u64) -> io::Result<()> {
    for cap in 0..64u64 {
        if keep >> cap & 1 == 1 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINVAL) { Ok(()) } else { Err(e) };
        }
    }
    Ok(())
}

/// Sets this thread's effective, permitted and inheritable capability sets (bit masks by
/// capability number) in one capset(2) call.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let half = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let data: [Data; 2] = std::array::from_fn(|i| Data {
        effective: half(effective, i as u32),
        permitted: half(permitted, i as u32),
        inheritable: half(inheritable, i as u32),
    });
    let header = Header { version: VERSION_3, pid: 0 };
    // SAFETY: the header and the two data structs are laid out as the kernel's
    // __user_cap_header_struct and __user_cap_data_struct[2] (version 3), and live
    // across the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `child` in a new process that shares this one's memory until it execs or exits
/// (clone(2) with CLONE_VM | CLONE_VFORK, the way posix_spawn starts a program), on a
/// stack of its own with a guard page. Nothing of the address space is copied, where
/// fork(2) copies the page tables and then takes a copy-on-write fault for every page
/// either side writes: for coracle's init that was ~0.15 ms of every container start.
/// This process is suspended until the child has exec'd or exited; the child has its
/// own file descriptor table, working directory, credentials and seccomp state, and
/// everything it changes in memory is this process's (its allocations stay behind).
///
/// # Safety
///
/// The caller must be single-threaded, hold no lock `child` takes, and have every signal
/// blocked with no handler `child` could run before it execs (it unblocks them itself
/// just before execve). `child` execs, or returns the exit status of the child.
pub unsafe fn spawn_shared_vm(child: &mut dyn FnMut() -> libc::c_int) -> io::Result<libc::pid_t> {
    const STACK: usize = 512 << 10;
    const GUARD: usize = 64 << 10;
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `&mut dyn FnMut` below, alive until the child is done with
        // it (this process is suspended meanwhile).
        let f = unsafe { &mut *arg.cast::<&mut dyn FnMut() -> libc::c_int>() };
        f()
    }
    // SAFETY: a fresh anonymous mapping; its lowest pages become the guard.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK + GUARD,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: within the mapping just made.
    let r = unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) };
    let result = if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        let mut f: &mut dyn FnMut() -> libc::c_int = child;
        // SAFETY: the stack grows down from the end of the mapping (page-aligned, so
        // 16-byte aligned); the caller upholds the rest (see above). With CLONE_VFORK,
        // clone returns once the child no longer uses the stack or `f`.
        let pid = unsafe {
            libc::clone(
                entry,
                base.cast::<u8>().add(STACK + GUARD).cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut f as *mut &mut dyn FnMut() -> libc::c_int).cast(),
            )
        };
        if pid < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(pid)
        }
    };
    // SAFETY: the mapping made above; the child has exec'd or exited.
    unsafe { libc::munmap(base, STACK + GUARD) };
    result
}
