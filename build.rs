//! Build script: records the git revision and the target triple for `coracle version`
//! (CORACLE_GIT_REV, CORACLE_TARGET). The revision is `git rev-parse --short HEAD`, with
//! `-dirty` when `git status --porcelain` lists anything, or `unknown` outside a git
//! checkout of this crate (a source tarball, a vendored copy inside another repository).
//! Packagers can set CORACLE_GIT_REV themselves; it then wins.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CORACLE_GIT_REV");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=CORACLE_TARGET={target}");

    let rev = match std::env::var("CORACLE_GIT_REV") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_owned(),
        _ => {
            let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
            git_rev(&dir).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=CORACLE_GIT_REV={rev}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

fn git_rev(dir: &Path) -> Option<String> {
    // Only this crate's own checkout: not a repository that happens to contain it.
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let hash = git(dir, &["rev-parse", "--short", "HEAD"])?;
    // Without optional locks, status does not rewrite the index (which would rerun this).
    let dirty = !git(dir, &["--no-optional-locks", "status", "--porcelain"])?.is_empty();

    // Refresh when HEAD moves (checkout, commit), when the index changes (add, commit) and
    // when a source file changes (the tree becomes dirty). Only existing paths: cargo
    // reruns a script every time for a path that does not exist.
    let mut watch = vec![dir.join("src"), dir.join("Cargo.toml"), dir.join("Cargo.lock")];
    if let Some(git_dir) = git(dir, &["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        watch.push(git_dir.join("HEAD"));
        // Appended to by every commit, checkout and reset, even when the ref is packed.
        watch.push(git_dir.join("logs/HEAD"));
        watch.push(git_dir.join("index"));
        if let Some(common) = git(dir, &["rev-parse", "--git-common-dir"]).map(|c| dir.join(c)) {
            watch.push(common.join("packed-refs"));
            if let Some(head_ref) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
                watch.push(common.join(head_ref));
            }
        }
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}
