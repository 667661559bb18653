//! The commands around the runtime, through the real binary: `completion`, the hidden
//! `generate-man`, `version` (and `--version`), `info`, and `make install` / `make
//! uninstall` into a scratch DESTDIR.

mod util;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use util::*;

#[test]
fn completion_scripts() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = env.ok(&["completion", shell]);
        assert!(script.lines().count() > 10, "{shell}: script too short:\n{script}");
        // fish names long options without their dashes.
        let root_opt = if shell == "fish" { "-l root" } else { "--root" };
        for needle in ["coracle", "run", "images", root_opt] {
            assert!(script.contains(needle), "{shell}: script does not mention {needle:?}");
        }
        // The hidden command is not offered.
        assert!(!script.contains("generate-man"), "{shell}: script offers the hidden generate-man");
    }
    // Nothing was created: completion does not touch the store.
    assert!(!env.root().exists(), "completion created the store");
}

#[test]
fn completion_bash_loads() {
    let env = Env::new();
    let script = env.path("coracle.bash");
    std::fs::write(&script, env.ok(&["completion", "bash"])).unwrap();
    let out = sh(Command::new("bash").arg("-c").arg(format!("source {} && complete -p coracle", script.display())));
    assert!(out.contains("coracle"), "bash did not register a completion: {out}");
}

#[test]
fn completion_bad_shell() {
    let env = Env::new();
    env.run(&["completion", "tcsh"]).assert_error("invalid value 'tcsh'");
    env.run(&["completion"]).assert_error("<SHELL>");
}

#[test]
fn generate_man_pages() {
    let env = Env::new();
    let dir = env.path("man/man1");
    let out = env.ok(&["generate-man", dir.to_str().unwrap()]);
    // One path per page on stdout, each of them written.
    let listed: Vec<&str> = out.lines().collect();
    assert!(listed.len() > 10, "too few pages: {out}");
    for p in &listed {
        assert!(Path::new(p).is_file(), "listed page {p} does not exist");
    }
    for (page, needle) in [("coracle.1", "coracle\\-run"), ("coracle-run.1", "run"), ("coracle-info.1", "info")] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".TH") || text.starts_with(".ie"), "{page} is not roff:\n{text}");
        assert!(text.contains(".TH"), "{page} has no title");
        assert!(text.contains(needle), "{page} does not mention {needle:?}");
    }
    assert!(!dir.join("coracle-generate-man.1").exists(), "the hidden command got a page");
    assert!(!dir.join("coracle-help.1").exists(), "clap's help command got a page");
    // Hidden from --help too.
    assert!(!env.ok(&["--help"]).contains("generate-man"));
}

