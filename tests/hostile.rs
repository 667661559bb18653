//! Hostile input to `pull`, `load` and `import`: every case must end in one clear
//! `coracle: ...` line (exit 125) naming the culprit, leave a host sentinel outside the
//! store byte-for-byte unchanged, and commit nothing partial to the store (containerd's
//! TestBreakouts, as a table per input kind). Cases that may legitimately succeed (a later
//! entry replacing a planted symlink, forbidden xattrs that are dropped) still must not
//! touch the sentinel.

mod util;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::*;

// ---------------------------------------------------------------------------------------
// The sandbox: a private store, a sentinel beside it, and snapshots of everything but the
// store.

/// Paths a case needs to aim at the sentinel.
struct Ctx {
    /// Absolute path of the sentinel dir (`/tmp/coracle-test-XXXX/sentinel`).
    abs: String,
    /// The sentinel seen from a layer's extraction root (`<store>/tmp/layer-X/root`).
    up: String,
    /// The sentinel through twice as many `..` as there are levels (`../../…/tmp/…`).
    deep: String,
}

struct Sandbox {
    env: Env,
    ctx: Ctx,
}

impl Sandbox {
    fn new() -> Sandbox {
        let env = Env::new();
        // The store exists before the "before" snapshot, so that creating it does not
        // count as a change to the directory around it.
        env.ok(&["images"]);
        let s = env.path("sentinel");
        std::fs::create_dir_all(s.join("dir")).unwrap();
        std::fs::write(s.join("file"), b"sentinel file\n").unwrap();
        std::fs::write(s.join("dir/inner"), b"inner\n").unwrap();
        let abs = s.to_str().unwrap().to_owned();
        let ctx = Ctx { up: "../../../../sentinel".into(), deep: format!("{}{}", "../".repeat(12), &abs[1..]), abs };
        Sandbox { env, ctx }
    }

    /// Everything under the test's temp dir except the store: the sentinel, the inputs,
    /// and the directory itself (a `../x` that got through would land there).
    fn snapshot(&self) -> String {
        let root = self.env.dir.path();
        let mut out = String::new();
        let mut paths = Vec::new();
        walk(root, root, &mut out, &mut paths);
        let o = Command::new("getfattr")
            .args(["-h", "-d", "-m", "-", "--absolute-names"])
            .args(&paths)
            .output()
            .expect("getfattr is missing: install the `attr` package");
        out.push_str(&String::from_utf8_lossy(&o.stdout));
        out
    }

    fn assert_nothing_committed(&self, case: &str) {
        assert_eq!(self.env.store_objects(), Vec::<String>::new(), "{case}: something was committed to the store");
        self.assert_store_clean(case);
    }

    fn assert_store_clean(&self, case: &str) {
        let tmp: Vec<_> = std::fs::read_dir(self.env.root().join("tmp")).unwrap().flatten().map(|e| e.path()).collect();
        assert!(tmp.is_empty(), "{case}: debris left in the store's tmp/: {tmp:?}");
        let o = self.env.run(&["fsck"]);
        assert!(o.status(), "{case}: fsck after the import failed: {}{}", o.stdout(), o.stderr());
    }
}

fn walk(root: &Path, p: &Path, out: &mut String, paths: &mut Vec<PathBuf>) {
    let rel = p.strip_prefix(root).unwrap();
    if rel == Path::new("store") || rel == Path::new("state") {
        return;
    }
    let md = std::fs::symlink_metadata(p).unwrap();
    let ft = md.file_type();
    #[rustfmt::skip]
    let _ = write!(
        out,
        "{} type={} mode={:o} uid={} gid={} nlink={} ino={} size={} mtime={}.{} ctime={}.{}",
        rel.display(),
        if ft.is_dir() { "d" } else if ft.is_symlink() { "l" } else if ft.is_file() { "f" } else { "?" },
        md.mode(), md.uid(), md.gid(), md.nlink(), md.ino(), md.size(),
        md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec(),
    );
    if ft.is_file() {
        let _ = write!(out, " sha256={}", sha256(&std::fs::read(p).unwrap()));
    } else if ft.is_symlink() {
        let _ = write!(out, " -> {}", std::fs::read_link(p).unwrap().display());
    }
    out.push('\n');
    paths.push(p.to_path_buf());
    if ft.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(p).unwrap().flatten().map(|e| e.path()).collect();
        children.sort();
        for c in children {
            walk(root, &c, out, paths);
        }
    }
}

/// The sentinel check is only as good as the snapshot: it must see every kind of change
/// a breakout could make.
#[test]
fn snapshot_sees_every_change_a_breakout_could_make() {
    require_root();
    type Change = fn(&Path);
    let changes: Vec<(&str, Change)> = vec![
        ("content", |s| std::fs::write(s.join("file"), b"sentinel filf\n").unwrap()),
        ("mode", |s| {
            std::fs::set_permissions(s.join("file"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap()
        }),
        ("owner", |s| std::os::unix::fs::lchown(s.join("dir"), Some(1), None).unwrap()),
        ("mtime", |s| {
            let f = std::fs::File::options().write(true).open(s.join("file")).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(12345)).unwrap();
        }),
        ("hardlinked_from_elsewhere", |s| std::fs::hard_link(s.join("file"), s.join("../store/tmp/hl")).unwrap()),
        ("xattr", |s| {
            sh(Command::new("setfattr").args(["-n", "trusted.overlay.opaque", "-v", "y"]).arg(s.join("dir")));
        }),
        ("new_file_beside", |s| std::fs::write(s.join("../x"), b"").unwrap()),
        ("removed", |s| std::fs::remove_file(s.join("dir/inner")).unwrap()),
    ];
    for (name, change) in changes {
        let sb = Sandbox::new();
        let before = sb.snapshot();
        change(&sb.env.path("sentinel"));
        assert_ne!(sb.snapshot(), before, "the snapshot misses a change of {name}");
    }
}

/// Runs coracle with a deadline (a hang is a failure too, and a hung child is killed by
/// its pid, never by name).
fn run_for(env: &Env, args: &[&str], limit: Duration) -> Out {
    run_watching(env, args, limit, || {})
}

/// Like [`run_for`], calling `watch` every few milliseconds while coracle runs.
fn run_watching(env: &Env, args: &[&str], limit: Duration, mut watch: impl FnMut()) -> Out {
    let mut child =
        env.cmd().args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut pipes = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = (
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipes.0.read_to_end(&mut v);
            v
        }),
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipes.1.read_to_end(&mut v);
            v
        }),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("coracle {args:?} still running after {limit:?}: killed (a hang is a failure)");
        }
        watch();
        std::thread::sleep(Duration::from_millis(20));
    };
    Out(std::process::Output { status, stdout: readers.0.join().unwrap(), stderr: readers.1.join().unwrap() })
}

const LIMIT: Duration = Duration::from_secs(120);

/// Runs every row of a table, each in its own sandbox; reports all failing rows by name.
fn run_table<T>(table: &str, rows: Vec<(&'static str, T)>, run: impl Fn(&'static str, &T)) {
    let mut names = std::collections::HashSet::new();
    let mut failed = Vec::new();
    for (name, row) in &rows {
        assert!(names.insert(*name), "{table}: duplicate row name {name}");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(name, row)));
        if r.is_err() {
            eprintln!("^^^ {table}: row {name} FAILED");
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "{table}: {} of {} rows failed: {failed:?}", failed.len(), rows.len());
}

/// Runs `args`, expects a one-line error naming `needle`, the sentinel untouched and the
/// store unchanged.
fn expect_refused(sb: &Sandbox, case: &str, args: &[&str], needle: &str) -> Out {
    let before = sb.snapshot();
    let out = run_for(&sb.env, args, LIMIT);
    eprintln!("{case}: {}", out.stderr().trim_end());
    out.assert_error(needle);
    assert_eq!(sb.snapshot(), before, "{case}: something outside the store changed");
    sb.assert_nothing_committed(case);
    out
}

// ---------------------------------------------------------------------------------------
// Building hostile tar streams.

const MTIME: u64 = 1_700_000_000;

fn hdr(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(MTIME);
    h
}

/// A symlink or hardlink header with the link name written raw (the tar crate would
/// normalise it).
fn link_hdr(kind: tar::EntryType, target: &str) -> tar::Header {
    let mut h = hdr(kind, if kind == tar::EntryType::Symlink { 0o777 } else { 0o644 }, 0);
    let gnu = h.as_gnu_mut().unwrap();
    assert!(target.len() < 100, "link target too long for a raw header: {target}");
    gnu.linkname = [0; 100];
    gnu.linkname[..target.len()].copy_from_slice(target.as_bytes());
    h
}

