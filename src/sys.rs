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

/// Restores the default SIGPIPE disposition. Rust's runtime ignores SIGPIPE, and an ignored
/// disposition survives execve: a container's app must not inherit it, and `coracle images
/// | head` should end quietly like any Unix tool.
pub fn default_sigpipe() {
    // SAFETY: setting a signal to SIG_DFL installs no handler code; nothing else runs yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
