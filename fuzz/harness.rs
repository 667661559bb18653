//! The checks behind every fuzz target, shared by the targets (`fuzz/fuzz_targets/*.rs`,
//! nightly + libFuzzer) and by `tests/fuzz_regressions.rs` (stable, `cargo test`), which
//! replays `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` through exactly this
//! code. Both include the file with `#[path = ...] mod harness;`, so it only uses crates
//! both have: coracle's own dependencies (tempfile, tar, flate2, nix, libc, serde).
//!
//! The layer targets extract into `parent/root/` of a per-process sandbox:
//!
//! ```text
//! <base>/outer-sentinel          a file next to `parent/`
//! <base>/parent/sentinel-file    a file next to the layer roots
//! <base>/parent/sentinel/        files, a dir, relative and absolute symlinks
//! <base>/parent/root/            the layer root (root1/ for a second layer)
//! ```
//!
//! After every extraction the sentinels must be unchanged (type, mode, owner, size, mtime,
//! ctime, inode, link count, content, symlink target, xattrs: ctime alone catches every
//! chmod, chown, xattr or link-count change) and neither `parent/` nor `<base>/` may hold
//! anything new. Under the fuzzer the process also runs in a private mount namespace in
//! which the host is read-only and the sandbox is a tmpfs ([`fuzz_init`]): an escape then
//! cannot damage the machine, and a write it attempts fails with EROFS, which the
//! targets treat as a containment failure too.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use coracle::digest::{Digest, Hasher};
use coracle::image::docker::{self, Selector};
use coracle::image::manifest::{self, Document};
use coracle::image::{archive::TarIndex, config, platform};
use coracle::layer::{self, Compression, LayerError, Limits, Unpacked};
use coracle::reference::Reference;
use coracle::store::Store;
use serde::{Deserialize, Serialize};

/// Every fuzz target; each has `fuzz/fuzz_targets/<name>.rs` and may have
/// `fuzz/seeds/<name>/` and `fuzz/regressions/<name>/`.
pub const TARGETS: &[&str] =
    &["layer_apply", "layer_structured", "manifest_parse", "config_parse", "reference_parse", "docker_manifest"];

/// Runs the check of `target` on one input, as the fuzz target does. The
/// `layer_structured` files in seeds/ and regressions/ are JSON [`Spec`]s (the fuzzer also
/// takes them as inputs; raw `arbitrary` bytes are not kept, they change meaning between
/// versions of the crate).
pub fn run(target: &str, sb: &Sandbox, data: &[u8]) {
    match target {
        "layer_apply" => layer_apply(sb, data),
        "layer_structured" => {
            let spec: Spec = serde_json::from_slice(data)
                .unwrap_or_else(|e| panic!("layer_structured inputs here must be JSON specs: {e}"));
            layer_structured(sb, &spec)
        }
        "manifest_parse" => manifest_parse(data),
        "config_parse" => config_parse(data),
        "reference_parse" => reference_parse(data),
        "docker_manifest" => docker_manifest(sb, data),
        other => panic!("unknown fuzz target {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The sandbox

const PARENT: &str = "parent";
const OUTER_SENTINEL: &str = "outer-sentinel";
const SENTINEL_FILE: &str = "sentinel-file";
const SENTINEL_DIR: &str = "sentinel";
/// An old, fixed mtime for every sentinel, so that any touch shows.
const SENTINEL_MTIME: u64 = 1_000_000_000;

pub struct Sandbox {
    base: PathBuf,
    parent: PathBuf,
    baseline: Tree,
    _tmp: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox in a new temporary directory: in /dev/shm when there is one (no disk
    /// syncs for the store's syncfs), else in the default temporary directory.
    pub fn new() -> Sandbox {
        let shm = Path::new("/dev/shm");
        let mut b = tempfile::Builder::new();
        b.prefix("coracle-fuzz-");
        let tmp = match b.tempdir_in(shm) {
            Ok(t) => t,
            Err(_) => b.tempdir().expect("create the sandbox directory"),
        };
        Sandbox::populate(tmp)
    }

    /// For a test thread that fuzzes in-process (tests/fuzz_smoke.rs): gives this thread
    /// alone a private mount namespace in which the host is read-only except the
    /// repository, mounts a tmpfs on `dir` (an empty directory the caller removes once
    /// the thread has ended) and makes the sandbox in it.
    pub fn isolated_in(dir: &Path) -> Result<Sandbox, String> {
        isolate(dir)?;
        let tmp = tempfile::Builder::new()
            .prefix("sandbox-")
            .tempdir_in(dir)
            .map_err(|e| format!("create the sandbox in {dir:?}: {e}"))?;
        Ok(Sandbox::populate(tmp))
    }

    fn populate(tmp: tempfile::TempDir) -> Sandbox {
        let base = tmp.path().to_path_buf();
        let parent = base.join(PARENT);
        let s = SentinelWriter;
        s.dir(&parent, 0o755);
        s.file(&base.join(OUTER_SENTINEL), b"outer sentinel\n", 0o640);
        s.file(&parent.join(SENTINEL_FILE), b"sentinel next to the layer roots\n", 0o600);
        let sent = parent.join(SENTINEL_DIR);
        s.dir(&sent, 0o750);
        s.file(&sent.join("file"), b"sentinel data\n", 0o644);
        s.file(&sent.join("exec"), b"#!/bin/sh\nexit 0\n", 0o755);
        s.dir(&sent.join("dir"), 0o700);
        s.file(&sent.join("dir/nested"), b"nested\n", 0o600);
        symlink("file", sent.join("link")).expect("sentinel symlink");
        symlink("../sentinel-file", sent.join("up")).expect("sentinel symlink");
        symlink(base.join(OUTER_SENTINEL), sent.join("abs")).expect("sentinel symlink");
        for d in [sent.join("dir"), sent.clone()] {
            s.times(&d);
        }
        let mut sb = Sandbox { base, parent, baseline: Tree::new(), _tmp: tmp };
        sb.baseline = sb.sentinels();
        sb
    }

    /// The sandbox's top directory (absolute).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `parent/<name>` (`sentinel/file`, `sentinel-file`, `root`, …).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.parent.join(name)
    }

    /// Removes everything from `parent/` but the sentinels.
    pub fn reset(&self) {
        for e in fs::read_dir(&self.parent).expect("list the sandbox").flatten() {
            let name = e.file_name();
            if name != SENTINEL_DIR && name != SENTINEL_FILE {
                force_remove(&e.path());
            }
        }
    }

    /// A new empty directory `parent/<name>` (mode 0755), as the store makes a layer root.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let p = self.dir(name);
        force_remove(&p);
        fs::create_dir(&p).expect("create a layer root");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod a layer root");
        p
    }

    fn sentinels(&self) -> Tree {
        let mut t = Tree::new();
        walk(&self.base, &self.base.join(OUTER_SENTINEL), &mut t);
        walk(&self.base, &self.parent.join(SENTINEL_FILE), &mut t);
        walk(&self.base, &self.parent.join(SENTINEL_DIR), &mut t);
        t
    }

    /// The containment check: sentinels unchanged, nothing new in `parent/` but `allowed`,
    /// nothing new next to `parent/`.
    pub fn check(&self, allowed: &[&str], what: &str) {
        let now = self.sentinels();
        if now != self.baseline {
            panic!("CONTAINMENT: {what} changed the sentinels next to the layer root:\n{}", diff(&self.baseline, &now));
        }
        let names = |dir: &Path| -> BTreeSet<String> {
            fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("CONTAINMENT: {what}: cannot list {dir:?}: {e}"))
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        };
        let extra: Vec<String> = names(&self.parent)
            .into_iter()
            .filter(|n| n != SENTINEL_DIR && n != SENTINEL_FILE && !allowed.contains(&n.as_str()))
            .collect();
        if !extra.is_empty() {
            panic!("CONTAINMENT: {what} created {extra:?} next to the layer root");
        }
        let top = names(&self.base);
        let want: BTreeSet<String> = [PARENT.to_owned(), OUTER_SENTINEL.to_owned()].into();
        if top != want {
            panic!("CONTAINMENT: {what} changed the sandbox's top directory: {top:?}");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Layer trees can hold mode-0 directories: make them removable for TempDir.
        if fs::remove_dir_all(&self.parent).is_err() {
            make_traversable(&self.parent);
        }
    }
}

struct SentinelWriter;

impl SentinelWriter {
    fn dir(&self, p: &Path, mode: u32) {
        fs::create_dir(p).expect("create sentinel dir");
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod sentinel");
    }
    fn file(&self, p: &Path, data: &[u8], mode: u32) {
        let mut f = File::create(p).expect("create sentinel");
        f.write_all(data).expect("write sentinel");
        f.set_permissions(fs::Permissions::from_mode(mode)).expect("chmod sentinel");
        drop(f);
        self.times(p);
    }
    fn times(&self, p: &Path) {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(SENTINEL_MTIME);
        let f = File::open(p).expect("open sentinel");
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).expect("set sentinel times");
    }
}

fn force_remove(p: &Path) {
    let Ok(md) = fs::symlink_metadata(p) else { return };
    if !md.is_dir() {
        fs::remove_file(p).unwrap_or_else(|e| panic!("remove {p:?}: {e}"));
        return;
    }
    if fs::remove_dir_all(p).is_ok() {
        return;
    }
    make_traversable(p);
    fs::remove_dir_all(p).unwrap_or_else(|e| panic!("remove {p:?}: {e}"));
}

/// chmod 0700 on every directory below `p` (not following symlinks).
fn make_traversable(p: &Path) {
    let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_traversable(&e.path());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tree snapshots

/// Relative path → what is there.
pub type Tree = BTreeMap<PathBuf, Node>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    nlink: u64,
    rdev: u64,
    /// Identity: a replaced, re-linked or chmod'ed file shows.
    ctime: (i64, i64),
    ino: u64,
    /// Regular files: digest of the data regions (offsets included).
    data: Option<Digest>,
    link: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Most file data a snapshot reads (sparse files can be huge and empty).
const MAX_SNAPSHOT_READ: u64 = 16 << 20;

/// Adds `path` (and below, for a directory) to `out`, keyed relative to `rel_to`. Two
/// snapshots of the same untouched tree are equal; [`Node::comparable`] drops what two
/// extractions of the same archive need not share.
fn walk(rel_to: &Path, path: &Path, out: &mut Tree) {
    let rel = path.strip_prefix(rel_to).unwrap_or(path).to_path_buf();
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) => {
            out.insert(rel, Node::missing(e.raw_os_error().unwrap_or(-1)));
            return;
        }
    };
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else {
        's'
    };
    let node = Node {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        mtime: (md.mtime(), md.mtime_nsec()),
        nlink: md.nlink(),
        rdev: md.rdev(),
        ctime: (md.ctime(), md.ctime_nsec()),
        ino: md.ino(),
        data: (kind == 'f').then(|| data_digest(path)),
        link: (kind == 'l').then(|| fs::read_link(path).map(|l| l.as_os_str().as_bytes().to_vec()).unwrap_or_default()),
        xattrs: xattrs(path),
    };
    out.insert(rel, node);
    if kind == 'd' {
        let mut children: Vec<PathBuf> = match fs::read_dir(path) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(_) => Vec::new(),
        };
        children.sort();
        for c in children {
            walk(rel_to, &c, out);
        }
    }
}