trait Hostile: Sized {
    fn raw_file(self, name: &str, data: &[u8]) -> Self;
    fn raw_dir(self, name: &str) -> Self;
    fn raw_symlink(self, name: &str, target: &str) -> Self;
    fn raw_hardlink(self, name: &str, target: &str) -> Self;
    fn pax(self, records: &[(&str, &[u8])]) -> Self;
}

impl Hostile for LayerBuilder {
    fn raw_file(self, name: &str, data: &[u8]) -> Self {
        self.raw(hdr(tar::EntryType::Regular, 0o644, data.len() as u64), name, None, data)
    }
    fn raw_dir(self, name: &str) -> Self {
        self.raw(hdr(tar::EntryType::Directory, 0o755, 0), name, None, &[])
    }
    fn raw_symlink(self, name: &str, target: &str) -> Self {
        self.raw(link_hdr(tar::EntryType::Symlink, target), name, None, &[])
    }
    fn raw_hardlink(self, name: &str, target: &str) -> Self {
        self.raw(link_hdr(tar::EntryType::Link, target), name, None, &[])
    }
    /// A pax extended header (`x`) that applies to the next entry.
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let data = pax_records(records);
        self.raw(hdr(tar::EntryType::XHeader, 0o644, data.len() as u64), "././@PaxHeader", None, &data)
    }
}

/// `LEN key=value\n` records; LEN counts itself.
fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len = len.to_string().len() + rest;
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// A GNU long-name entry (`L`) carrying `name` (as is: add the NUL GNU tar writes
/// yourself), then a file under a short name.
fn gnu_long_name_file(name: &[u8]) -> Vec<u8> {
    let data = name.to_vec();
    LayerBuilder::new()
        .raw(hdr(tar::EntryType::GNULongName, 0o644, data.len() as u64), "././@LongLink", None, &data)
        .raw_file("short", b"x")
        .finish()
}

