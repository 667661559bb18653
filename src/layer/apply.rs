//! Applies one tar layer into an empty directory, producing overlayfs format: OCI
//! whiteouts (`.wh.NAME`) become 0/0 character devices, opaque markers (`.wh..wh..opq`)
//! become `trusted.overlay.opaque=y` (OCI image-spec layer.md; kernel overlayfs.rst).
//!
//! Every name is resolved through [`Resolver`]; leaf operations are `*at` calls on the
//! parent fd with `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`. Metadata order per file: data, owner,
//! mode (after chown, which clears setuid), xattrs (after chown, which clears
//! security.capability), times; directory times are set last, once their children exist.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};

use super::path::{components, cstr, PathError, Resolver};
use super::tar::{Entry, Kind, TarReader, TarSource};
use crate::sys;

/// Most entries one layer may have.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Most bytes of directory names kept to set directory times at the end.
const MAX_DEFERRED_DIR_BYTES: usize = 128 << 20;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("tar entry {path:?}: {why}")]
    Unsafe { path: String, why: String },
    #[error("{step} {path:?}: {source}")]
    Io { step: &'static str, path: String, source: io::Error },
    #[error("reading tar stream: {0}")]
    Stream(io::Error),
    #[error("layer has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    /// Logical bytes of regular files.
    pub file_bytes: u64,
}

struct Applier {
    res: Resolver,
    dir_times: Vec<(Vec<u8>, TimeSpec)>,
    dir_bytes: usize,
    buf: Vec<u8>,
}

/// Extracts the tar stream `tar` into the empty directory `root`.
pub fn apply<R: TarSource>(tar: &mut TarReader<R>, root: OwnedFd) -> Result<Stats, ApplyError> {
    let mut a = Applier { res: Resolver::new(root), dir_times: Vec::new(), dir_bytes: 0, buf: vec![0u8; 256 << 10] };
    let mut stats = Stats::default();
    while let Some(entry) = tar.next_entry().map_err(ApplyError::Stream)? {
        stats.entries += 1;
        if stats.entries > MAX_ENTRIES {
            return Err(ApplyError::TooManyEntries);
        }
        if entry.kind == Kind::File {
            // A header's size, added before its data is read, can be anything up to 2^64 - 1
            // (fuzz/regressions/layer_structured/).
            stats.file_bytes = stats.file_bytes.saturating_add(entry.size);
        }
        a.entry(tar, &entry)?;
    }
    a.finish_dir_times();
    Ok(stats)
}

