//! The container's filesystem, built inside its private mount namespace: the overlay of
//! the image's layers, every mount of the plan on targets resolved *inside* the rootfs,
//! /dev nodes, masked and read-only paths, then pivot_root.
//!
//! Mount targets are opened with openat2(`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`) from
//! the rootfs fd, so an image whose /proc or /etc/resolv.conf is a symlink to `/` or
//! `../../..` gets the mount on the path *inside* the rootfs, never on the host. Mounts are
//! attached with move_mount(2) to that fd: no path is looked up again at mount time.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, mkdirat, mknodat, Mode, SFlag};
use nix::unistd::{fchdir, pivot_root, symlinkat};

use super::mounts::{Mount, Source, Target, DEVICES, DEV_LINKS, MASKED, READ_ONLY};
use crate::sys::{self, FsContext};

#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {source}")]
pub struct RootfsError {
    pub step: &'static str,
    pub path: String,
    pub source: io::Error,
}

fn err(step: &'static str, path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.as_ref().display().to_string();
    move |source| RootfsError { step, path, source }
}

fn nerr(step: &'static str, path: impl AsRef<Path>) -> impl FnOnce(Errno) -> RootfsError {
    let f = err(step, path);
    move |e| f(e.into())
}

/// The overlay to mount: lowers top-most first.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub lowers: Vec<PathBuf>,
    /// `(upper, work)`; `None` mounts the overlay read-only.
    pub upper: Option<(PathBuf, PathBuf)>,
    /// Device nodes in the image are inert (`nodev`): coracle has no device cgroup, so
    /// a node shipped in a layer (or made by the app with CAP_MKNOD) would otherwise
    /// open the host's device. The container's devices are in its own /dev.
    pub nodev: bool,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Makes every mount in this namespace private, so nothing we do propagates to the host.
pub fn make_private() -> Result<(), RootfsError> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(nerr("make private", "/"))
}

/// Makes the container's scratch space in `dir` and returns the overlay's mount point in
/// it. With `tmpfs` (in this private mount namespace only), the scratch is a tmpfs
/// attached over `dir`: `prebuilt` if the outer process made it ([`Prebuilt`]), else made
/// here; without, it is `dir` itself, on the store's filesystem, which the outer process
/// made and filled ([`fill_scratch`]).
pub fn prepare_scratch(
    dir: &Path,
    tmpfs: Option<&Option<String>>,
    prebuilt: Option<OwnedFd>,
    hostname: &str,
    notify: Option<BorrowedFd<'_>>,
) -> Result<PathBuf, RootfsError> {
    if let Some(size) = tmpfs {
        let mnt = match prebuilt {
            Some(mnt) => mnt,
            None => scratch_fs(dir, size.as_deref(), &etc_files(hostname))?,
        };
        sys::move_mount_to_fd(mnt.as_fd(), open_dir_path(dir)?.as_fd()).map_err(err("mount tmpfs on", dir))?;
    }
    if let Some(sock) = notify {
        let d = open_dir_path(dir)?;
        // Relative to the dir: a socket path must fit in 108 bytes, a store root need not.
        let cwd = std::env::current_dir().map_err(err("getcwd", dir))?;
        fchdir(&d).map_err(nerr("chdir", dir))?;
        let addr = nix::sys::socket::UnixAddr::new(super::notify::SCRATCH_NAME).map_err(nerr("socket address", dir))?;
        let bound = nix::sys::socket::bind(sock.as_raw_fd(), &addr).map_err(nerr("bind notify socket in", dir));
        std::env::set_current_dir(&cwd).map_err(err("chdir", &cwd))?;
        bound?;
    }
    Ok(dir.join("rootfs"))
}

/// The scratch tmpfs for `dir` (`mode=700`, `size=` if given, nosuid, nodev), detached,
/// with its contents made.
pub fn scratch_fs(dir: &Path, size: Option<&str>, files: &[(&str, String)]) -> Result<OwnedFd, RootfsError> {
    let fc = FsContext::open(c"tmpfs").map_err(err("fsopen tmpfs for", dir))?;
    fc.set_string(c"mode", c"700").map_err(err("tmpfs mode for", dir))?;
    if let Some(size) = size {
        let size = CString::new(size).map_err(|_| err("tmpfs size for", dir)(io::ErrorKind::InvalidInput.into()))?;
        fc.set_string(c"size", &size).map_err(err("tmpfs size for", dir))?;
    }
    let mnt = fc.mount(sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV).map_err(err("mount tmpfs for", dir))?;
    fill_scratch(mnt.as_fd(), dir, files)?;
    Ok(mnt)
}

