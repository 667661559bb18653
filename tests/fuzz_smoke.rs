//! A short fuzz run on stable Rust, for CI: every fuzz target's check (`fuzz/harness.rs`,
//! the code the cargo-fuzz targets run, containment checks included) on inputs mutated
//! from its seeds and regressions, for `CORACLE_FUZZ_SMOKE_SECS` seconds per target
//! (default 5). No coverage feedback — that is `scripts/fuzz` (libFuzzer, nightly), the
//! long run — but the mutations know the formats: tar headers get their checksums
//! fixed after a change (or the archive ends at the first header), JSON specs of the
//! structured layer target are mutated as JSON, and tokens of each format (PAX keys,
//! whiteout names, `..`, digests, media types) are spliced in.
//!
//! The run happens in one thread that first isolates itself (a mount namespace of its
//! own: the host read-only but for the repository, the sandbox on a tmpfs), so an
//! escape found here cannot damage the host. The seed of the run is printed and can be
//! set with `CORACLE_FUZZ_SMOKE_SEED`; an input that fails is saved under
//! `target/fuzz-smoke/` and named in the failure, to be added to
//! `fuzz/regressions/<target>/` with the fix.

// The harness derives `arbitrary::Arbitrary` under cargo-fuzz's `--cfg fuzzing` only.
#![allow(unexpected_cfgs)]

#[path = "../fuzz/harness.rs"]
mod harness;
mod util;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::Rng;

/// The longest one input may take before the run counts it as a hang.
const HANG: Duration = Duration::from_secs(60);
/// The most inputs kept in a target's pool (seeds, then inputs that passed).
const POOL_MAX: usize = 256;
/// The largest input made (bigger ones are cut back).
const MAX_LEN: usize = 1 << 20;

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// Tokens of the formats, spliced into inputs.
const TAR_TOKENS: &[&[u8]] = &[
    b"../",
    b"/",
    b"./",
    b".wh.",
    b".wh..wh..opq",
    b".wh..wh.plnk",
    b"././@LongLink",
    b"PaxHeaders",
    b"ustar\0",
    b"ustar  \0",
    b"30 path=",
    b"30 linkpath=",
    b"40 SCHILY.xattr.trusted.overlay.opaque=y\n",
    b"44 SCHILY.xattr.security.capability=\x01\x02\n",
    b"20 size=99999999999\n",
    b"GNU.sparse.map=",
    b"GNU.sparse.major=1\n",
    b"0000777\0",
    b"7777777\0",
    b"\x80\0\0\0\0\0\0\0\xff\xff\xff\xff",
    b"99999999999\0",
];

const JSON_TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\"sha256:",
    b"\"sha512:",
    b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    b"\"../../etc/passwd\"",
    b"\"/\"",
    b"\\u0000",
    b"\"application/vnd.oci.image.layer.v1.tar+gzip\"",
    b"\"application/vnd.docker.image.rootfs.diff.tar.gzip\"",
    b"\"application/vnd.oci.image.index.v1+json\"",
    b"\"Layers\"",
    b"\"RepoTags\"",
    b"\"diff_ids\"",
    b"\"mediaType\"",
    b"\"schemaVersion\"",
];

const REFERENCE_TOKENS: &[&[u8]] =
    &[b"/", b":", b"@", b"sha256:", b"localhost", b":5000", b"docker.io/", b"library/", b"..", b"-", b"_", b"__", b"."];

/// Strings tried in the structured target's JSON specs (names, link targets, xattrs).
const SPEC_STRINGS: &[&str] = &[
    "",
    ".",
    "..",
    "../..",
    "/",
    "/etc",
    "a/../../b",
    "sentinel",
    "../sentinel/file",
    "../../outer-sentinel",
    ".wh.a",
    ".wh..wh..opq",
    "dir/.wh..wh..opq",
    "trusted.overlay.opaque",
    "trusted.overlay.redirect",
    "security.capability",
    "user.x",
    "a\u{0}b",
    "\u{ff}",
];

/// Strings tried in the manifests, configs and docker-save manifests.
const IMAGE_STRINGS: &[&str] = &[
    "",
    "/",
    "../../etc/passwd",
    "blobs/sha256/../../x",
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "sha256:0123",
    "sha512:00",
    "md5:00",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "layers",
    "amd64",
    "arm64",
    "linux",
    "windows",
    "v8",
    "busybox:latest",
    "a/b:c",
    "layer.tar",
];