/// Deterministic junk.
fn junk(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn small_file_layer() -> Vec<u8> {
    LayerBuilder::new().dir("etc", 0o755).file("etc/hello", 0o644, b"hello, world\n").finish()
}

// ---------------------------------------------------------------------------------------
// Layer contents: every row is pulled from an OCI layout and imported as a rootfs tarball.

type LayerCase = fn(&Ctx) -> (Vec<u8>, Comp, String);

fn refused_entry(path: &str, why: &str) -> String {
    format!("tar entry {path:?}: {why}")
}

const THROUGH: &str = "a parent directory is a symlink or not a directory";
const DOTDOT: &str = "name contains a '..' component";
const ABSOLUTE: &str = "absolute name";

#[rustfmt::skip]
fn layer_cases() -> Vec<(&'static str, LayerCase)> {
    use tar::EntryType as T;
    vec![
        // `..` and absolute names.
        ("dotdot_file_to_sentinel", |c| {
            let n = format!("{}/pwned", c.up);
            (LayerBuilder::new().raw_file(&n, b"x").finish(), Comp::Gzip, refused_entry(&n, DOTDOT))
        }),
        ("dotdot_short", |_| {
            (LayerBuilder::new().raw_file("../../x", b"x").finish(), Comp::Gzip, refused_entry("../../x", DOTDOT))
        }),
        ("dotdot_inside_name", |_| {
            let l = LayerBuilder::new().dir("a", 0o755).raw_file("a/../../x", b"x").finish();
            (l, Comp::Gzip, refused_entry("a/../../x", DOTDOT))
        }),
        ("dotdot_dir_entry", |c| {
            let n = format!("{}/newdir/", c.up);
            (LayerBuilder::new().raw_dir(&n).finish(), Comp::None, refused_entry(&n, DOTDOT))
        }),
        ("dotdot_symlink_entry", |c| {
            let n = format!("{}/link", c.up);
            (LayerBuilder::new().raw_symlink(&n, "/etc/passwd").finish(), Comp::None, refused_entry(&n, DOTDOT))
        }),
        ("dotdot_deep_file", |c| {
            let n = format!("{}/pwned", c.deep);
            let l = LayerBuilder::new().pax(&[("path", n.as_bytes())]).raw_file("placeholder", b"x").finish();
            (l, Comp::Gzip, refused_entry(&n, DOTDOT))
        }),
        ("absolute_file_into_sentinel", |c| {
            let n = format!("{}/pwned", c.abs);
            (LayerBuilder::new().raw_file(&n, b"x").finish(), Comp::Gzip, refused_entry(&n, ABSOLUTE))
        }),
        ("absolute_file_over_sentinel_file", |c| {
            let n = format!("{}/file", c.abs);
            (LayerBuilder::new().raw_file(&n, b"overwritten").finish(), Comp::Zstd, refused_entry(&n, ABSOLUTE))
        }),
        ("absolute_dir_into_sentinel", |c| {
            let n = format!("{}/newdir/", c.abs);
            (LayerBuilder::new().raw_dir(&n).finish(), Comp::Gzip, refused_entry(&n, ABSOLUTE))
        }),
        ("absolute_pax_path_into_sentinel", |c| {
            let n = format!("{}/pwned", c.abs);
            let l = LayerBuilder::new().pax(&[("path", n.as_bytes())]).raw_file("placeholder", b"x").finish();
            (l, Comp::Gzip, refused_entry(&n, ABSOLUTE))
        }),
        // Writes through a planted symlink.
        ("symlink_then_file_abs_target", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.abs).raw_file("evil/pwned", b"x").finish();
            (l, Comp::Gzip, refused_entry("evil/pwned", THROUGH))
        }),
        ("symlink_then_file_rel_target", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.up).raw_file("evil/pwned", b"x").finish();
            (l, Comp::Gzip, refused_entry("evil/pwned", THROUGH))
        }),
        ("symlink_then_file_deep_rel_target", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.deep).raw_file("evil/pwned", b"x").finish();
            (l, Comp::Gzip, refused_entry("evil/pwned", THROUGH))
        }),
        ("symlink_then_file_over_sentinel_file", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.abs).raw_file("evil/file", b"overwritten").finish();
            (l, Comp::None, refused_entry("evil/file", THROUGH))
        }),
        ("symlink_then_dir_abs_target", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.abs).raw_dir("evil/newdir/").finish();
            (l, Comp::Gzip, refused_entry("evil/newdir/", THROUGH))
        }),
        ("symlink_then_dir_rel_target", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.deep).raw_dir("evil/dir/").finish();
            (l, Comp::Gzip, refused_entry("evil/dir/", THROUGH))
        }),
        ("symlink_then_hardlink_named_through_it", |c| {
            let l = LayerBuilder::new().raw_file("t", b"t").raw_symlink("evil", &c.abs).raw_hardlink("evil/hl", "t").finish();
            (l, Comp::Gzip, refused_entry("evil/hl", THROUGH))
        }),
        ("symlink_then_symlink_through_it", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.up).raw_symlink("evil/s", "/etc/shadow").finish();
            (l, Comp::Gzip, refused_entry("evil/s", THROUGH))
        }),
        ("symlink_then_fifo_through_it", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.abs).fifo("evil/fifo").finish();
            (l, Comp::Gzip, refused_entry("evil/fifo", THROUGH))
        }),
        ("symlink_then_chardev_through_it", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.abs).char_dev("evil/null", 1, 3).finish();
            (l, Comp::Gzip, refused_entry("evil/null", THROUGH))
        }),
        ("symlink_trailing_slash_then_file", |c| {
            let l = LayerBuilder::new().raw_symlink("evil/", &c.abs).raw_file("evil/pwned", b"x").finish();
            (l, Comp::Gzip, refused_entry("evil/pwned", THROUGH))
        }),
        ("nested_symlink_then_file", |c| {
            let l = LayerBuilder::new().raw_dir("a/").raw_symlink("a/b", &c.abs).raw_file("a/b/c", b"x").finish();
            (l, Comp::Gzip, refused_entry("a/b/c", THROUGH))
        }),
        ("symlink_chain_then_file", |c| {
            let l = LayerBuilder::new().raw_symlink("a", "b").raw_symlink("b", &c.abs).raw_file("a/x", b"x").finish();
            (l, Comp::Gzip, refused_entry("a/x", THROUGH))
        }),
        ("symlink_to_dot_loop_then_file", |_| {
            let l = LayerBuilder::new().raw_symlink("loop", ".").raw_file("loop/loop/x", b"x").finish();
            (l, Comp::Gzip, refused_entry("loop/loop/x", THROUGH))
        }),
        ("dir_replaced_by_symlink_then_file", |c| {
            let l = LayerBuilder::new()
                .raw_dir("d/").raw_file("d/a", b"a").raw_symlink("d", &c.abs).raw_file("d/pwned", b"x").finish();
            (l, Comp::Gzip, refused_entry("d/pwned", THROUGH))
        }),
        ("file_as_parent", |_| {
            let l = LayerBuilder::new().raw_file("f", b"f").raw_file("f/x", b"x").finish();
            (l, Comp::Gzip, refused_entry("f/x", THROUGH))
        }),
        // The layer root itself.
        ("dot_entry_symlink_to_sentinel", |c| {
            let l = LayerBuilder::new().raw_symlink(".", &c.abs).raw_file("pwned", b"x").finish();
            (l, Comp::Gzip, refused_entry(".", "the root entry must be a directory"))
        }),
        ("dot_slash_entry_symlink_to_sentinel", |c| {
            let l = LayerBuilder::new().raw_symlink("./", &c.up).raw_file("./pwned", b"x").finish();
            (l, Comp::Gzip, refused_entry("./", "the root entry must be a directory"))
        }),
        ("dot_entry_hardlink_to_sentinel", |c| {
            let l = LayerBuilder::new().raw_hardlink(".", &format!("{}/file", c.abs)).finish();
            (l, Comp::Gzip, refused_entry(".", "the root entry must be a directory"))
        }),
        ("dot_entry_file", |_| {
            (LayerBuilder::new().raw_file("./", b"x").finish(), Comp::Gzip, refused_entry("./", "the root entry must be a directory"))
        }),
        // Hardlinks out of the layer.
        ("hardlink_target_dotdot_to_sentinel", |c| {
            let t = format!("{}/file", c.up);
            let l = LayerBuilder::new().raw_hardlink("hl", &t).finish();
            (l, Comp::Gzip, refused_entry("hl", &format!("hardlink target {t:?}: {DOTDOT}")))
        }),
        ("hardlink_target_dotdot_short", |_| {
            let l = LayerBuilder::new().raw_hardlink("hl", "../../x").finish();
            (l, Comp::Gzip, refused_entry("hl", &format!("hardlink target \"../../x\": {DOTDOT}")))
        }),
        ("hardlink_target_absolute", |c| {
            let t = format!("{}/file", c.abs);
            let l = LayerBuilder::new().raw_hardlink("hl", &t).finish();
            (l, Comp::Gzip, refused_entry("hl", &format!("hardlink target {t:?}: {ABSOLUTE}")))
        }),
        ("hardlink_target_absolute_etc_shadow", |_| {
            let l = LayerBuilder::new().raw_hardlink("shadow", "/etc/shadow").finish();
            (l, Comp::None, refused_entry("shadow", "hardlink target \"/etc/shadow\": absolute name"))
        }),
        ("hardlink_through_symlink_abs", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.abs).raw_hardlink("hl", "evil/file").finish();
            (l, Comp::Gzip, refused_entry("hl", &format!("hardlink target \"evil/file\": {THROUGH}")))
        }),
        ("hardlink_through_symlink_rel", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.up).raw_hardlink("hl", "evil/dir/inner").finish();
            (l, Comp::Gzip, refused_entry("hl", &format!("hardlink target \"evil/dir/inner\": {THROUGH}")))
        }),
        ("hardlink_through_pax_linkpath_absolute", |c| {
            let t = format!("{}/file", c.abs);
            let l = LayerBuilder::new().pax(&[("linkpath", t.as_bytes())]).raw_hardlink("hl", "placeholder").finish();
            (l, Comp::Gzip, refused_entry("hl", &format!("hardlink target {t:?}: {ABSOLUTE}")))
        }),
        ("hardlink_target_not_in_layer", |_| {
            let l = LayerBuilder::new().raw_hardlink("hl", "etc/passwd").finish();
            (l, Comp::Gzip, refused_entry("hl", "hardlink target \"etc/passwd\" is not in this layer"))
        }),
        // Whiteouts that name the directory itself or its parent, or go through a symlink.
        ("whiteout_dot", |_| {
            (LayerBuilder::new().raw_file(".wh..", b"").finish(), Comp::Gzip, refused_entry(".wh..", "whiteout names no file"))
        }),
        ("whiteout_dotdot", |_| {
            (LayerBuilder::new().raw_file(".wh...", b"").finish(), Comp::Gzip, refused_entry(".wh...", "whiteout names no file"))
        }),
        ("whiteout_empty", |_| {
            (LayerBuilder::new().raw_file(".wh.", b"").finish(), Comp::Gzip, refused_entry(".wh.", "whiteout names no file"))
        }),
        ("whiteout_dotdot_in_subdir", |_| {
            let l = LayerBuilder::new().raw_dir("a/").raw_file("a/.wh...", b"").finish();
            (l, Comp::Gzip, refused_entry("a/.wh...", "whiteout names no file"))
        }),
        ("whiteout_under_symlinked_parent_abs", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.abs).raw_file("evil/.wh.file", b"").finish();
            (l, Comp::Gzip, refused_entry("evil/.wh.file", THROUGH))
        }),
        ("whiteout_under_symlinked_parent_rel", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.up).raw_file("evil/.wh.dir", b"").finish();
            (l, Comp::Gzip, refused_entry("evil/.wh.dir", THROUGH))
        }),
        ("opaque_under_symlinked_parent", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.abs).raw_file("evil/.wh..wh..opq", b"").finish();
            (l, Comp::Gzip, refused_entry("evil/.wh..wh..opq", THROUGH))
        }),
        ("opaque_under_symlinked_nested_parent", |c| {
            let l = LayerBuilder::new().raw_symlink("evil", &c.deep).raw_file("evil/dir/.wh..wh..opq", b"").finish();
            (l, Comp::Gzip, refused_entry("evil/dir/.wh..wh..opq", THROUGH))
        }),
        ("whiteout_dotdot_path", |c| {
            let n = format!("{}/.wh.file", c.up);
            (LayerBuilder::new().raw_file(&n, b"").finish(), Comp::Gzip, refused_entry(&n, DOTDOT))
        }),
        // Malformed archives.
        ("header_checksum_wrong", |_| {
            let mut l = small_file_layer();
            // The checksum field is 6 octal digits at offset 148; change one digit.
            l[150] = if l[150] == b'1' { b'2' } else { b'1' };
            (l, Comp::Gzip, "tar header checksum mismatch".into())
        }),
        ("header_checksum_wrong_second_entry", |_| {
            let mut l = small_file_layer();
            l[512 + 150] = if l[512 + 150] == b'1' { b'2' } else { b'1' };
            (l, Comp::None, "tar header checksum mismatch".into())
        }),
        ("nul_in_pax_path", |_| {
            let l = LayerBuilder::new().pax(&[("path", b"evil\0/../../x")]).raw_file("placeholder", b"x").finish();
            (l, Comp::Gzip, refused_entry("evil\0/../../x", "name contains a NUL byte"))
        }),
        ("nul_in_pax_symlink_target", |c| {
            let t = format!("{}\0x", c.abs);
            let l = LayerBuilder::new().pax(&[("linkpath", t.as_bytes())]).raw_symlink("s", "placeholder").finish();
            (l, Comp::Gzip, refused_entry("s", "symlink with an empty or invalid target"))
        }),
        ("nul_in_pax_hardlink_target", |_| {
            let l = LayerBuilder::new().raw_file("t", b"t").pax(&[("linkpath", b"t\0/../../x")]).raw_hardlink("hl", "t").finish();
            (l, Comp::Gzip, refused_entry("hl", "hardlink target \"t\\0/../../x\": name contains a NUL byte"))
        }),
        ("gnu_long_name_5000_bytes", |_| {
            let mut name = vec![b'a'; 5000];
            name.push(0);
            (gnu_long_name_file(&name), Comp::Gzip, "long name of 5001 bytes exceeds the limit of 4097".into())
        }),
        ("gnu_long_name_4097_bytes", |_| {
            let mut name = b"d/".repeat(2048);
            name.push(b'f');
            (gnu_long_name_file(&name), Comp::Gzip, "tar entry name longer than 4096 bytes".into())
        }),
        ("pax_path_over_4096_bytes", |_| {
            let l = LayerBuilder::new().pax(&[("path", &[b'p'; 5000])]).raw_file("placeholder", b"x").finish();
            (l, Comp::Gzip, "tar entry name longer than 4096 bytes".into())
        }),
        ("pax_linkpath_over_4096_bytes", |_| {
            let l = LayerBuilder::new().pax(&[("linkpath", &[b'p'; 5000])]).raw_symlink("s", "x").finish();
            (l, Comp::Gzip, "tar entry name longer than 4096 bytes".into())
        }),
        ("pax_header_over_1mib", |_| {
            let big = vec![b'A'; (1 << 20) + 1];
            let l = LayerBuilder::new().pax(&[("SCHILY.xattr.user.big", &big)]).raw_file("f", b"x").finish();
            (l, Comp::Gzip, "pax header of 1048608 bytes exceeds the limit of 1048576".into())
        }),
        ("pax_headers_repeated_past_1mib", |_| {
            // Each header is under the limit; together they are not (they all apply to
            // the one entry that follows, so they must be bounded together).
            let half = vec![b'A'; 600 << 10];
            let l = LayerBuilder::new()
                .pax(&[("SCHILY.xattr.user.a", &half)])
                .pax(&[("SCHILY.xattr.user.b", &half)])
                .raw_file("f", b"x")
                .finish();
            (l, Comp::Gzip, "pax headers of more than 1048576 bytes".into())
        }),
        ("unsupported_entry_type", |_| {
            let l = LayerBuilder::new().raw(hdr(T::new(b'V'), 0o644, 0), "volume", None, &[]).finish();
            (l, Comp::Gzip, "unsupported tar entry type 'V'".into())
        }),
        ("uid_out_of_range", |_| {
            let mut h = hdr(T::Regular, 0o644, 1);
            h.set_uid(u64::from(u32::MAX));
            (LayerBuilder::new().raw(h, "f", None, b"x").finish(), Comp::Gzip, refused_entry("f", "uid/gid 4294967295:0 out of range"))
        }),
        ("garbage_not_tar", |_| (junk(64 << 10, 7), Comp::None, "not a tar archive".into())),
        ("garbage_gzip_magic", |_| {
            let mut j = junk(64 << 10, 9);
            j[..3].copy_from_slice(&[0x1f, 0x8b, 8]);
            (j, Comp::None, "gzip stream is corrupt or truncated".into())
        }),
        ("garbage_inside_valid_gzip", |_| (junk(64 << 10, 11), Comp::Gzip, "not a tar archive".into())),
        ("truncated_gzip_layer", |_| {
            let gz = gzip(&LayerBuilder::new().file("f", 0o644, &junk(256 << 10, 3)).finish(), 6);
            (gz[..gz.len() / 2].to_vec(), Comp::None, "gzip stream is corrupt or truncated".into())
        }),
        ("truncated_gzip_header", |_| {
            let gz = gzip(&small_file_layer(), 6);
            (gz[..6].to_vec(), Comp::None, "gzip stream is corrupt or truncated".into())
        }),
        ("truncated_zstd_layer", |_| {
            let z = Comp::Zstd.apply(&LayerBuilder::new().file("f", 0o644, &junk(256 << 10, 5)).finish());
            (z[..z.len() / 2].to_vec(), Comp::None, "zstd stream is corrupt or truncated".into())
        }),
        ("truncated_tar_inside_file_data", |_| {
            let t = LayerBuilder::new().file("f", 0o644, &junk(8192, 5)).finish();
            (t[..2048].to_vec(), Comp::Gzip, "archive truncated inside a file's data".into())
        }),
        ("xz_layer", |_| {
            (b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4\x46".to_vec(), Comp::None, "xz compression is not supported".into())
        }),
    ]
}