/// The container's /etc files in its scratch dir (name in the dir, target inside).
pub const ETC_FILES: [(&str, &str); 3] =
    [("hostname", "/etc/hostname"), ("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")];

/// The contents of [`ETC_FILES`] for the host's network view: the hostname, the host's
/// /etc/hosts with a line for the hostname if it has none, the host's /etc/resolv.conf.
pub fn etc_files(hostname: &str) -> Vec<(&'static str, String)> {
    let mut hosts =
        std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| "127.0.0.1\tlocalhost\n::1\tlocalhost\n".into());
    if !hosts.split_whitespace().any(|w| w == hostname) {
        if !hosts.ends_with('\n') && !hosts.is_empty() {
            hosts.push('\n');
        }
        hosts.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    vec![(ETC_FILES[0].0, format!("{hostname}\n")), (ETC_FILES[1].0, hosts), (ETC_FILES[2].0, resolv)]
}

/// `upper/`, `work/` and `rootfs/` (0755) and the /etc files (0644) in the scratch `d`
/// (`dir` names it in errors), with exactly these modes whatever the umask: the upper's
/// mode is the container's `/`.
pub fn fill_scratch(d: BorrowedFd<'_>, dir: &Path, files: &[(&str, String)]) -> Result<(), RootfsError> {
    without_umask(|| {
        for sub in ["upper", "work", "rootfs"] {
            mkdirat(d, sub, Mode::from_bits_truncate(0o755)).map_err(nerr("create", dir.join(sub)))?;
        }
        Ok(())
    })?;
    write_etc_files(d, dir, files)
}

/// The /etc files (0644, whatever the umask) in the scratch `d`.
pub fn write_etc_files(d: BorrowedFd<'_>, dir: &Path, files: &[(&str, String)]) -> Result<(), RootfsError> {
    without_umask(|| {
        for (name, content) in files {
            let f = openat(
                d,
                *name,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(nerr("create", dir.join(name)))?;
            io::Write::write_all(&mut std::fs::File::from(f), content.as_bytes())
                .map_err(err("write", dir.join(name)))?;
        }
        Ok(())
    })
}

/// Mounts the image's rootfs on `target`.
pub fn mount_rootfs(o: &Overlay, target: &Path) -> Result<(), RootfsError> {
    let tfd = open_dir_path(target)?;
    let mnt = overlay(o, target)?;
    sys::move_mount_to_fd(mnt.as_fd(), tfd.as_fd()).map_err(err("mount rootfs on", target))
}

/// `--read-only`: the rootfs mount itself becomes read-only once every mount point has
/// been created in the (scratch) upper layer; the mounts on top of it keep their flags.
pub fn make_read_only(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    sys::mount_setattr(root, sys::MOUNT_ATTR_RDONLY, false).map_err(err("make read-only", "/"))
}

/// The overlay superblock, with one `lowerdir+` per layer (Linux 6.8+: no page-size
/// limit on the number of layers), or a classic option string on older kernels.
fn overlay(o: &Overlay, target: &Path) -> Result<OwnedFd, RootfsError> {
    let attrs =
        if o.upper.is_none() { sys::MOUNT_ATTR_RDONLY } else { 0 } | if o.nodev { sys::MOUNT_ATTR_NODEV } else { 0 };
    let fc = FsContext::open(c"overlay").map_err(err("fsopen overlay for", target))?;
    let mut plus = true;
    for l in &o.lowers {
        match fc.set_string(c"lowerdir+", &cpath(l).map_err(err("lowerdir", l))?) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && plus && l == &o.lowers[0] => {
                plus = false;
                break;
            }
            Err(e) => return Err(err("overlay lowerdir", l)(e)),
        }
    }
    if !plus {
        return overlay_legacy(o, target);
    }
    if let Some((upper, work)) = &o.upper {
        fc.set_string(c"upperdir", &cpath(upper).map_err(err("upperdir", upper))?)
            .map_err(err("overlay upperdir", upper))?;
        fc.set_string(c"workdir", &cpath(work).map_err(err("workdir", work))?).map_err(err("overlay workdir", work))?;
        // The upper is scratch, deleted when the container exits: no syncfs of the whole
        // store filesystem at unmount (overlayfs "volatile", Linux 5.10).
        fc.set_flag(c"volatile").map_err(err("overlay volatile", upper))?;
    }
    fc.mount(attrs).map_err(err("mount overlay for", target))
}