fn tokens(target: &str) -> &'static [&'static [u8]] {
    match target {
        "layer_apply" => TAR_TOKENS,
        "reference_parse" => REFERENCE_TOKENS,
        _ => JSON_TOKENS,
    }
}

/// One random change to `data`.
fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>], toks: &[&[u8]]) {
    let pick = |rng: &mut Rng, n: usize| rng.below(n as u64) as usize;
    if data.is_empty() {
        data.extend_from_slice(toks[pick(rng, toks.len())]);
        return;
    }
    let at = pick(rng, data.len());
    match rng.below(10) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = [0u8, 0xff, 0x7f, 0x80, b'/', b'.', b'0', b'7', b' ', b'\n'][pick(rng, 10)],
        2 => {
            // An integer field: little- or big-endian, or octal text as tar writes it.
            let v: u64 = [0, 1, u64::MAX, 0x7fff_ffff, 0x8000_0000, 1 << 33, 511, 512, 513][pick(rng, 9)];
            let bytes: Vec<u8> = match rng.below(3) {
                0 => v.to_le_bytes().to_vec(),
                1 => v.to_be_bytes().to_vec(),
                _ => format!("{v:011o}\0").into_bytes(),
            };
            let end = (at + bytes.len()).min(data.len());
            data[at..end].copy_from_slice(&bytes[..end - at]);
        }
        3 => {
            let n = 1 + pick(rng, 16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, bytes);
        }
        4 => {
            let end = (at + 1 + pick(rng, 64)).min(data.len());
            data.drain(at..end);
        }
        5 => {
            // Copy a chunk elsewhere (duplicated headers, repeated entries).
            let len = 1 + pick(rng, 1024.min(data.len()));
            let from = pick(rng, data.len() + 1 - len);
            let chunk = data[from..from + len].to_vec();
            let to = pick(rng, data.len() + 1);
            data.splice(to..to, chunk);
        }
        6 if !pool.is_empty() => {
            // Splice: this input's head, another's tail.
            let other = &pool[pick(rng, pool.len())];
            let cut = pick(rng, other.len() + 1);
            data.truncate(at);
            data.extend_from_slice(&other[cut..]);
        }
        7 => data.truncate(at),
        8 => {
            let t = toks[pick(rng, toks.len())];
            if rng.below(2) == 0 {
                data.splice(at..at, t.iter().copied());
            } else {
                let end = (at + t.len()).min(data.len());
                data.splice(at..end, t.iter().copied());
            }
        }
        _ => {
            // A tar block boundary: change something inside one header.
            let block = at / 512 * 512;
            let field = [0usize, 100, 124, 136, 156, 157, 257, 345][pick(rng, 8)];
            if let Some(b) = data.get_mut(block + field) {
                *b = rng.next() as u8;
            }
        }
    }
    data.truncate(MAX_LEN);
}