#[test]
fn hostile_layers_are_refused_by_pull_and_import() {
    require_root();
    run_table("layers", layer_cases(), |name, case| {
        for via in ["pull", "import"] {
            let sb = Sandbox::new();
            let (tar, comp, needle) = case(&sb.ctx);
            let case = format!("{name} ({via})");
            if via == "pull" {
                let img = build(&Image::new(vec![(tar, comp)]));
                write_oci_layout(&sb.env.path("layout"), &[(&img, Some("x"))]);
                let src = format!("oci:{}", sb.env.path("layout").display());
                let err = expect_refused(&sb, &case, &["pull", &src], &needle).stderr();
                // The error names the layer blob as well.
                assert!(err.contains(&img.layers[0].digest), "{case}: error does not name the layer: {err}");
            } else {
                let file = sb.env.path("rootfs.tar");
                std::fs::write(&file, comp.apply(&tar)).unwrap();
                expect_refused(&sb, &case, &["import", file.to_str().unwrap(), "hostile:1"], &needle);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// Layers that may extract (a later entry replaces a planted symlink; whiteouts over a
// symlink keep it) but must not touch what the symlink points at.

type AcceptedCase = (fn(&Ctx) -> Vec<u8>, fn(&Path));

fn kind_of(p: &Path) -> std::fs::FileType {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).file_type()
}

fn owned(kind: tar::EntryType, mode: u32, link: Option<&str>) -> tar::Header {
    let mut h = match link {
        Some(t) => link_hdr(kind, t),
        None => hdr(kind, mode, 0),
    };
    h.set_mode(mode);
    h.set_uid(4242);
    h.set_gid(4343);
    h.set_mtime(12345);
    h
}

fn check_owned(p: &Path, mode: u32) {
    let md = std::fs::symlink_metadata(p).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mtime()), (4242, 4343, 12345), "{}", p.display());
    if !md.file_type().is_symlink() {
        assert_eq!(md.mode() & 0o7777, mode, "{}", p.display());
    }
}

#[rustfmt::skip]
fn accepted_cases() -> Vec<(&'static str, AcceptedCase)> {
    use tar::EntryType as T;
    vec![
        ("chmod_chown_utimes_via_planted_symlink_as_dir", (
            |c| LayerBuilder::new().raw_symlink("s", &format!("{}/file", c.abs)).raw(owned(T::Directory, 0o777, None), "s", None, &[]).finish(),
            |root| { assert!(kind_of(&root.join("s")).is_dir()); check_owned(&root.join("s"), 0o777) },
        )),
        ("chmod_chown_utimes_via_planted_symlink_to_dir_as_dir", (
            |c| LayerBuilder::new().raw_symlink("s", &c.abs).raw(owned(T::Directory, 0o1777, None), "s/", None, &[]).finish(),
            |root| { assert!(kind_of(&root.join("s")).is_dir()); check_owned(&root.join("s"), 0o1777) },
        )),
        ("chmod_chown_utimes_via_planted_symlink_as_dot_dir", (
            |c| LayerBuilder::new().raw_symlink("s", &c.up).raw(owned(T::Directory, 0o700, None), "s/.", None, &[]).finish(),
            |root| { assert!(kind_of(&root.join("s")).is_dir()); check_owned(&root.join("s"), 0o700) },
        )),
        ("chmod_chown_utimes_via_planted_symlink_as_file", (
            |c| {
                let mut h = owned(T::Regular, 0o4755, None);
                h.set_size(3);
                LayerBuilder::new().raw_symlink("s", &format!("{}/file", c.abs)).raw(h, "s", None, b"new").finish()
            },
            |root| {
                assert!(kind_of(&root.join("s")).is_file());
                assert_eq!(std::fs::read(root.join("s")).unwrap(), b"new");
                check_owned(&root.join("s"), 0o4755)
            },
        )),
        ("chmod_chown_utimes_via_planted_symlink_as_symlink", (
            |c| LayerBuilder::new().raw_symlink("s", &format!("{}/file", c.abs)).raw(owned(T::Symlink, 0o777, Some("elsewhere")), "s", None, &[]).finish(),
            |root| {
                assert_eq!(std::fs::read_link(root.join("s")).unwrap(), Path::new("elsewhere"));
                check_owned(&root.join("s"), 0)
            },
        )),
        ("chmod_chown_utimes_via_planted_symlink_as_fifo", (
            |c| LayerBuilder::new().raw_symlink("s", &format!("{}/file", c.abs)).raw(owned(T::Fifo, 0o666, None), "s", None, &[]).finish(),
            |root| { assert!(kind_of(&root.join("s")).is_fifo()); check_owned(&root.join("s"), 0o666) },
        )),
        ("chmod_chown_utimes_via_planted_symlink_as_chardev", (
            |c| {
                let mut h = owned(T::Char, 0o640, None);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                LayerBuilder::new().raw_symlink("s", &format!("{}/file", c.abs)).raw(h, "s", None, &[]).finish()
            },
            |root| { assert!(kind_of(&root.join("s")).is_char_device()); check_owned(&root.join("s"), 0o640) },
        )),
        ("chmod_chown_utimes_via_planted_symlink_as_hardlink", (
            |c| LayerBuilder::new().raw_file("t", b"t").raw_symlink("s", &format!("{}/file", c.abs)).raw_hardlink("s", "t").finish(),
            |root| {
                assert!(kind_of(&root.join("s")).is_file());
                assert_eq!(std::fs::metadata(root.join("s")).unwrap().ino(), std::fs::metadata(root.join("t")).unwrap().ino());
            },
        )),
        ("root_entry_mode_after_planted_symlink", (
            |c| LayerBuilder::new().raw_symlink("s", &c.abs).raw(owned(T::Directory, 0o711, None), "./", None, &[]).finish(),
            |root| { check_owned(root, 0o711); assert!(kind_of(&root.join("s")).is_symlink()) },
        )),
        ("dir_times_after_dir_replaced_by_symlink", (
            // The directory's time is set at the end, by name: by then the name is a
            // symlink to the sentinel, whose time must stay.
            |c| LayerBuilder::new().raw(owned(T::Directory, 0o755, None), "d/", None, &[]).raw_file("d/a", b"a").raw_symlink("d", &c.abs).finish(),
            |root| assert!(kind_of(&root.join("d")).is_symlink()),
        )),
        ("whiteout_over_planted_symlink_keeps_it", (
            |c| LayerBuilder::new().raw_symlink("s", &c.abs).raw_file(".wh.s", b"").finish(),
            |root| assert!(kind_of(&root.join("s")).is_symlink()),
        )),
        ("hardlink_to_planted_symlink_links_the_symlink", (
            |c| LayerBuilder::new().raw_symlink("s", &format!("{}/file", c.abs)).raw_hardlink("hl", "s").finish(),
            |root| assert!(kind_of(&root.join("hl")).is_symlink()),
        )),
        ("opaque_marker_in_root", (
            |_| LayerBuilder::new().raw_file("./.wh..wh..opq", b"").raw_file("f", b"f").finish(),
            |root| assert!(root.join("f").is_file()),
        )),
        ("absolute_looking_name_after_dot_slash_stays_inside", (
            // `.//tmp/…` is relative: it lands in the layer, not on the host.
            |c| LayerBuilder::new().raw_file(&format!(".//{}/pwned", &c.abs[1..]), b"x").finish(),
            |root| assert!(std::fs::read_dir(root).unwrap().count() == 1),
        )),
    ]
}

#[test]
fn replaced_symlinks_and_harmless_leftovers_never_touch_the_host() {
    require_root();
    run_table("accepted", accepted_cases(), |name, (layer, check)| {
        let sb = Sandbox::new();
        let tar = layer(&sb.ctx);
        let img = build(&Image::new(vec![(tar, Comp::Gzip)]));
        write_oci_layout(&sb.env.path("layout"), &[(&img, Some("x"))]);
        let before = sb.snapshot();
        let out = run_for(&sb.env, &["pull", &format!("oci:{}", sb.env.path("layout").display())], LIMIT);
        assert!(out.status(), "{name}: pull failed: {}", out.stderr());
        assert_eq!(sb.snapshot(), before, "{name}: something outside the store changed");
        check(&sb.env.layer_root(&img.diff_ids[0]));
        sb.assert_store_clean(name);
    });
}

/// overlayfs's own xattrs are never taken from an archive; ordinary ones are.
#[test]
fn overlay_xattrs_from_the_archive_are_not_applied() {
    require_root();
    need_tool("getfattr");
    let forbidden: &[(&str, &[u8])] = &[
        ("trusted.overlay.redirect", b"/etc"),
        ("trusted.overlay.opaque", b"y"),
        ("trusted.overlay.origin", b"\x00\xfb"),
        ("trusted.overlay.metacopy", b""),
        ("user.overlay.redirect", b"/etc"),
        ("user.overlay.opaque", b"y"),
        ("user.allowed", b"1"),
    ];
    let records: Vec<(String, &[u8])> = forbidden.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v)).collect();
    let records: Vec<(&str, &[u8])> = records.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let sb = Sandbox::new();
    let tar = LayerBuilder::new()
        .pax(&records)
        .raw_dir("d/")
        .pax(&records)
        .raw_file("d/f", b"f")
        .pax(&records)
        .raw_symlink("d/l", "f")
        .pax(&records)
        .raw(hdr(tar::EntryType::Directory, 0o755, 0), "./", None, &[])
        .finish();
    let img = build(&Image::new(vec![(tar, Comp::Gzip)]));
    write_oci_layout(&sb.env.path("layout"), &[(&img, Some("x"))]);
    let before = sb.snapshot();
    let out = run_for(&sb.env, &["pull", &format!("oci:{}", sb.env.path("layout").display())], LIMIT);
    assert!(out.status(), "pull failed: {}", out.stderr());
    assert_eq!(sb.snapshot(), before, "something outside the store changed");
    let root = sb.env.layer_root(&img.diff_ids[0]);
    for (rel, allowed_expected) in [("d/f", true), ("d", true), ("d/l", false), ("", true)] {
        let p = root.join(rel);
        let o = Command::new("getfattr").args(["-h", "-d", "-m", "-", "--absolute-names"]).arg(&p).output().unwrap();
        let attrs = String::from_utf8_lossy(&o.stdout);
        assert!(!attrs.contains("overlay."), "{}: overlay xattr taken from the archive:\n{attrs}", p.display());
        // The positive control: a user xattr does get through (symlinks cannot carry one).
        assert_eq!(attrs.contains("user.allowed"), allowed_expected, "{}:\n{attrs}", p.display());
    }
}