/// Kernels before 6.8: mount(2) with `lowerdir=a:b:…`, from inside the layers directory
/// with relative names so that more layers fit in the one-page option string.
fn overlay_legacy(o: &Overlay, target: &Path) -> Result<OwnedFd, RootfsError> {
    let base = o.lowers[0].parent().and_then(Path::parent).unwrap_or(Path::new("/"));
    let rel: Vec<String> = o
        .lowers
        .iter()
        .map(|l| l.strip_prefix(base).map(|r| r.display().to_string()).unwrap_or_else(|_| l.display().to_string()))
        .collect();
    let mut data = format!("lowerdir={}", rel.join(":"));
    if let Some((u, w)) = &o.upper {
        data.push_str(&format!(",upperdir={},workdir={},volatile", u.display(), w.display()));
    }
    let cwd = std::env::current_dir().ok();
    std::env::set_current_dir(base).map_err(err("chdir", base))?;
    let flags = if o.upper.is_none() { MsFlags::MS_RDONLY } else { MsFlags::empty() }
        | if o.nodev { MsFlags::MS_NODEV } else { MsFlags::empty() };
    let r = mount(Some("overlay"), target, Some("overlay"), flags, Some(data.as_str()))
        .map_err(nerr("mount overlay on", target));
    if let Some(c) = cwd {
        let _ = std::env::set_current_dir(c);
    }
    r?;
    // Hand the mounted tree back as a detached clone so the caller can attach it the
    // same way as the fsmount path (and the original is detached below).
    let m = sys::clone_tree(&cpath(target).map_err(err("open", target))?, true).map_err(err("open mount", target))?;
    umount2(target, MntFlags::MNT_DETACH).map_err(nerr("detach", target))?;
    Ok(m)
}

fn open_dir_path(p: &Path) -> Result<OwnedFd, RootfsError> {
    nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(nerr("open", p))
}

const IN_ROOT: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// Opens `path` (absolute, inside the container) beneath `root`, confined: `..` and
/// symlinks cannot leave the rootfs.
pub fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    openat2(root, rel, OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(IN_ROOT))
}

/// Most symlinks followed while creating one mount target.
const MAX_LINKS: usize = 40;

/// Opens the mount target `path` inside the rootfs, creating it (and its parents) as a
/// directory or an empty file if missing. Symlinks on the way are followed inside the
/// rootfs (a dangling `/etc/resolv.conf -> ../run/…` gets its target created, as docker
/// does); nothing is ever removed or replaced, so a symlink inside a volume (a host
/// directory) stays as it is.
pub fn target(root: BorrowedFd<'_>, path: &str, kind: Target) -> Result<OwnedFd, RootfsError> {
    target_at(root, path, kind, 0)
}

