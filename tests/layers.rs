//! Extracted layers are faithful and overlay-ready: modes, owners, setuid bits, xattrs,
//! hardlinks, symlinks, devices, fifos, sparse and large files, long names, times; and a
//! real overlayfs mount of a multi-layer image shows whiteouts and opaque dirs applied.

mod util;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use util::*;

fn pull_layers(env: &Env, layers: Vec<(Vec<u8>, Comp)>) -> Built {
    let img = build(&Image::new(layers));
    write_oci_layout(&env.path("layout"), &[(&img, Some("t"))]);
    env.ok(&["pull", &format!("oci:{}", env.path("layout").display())]);
    img
}

fn getfattr(path: &Path, name: &str) -> Option<String> {
    need_tool("getfattr");
    let o = Command::new("getfattr")
        .args(["--absolute-names", "--only-values", "-h", "-n", name])
        .arg(path)
        .output()
        .unwrap();
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn metadata_comes_out_as_in_the_archive() {
    require_root();
    let env = Env::new();
    let long_dir = "d".repeat(120);
    let long_name = format!("{long_dir}/{}", "f".repeat(200));
    let layer = LayerBuilder::new()
        .dir("priv", 0o700)
        .dir("tmp", 0o1777)
        .file_owned("bin/suid", 0o4755, 1000, 1000, b"suid")
        .file_owned("bin/sgid", 0o2711, 0, 10, b"sgid")
        .file_with_xattrs("xattr", 0o640, b"x", &[("user.coracle", b"yes"), ("trusted.overlay.redirect", b"/etc")])
        .file("links/a", 0o644, b"shared")
        .hardlink("links/b", "links/a")
        .symlink("links/abs", "/etc/passwd")
        .symlink("links/rel", "../bin/suid")
        .char_dev("dev/null", 1, 3)
        .fifo("dev/fifo")
        .file(&long_name, 0o600, b"long")
        .symlink("longlink", &long_name)
        .finish();
    let img = pull_layers(&env, vec![(layer, Comp::Gzip)]);
    let root = env.layer_root(&img.diff_ids[0]);
    let md = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();

    assert_eq!(md("priv").mode() & 0o7777, 0o700);
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    let suid = md("bin/suid");
    assert_eq!((suid.mode() & 0o7777, suid.uid(), suid.gid()), (0o4755, 1000, 1000), "setuid survives chown");
    assert_eq!(md("bin/sgid").mode() & 0o7777, 0o2711);
    assert_eq!(md("bin/sgid").gid(), 10);
    assert_eq!(md("xattr").mode() & 0o7777, 0o640);
    assert_eq!(getfattr(&root.join("xattr"), "user.coracle").as_deref(), Some("yes"));
    assert_eq!(
        getfattr(&root.join("xattr"), "trusted.overlay.redirect"),
        None,
        "overlay xattrs from images are dropped"
    );
    assert_eq!(md("links/a").ino(), md("links/b").ino(), "hardlink");
    assert_eq!(md("links/a").nlink(), 2);
    assert_eq!(std::fs::read_link(root.join("links/abs")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(std::fs::read_link(root.join("links/rel")).unwrap(), Path::new("../bin/suid"));
    let null = md("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!((libc_major(null.rdev()), libc_minor(null.rdev())), (1, 3));
    assert!(md("dev/fifo").file_type().is_fifo());
    assert_eq!(std::fs::read(root.join(&long_name)).unwrap(), b"long");
    assert_eq!(std::fs::read_link(root.join("longlink")).unwrap(), Path::new(&long_name));
    // Times: files, symlinks and directories (set after their children were created).
    for p in ["bin/suid", "links/abs", "priv", "tmp"] {
        assert_eq!(md(p).mtime(), 1_700_000_000, "mtime of {p}");
    }
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}
fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

/// GNU tar's own sparse formats (old GNU and pax 1.0), on a file whose apparent size
/// (10 GiB) needs the large-number encodings: it must come out sparse, not 10 GiB of zeros.
#[test]
fn sparse_and_large_files_from_gnu_tar() {
    require_root();
    need_tool("tar");
    for format in ["gnu", "posix"] {
        let env = Env::new();
        let src = env.path("src");
        std::fs::create_dir_all(&src).unwrap();
        let f = std::fs::File::create(src.join("big")).unwrap();
        f.set_len(10 << 30).unwrap();
        drop(f);
        sh(Command::new("sh").arg("-c").arg(format!(
            "printf head | dd of={0}/big conv=notrunc status=none && printf tail | dd of={0}/big bs=1 seek=$((5<<30)) conv=notrunc status=none",
            src.display()
        )));
        let tar = env.path("layer.tar");
        sh(Command::new("tar")
            .args(["--sparse", &format!("--format={format}"), "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg("big"));
        let out = env.ok(&["import", tar.to_str().unwrap(), &format!("sparse:{format}")]);
        assert!(out.starts_with("sha256:"));
        let info = env.inspect(&format!("sparse:{format}"));
        let big = env.layer_root(info["layers"][0].as_str().unwrap()).join("big");
        let md = std::fs::metadata(&big).unwrap();
        assert_eq!(md.len(), 10 << 30, "{format}: logical size");
        assert!(md.blocks() * 512 < 1 << 20, "{format}: must stay sparse, has {} blocks", md.blocks());
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&big).unwrap();
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"head", "{format}");
        f.read_exact_at(&mut buf, 5 << 30).unwrap();
        assert_eq!(&buf, b"tail", "{format}");
    }
}

/// A multi-layer image with whiteouts and opaque dirs, mounted for real with overlayfs
/// (in a private mount namespace, so nothing can leak into the host's mount table).
#[test]
fn overlay_mount_applies_whiteouts_and_opaque_dirs() {
    require_root();
    need_tool("unshare");
    let env = Env::new();
    let l1 = LayerBuilder::new()
        .dir("a", 0o755)
        .file("a/x", 0o644, b"x")
        .file("a/y", 0o644, b"y")
        .dir("b", 0o755)
        .file("b/1", 0o644, b"1")
        .file("b/2", 0o644, b"2")
        .file("c", 0o644, b"c")
        .dir("d", 0o755)
        .file("d/keep", 0o644, b"k")
        .finish();
    let l2 = LayerBuilder::new()
        .whiteout("a/x")
        .dir("b", 0o755)
        .opaque("b")
        .file("b/3", 0o644, b"3")
        .whiteout("c")
        .whiteout("d")
        .finish();
    let l3 = LayerBuilder::new().dir("d", 0o750).file("d/new", 0o644, b"n").finish();
    let img = pull_layers(&env, vec![(l1, Comp::Gzip), (l2, Comp::Zstd), (l3, Comp::None)]);
    let lowers: Vec<String> = img.diff_ids.iter().rev().map(|d| env.layer_root(d).display().to_string()).collect();
    let mnt = env.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = format!(
        "mount -t overlay overlay -o ro,lowerdir={} {m} && cd {m} && find . -mindepth 1 | sort && stat -c '%a' d",
        lowers.join(":"),
        m = mnt.display()
    );
    let out = sh(Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]));
    let entries: Vec<&str> = out.lines().collect();
    assert_eq!(entries, ["./a", "./a/y", "./b", "./b/3", "./d", "./d/new", "750"], "merged view:\n{out}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(mnt.to_str().unwrap()), "the overlay never shows on the host");
}

/// An archive written by GNU tar itself (pax headers, long names, a hard link, a fifo).
#[test]
fn gnu_tar_rootfs_imports() {
    require_root();
    need_tool("tar");
    let env = Env::new();
    let src = env.path("src");
    let deep = src.join("x".repeat(90)).join("y".repeat(90));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("z".repeat(90)), b"deep").unwrap();
    std::fs::hard_link(deep.join("z".repeat(90)), src.join("hl")).unwrap();
    sh(Command::new("mkfifo").arg(src.join("fifo")));
    let tar = env.path("rootfs.tar");
    sh(Command::new("tar")
        .args(["--format=posix", "--numeric-owner", "--xattrs", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg("."));
    env.ok(&["import", tar.to_str().unwrap(), "gnutar:1"]);
    let root = env.layer_root(env.inspect("gnutar:1")["layers"][0].as_str().unwrap());
    let rel = Path::new(&"x".repeat(90)).join("y".repeat(90)).join("z".repeat(90));
    assert_eq!(std::fs::read(root.join(&rel)).unwrap(), b"deep");
    assert_eq!(std::fs::metadata(root.join("hl")).unwrap().ino(), std::fs::metadata(root.join(&rel)).unwrap().ino());
    assert!(std::fs::symlink_metadata(root.join("fifo")).unwrap().file_type().is_fifo());
}