// ---------------------------------------------------------------------------------------
// OCI layouts: digests, sizes, descriptors, documents.

/// A layout of one small image whose layer blob is an uncompressed tar (so a flipped byte
/// stays a valid tar and only the digest can catch it).
struct Layout {
    dir: PathBuf,
    img: Built,
}

impl Layout {
    fn new(sb: &Sandbox) -> Layout {
        let img = build(&Image::new(vec![(small_file_layer(), Comp::None)]));
        let dir = sb.env.path("layout");
        write_oci_layout(&dir, &[(&img, Some("x"))]);
        Layout { dir, img }
    }
    fn blob(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex(digest))
    }
    fn index(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap()).unwrap()
    }
    fn set_index(&self, v: &Value) {
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(v).unwrap()).unwrap();
    }
    fn manifest(&self) -> Value {
        serde_json::from_slice(&self.img.manifest.bytes).unwrap()
    }
    /// Writes `m` as the manifest blob and points index.json at it (with a correct
    /// digest and size: only what `m` says is wrong).
    fn set_manifest(&self, m: &Value) -> String {
        let b = Blob::new(serde_json::to_vec(m).unwrap(), OCI_MANIFEST);
        write_blob(&self.dir, &b);
        let mut idx = self.index();
        idx["manifests"][0]["digest"] = json!(b.digest);
        idx["manifests"][0]["size"] = json!(b.bytes.len());
        self.set_index(&idx);
        b.digest
    }
    /// Flips one byte of a blob in place (same size, different digest).
    fn flip(&self, digest: &str, find: &[u8]) {
        let p = self.blob(digest);
        let mut data = std::fs::read(&p).unwrap();
        let at = data.windows(find.len()).position(|w| w == find).expect("bytes to flip not found");
        data[at] ^= 0x20;
        std::fs::write(&p, data).unwrap();
    }
}

const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Digest strings that must never become paths.
fn bad_digests() -> Vec<String> {
    vec![
        "sha256:../../x".into(),
        "sha256:../../../../sentinel/file".into(),
        format!("sha256:{}", &HEX[..63]),
        format!("sha256:{HEX}0"),
        format!("sha256:{}", HEX.to_uppercase()),
        format!("sha256:{}/..", &HEX[..61]),
        "md5:d41d8cd98f00b204e9800998ecf8427e".into(),
        format!("sha512:{HEX}{HEX}"),
        format!("SHA256:{HEX}"),
        format!("sha256/{HEX}"),
        HEX.into(),
        String::new(),
    ]
}

type LayoutCase = fn(&Layout) -> String;