fn target_at(root: BorrowedFd<'_>, path: &str, kind: Target, depth: usize) -> Result<OwnedFd, RootfsError> {
    if depth > MAX_LINKS {
        return Err(nerr("resolve", path)(Errno::ELOOP));
    }
    match open_in_root(root, path, OFlag::O_PATH) {
        Ok(fd) => return check_kind(fd, path, kind),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(nerr("resolve", path)(e)),
    }
    let (parent, leaf) = match path.trim_end_matches('/').rsplit_once('/') {
        Some((p, l)) if !l.is_empty() && l != "." && l != ".." => (if p.is_empty() { "/" } else { p }, l),
        _ => return Err(err("resolve", path)(io::ErrorKind::InvalidInput.into())),
    };
    let pfd = match open_in_root(root, parent, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => target_at(root, parent, Target::Dir, depth + 1)?,
        Err(e) => return Err(nerr("resolve", parent)(e)),
    };
    let name = OsStr::new(leaf);
    // The leaf is missing, or a symlink whose target is: follow it (inside the rootfs).
    if let Ok(st) = nix::sys::stat::fstatat(pfd.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
            // procfs "symlinks" (/proc/self/fd/N, /proc/self/cwd, …) are magic links to
            // whatever the process holds: never a path to create (CVE-2024-21626).
            if nix::sys::statfs::fstatfs(&pfd).is_ok_and(|f| f.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
            {
                return Err(nerr("resolve", path)(Errno::ELOOP));
            }
            let link = nix::fcntl::readlinkat(pfd.as_fd(), name).map_err(nerr("readlink", path))?;
            let link = link.to_string_lossy();
            let next = if link.starts_with('/') {
                link.into_owned()
            } else {
                format!("{}/{link}", parent.trim_end_matches('/'))
            };
            return target_at(root, &next, kind, depth + 1);
        }
        return Err(nerr("resolve", path)(Errno::ENOENT));
    }
    let created = match kind {
        Target::Dir => mkdirat(pfd.as_fd(), name, Mode::from_bits_truncate(0o755)),
        Target::File => openat(
            pfd.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_WRONLY,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    };
    match created {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(nerr("create", path)(e)),
    }
    let fd = openat(pfd.as_fd(), name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(nerr("open", path))?;
    check_kind(fd, path, kind)
}

fn check_kind(fd: OwnedFd, path: &str, kind: Target) -> Result<OwnedFd, RootfsError> {
    let st = fstat(&fd).map_err(nerr("stat", path))?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if (kind == Target::Dir) != is_dir {
        let what = if is_dir { "a directory" } else { "not a directory" };
        return Err(err("mount on", path)(io::Error::other(format!("target is {what}"))));
    }
    Ok(fd)
}

fn ms_to_attrs(f: MsFlags) -> u64 {
    let mut a = 0;
    for (ms, attr) in [
        (MsFlags::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, sys::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_STRICTATIME, sys::MOUNT_ATTR_STRICTATIME),
    ] {
        if f.contains(ms) {
            a |= attr;
        }
    }
    a
}

/// Applies one planned mount: its target resolved inside the rootfs, then the
/// filesystem or bind from `prebuilt` (made by the outer process, see [`Prebuilt`]) or
/// made here. The kernel's filesystems (/proc, /dev, /sys, …) must land on real
/// directories: a symlink there is refused, as runc does, rather than followed (a
/// `/proc -> /` image would otherwise get proc mounted over its root).
pub fn apply(root: BorrowedFd<'_>, m: &Mount, prebuilt: Option<OwnedFd>) -> Result<(), RootfsError> {
    let tfd = if matches!(m.source, Source::Fs(_)) {
        let rel = m.target.trim_start_matches('/');
        let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(
            ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        match openat2(root, rel, how) {
            // No symlink on the way: this is the target (the common case, one lookup).
            Ok(fd) => check_kind(fd, &m.target, m.kind)?,
            Err(Errno::ELOOP | Errno::EXDEV) => {
                return Err(err("mount on", &m.target)(io::Error::other("the target is a symlink (refused)")))
            }
            Err(_) => target(root, &m.target, m.kind)?,
        }
    } else {
        target(root, &m.target, m.kind)?
    };
    // A target that resolves to the container's root itself (an image's `/data -> /`)
    // would cover the whole rootfs: refused.
    let (t, r) = (fstat(&tfd).map_err(nerr("stat", &m.target))?, fstat(root).map_err(nerr("stat", "/"))?);
    if (t.st_dev, t.st_ino) == (r.st_dev, r.st_ino) {
        return Err(err("mount on", &m.target)(io::Error::other(
            "the target resolves to the container's root (refused)",
        )));
    }
    let mnt = match prebuilt {
        Some(mnt) => mnt,
        None => source(m)?,
    };
    sys::move_mount_to_fd(mnt.as_fd(), tfd.as_fd()).map_err(err("mount on", &m.target))
}

/// The detached mount a planned mount attaches: a new filesystem (a /dev tmpfs with its
/// nodes and links made) or a clone of the bind source.
fn source(m: &Mount) -> Result<OwnedFd, RootfsError> {
    match &m.source {
        Source::Fs(fstype) => {
            let fc = FsContext::open(&CString::new(*fstype).unwrap_or_default()).map_err(err("fsopen", &m.target))?;
            for opt in m.data.split(',').filter(|o| !o.is_empty()) {
                let r = match opt.split_once('=') {
                    Some((k, v)) => fc.set_string(&cstring(k), &cstring(v)),
                    None => fc.set_flag(&cstring(opt)),
                };
                r.map_err(err("mount option", format!("{} ({opt})", m.target)))?;
            }
            let mnt = fc.mount(ms_to_attrs(m.flags)).map_err(err("mount", format!("{fstype} on {}", m.target)))?;
            if m.target == "/dev" {
                populate_dev(mnt.as_fd())?;
            }
            Ok(mnt)
        }
        Source::Bind(src) => {
            let t = sys::clone_tree(&cpath(src).map_err(err("bind", src))?, m.flags.contains(MsFlags::MS_REC))
                .map_err(err("bind", src))?;
            let attrs = ms_to_attrs(m.flags);
            if attrs != 0 {
                sys::mount_setattr(t.as_fd(), attrs, true).map_err(err("set flags of", &m.target))?;
            }
            Ok(t)
        }
    }
}

/// What the outer `coracle run` makes for the container while init sets up its
/// namespaces (the two run at once, on two CPUs), passed to init over a socket
/// (SCM_RIGHTS) in three messages, which init reads in this order:
///
/// 1. once the outer holds the image's layers: the scratch tmpfs with its directories
///    (with a store scratch, none: the outer made and filled the dir);
/// 2. the filesystems of the plan that are the same whoever makes them: tmpfs, devpts (a
///    new instance) and, on the host's network, sysfs; and the mask tmpfs;
/// 3. the container's IPC namespace ([`Prebuilt::send_ipc`]).
///
/// /proc belongs to the PID namespace of whoever mounts it, so init makes it (while it
/// waits for the first message: [`Prebuilt::make_own`]), and the mqueue of the IPC
/// namespace it has joined. The filesystems are detached mounts: in no
/// mount table, gone with the last fd; each is attached by [`apply`] after its target is
/// resolved inside the rootfs, as one made by init would be. Init makes anything the
/// outer failed to make, and reports its error.
#[derive(Default)]
pub struct Prebuilt {
    /// By index in the plan.
    mounts: Vec<Option<OwnedFd>>,
    /// The read-only empty tmpfs that masks directories ([`protect_paths`]).
    mask: Option<OwnedFd>,
}

/// The tags of the messages' descriptors that are not the plan's (whose tags are their
/// indexes, below these), and the tag of a message that carries none.
const MASK_TAG: u8 = u8::MAX;
const SCRATCH_TAG: u8 = u8::MAX - 1;
const IPC_TAG: u8 = u8::MAX - 2;
const NONE_TAG: u8 = u8::MAX - 3;
/// At most this many filesystems per message.
const MAX_PREBUILT: usize = 32;

/// One message: a tag byte per descriptor, the descriptors with SCM_RIGHTS; a message
/// with none is the one byte NONE_TAG (never empty: zero bytes read as the end).
fn send_tagged(sock: BorrowedFd<'_>, made: &[(u8, BorrowedFd<'_>)]) -> io::Result<()> {
    let tags: Vec<u8> = if made.is_empty() { vec![NONE_TAG] } else { made.iter().map(|(t, _)| *t).collect() };
    let raw: Vec<i32> = made.iter().map(|(_, f)| f.as_raw_fd()).collect();
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &[io::IoSlice::new(&tags)],
        if raw.is_empty() { &[] } else { &cmsg },
        // An init that died already: an error, not a SIGPIPE to forward.
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// The next message's descriptors with their tags; None at the end of the stream (the
/// outer process closed it or died) or on an error.
fn receive_tagged(sock: BorrowedFd<'_>) -> Option<Vec<(u8, OwnedFd)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut tags = [0u8; MAX_PREBUILT];
    let mut iov = [io::IoSliceMut::new(&mut tags)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_PREBUILT]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    let n = msg.bytes;
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS installed these descriptors in our table for us.
                fds.extend(raw.into_iter().map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }));
            }
        }
    }
    (n > 0).then(|| tags[..n].iter().copied().zip(fds).collect())
}