/// Recomputes the checksum of every 512-byte block that looks like a tar header (a
/// ustar or GNU magic, or a parsable checksum field), so that changes to headers reach
/// the extractor instead of ending the archive at the first one.
fn fix_tar_checksums(data: &mut [u8]) {
    for block in data.chunks_exact_mut(512) {
        let magic = &block[257..263];
        let parsable = block[148..155].iter().all(|c| matches!(c, b'0'..=b'7' | b' ' | 0));
        if block.iter().all(|b| *b == 0) || !(magic == b"ustar\0" || magic == b"ustar " || parsable) {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
}

/// A JSON document with one value changed (a string from `strings` or derived from the
/// old one, another number, a flipped bool, an array element duplicated, dropped or
/// moved); `None` when `doc` is not JSON.
fn mutate_json(rng: &mut Rng, doc: &[u8], strings: &[&str]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(doc).ok()?;
    let mut slots = Vec::new();
    collect_slots(&v, &mut Vec::new(), &mut slots);
    if slots.is_empty() {
        return None;
    }
    let path = &slots[rng.below(slots.len() as u64) as usize];
    let mut node = &mut v;
    for step in path {
        node = match step {
            Step::Key(k) => node.get_mut(k.as_str())?,
            Step::Index(i) => node.get_mut(*i)?,
        };
    }
    let ints: [i64; 12] = [0, 1, 2, 7, 255, 256, 0o4755, 0o7777, 65535, 1 << 31, -1, i64::MAX];
    let pick = |rng: &mut Rng| strings[rng.below(strings.len() as u64) as usize];
    match node {
        serde_json::Value::String(s) => {
            *s = match rng.below(4) {
                0 | 1 => pick(rng).to_owned(),
                2 => format!("{s}/{}", pick(rng)),
                _ => s.chars().rev().collect(),
            }
        }
        serde_json::Value::Number(_) => *node = ints[rng.below(ints.len() as u64) as usize].into(),
        serde_json::Value::Bool(b) => *b = !*b,
        serde_json::Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len() as u64) as usize;
            match rng.below(3) {
                0 => {
                    let dup = a[i].clone();
                    a.insert(rng.below(a.len() as u64 + 1) as usize, dup);
                }
                1 => {
                    a.remove(i);
                }
                _ => {
                    let j = rng.below(a.len() as u64) as usize;
                    a.swap(i, j);
                }
            }
        }
        serde_json::Value::Object(m) if !m.is_empty() => {
            let k = m.keys().nth(rng.below(m.len() as u64) as usize)?.clone();
            m.remove(&k);
        }
        serde_json::Value::Null => *node = pick(rng).into(),
        _ => return None,
    }
    serde_json::to_vec(&v).ok()
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// The paths to every value of `v` (the root included).
fn collect_slots(v: &serde_json::Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(path.clone());
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                path.push(Step::Key(k.clone()));
                collect_slots(child, path, out);
                path.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(Step::Index(i));
                collect_slots(child, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// A new input for `target` from its pool.
fn next_input(rng: &mut Rng, target: &str, pool: &[Vec<u8>]) -> Option<Vec<u8>> {
    let base = &pool[rng.below(pool.len() as u64) as usize];
    if target == "layer_structured" {
        // Only specs the target can take (names of enum variants, integer widths): the
        // structure, not its JSON syntax, is fuzzed.
        for _ in 0..8 {
            let mut spec = Some(base.clone());
            for _ in 0..1 + rng.below(3) {
                spec = spec.and_then(|s| mutate_json(rng, &s, SPEC_STRINGS));
            }
            if let Some(spec) = spec.filter(|s| serde_json::from_slice::<harness::Spec>(s).is_ok()) {
                return Some(spec);
            }
        }
        return None;
    }
    if matches!(target, "manifest_parse" | "config_parse" | "docker_manifest") && rng.below(2) == 0 {
        let mut doc = base.clone();
        for _ in 0..1 + rng.below(3) {
            doc = mutate_json(rng, &doc, IMAGE_STRINGS)?;
        }
        return Some(doc);
    }
    let mut data = base.clone();
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut data, pool, tokens(target));
    }
    if target == "layer_apply" && rng.below(4) != 0 {
        fix_tar_checksums(&mut data);
    }
    Some(data)
}

struct Report {
    target: &'static str,
    runs: u64,
    pool: usize,
}

/// Fuzzes `target` for `budget`; the input that failed and why, if one did.
fn fuzz_target(
    target: &'static str,
    sb: &harness::Sandbox,
    rng: &mut Rng,
    budget: Duration,
    current: &Mutex<(String, Vec<u8>)>,
) -> Result<Report, (Vec<u8>, String)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut pool: Vec<Vec<u8>> = files(&fuzz.join("seeds").join(target))
        .into_iter()
        .chain(files(&fuzz.join("regressions").join(target)))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(!pool.is_empty(), "fuzz/seeds/{target}/ has no seeds");
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < budget {
        let Some(input) = next_input(rng, target, &pool) else { continue };
        *current.lock().unwrap() = (target.to_owned(), input.clone());
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| harness::run(target, sb, &input))) {
            return Err((input, panic_message(&*e)));
        }
        runs += 1;
        if rng.below(8) == 0 {
            if pool.len() < POOL_MAX {
                pool.push(input);
            } else {
                let i = rng.below(pool.len() as u64) as usize;
                pool[i] = input;
            }
        }
    }
    sb.reset();
    Ok(Report { target, runs, pool: pool.len() })
}

fn save(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-smoke");
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("{target}-{}", coracle::digest::Digest::of(input).hex());
    let path = dir.join(name);
    std::fs::write(&path, input).unwrap();
    path
}