#[rustfmt::skip]
fn layout_cases() -> Vec<(&'static str, LayoutCase)> {
    vec![
        ("layer_blob_digest_mismatch", |l| {
            l.flip(&l.img.layers[0].digest, b"hello, world");
            format!("blob {}: digest mismatch", l.img.layers[0].digest)
        }),
        ("layer_blob_longer_than_descriptor", |l| {
            let p = l.blob(&l.img.layers[0].digest);
            let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            f.write_all(&[0u8; 1024]).unwrap();
            format!("layer {}: blob is larger than the {} bytes its descriptor declares", l.img.layers[0].digest, l.img.layers[0].bytes.len())
        }),
        ("layer_blob_shorter_than_descriptor", |l| {
            let p = l.blob(&l.img.layers[0].digest);
            let data = std::fs::read(&p).unwrap();
            // Cut only end-of-archive padding: the tar still reads cleanly.
            std::fs::write(&p, &data[..data.len() - 512]).unwrap();
            format!("blob {}: size mismatch: descriptor says {} bytes, content has {}", l.img.layers[0].digest, data.len(), data.len() - 512)
        }),
        ("layer_descriptor_size_too_small", |l| {
            let mut m = l.manifest();
            let n = l.img.layers[0].bytes.len();
            m["layers"][0]["size"] = json!(n - 1);
            l.set_manifest(&m);
            format!("blob is larger than the {} bytes its descriptor declares", n - 1)
        }),
        ("layer_descriptor_size_too_large", |l| {
            let mut m = l.manifest();
            let n = l.img.layers[0].bytes.len();
            m["layers"][0]["size"] = json!(n + 1);
            l.set_manifest(&m);
            format!("blob {}: size mismatch: descriptor says {} bytes, content has {n}", l.img.layers[0].digest, n + 1)
        }),
        ("layer_descriptor_size_zero", |l| {
            let mut m = l.manifest();
            m["layers"][0]["size"] = json!(0);
            l.set_manifest(&m);
            "blob is larger than the 0 bytes its descriptor declares".into()
        }),
        ("layer_blob_missing", |l| {
            std::fs::remove_file(l.blob(&l.img.layers[0].digest)).unwrap();
            format!("blob {}: No such file", l.img.layers[0].digest)
        }),
        ("layer_blob_is_a_fifo", |l| {
            let p = l.blob(&l.img.layers[0].digest);
            std::fs::remove_file(&p).unwrap();
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
            format!("blob {}: not a regular file", l.img.layers[0].digest)
        }),
        ("layer_blob_symlink_to_dev_zero", |l| {
            let p = l.blob(&l.img.layers[0].digest);
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
            format!("blob {}: not a regular file", l.img.layers[0].digest)
        }),
        ("layer_blob_symlink_to_sentinel_file", |l| {
            let p = l.blob(&l.img.layers[0].digest);
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink("../../../sentinel/file", &p).unwrap();
            format!("layer {}", l.img.layers[0].digest)
        }),
        ("config_blob_digest_mismatch", |l| {
            l.flip(&l.img.config.digest, b"linux");
            format!("blob {}: digest mismatch", l.img.config.digest)
        }),
        ("config_descriptor_size_mismatch", |l| {
            let mut m = l.manifest();
            let n = l.img.config.bytes.len();
            m["config"]["size"] = json!(n + 7);
            l.set_manifest(&m);
            format!("blob {}: size mismatch: descriptor says {} bytes, content has {n}", l.img.config.digest, n + 7)
        }),
        ("config_blob_missing", |l| {
            std::fs::remove_file(l.blob(&l.img.config.digest)).unwrap();
            format!("blob {}: No such file", l.img.config.digest)
        }),
        ("config_blob_not_json", |l| {
            // A config that fails to parse is still named by its digest.
            let junk = b"\x00\x01 not json".to_vec();
            let cfg = Blob::new(junk, OCI_CONFIG);
            write_blob(&l.dir, &cfg);
            let mut m = l.manifest();
            m["config"] = cfg.descriptor();
            l.set_manifest(&m);
            format!("image config {}: malformed", cfg.digest)
        }),
        ("manifest_blob_digest_mismatch", |l| {
            l.flip(&l.img.manifest.digest, b"schemaVersion");
            format!("blob {}: digest mismatch", l.img.manifest.digest)
        }),
        ("manifest_descriptor_size_too_large", |l| {
            let mut idx = l.index();
            let n = l.img.manifest.bytes.len();
            idx["manifests"][0]["size"] = json!(n + 1);
            l.set_index(&idx);
            format!("blob {}: size mismatch: descriptor says {} bytes, content has {n}", l.img.manifest.digest, n + 1)
        }),
        ("manifest_descriptor_size_too_small", |l| {
            let mut idx = l.index();
            let n = l.img.manifest.bytes.len();
            idx["manifests"][0]["size"] = json!(n - 1);
            l.set_index(&idx);
            format!("blob {}: size mismatch: descriptor says {} bytes, content has {n}", l.img.manifest.digest, n - 1)
        }),
        ("manifest_blob_missing", |l| {
            std::fs::remove_file(l.blob(&l.img.manifest.digest)).unwrap();
            format!("blob {}: No such file", l.img.manifest.digest)
        }),
        ("manifest_that_is_also_an_index", |l| {
            let mut m = l.manifest();
            m["manifests"] = json!([l.img.manifest.descriptor()]);
            let d = l.set_manifest(&m);
            format!("{d}: ambiguous document: it has both `manifests` and `layers`/`config` (CVE-2021-41190)")
        }),
        ("manifest_without_media_type_that_is_also_an_index", |l| {
            let mut m = l.manifest();
            m.as_object_mut().unwrap().remove("mediaType");
            m["manifests"] = json!([]);
            let d = l.set_manifest(&m);
            let mut idx = l.index();
            idx["manifests"][0].as_object_mut().unwrap().remove("mediaType");
            l.set_index(&idx);
            format!("{d}: ambiguous document")
        }),
        ("nested_index_that_is_also_a_manifest", |l| {
            let mut desc = l.img.manifest.descriptor();
            desc["platform"] = json!({"architecture": "amd64", "os": "linux"});
            let m = l.manifest();
            let inner = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc], "config": m["config"], "layers": m["layers"]});
            let b = Blob::new(serde_json::to_vec(&inner).unwrap(), OCI_INDEX);
            write_blob(&l.dir, &b);
            let mut idx = l.index();
            idx["manifests"][0] = b.descriptor();
            l.set_index(&idx);
            format!("{}: ambiguous document", b.digest)
        }),
        ("index_json_that_is_also_a_manifest", |l| {
            let mut idx = l.index();
            let m = l.manifest();
            idx["config"] = m["config"].clone();
            idx["layers"] = m["layers"].clone();
            l.set_index(&idx);
            "index.json: ambiguous document".into()
        }),
        ("index_json_symlink_to_dev_zero", |l| {
            std::fs::remove_file(l.dir.join("index.json")).unwrap();
            std::os::unix::fs::symlink("/dev/zero", l.dir.join("index.json")).unwrap();
            "index.json: not a regular file".into()
        }),
        ("index_json_symlink_to_procfs", |l| {
            // /proc/kmsg would be the real attack (reading it consumes the kernel log);
            // any procfs file shows the rule without that side effect if it failed.
            std::fs::remove_file(l.dir.join("index.json")).unwrap();
            std::os::unix::fs::symlink("/proc/self/mountinfo", l.dir.join("index.json")).unwrap();
            "index.json: not a regular file (a kernel pseudo file)".into()
        }),
        ("layer_blob_symlink_to_sysfs", |l| {
            let p = l.blob(&l.img.layers[0].digest);
            std::fs::remove_file(&p).unwrap();
            std::os::unix::fs::symlink("/sys/kernel/uevent_seqnum", &p).unwrap();
            format!("blob {}: not a regular file (a kernel pseudo file)", l.img.layers[0].digest)
        }),
        ("index_json_is_a_fifo", |l| {
            std::fs::remove_file(l.dir.join("index.json")).unwrap();
            nix::unistd::mkfifo(&l.dir.join("index.json"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
            "index.json: not a regular file".into()
        }),
        ("index_json_too_large", |l| {
            let mut idx = l.index();
            idx["annotations"] = json!({"pad": "x".repeat(5 << 20)});
            l.set_index(&idx);
            "index.json: larger than".into()
        }),
        ("oci_layout_symlink_to_dev_zero", |l| {
            std::fs::remove_file(l.dir.join("oci-layout")).unwrap();
            std::os::unix::fs::symlink("/dev/zero", l.dir.join("oci-layout")).unwrap();
            "oci-layout: not a regular file".into()
        }),
    ]
}

#[test]
fn bad_blobs_descriptors_and_documents_in_oci_layouts() {
    require_root();
    run_table("layouts", layout_cases(), |name, case| {
        let sb = Sandbox::new();
        let l = Layout::new(&sb);
        let needle = case(&l);
        expect_refused(&sb, name, &["pull", &format!("oci:{}", l.dir.display())], &needle);
    });
}