/// The descriptor tagged `tag` in a message, if any.
fn find_tagged(got: Vec<(u8, OwnedFd)>, tag: u8) -> Option<OwnedFd> {
    got.into_iter().find_map(|(t, fd)| (t == tag).then_some(fd))
}

impl Prebuilt {
    /// Outer side, first message, sent once the image's layers are pinned: the scratch
    /// tmpfs ([`scratch_fs`]), if one was made. Its /etc files may follow: init uses
    /// them only after the second message.
    pub fn send_scratch(sock: BorrowedFd<'_>, scratch: Option<BorrowedFd<'_>>) -> io::Result<()> {
        send_tagged(sock, &scratch.map(|f| (SCRATCH_TAG, f)).into_iter().collect::<Vec<_>>())
    }

    /// Init side: waits for the first message, then returns the scratch the outer sent,
    /// if it made one. An error if the outer process is gone.
    pub fn receive_scratch(sock: BorrowedFd<'_>) -> Result<Option<OwnedFd>, RootfsError> {
        match receive_tagged(sock) {
            Some(got) => Ok(find_tagged(got, SCRATCH_TAG)),
            // The outer process died: init is about to be killed (PR_SET_PDEATHSIG).
            None => Err(err("receive the scratch from", "coracle run")(io::ErrorKind::UnexpectedEof.into())),
        }
    }