#[test]
fn version_string() {
    let env = Env::new();
    let v = env.ok(&["version"]);
    let want = format!("coracle {} (git ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want), "version {v:?} does not start with {want:?}");
    assert_eq!(v.lines().count(), 1, "{v:?}");
    let rev = v[want.len()..].split([',', ')']).next().unwrap();
    let hash = rev.strip_suffix("-dirty").unwrap_or(rev);
    assert!(
        hash == "unknown" || (hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "revision {rev:?} is neither a short hash nor unknown"
    );
    assert!(v.contains("linux"), "no target triple in {v:?}");
    // --version says the same, at the top and for a command.
    assert_eq!(env.ok(&["--version"]), v);
    assert_eq!(env.ok(&["run", "--version"]), v.replacen("coracle", "coracle-run", 1));
}

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = r.trim().split(|c: char| !c.is_ascii_digit()).map(|n| n.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn info(env: &Env) -> Value {
    let out = env.ok(&["info", "--format", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("info is not JSON ({e}):\n{out}"))
}

#[test]
fn info_json() {
    let env = Env::new();
    // Before anything: no store, and info does not make one.
    let v = info(&env);
    assert!(!env.root().exists(), "info created the store");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["revision"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    assert!(v["target"].as_str().is_some_and(|t| t.contains("linux")), "{v}");
    assert_eq!(v["store"]["path"], env.root().to_str().unwrap());
    assert_eq!(v["store"]["exists"], false);
    assert_eq!(v["store"]["images"], Value::Null);
    assert_eq!(v["state"]["running"], 0);
    assert!(v["root"].is_boolean());

    let k = &v["kernel"];
    assert!(k["release"].as_str().is_some_and(|r| !r.is_empty()), "{k}");
    for f in ["overlay", "openat2", "pidfd", "clone3", "mount_api"] {
        assert!(k[f].is_boolean(), "kernel.{f} missing: {k}");
    }
    assert!(["v2", "hybrid", "v1", "unknown"].contains(&k["cgroup"].as_str().unwrap()), "{k}");
    assert!(k["notes"].is_object(), "{k}");
    if kernel_version() >= (5, 6) {
        for f in ["overlay", "openat2", "pidfd"] {
            assert_eq!(k[f], true, "kernel.{f} on Linux {:?}: {k}", kernel_version());
        }
    } else {
        println!("note: Linux {:?} < 5.6: kernel features only checked for presence", kernel_version());
    }

    // One imported image: a layer, its blob, the config and the manifest.
    let mut b = tar::Builder::new(Vec::new());
    let data = b"hello\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello.txt", &data[..]).unwrap();
    let tar = b.into_inner().unwrap();
    env.run_stdin(&["import", "-", "localhost/polish:1"], &tar);
    let v = info(&env);
    let s = &v["store"];
    assert_eq!(s["exists"], true, "{s}");
    assert_eq!(s["error"], Value::Null, "{s}");
    assert_eq!(s["images"], 1, "{s}");
    assert_eq!(s["names"], 1, "{s}");
    assert_eq!(s["layers"], 1, "{s}");
    assert_eq!(s["layer_bytes"], tar.len() as u64, "{s}");
    assert_eq!(s["incomplete_layers"], 0, "{s}");
    assert!(s["blobs"].as_u64().unwrap() >= 3, "{s}");
    let (blob_bytes, layer_bytes) = (s["blob_bytes"].as_u64().unwrap(), s["layer_bytes"].as_u64().unwrap());
    assert_eq!(s["total_bytes"].as_u64().unwrap(), blob_bytes + layer_bytes, "{s}");

    // The listing names the same things.
    let text = env.ok(&["info"]);
    for needle in
        ["coracle ", "store:", "images:    1 (1 name)", "kernel:", "overlayfs:", "openat2:", "cgroup:", "user:"]
    {
        assert!(text.contains(needle), "info does not show {needle:?}:\n{text}");
    }
}

#[test]
fn info_unreadable_store_is_not_fatal() {
    let env = Env::new();
    // A file where the store should be: reported as missing, exit 0.
    std::fs::write(env.root(), b"not a store").unwrap();
    let v = info(&env);
    assert_eq!(v["store"]["exists"], false);
    // A store whose blobs directory is a file: reported, exit 0.
    std::fs::remove_file(env.root()).unwrap();
    env.ok(&["images"]);
    std::fs::remove_dir(env.root().join("blobs/sha256")).unwrap();
    std::fs::write(env.root().join("blobs/sha256"), b"").unwrap();
    let v = info(&env);
    assert!(v["store"]["error"].as_str().is_some_and(|e| e.contains("blobs/sha256")), "{v}");
    assert!(env.ok(&["info"]).contains("unreadable"));
}

#[test]
fn make_install_and_uninstall() {
    let have_make = Command::new("make").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_make {
        println!("note: make is not installed: skipping the make install test (scripts/test installs make)");
        return;
    }
    let env = Env::new();
    let dest = env.path("dest");
    let make = |target: &str| {
        sh(Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .arg(target)
            .arg(format!("DESTDIR={}", dest.display()))
            .arg("PREFIX=/usr")
            // The binary under test, so that the test does not build a release binary.
            .arg(format!("BIN={}", coracle_bin())))
    };
    make("install");
    let files = [
        "usr/bin/coracle",
        "usr/share/man/man1/coracle.1",
        "usr/share/man/man1/coracle-run.1",
        "usr/share/man/man1/coracle-completion.1",
        "usr/share/bash-completion/completions/coracle",
        "usr/share/zsh/site-functions/_coracle",
        "usr/share/fish/vendor_completions.d/coracle.fish",
    ];
    use std::os::unix::fs::PermissionsExt;
    for f in files {
        let md = std::fs::metadata(dest.join(f)).unwrap_or_else(|e| panic!("{f} not installed: {e}"));
        assert!(md.len() > 0, "{f} is empty");
        let want = if f.starts_with("usr/bin/") { 0o755 } else { 0o644 };
        assert_eq!(md.permissions().mode() & 0o777, want, "{f}: mode");
    }
    let installed = sh(Command::new(dest.join("usr/bin/coracle")).arg("version"));
    assert!(installed.starts_with("coracle "), "{installed}");
    make("uninstall");
    for f in files {
        assert!(!dest.join(f).exists(), "{f} left after uninstall");
    }
    assert!(!dest.join("usr/share/man/man1/coracle-info.1").exists());
}
