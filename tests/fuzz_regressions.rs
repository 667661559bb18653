//! The fuzz targets' checks on stable, in `cargo test`: every file under
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` goes through exactly the code
//! the fuzz target runs (`fuzz/harness.rs`, shared), including the layer targets'
//! containment check against the sentinel tree. `scripts/fuzz` adds a regression file
//! for every crash it finds.

// The harness derives `arbitrary::Arbitrary` under cargo-fuzz's `--cfg fuzzing` only.
#![allow(unexpected_cfgs)]

#[path = "../fuzz/harness.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

fn replay(target: &str) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = files(&fuzz.join("seeds").join(target));
    assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ has no seeds");
    let inputs: Vec<PathBuf> = seeds.into_iter().chain(files(&fuzz.join("regressions").join(target))).collect();
    let sb = harness::Sandbox::new();
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| harness::run(target, &sb, &data))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", path.display()));
        }
    }
    sb.reset();
    assert!(failed.is_empty(), "{target}: {} of {} inputs failed:\n{}", failed.len(), inputs.len(), failed.join("\n"));
}

#[test]
fn every_target_has_a_test() {
    for t in harness::TARGETS {
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets").join(format!("{t}.rs")).is_file());
    }
    assert_eq!(harness::TARGETS.len(), 6, "add a #[test] below for the new target");
}

#[test]
fn layer_apply() {
    replay("layer_apply");
}

#[test]
fn layer_structured() {
    replay("layer_structured");
}

#[test]
fn manifest_parse() {
    replay("manifest_parse");
}

#[test]
fn config_parse() {
    replay("config_parse");
}

#[test]
fn reference_parse() {
    replay("reference_parse");
}

#[test]
fn docker_manifest() {
    replay("docker_manifest");
}

/// The containment check itself: every kind of damage an escape could do is noticed.
#[test]
fn the_harness_notices_escapes() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    type Damage = fn(&harness::Sandbox);
    let cases: &[(&str, Damage)] = &[
        ("a write to a sentinel", |sb| std::fs::write(sb.dir("sentinel/file"), "x").unwrap()),
        ("a chmod of a sentinel", |sb| {
            std::fs::set_permissions(sb.dir("sentinel/dir/nested"), std::fs::Permissions::from_mode(0o777)).unwrap()
        }),
        ("a changed mtime", |sb| {
            let f = std::fs::File::open(sb.dir("sentinel-file")).unwrap();
            f.set_modified(std::time::SystemTime::now()).unwrap();
        }),
        ("a replaced symlink", |sb| {
            std::fs::remove_file(sb.dir("sentinel/link")).unwrap();
            symlink("exec", sb.dir("sentinel/link")).unwrap();
        }),
        ("a file next to the root", |sb| std::fs::write(sb.dir("stray"), "x").unwrap()),
        ("a file next to parent/", |sb| std::fs::write(sb.base().join("stray"), "x").unwrap()),
        ("a file in the sentinel dir", |sb| std::fs::write(sb.dir("sentinel/dir/new"), "x").unwrap()),
        ("a hard link to a sentinel", |sb| {
            std::fs::hard_link(sb.dir("sentinel/file"), sb.fresh_dir("root").join("x")).unwrap()
        }),
    ];
    for (what, damage) in cases {
        let sb = harness::Sandbox::new();
        sb.check(&["root"], "nothing");
        damage(&sb);
        let noticed = catch_unwind(AssertUnwindSafe(|| sb.check(&["root"], what))).is_err();
        assert!(noticed, "{what} went unnoticed");
    }

    // What every extracted layer must satisfy.
    let sb = harness::Sandbox::new();
    let root = sb.fresh_dir("root");
    std::fs::write(root.join("f"), "x").unwrap();
    harness::layer_tree(&root, "clean");
    std::fs::hard_link(root.join("f"), sb.fresh_dir("root1").join("g")).unwrap();
    let noticed = catch_unwind(AssertUnwindSafe(|| harness::layer_tree(&root, "link out"))).is_err();
    assert!(noticed, "a hard link out of the layer went unnoticed");
    std::fs::remove_file(sb.dir("root1/g")).unwrap();
    let path = std::ffi::CString::new(root.join("f").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a value buffer of the length passed.
    let r = unsafe { libc::setxattr(path.as_ptr(), c"trusted.overlay.redirect".as_ptr(), c"/".as_ptr().cast(), 1, 0) };
    if r == 0 {
        let noticed = catch_unwind(AssertUnwindSafe(|| harness::layer_tree(&root, "overlay xattr"))).is_err();
        assert!(noticed, "an overlayfs xattr went unnoticed");
    }
}
