//! A hostile registry (issue 4, "Bad input gets a clear error and nothing is committed"):
//! a small HTTP/1.1 server written here, on 127.0.0.1 only, that answers `/v2/`,
//! `/v2/<name>/manifests/<ref>` and `/v2/<name>/blobs/<digest>` from a table each test
//! fills with honest fixture content and then corrupts. Every refused pull must exit 125
//! with one `coracle: pull: …` line naming the object and the problem, commit nothing to
//! the store, leave its tmp/ empty and `fsck` clean. Servers stop and join their threads
//! on drop, coracle runs under a deadline and is killed (by its own handle) on timeout or
//! panic, and temp dirs go with their `Env`.

mod util;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::registry::base64;
use util::*;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// An endless body stops here whatever the client does, so a coracle that keeps reading
/// cannot fill the test machine's disk (the test then fails on `capped`).
const ENDLESS_CAP: u64 = 512 << 20;
/// Deadline of an ordinary pull (they take ~4 s: coracle first tries HTTPS).
const PULL_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The hostile registry.

#[derive(Clone)]
enum Body {
    /// The bytes, with a matching Content-Length; the connection stays open.
    Full(Arc<Vec<u8>>),
    /// `Content-Length: declared`, but only `bytes` are sent; then the connection closes.
    Short { bytes: Vec<u8>, declared: u64 },
    /// No Content-Length: the bytes, then the connection closes.
    UntilClose(Vec<u8>),
    /// `prefix`, then zeros without end (chunked, or delimited by a close that never comes).
    Endless { prefix: Vec<u8>, chunked: bool },
    /// No Content-Length: `prefix`, then one zero byte every 100 ms, without end.
    Trickle { prefix: Vec<u8> },
    /// `len` bytes of `fill` with a matching Content-Length, generated as they are sent.
    Filled { len: u64, fill: u8 },
    /// The request is read and never answered (until the server stops).
    Hang,
}

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Reply {
    fn new(status: u16, body: Body) -> Reply {
        Reply { status, headers: Vec::new(), body }
    }
    fn ok(bytes: &[u8]) -> Reply {
        Reply::new(200, Body::Full(Arc::new(bytes.to_vec())))
    }
    fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
    fn redirect(location: &str) -> Reply {
        Reply::new(307, Body::Full(Arc::new(Vec::new()))).header("Location", location)
    }
    fn error(status: u16, code: &str, message: &str) -> Reply {
        let body = json!({"errors": [{"code": code, "message": message}]});
        Reply::ok(&serde_json::to_vec(&body).unwrap()).header("Content-Type", "application/json").with_status(status)
    }
    fn with_status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }
}