fn io_err(step: &'static str, e: &Entry, source: impl Into<io::Error>) -> ApplyError {
    ApplyError::Io { step, path: lossy(&e.path), source: source.into() }
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl Applier {
    fn entry<R: TarSource>(&mut self, tar: &mut TarReader<R>, e: &Entry) -> Result<(), ApplyError> {
        let unsafe_err =
            |why: &dyn std::fmt::Display| ApplyError::Unsafe { path: lossy(&e.path), why: why.to_string() };
        let comps = components(&e.path).map_err(|err| unsafe_err(&err))?;
        let Some((&leaf, parents)) = comps.split_last() else {
            // The layer root itself ("./").
            if e.kind != Kind::Dir {
                return Err(unsafe_err(&"the root entry must be a directory"));
            }
            let root = self.res.root().try_clone_to_owned().map_err(|err| io_err("open", e, err))?;
            let fd = reopen_dir(root.as_fd(), c".").map_err(|err| io_err("open", e, err))?;
            self.set_owner_mode_xattrs(fd.as_fd(), e)?;
            self.defer_dir_time(e)?;
            return Ok(());
        };
        if e.uid >= u64::from(u32::MAX) || e.gid >= u64::from(u32::MAX) {
            return Err(unsafe_err(&format_args!("uid/gid {}:{} out of range", e.uid, e.gid)));
        }
        if let Some(target) = leaf.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(e, parents, leaf, target);
        }
        let name = cstr(leaf).map_err(|err| unsafe_err(&err))?;
        match e.kind {
            Kind::Dir => self.dir(e, parents, &name),
            Kind::File => self.file(tar, e, parents, &name),
            Kind::Symlink => {
                if e.link.is_empty() || e.link.contains(&0) {
                    return Err(unsafe_err(&"symlink with an empty or invalid target"));
                }
                self.create(e, parents, &name, |dir, name| symlinkat(OsStr::from_bytes(&e.link), dir, name))?;
                self.finish_nonfile(e, parents, &name)
            }
            Kind::Hardlink => self.hardlink(e, parents, &name),
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (kind, dev) = match e.kind {
                    Kind::Char => (SFlag::S_IFCHR, libc::makedev(e.dev.0, e.dev.1)),
                    Kind::Block => (SFlag::S_IFBLK, libc::makedev(e.dev.0, e.dev.1)),
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.create(e, parents, &name, |dir, name| {
                    mknodat(dir, name, kind, Mode::from_bits_truncate(0o600), dev)
                })?;
                self.finish_nonfile(e, parents, &name)
            }
        }
    }

    fn parent(&mut self, e: &Entry, parents: &[&[u8]]) -> Result<BorrowedFd<'_>, ApplyError> {
        let path = lossy(&e.path);
        self.res.dir(parents, true).map_err(|err| match err {
            PathError::Io(source) => ApplyError::Io { step: "open parent of", path, source },
            other => ApplyError::Unsafe { path, why: other.to_string() },
        })
    }

    /// Runs a creating `*at` call; if the name exists, removes what is there (later
    /// entries replace earlier ones, as tar does) and tries once more.
    fn create(
        &mut self,
        e: &Entry,
        parents: &[&[u8]],
        name: &CStr,
        op: impl Fn(BorrowedFd<'_>, &CStr) -> nix::Result<()>,
    ) -> Result<(), ApplyError> {
        let dir = self.parent(e, parents)?;
        match op(dir, name) {
            Err(Errno::EEXIST) => {}
            r => return r.map_err(|err| io_err("create", e, err)),
        }
        let dir = self.parent(e, parents)?.try_clone_to_owned().map_err(|err| io_err("open", e, err))?;
        remove_existing(dir.as_fd(), name).map_err(|err| io_err("replace", e, err))?;
        self.res.invalidate();
        op(dir.as_fd(), name).map_err(|err| io_err("create", e, err))
    }

    fn dir(&mut self, e: &Entry, parents: &[&[u8]], name: &CStr) -> Result<(), ApplyError> {
        let dir = self.parent(e, parents)?.try_clone_to_owned().map_err(|err| io_err("open", e, err))?;
        match mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                if !is_dir(dir.as_fd(), name) {
                    remove_existing(dir.as_fd(), name).map_err(|err| io_err("replace", e, err))?;
                    self.res.invalidate();
                    mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700))
                        .map_err(|err| io_err("mkdir", e, err))?;
                }
            }
            Err(err) => return Err(io_err("mkdir", e, err)),
        }
        let fd = reopen_dir(dir.as_fd(), name).map_err(|err| io_err("open", e, err))?;
        self.set_owner_mode_xattrs(fd.as_fd(), e)?;
        self.defer_dir_time(e)
    }

    fn file<R: TarSource>(
        &mut self,
        tar: &mut TarReader<R>,
        e: &Entry,
        parents: &[&[u8]],
        name: &CStr,
    ) -> Result<(), ApplyError> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o600);
        let dir = self.parent(e, parents)?;
        let fd = match openat(dir, name, flags, mode) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => {
                let dir = dir.try_clone_to_owned().map_err(|err| io_err("open", e, err))?;
                remove_existing(dir.as_fd(), name).map_err(|err| io_err("replace", e, err))?;
                self.res.invalidate();
                openat(dir.as_fd(), name, flags, mode).map_err(|err| io_err("create", e, err))?
            }
            Err(err) => return Err(io_err("create", e, err)),
        };
        let mut file = File::from(fd);
        match &e.sparse {
            None => self.copy_data(tar, &mut file, e)?,
            Some(map) => {
                for &(off, len) in map {
                    file.seek(SeekFrom::Start(off)).map_err(|err| io_err("seek", e, err))?;
                    self.copy_n(tar, &mut file, e, len)?;
                }
                file.set_len(e.size).map_err(|err| io_err("truncate", e, err))?;
            }
        }
        if e.size >= 8 << 20 {
            sys::start_writeback(file.as_fd());
        }
        self.set_owner_mode_xattrs(file.as_fd(), e)?;
        futimens(&file, &e_time(e), &e_time(e)).map_err(|err| io_err("set times of", e, err))
    }

    fn copy_data<R: TarSource>(
        &mut self,
        tar: &mut TarReader<R>,
        file: &mut File,
        e: &Entry,
    ) -> Result<(), ApplyError> {
        loop {
            let n = tar.read_data(&mut self.buf).map_err(ApplyError::Stream)?;
            if n == 0 {
                return Ok(());
            }
            file.write_all(&self.buf[..n]).map_err(|err| io_err("write", e, err))?;
        }
    }

    fn copy_n<R: TarSource>(
        &mut self,
        tar: &mut TarReader<R>,
        file: &mut File,
        e: &Entry,
        mut len: u64,
    ) -> Result<(), ApplyError> {
        while len > 0 {
            let want = self.buf.len().min(len as usize);
            let n = tar.read_data(&mut self.buf[..want]).map_err(ApplyError::Stream)?;
            if n == 0 {
                return Err(ApplyError::Stream(io::ErrorKind::UnexpectedEof.into()));
            }
            file.write_all(&self.buf[..n]).map_err(|err| io_err("write", e, err))?;
            len -= n as u64;
        }
        Ok(())
    }

    fn hardlink(&mut self, e: &Entry, parents: &[&[u8]], name: &CStr) -> Result<(), ApplyError> {
        let unsafe_err = |why: String| ApplyError::Unsafe { path: lossy(&e.path), why };
        let tcomps =
            components(&e.link).map_err(|err| unsafe_err(format!("hardlink target {:?}: {err}", lossy(&e.link))))?;
        let Some((&tleaf, tparents)) = tcomps.split_last() else {
            return Err(unsafe_err("hardlink to the layer root".into()));
        };
        if tleaf.starts_with(WHITEOUT_PREFIX) {
            return Err(unsafe_err("hardlink to a whiteout".into()));
        }
        let tname = cstr(tleaf).map_err(|err| unsafe_err(err.to_string()))?;
        let tdir = match self.res.dir(tparents, false) {
            Ok(fd) => fd.try_clone_to_owned().map_err(|err| io_err("open", e, err))?,
            Err(PathError::Io(err)) if err.kind() == io::ErrorKind::NotFound => {
                return Err(unsafe_err(format!("hardlink target {:?} is not in this layer", lossy(&e.link))));
            }
            Err(err) => return Err(unsafe_err(format!("hardlink target {:?}: {err}", lossy(&e.link)))),
        };
        if tcomps == components(&e.path).unwrap_or_default() {
            return Ok(());
        }
        let link =
            |dir: BorrowedFd<'_>, name: &CStr| linkat(tdir.as_fd(), tname.as_c_str(), dir, name, AtFlags::empty());
        self.create(e, parents, name, link).map_err(|err| match err {
            ApplyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                unsafe_err(format!("hardlink target {:?} is not in this layer", lossy(&e.link)))
            }
            other => other,
        })
    }

    fn whiteout(&mut self, e: &Entry, parents: &[&[u8]], leaf: &[u8], target: &[u8]) -> Result<(), ApplyError> {
        let unsafe_err = |why: &str| ApplyError::Unsafe { path: lossy(&e.path), why: why.to_owned() };
        if leaf == OPAQUE_MARKER {
            let dir = self.parent(e, parents)?;
            let fd = reopen_dir(dir, c".").map_err(|err| io_err("open", e, err))?;
            return sys::fsetxattr(fd.as_fd(), OPAQUE_XATTR, b"y").map_err(|err| io_err("mark opaque", e, err));
        }
        if target.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.` names are aufs metadata (`.wh..wh.plnk`, …): nothing to apply.
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(unsafe_err("whiteout names no file"));
        }
        let name = cstr(target).map_err(|err| unsafe_err(&err.to_string()))?;
        let dir = self.parent(e, parents)?;
        // A whiteout hides lower layers only: if this layer already has the name, keep it.
        match mknodat(dir, name.as_c_str(), SFlag::S_IFCHR, Mode::empty(), 0) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(err) => Err(io_err("create whiteout", e, err)),
        }
    }

    /// Owner, mode, xattrs and times of a symlink, device or fifo, by name.
    fn finish_nonfile(&mut self, e: &Entry, parents: &[&[u8]], name: &CStr) -> Result<(), ApplyError> {
        let dir = self.parent(e, parents)?.try_clone_to_owned().map_err(|err| io_err("open", e, err))?;
        let (uid, gid) = (Uid::from_raw(e.uid as u32), Gid::from_raw(e.gid as u32));
        fchownat(dir.as_fd(), name, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|err| io_err("chown", e, err))?;
        if e.kind != Kind::Symlink {
            // The name was created by us just above and cannot be a symlink.
            fchmodat(dir.as_fd(), name, Mode::from_bits_truncate(e.mode), FchmodatFlags::FollowSymlink)
                .map_err(|err| io_err("chmod", e, err))?;
        }
        for (k, v) in allowed_xattrs(e) {
            match sys::lsetxattr_at(dir.as_fd(), name, &k, v) {
                // Symlinks cannot carry user.* attributes; the archive asks for the impossible.
                Err(err) if e.kind == Kind::Symlink && err.raw_os_error() == Some(libc::EPERM) => {}
                r => r.map_err(|err| io_err("set xattr on", e, err))?,
            }
        }
        utimensat(dir.as_fd(), name, &e_time(e), &e_time(e), UtimensatFlags::NoFollowSymlink)
            .map_err(|err| io_err("set times of", e, err))
    }

    fn set_owner_mode_xattrs(&self, fd: BorrowedFd<'_>, e: &Entry) -> Result<(), ApplyError> {
        fchown(fd, Some(Uid::from_raw(e.uid as u32)), Some(Gid::from_raw(e.gid as u32)))
            .map_err(|err| io_err("chown", e, err))?;
        fchmod(fd, Mode::from_bits_truncate(e.mode)).map_err(|err| io_err("chmod", e, err))?;
        for (k, v) in allowed_xattrs(e) {
            sys::fsetxattr(fd, &k, v).map_err(|err| io_err("set xattr on", e, err))?;
        }
        Ok(())
    }

    fn defer_dir_time(&mut self, e: &Entry) -> Result<(), ApplyError> {
        self.dir_bytes += e.path.len() + 32;
        if self.dir_bytes > MAX_DEFERRED_DIR_BYTES {
            return Err(ApplyError::Unsafe { path: lossy(&e.path), why: "too many directories in one layer".into() });
        }
        self.dir_times.push((e.path.clone(), e_time(e)));
        Ok(())
    }

    /// Directory times, now that no more children will be created in them. A directory
    /// that a later entry replaced is simply gone: nothing to do.
    fn finish_dir_times(&mut self) {
        let times = std::mem::take(&mut self.dir_times);
        self.res.invalidate();
        for (path, t) in times.iter().rev() {
            let Ok(comps) = components(path) else { continue };
            if let Ok(dir) = self.res.dir(&comps, false) {
                if let Ok(fd) = reopen_dir(dir, c".") {
                    let _ = futimens(&fd, t, t);
                }
            }
        }
    }
}

fn e_time(e: &Entry) -> TimeSpec {
    TimeSpec::new(e.mtime.0, i64::from(e.mtime.1))
}

/// xattrs from the archive that we apply: overlayfs's own namespace is never taken from
/// an image (forged `trusted.overlay.redirect`/`origin`/`metacopy` could steer the
/// kernel to other files).
fn allowed_xattrs(e: &Entry) -> impl Iterator<Item = (CString, &[u8])> {
    e.xattrs.iter().filter_map(|(k, v)| {
        if k.starts_with(b"trusted.overlay.") || k.starts_with(b"user.overlay.") {
            return None;
        }
        CString::new(k.clone()).ok().map(|k| (k, v.as_slice()))
    })
}

fn reopen_dir(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    openat(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
}

fn is_dir(dir: BorrowedFd<'_>, name: &CStr) -> bool {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// Removes whatever is at `name` in `dir` (recursively for a directory, never following
/// a symlink).
fn remove_existing(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    if is_dir(dir, name) {
        // std's remove_dir_all opens with O_NOFOLLOW and recurses with *at calls
        // (CVE-2022-21658 fix); the /proc/self/fd prefix names only our own dir fd.
        let mut p = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir)).into_bytes();
        p.extend_from_slice(name.to_bytes());
        return std::fs::remove_dir_all(OsStr::from_bytes(&p));
    }
    unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
}