/// Where a bad digest string can sit: each place gets every bad string, and the error
/// must quote it.
#[test]
fn digest_strings_that_could_be_paths_are_refused_by_name() {
    require_root();
    type Place = fn(&Layout, &str);
    let places: Vec<(&'static str, Place)> = vec![
        ("index_json_manifest_digest", |l, bad| {
            let mut idx = l.index();
            idx["manifests"][0]["digest"] = json!(bad);
            l.set_index(&idx);
        }),
        ("manifest_layer_digest", |l, bad| {
            let mut m = l.manifest();
            m["layers"][0]["digest"] = json!(bad);
            l.set_manifest(&m);
        }),
        ("manifest_config_digest", |l, bad| {
            let mut m = l.manifest();
            m["config"]["digest"] = json!(bad);
            l.set_manifest(&m);
        }),
        ("config_diff_id", |l, bad| {
            let mut cfg: Value = serde_json::from_slice(&l.img.config.bytes).unwrap();
            cfg["rootfs"]["diff_ids"][0] = json!(bad);
            let c = Blob::new(serde_json::to_vec(&cfg).unwrap(), OCI_CONFIG);
            write_blob(&l.dir, &c);
            let mut m = l.manifest();
            m["config"] = c.descriptor();
            l.set_manifest(&m);
        }),
        ("nested_index_entry_digest", |l, bad| {
            let mut desc = l.img.manifest.descriptor();
            desc["platform"] = json!({"architecture": "amd64", "os": "linux"});
            desc["digest"] = json!(bad);
            let inner = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc]});
            let b = Blob::new(serde_json::to_vec(&inner).unwrap(), OCI_INDEX);
            write_blob(&l.dir, &b);
            let mut idx = l.index();
            idx["manifests"][0] = b.descriptor();
            l.set_index(&idx);
        }),
    ];
    let mut rows = Vec::new();
    for (place, f) in places {
        for (i, bad) in bad_digests().into_iter().enumerate() {
            rows.push((place, (i, bad, f)));
        }
    }
    let mut failed = Vec::new();
    for (place, (i, bad, f)) in rows {
        let name = format!("{place}[{i}] {bad:?}");
        let r = std::panic::catch_unwind(|| {
            let sb = Sandbox::new();
            let l = Layout::new(&sb);
            f(&l, &bad);
            // The quoted string as the error prints it (Debug-escaped).
            let needle = format!("{bad:?}");
            let err = expect_refused(&sb, &name, &["pull", &format!("oci:{}", l.dir.display())], &needle).stderr();
            assert!(err.contains("digest"), "{name}: {err}");
        });
        if r.is_err() {
            eprintln!("^^^ digests: row {name} FAILED");
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "digest rows failed: {failed:#?}");
}

// ---------------------------------------------------------------------------------------
// docker-save and OCI archives built by hand.

#[derive(Clone, Copy)]
enum Member<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn archive(members: &[Member]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        match m {
            Member::File(p, data) => {
                let mut h = hdr(tar::EntryType::Regular, 0o644, data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Member::Symlink(p, t) => b.append_link(&mut hdr(tar::EntryType::Symlink, 0o777, 0), p, t).unwrap(),
            Member::Hardlink(p, t) => b.append_link(&mut hdr(tar::EntryType::Link, 0o644, 0), p, t).unwrap(),
        }
    }
    b.into_inner().unwrap()
}

/// One image's parts, for archive rows.
struct Parts {
    img: Built,
    cfg: String,
    layer: String,
}

impl Parts {
    fn new() -> Parts {
        let img = build(&Image::new(vec![(small_file_layer(), Comp::None)]));
        let layer = format!("{}/layer.tar", &hex(&img.diff_ids[0])[..12]);
        Parts { cfg: format!("{}.json", hex(&img.config.digest)), layer, img }
    }
    fn manifest_json(&self, config: &str, layers: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&json!([{"Config": config, "RepoTags": ["hostile:1"], "Layers": layers}])).unwrap()
    }
    /// A docker-save archive whose manifest.json names `config` and `layers`, with the
    /// real members plus `extra`.
    fn docker(&self, config: &str, layers: &[&str], extra: &[Member]) -> Vec<u8> {
        let mj = self.manifest_json(config, layers);
        let mut m = vec![Member::File(&self.cfg, &self.img.config.bytes), Member::File(&self.layer, &self.img.tars[0])];
        m.extend(extra.iter().copied());
        m.push(Member::File("manifest.json", &mj));
        archive(&m)
    }
}

type ArchiveCase = fn(&Ctx, &Parts) -> (Vec<u8>, String);

#[rustfmt::skip]
fn archive_cases() -> Vec<(&'static str, ArchiveCase)> {
    vec![
        ("docker_config_dotdot_etc_shadow", |_, p| {
            (p.docker("../../etc/shadow", &[&p.layer], &[]), "\"../../etc/shadow\" named by manifest.json".into())
        }),
        ("docker_config_absolute_etc_shadow", |_, p| {
            (p.docker("/etc/shadow", &[&p.layer], &[]), "\"/etc/shadow\" named by manifest.json".into())
        }),
        ("docker_config_absolute_sentinel", |c, p| {
            let f = format!("{}/file", c.abs);
            (p.docker(&f, &[&p.layer], &[]), format!("{f:?} named by manifest.json"))
        }),
        ("docker_layer_dotdot_etc_shadow", |_, p| {
            (p.docker(&p.cfg, &["../../etc/shadow"], &[]), "\"../../etc/shadow\" named by manifest.json".into())
        }),
        ("docker_layer_absolute_etc_shadow", |_, p| {
            (p.docker(&p.cfg, &["/etc/shadow"], &[]), "\"/etc/shadow\" named by manifest.json".into())
        }),
        ("docker_layer_dotdot_inside_name", |_, p| {
            (p.docker(&p.cfg, &["x/../../../etc/shadow"], &[]), "\"x/../../../etc/shadow\" named by manifest.json".into())
        }),
        ("docker_layer_member_symlink_to_etc_shadow", |_, p| {
            let a = p.docker(&p.cfg, &["evil/layer.tar"], &[Member::Symlink("evil/layer.tar", "/etc/shadow")]);
            (a, "\"evil/layer.tar\" named by manifest.json".into())
        }),
        ("docker_layer_member_symlink_dotdot", |_, p| {
            let a = p.docker(&p.cfg, &["evil/layer.tar"], &[Member::Symlink("evil/layer.tar", "../../../../etc/shadow")]);
            (a, "\"evil/layer.tar\" named by manifest.json".into())
        }),
        ("docker_layer_member_hardlink_to_etc_shadow", |_, p| {
            let a = p.docker(&p.cfg, &["evil/layer.tar"], &[Member::Hardlink("evil/layer.tar", "/etc/shadow")]);
            (a, "\"evil/layer.tar\" named by manifest.json".into())
        }),
        ("docker_config_member_symlink_to_sentinel", |c, p| {
            let t = format!("{}/file", c.abs);
            let a = p.docker("evil.json", &[&p.layer], &[Member::Symlink("evil.json", &t)]);
            (a, "\"evil.json\" named by manifest.json".into())
        }),
        ("docker_config_member_symlink_loop", |_, p| {
            let a = p.docker("a.json", &[&p.layer], &[Member::Symlink("a.json", "b.json"), Member::Symlink("b.json", "a.json")]);
            (a, "\"a.json\" named by manifest.json".into())
        }),
        ("docker_manifest_json_symlink_to_etc_passwd", |_, p| {
            let a = archive(&[Member::File(&p.cfg, &p.img.config.bytes), Member::Symlink("manifest.json", "/etc/passwd")]);
            (a, "manifest.json".into())
        }),
        ("docker_gzip_layer_named_by_wrong_digest", |_, p| {
            // Docker 25+ names blobs by digest; a lying name is caught on ingest.
            let gz = gzip(&p.img.tars[0], 6);
            let lie = format!("blobs/sha256/{HEX}");
            let a = p.docker(&p.cfg, &[&lie], &[Member::File(&lie, &gz)]);
            (a, format!("blob sha256:{HEX}: digest mismatch"))
        }),
        ("docker_layer_with_symlink_escape", |c, p| {
            // Same apply code as every other path, reached through a docker archive.
            let tar = LayerBuilder::new().raw_symlink("evil", &c.abs).raw_file("evil/pwned", b"x").finish();
            let mut cfg: Value = serde_json::from_slice(&p.img.config.bytes).unwrap();
            cfg["rootfs"]["diff_ids"] = json!([sha256(&tar)]);
            let cfg = serde_json::to_vec(&cfg).unwrap();
            let mj = p.manifest_json("c.json", &["l/layer.tar"]);
            let a = archive(&[Member::File("c.json", &cfg), Member::File("l/layer.tar", &tar), Member::File("manifest.json", &mj)]);
            (a, refused_entry("evil/pwned", THROUGH))
        }),
        ("docker_manifest_json_not_json", |_, p| {
            let a = archive(&[Member::File(&p.cfg, &p.img.config.bytes), Member::File("manifest.json", b"\xff{")]);
            (a, "manifest.json:".into())
        }),
        ("oci_archive_blob_member_symlink_to_etc_shadow", |_, p| {
            let d = &p.img.layers[0].digest;
            let (m, c) = (&p.img.manifest, &p.img.config);
            let idx = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [m.descriptor()]})).unwrap();
            let (mp, cp, lp) = (format!("blobs/sha256/{}", hex(&m.digest)), format!("blobs/sha256/{}", hex(&c.digest)), format!("blobs/sha256/{}", hex(d)));
            let a = archive(&[
                Member::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
                Member::File("index.json", &idx),
                Member::File(&mp, &m.bytes),
                Member::File(&cp, &c.bytes),
                Member::Symlink(&lp, "/etc/shadow"),
            ]);
            (a, format!("blob {d}: \"{lp}\" is not in the archive"))
        }),
        ("oci_archive_index_json_hardlink_dotdot", |_, _| {
            let a = archive(&[
                Member::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
                Member::Hardlink("index.json", "../../../../etc/passwd"),
            ]);
            (a, "index.json".into())
        }),
        ("oci_archive_garbage", |_, _| (junk(10 << 10, 13), "not a readable tar archive".into())),
    ]
}