impl Node {
    /// What two extractions of the same archive agree on: not identity (inode, ctime),
    /// not what depends on when it ran (the mtime of directories a later entry changed,
    /// or that no entry names, and of whiteouts), not directory sizes.
    fn comparable(&self) -> Node {
        let whiteout = self.kind == 'c' && self.rdev == 0;
        let dir = self.kind == 'd';
        Node {
            ctime: (0, 0),
            ino: 0,
            size: if dir { 0 } else { self.size },
            nlink: if dir { 0 } else { self.nlink },
            mtime: if dir || whiteout { (0, 0) } else { self.mtime },
            ..self.clone()
        }
    }

    fn missing(errno: i32) -> Node {
        Node {
            kind: '?',
            mode: 0,
            uid: 0,
            gid: 0,
            size: errno as u64,
            mtime: (0, 0),
            nlink: 0,
            rdev: 0,
            ctime: (0, 0),
            ino: 0,
            data: None,
            link: None,
            xattrs: Vec::new(),
        }
    }
}

/// The data regions of a regular file (SEEK_DATA/SEEK_HOLE), hashed with their offsets.
fn data_digest(path: &Path) -> Digest {
    use nix::unistd::{lseek, Whence};
    use std::io::{Read, Seek, SeekFrom};
    let mut h = Hasher::new();
    let Ok(mut f) = File::open(path) else { return h.finish().0 };
    let mut read = 0u64;
    let mut pos = 0i64;
    let mut buf = Vec::new();
    while read < MAX_SNAPSHOT_READ {
        let Ok(start) = lseek(f.as_fd(), pos, Whence::SeekData) else { break };
        let end = lseek(f.as_fd(), start, Whence::SeekHole).unwrap_or(start);
        if end <= start {
            break;
        }
        h.update(format!("@{start}:").as_bytes());
        if f.seek(SeekFrom::Start(start as u64)).is_err() {
            break;
        }
        let want = ((end - start) as u64).min(MAX_SNAPSHOT_READ - read);
        buf.resize((want as usize).min(64 << 10), 0);
        let mut left = want;
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            match f.read(&mut buf[..n]) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    h.update(&buf[..k]);
                    left -= k as u64;
                }
            }
        }
        read += want;
        pos = end;
    }
    h.finish().0
}

fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return Vec::new() };
    // SAFETY: `c` is NUL-terminated; a zero size only asks for the length.
    let want = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if want <= 0 {
        return Vec::new();
    }
    let mut names = vec![0u8; want as usize];
    // SAFETY: `c` is NUL-terminated and `names` is writable for the length passed.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    names.truncate(n.max(0) as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(cn) = CString::new(name) else { continue };
        // SAFETY: both strings are NUL-terminated; a zero size only asks for the length.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        let mut value = vec![0u8; len.max(0) as usize];
        // SAFETY: both strings are NUL-terminated and `value` is writable for its length.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        value.truncate(m.max(0) as usize);
        out.push((name.to_vec(), value));
    }
    out.sort();
    out
}

fn diff(before: &Tree, after: &Tree) -> String {
    let mut s = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => s += &format!("  removed {k:?}: {v:?}\n"),
            Some(w) if w != v => s += &format!("  changed {k:?}:\n    before {v:?}\n    after  {w:?}\n"),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            s += &format!("  added {k:?}: {v:?}\n");
        }
    }
    s
}

/// A snapshot of an extracted layer (for comparing extractions), after checking what
/// every extracted layer must satisfy: no overlayfs xattrs from the archive (only the
/// opaque marker, `y`, on directories), and no hard link to a file outside the layer
/// (every regular file's link count is the number of its names in the tree).
pub fn layer_tree(root: &Path, what: &str) -> Tree {
    let mut full = Tree::new();
    walk(root, root, &mut full);
    let mut names_of: HashMap<u64, u64> = HashMap::new();
    for (p, n) in &full {
        for (k, v) in &n.xattrs {
            let overlay = k.starts_with(b"trusted.overlay.") || k.starts_with(b"user.overlay.");
            if overlay && !(k == b"trusted.overlay.opaque" && v == b"y" && n.kind == 'd') {
                panic!(
                    "{what}: {p:?} carries overlayfs xattr {}={:?}: only the opaque marker may be set",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                );
            }
        }
        if n.kind == 'f' {
            *names_of.entry(n.ino).or_default() += 1;
        }
    }
    for (p, n) in &full {
        if n.kind == 'f' && names_of[&n.ino] != n.nlink {
            panic!(
                "CONTAINMENT: {what}: {p:?} has {} links but {} names in the layer: hard link to a file outside",
                n.nlink, names_of[&n.ino]
            );
        }
    }
    full.into_iter().map(|(p, n)| (p, n.comparable())).collect()
}

// ---------------------------------------------------------------------------------------
// Layers

/// Extracts `blob` into `dir` with the store's entry point, `coracle::layer::unpack`.
fn unpack(dir: &Path, blob: &[u8]) -> Result<Unpacked, LayerError> {
    let fd: OwnedFd = File::open(dir).expect("open the layer root").into();
    layer::unpack(blob, None, fd, Limits { declared_size: None, reserve: 0 })
}

/// With `CORACLE_FUZZ_VERBOSE=1`, says how each step ended (to see what seeds reach).
fn note(what: &str, outcome: &dyn std::fmt::Debug) {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    if *VERBOSE.get_or_init(|| std::env::var_os("CORACLE_FUZZ_VERBOSE").is_some_and(|v| v == "1")) {
        eprintln!("harness: {what}: {outcome:?}");
    }
}

/// An error is fine, unless it shows a write outside the sandbox (EROFS: under the
/// fuzzer, everything but the sandbox is mounted read-only).
fn no_write_outside(what: &str, err: &dyn std::fmt::Display) {
    let s = err.to_string();
    if s.contains("(os error 30)") {
        panic!("CONTAINMENT: {what} tried to write outside the sandbox: {s}");
    }
}

