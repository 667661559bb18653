//! The root-bounded resolver: every path taken from an archive is opened relative to the
//! layer's root directory fd, never followed through a symlink, never allowed to leave it.
//!
//! Names are first split into components; `..` and absolute names are refused outright
//! (they have no business in a layer). Parents are opened with openat2(2)
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, or with a
//! component-by-component `O_NOFOLLOW` walk on kernels without openat2. A layer entry whose
//! parent is a symlink is therefore an error, never a write somewhere else: tools that
//! diff filesystems (docker, buildah) never produce such entries, and the one-dir-per-layer
//! store could not reproduce write-through-symlink semantics across layers anyway.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("absolute name")]
    Absolute,
    #[error("name contains a '..' component")]
    DotDot,
    #[error("name contains a NUL byte")]
    Nul,
    #[error("a parent directory is a symlink or not a directory")]
    ThroughSymlink,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Splits an archive name into its components, dropping `.` and empty ones.
pub fn components(name: &[u8]) -> Result<Vec<&[u8]>, PathError> {
    if name.first() == Some(&b'/') {
        return Err(PathError::Absolute);
    }
    if name.contains(&0) {
        return Err(PathError::Nul);
    }
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot),
            c => out.push(c),
        }
    }
    Ok(out)
}

pub fn cstr(c: &[u8]) -> Result<CString, PathError> {
    CString::new(c).map_err(|_| PathError::Nul)
}

/// Opens directories below a root fd, with a one-entry cache for the last parent (tar
/// streams list a directory's children together).
pub struct Resolver {
    root: OwnedFd,
    cache: Option<(Vec<u8>, OwnedFd)>,
    openat2: bool,
}

const DIR_FLAGS: OFlag = OFlag::O_PATH.union(OFlag::O_DIRECTORY).union(OFlag::O_CLOEXEC);

impl Resolver {
    pub fn new(root: OwnedFd) -> Self {
        Resolver { root, cache: None, openat2: true }
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Forgets cached directory fds; call after anything was removed or replaced.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Opens the directory `comps` (relative to the root), creating missing ones with
    /// mode 0755 when `create` is set. Returns an O_PATH fd usable as a `*at` dirfd.
    pub fn dir(&mut self, comps: &[&[u8]], create: bool) -> Result<BorrowedFd<'_>, PathError> {
        if comps.is_empty() {
            return Ok(self.root.as_fd());
        }
        let key = comps.join(&b'/');
        if self.cache.as_ref().is_none_or(|(k, _)| *k != key) {
            let fd = self.open_dir(&key, comps, create)?;
            self.cache = Some((key, fd));
        }
        Ok(self.cache.as_ref().map(|(_, fd)| fd.as_fd()).unwrap_or(self.root.as_fd()))
    }

    fn open_dir(&mut self, key: &[u8], comps: &[&[u8]], create: bool) -> Result<OwnedFd, PathError> {
        if self.openat2 {
            let how = OpenHow::new().flags(DIR_FLAGS).resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
            match openat2(self.root.as_fd(), OsStr::from_bytes(key), how) {
                Ok(fd) => return Ok(fd),
                Err(Errno::ENOSYS) => self.openat2 = false,
                Err(Errno::ENOENT) if create => {}
                Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => return Err(PathError::ThroughSymlink),
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        self.walk(comps, create)
    }

    /// Component-by-component walk with O_NOFOLLOW: the fallback, and how missing parents
    /// get created.
    fn walk(&self, comps: &[&[u8]], create: bool) -> Result<OwnedFd, PathError> {
        let mut cur: Option<OwnedFd> = None;
        for c in comps {
            let at = cur.as_ref().map(|f| f.as_fd()).unwrap_or(self.root.as_fd());
            let name = OsStr::from_bytes(c);
            let next = match openat(at, name, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(at, name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io::Error::from(e).into()),
                    }
                    openat(at, name, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty()).map_err(map_dir_err)?
                }
                Err(e) => return Err(map_dir_err(e)),
            };
            cur = Some(next);
        }
        cur.ok_or(PathError::Io(io::Error::from(io::ErrorKind::NotFound)))
    }
}

fn map_dir_err(e: Errno) -> PathError {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => PathError::ThroughSymlink,
        e => PathError::Io(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_confined() {
        assert_eq!(components(b"./a//b/./c/").unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert!(components(b"./").unwrap().is_empty());
        assert!(matches!(components(b"/etc/passwd"), Err(PathError::Absolute)));
        assert!(matches!(components(b"a/../../x"), Err(PathError::DotDot)));
        assert!(matches!(components(b".."), Err(PathError::DotDot)));
    }

    #[test]
    fn refuses_to_walk_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("abs")).unwrap();
        let root: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        let mut r = Resolver::new(root);
        for (via, openat2) in [(&b"link"[..], true), (b"abs", true), (b"link", false)] {
            r.openat2 = openat2;
            r.invalidate();
            let err = r.dir(&[via, b"sub"], true).map(|_| ()).unwrap_err();
            assert!(matches!(err, PathError::ThroughSymlink), "{err}");
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        r.openat2 = false;
        r.dir(&[b"x", b"y"], true).unwrap();
        assert!(dir.path().join("x/y").is_dir());
    }
}