    /// Outer side, second message: makes what qualifies in `plan` (and the mask tmpfs
    /// unless `privileged`) and sends it on `sock`. Best effort: what fails is left to
    /// init.
    pub fn send(sock: BorrowedFd<'_>, plan: &[Mount], network_none: bool, privileged: bool) -> io::Result<()> {
        let mut made = Vec::new();
        for (i, m) in plan.iter().enumerate() {
            let qualifies = match m.source {
                Source::Fs(fs) => fs == "tmpfs" || fs == "devpts" || (fs == "sysfs" && !network_none),
                Source::Bind(_) => false,
            };
            if qualifies && i < usize::from(NONE_TAG) && made.len() < MAX_PREBUILT {
                if let Ok(mnt) = source(m) {
                    made.push((i as u8, mnt));
                }
            }
        }
        if !privileged && made.len() < MAX_PREBUILT {
            if let Ok(mnt) = mask_fs() {
                made.push((MASK_TAG, mnt));
            }
        }
        send_tagged(sock, &made.iter().map(|(t, f)| (*t, f.as_fd())).collect::<Vec<_>>())
    }

    /// Init side: what the outer sent on `sock` for a plan of `len` mounts. Nothing
    /// (init then makes everything) if it sent nothing usable.
    pub fn receive(sock: BorrowedFd<'_>, len: usize) -> Prebuilt {
        let mut got = Prebuilt { mounts: std::iter::repeat_with(|| None).take(len).collect(), mask: None };
        for (tag, fd) in receive_tagged(sock).unwrap_or_default() {
            match got.mounts.get_mut(usize::from(tag)) {
                Some(slot) if tag < NONE_TAG => *slot = Some(fd),
                _ if tag == MASK_TAG => got.mask = Some(fd),
                _ => {}
            }
        }
        got
    }

    /// Outer side, third message: the container's IPC namespace (an nsfd), if made.
    pub fn send_ipc(sock: BorrowedFd<'_>, ns: Option<BorrowedFd<'_>>) -> io::Result<()> {
        send_tagged(sock, &ns.map(|f| (IPC_TAG, f)).into_iter().collect::<Vec<_>>())
    }

    /// Init side: the IPC namespace the outer sent, if it made one.
    pub fn receive_ipc(sock: BorrowedFd<'_>) -> Option<OwnedFd> {
        receive_tagged(sock).and_then(|got| find_tagged(got, IPC_TAG))
    }

    /// Init side, before the outer's first message: the filesystems of `plan` that belong
    /// to init's own new namespaces and need no rootfs to be made: /proc (the PID
    /// namespace) and, in a new network namespace, /sys. Best effort, like the outer's.
    pub fn make_own(plan: &[Mount], network_none: bool) -> Vec<(usize, OwnedFd)> {
        let own = |m: &Mount| match m.source {
            Source::Fs(fs) => fs == "proc" || (fs == "sysfs" && network_none),
            Source::Bind(_) => false,
        };
        plan.iter().enumerate().filter(|(_, m)| own(m)).filter_map(|(i, m)| Some((i, source(m).ok()?))).collect()
    }

    /// Adds what init made itself ([`Prebuilt::make_own`]).
    pub fn add(&mut self, made: Vec<(usize, OwnedFd)>) {
        for (i, fd) in made {
            if let Some(slot) = self.mounts.get_mut(i) {
                *slot = Some(fd);
            }
        }
    }

    /// The filesystem made for the plan's mount number `i`, if any.
    pub fn take(&mut self, i: usize) -> Option<OwnedFd> {
        self.mounts.get_mut(i).and_then(Option::take)
    }

    /// The mask tmpfs, if made.
    pub fn take_mask(&mut self) -> Option<OwnedFd> {
        self.mask.take()
    }
}

fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// Runs `f` with no umask, then puts the old one back: what it makes gets exactly the
/// modes asked for, whoever runs it (init has none during setup, the outer process has
/// its caller's). Both run single-threaded here.
fn without_umask<T>(f: impl FnOnce() -> T) -> T {
    let old = nix::sys::stat::umask(Mode::empty());
    let r = f();
    nix::sys::stat::umask(old);
    r
}

/// Device nodes and symlinks in the container's fresh /dev, given the root of its tmpfs.
fn populate_dev(dev: BorrowedFd<'_>) -> Result<(), RootfsError> {
    without_umask(|| {
        for d in DEVICES {
            mknodat(dev, d.name, SFlag::S_IFCHR, Mode::from_bits_truncate(d.mode), libc::makedev(d.major, d.minor))
                .map_err(nerr("mknod", format!("/dev/{}", d.name)))?;
        }
        Ok(())
    })?;
    for (name, to) in DEV_LINKS {
        symlinkat(*to, dev, *name).map_err(nerr("symlink", format!("/dev/{name}")))?;
    }
    Ok(())
}