/// Who gets an answer other than 401.
#[derive(Clone)]
enum Gate {
    Open,
    /// Every request (`/v2/` included) must carry exactly this Authorization.
    Require {
        authorization: String,
        challenge: String,
    },
    /// Every request is answered 401 with `challenge`, whatever it carries.
    Refuse {
        challenge: String,
    },
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

struct Shared {
    stop: AtomicBool,
    routes: Mutex<HashMap<String, Reply>>,
    gate: Mutex<Gate>,
    requests: Mutex<Vec<Request>>,
    /// Body bytes written, by path.
    sent: Mutex<HashMap<String, u64>>,
    /// An endless body reached ENDLESS_CAP.
    capped: AtomicBool,
}

struct Server {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            routes: Mutex::new(HashMap::new()),
            gate: Mutex::new(Gate::Open),
            requests: Mutex::new(Vec::new()),
            sent: Mutex::new(HashMap::new()),
            capped: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("hostile-{port}"))
            .spawn(move || {
                let mut conns: Vec<JoinHandle<()>> = Vec::new();
                while !s.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let s = Arc::clone(&s);
                            conns.push(std::thread::spawn(move || s.serve(conn)));
                        }
                        // WouldBlock: nobody is waiting; anything else: try again.
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                    conns.retain(|c| !c.is_finished());
                }
                for c in conns {
                    let _ = c.join();
                }
            })
            .unwrap();
        Server { port, shared, thread: Some(thread) }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn route(&self, path: &str, reply: Reply) {
        self.shared.routes.lock().unwrap().insert(path.to_owned(), reply);
    }

    fn gate(&self, g: Gate) {
        *self.shared.gate.lock().unwrap() = g;
    }

    fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    fn sent(&self, path: &str) -> u64 {
        self.shared.sent.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn capped(&self) -> bool {
        self.shared.capped.load(Ordering::SeqCst)
    }

    /// A manifest under `reference` (a tag or digest), with the headers a registry sends.
    fn manifest(&self, name: &str, reference: &str, bytes: &[u8], media_type: &str) {
        let reply = Reply::ok(bytes).header("Content-Type", media_type).header("Docker-Content-Digest", &sha256(bytes));
        self.route(&format!("/v2/{name}/manifests/{reference}"), reply);
    }

    fn blob(&self, name: &str, b: &Blob) {
        self.route(&blob_path(name, &b.digest), blob_reply(b, Body::Full(Arc::new(b.bytes.clone()))));
    }

    /// An honest image: the manifest under `tag` and its digest, config and layers.
    fn image(&self, name: &str, tag: &str, img: &Built) {
        for reference in [tag, img.manifest.digest.as_str()] {
            self.manifest(name, reference, &img.manifest.bytes, &img.manifest.media_type);
        }
        for b in img.layers.iter().chain([&img.config]) {
            self.blob(name, b);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn blob_path(name: &str, digest: &str) -> String {
    format!("/v2/{name}/blobs/{digest}")
}

/// A blob answer as a registry sends it (the digest header claims the descriptor's
/// digest, whatever the body holds).
fn blob_reply(b: &Blob, body: Body) -> Reply {
    Reply::new(200, body).header("Content-Type", "application/octet-stream").header("Docker-Content-Digest", &b.digest)
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// One connection, keep-alive: requests until the peer closes, a reply that ends
    /// with a close, or the server stops.
    fn serve(&self, mut conn: TcpStream) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_nodelay(true);
        let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
        let _ = conn.set_write_timeout(Some(Duration::from_millis(50)));
        let mut buf = Vec::new();
        while let Some(req) = self.read_head(&mut conn, &mut buf) {
            self.requests.lock().unwrap().push(req.clone());
            let reply = self.reply_for(&req);
            if !self.write_reply(&mut conn, req.path(), reply) {
                return;
            }
        }
    }

    fn read_head(&self, conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
        let mut chunk = [0u8; 4096];
        loop {
            if buf.first() == Some(&0x16) {
                // A TLS ClientHello (coracle tries HTTPS first): this is a plain HTTP
                // server, close.
                return None;
            }
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..p]).into_owned();
                buf.drain(..p + 4);
                let mut lines = head.split("\r\n");
                let mut first = lines.next()?.split(' ');
                let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
                let headers = lines
                    .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
                    .collect();
                return Some(Request { method, target, headers });
            }
            if buf.len() > 64 << 10 {
                return None;
            }
            match conn.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if self.stopping() {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
    }

    fn reply_for(&self, req: &Request) -> Reply {
        let unauthorized = |challenge: &str| {
            Reply::error(401, "UNAUTHORIZED", "authentication required").header("WWW-Authenticate", challenge)
        };
        match &*self.gate.lock().unwrap() {
            Gate::Require { authorization, challenge } if req.header("authorization") != Some(authorization) => {
                return unauthorized(challenge);
            }
            Gate::Refuse { challenge } => return unauthorized(challenge),
            _ => {}
        }
        let path = req.path();
        if let Some(r) = self.routes.lock().unwrap().get(path) {
            return r.clone();
        }
        if path == "/v2/" {
            return Reply::ok(b"{}")
                .header("Content-Type", "application/json")
                .header("Docker-Distribution-Api-Version", "registry/2.0");
        }
        if path.contains("/blobs/") {
            Reply::error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        } else if path.contains("/manifests/") {
            Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        } else {
            Reply::error(404, "NOT_FOUND", "not found")
        }
    }

    /// Writes all of `data`, waiting out full socket buffers until the server stops.
    fn send(&self, conn: &mut TcpStream, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            match conn.write(data) {
                Ok(0) => return false,
                Ok(n) => data = &data[n..],
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    if self.stopping() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }

    fn send_body(&self, conn: &mut TcpStream, path: &str, data: &[u8]) -> bool {
        let ok = self.send(conn, data);
        if ok {
            *self.sent.lock().unwrap().entry(path.to_owned()).or_default() += data.len() as u64;
        }
        ok
    }

    /// Sends `reply`; false when the connection is to be closed.
    fn write_reply(&self, conn: &mut TcpStream, path: &str, reply: Reply) -> bool {
        let reason = match reply.status {
            200 => "OK",
            307 => "Temporary Redirect",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Whatever",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let framing = match &reply.body {
            Body::Full(b) => format!("Content-Length: {}\r\n", b.len()),
            Body::Short { declared, .. } => format!("Content-Length: {declared}\r\nConnection: close\r\n"),
            Body::UntilClose(_) | Body::Endless { chunked: false, .. } | Body::Trickle { .. } => {
                "Connection: close\r\n".to_owned()
            }
            Body::Endless { chunked: true, .. } => "Transfer-Encoding: chunked\r\n".to_owned(),
            Body::Filled { len, .. } => format!("Content-Length: {len}\r\n"),
            Body::Hang => String::new(),
        };
        head.push_str(&framing);
        head.push_str("\r\n");
        if let Body::Hang = reply.body {
            while !self.stopping() {
                std::thread::sleep(Duration::from_millis(20));
            }
            return false;
        }
        if !self.send(conn, head.as_bytes()) {
            return false;
        }
        match reply.body {
            Body::Full(b) => self.send_body(conn, path, &b),
            Body::Short { bytes, .. } | Body::UntilClose(bytes) => {
                self.send_body(conn, path, &bytes);
                let _ = conn.flush();
                let _ = conn.shutdown(std::net::Shutdown::Both);
                false
            }
            Body::Endless { prefix, chunked } => {
                let zeros = vec![0u8; 64 << 10];
                let mut piece = |data: &[u8]| {
                    if chunked {
                        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
                        c.extend_from_slice(data);
                        c.extend_from_slice(b"\r\n");
                        self.send_body(conn, path, &c)
                    } else {
                        self.send_body(conn, path, data)
                    }
                };
                if !prefix.is_empty() && !piece(&prefix) {
                    return false;
                }
                let mut total = prefix.len() as u64;
                while piece(&zeros) {
                    total += zeros.len() as u64;
                    if total >= ENDLESS_CAP {
                        self.capped.store(true, Ordering::SeqCst);
                        break;
                    }
                }
                false
            }
            Body::Trickle { prefix } => {
                if !self.send_body(conn, path, &prefix) {
                    return false;
                }
                while self.send_body(conn, path, &[0]) {
                    for _ in 0..5 {
                        if self.stopping() {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                false
            }
            Body::Filled { len, fill } => {
                let block = vec![fill; 64 << 10];
                let mut left = len;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    if !self.send_body(conn, path, &block[..n]) {
                        return false;
                    }
                    left -= n as u64;
                }
                true
            }
            Body::Hang => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures and the coracle side.

/// A two-layer image; the second layer compressed as `top`.
fn fixture(top: Comp) -> Built {
    let base = LayerBuilder::new().dir("etc", 0o755).file("etc/os-release", 0o644, b"ID=hostile\n").finish();
    let upper = LayerBuilder::new().file("tag", 0o644, b"hostile registry fixture\n").finish();
    build(&Image::new(vec![(base, Comp::Gzip), (upper, top)]))
}

/// A config (as JSON) and a manifest over it and `layers` (each descriptor as given).
fn assemble(config: &Value, layers: &[Value], manifest_type: &str, config_type: &str) -> (Blob, Blob) {
    let config = Blob::new(serde_json::to_vec(config).unwrap(), config_type);
    let m = json!({"schemaVersion": 2, "mediaType": manifest_type, "config": config.descriptor(), "layers": layers});
    (config, Blob::new(serde_json::to_vec(&m).unwrap(), manifest_type))
}

/// The same bytes with the first `from` replaced by `to` (same length).
fn tamper(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from).expect("the text to tamper with is there");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// A private store plus everything a pull reads from the environment, inside the test's
/// temp dir: an empty registries.conf, an auth file (absent unless written), a HOME
/// without a docker config.
fn hermetic_env() -> Env {
    let env = Env::new();
    std::fs::write(env.path("registries.conf"), b"").unwrap();
    std::fs::create_dir_all(env.path("home")).unwrap();
    env
}

fn write_auth(env: &Env, registry: &str, user: &str, password: &str) {
    let auth = base64(format!("{user}:{password}").as_bytes(), false);
    let v = json!({"auths": {registry: {"auth": auth}}});
    std::fs::write(env.path("auth.json"), serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Kills and reaps the child on drop unless it was reaped (a timeout or a panic).
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `coracle pull -q reference` against this env only; panics (after killing coracle) if
/// it runs past `deadline`. Returns the output and how long it took.
fn pull_within(env: &Env, reference: &str, deadline: Duration) -> (Out, Duration) {
    let mut c = env.cmd();
    c.args(["pull", "-q", reference])
        .env("REGISTRY_AUTH_FILE", env.path("auth.json"))
        .env_remove("XDG_RUNTIME_DIR")
        .env("CONTAINERS_REGISTRIES_CONF", env.path("registries.conf"))
        .env("HOME", env.path("home"));
    for p in
        ["ALL_PROXY", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "all_proxy", "https_proxy", "http_proxy", "no_proxy"]
    {
        c.env_remove(p);
    }
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut reaper = Reaper(Some(c.spawn().unwrap()));
    let child = reaper.0.as_mut().unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            drop(reaper);
            let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("coracle pull {reference} still running after {deadline:?}: killed; stderr so far: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    reaper.0 = None;
    let output = Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
    (Out(output), took)
}

fn pull(env: &Env, reference: &str) -> Out {
    pull_within(env, reference, PULL_DEADLINE).0
}

/// The refusal every case must end in: exit 125, one `coracle: pull: ` line holding every
/// needle, nothing in the store, tmp/ empty, fsck clean.
fn assert_refused(case: &str, env: &Env, o: &Out, needles: &[&str]) {
    eprintln!("{case}: {}", o.stderr().trim());
    o.assert_error("coracle: pull: ");
    let err = o.stderr();
    for n in needles {
        assert!(err.contains(n), "{case}: error {err:?} does not mention {n:?}");
    }
    assert_nothing_committed(case, env);
}

fn assert_nothing_committed(case: &str, env: &Env) {
    assert_eq!(env.store_objects(), Vec::<String>::new(), "{case}: something was committed to the store");
    let tmp: Vec<_> = match std::fs::read_dir(env.root().join("tmp")) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    assert!(tmp.is_empty(), "{case}: debris left in the store's tmp/: {tmp:?}");
    let f = env.run(&["fsck"]);
    assert!(f.status(), "{case}: fsck failed: {}{}", f.stdout(), f.stderr());
}

fn assert_pulled(case: &str, env: &Env, o: &Out, img: &Built) {
    assert!(o.status(), "{case}: pull failed: {}", o.stderr());
    assert_eq!(o.stdout().trim(), img.manifest.digest, "{case}: the digest last on stdout");
    let f = env.run(&["fsck"]);
    assert!(f.status(), "{case}: fsck failed: {}{}", f.stdout(), f.stderr());
}

// ---------------------------------------------------------------------------------------
// The cases.

#[test]
fn blob_bytes_not_matching_their_digest() {
    // A layer: an uncompressed tar with one content byte changed is still a valid tar of
    // the same size, so only the digest can catch it.
    let img = fixture(Comp::None);
    let srv = Server::start();
    srv.image("bad/layer", "1", &img);
    let layer = &img.layers[1];
    let forged = tamper(&layer.bytes, b"fixture", b"fixturE");
    srv.route(&blob_path("bad/layer", &layer.digest), blob_reply(layer, Body::Full(Arc::new(forged))));
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/bad/layer:1", srv.addr()));
    assert_refused("layer", &env, &o, &[&layer.digest, "digest mismatch"]);

    // The config: one character changed, same size.
    let img = fixture(Comp::Gzip);
    srv.image("bad/config", "1", &img);
    let forged = tamper(&img.config.bytes, b"coracle fixture", b"coracle fixturE");
    srv.route(&blob_path("bad/config", &img.config.digest), blob_reply(&img.config, Body::Full(Arc::new(forged))));
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/bad/config:1", srv.addr()));
    assert_refused("config", &env, &o, &[&img.config.digest, "digest mismatch"]);
}

/// Content-Length says the whole blob, half of it comes, the connection closes (every
/// time coracle asks again: the server ignores ranges).
#[test]
fn short_blob_with_content_length_then_close() {
    let img = fixture(Comp::Gzip);
    let layer = &img.layers[1];
    let srv = Server::start();
    srv.image("short/cl", "1", &img);
    let half = layer.bytes[..layer.bytes.len() / 2].to_vec();
    let body = Body::Short { bytes: half, declared: layer.bytes.len() as u64 };
    srv.route(&blob_path("short/cl", &layer.digest), blob_reply(layer, body));
    let env = hermetic_env();
    let (o, took) = pull_within(&env, &format!("{}/short/cl:1", srv.addr()), PULL_DEADLINE);
    eprintln!("short blob (Content-Length, close): {took:?}");
    assert_refused("short, Content-Length", &env, &o, &[&layer.digest]);
    let gets = srv.requests().iter().filter(|r| r.path() == blob_path("short/cl", &layer.digest)).count();
    assert!(gets <= 10, "the short blob was asked for {gets} times");
}

#[test]
fn short_and_over_long_blobs() {
    let img = fixture(Comp::Gzip);
    let layer = &img.layers[1];
    let srv = Server::start();
    // No Content-Length: fewer bytes than the descriptor, then a close (a complete body
    // as far as HTTP knows).
    srv.image("short/close", "1", &img);
    let half = layer.bytes[..layer.bytes.len() / 2].to_vec();
    srv.route(&blob_path("short/close", &layer.digest), blob_reply(layer, Body::UntilClose(half)));
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/short/close:1", srv.addr()));
    assert_refused("short, close-delimited", &env, &o, &[&layer.digest]);

    // More bytes than the descriptor, with a Content-Length that matches them.
    srv.image("long/layer", "1", &img);
    let mut long = layer.bytes.clone();
    long.extend_from_slice(&[0x55; 1000]);
    srv.route(&blob_path("long/layer", &layer.digest), blob_reply(layer, Body::Full(Arc::new(long))));
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/long/layer:1", srv.addr()));
    assert_refused("over-long layer", &env, &o, &[&layer.digest, "larger than"]);

    // The same for the config.
    srv.image("long/config", "1", &img);
    let mut long = img.config.bytes.clone();
    long.extend_from_slice(b"    ");
    srv.route(&blob_path("long/config", &img.config.digest), blob_reply(&img.config, Body::Full(Arc::new(long))));
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/long/config:1", srv.addr()));
    assert_refused("over-long config", &env, &o, &[&img.config.digest]);
}

/// The manifest's `Docker-Content-Digest` names other content than the body: refused
/// (coracle checks the header when present).
#[test]
fn wrong_docker_content_digest_on_the_manifest() {
    let img = fixture(Comp::Gzip);
    let srv = Server::start();
    srv.image("dcd/app", "1", &img);
    let claimed = sha256(b"some other manifest");
    let reply = Reply::ok(&img.manifest.bytes)
        .header("Content-Type", &img.manifest.media_type)
        .header("Docker-Content-Digest", &claimed);
    srv.route("/v2/dcd/app/manifests/1", reply);
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/dcd/app:1", srv.addr()));
    eprintln!("wrong Docker-Content-Digest: {}", o.stderr().trim());
    // The message must name the header or the digest it claimed.
    o.assert_error("coracle: pull: ");
    let err = o.stderr();
    assert!(
        err.contains("Docker-Content-Digest") || err.contains(&hex(&claimed)[..12]),
        "error {err:?} names neither the header nor the digest it claimed"
    );
    assert_nothing_committed("wrong Docker-Content-Digest", &env);
}

/// `name@sha256:…` pinned; the registry serves other bytes (same content plus a newline,
/// with a digest header that matches what it serves).
#[test]
fn manifest_not_matching_the_pinned_digest() {
    let img = fixture(Comp::Gzip);
    let srv = Server::start();
    srv.image("pinned/app", "1", &img);
    let mut other = img.manifest.bytes.clone();
    other.push(b'\n');
    srv.manifest("pinned/app", &img.manifest.digest, &other, &img.manifest.media_type);
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/pinned/app@{}", srv.addr(), img.manifest.digest));
    assert_refused("pinned digest", &env, &o, &[&img.manifest.digest, &sha256(&other)]);
}

#[test]
fn config_diff_ids_not_matching_the_layers() {
    let img = fixture(Comp::Gzip);
    let layers: Vec<Value> = img.layers.iter().map(Blob::descriptor).collect();
    let srv = Server::start();
    for b in &img.layers {
        srv.blob("diff/value", b);
        srv.blob("diff/count", b);
    }
    // A wrong diff-id for the second layer.
    let mut cfg: Value = serde_json::from_slice(&img.config.bytes).unwrap();
    cfg["rootfs"]["diff_ids"][1] = json!(sha256(b"not this layer"));
    let (config, manifest) = assemble(&cfg, &layers, OCI_MANIFEST, OCI_CONFIG);
    srv.blob("diff/value", &config);
    srv.manifest("diff/value", "1", &manifest.bytes, OCI_MANIFEST);
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/diff/value:1", srv.addr()));
    assert_refused("wrong diff-id", &env, &o, &[&img.layers[1].digest, "diff-id mismatch"]);

    // One diff-id for two layers.
    let mut cfg: Value = serde_json::from_slice(&img.config.bytes).unwrap();
    cfg["rootfs"]["diff_ids"] = json!([img.diff_ids[0]]);
    let (config, manifest) = assemble(&cfg, &layers, OCI_MANIFEST, OCI_CONFIG);
    srv.blob("diff/count", &config);
    srv.manifest("diff/count", "1", &manifest.bytes, OCI_MANIFEST);
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/diff/count:1", srv.addr()));
    assert_refused("diff-id count", &env, &o, &[&config.digest, "diff_ids"]);
}

/// CVE-2021-41190: a document that is a manifest and an index at once.
#[test]
fn manifest_with_both_layers_and_manifests() {
    let img = fixture(Comp::Gzip);
    let srv = Server::start();
    srv.image("ambiguous/app", "1", &img);
    let mut m: Value = serde_json::from_slice(&img.manifest.bytes).unwrap();
    let mut entry = img.manifest.descriptor();
    entry["platform"] = json!({"os": "linux", "architecture": "amd64"});
    m["manifests"] = json!([entry]);
    let bytes = serde_json::to_vec(&m).unwrap();
    srv.manifest("ambiguous/app", "1", &bytes, OCI_MANIFEST);
    // And the same document announced as an index.
    m["mediaType"] = json!(OCI_INDEX);
    let as_index = serde_json::to_vec(&m).unwrap();
    srv.manifest("ambiguous/app", "2", &as_index, OCI_INDEX);
    for (tag, doc) in [("1", &bytes), ("2", &as_index)] {
        let env = hermetic_env();
        let o = pull(&env, &format!("{}/ambiguous/app:{tag}", srv.addr()));
        assert_refused(&format!("ambiguous :{tag}"), &env, &o, &[&sha256(doc), "ambiguous"]);
    }
}

/// Blobs served without end: coracle stops reading right after the declared size.
#[test]
fn endless_blob_bodies_stop_at_the_declared_size() {
    let img = fixture(Comp::Gzip);
    let layer = &img.layers[1];
    let srv = Server::start();
    for (name, chunked) in [("endless/chunked", true), ("endless/close", false)] {
        srv.image(name, "1", &img);
        let body = Body::Endless { prefix: layer.bytes.clone(), chunked };
        srv.route(&blob_path(name, &layer.digest), blob_reply(layer, body));
        let env = hermetic_env();
        let (o, took) = pull_within(&env, &format!("{}/{name}:1", srv.addr()), PULL_DEADLINE);
        eprintln!("{name}: {took:?}, {} bytes sent", srv.sent(&blob_path(name, &layer.digest)));
        assert!(!srv.capped(), "{name}: coracle read {ENDLESS_CAP} bytes of a {}-byte blob", layer.bytes.len());
        assert_refused(name, &env, &o, &[&layer.digest, "larger than"]);
    }
    // The config, endless: bounded by the document limit at most.
    srv.image("endless/config", "1", &img);
    let body = Body::Endless { prefix: img.config.bytes.clone(), chunked: true };
    srv.route(&blob_path("endless/config", &img.config.digest), blob_reply(&img.config, body));
    let env = hermetic_env();
    let (o, took) = pull_within(&env, &format!("{}/endless/config:1", srv.addr()), PULL_DEADLINE);
    let sent = srv.sent(&blob_path("endless/config", &img.config.digest));
    eprintln!("endless config: {took:?}, {sent} bytes sent");
    assert!(!srv.capped(), "endless config: coracle read {ENDLESS_CAP} bytes");
    // Read up to its declared size + 1, then compared: "content has 424" for 423.
    assert_refused("endless config", &env, &o, &[&img.config.digest, "size mismatch: descriptor says"]);
}

/// Endless but slow: the declared size plus one byte arrives at once, then a byte every
/// 100 ms for ever. A reader that stops at the declared size (+1) fails at once; one that
/// reads on to some larger limit waits (there is no timeout on blob bodies, rightly: big
/// layers take time).
#[test]
fn trickling_endless_bodies_stop_at_the_declared_size() {
    let img = fixture(Comp::Gzip);
    let layer = &img.layers[1];
    let srv = Server::start();
    srv.image("trickle/layer", "1", &img);
    srv.image("trickle/config", "1", &img);
    let mut prefix = layer.bytes.clone();
    prefix.push(0);
    srv.route(&blob_path("trickle/layer", &layer.digest), blob_reply(layer, Body::Trickle { prefix }));
    let mut prefix = img.config.bytes.clone();
    prefix.push(b' ');
    srv.route(&blob_path("trickle/config", &img.config.digest), blob_reply(&img.config, Body::Trickle { prefix }));
    for (name, object, why) in [
        ("trickle/layer", &layer.digest, "larger than"),
        ("trickle/config", &img.config.digest, "size mismatch: descriptor says"),
    ] {
        let env = hermetic_env();
        let (o, took) = pull_within(&env, &format!("{}/{name}:1", srv.addr()), Duration::from_secs(30));
        eprintln!("{name}: {took:?}");
        assert_refused(name, &env, &o, &[object, why]);
    }
}

/// 64 MiB of JSON whitespace as a manifest (with a Content-Length), and a manifest body
/// without end: a bounded read and a clear error.
#[test]
fn huge_manifest_is_read_bounded() {
    let srv = Server::start();
    let huge = Reply::new(200, Body::Filled { len: 64 << 20, fill: b' ' }).header("Content-Type", OCI_MANIFEST);
    srv.route("/v2/huge/app/manifests/1", huge);
    let endless =
        Reply::new(200, Body::Endless { prefix: b"{".to_vec(), chunked: true }).header("Content-Type", OCI_MANIFEST);
    srv.route("/v2/huge/app/manifests/2", endless);
    for tag in ["1", "2"] {
        let env = hermetic_env();
        let (o, took) = pull_within(&env, &format!("{}/huge/app:{tag}", srv.addr()), PULL_DEADLINE);
        let sent = srv.sent(&format!("/v2/huge/app/manifests/{tag}"));
        eprintln!("huge manifest :{tag}: {took:?}, {sent} bytes sent");
        assert!(!srv.capped(), "huge manifest :{tag}: coracle read {ENDLESS_CAP} bytes");
        assert_refused(&format!("huge manifest :{tag}"), &env, &o, &["manifest", "larger than"]);
    }
}

/// The registry demands basic auth and redirects blob GETs to storage on another
/// host:port: the redirected requests carry no Authorization, and the pull succeeds.
#[test]
fn redirect_to_another_host_carries_no_credentials() {
    let img = fixture(Comp::Gzip);
    let registry = Server::start();
    let storage = Server::start();
    let authorization = format!("Basic {}", base64(b"u:p", false));
    registry.gate(Gate::Require {
        authorization: authorization.clone(),
        challenge: "Basic realm=\"hostile registry\"".into(),
    });
    registry.image("redirected/app", "1", &img);
    for b in img.layers.iter().chain([&img.config]) {
        let at = format!("/storage/{}", hex(&b.digest));
        registry.route(
            &blob_path("redirected/app", &b.digest),
            Reply::redirect(&format!("http://{}{at}?X-Signature=hostile", storage.addr())),
        );
        storage.route(&at, blob_reply(b, Body::Full(Arc::new(b.bytes.clone()))));
    }
    let env = hermetic_env();
    write_auth(&env, &registry.addr(), "u", "p");
    let o = pull(&env, &format!("{}/redirected/app:1", registry.addr()));
    assert_pulled("redirect", &env, &o, &img);
    let at_storage = storage.requests();
    assert_eq!(at_storage.len(), img.layers.len() + 1, "every blob from storage: {at_storage:?}");
    for r in &at_storage {
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("authorization"), None, "credentials followed a redirect to another host: {r:?}");
    }
    let manifests: Vec<_> = registry.requests().into_iter().filter(|r| r.path().contains("/manifests/")).collect();
    assert!(
        !manifests.is_empty() && manifests.iter().all(|r| r.header("authorization") == Some(&authorization)),
        "the registry itself got the credentials: {manifests:?}"
    );

    // Storage that asks for credentials itself (a Basic challenge) gets none either: the
    // pull fails instead.
    let greedy = Server::start();
    greedy.gate(Gate::Refuse { challenge: "Basic realm=\"storage\"".into() });
    for b in img.layers.iter().chain([&img.config]) {
        registry.route(
            &blob_path("greedy/app", &b.digest),
            Reply::redirect(&format!("http://{}/storage/{}", greedy.addr(), hex(&b.digest))),
        );
    }
    registry.manifest("greedy/app", "1", &img.manifest.bytes, &img.manifest.media_type);
    let env = hermetic_env();
    write_auth(&env, &registry.addr(), "u", "p");
    let o = pull(&env, &format!("{}/greedy/app:1", registry.addr()));
    let asked = greedy.requests();
    assert!(!asked.is_empty(), "the redirect was not followed");
    for r in &asked {
        assert_eq!(r.header("authorization"), None, "credentials sent to a host that challenged: {r:?}");
    }
    assert_refused("redirect to a challenging host", &env, &o, &["401", &greedy.addr()]);
}

/// Every request answered 401 with a challenge, credentials or not: a bounded number of
/// attempts and a clear auth error (basic, then bearer with a token server that issues
/// tokens the registry never accepts).
#[test]
fn a_401_loop_ends_with_an_auth_error() {
    let srv = Server::start();
    srv.gate(Gate::Refuse { challenge: "Basic realm=\"hostile registry\"".into() });
    let env = hermetic_env();
    write_auth(&env, &srv.addr(), "u", "p");
    let (o, took) = pull_within(&env, &format!("{}/loop/app:1", srv.addr()), PULL_DEADLINE);
    let seen = srv.requests();
    eprintln!("basic 401 loop: {took:?}, {} requests", seen.len());
    assert_refused("basic 401 loop", &env, &o, &["401"]);
    assert!(seen.len() <= 10, "{} requests for one pull: {seen:?}", seen.len());
    assert!(seen.iter().any(|r| r.header("authorization").is_some()), "the credentials were never tried");

    let tokens = Server::start();
    tokens.route("/token", Reply::ok(br#"{"token":"hostile","access_token":"hostile"}"#));
    let srv = Server::start();
    srv.gate(Gate::Refuse {
        challenge: format!("Bearer realm=\"http://{}/token\",service=\"hostile\"", tokens.addr()),
    });
    let env = hermetic_env();
    let (o, took) = pull_within(&env, &format!("{}/loop/app:1", srv.addr()), PULL_DEADLINE);
    let (seen, issued) = (srv.requests(), tokens.requests());
    eprintln!("bearer 401 loop: {took:?}, {} requests, {} tokens", seen.len(), issued.len());
    assert_refused("bearer 401 loop", &env, &o, &["401"]);
    assert!(seen.len() <= 10, "{} requests for one pull: {seen:?}", seen.len());
    assert!(issued.len() <= 10, "{} token requests for one pull", issued.len());
    assert!(seen.iter().any(|r| r.header("authorization") == Some("Bearer hostile")), "the token was never used");
}

/// A Bearer challenge whose realm accepts connections and never answers: the pull fails
/// in bounded time, naming the token server.
#[test]
fn hanging_token_endpoint_times_out() {
    let tokens = Server::start();
    tokens.route("/token", Reply::new(200, Body::Hang));
    let srv = Server::start();
    srv.gate(Gate::Refuse {
        challenge: format!("Bearer realm=\"http://{}/token\",service=\"hostile\"", tokens.addr()),
    });
    let env = hermetic_env();
    let (o, took) = pull_within(&env, &format!("{}/hang/app:1", srv.addr()), Duration::from_secs(180));
    let asked = tokens.requests().len();
    eprintln!("hanging token endpoint: failed after {took:?}, {asked} token requests");
    assert!(asked >= 1, "the token server was never asked");
    assert_refused("hanging token endpoint", &env, &o, &[&tokens.addr()]);
    assert!(took < Duration::from_secs(90), "the pull took {took:?} to give up on a hanging token server");
}

/// A foreign layer with `urls` the registry does not have: coracle does not fetch the
/// URL (nobody asked it to) and fails naming the layer.
#[test]
fn foreign_layer_urls_are_not_followed() {
    let img = fixture(Comp::Gzip);
    let registry = Server::start();
    let elsewhere = Server::start();
    let foreign = &img.layers[1];
    let url_path = format!("/layers/{}.tar.gz", hex(&foreign.digest));
    elsewhere.route(&url_path, blob_reply(foreign, Body::Full(Arc::new(foreign.bytes.clone()))));
    let mut layers: Vec<Value> = img.layers.iter().map(Blob::descriptor).collect();
    layers[1]["mediaType"] = json!(FOREIGN_LAYER);
    layers[1]["urls"] = json!([format!("http://{}{url_path}", elsewhere.addr())]);
    let cfg: Value = serde_json::from_slice(&img.config.bytes).unwrap();
    let (config, manifest) = assemble(&cfg, &layers, DOCKER_MANIFEST, DOCKER_CONFIG);
    registry.manifest("foreign/app", "1", &manifest.bytes, DOCKER_MANIFEST);
    registry.blob("foreign/app", &config);
    registry.blob("foreign/app", &img.layers[0]);
    let env = hermetic_env();
    let o = pull(&env, &format!("{}/foreign/app:1", registry.addr()));
    assert!(elsewhere.requests().is_empty(), "the foreign layer's URL was fetched: {:?}", elsewhere.requests());
    assert_refused("foreign layer", &env, &o, &[&foreign.digest, "404"]);
}