#[test]
fn hostile_docker_and_oci_archives() {
    require_root();
    run_table("archives", archive_cases(), |name, case| {
        let transport = if name.starts_with("oci_") { "oci-archive" } else { "docker-archive" };
        for via in ["pull", "load"] {
            let sb = Sandbox::new();
            let (bytes, needle) = case(&sb.ctx, &Parts::new());
            let file = sb.env.path("archive.tar");
            std::fs::write(&file, bytes).unwrap();
            let case = format!("{name} ({via})");
            let src = format!("{transport}:{}", file.display());
            let args: Vec<&str> =
                if via == "pull" { vec!["pull", &src] } else { vec!["load", "-i", file.to_str().unwrap()] };
            // `load` detects the format from manifest.json / oci-layout; without either it
            // says so instead.
            let needle = if via == "load" && name == "docker_manifest_json_symlink_to_etc_passwd" {
                "neither a docker-save archive".to_owned()
            } else {
                needle
            };
            expect_refused(&sb, &case, &args, &needle);
        }
    });
}

// ---------------------------------------------------------------------------------------
// Resource exhaustion.

/// Streams `header` and then `zeros` zero bytes through a level-9 gzip encoder into
/// `out`, 1 MiB at a time.
fn gzip_zeros(out: &Path, header: &[u8], zeros: u64) -> Vec<u8> {
    let f = std::fs::File::create(out).unwrap();
    let mut e = flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::best());
    e.write_all(header).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        e.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    e.finish().unwrap().into_inner().unwrap();
    std::fs::read(out).unwrap()
}

/// An image whose one layer blob is `blob`; the diff-id is made up (the import must fail
/// before it matters).
fn image_with_blob(dir: &Path, blob: Vec<u8>) -> Built {
    let mut img = build(&Image::new(vec![(b"placeholder".to_vec(), Comp::None)]));
    let layer = Blob::new(blob, Comp::Gzip.media_type());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": img.config.descriptor(), "layers": [layer.descriptor()],
    });
    img.manifest = Blob::new(serde_json::to_vec(&manifest).unwrap(), OCI_MANIFEST);
    img.layers = vec![layer];
    write_oci_layout(dir, &[(&img, Some("x"))]);
    img
}

/// One tar header for a file of `size` bytes (the data follows).
fn file_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = hdr(tar::EntryType::Regular, 0o644, size);
    h.set_path(name).unwrap();
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn gzip_bomb_layer_is_stopped_after_a_gigabyte() {
    require_root();
    let t0 = Instant::now();
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.env.path("in")).unwrap();
    // 2 GiB of zeros in one file: about 2 MiB of gzip.
    let gz = gzip_zeros(&sb.env.path("in/bomb.gz"), &file_header("zeros", 2 << 30), 2 << 30);
    assert!(gz.len() < 4 << 20, "bomb is {} bytes", gz.len());
    let made = t0.elapsed();
    let img = image_with_blob(&sb.env.path("layout"), gz);
    let t1 = Instant::now();
    let src = format!("oci:{}", sb.env.path("layout").display());
    let err = bomb_refused(&sb, "gzip_bomb (pull)", &["pull", &src], "(decompression bomb?)");
    assert!(err.contains(&img.layers[0].digest), "the error names the layer: {err}");
    let pulled = t1.elapsed();
    let file = sb.env.path("in/bomb.gz");
    let t2 = Instant::now();
    bomb_refused(&sb, "gzip_bomb (import)", &["import", file.to_str().unwrap()], "(decompression bomb?)");
    let imported = t2.elapsed();
    // The same stream is also a tar with one 2 GiB member: as a compressed `docker save`
    // it is spooled decompressed into the store's tmp/ before indexing, which must stop
    // at the same bound instead of filling the disk.
    let t3 = Instant::now();
    let file = file.to_str().unwrap();
    bomb_refused(&sb, "gzip_bomb (load)", &["load", "-i", file], &format!("{file}: decompresses to more than"));
    eprintln!("gzip bomb: built in {made:?}, pull {pulled:?}, import {imported:?}, load {:?}", t3.elapsed());
}

/// Disk blocks under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(dir) else { return 0 };
    let mut n = md.blocks() * 512;
    if md.is_dir() {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            n += disk_usage(&e.path());
        }
    }
    n
}

/// [`expect_refused`] for bombs, also sampling how much the store's tmp/ holds meanwhile:
/// the bound is about 1 GiB of output, so the disk may see that much and no more.
fn bomb_refused(sb: &Sandbox, case: &str, args: &[&str], needle: &str) -> String {
    let before = sb.snapshot();
    let tmp = sb.env.root().join("tmp");
    let mut peak = 0;
    let out = run_watching(&sb.env, args, LIMIT, || peak = peak.max(disk_usage(&tmp)));
    eprintln!("{case}: peak {} MiB in tmp/: {}", peak >> 20, out.stderr().trim_end());
    out.assert_error(needle);
    assert!(peak < 3 << 29, "{case}: the store's tmp/ grew to {} MiB (bound: ~1 GiB)", peak >> 20);
    assert_eq!(sb.snapshot(), before, "{case}: something outside the store changed");
    sb.assert_nothing_committed(case);
    out.stderr()
}

#[test]
fn layer_with_more_than_a_million_entries_is_refused() {
    require_root();
    let t0 = Instant::now();
    let sb = Sandbox::new();
    // 1,000,001 header-only entries (512 MB of tar). They are aufs metadata names
    // (`.wh..wh.plnk`), which count as entries but are otherwise skipped: the same number
    // of directories named `d` costs ~15 s more CPU in syscalls alone, for nothing this
    // test checks. Identical blocks: compress 10,000 of them once and repeat that gzip
    // member; the decoder reads concatenated members as one stream (RFC 1952 2.2).
    let mut block = hdr(tar::EntryType::Regular, 0o644, 0);
    block.set_path(".wh..wh.plnk").unwrap();
    block.set_cksum();
    let member = gzip(&block.as_bytes().repeat(10_000), 9);
    let mut blob = member.repeat(100);
    let mut last = block.as_bytes().to_vec();
    last.extend_from_slice(&[0u8; 1024]);
    blob.extend_from_slice(&gzip(&last, 9));
    let img = image_with_blob(&sb.env.path("layout"), blob);
    let t1 = Instant::now();
    let src = format!("oci:{}", sb.env.path("layout").display());
    let err = expect_refused(&sb, "million_entries", &["pull", &src], "layer has more than 1000000 entries").stderr();
    assert!(err.contains(&img.layers[0].digest), "the error names the layer: {err}");
    eprintln!("million entries: built in {:?}, pull {:?}", t1 - t0, t1.elapsed());
}