/// The empty read-only tmpfs bound over masked directories.
fn mask_fs() -> io::Result<OwnedFd> {
    let fc = FsContext::open(c"tmpfs")?;
    fc.set_string(c"size", c"0")?;
    fc.mount(LOCKED)
}

/// Masks and read-only paths: read-only, nothing executable, no devices, no setuid.
const LOCKED: u64 = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC;

/// Masks and read-only paths (after /proc and /sys are mounted). Paths missing on this
/// kernel are skipped. `mask` is the outer's [`Prebuilt`] mask tmpfs, if it made one.
pub fn protect_paths(root: BorrowedFd<'_>, mut mask: Option<OwnedFd>) -> Result<(), RootfsError> {
    // Masked directories all get a bind of one empty read-only tmpfs, masked files one
    // of /dev/null: one superblock for all of them, each mount a cheap clone.
    let mut empty_dir: Option<OwnedFd> = None;
    let mut null: Option<OwnedFd> = None;
    for p in MASKED {
        let fd = match open_in_root(root, p, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ELOOP) => continue,
            Err(e) => return Err(nerr("resolve", p)(e)),
        };
        let st = fstat(&fd).map_err(nerr("stat", p))?;
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        let source = if is_dir { &mut empty_dir } else { &mut null };
        match source {
            Some(m) => {
                let mnt = sys::clone_tree_at(m.as_fd(), false).map_err(err("mask", p))?;
                sys::move_mount_to_fd(mnt.as_fd(), fd.as_fd()).map_err(err("mask", p))?;
            }
            None => {
                let mnt = if is_dir {
                    match mask.take() {
                        Some(m) => m,
                        None => mask_fs().map_err(err("mask", p))?,
                    }
                } else {
                    sys::clone_tree(c"/dev/null", false).map_err(err("mask", p))?
                };
                sys::move_mount_to_fd(mnt.as_fd(), fd.as_fd()).map_err(err("mask", p))?;
                // Attached now: the source of the clones for the other paths.
                *source = Some(mnt);
            }
        }
    }
    for p in READ_ONLY {
        let fd = match open_in_root(root, p, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ELOOP) => continue,
            Err(e) => return Err(nerr("resolve", p)(e)),
        };
        let t = sys::clone_tree_at(fd.as_fd(), true).map_err(err("bind", p))?;
        sys::mount_setattr(t.as_fd(), LOCKED, true).map_err(err("make read-only", p))?;
        sys::move_mount_to_fd(t.as_fd(), fd.as_fd()).map_err(err("make read-only", p))?;
    }
    Ok(())
}

