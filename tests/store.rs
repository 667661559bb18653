//! The store under pressure, through the real `coracle` binary: concurrent imports of
//! overlapping images, gc racing imports and running containers, SIGKILL at random points
//! of an import, ENOSPC on a small tmpfs, and the hygiene of the store root, fsck and gc.
//! Every mount, process and temp dir a test makes is released by a guard, also on panic.

mod util;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::procs::Tmpfs;
use util::*;

// ---------------------------------------------------------------------------------------
// Helpers: data, processes, mounts, and looking at the store from outside.

/// The heavy tests (hundreds of MB of I/O, timed kills, a 10 s race) run one at a time:
/// on a 2-core VM, overlapping them only makes their timings meaningless.
fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// `len` bytes of PRNG output: neither gzip nor zstd can shrink them, so a layer's size on
/// disk is what the test says it is.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; len];
    let mut i = 0;
    while i + 8 <= len {
        buf[i..i + 8].copy_from_slice(&rng.next().to_le_bytes());
        i += 8;
    }
    buf
}

/// A layer of `files` noise files of `size` bytes each in `d<seed>/` (many entries, so
/// that an extraction has many points to be killed or to run out of space at).
fn noise_layer(seed: u64, files: usize, size: usize) -> Vec<u8> {
    let dir = format!("d{seed}");
    let mut l = LayerBuilder::new().dir(&dir, 0o755);
    for i in 0..files {
        l = l.file(&format!("{dir}/f{i}"), 0o644, &noise_file(seed, i, size));
    }
    l.finish()
}

fn noise_file(seed: u64, i: usize, size: usize) -> Vec<u8> {
    noise(seed * 1000 + i as u64, size)
}

/// One coracle process with its output in files (no pipes to drain while polling).
struct Job {
    child: Child,
    label: String,
    out: PathBuf,
    err: PathBuf,
}

/// What a finished job did.
struct Done {
    label: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// coracle processes started by a test. Any still running on drop (a failed assertion)
/// are SIGKILLed by their own PID and reaped.
#[derive(Default)]
struct Jobs(Vec<Job>);

impl Jobs {
    fn spawn(&mut self, env: &Env, args: &[String]) {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let (out, err) = (env.path(&format!("job{n}.out")), env.path(&format!("job{n}.err")));
        let child = env
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap();
        self.0.push(Job { child, label: args.join(" "), out, err });
    }