/// What an unpack result must say about the bytes it was given: `blob`, and `stream`
/// when the uncompressed tar stream is known.
fn check_unpacked(what: &str, r: &Result<Unpacked, LayerError>, blob: &[u8], stream: Option<&[u8]>) {
    match r {
        Err(e) => no_write_outside(what, e),
        Ok(u) => {
            assert_eq!(u.blob_digest, Digest::of(blob), "{what}: blob digest");
            assert_eq!(u.blob_size, blob.len() as u64, "{what}: blob size");
            let stream = match (stream, u.compression) {
                (Some(s), _) => Some(s),
                (None, Compression::None) => Some(blob),
                (None, _) => None,
            };
            if let Some(s) = stream {
                assert_eq!(u.diff_id, Digest::of(s), "{what}: diff-id");
                assert_eq!(u.diff_size, s.len() as u64, "{what}: diff size");
            }
        }
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// Extracts `blob` into a fresh `parent/<dir>` and checks containment; on success also
/// returns the layer's snapshot.
fn extract(sb: &Sandbox, dir: &str, blob: &[u8], stream: Option<&[u8]>, allowed: &[&str], what: &str) -> Option<Tree> {
    let root = sb.fresh_dir(dir);
    let r = unpack(&root, blob);
    note(what, &r.as_ref().map(|u| u.stats).map_err(|e| e.to_string()));
    sb.check(allowed, what);
    check_unpacked(what, &r, blob, stream);
    r.ok().map(|_| layer_tree(&root, what))
}

/// `layer_apply`: the input is a layer blob (tar, or gzip/zstd as sniffed). Extracted once
/// as given and, when it is not compressed, once more gzipped: both must agree (the same
/// success, diff-id and tree).
pub fn layer_apply(sb: &Sandbox, data: &[u8]) {
    sb.reset();
    let plain = extract(sb, "root", data, None, &["root"], "layer_apply");
    if !matches!(Compression::sniff(data), Ok(Compression::None)) {
        return;
    }
    let gz = gzip(data);
    sb.reset();
    let packed = extract(sb, "root", &gz, Some(data), &["root"], "layer_apply (gzipped)");
    match (plain, packed) {
        (Some(a), Some(b)) if a != b => panic!("the same tar extracts differently gzipped:\n{}", diff(&a, &b)),
        (Some(_), None) | (None, Some(_)) => panic!("the same tar extracts plain or gzipped, not both"),
        _ => {}
    }
}

/// `layer_structured`: one or two layers rendered from a [`Spec`]. Two layers go into
/// separate roots (as the store extracts them: the first one is then a sentinel for the
/// second) or into the same root (no store does that, but the resolver must stay inside
/// whatever the root already holds).
pub fn layer_structured(sb: &Sandbox, spec: &Spec) {
    sb.reset();
    let layers: Vec<(Vec<u8>, Vec<u8>)> = spec.layers.iter().take(2).map(|l| l.render(sb.base())).collect();
    let Some((tar_a, blob_a)) = layers.first() else { return };
    let second = layers.get(1).filter(|_| spec.stack != Stack::Single);
    let allowed: &[&str] =
        if second.is_some() && spec.stack == Stack::Separate { &["root", "root1"] } else { &["root"] };
    extract(sb, "root", blob_a, Some(tar_a), allowed, "layer_structured (first layer)");
    let Some((tar_b, blob_b)) = second else { return };
    let root = sb.dir("root");
    match spec.stack {
        Stack::Separate => {
            let mut before = Tree::new();
            walk(&root, &root, &mut before);
            extract(sb, "root1", blob_b, Some(tar_b), allowed, "layer_structured (second layer)");
            let mut after = Tree::new();
            walk(&root, &root, &mut after);
            if before != after {
                panic!("CONTAINMENT: the second layer changed the first one's directory:\n{}", diff(&before, &after));
            }
        }
        _ => {
            let r = unpack(&root, blob_b);
            note("layer_structured (second layer, same root)", &r.as_ref().map(|u| u.stats).map_err(|e| e.to_string()));
            sb.check(allowed, "layer_structured (second layer, same root)");
            check_unpacked("layer_structured (same root)", &r, blob_b, Some(tar_b));
            if r.is_ok() {
                layer_tree(&root, "layer_structured (second layer, same root)");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Structure-aware layers: a list of entries rendered into a tar. The fuzz target builds a
// `Spec` with `arbitrary` (the derive only exists under cargo-fuzz's `cfg(fuzzing)`);
// seeds and regressions keep it as JSON.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct Spec {
    #[serde(default)]
    pub stack: Stack,
    /// The first two are used.
    pub layers: Vec<LayerSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Stack {
    /// The first layer only.
    #[default]
    Single,
    /// Each layer in its own directory, as the store does.
    Separate,
    /// The second layer on top of the first in the same directory.
    SameRoot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct LayerSpec {
    pub entries: Vec<EntrySpec>,
    #[serde(default)]
    pub gzip: bool,
    #[serde(default)]
    pub end: End,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum End {
    #[default]
    TwoZeroBlocks,
    OneZeroBlock,
    Eof,
    /// Bytes after the end-of-archive blocks (part of the diff-id).
    TrailingJunk(Vec<u8>),
    /// Bytes instead of the end-of-archive blocks.
    JunkInstead(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct EntrySpec {
    pub path: Name,
    pub kind: KindSpec,
    #[serde(default = "default_mode")]
    pub mode: u16,
    #[serde(default)]
    pub uid: Id,
    #[serde(default)]
    pub gid: Id,
    #[serde(default = "default_mtime")]
    pub mtime: u32,
    /// How the path is stored.
    #[serde(default)]
    pub name_enc: NameEnc,
    /// How a link target is stored.
    #[serde(default)]
    pub link_enc: NameEnc,
    #[serde(default)]
    pub pax: Vec<PaxRec>,
    /// Overrides the header's size field (the data written stays as it is).
    #[serde(default)]
    pub size_field: Option<Num>,
}

fn default_mode() -> u16 {
    0o755
}

fn default_mtime() -> u32 {
    1_700_000_000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum KindSpec {
    File(Vec<u8>),
    /// GNU sparse 1.0 (pax): regions as (gap before, length), then a hole of `tail` (any
    /// size: a file's apparent size is not bounded by the archive's).
    Sparse {
        regions: Vec<(u16, u8)>,
        tail: Num,
    },
    Dir,
    Symlink(Target),
    Hardlink(Target),
    Fifo,
    Char(u8, u8),
    Block(u8, u8),
    /// Any type byte with any data.
    Raw(u8, Vec<u8>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Id {
    #[default]
    Root,
    User,
    Nobody,
    /// u32::MAX, which no file may have.
    Max,
    /// Beyond 32 bits (base-256 numeric field).
    Huge,
}

impl Id {
    fn value(self) -> u64 {
        match self {
            Id::Root => 0,
            Id::User => 1000,
            Id::Nobody => 65534,
            Id::Max => u64::from(u32::MAX),
            Id::Huge => 1 << 40,
        }
    }
}

/// A size or id: the values where arithmetic breaks are likelier than from uniform bytes.
/// In JSON also a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Num {
    Small(u16),
    /// 2^64 - 1 - n
    BelowU64Max(u16),
    /// 2^63 - 1 - n
    BelowI64Max(u16),
    /// 2^32 - 1 - n
    BelowU32Max(u16),
    Any(u64),
}

impl Num {
    fn value(self) -> u64 {
        match self {
            Num::Small(n) => u64::from(n),
            Num::BelowU64Max(n) => u64::MAX - u64::from(n),
            Num::BelowI64Max(n) => i64::MAX as u64 - u64::from(n),
            Num::BelowU32Max(n) => u64::from(u32::MAX) - u64::from(n),
            Num::Any(n) => n,
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        #[derive(Deserialize)]
        enum Tagged {
            Small(u16),
            BelowU64Max(u16),
            BelowI64Max(u16),
            BelowU32Max(u16),
            Any(u64),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Plain(u64),
            Tagged(Tagged),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Plain(n) | Repr::Tagged(Tagged::Any(n)) => Num::Any(n),
            Repr::Tagged(Tagged::Small(n)) => Num::Small(n),
            Repr::Tagged(Tagged::BelowU64Max(n)) => Num::BelowU64Max(n),
            Repr::Tagged(Tagged::BelowI64Max(n)) => Num::BelowI64Max(n),
            Repr::Tagged(Tagged::BelowU32Max(n)) => Num::BelowU32Max(n),
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum NameEnc {
    /// The 100-byte header field (cut if longer).
    #[default]
    Plain,
    /// ustar: prefix + name split at a `/` when possible.
    Ustar,
    /// A GNU `L`/`K` member before the header.
    Gnu,
    /// A pax `path`/`linkpath` record.
    Pax,
    /// Both a GNU member and a pax record (pax wins).
    GnuAndPax,
}

/// A path. In JSON also a plain string, split at `/` (`"../sentinel/file"`, `"a/.wh.b"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct Name {
    pub absolute: bool,
    pub dot_slash: bool,
    pub comps: Vec<Comp>,
    pub trailing_slash: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NameRepr {
    Text(String),
    Full { absolute: bool, dot_slash: bool, comps: Vec<Comp>, trailing_slash: bool },
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        Ok(match NameRepr::deserialize(d)? {
            NameRepr::Full { absolute, dot_slash, comps, trailing_slash } => {
                Name { absolute, dot_slash, comps, trailing_slash }
            }
            NameRepr::Text(s) => {
                let absolute = s.starts_with('/');
                let trailing_slash = s.len() > 1 && s.ends_with('/');
                let inner = s.trim_start_matches('/').trim_end_matches('/');
                let comps = if inner.is_empty() { Vec::new() } else { inner.split('/').map(Comp::parse).collect() };
                Name { absolute, dot_slash: false, comps, trailing_slash }
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Comp {
    Word(Word),
    Dot,
    DotDot,
    /// An empty component: `a//b`.
    Empty,
    /// `.wh.<word>`: a whiteout.
    Whiteout(Word),
    /// `.wh..wh..opq`: an opaque marker.
    Opaque,
    /// `.wh..wh.plnk`: aufs metadata.
    AufsMeta,
    /// A component 1 to 300 bytes long.
    Long(u16),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Word {
    A,
    B,
    C,
    Dir,
    File,
    Link,
    Etc,
    /// The names of the sandbox's own entries, for `..` walks to aim at.
    Sentinel,
    SentinelFile,
    OuterSentinel,
    Parent,
    Root,
    Root1,
}

impl Comp {
    fn parse(c: &str) -> Comp {
        const WORDS: [Word; 13] = [
            Word::A,
            Word::B,
            Word::C,
            Word::Dir,
            Word::File,
            Word::Link,
            Word::Etc,
            Word::Sentinel,
            Word::SentinelFile,
            Word::OuterSentinel,
            Word::Parent,
            Word::Root,
            Word::Root1,
        ];
        let word = |w: &str| WORDS.into_iter().find(|x| x.name() == w);
        match c {
            "" => Comp::Empty,
            "." => Comp::Dot,
            ".." => Comp::DotDot,
            ".wh..wh..opq" => Comp::Opaque,
            ".wh..wh.plnk" => Comp::AufsMeta,
            _ => match (word(c), c.strip_prefix(".wh.").and_then(word)) {
                (Some(w), _) => Comp::Word(w),
                (None, Some(w)) => Comp::Whiteout(w),
                _ => Comp::Bytes(c.as_bytes().to_vec()),
            },
        }
    }
}

impl Word {
    fn name(self) -> &'static str {
        match self {
            Word::A => "a",
            Word::B => "b",
            Word::C => "c",
            Word::Dir => "dir",
            Word::File => "file",
            Word::Link => "link",
            Word::Etc => "etc",
            Word::Sentinel => SENTINEL_DIR,
            Word::SentinelFile => SENTINEL_FILE,
            Word::OuterSentinel => OUTER_SENTINEL,
            Word::Parent => PARENT,
            Word::Root => "root",
            Word::Root1 => "root1",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Target {
    Name(Name),
    /// `../` repeated (0 to 7 times), then a name.
    Up(u8, Name),
    /// An absolute name inside the sandbox: `<base>/<name>` (`parent/sentinel/file`, …).
    InSandbox(Name),
    Empty,
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum PaxRec {
    Xattr(XattrKey, Vec<u8>),
    /// `mtime=<secs>.<nanos>`, negative when `negative`.
    Mtime {
        secs: u32,
        nanos: u32,
        negative: bool,
    },
    Uid(Num),
    Gid(Num),
    /// Overrides the stored data size: the framing of everything after.
    Size(Num),
    Path(Name),
    Linkpath(Target),
    /// Sparse keys on their own (without the rest of a sparse entry).
    SparseKey(u8, Num),
    Raw(Vec<u8>, Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum XattrKey {
    UserA,
    UserB,
    TrustedA,
    SecurityCapability,
    OverlayOpaque,
    OverlayRedirect,
    OverlayOrigin,
    OverlayMetacopy,
    UserOverlayOpaque,
    Raw(Vec<u8>),
}

impl XattrKey {
    fn key(&self) -> Vec<u8> {
        match self {
            XattrKey::UserA => b"user.a".to_vec(),
            XattrKey::UserB => b"user.b".to_vec(),
            XattrKey::TrustedA => b"trusted.a".to_vec(),
            XattrKey::SecurityCapability => b"security.capability".to_vec(),
            XattrKey::OverlayOpaque => b"trusted.overlay.opaque".to_vec(),
            XattrKey::OverlayRedirect => b"trusted.overlay.redirect".to_vec(),
            XattrKey::OverlayOrigin => b"trusted.overlay.origin".to_vec(),
            XattrKey::OverlayMetacopy => b"trusted.overlay.metacopy".to_vec(),
            XattrKey::UserOverlayOpaque => b"user.overlay.opaque".to_vec(),
            XattrKey::Raw(k) => k.clone(),
        }
    }
}

impl Name {
    fn render(&self) -> Vec<u8> {
        let mut s = Vec::new();
        if self.absolute {
            s.push(b'/');
        }
        if self.dot_slash {
            s.extend_from_slice(b"./");
        }
        for (i, c) in self.comps.iter().enumerate() {
            if i > 0 {
                s.push(b'/');
            }
            match c {
                Comp::Word(w) => s.extend_from_slice(w.name().as_bytes()),
                Comp::Dot => s.push(b'.'),
                Comp::DotDot => s.extend_from_slice(b".."),
                Comp::Empty => {}
                Comp::Whiteout(w) => {
                    s.extend_from_slice(b".wh.");
                    s.extend_from_slice(w.name().as_bytes());
                }
                Comp::Opaque => s.extend_from_slice(b".wh..wh..opq"),
                Comp::AufsMeta => s.extend_from_slice(b".wh..wh.plnk"),
                Comp::Long(n) => s.extend(std::iter::repeat_n(b'l', 1 + usize::from(*n) % 300)),
                Comp::Bytes(b) => s.extend_from_slice(b),
            }
        }
        if self.trailing_slash {
            s.push(b'/');
        }
        s
    }
}

impl Target {
    fn render(&self, base: &Path) -> Vec<u8> {
        match self {
            Target::Name(n) => n.render(),
            Target::Up(k, n) => {
                let mut s = b"../".repeat(usize::from(*k % 8));
                s.extend(n.render());
                s
            }
            Target::InSandbox(n) => {
                let mut s = base.as_os_str().as_bytes().to_vec();
                s.push(b'/');
                s.extend(n.render());
                s
            }
            Target::Empty => Vec::new(),
            Target::Bytes(b) => b.clone(),
        }
    }
}

fn pax_record(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    let rest = k.len() + v.len() + 3;
    let mut n = rest + 1;
    while rest + n.to_string().len() != n {
        n = rest + n.to_string().len();
    }
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(k);
    out.push(b'=');
    out.extend_from_slice(v);
    out.push(b'\n');
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A header block with raw name bytes (the `tar` crate's setters refuse `..` and
/// absolute names, which is the point here).
fn header_block(typ: u8, name: &[u8], link: &[u8], size: u64, e: Option<&EntrySpec>, ustar: bool) -> Vec<u8> {
    let mut h = if ustar { tar::Header::new_ustar() } else { tar::Header::new_gnu() };
    let mut name_field = name;
    if let (true, Some(u)) = (ustar && name.len() > 100, h.as_ustar_mut()) {
        // Split at a '/' so that the prefix fits 155 bytes and the rest 100.
        if let Some(i) = (0..name.len()).rev().find(|&i| name[i] == b'/' && i <= 155 && name.len() - i - 1 <= 100) {
            u.prefix[..i].copy_from_slice(&name[..i]);
            name_field = &name[i + 1..];
        }
    }
    let old = h.as_old_mut();
    let n = name_field.len().min(100);
    old.name[..n].copy_from_slice(&name_field[..n]);
    let l = link.len().min(100);
    old.linkname[..l].copy_from_slice(&link[..l]);
    h.set_entry_type(tar::EntryType::new(typ));
    h.set_size(size);
    match e {
        Some(e) => {
            h.set_mode(u32::from(e.mode) & 0o7777);
            h.set_uid(e.uid.value());
            h.set_gid(e.gid.value());
            h.set_mtime(u64::from(e.mtime));
            if let KindSpec::Char(ma, mi) | KindSpec::Block(ma, mi) = e.kind {
                let _ = h.set_device_major(u32::from(ma));
                let _ = h.set_device_minor(u32::from(mi));
            }
        }
        None => h.set_mode(0o644),
    }
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A member with data: header, data, padding.
fn member(out: &mut Vec<u8>, typ: u8, name: &[u8], link: &[u8], data: &[u8], e: Option<&EntrySpec>, ustar: bool) {
    let size = e.and_then(|e| e.size_field).map_or(data.len() as u64, Num::value);
    out.extend(header_block(typ, name, link, size, e, ustar));
    out.extend_from_slice(data);
    pad(out);
}

impl LayerSpec {
    /// (tar stream, blob): the blob is the stream gzipped when `gzip`.
    pub fn render(&self, base: &Path) -> (Vec<u8>, Vec<u8>) {
        let mut out = Vec::new();
        for e in &self.entries {
            e.render(&mut out, base);
        }
        match &self.end {
            End::TwoZeroBlocks => out.extend([0u8; 1024]),
            End::OneZeroBlock => out.extend([0u8; 512]),
            End::Eof => {}
            End::TrailingJunk(j) => {
                out.extend([0u8; 1024]);
                out.extend_from_slice(j);
            }
            End::JunkInstead(j) => out.extend_from_slice(j),
        }
        let blob = if self.gzip { gzip(&out) } else { out.clone() };
        (out, blob)
    }
}

impl EntrySpec {
    fn render(&self, out: &mut Vec<u8>, base: &Path) {
        let mut path = self.path.render();
        let mut pax = Vec::new();
        let (typ, link, mut data): (u8, Vec<u8>, Vec<u8>) = match &self.kind {
            KindSpec::File(d) => (b'0', Vec::new(), d.clone()),
            KindSpec::Sparse { regions, tail } => {
                let mut map = Vec::new();
                let mut body = Vec::new();
                let mut end = 0u64;
                map.extend_from_slice(format!("{}\n", regions.len()).as_bytes());
                for (i, &(gap, len)) in regions.iter().enumerate() {
                    let off = end + u64::from(gap);
                    map.extend_from_slice(format!("{off}\n{len}\n").as_bytes());
                    body.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, usize::from(len)));
                    end = off + u64::from(len);
                }
                pad(&mut map);
                map.extend(body);
                pax_record(&mut pax, b"GNU.sparse.major", b"1");
                pax_record(&mut pax, b"GNU.sparse.minor", b"0");
                pax_record(&mut pax, b"GNU.sparse.name", &path);
                pax_record(&mut pax, b"GNU.sparse.realsize", end.saturating_add(tail.value()).to_string().as_bytes());
                path = b"GNUSparseFile.0/sparse".to_vec();
                (b'0', Vec::new(), map)
            }
            KindSpec::Dir => (b'5', Vec::new(), Vec::new()),
            KindSpec::Symlink(t) => (b'2', t.render(base), Vec::new()),
            KindSpec::Hardlink(t) => (b'1', t.render(base), Vec::new()),
            KindSpec::Fifo => (b'6', Vec::new(), Vec::new()),
            KindSpec::Char(..) => (b'3', Vec::new(), Vec::new()),
            KindSpec::Block(..) => (b'4', Vec::new(), Vec::new()),
            KindSpec::Raw(t, d) => (*t, Vec::new(), d.clone()),
        };
        for r in &self.pax {
            match r {
                PaxRec::Xattr(k, v) => {
                    let mut key = b"SCHILY.xattr.".to_vec();
                    key.extend(k.key());
                    pax_record(&mut pax, &key, v);
                }
                PaxRec::Mtime { secs, nanos, negative } => {
                    let v = format!("{}{secs}.{:09}", if *negative { "-" } else { "" }, nanos % 1_000_000_000);
                    pax_record(&mut pax, b"mtime", v.as_bytes());
                }
                PaxRec::Uid(v) => pax_record(&mut pax, b"uid", v.value().to_string().as_bytes()),
                PaxRec::Gid(v) => pax_record(&mut pax, b"gid", v.value().to_string().as_bytes()),
                PaxRec::Size(v) => pax_record(&mut pax, b"size", v.value().to_string().as_bytes()),
                PaxRec::Path(n) => pax_record(&mut pax, b"path", &n.render()),
                PaxRec::Linkpath(t) => pax_record(&mut pax, b"linkpath", &t.render(base)),
                PaxRec::SparseKey(k, v) => {
                    let keys: [&[u8]; 5] = [
                        b"GNU.sparse.major",
                        b"GNU.sparse.minor",
                        b"GNU.sparse.realsize",
                        b"GNU.sparse.size",
                        b"GNU.sparse.name",
                    ];
                    pax_record(&mut pax, keys[usize::from(*k) % keys.len()], v.value().to_string().as_bytes());
                }
                PaxRec::Raw(k, v) => pax_record(&mut pax, k, v),
            }
        }
        let ustar = self.name_enc == NameEnc::Ustar;
        let (mut hname, mut hlink) = (path.clone(), link.clone());
        if matches!(self.name_enc, NameEnc::Gnu | NameEnc::GnuAndPax) {
            let mut d = path.clone();
            d.push(0);
            member(out, b'L', b"././@LongLink", b"", &d, None, false);
            hname.truncate(100);
        }
        if matches!(self.link_enc, NameEnc::Gnu | NameEnc::GnuAndPax) && !link.is_empty() {
            let mut d = link.clone();
            d.push(0);
            member(out, b'K', b"././@LongLink", b"", &d, None, false);
            hlink.truncate(100);
        }
        let mut records = Vec::new();
        if matches!(self.name_enc, NameEnc::Pax | NameEnc::GnuAndPax) {
            pax_record(&mut records, b"path", &path);
            hname.truncate(100);
        }
        if matches!(self.link_enc, NameEnc::Pax | NameEnc::GnuAndPax) && !link.is_empty() {
            pax_record(&mut records, b"linkpath", &link);
            hlink.truncate(100);
        }
        records.extend(pax);
        if !records.is_empty() {
            member(out, b'x', b"PaxHeaders/entry", b"", &records, None, false);
        }
        if typ == b'1' || typ == b'2' || typ == b'5' {
            data.clear();
        }
        member(out, typ, &hname, &hlink, &data, Some(self), ustar);
    }
}

// ---------------------------------------------------------------------------------------
// Documents

/// The media types a descriptor can name for a manifest or index, and none.
const OUTER_TYPES: &[Option<&str>] = &[
    None,
    Some(""),
    Some(manifest::OCI_MANIFEST),
    Some(manifest::OCI_INDEX),
    Some(manifest::DOCKER_MANIFEST),
    Some(manifest::DOCKER_LIST),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    Some("application/octet-stream"),
];

/// `manifest_parse`: `manifest::parse` under every outer media type; what it accepts
/// must serialise and parse back to the same value (docker-archive imports store a
/// serialised `Manifest` and parse it again later).
pub fn manifest_parse(data: &[u8]) {
    for &outer in OUTER_TYPES {
        let doc = match manifest::parse(data, outer) {
            Ok(d) => d,
            Err(_) => continue,
        };
        let given = outer.filter(|o| !o.is_empty());
        match doc {
            Document::Manifest(m, kind) => {
                assert!(kind == manifest::OCI_MANIFEST || kind == manifest::DOCKER_MANIFEST, "manifest kind {kind}");
                if let Some(o) = given {
                    assert_eq!(kind, o, "a manifest reached as {o} parsed as {kind}");
                }
                assert!(m.layers.len() <= manifest::MAX_LAYERS);
                let bytes = serde_json::to_vec(&m).expect("a parsed manifest serialises");
                match manifest::parse(&bytes, outer) {
                    Ok(Document::Manifest(m2, kind2)) => {
                        assert_eq!(m2, m, "manifest round trip (outer {outer:?})");
                        assert_eq!(kind2, kind, "manifest kind round trip");
                        assert_eq!(serde_json::to_vec(&m2).unwrap(), bytes, "manifest serialisation is stable");
                    }
                    other => panic!("manifest {m:?} serialised to {:?}, which parses as {other:?}", lossy(&bytes)),
                }
            }
            Document::Index(idx) => {
                if let Some(o) = given {
                    assert!(o == manifest::OCI_INDEX || o == manifest::DOCKER_LIST, "an index reached as {o}");
                }
                let bytes = serde_json::to_vec(&idx).expect("a parsed index serialises");
                match manifest::parse(&bytes, outer) {
                    Ok(Document::Index(i2)) => {
                        assert_eq!(i2, idx, "index round trip (outer {outer:?})");
                        assert_eq!(serde_json::to_vec(&i2).unwrap(), bytes, "index serialisation is stable");
                    }
                    other => panic!("index {idx:?} serialised to {:?}, which parses as {other:?}", lossy(&bytes)),
                }
            }
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `config_parse`: the image config parser; what it accepts has one validated diff-id
/// per rootfs entry and an already normalised platform.
pub fn config_parse(data: &[u8]) {
    let Ok(c) = config::parse(&Digest::of(data), data) else { return };
    let raw_ids = c.raw.rootfs().diff_ids();
    assert_eq!(c.diff_ids.len(), raw_ids.len());
    for (d, s) in c.diff_ids.iter().zip(raw_ids) {
        assert_eq!(&d.to_string(), s, "a diff-id reads back as it was written");
    }
    let p = &c.platform;
    let again = platform::normalize(&p.os, &p.architecture, p.variant.as_deref());
    assert_eq!(&again, p, "platform normalisation is idempotent");
    let _ = p.to_string();
}

/// `reference_parse`: a parsed reference prints as a string that parses back to it (the
/// store keeps names as that string and parses them again to list them), and so does its
/// short (familiar) form.
pub fn reference_parse(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(r) = s.parse::<Reference>() else { return };
    let shown = r.to_string();
    let again: Reference =
        shown.parse().unwrap_or_else(|e| panic!("{s:?} parses, but its normal form {shown:?} does not: {e}"));
    assert_eq!(again, r, "{s:?}: its normal form {shown:?} parses to another reference");
    assert_eq!(again.to_string(), shown);
    let familiar = r.familiar();
    let f: Reference =
        familiar.parse().unwrap_or_else(|e| panic!("{s:?} parses, but its short form {familiar:?} does not: {e}"));
    assert_eq!(f, r, "{s:?}: its short form {familiar:?} parses to another reference");
}

// ---------------------------------------------------------------------------------------
// docker-archive manifest.json

/// The members of the archive around the fuzzed `manifest.json`, by name:
/// `config.json` (one layer: `layer.tar`), `config-two.json` (`layer.tar`, `layer2.tar`),
/// `config-empty.json` (no layers), `config-bad.json` (rootfs type "foo"), `layer.tar`,
/// `layer.tar.gz`, `layer2.tar` (a whiteout and an opaque dir), `layer.zst` (zstd magic),
/// `empty`, the Docker 25 names `blobs/sha256/<hex>` of the config, `layer.tar` and
/// `layer.tar.gz` (a hard link), and symlinks `link.tar` → `layer.tar`, `sub/up.tar` →
/// `../layer.tar`, `loop1` ↔ `loop2`, `escape.tar` → `../../../../etc/passwd`.
fn docker_members() -> &'static [u8] {
    static MEMBERS: OnceLock<Vec<u8>> = OnceLock::new();
    MEMBERS.get_or_init(|| {
        let mut layer = tar::Builder::new(Vec::new());
        let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, typ: tar::EntryType, data: &[u8], link: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(typ);
            h.set_mode(if typ == tar::EntryType::Directory { 0o755 } else { 0o644 });
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            b.append_data(&mut h, name, data).unwrap();
        };
        add(&mut layer, "etc/", tar::EntryType::Directory, b"", "");
        add(&mut layer, "etc/hostname", tar::EntryType::Regular, b"fuzz\n", "");
        add(&mut layer, "bin", tar::EntryType::Symlink, b"", "usr/bin");
        let layer = layer.into_inner().unwrap();
        let mut layer2 = tar::Builder::new(Vec::new());
        add(&mut layer2, "etc/.wh.hostname", tar::EntryType::Regular, b"", "");
        add(&mut layer2, "var/.wh..wh..opq", tar::EntryType::Regular, b"", "");
        add(&mut layer2, "var/x", tar::EntryType::Regular, b"x", "");
        let layer2 = layer2.into_inner().unwrap();
        let gz = gzip(&layer);
        let config = |ids: &[&Digest], typ: &str| {
            let ids: Vec<String> = ids.iter().map(|d| d.to_string()).collect();
            serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": typ, "diff_ids": ids},
            }))
            .unwrap()
        };
        let (d1, d2) = (Digest::of(&layer), Digest::of(&layer2));
        let cfg = config(&[&d1], "layers");
        let mut zst = vec![0x28, 0xb5, 0x2f, 0xfd];
        zst.extend_from_slice(b"not really zstd");
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("config.json", cfg.clone()),
            ("config-two.json", config(&[&d1, &d2], "layers")),
            ("config-empty.json", config(&[], "layers")),
            ("config-bad.json", config(&[&d1], "foo")),
            ("layer.tar", layer.clone()),
            ("layer.tar.gz", gz.clone()),
            ("layer2.tar", layer2),
            ("layer.zst", zst),
            ("empty", Vec::new()),
            (&format!("blobs/sha256/{}", Digest::of(&cfg).hex()), cfg.clone()),
            (&format!("blobs/sha256/{}", d1.hex()), layer),
        ] {
            add(&mut b, name, tar::EntryType::Regular, &data, "");
        }
        add(&mut b, &format!("blobs/sha256/{}", Digest::of(&gz).hex()), tar::EntryType::Link, b"", "layer.tar.gz");
        add(&mut b, "link.tar", tar::EntryType::Symlink, b"", "layer.tar");
        add(&mut b, "sub/up.tar", tar::EntryType::Symlink, b"", "../layer.tar");
        add(&mut b, "loop1", tar::EntryType::Symlink, b"", "loop2");
        add(&mut b, "loop2", tar::EntryType::Symlink, b"", "loop1");
        add(&mut b, "escape.tar", tar::EntryType::Symlink, b"", "../../../../etc/passwd");
        let mut v = b.into_inner().unwrap();
        // No end-of-archive blocks: manifest.json is appended per input.
        while v.len() >= 512 && v[v.len() - 512..].iter().all(|&x| x == 0) {
            v.truncate(v.len() - 512);
        }
        v
    })
}

/// `docker_manifest`: the input is the `manifest.json` of a `docker save` archive whose
/// other members are fixed ([`docker_members`]); the archive is imported with the real
/// entry point into a fresh store in the sandbox. What an import accepts must leave a
/// store that `fsck` finds clean, with every name listed and every manifest readable.
pub fn docker_manifest(sb: &Sandbox, data: &[u8]) {
    sb.reset();
    let mut archive = docker_members().to_vec();
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_path("manifest.json").unwrap();
    h.set_cksum();
    archive.extend_from_slice(h.as_bytes());
    archive.extend_from_slice(data);
    pad(&mut archive);
    archive.extend([0u8; 1024]);
    let path = sb.dir("archive.tar");
    fs::write(&path, &archive).expect("write the archive");
    let index = TarIndex::build(File::open(&path).expect("open the archive")).expect("index the archive");
    let store = Store::open(&sb.dir("store")).expect("open the store");
    let r = docker::import_archive(&store, &index, "docker-archive:fuzz.tar", &Selector::All, None);
    note(
        "docker_manifest",
        &r.as_ref().map(|v| v.iter().map(|i| i.names.len()).collect::<Vec<_>>()).map_err(|e| e.to_string()),
    );
    sb.check(&["store", "archive.tar"], "docker_manifest");
    let imported = match r {
        Ok(i) => i,
        Err(e) => return no_write_outside("docker_manifest", &e),
    };
    let refs = store.list_refs().expect("list refs");
    for im in &imported {
        for n in &im.names {
            assert_eq!(n.to_string().parse::<Reference>().as_ref(), Ok(n), "name {n} does not read back");
            assert!(
                refs.iter().any(|(r, d)| r == n && *d == im.record.digest),
                "name {n} of {} is not listed in the store: {refs:?}",
                im.record.digest
            );
        }
        let rec = store.get_image(&im.record.digest).expect("read record").expect("the image record exists");
        assert_eq!(rec.digest, im.record.digest);
        let bytes = store.read_blob(&rec.digest).expect("the manifest blob exists");
        match manifest::parse(&bytes, Some(&rec.media_type)) {
            Ok(Document::Manifest(m, _)) => assert_eq!(m.layers.len(), rec.layers.len()),
            other => panic!("the stored manifest of {} does not parse as one: {other:?}", rec.digest),
        }
    }
    let report = store.fsck(false).expect("fsck");
    assert!(report.clean(), "fsck after an import: {:?}", report.problems);
}

// ---------------------------------------------------------------------------------------
// Under the fuzzer

static FUZZ_SANDBOX: OnceLock<Mutex<Sandbox>> = OnceLock::new();

/// The fuzz targets' `init`: a private mount namespace in which the whole host is
/// read-only except the fuzz directory (corpus, artifacts) and the sandbox, a tmpfs; then
/// the sandbox. Runs before libFuzzer starts threads. `CORACLE_FUZZ_ISOLATE=0`, or not
/// being root, skips the namespace (with a warning).
pub fn fuzz_init() {
    let tmp = tempfile::Builder::new().prefix("coracle-fuzz-").tempdir().expect("create the sandbox directory");
    if std::env::var_os("CORACLE_FUZZ_ISOLATE").is_some_and(|v| v == "0") {
        eprintln!("harness: CORACLE_FUZZ_ISOLATE=0: no mount namespace, the host is writable");
    } else {
        match isolate(tmp.path()) {
            Ok(()) => eprintln!("harness: private mount namespace, host read-only, sandbox tmpfs at {:?}", tmp.path()),
            Err(e) => eprintln!("harness: WARNING: no mount isolation ({e}); sandbox at {:?}", tmp.path()),
        }
    }
    let _ = FUZZ_SANDBOX.set(Mutex::new(Sandbox::populate(tmp)));
}

pub fn fuzz_sandbox() -> MutexGuard<'static, Sandbox> {
    FUZZ_SANDBOX.get().expect("fuzz_init ran").lock().unwrap_or_else(|e| e.into_inner())
}

/// Paths libFuzzer writes: the fuzz directory, the corpus directories and artifact
/// prefix on the command line, `CORACLE_FUZZ_DUMP`'s directory, and the working
/// directory when no artifact prefix is given.
fn writable_paths() -> Vec<PathBuf> {
    let mut w = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    let mut prefix = false;
    let parent_of = |p: &str| Path::new(p).parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty());
    for a in std::env::args().skip(1) {
        if let Some(p) = a.strip_prefix("-artifact_prefix=") {
            prefix = true;
            w.extend(if p.ends_with('/') { Some(PathBuf::from(p)) } else { parent_of(p) });
        } else if let Some(p) = a.strip_prefix("-exact_artifact_path=") {
            prefix = true;
            w.extend(parent_of(p));
        } else if !a.starts_with('-') && Path::new(&a).is_dir() {
            w.push(PathBuf::from(a));
        }
    }
    if let Some(d) = std::env::var_os("CORACLE_FUZZ_DUMP") {
        w.extend(Path::new(&d).parent().map(Path::to_path_buf));
    }
    if !prefix {
        w.extend(std::env::current_dir().ok());
    }
    w.into_iter().filter_map(|p| p.canonicalize().ok()).filter(|p| p.is_dir()).collect()
}

fn isolate(sandbox: &Path) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let none: Option<&str> = None;
    let writable = writable_paths();
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(|e| format!("make / private: {e}"))?;
    let root = File::open("/").map_err(|e| format!("open /: {e}"))?;
    coracle::sys::mount_setattr(root.as_fd(), coracle::sys::MOUNT_ATTR_RDONLY, true)
        .map_err(|e| format!("make / read-only: {e}"))?;
    for p in &writable {
        mount(Some(p), p, none, MsFlags::MS_BIND | MsFlags::MS_REC, none).map_err(|e| format!("bind {p:?}: {e}"))?;
        mount(none, p, none, MsFlags::MS_REMOUNT | MsFlags::MS_BIND, none)
            .map_err(|e| format!("make {p:?} writable: {e}"))?;
    }
    mount(Some("tmpfs"), sandbox, Some("tmpfs"), MsFlags::MS_NOSUID, Some("size=1g,mode=0700"))
        .map_err(|e| format!("mount the sandbox tmpfs: {e}"))?;
    Ok(())
}