#[test]
fn fuzz_smoke() {
    util::require_root();
    let secs: u64 = std::env::var("CORACLE_FUZZ_SMOKE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let seed: u64 = std::env::var("CORACLE_FUZZ_SMOKE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("fuzz smoke: seed {seed} (CORACLE_FUZZ_SMOKE_SEED), {secs} s per target (CORACLE_FUZZ_SMOKE_SECS)");

    // The mount point of the worker's sandbox tmpfs: an empty directory on the host,
    // removed when this test ends (after the worker, and its namespace, are gone).
    let mnt = tempfile::Builder::new().prefix("coracle-fuzz-smoke-").tempdir().unwrap();
    let mnt_path = mnt.path().to_path_buf();
    let current = Arc::new(Mutex::new((String::new(), Vec::new())));
    let finished = Arc::new(AtomicBool::new(false));
    let worker = {
        let (current, finished) = (current.clone(), finished.clone());
        std::thread::spawn(move || {
            let sb =
                harness::Sandbox::isolated_in(&mnt_path).unwrap_or_else(|e| panic!("isolate the fuzz thread: {e}"));
            let mut rng = Rng::new(seed);
            let mut out = Vec::new();
            for target in harness::TARGETS {
                match fuzz_target(target, &sb, &mut rng, Duration::from_secs(secs), &current) {
                    Ok(r) => out.push(Ok(r)),
                    Err(e) => {
                        out.push(Err((*target, e)));
                        break;
                    }
                }
            }
            finished.store(true, Ordering::SeqCst);
            out
        })
    };
    // The hang watchdog: one input must not take a minute.
    let mut last = (String::new(), 0usize, Instant::now());
    while !finished.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        let (target, input) = current.lock().unwrap().clone();
        let key = (target.clone(), input.len());
        if (key.0.as_str(), key.1) != (last.0.as_str(), last.1) {
            last = (key.0, key.1, Instant::now());
        } else if last.2.elapsed() > HANG && !input.is_empty() {
            let path = save(&target, &input);
            eprintln!("fuzz smoke: {target} hangs on an input (more than {HANG:?}), saved at {}", path.display());
            std::process::abort();
        }
    }
    let results = worker.join().expect("the fuzz thread");
    drop(mnt);
    let mut total = 0;
    for r in &results {
        match r {
            Ok(r) => {
                eprintln!("fuzz smoke: {:<17} {:>7} inputs, pool {}", r.target, r.runs, r.pool);
                total += r.runs;
                assert!(r.runs > 0, "{} ran no input", r.target);
            }
            Err((target, (input, msg))) => {
                let path = save(target, input);
                panic!(
                    "fuzz smoke: {target} failed (seed {seed}) on the input saved at {}; once fixed, add it to \
                     fuzz/regressions/{target}/:\n{msg}",
                    path.display()
                );
            }
        }
    }
    assert_eq!(results.len(), harness::TARGETS.len());
    eprintln!("fuzz smoke: {total} inputs in all, no failure");
}

/// The mutators themselves: the tar checksum fix gives headers the kernel of tar
/// readers accepts, and every mutation keeps inputs within bounds.
#[test]
fn mutators_make_valid_tar_headers_and_bounded_inputs() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("a/b").unwrap();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"xyz"[..]).unwrap();
    let mut data = b.into_inner().unwrap();
    data[0] = b'z'; // the name changes; the checksum no longer matches
    assert!(tar::Archive::new(&data[..]).entries().unwrap().next().unwrap().is_err());
    fix_tar_checksums(&mut data);
    let mut a = tar::Archive::new(&data[..]);
    let e = a.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(e.path().unwrap().to_str(), Some("z/b"));

    let mut rng = Rng::new(7);
    let pool = vec![data.clone(), b"{\"a\": [1, \"x\"]}".to_vec()];
    let mut changed = 0;
    for _ in 0..10_000 {
        let mut d = pool[rng.below(2) as usize].clone();
        let before = d.clone();
        mutate_once(&mut rng, &mut d, &pool, TAR_TOKENS);
        assert!(d.len() <= MAX_LEN);
        changed += usize::from(d != before);
    }
    assert!(changed > 9_000, "{changed} of 10000 mutations changed nothing");
    let spec =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/layer_structured/basic.json")).unwrap();
    let valid =
        (0..200).filter(|_| next_input(&mut rng, "layer_structured", std::slice::from_ref(&spec)).is_some()).count();
    assert!(valid > 150, "only {valid} of 200 mutated specs were usable");
    let manifest = br#"{"schemaVersion": 2, "layers": [{"digest": "sha256:00", "size": 1}]}"#;
    let changed =
        (0..200).filter(|_| mutate_json(&mut rng, manifest, IMAGE_STRINGS).is_some_and(|m| m != manifest)).count();
    assert!(changed > 150, "only {changed} of 200 JSON mutations changed the document");
}