    /// Waits for every job; `on_first_exit` runs once, as soon as the first one has exited,
    /// with the number of those still running.
    fn wait(&mut self, mut on_first_exit: impl FnMut(usize)) -> Vec<Done> {
        let mut first = true;
        loop {
            let mut running = 0;
            for j in &mut self.0 {
                running += usize::from(j.child.try_wait().unwrap().is_none());
            }
            if first && running < self.0.len() {
                first = false;
                on_first_exit(running);
            }
            if running == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.0
            .drain(..)
            .map(|mut j| Done {
                status: j.child.wait().unwrap(),
                stdout: fs::read_to_string(&j.out).unwrap_or_default(),
                stderr: fs::read_to_string(&j.err).unwrap_or_default(),
                label: j.label,
            })
            .collect()
    }

    /// SIGKILLs every job (by PID) and reaps it; true for each that was still running.
    fn kill(&mut self) -> Vec<bool> {
        self.0
            .drain(..)
            .map(|mut j| {
                let running = j.child.try_wait().unwrap().is_none();
                j.child.kill().unwrap();
                let st = j.child.wait().unwrap();
                running && st.signal() == Some(libc::SIGKILL)
            })
            .collect()
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        for j in &mut self.0 {
            if let Ok(None) = j.child.try_wait() {
                let _ = j.child.kill();
            }
            let _ = j.child.wait();
        }
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Runs coracle, SIGKILLing it if it takes longer than `limit`: `None` then.
fn run_within(env: &Env, a: &[&str], limit: Duration) -> Option<Done> {
    let mut jobs = Jobs::default();
    jobs.spawn(env, &args(a));
    let start = Instant::now();
    while jobs.0[0].child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            jobs.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    jobs.wait(|_| {}).pop()
}

/// Waits until `n` processes are blocked on an flock of `path` (`->` lines of /proc/locks).
fn wait_for_lock_waiters(path: &Path, n: usize) {
    let ino = fs::metadata(path).unwrap().ino().to_string();
    let start = Instant::now();
    loop {
        let locks = fs::read_to_string("/proc/locks").unwrap();
        // "1: -> FLOCK  ADVISORY  READ 1234 fd:01:5678 0 EOF": the 6th field ends in the inode.
        let waiting = locks
            .lines()
            .filter(|l| l.contains("->") && l.split_whitespace().any(|f| f.rsplit(':').next() == Some(&ino)))
            .count();
        if waiting >= n {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "only {waiting} of {n} processes reached the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Names created in one directory (inotify `IN_CREATE`, not recursive). Every layer
/// extraction makes exactly one `tmp/layer-*` directory, so this counts extractions with
/// no hook in coracle; a layer extracted twice shows up even if the second copy is thrown
/// away (which an inode check on the committed layer would miss).
struct CreateWatch {
    file: File,
}

impl CreateWatch {
    fn new(dir: &Path) -> CreateWatch {
        // SAFETY: inotify_init1 takes no pointers; the fd it returns is owned by nobody else.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor that only this OwnedFd will close.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: fd is live; path is NUL-terminated and outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_CREATE) };
        assert!(wd >= 0, "inotify_add_watch {}: {}", dir.display(), io::Error::last_os_error());
        CreateWatch { file: File::from(fd) }
    }

    /// Every name created since the last call.
    fn drain(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read inotify: {e}"),
            };
            let mut at = 0;
            // struct inotify_event { int wd; u32 mask, cookie, len; char name[len]; }
            while at + 16 <= n {
                let word = |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
                let (mask, len) = (word(4), word(12) as usize);
                assert_eq!(mask & libc::IN_Q_OVERFLOW, 0, "inotify queue overflowed: the count would be wrong");
                let name = &buf[at + 16..at + 16 + len];
                let name = name.split(|&b| b == 0).next().unwrap_or_default();
                names.push(String::from_utf8_lossy(name).into_owned());
                at += 16 + len;
            }
        }
        names
    }
}

/// The blob and layer hexes the image records on disk reference.
fn referenced(env: &Env) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut blobs, mut layers) = (BTreeSet::new(), BTreeSet::new());
    for name in store_entries(env, "images") {
        let rec: Value = serde_json::from_slice(&fs::read(env.root().join("images").join(&name)).unwrap())
            .unwrap_or_else(|e| panic!("image record {name}: {e}"));
        let h = |v: &Value| hex(v.as_str().unwrap()).to_owned();
        blobs.insert(h(&rec["digest"]));
        blobs.insert(h(&rec["config"]));
        for l in rec["layers"].as_array().unwrap() {
            blobs.insert(h(&l["blob"]));
            layers.insert(h(&l["diff_id"]));
        }
    }
    (blobs, layers)
}

/// `fsck` exits 0 and reports no problem at all (only its summary line).
fn assert_fsck_clean(env: &Env, context: &str) {
    let o = env.run(&["fsck"]);
    let out = o.stdout();
    assert!(o.status(), "{context}: fsck failed: {out}{}", o.stderr());
    assert_eq!(out.lines().count(), 1, "{context}: fsck reported problems:\n{out}");
    assert!(out.contains(": 0 problems"), "{context}: {out}");
}

/// What gc leaves: tmp/ empty, exactly the blobs and layers the records name, each layer
/// with its marker.
fn assert_only_referenced(env: &Env, context: &str) {
    let (blobs, layers) = referenced(env);
    assert_eq!(store_entries(env, "tmp"), BTreeSet::new(), "{context}: tmp/ not empty");
    assert_eq!(store_entries(env, "blobs/sha256"), blobs, "{context}: blobs differ from what the images name");
    assert_eq!(store_entries(env, "layers/sha256"), layers, "{context}: layers differ from what the images name");
    for l in &layers {
        assert!(env.root().join("layers/sha256").join(l).join("layer.json").is_file(), "{context}: layer {l}");
    }
}

/// Nothing at all in blobs/, layers/, images/, refs/ and tmp/.
fn assert_store_empty(env: &Env, context: &str) {
    for d in ["blobs/sha256", "layers/sha256", "images", "refs", "tmp"] {
        assert_eq!(store_entries(env, d), BTreeSet::new(), "{context}: {d} not empty");
    }
}

/// The committed layer `diff_id` is there: marker and root/.
fn assert_layer(env: &Env, diff_id: &str, context: &str) {
    let dir = env.root().join("layers/sha256").join(hex(diff_id));
    assert!(dir.join("layer.json").is_file() && dir.join("root").is_dir(), "{context}: layer {diff_id} missing");
}

/// The inode of every committed layer's marker, by layer hex.
fn marker_inodes(env: &Env) -> BTreeMap<String, u64> {
    let dir = env.root().join("layers/sha256");
    entries(&dir)
        .into_iter()
        .filter_map(|l| fs::metadata(dir.join(&l).join("layer.json")).ok().map(|m| (l, m.ino())))
        .collect()
}

/// Exit 125 with one `coracle:` line saying the disk is full (ENOSPC, or our reserve guard).
fn assert_space_error(o: &Out, context: &str) {
    let err = o.stderr();
    assert_eq!(o.code(), Some(125), "{context}: expected exit 125, got {:?}: {err}", o.code());
    assert_eq!(err.lines().count(), 1, "{context}: error must be one line: {err:?}");
    assert!(err.starts_with("coracle: "), "{context}: {err:?}");
    assert!(
        err.contains("No space left on device") || err.contains("nearly full"),
        "{context}: the error does not say the disk is full: {err:?}"
    );
}

/// Nothing half-done became visible: no image record, no name, no layer without marker,
/// and fsck is clean (every blob whole). Complete layers of a failed import may remain.
fn assert_nothing_partial(env: &Env, context: &str) {
    assert_eq!(store_entries(env, "images"), BTreeSet::new(), "{context}: an image record was committed");
    assert_eq!(store_entries(env, "refs"), BTreeSet::new(), "{context}: a name was committed");
    for l in store_entries(env, "layers/sha256") {
        assert!(env.root().join("layers/sha256").join(&l).join("layer.json").is_file(), "{context}: layer {l}");
    }
    assert_fsck_clean(env, context);
}

/// Bytes of allocated blocks under `path`, counted as coracle's gc counts them.
fn usage(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(md) = fs::symlink_metadata(p) else { return 0 };
        let mut n = 0;
        if md.nlink() <= 1 || md.is_dir() || seen.insert((md.dev(), md.ino())) {
            n += md.blocks() * 512;
        }
        if md.is_dir() {
            for e in fs::read_dir(p).unwrap().flatten() {
                n += walk(&e.path(), seen);
            }
        }
        n
    }
    walk(path, &mut HashSet::new())
}

/// Parses docker-style sizes as coracle prints them (`512B`, `4.26MB`).
fn parse_size(s: &str) -> f64 {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap();
    let (num, unit) = s.split_at(split);
    let k = ["B", "kB", "MB", "GB", "TB"].iter().position(|u| *u == unit).unwrap_or_else(|| panic!("unit {s}"));
    num.parse::<f64>().unwrap() * 1000f64.powi(k as i32)
}

fn oci_src(dir: &Path) -> String {
    format!("oci:{}", dir.display())
}

// ---------------------------------------------------------------------------------------
// 1. Concurrency: parallel imports of overlapping images extract each layer once.

/// Eight coracle processes, released together from behind the store lock, import three
/// images that share two base layers, through four transports. Proof of "extracted once":
/// an inotify watch on tmp/ counts the `layer-*` extraction dirs (exactly one per distinct
/// diff-id), and the marker inode of each layer seen when the first process exits never
/// changes afterwards, also not across a second round of the same eight imports.
#[test]
fn concurrent_imports_of_overlapping_images_extract_each_layer_once() {
    require_root();
    let _heavy = heavy();
    let env = Env::new();
    let (base1, base2) = (noise_layer(1, 4, 1 << 20), noise_layer(2, 3, 1 << 20));
    let tops: Vec<Vec<u8>> = (0..3).map(|i| noise_layer(10 + i, 2, 1 << 20)).collect();
    let imgs: Vec<Built> = tops
        .iter()
        .map(|t| {
            build(&Image::new(vec![(base1.clone(), Comp::Zstd), (base2.clone(), Comp::Gzip), (t.clone(), Comp::Gzip)]))
        })
        .collect();
    let diff_ids: BTreeSet<String> = imgs.iter().flat_map(|i| i.diff_ids.iter().map(|d| hex(d).to_owned())).collect();
    assert_eq!(diff_ids.len(), 5);
    let oci = env.path("oci");
    write_oci_layout(&oci, &[(&imgs[0], Some("a")), (&imgs[1], Some("b")), (&imgs[2], Some("c"))]);
    tar_dir(&oci, &env.path("oci.tar"));
    let save = env.path("save.tar");
    write_docker_archive(&save, &[(&imgs[0], &["img:a"]), (&imgs[1], &["img:b"]), (&imgs[2], &["img:c"])]);
    let (oci, save) = (oci.display().to_string(), save.display().to_string());
    let round: Vec<Vec<String>> = vec![
        args(&["pull", &format!("oci:{oci}:a")]),
        args(&["pull", &format!("docker-archive:{save}:img:a")]),
        args(&["pull", &format!("oci:{oci}:b")]),
        args(&["load", "-i", &save]),
        args(&["pull", &format!("oci:{oci}")]),
        args(&["pull", &format!("docker-archive:{save}:img:c")]),
        args(&["pull", &format!("oci-archive:{}:c", env.path("oci.tar").display())]),
        args(&["pull", &format!("docker-archive:{save}:img:b")]),
    ];

    env.ok(&["images"]); // creates the store, so that tmp/ can be watched
    let mut watch = CreateWatch::new(&env.root().join("tmp"));
    let mut jobs = Jobs::default();
    // The start gate: the store lock held exclusively (as gc holds it) until all eight
    // wait for it, so that they begin their imports at the same instant.
    let gate = OpenOptions::new().write(true).create(true).truncate(false).open(env.root().join("lock")).unwrap();
    gate.lock().unwrap();
    for a in &round {
        jobs.spawn(&env, a);
    }
    wait_for_lock_waiters(&env.root().join("lock"), round.len());
    drop(gate);
    let start = Instant::now();
    let (mut first, mut overlapping) = (BTreeMap::new(), 0);
    let done = jobs.wait(|running| (first, overlapping) = (marker_inodes(&env), running));
    eprintln!("8 concurrent imports: {:?}, {overlapping} still running when the first ended", start.elapsed());
    for d in &done {
        assert!(d.status.success(), "coracle {} failed ({:?}): {}", d.label, d.status, d.stderr);
    }
    assert!(!first.is_empty(), "the first import to finish committed its layers");

    let extractions: Vec<String> = watch.drain().into_iter().filter(|n| n.starts_with("layer-")).collect();
    assert_eq!(extractions.len(), diff_ids.len(), "one extraction per distinct layer: {extractions:?}");
    assert_eq!(store_entries(&env, "layers/sha256"), diff_ids);
    let after = marker_inodes(&env);
    for (l, ino) in &first {
        assert_eq!(after.get(l), Some(ino), "layer {l} was replaced after the first import finished");
    }
    assert_eq!(store_entries(&env, "tmp"), BTreeSet::new(), "tmp/ is empty after successful imports");
    assert_fsck_clean(&env, "after the concurrent imports");
    // 3 OCI manifests + 3 docker manifests; blobs: those 6, 3 configs (shared), 5 compressed
    // layers from the OCI side and 5 uncompressed ones from the docker side.
    assert_eq!(store_entries(&env, "images").len(), 6);
    assert_eq!(store_entries(&env, "refs").len(), 6);
    let (blobs, layers) = referenced(&env);
    assert_eq!(layers, diff_ids);
    assert_eq!(blobs.len(), 19);
    assert_eq!(store_entries(&env, "blobs/sha256"), blobs);
    for (i, t) in tops.iter().enumerate() {
        let root = env.layer_root(&sha256(t));
        assert_eq!(fs::read(root.join(format!("d{}/f1", 10 + i))).unwrap(), noise_file(10 + i as u64, 1, 1 << 20));
    }
    assert_eq!(fs::read(env.layer_root(&sha256(&base1)).join("d1/f3")).unwrap(), noise_file(1, 3, 1 << 20));

    // The same eight again, everything present: nothing is extracted or replaced.
    for a in &round {
        jobs.spawn(&env, a);
    }
    for d in jobs.wait(|_| {}) {
        assert!(d.status.success(), "second round: coracle {} failed: {}", d.label, d.stderr);
    }
    let again: Vec<String> = watch.drain().into_iter().filter(|n| n.starts_with("layer-")).collect();
    assert_eq!(again, Vec::<String>::new(), "second round extracted again");
    assert_eq!(marker_inodes(&env), after);
    assert_eq!(store_entries(&env, "tmp"), BTreeSet::new());
    assert_fsck_clean(&env, "after the second round");
}

// ---------------------------------------------------------------------------------------
// 2. gc against imports and running containers.

/// Three importers (OCI dir, docker-archive pull, `load`) loop for 10 s over images that
/// share a base layer: import under a fresh name, check the image and its layers are
/// there, `rmi`, repeat. Another thread runs `gc` in a loop meanwhile, so gc keeps
/// deleting layers the importers must bring back, and one more a read-only `fsck`. Every
/// command must succeed and every fsck be clean; afterwards every remaining image is whole.
#[test]
fn gc_racing_imports_never_deletes_what_they_import() {
    require_root();
    let _heavy = heavy();
    let env = Env::new();
    let base = noise_layer(20, 2, 1 << 20);
    const IMPORTERS: usize = 3;
    // images[i][k]: importer i's k-th image: the shared base, its own mid, a unique top.
    let images: Vec<Vec<Built>> = (0..IMPORTERS as u64)
        .map(|i| {
            let mid = noise_layer(21 + i, 1, 512 << 10);
            (0..2u64)
                .map(|k| {
                    let top = noise_layer(30 + 2 * i + k, 2, 256 << 10);
                    build(&Image::new(vec![(base.clone(), Comp::Gzip), (mid.clone(), Comp::Gzip), (top, Comp::Gzip)]))
                })
                .collect()
        })
        .collect();
    let oci = env.path("imp0");
    write_oci_layout(&oci, &[(&images[0][0], Some("k0")), (&images[0][1], Some("k1"))]);
    write_docker_archive(&env.path("imp1.tar"), &[(&images[1][0], &["imp1:k0"]), (&images[1][1], &["imp1:k1"])]);
    for (k, img) in images[2].iter().enumerate() {
        write_docker_archive(&env.path(&format!("imp2-k{k}.tar")), &[(img, &[])]);
    }
    // The command importer i runs for its image k under the name `tag`.
    let import_cmd = |i: usize, k: usize, tag: &str| -> Vec<String> {
        match i {
            0 => args(&["pull", "--tag", tag, &format!("oci:{}:k{k}", oci.display())]),
            1 => args(&["pull", "--tag", tag, &format!("docker-archive:{}:imp1:k{k}", env.path("imp1.tar").display())]),
            _ => args(&["load", "--tag", tag, "-i", &env.path(&format!("imp2-k{k}.tar")).display().to_string()]),
        }
    };
    env.ok(&["images"]);

    let deadline = Instant::now() + Duration::from_secs(10);
    let (importers, gc, fsck) = std::thread::scope(|s| {
        let importers: Vec<_> = (0..IMPORTERS)
            .map(|i| {
                let (env, images, import_cmd) = (&env, &images, &import_cmd);
                s.spawn(move || {
                    let mut rng = Rng::new(100 + i as u64);
                    let mut errors = Vec::new();
                    let mut n = 0;
                    while errors.is_empty() {
                        let k = n % 2;
                        let tag = format!("localhost/imp{i}:n{n}");
                        let o = env.run(&import_cmd(i, k, &tag).iter().map(String::as_str).collect::<Vec<_>>());
                        if !o.status() {
                            errors.push(format!("importer {i} #{n}: import failed: {}", o.stderr()));
                            break;
                        }
                        // The name is ours and the image only ours: gc must leave all of it.
                        if !env.run(&["inspect", &tag]).status() {
                            errors.push(format!("importer {i} #{n}: {tag} is gone right after its import"));
                        }
                        for d in &images[i][k].diff_ids {
                            let dir = env.root().join("layers/sha256").join(hex(d));
                            if !dir.join("layer.json").is_file() || !dir.join("root").is_dir() {
                                errors.push(format!("importer {i} #{n}: layer {d} of {tag} is missing"));
                            }
                        }
                        n += 1;
                        if Instant::now() >= deadline {
                            break; // the last image stays, for the checks below
                        }
                        let o = env.run(&["rmi", &tag]);
                        if !o.status() {
                            errors.push(format!("importer {i} #{n}: rmi {tag}: {}", o.stderr()));
                        }
                        std::thread::sleep(Duration::from_millis(rng.below(20)));
                    }
                    (n, errors)
                })
            })
            .collect();
        let env = &env;
        let gc = s.spawn(move || {
            let mut rng = Rng::new(99);
            let (mut runs, mut layers_deleted, mut errors) = (0, 0, Vec::new());
            while Instant::now() < deadline {
                let o = env.run(&["gc"]);
                runs += 1;
                if !o.status() {
                    errors.push(format!("gc #{runs}: {}", o.stderr()));
                }
                layers_deleted += o.stdout().lines().filter(|l| l.starts_with("deleted layer")).count();
                std::thread::sleep(Duration::from_millis(rng.below(40)));
            }
            (runs, layers_deleted, errors)
        });
        // A read-only fsck shares the store lock with the importers: whatever it sees of
        // their work (and of rmi's) must look consistent.
        let fsck = s.spawn(move || {
            let (mut runs, mut errors) = (0, Vec::new());
            while Instant::now() < deadline {
                let o = env.run(&["fsck"]);
                runs += 1;
                if !o.status() || o.stdout().lines().count() != 1 {
                    errors.push(format!("fsck #{runs} during the race: {}{}", o.stdout(), o.stderr()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (runs, errors)
        });
        let importers: Vec<_> = importers.into_iter().map(|h| h.join().unwrap()).collect();
        (importers, gc.join().unwrap(), fsck.join().unwrap())
    });

    let ((gc_runs, layers_deleted, gc_errors), (fsck_runs, fsck_errors)) = (gc, fsck);
    eprintln!(
        "imports per importer: {:?}; gc runs: {gc_runs}, layers deleted by them: {layers_deleted}; fsck runs: {fsck_runs}",
        importers.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let errors: Vec<&String> = importers.iter().flat_map(|(_, e)| e).chain(&gc_errors).chain(&fsck_errors).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(importers.iter().all(|(n, _)| *n >= 5), "too few imports to mean anything");
    assert!(gc_runs >= 5 && layers_deleted > 0, "gc never got between the imports: {gc_runs} runs");

    assert_fsck_clean(&env, "after the race");
    assert_eq!(store_entries(&env, "images").len(), IMPORTERS, "each importer's last image stays");
    let (_, layers) = referenced(&env);
    for l in &layers {
        assert_layer(&env, l, "after the race");
    }
    env.ok(&["gc"]);
    assert_only_referenced(&env, "after the final gc");
    assert_fsck_clean(&env, "after the final gc");
}

/// A "running container": a shared flock on a layer's lock file, as `coracle run` holds it.
fn hold_layer(env: &Env, diff_id: &str) -> File {
    let p = env.root().join("locks/layers").join(hex(diff_id));
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).unwrap();
    f.lock_shared().unwrap();
    f
}

/// After `rmi`, gc deletes the image's blobs and its free layer, but keeps (and says so)
/// the layer a running container holds. Pulling the image again meanwhile must neither
/// wait for that container nor extract the layer again; once the container is gone, gc
/// deletes the layer and its lock.
#[test]
fn gc_keeps_a_layer_a_running_container_holds() {
    require_root();
    let env = Env::new();
    let (base, top) = (noise_layer(40, 2, 256 << 10), noise_layer(41, 1, 64 << 10));
    let img = build(&Image::new(vec![(base, Comp::Gzip), (top, Comp::Gzip)]));
    write_oci_layout(&env.path("oci"), &[(&img, Some("v1"))]);
    let src = oci_src(&env.path("oci"));
    env.ok(&["pull", &src]);
    let ino = marker_inodes(&env)[hex(&img.diff_ids[0])];
    env.ok(&["rmi", "localhost/oci:v1"]);

    let container = hold_layer(&env, &img.diff_ids[0]);
    let out = env.ok(&["gc"]);
    assert!(
        out.contains(&format!("kept layer {}: in use by a running container", img.diff_ids[0])),
        "gc did not report the held layer: {out}"
    );
    assert!(out.contains(&format!("deleted layer {}", img.diff_ids[1])), "{out}");
    assert!(out.contains("4 blobs, 1 layers"), "{out}");
    assert_layer(&env, &img.diff_ids[0], "held layer");
    assert_eq!(store_entries(&env, "layers/sha256"), BTreeSet::from([hex(&img.diff_ids[0]).to_owned()]));
    assert_eq!(store_entries(&env, "blobs/sha256"), BTreeSet::new());

    // Regression: the blob is gone but the layer is not; ensuring the layer took its lock
    // exclusively and so waited for the container to exit.
    let o = run_within(&env, &["pull", &src], Duration::from_secs(20))
        .expect("pull blocked on the lock of a layer a running container uses");
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(marker_inodes(&env)[hex(&img.diff_ids[0])], ino, "the held layer was extracted again");
    assert_fsck_clean(&env, "re-pulled while held");
    assert_eq!(env.inspect("localhost/oci:v1")["digest"], img.manifest.digest);

    env.ok(&["rmi", "localhost/oci:v1"]);
    drop(container);
    let out = env.ok(&["gc"]);
    assert!(out.contains(&format!("deleted layer {}", img.diff_ids[0])), "{out}");
    assert!(!out.contains("kept layer"), "{out}");
    assert_store_empty(&env, "container gone");
    assert_eq!(store_entries(&env, "locks/layers"), BTreeSet::new(), "stale layer locks are removed");
}

/// Regression: a docker-archive ships a layer uncompressed that the store holds from a
/// gzip blob; only the tar blob is missing. With a container running on that layer, the
/// load waited for the container to exit (exclusive layer lock vs its shared one).
#[test]
fn load_sharing_a_layer_with_a_running_container_does_not_wait_for_it() {
    require_root();
    let env = Env::new();
    let base = noise_layer(45, 2, 256 << 10);
    let a = build(&Image::new(vec![(base.clone(), Comp::Gzip)]));
    let b = build(&Image::new(vec![(base, Comp::None), (noise_layer(46, 1, 64 << 10), Comp::None)]));
    write_oci_layout(&env.path("oci"), &[(&a, Some("a"))]);
    write_docker_archive(&env.path("b.tar"), &[(&b, &["b:1"])]);
    env.ok(&["pull", &oci_src(&env.path("oci"))]);
    let ino = marker_inodes(&env)[hex(&a.diff_ids[0])];
    let _container = hold_layer(&env, &a.diff_ids[0]);
    let o = run_within(&env, &["load", "-i", env.path("b.tar").to_str().unwrap()], Duration::from_secs(20))
        .expect("load blocked on the lock of a layer a running container uses");
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "Loaded image: docker.io/library/b:1");
    assert_eq!(marker_inodes(&env)[hex(&a.diff_ids[0])], ino, "the shared layer was extracted again");
    assert!(env.root().join("blobs/sha256").join(hex(&b.layers[0].digest)).is_file());
    assert_fsck_clean(&env, "after the load");
}

// ---------------------------------------------------------------------------------------
// 3. Crashes: SIGKILL at random points of an import.

/// A ~60 MB image (gzip, zstd and plain layers, many files each) is imported 20 times
/// through alternating transports and SIGKILLed after a seeded random delay within the
/// time a full import takes. After each kill: fsck is clean, the next import completes,
/// gc leaves exactly what the image needs with tmp/ empty, and after rmi + gc the store
/// is empty again.
#[test]
fn sigkill_at_random_points_of_an_import_leaves_a_consistent_store() {
    require_root();
    let _heavy = heavy();
    let env = Env::new();
    let img = build(&Image::new(vec![
        (noise_layer(50, 16, 1 << 20), Comp::Gzip),
        (noise_layer(51, 24, 1 << 20), Comp::Zstd),
        (noise_layer(52, 20, 1 << 20), Comp::None),
        (noise_layer(53, 8, 64 << 10), Comp::Gzip),
    ]));
    write_oci_layout(&env.path("oci"), &[(&img, Some("v1"))]);
    write_docker_archive(&env.path("save.tar"), &[(&img, &["crash:1"])]);
    let save = env.path("save.tar").display().to_string();
    let sources: [(Vec<String>, &str); 3] = [
        (args(&["pull", &oci_src(&env.path("oci"))]), "localhost/oci:v1"),
        (args(&["pull", &format!("docker-archive:{save}")]), "docker.io/library/crash:1"),
        (args(&["load", "-i", &save]), "docker.io/library/crash:1"),
    ];

    // How long a whole import takes from each source: its kills are spread over that.
    let mut full = Vec::new();
    for (cmd, name) in &sources {
        let t = Instant::now();
        env.ok(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
        full.push(t.elapsed());
        env.ok(&["rmi", name]);
        env.ok(&["gc"]);
    }
    assert_store_empty(&env, "after the timing runs");

    let mut rng = Rng::new(7);
    let delays: Vec<Duration> = (0..20u64)
        .map(|i| match i {
            // The very start too: store creation, archive indexing.
            0..3 => Duration::from_millis(i * 5),
            _ => Duration::from_micros(rng.below(full[i as usize % sources.len()].as_micros() as u64)),
        })
        .collect();
    let (mut killed, mut debris, mut imports) = (0, 0, [Duration::ZERO; 3]);
    let start = Instant::now();
    for (i, delay) in delays.iter().enumerate() {
        let (cmd, name) = &sources[i % sources.len()];
        let ctx = format!("kill #{i} after {delay:?} of `{}`", cmd.join(" "));
        let mut jobs = Jobs::default();
        jobs.spawn(&env, cmd);
        let spawned = Instant::now();
        while spawned.elapsed() < *delay && jobs.0[0].child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_micros(500));
        }
        killed += jobs.kill().into_iter().filter(|&k| k).count();
        debris += store_entries(&env, "tmp").len();

        assert_fsck_clean(&env, &ctx);
        let t = Instant::now();
        env.ok(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
        imports[i % sources.len()] += t.elapsed();
        assert_fsck_clean(&env, &format!("{ctx}, then a full import"));
        let o = env.run(&["gc"]);
        assert!(o.status(), "{ctx}: gc: {}", o.stderr());
        assert_only_referenced(&env, &format!("{ctx}, import, gc"));
        for d in &img.diff_ids {
            assert_layer(&env, d, &ctx);
        }
        env.ok(&["rmi", name]);
        env.ok(&["gc"]);
        assert_store_empty(&env, &format!("{ctx}, rmi, gc"));
    }
    eprintln!(
        "full imports {full:?}; {} kills in {:?}: {killed} mid-import, {debris} tmp/ entries left behind; \
         time in the completing imports by source: {imports:?}",
        delays.len(),
        start.elapsed()
    );
    assert!(killed >= delays.len() / 2, "only {killed} of the kills hit a running import");
}

// ---------------------------------------------------------------------------------------
// 4. ENOSPC on a small tmpfs.

/// A store on a 40 MB tmpfs and images that need far more: each import fails with one
/// clear line, commits nothing partial, and gc gives all the space back; a small image
/// imports fine afterwards.
#[test]
fn enospc_fails_cleanly_and_gc_gives_the_space_back() {
    require_root();
    let _heavy = heavy();
    let env = Env::new();
    let tmpfs = Tmpfs::mount(&env.root(), "40m", "0755");
    env.ok(&["images"]);
    let baseline = tmpfs.free();

    // 48 MB of files, stored twice (blob and extracted tree): more than the whole fs.
    let big = build(&Image::new(vec![(noise_layer(60, 48, 1 << 20), Comp::Zstd)]));
    write_oci_layout(&env.path("big"), &[(&big, Some("big"))]);
    // A docker-archive whose first layer fits (8 MB, twice) and whose second cannot.
    let big2 =
        build(&Image::new(vec![(noise_layer(61, 8, 1 << 20), Comp::None), (noise_layer(62, 24, 1 << 20), Comp::None)]));
    write_docker_archive(&env.path("big2.tar"), &[(&big2, &["big2:1"])]);
    let cases =
        [args(&["pull", &oci_src(&env.path("big"))]), args(&["load", "-i", env.path("big2.tar").to_str().unwrap()])];
    for cmd in &cases {
        let ctx = format!("`{}` on a 40 MB store", cmd.join(" "));
        let o = env.run(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
        assert_space_error(&o, &ctx);
        eprintln!("{ctx}: {}", o.stderr().trim());
        assert_nothing_partial(&env, &ctx);
        let out = env.ok(&["gc"]);
        assert_store_empty(&env, &format!("{ctx}: after gc ({out})"));
        let free = tmpfs.free();
        assert!(free.abs_diff(baseline) <= 256 << 10, "{ctx}: free space {free} is not back to {baseline}");
    }

    let small = build(&Image::new(vec![(noise_layer(63, 4, 1 << 20), Comp::Gzip)]));
    write_oci_layout(&env.path("small"), &[(&small, Some("s"))]);
    env.ok(&["pull", &oci_src(&env.path("small"))]);
    assert_fsck_clean(&env, "small image after ENOSPC");
    assert_eq!(fs::read(env.layer_root(&small.diff_ids[0]).join("d63/f3")).unwrap(), noise_file(63, 3, 1 << 20));
    env.ok(&["rmi", "localhost/small:s"]);
    env.ok(&["gc"]);
    assert_store_empty(&env, "end");
    assert!(tmpfs.free().abs_diff(baseline) <= 256 << 10);
}

/// The disk fills at a random point of an import: the tmpfs is pre-filled so that a
/// seeded random amount below what the image needs is left. Same guarantees as above,
/// and once the filler is gone the import succeeds.
#[test]
fn enospc_at_a_random_point_of_an_import_fails_cleanly() {
    require_root();
    let _heavy = heavy();
    let env = Env::new();
    let tmpfs = Tmpfs::mount(&env.root(), "40m", "0755");
    env.ok(&["images"]);
    let img = build(&Image::new(vec![
        (noise_layer(70, 8, 1 << 20), Comp::Gzip),
        (noise_layer(71, 6, 1 << 20), Comp::Zstd),
        (noise_layer(72, 4, 256 << 10), Comp::None),
    ]));
    write_oci_layout(&env.path("oci"), &[(&img, Some("v1"))]);
    write_docker_archive(&env.path("save.tar"), &[(&img, &["fill:1"])]);
    let sources = [
        (args(&["pull", &oci_src(&env.path("oci"))]), "localhost/oci:v1"),
        (args(&["load", "-i", env.path("save.tar").to_str().unwrap()]), "docker.io/library/fill:1"),
    ];
    // What an import needs on this fs, measured.
    let empty = tmpfs.free();
    let mut need = 0;
    for (cmd, name) in &sources {
        env.ok(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
        need = need.max(empty - tmpfs.free());
        env.ok(&["rmi", name]);
        env.ok(&["gc"]);
    }
    assert!(need > 20 << 20 && need < empty, "the image needs {need} of {empty} bytes");

    // The filler sits in the store root, where neither gc nor fsck looks.
    let filler = env.root().join("filler");
    let mut rng = Rng::new(11);
    for i in 0..8 {
        let (cmd, name) = &sources[i % 2];
        let left = rng.below(need * 9 / 10);
        tmpfs.fill(&filler, left);
        let before = tmpfs.free();
        let ctx = format!("#{i}: `{}` with {before} bytes free", cmd.join(" "));
        let o = env.run(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
        assert_space_error(&o, &ctx);
        let committed = store_entries(&env, "layers/sha256").len();
        eprintln!("{ctx}: {} ({committed} whole layers committed)", o.stderr().trim());
        assert_nothing_partial(&env, &ctx);
        env.ok(&["gc"]);
        assert_store_empty(&env, &ctx);
        assert!(tmpfs.free().abs_diff(before) <= 256 << 10, "{ctx}: gc left {} bytes free", tmpfs.free());
        fs::remove_file(&filler).unwrap();
        env.ok(&cmd.iter().map(String::as_str).collect::<Vec<_>>());
        assert_fsck_clean(&env, &format!("{ctx}, then without the filler"));
        env.ok(&["rmi", name]);
        env.ok(&["gc"]);
        assert_store_empty(&env, &ctx);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Store hygiene: permissions, fsck, gc.

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The store holds setuid binaries and device nodes: its root is 0700 whatever the umask
/// says, and also when it exists already with a looser mode.
#[test]
fn store_root_is_0700_whatever_the_umask_or_an_existing_mode() {
    require_root();
    let env = Env::new();
    let o = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$@\"", "sh", coracle_bin(), "--root"])
        .arg(env.root())
        .args(["images"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&env.root()), 0o700, "umask 000");
    for d in ["blobs", "blobs/sha256", "layers", "layers/sha256", "images", "refs", "locks", "tmp", "containers"] {
        assert_eq!(mode(&env.root().join(d)) & 0o077, 0, "{d} is open to others under umask 000");
    }

    for m in [0o755, 0o777, 0o1777] {
        let env = Env::new();
        fs::create_dir(env.root()).unwrap();
        fs::set_permissions(env.root(), fs::Permissions::from_mode(m)).unwrap();
        env.ok(&["images"]);
        assert_eq!(mode(&env.root()), 0o700, "pre-existing root with mode {m:o}");
    }
}

/// Four kinds of damage, each listed by `fsck` (exit 1); `fsck --repair` removes them
/// (exit 0), a plain `fsck` is clean again, and pulling again restores every image.
#[test]
fn fsck_lists_and_repairs_each_kind_of_damage() {
    require_root();
    let env = Env::new();
    let mk = |seed: u64| {
        build(&Image::new(vec![
            (noise_layer(seed, 1, 64 << 10), Comp::Gzip),
            (noise_layer(seed + 1, 1, 1024), Comp::Gzip),
        ]))
    };
    let imgs = [mk(80), mk(82), mk(84), mk(86)];
    let oci = env.path("oci");
    write_oci_layout(
        &oci,
        &[(&imgs[0], Some("a")), (&imgs[1], Some("b")), (&imgs[2], Some("c")), (&imgs[3], Some("d"))],
    );
    env.ok(&["pull", &oci_src(&oci)]);
    assert_fsck_clean(&env, "fresh");
    let root = env.root();

    // a: a layer that lost its marker (an extraction that never finished).
    let a_layer = hex(&imgs[0].diff_ids[1]);
    fs::remove_file(root.join("layers/sha256").join(a_layer).join("layer.json")).unwrap();
    // b: one flipped byte in a layer blob.
    let b_blob = root.join("blobs/sha256").join(hex(&imgs[1].layers[0].digest));
    let mut bytes = fs::read(&b_blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&b_blob, bytes).unwrap();
    // c: an image record naming a layer that is not there.
    fs::remove_dir_all(root.join("layers/sha256").join(hex(&imgs[2].diff_ids[0]))).unwrap();
    // A name pointing at no image.
    let ghost = format!("sha256:{}", "0".repeat(64));
    fs::write(root.join("refs/docker.io%2Flibrary%2Fghost:1"), format!("{ghost}\n")).unwrap();

    let o = env.run(&["fsck"]);
    let out = o.stdout();
    assert_eq!(o.code(), Some(1), "fsck must fail: {out}{}", o.stderr());
    let expect = [
        format!("blob {}: content hashes to ", imgs[1].layers[0].digest),
        format!("layer {a_layer}: missing or invalid marker"),
        format!("image {}: missing layer {}", imgs[0].manifest.digest, imgs[0].diff_ids[1]),
        format!("image {}: missing layer {}", imgs[2].manifest.digest, imgs[2].diff_ids[0]),
        // Plain fsck and --repair agree: an image with a corrupt blob is broken too.
        format!("image {}: corrupt blob {}", imgs[1].manifest.digest, imgs[1].layers[0].digest),
        "name docker.io/library/ghost:1: points at no image".to_owned(),
    ];
    for e in &expect {
        assert!(out.lines().any(|l| l.starts_with(e.as_str())), "fsck does not list {e:?}:\n{out}");
    }
    assert!(out.lines().last().unwrap().contains(&format!("{} problems", expect.len())), "{out}");

    let o = env.run(&["fsck", "--repair"]);
    let out = o.stdout();
    assert_eq!(o.code(), Some(0), "fsck --repair: {out}{}", o.stderr());
    let problems: Vec<&str> = out.lines().filter(|l| !l.starts_with("checked ")).collect();
    assert!(problems.len() >= expect.len() && problems.iter().all(|l| l.ends_with(" (removed)")), "{out}");
    assert_fsck_clean(&env, "after --repair");
    assert!(!root.join("layers/sha256").join(a_layer).exists());
    assert!(!b_blob.exists());
    assert!(!root.join("refs/docker.io%2Flibrary%2Fghost:1").exists());
    // Images that lost a part are dropped whole, with their names; d is untouched.
    let left: Vec<Value> = env.images();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["digest"], imgs[3].manifest.digest);

    env.ok(&["pull", &oci_src(&oci)]);
    assert_fsck_clean(&env, "pulled again");
    assert_eq!(env.images().len(), 4);
    for (img, n) in imgs.iter().zip(["a", "b", "c", "d"]) {
        let info = env.inspect(&format!("localhost/oci:{n}"));
        assert_eq!(info["digest"], img.manifest.digest);
        for d in &img.diff_ids {
            assert_layer(&env, d, n);
        }
    }
    assert_eq!(fs::read(env.layer_root(&imgs[1].diff_ids[0]).join("d82/f0")).unwrap(), noise_file(82, 0, 64 << 10));
}

/// `rmi` of every image, then `gc`: blobs/, layers/, images/, refs/, tmp/ and the lock
/// dirs end up empty, and gc prints each deletion and how many bytes it freed (which
/// match what the store used).
#[test]
fn gc_after_rmi_of_everything_empties_the_store_and_reports_bytes() {
    require_root();
    let env = Env::new();
    let base = noise_layer(90, 2, 512 << 10);
    let a = build(&Image::new(vec![(base.clone(), Comp::Gzip), (noise_layer(91, 1, 128 << 10), Comp::Gzip)]));
    let b = build(&Image::new(vec![(base, Comp::None), (noise_layer(92, 1, 128 << 10), Comp::None)]));
    write_oci_layout(&env.path("oci"), &[(&a, None)]);
    write_docker_archive(&env.path("b.tar"), &[(&b, &["b:1", "b:2"])]);
    env.ok(&["pull", &oci_src(&env.path("oci"))]);
    env.ok(&["load", "-i", env.path("b.tar").to_str().unwrap()]);
    env.ok(&["tag", "b:1", "localhost/third:3"]);
    fs::write(env.root().join("tmp/debris"), vec![1u8; 100_000]).unwrap();

    for img in env.images() {
        let names = img["names"].as_array().unwrap();
        if names.is_empty() {
            env.ok(&["rmi", img["id"].as_str().unwrap()]);
        }
        for n in names {
            env.ok(&["rmi", n.as_str().unwrap()]);
        }
    }
    assert!(env.images().is_empty());
    assert_eq!(store_entries(&env, "refs"), BTreeSet::new());

    let mut used = 0;
    for d in ["blobs/sha256", "layers/sha256", "tmp"] {
        for e in store_entries(&env, d) {
            used += usage(&env.root().join(d).join(e));
        }
    }
    let n_blobs = store_entries(&env, "blobs/sha256").len();
    let n_layers = store_entries(&env, "layers/sha256").len();
    assert_eq!((n_blobs, n_layers), (2 + 2 + 2 + 2, 3), "a: 2 gzip blobs, b: 2 tar blobs, 2 configs, 2 manifests");
    let out = env.ok(&["gc"]);
    assert_store_empty(&env, &out);
    assert_eq!(store_entries(&env, "locks/layers"), BTreeSet::new(), "{out}");
    assert_eq!(store_entries(&env, "locks/blobs"), BTreeSet::new(), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("deleted blob sha256:")).count(), n_blobs, "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("deleted layer sha256:")).count(), n_layers, "{out}");
    assert!(out.contains("deleted tmp/debris ("), "{out}");
    let last = out.lines().last().unwrap();
    let freed = last.strip_prefix("freed ").and_then(|s| s.split(':').next()).unwrap_or_else(|| panic!("{out}"));
    let freed = parse_size(freed);
    assert!((freed - used as f64).abs() <= used as f64 * 0.01, "gc says it freed {freed} bytes, the store used {used}");
    assert!(last.ends_with(&format!("{n_blobs} blobs, {n_layers} layers, 1 tmp entries, 0 containers")), "{out}");

    // Nothing left to do: a second gc frees nothing.
    let out = env.ok(&["gc"]);
    assert_eq!(out.trim(), "freed 0B: 0 blobs, 0 layers, 0 tmp entries, 0 containers");
}

/// Regression: a plain fsck shares the store lock with `rmi`, which removes names, then
/// the record. A name read (or listed) by fsck just before `rmi` removed it was reported
/// as "points at no image", and fsck failed. The interleaving is made deterministic with
/// a FIFO as one of the names: fsck blocks reading it while the test removes every name
/// and the record, in rmi's order, and only then lets the read finish.
#[test]
fn fsck_during_rmi_does_not_report_the_names_rmi_removed() {
    require_root();
    let env = Env::new();
    let img = build(&Image::new(vec![(noise_layer(95, 1, 4096), Comp::Gzip)]));
    write_oci_layout(&env.path("oci"), &[(&img, Some("v1"))]);
    env.ok(&["pull", "--tag", "x:1", &oci_src(&env.path("oci"))]);
    for i in 0..8 {
        env.ok(&["tag", "x:1", &format!("n{i}:1")]);
    }
    let refs = env.root().join("refs");
    let fifo = refs.join("docker.io%2Flibrary%2Ffifo:1");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let mut jobs = Jobs::default();
    jobs.spawn(&env, &args(&["fsck"]));
    // Opening the write end without blocking works only once fsck has it open for reading.
    let start = Instant::now();
    let mut w = loop {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo) {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("fsck never read the FIFO name: {e}"),
        }
    };
    // What `rmi` does meanwhile: every name, then the record.
    for name in entries(&refs) {
        fs::remove_file(refs.join(name)).unwrap();
    }
    fs::remove_file(env.root().join("images").join(format!("{}.json", hex(&img.manifest.digest)))).unwrap();
    w.write_all(format!("{}\n", img.manifest.digest).as_bytes()).unwrap();
    drop(w);
    let done = jobs.wait(|_| {}).pop().unwrap();
    assert!(done.status.success(), "fsck reported names removed while it ran:\n{}{}", done.stdout, done.stderr);
    assert!(done.stdout.contains(": 0 problems"), "{}", done.stdout);
}

/// Regression: `fsck --repair` never removes a layer a running container holds, but it
/// said "(removed)" and exited 0 anyway, leaving the broken layer for the next fsck.
#[test]
fn fsck_repair_keeps_a_broken_layer_a_container_holds_and_says_so() {
    require_root();
    let env = Env::new();
    let img = build(&Image::new(vec![(noise_layer(96, 1, 4096), Comp::Gzip)]));
    write_oci_layout(&env.path("oci"), &[(&img, Some("v1"))]);
    env.ok(&["pull", &oci_src(&env.path("oci"))]);
    let layer = env.root().join("layers/sha256").join(hex(&img.diff_ids[0]));
    fs::remove_file(layer.join("layer.json")).unwrap();

    let container = hold_layer(&env, &img.diff_ids[0]);
    let o = env.run(&["fsck", "--repair"]);
    let out = o.stdout();
    assert_eq!(o.code(), Some(1), "a problem that stays is not repaired: {out}");
    let line = out.lines().find(|l| l.starts_with(&format!("layer {}:", hex(&img.diff_ids[0])))).unwrap();
    assert!(!line.contains("(removed)") && line.contains("in use"), "{out}");
    assert!(layer.is_dir(), "the held layer was removed");
    assert_eq!(env.images().len(), 0, "the image that lost the layer is dropped: {out}");

    drop(container);
    // The lock is this test process's own fd: a child another test thread forks at this
    // moment holds a copy until its exec closes it. Give that a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let o = loop {
        let o = env.run(&["fsck", "--repair"]);
        if o.status() || std::time::Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(o.status(), "{}", o.stdout());
    assert!(!layer.exists());
    assert_fsck_clean(&env, "repaired once the container is gone");
    env.ok(&["pull", &oci_src(&env.path("oci"))]);
    assert_fsck_clean(&env, "pulled again");
}

/// Regression: a layer dir without its marker (damage fsck reports) made the next pull
/// "succeed" without fixing it: the fresh extraction's rename hit the broken dir and was
/// taken for a concurrent commit, and the new image record named a layer that does not
/// count as existing.
#[test]
fn pull_replaces_a_layer_dir_that_lost_its_marker() {
    require_root();
    let env = Env::new();
    let img = build(&Image::new(vec![(noise_layer(97, 2, 64 << 10), Comp::Gzip)]));
    write_oci_layout(&env.path("oci"), &[(&img, Some("v1"))]);
    env.ok(&["pull", &oci_src(&env.path("oci"))]);
    let layer = env.root().join("layers/sha256").join(hex(&img.diff_ids[0]));
    fs::remove_file(layer.join("layer.json")).unwrap();
    fs::remove_file(layer.join("root/d97/f1")).unwrap();

    env.ok(&["pull", &oci_src(&env.path("oci"))]);
    assert_fsck_clean(&env, "pulled over a layer without marker");
    assert_layer(&env, &img.diff_ids[0], "pulled again");
    assert_eq!(fs::read(layer.join("root/d97/f1")).unwrap(), noise_file(97, 1, 64 << 10));
    env.ok(&["gc"]);
    assert_only_referenced(&env, "gc removed the broken copy");
}
