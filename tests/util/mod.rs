//! Shared helpers for the integration tests: the coracle binary against a private store,
//! fixture images, the probe, root checks. Every helper cleans up what it makes (temp
//! dirs are removed on drop, also when a test panics).

#![allow(dead_code)]

#[path = "../../rootfs-fixtures/assemble.rs"]
pub mod assemble;
pub mod procs;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub use assemble::*;

pub fn coracle_bin() -> &'static str {
    env!("CARGO_BIN_EXE_coracle")
}

/// Fails loudly when not root: these tests are meant to run as root (CI does).
pub fn require_root() {
    // SAFETY-free: geteuid via std is not available; read /proc instead.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).unwrap();
    assert_eq!(euid, "0", "this test needs root (CI runs the suite as root): run `scripts/test` as root");
}

/// A private store in a temporary directory, removed on drop.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env { dir: tempfile::Builder::new().prefix("coracle-test-").tempdir().unwrap() }
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(coracle_bin());
        c.arg("--root").arg(self.root()).arg("--state").arg(self.dir.path().join("state"));
        c.env_remove("CORACLE_ROOT").env_remove("CORACLE_STATE");
        c
    }
    /// Runs coracle with `args`; returns the output.
    pub fn run(&self, args: &[&str]) -> Out {
        Out(self.cmd().args(args).stdin(Stdio::null()).output().unwrap())
    }
    /// Runs coracle with `args` and `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        use std::io::Write;
        let mut child =
            self.cmd().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        Out(child.wait_with_output().unwrap())
    }
    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status(), "coracle {args:?} failed: {}", o.stderr());
        o.stdout()
    }
    /// `images --format json`, parsed.
    pub fn images(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["images", "--format", "json"])).unwrap()
    }
    pub fn inspect(&self, image: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", image])).unwrap();
        v[0].clone()
    }
    pub fn layer_root(&self, diff_id: &str) -> PathBuf {
        self.root().join("layers/sha256").join(hex(diff_id)).join("root")
    }
    /// Every file under the store (relative paths), for "nothing committed" checks.
    pub fn store_objects(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["blobs/sha256", "layers/sha256", "images", "refs"] {
            if let Ok(rd) = std::fs::read_dir(self.root().join(sub)) {
                for e in rd.flatten() {
                    out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        out
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Out(pub Output);

impl Out {
    pub fn status(&self) -> bool {
        self.0.status.success()
    }
    pub fn code(&self) -> Option<i32> {
        self.0.status.code()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts exit 125 with a one-line `coracle:` error containing `needle`.
    pub fn assert_error(&self, needle: &str) {
        let err = self.stderr();
        assert_eq!(self.code(), Some(125), "expected exit 125, got {:?}; stderr: {err}", self.code());
        assert_eq!(err.lines().count(), 1, "error must be one line: {err:?}");
        assert!(err.starts_with("coracle: "), "error must start with 'coracle: ': {err:?}");
        assert!(err.contains(needle), "error {err:?} does not mention {needle:?}");
    }
}

/// The static probe binary, built once per test run with the host's target triple.
pub fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target_dir = manifest.join("target/probe");
        let triple = host_triple();
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(manifest.join("rootfs-fixtures/probe/Cargo.toml"))
            .args(["--target", &triple, "--target-dir"])
            .arg(&target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .status()
            .unwrap();
        assert!(status.success(), "building the probe failed");
        target_dir.join(&triple).join("release/probe")
    })
}

fn host_triple() -> String {
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    String::from_utf8(out.stdout).unwrap().lines().find_map(|l| l.strip_prefix("host: ")).unwrap().to_owned()
}

/// busybox-static, which the test command installs.
pub fn busybox() -> &'static Path {
    let p = Path::new("/bin/busybox");
    assert!(p.exists(), "/bin/busybox is missing: run the test command (scripts/test), which installs busybox-static");
    p
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs-fixtures")
}

/// The default fixture image (probe + busybox + base tree), one gzip layer.
pub fn default_image() -> Built {
    let rootfs = default_rootfs(&fixtures_dir(), probe(), Some(busybox()));
    build(&Image::new(vec![(rootfs, Comp::Gzip)]))
}

/// The default fixture image, assembled once per test binary (each test still pulls it
/// into its own store).
pub fn default_built() -> &'static Built {
    static IMG: OnceLock<Built> = OnceLock::new();
    IMG.get_or_init(default_image)
}

/// The default rootfs layer tarball, for images that stack more layers on it.
pub fn default_tar() -> &'static [u8] {
    &default_built().tars[0]
}

/// Entry names of a directory (empty when it does not exist).
pub fn entries(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The same, as a sorted list.
pub fn names(dir: &Path) -> Vec<String> {
    entries(dir).into_iter().collect()
}

/// Entry names of `rel` in the env's store.
pub fn store_entries(env: &Env, rel: &str) -> std::collections::BTreeSet<String> {
    entries(&env.root().join(rel))
}

/// Asserts a failed run: exit `code`, one line on stderr starting with `prefix`.
pub fn assert_fails(o: &Out, code: i32, prefix: &str) {
    let err = o.stderr();
    assert_eq!(o.code(), Some(code), "expected exit {code}, got {:?}; stderr: {err:?}", o.0.status);
    assert_eq!(err.lines().count(), 1, "error must be one line: {err:?}");
    assert!(err.starts_with(prefix), "error must start with {prefix:?}: {err:?}");
}

/// A command from the host that must exist (installed by the test command).
pub fn need_tool(name: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file())).unwrap_or(false);
    assert!(found, "{name} is not installed: run the test command (scripts/test), which installs it");
}

/// Runs a host command and asserts it succeeded.
pub fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// xorshift64: deterministic, seedable, and fast enough in a debug build (the tests that
/// pick random kill points, fill levels and contents).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