/// pivot_root(2) into `root` and detach the old root (the `pivot_root(".", ".")` idiom
/// from the man page: no directory for the old root is needed).
pub fn pivot(root: BorrowedFd<'_>) -> Result<(), RootfsError> {
    fchdir(root).map_err(nerr("chdir", "rootfs"))?;
    pivot_root(".", ".").map_err(nerr("pivot_root", "rootfs"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(nerr("detach old root", "/"))?;
    nix::unistd::chdir("/").map_err(nerr("chdir", "/"))?;
    Ok(())
}

/// Reads a small regular file inside the container (after the pivot), refusing fifos and
/// devices an image could plant to block us.
pub fn read_small(path: &str, max: usize) -> io::Result<Option<String>> {
    let fd = match nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = fstat(&fd)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Ok(None);
    }
    let mut data = Vec::new();
    use std::io::Read;
    std::fs::File::from(fd).take(max as u64).read_to_end(&mut data)?;
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::mounts::{plan, PlanOptions};

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test makes filesystems and needs root: run `scripts/test` as root"
        );
    }

    /// The umask is the process's: tests that make files with exact modes (or set it)
    /// take turns.
    static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn received(network_none: bool, privileged: bool) -> (Vec<Mount>, Prebuilt) {
        require_root();
        let _turn = UMASK.lock().unwrap_or_else(|e| e.into_inner());
        let p = plan(&PlanOptions {
            privileged,
            tmpfs: vec!["/scratch".into()],
            etc_files: vec![("/etc/hostname".into(), "/etc/hostname")],
            ..Default::default()
        });
        let (tx, rx) = crate::run::tty::socketpair().unwrap();
        Prebuilt::send(tx.as_fd(), &p, network_none, privileged).unwrap();
        let got = Prebuilt::receive(rx.as_fd(), p.len());
        (p, got)
    }

    #[test]
    fn the_outer_makes_the_namespace_free_filesystems_and_init_gets_them_in_plan_order() {
        let (p, mut got) = received(false, false);
        let made: Vec<&str> = (0..p.len()).filter_map(|i| got.take(i).map(|_| p[i].target.as_str())).collect();
        // Not /proc (PID namespace), /dev/mqueue (IPC namespace) or binds.
        assert_eq!(made, ["/dev", "/dev/pts", "/dev/shm", "/sys", "/scratch"]);
        assert!(got.take(0).is_none(), "taken once");
        assert!(got.take_mask().is_some());

        // /dev arrives with its nodes and links.
        let (p, mut got) = received(false, false);
        let dev = got.take(p.iter().position(|m| m.target == "/dev").unwrap()).unwrap();
        let null = nix::sys::stat::fstatat(dev.as_fd(), "null", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        assert_eq!((null.st_mode & 0o177777, null.st_rdev), (0o020666, libc::makedev(1, 3)));
        let link = nix::fcntl::readlinkat(dev.as_fd(), "ptmx").unwrap();
        assert_eq!(link, std::ffi::OsString::from("pts/ptmx"));
    }

    #[test]
    fn a_new_network_namespace_gets_its_own_sysfs_and_privileged_no_masks() {
        let (p, mut got) = received(true, true);
        let made: Vec<&str> = (0..p.len()).filter_map(|i| got.take(i).map(|_| p[i].target.as_str())).collect();
        assert_eq!(made, ["/dev", "/dev/pts", "/dev/shm", "/scratch"]);
        assert!(got.take_mask().is_none());
    }

    #[test]
    fn the_scratch_comes_first_with_its_contents_and_exact_modes() {
        require_root();
        let _turn = UMASK.lock().unwrap_or_else(|e| e.into_inner());
        let (tx, rx) = crate::run::tty::socketpair().unwrap();
        let files = [("hostname", "box\n".to_owned())];
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
        let made = scratch_fs(Path::new("/scratch"), Some("1m"), &files);
        nix::sys::stat::umask(old);
        let made = made.unwrap();
        Prebuilt::send_scratch(tx.as_fd(), Some(made.as_fd())).unwrap();
        Prebuilt::send(tx.as_fd(), &[], false, true).unwrap();
        let scratch = Prebuilt::receive_scratch(rx.as_fd()).unwrap().expect("the scratch");
        for (name, mode) in [("upper", 0o040755), ("work", 0o040755), ("rootfs", 0o040755), ("hostname", 0o100644)] {
            let st = nix::sys::stat::fstatat(scratch.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
            assert_eq!(st.st_mode, mode, "{name}");
        }
        // The second message is the plan's (empty here).
        let mut rest = Prebuilt::receive(rx.as_fd(), 0);
        assert!(rest.take(0).is_none() && rest.take_mask().is_none());
    }

    #[test]
    fn a_message_without_descriptors_is_not_the_end() {
        let (tx, rx) = crate::run::tty::socketpair().unwrap();
        // A store scratch: the first message says "go" and carries nothing.
        Prebuilt::send_scratch(tx.as_fd(), None).unwrap();
        assert!(Prebuilt::receive_scratch(rx.as_fd()).unwrap().is_none());
        Prebuilt::send_ipc(tx.as_fd(), None).unwrap();
        assert!(Prebuilt::receive_ipc(rx.as_fd()).is_none());
        // The outer process gone before its first message: init must not go on.
        drop(tx);
        assert!(Prebuilt::receive_scratch(rx.as_fd()).is_err());
    }

    #[test]
    fn the_ipc_namespace_arrives_as_an_nsfd() {
        let (tx, rx) = crate::run::tty::socketpair().unwrap();
        let ns = std::fs::File::open("/proc/thread-self/ns/ipc").unwrap();
        let sent = nix::sys::stat::fstat(&ns).unwrap();
        Prebuilt::send_ipc(tx.as_fd(), Some(ns.as_fd())).unwrap();
        let got = nix::sys::stat::fstat(Prebuilt::receive_ipc(rx.as_fd()).expect("the namespace")).unwrap();
        assert_eq!((got.st_dev, got.st_ino), (sent.st_dev, sent.st_ino));
    }

    #[test]
    fn nothing_sent_means_init_makes_everything() {
        let (tx, rx) = crate::run::tty::socketpair().unwrap();
        drop(tx);
        let mut got = Prebuilt::receive(rx.as_fd(), 3);
        assert!((0..3).all(|i| got.take(i).is_none()) && got.take_mask().is_none());
    }
}
