//! A real registry for the pull tests: Debian's `docker-registry` (the CNCF distribution
//! registry, 2.8) on 127.0.0.1 with a generated config, in plain HTTP, behind TLS with a
//! throwaway CA, behind htpasswd basic auth, or behind bearer tokens from a small token
//! server in this file; `skopeo` helpers push fixture images into it, and its access log
//! tells what it served (e.g. "each layer downloaded once").
//!
//! Everything it makes is removed on drop, also when a test panics: the server process
//! (killed by its PID, then waited for), the token server thread, the certificates and the
//! storage. A `Registry` belongs to one test: the server also gets SIGKILL when the thread
//! that started it exits (PR_SET_PDEATHSIG), so a killed test run leaves no server behind;
//! do not keep one in a static shared between tests.
//!
//! Tools: `docker-registry`, `skopeo`, `openssl` (TLS and token keys), `htpasswd` from
//! apache2-utils (basic auth); the test command installs them.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::util::{
    need_tool, sha256, write_blob, write_multiarch_layout, write_oci_layout, Blob, Built, Comp, OCI_INDEX, OCI_MANIFEST,
};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The `service` of the registry's token auth (the JWT's `aud`).
pub const TOKEN_SERVICE: &str = "coracle-test-registry";
/// The `issuer` of the registry's token auth (the JWT's `iss`).
pub const TOKEN_ISSUER: &str = "coracle-test-token-issuer";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How the token server's JWTs name their signing key; distribution 2.8 accepts both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenKeyRef {
    /// `x5c`: the signing certificate (base64 DER), verified against `rootcertbundle`.
    #[default]
    X5c,
    /// `kid`: the libtrust fingerprint of the signing key, which the registry computes for
    /// each certificate of `rootcertbundle`.
    Kid,
}

/// What to put in front of the registry. The default is plain HTTP without auth.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// HTTPS with a server certificate for IP 127.0.0.1 and DNS localhost, from a fresh CA
    /// (`Registry::ca_pem`, `Registry::write_certs_d`).
    pub tls: bool,
    /// Basic auth (`auth.htpasswd`) with this one user.
    pub htpasswd: Option<(String, String)>,
    /// Bearer tokens (`auth.token`) from the harness's token server; anonymous token
    /// requests are granted unless `token_credentials` is set.
    pub token: bool,
    /// The token server answers 401 unless these basic-auth credentials come with the
    /// request (implies `token`).
    pub token_credentials: Option<(String, String)>,
    pub token_key_ref: TokenKeyRef,
    /// The registry's `log.level` (default `error`); `info` shows why a token was refused.
    pub log_level: Option<String>,
}

impl RegistryOptions {
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }
    pub fn with_htpasswd(mut self, user: &str, password: &str) -> Self {
        self.htpasswd = Some((user.into(), password.into()));
        self
    }
    pub fn with_token(mut self) -> Self {
        self.token = true;
        self
    }
    pub fn with_token_credentials(mut self, user: &str, password: &str) -> Self {
        self.token = true;
        self.token_credentials = Some((user.into(), password.into()));
        self
    }
    pub fn with_token_key_ref(mut self, r: TokenKeyRef) -> Self {
        self.token_key_ref = r;
        self
    }
    pub fn with_log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.into());
        self
    }
}

/// One line of the registry's access log (Apache combined format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEntry {
    pub method: String,
    /// The request URI as sent, e.g. `/v2/test/app/blobs/sha256:…`.
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub user_agent: String,
}

/// A running registry. Fields drop in order: the process first, then the token server,
/// then the directory.
pub struct Registry {
    child: ChildGuard,
    token: Option<TokenServer>,
    port: u16,
    tls: bool,
    credentials: Option<(String, String)>,
    dir: tempfile::TempDir,
    layouts: Mutex<u32>,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only; then reap it.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Registry {
    /// Starts a registry with `opts` and waits (bounded) until `/v2/` answers.
    pub fn start(opts: RegistryOptions) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: `apt-get install -y docker-registry` (the test command installs it)"
        );
        let token_auth = opts.token || opts.token_credentials.is_some();
        assert!(!(token_auth && opts.htpasswd.is_some()), "the registry takes one auth scheme: htpasswd or token");
        let mut dir = tempfile::Builder::new().prefix("coracle-registry-").tempdir().unwrap();
        let d = &dir.path().to_path_buf();
        fs::create_dir_all(d.join("client/docker")).unwrap();
        fs::write(d.join("client/auth.json"), br#"{"auths":{}}"#).unwrap();

        let mut auth = String::new();
        let mut http_tls = String::new();
        if opts.tls {
            need_tool("openssl");
            fs::write(d.join("openssl.cnf"), OPENSSL_CNF).unwrap();
            openssl_run(
                d,
                &["req", "-x509", "-extensions", "v3_ca", "-subj", "/CN=coracle test CA"],
                &["-keyout", "ca.key", "-out", "ca.crt"],
            );
            openssl_run(
                d,
                &["req", "-x509", "-extensions", "v3_server", "-subj", "/CN=127.0.0.1", "-CA", "ca.crt"],
                &["-CAkey", "ca.key", "-keyout", "server.key", "-out", "server.crt"],
            );
            fs::create_dir_all(d.join("client/certs")).unwrap();
            fs::copy(d.join("ca.crt"), d.join("client/certs/ca.crt")).unwrap();
            http_tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_path(&d.join("server.crt")),
                yaml_path(&d.join("server.key"))
            );
        }
        let mut credentials = None;
        if let Some((user, password)) = &opts.htpasswd {
            need_tool("htpasswd");
            let o = Command::new("htpasswd").args(["-Bbn", user, password]).output().unwrap();
            assert!(o.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&o.stderr));
            fs::write(d.join("htpasswd"), &o.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: coracle-test-basic\n    path: {}\n",
                yaml_path(&d.join("htpasswd"))
            );
            credentials = Some((user.clone(), password.clone()));
        }
        let mut token = token_auth.then(|| TokenServer::start(d, opts.token_credentials.clone(), opts.token_key_ref));
        if let Some(t) = &token {
            auth = format!(
                "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                t.realm(),
                yaml_path(t.cert())
            );
            credentials = opts.token_credentials.clone();
        }
        let level = opts.log_level.as_deref().unwrap_or("error");

        // A free port is found by binding :0 and letting go; another process may take it
        // before the registry binds it, so a failed bind is retried on a new port.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: {level}\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: coracle-test-secret\n{http_tls}\
                 {auth}\
                 health:\n  storagedriver:\n    enabled: false\n",
                storage = yaml_path(&d.join("storage")),
            );
            fs::write(d.join("config.yml"), config).unwrap();
            let stdout = fs::File::create(d.join("access.log")).unwrap();
            let stderr = fs::File::create(d.join("registry.log")).unwrap();
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve").arg(d.join("config.yml")).current_dir(d);
            cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = ChildGuard(cmd.spawn().unwrap());
            let mut reg = Registry {
                child,
                token,
                port,
                tls: opts.tls,
                credentials: credentials.clone(),
                dir,
                layouts: Mutex::new(0),
            };
            match reg.wait_ready() {
                Ok(()) => return reg,
                Err(()) => {
                    // The port was taken: take everything back out of `reg` and retry.
                    let Registry { child, token: t, dir: d2, .. } = reg;
                    drop(child);
                    token = t;
                    dir = d2;
                }
            }
        }
        panic!("docker-registry could not bind a free port in 5 attempts");
    }

    /// Waits until the server answers HTTP; Err(()) when its port was taken.
    fn wait_ready(&mut self) -> Result<(), ()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = None;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                let log = self.log();
                if log.contains("address already in use") {
                    return Err(());
                }
                panic!("docker-registry exited ({status}) while starting; its log:\n{log}");
            }
            if let Some(status_line) = probe_http(self.port) {
                // Over TLS, Go answers a plain-HTTP request with "400 … HTTPS server":
                // that proves it serves too.
                let ok = if self.tls {
                    status_line.starts_with("HTTP/1.")
                } else {
                    status_line.contains(" 200") || status_line.contains(" 401")
                };
                if ok {
                    return Ok(());
                }
                // Something else holds the port: the registry is about to exit (see above).
                last = Some(status_line);
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer /v2/ on 127.0.0.1:{} within {START_TIMEOUT:?} (last answer: {last:?}); \
                 its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`, the registry's host part in image references.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }
    /// `docker://127.0.0.1:PORT/NAME` for skopeo.
    pub fn reference(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr())
    }
    /// The registry's PID (for cleanup checks).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
    /// The temporary directory holding config, certificates, storage and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The registry's storage root (filesystem driver).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }
    /// The registry's own log (stderr), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
    pub fn is_tls(&self) -> bool {
        self.tls
    }
    /// The CA certificate (PEM) the server's certificate is signed with.
    pub fn ca_pem(&self) -> PathBuf {
        assert!(self.tls, "ca_pem: this registry was started without tls");
        self.dir.path().join("ca.crt")
    }
    /// Writes `<dir>/127.0.0.1:PORT/ca.crt`, the certs.d layout of containers and docker.
    pub fn write_certs_d(&self, dir: &Path) -> PathBuf {
        let host = dir.join(self.addr());
        fs::create_dir_all(&host).unwrap();
        fs::copy(self.ca_pem(), host.join("ca.crt")).unwrap();
        host
    }
    /// The credentials a client needs (htpasswd user, or the token server's required ones).
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }
    /// Writes a containers `auth.json` (`{"auths": {"127.0.0.1:PORT": {"auth": b64}}}`)
    /// holding this registry's credentials.
    pub fn write_auth_json(&self, path: &Path) {
        let (u, p) = self.credentials().expect("write_auth_json: this registry has no credentials");
        let v = json!({"auths": {self.addr(): {"auth": base64(format!("{u}:{p}").as_bytes(), false)}}});
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
    /// The token server, when started with `token`.
    pub fn token_server(&self) -> &TokenServer {
        self.token.as_ref().expect("token_server: this registry was started without token auth")
    }
    /// Every request the token server saw, in order.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token_server().requests()
    }

    // ---- skopeo as the reference client ----

    /// `skopeo` that sees no credentials of the host (`REGISTRY_AUTH_FILE` and
    /// `DOCKER_CONFIG` point into the registry's directory, empty).
    pub fn skopeo(&self) -> Command {
        need_tool("skopeo");
        let mut c = Command::new("skopeo");
        c.env("REGISTRY_AUTH_FILE", self.dir.path().join("client/auth.json"))
            .env("DOCKER_CONFIG", self.dir.path().join("client/docker"))
            .stdin(Stdio::null());
        c
    }
    /// skopeo's TLS flags for this registry; `side` is "" (inspect), "src-" or "dest-":
    /// `--{side}tls-verify=false` for HTTP, `--{side}cert-dir=DIR` (holding ca.crt) for TLS.
    pub fn tls_flags(&self, side: &str) -> Vec<String> {
        if self.tls {
            vec![format!("--{side}cert-dir={}", self.dir.path().join("client/certs").display())]
        } else {
            vec![format!("--{side}tls-verify=false")]
        }
    }
    /// `--{side}creds=USER:PASSWORD` when the registry needs credentials.
    pub fn creds_flags(&self, side: &str) -> Vec<String> {
        self.credentials().map(|(u, p)| format!("--{side}creds={u}:{p}")).into_iter().collect()
    }
    /// Both of the above: what skopeo needs to talk to this registry.
    pub fn client_flags(&self, side: &str) -> Vec<String> {
        let mut f = self.tls_flags(side);
        f.extend(self.creds_flags(side));
        f
    }

    /// `skopeo copy SRC docker://ADDR/NAME` (SRC like `oci:DIR:REF`), asserting success.
    pub fn push(&self, src: &str, name: &str) {
        self.push_with(src, name, &[]);
    }
    /// `push` with extra `skopeo copy` arguments.
    pub fn push_with(&self, src: &str, name: &str, extra: &[&str]) {
        let o = self.try_push_with(src, name, extra);
        assert!(o.status.success(), "skopeo copy {src} to {name} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    /// `push_with`, returning skopeo's output whatever happened.
    pub fn try_push_with(&self, src: &str, name: &str, extra: &[&str]) -> Output {
        self.skopeo()
            .args(["copy", "--quiet"])
            .args(self.client_flags("dest-"))
            .args(extra)
            .arg(src)
            .arg(self.reference(name))
            .output()
            .unwrap()
    }
    /// Pushes a fixture image as built (its manifest digest is kept).
    pub fn push_image(&self, img: &Built, name: &str) {
        let layout = self.layout_dir();
        write_oci_layout(&layout, &[(img, Some("img"))]);
        self.push(&format!("oci:{}:img", layout.display()), name);
        fs::remove_dir_all(&layout).unwrap();
    }
    /// Pushes `src` recompressing every layer with zstd (`--dest-compress-format zstd`).
    /// skopeo 1.9 reuses (mounts) a layer the registry already holds in another repository
    /// instead of recompressing it; `push_image_zstd` cannot hit that.
    pub fn push_zstd(&self, src: &str, name: &str) {
        self.push_with(src, name, &["--dest-compress", "--dest-compress-format", "zstd"]);
    }
    /// Pushes a fixture image with zstd layers compressed by skopeo: the layout handed to
    /// skopeo holds the uncompressed tars (same config, so the same diff-ids), which skopeo
    /// must compress, so no gzip blob already in the registry can be reused instead.
    /// Returns the digests of the zstd layers as pushed.
    pub fn push_image_zstd(&self, img: &Built, name: &str) -> Vec<String> {
        let layout = self.layout_dir();
        let layers: Vec<Blob> = img.tars.iter().map(|t| Blob::new(t.clone(), Comp::None.media_type())).collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": img.config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(serde_json::to_vec(&manifest).unwrap(), OCI_MANIFEST);
        for b in layers.iter().chain([&img.config, &manifest]) {
            write_blob(&layout, b);
        }
        let mut d = manifest.descriptor();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": "img"});
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d]});
        fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        self.push_zstd(&format!("oci:{}:img", layout.display()), name);
        fs::remove_dir_all(&layout).unwrap();
        let pushed = self.manifest(name);
        let layers = pushed["layers"].as_array().unwrap();
        assert!(
            layers.iter().all(|l| l["mediaType"] == Comp::Zstd.media_type()),
            "skopeo did not push zstd layers: {pushed:#}"
        );
        layers.iter().map(|l| l["digest"].as_str().unwrap().to_owned()).collect()
    }
    /// Pushes an OCI image index over `images` (one per platform, from their `arch` and
    /// `variant`) with `skopeo copy --all`; returns the index, whose digest the registry keeps.
    pub fn push_multiarch(&self, images: &[&Built], name: &str) -> Blob {
        let layout = self.layout_dir();
        let index = write_multiarch_layout(&layout, images, "index");
        self.push_with(&format!("oci:{}:index", layout.display()), name, &["--all"]);
        fs::remove_dir_all(&layout).unwrap();
        index
    }
    /// Pushes a Docker manifest list (schema 2 list over schema 2 manifests) over `images`:
    /// `skopeo copy --all --format v2s2` of an OCI index; returns the list's digest.
    pub fn push_docker_list(&self, images: &[&Built], name: &str) -> String {
        let layout = self.layout_dir();
        write_multiarch_layout(&layout, images, "index");
        self.push_with(&format!("oci:{}:index", layout.display()), name, &["--all", "--format", "v2s2"]);
        fs::remove_dir_all(&layout).unwrap();
        self.manifest_digest(name)
    }
    fn layout_dir(&self) -> PathBuf {
        let mut n = self.layouts.lock().unwrap();
        *n += 1;
        self.dir.path().join(format!("layouts/{n}"))
    }

    /// The manifest bytes as served (`skopeo inspect --raw`).
    pub fn manifest_raw(&self, name: &str) -> Vec<u8> {
        let o =
            self.skopeo().arg("inspect").arg("--raw").args(self.client_flags("")).arg(self.reference(name)).output();
        let o = o.unwrap();
        assert!(o.status.success(), "skopeo inspect --raw {name} failed: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    }
    /// The manifest as served, parsed.
    pub fn manifest(&self, name: &str) -> Value {
        serde_json::from_slice(&self.manifest_raw(name)).unwrap()
    }
    /// `sha256:…` of the manifest bytes as served.
    pub fn manifest_digest(&self, name: &str) -> String {
        sha256(&self.manifest_raw(name))
    }
    /// `skopeo copy docker://ADDR/NAME oci:DEST:REF` (a pull by the reference client).
    pub fn pull_oci(&self, name: &str, dest: &Path, reference: &str) {
        let o = self
            .skopeo()
            .args(["copy", "--quiet"])
            .args(self.client_flags("src-"))
            .arg(self.reference(name))
            .arg(format!("oci:{}:{reference}", dest.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo copy from {name} failed: {}", String::from_utf8_lossy(&o.stderr));
    }

    // ---- what the registry served ----

    /// Every request in the access log so far. The registry writes a line when a handler
    /// returns, which can be just after the client saw the end of the body: this waits
    /// until the log stops growing (~50 ms) first.
    pub fn requests(&self) -> Vec<AccessEntry> {
        let path = self.dir.path().join("access.log");
        let len = || fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut prev = len();
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(50));
            let cur = len();
            if cur == prev {
                break;
            }
            prev = cur;
        }
        fs::read_to_string(&path).unwrap_or_default().lines().filter_map(parse_access_line).collect()
    }
    /// How many requests were logged so far: pass to `blob_gets_since`.
    pub fn mark(&self) -> usize {
        self.requests().len()
    }
    /// Digests of the blobs served by successful GETs (200/206), one entry per GET, in order.
    pub fn blob_gets(&self) -> Vec<String> {
        self.blob_gets_since(0)
    }
    /// `blob_gets` counting only requests after `mark`.
    pub fn blob_gets_since(&self, mark: usize) -> Vec<String> {
        self.requests()
            .into_iter()
            .skip(mark)
            .filter(|e| e.method == "GET" && (200..300).contains(&e.status))
            .filter_map(|e| {
                let (repo, digest) = e.path.split_once("/blobs/")?;
                (repo.starts_with("/v2/") && digest.starts_with("sha256:"))
                    .then(|| digest.split(['?', '#']).next().unwrap().to_owned())
            })
            .collect()
    }
}

/// `GET /v2/` over plain HTTP; the status line, or None when nothing answers yet.
fn probe_http(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?;
    line.starts_with("HTTP/").then(|| line.to_owned())
}

/// `127.0.0.1 - - [date] "GET /v2/… HTTP/1.1" 200 1234 "referer" "user agent"`.
fn parse_access_line(line: &str) -> Option<AccessEntry> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut req = request.split(' ');
    let (method, path) = (req.next()?.to_owned(), req.next()?.to_owned());
    let mut nums = rest.split_whitespace();
    let status = nums.next()?.parse().ok()?;
    let bytes = nums.next()?.parse().unwrap_or(0);
    let quoted: Vec<&str> = rest.split('"').collect();
    let user_agent = quoted.get(3).copied().unwrap_or_default().to_owned();
    Some(AccessEntry { method, path, status, bytes, user_agent })
}

fn yaml_path(p: &Path) -> String {
    serde_json::to_string(p.to_str().unwrap()).unwrap()
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = coracle test
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
[v3_signer]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
";

/// `openssl req -x509 …` in `dir` with our config, a fresh key (P-256 unless `-newkey` is
/// given) and two days of validity; asserts success.
fn openssl_run(dir: &Path, args: &[&str], more: &[&str]) {
    let mut c = Command::new("openssl");
    c.current_dir(dir).args(args).args(more).args(["-config", "openssl.cnf", "-nodes", "-days", "2"]);
    if !args.iter().chain(more).any(|a| *a == "-newkey") {
        c.args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    }
    let o = c.stdin(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn openssl_out(dir: &Path, args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl").current_dir(dir).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(o.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

// ---- the token server ----

/// One request the token server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub method: String,
    /// The path without the query (`/token`).
    pub path: String,
    /// Every query (and, for POST, form) parameter, decoded, in order.
    pub params: Vec<(String, String)>,
    pub service: Option<String>,
    /// Every `scope` parameter (space-separated ones split), e.g. `repository:a/b:pull`.
    pub scopes: Vec<String>,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// The user of basic-auth credentials (header, or POST `username`), if any were sent.
    pub user: Option<String>,
    /// Whether credentials (basic auth or POST password grant) came with the request.
    pub credentials: bool,
    /// What the token server answered (200 with a token, 401, 404).
    pub status: u16,
    /// Whether the token issued (if any) was already expired (`expire_next`).
    pub expired: bool,
}

/// A bearer-token server for the registry's `auth.token`: `GET /token?service=…&scope=…`
/// (optionally with basic auth) answers `{"token", "access_token", "expires_in": 300}`,
/// a JWT signed RS256 by a key whose self-signed certificate is the registry's
/// `rootcertbundle`, granting exactly the requested scopes. Binds 127.0.0.1:0; one thread,
/// one request per connection (`Connection: close`); stopped and joined on drop.
pub struct TokenServer {
    addr: SocketAddr,
    shared: Arc<TokenShared>,
    cert: PathBuf,
    thread: Option<JoinHandle<()>>,
}

struct TokenShared {
    stop: AtomicBool,
    key: PathBuf,
    header: String,
    required: Option<(String, String)>,
    state: Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    requests: Vec<TokenRequest>,
    expire_next: usize,
    issued: u64,
}

impl TokenServer {
    /// Generates the signing key and certificate in `dir` and starts serving.
    pub fn start(dir: &Path, required: Option<(String, String)>, key_ref: TokenKeyRef) -> TokenServer {
        need_tool("openssl");
        fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).unwrap();
        openssl_run(
            dir,
            &["req", "-x509", "-extensions", "v3_signer", "-subj", "/CN=coracle test token signer"],
            &["-newkey", "rsa:2048", "-keyout", "token.key", "-out", "token.crt"],
        );
        let header = match key_ref {
            TokenKeyRef::X5c => {
                let der = openssl_out(dir, &["x509", "-in", "token.crt", "-outform", "DER"]);
                json!({"typ": "JWT", "alg": "RS256", "x5c": [base64(&der, false)]})
            }
            TokenKeyRef::Kid => {
                let pem = openssl_out(dir, &["x509", "-in", "token.crt", "-noout", "-pubkey"]);
                fs::write(dir.join("token.pub"), pem).unwrap();
                let spki = openssl_out(dir, &["pkey", "-pubin", "-in", "token.pub", "-outform", "DER"]);
                json!({"typ": "JWT", "alg": "RS256", "kid": libtrust_key_id(&spki)})
            }
        };
        let shared = Arc::new(TokenShared {
            stop: AtomicBool::new(false),
            key: dir.join("token.key"),
            header: base64(&serde_json::to_vec(&header).unwrap(), true),
            required,
            state: Mutex::new(TokenState::default()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        s.handle(conn);
                    }
                }
            })
            .unwrap();
        TokenServer { addr, shared, cert: dir.join("token.crt"), thread: Some(thread) }
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT/token`, the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }
    /// The signing certificate (PEM), the registry's `rootcertbundle`.
    pub fn cert(&self) -> &Path {
        &self.cert
    }
    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.state.lock().unwrap().requests.clone()
    }
    /// The next `n` tokens are issued already expired (by more than the registry's 60 s
    /// leeway), so the registry answers 401 to them: for "refresh the token on 401".
    pub fn expire_next(&self, n: usize) {
        self.shared.state.lock().unwrap().expire_next = n;
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TokenShared {
    fn handle(&self, mut conn: TcpStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let Some(req) = read_request(&mut conn) else { return };
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let mut params = parse_query(query);
        let form = req.header("content-type").is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
        if req.method == "POST" && form {
            params.extend(parse_query(&String::from_utf8_lossy(&req.body)));
        }
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let authorization = req.header("authorization").map(str::to_owned);
        let basic = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic ").or_else(|| a.strip_prefix("basic ")))
            .and_then(|b| base64_decode(b.trim()))
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
        let form_creds = (req.method == "POST").then(|| param("username").zip(param("password"))).flatten();
        let creds = basic.or(form_creds);
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let mut record = TokenRequest {
            method: req.method.clone(),
            path: path.to_owned(),
            service: param("service"),
            scopes,
            authorization,
            user: creds.as_ref().map(|(u, _)| u.clone()),
            credentials: creds.is_some(),
            params: params.clone(),
            status: 200,
            expired: false,
        };
        let allowed = match &self.required {
            Some(req_creds) => creds.as_ref() == Some(req_creds),
            None => true,
        };
        let (status, extra, body) = if path != "/token" {
            (404, "", json!({"errors": [{"code": "NOT_FOUND", "message": "no such endpoint"}]}))
        } else if !allowed {
            (
                401,
                "WWW-Authenticate: Basic realm=\"coracle-test-token\"\r\n",
                json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
            )
        } else {
            let (n, expired) = {
                let mut st = self.state.lock().unwrap();
                st.issued += 1;
                let expired = st.expire_next > 0;
                st.expire_next = st.expire_next.saturating_sub(1);
                (st.issued, expired)
            };
            record.expired = expired;
            match self.issue(record.user.as_deref(), &record.scopes, n, expired) {
                Ok(t) => (200, "", json!({"token": t, "access_token": t, "expires_in": 300})),
                Err(e) => (500, "", json!({"errors": [{"code": "UNKNOWN", "message": e}]})),
            }
        };
        record.status = status;
        self.state.lock().unwrap().requests.push(record);
        let body = serde_json::to_vec(&body).unwrap();
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(&body));
        let _ = conn.flush();
    }

    /// A JWT for `scopes`: `base64url(header).base64url(claims).base64url(RS256 signature)`,
    /// signed with `openssl dgst -sha256 -sign`.
    fn issue(&self, user: Option<&str>, scopes: &[String], n: u64, expired: bool) -> Result<String, String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let (nbf, exp) = if expired { (now - 7200, now - 3600) } else { (now - 10, now + 300) };
        let access: Vec<Value> = scopes
            .iter()
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
                Some(json!({"type": kind, "name": name, "actions": actions}))
            })
            .collect();
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": user.unwrap_or(""),
            "aud": TOKEN_SERVICE,
            "exp": exp,
            "nbf": nbf,
            "iat": nbf,
            "jti": format!("coracle-test-{n}"),
            "access": access,
        });
        let input = format!("{}.{}", self.header, base64(&serde_json::to_vec(&claims).unwrap(), true));
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("openssl: {e}"))?;
        child.stdin.take().unwrap().write_all(input.as_bytes()).map_err(|e| format!("openssl stdin: {e}"))?;
        let o = child.wait_with_output().map_err(|e| format!("openssl: {e}"))?;
        if !o.status.success() || o.stdout.is_empty() {
            return Err(format!("openssl dgst -sign failed: {}", String::from_utf8_lossy(&o.stderr)));
        }
        Ok(format!("{input}.{}", base64(&o.stdout, true)))
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request: head up to 64 KiB, body by Content-Length up to 1 MiB.
fn read_request(conn: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 << 10 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))).collect();
    let mut req = Request { method, target, headers, body: buf[end..].to_vec() };
    let len: usize = req.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0).min(1 << 20);
    while req.body.len() < len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        req.body.extend_from_slice(&chunk[..n]);
    }
    req.body.truncate(len);
    Some(req)
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64: standard with padding, or base64url without padding (JWT).
pub fn base64(data: &[u8], url: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..=chunk.len() {
            let c = B64[(n >> (18 - 6 * i) & 63) as usize];
            out.push(match (url, c) {
                (true, b'+') => '-',
                (true, b'/') => '_',
                _ => c as char,
            });
        }
        if !url {
            out.push_str(&"=="[..3 - chunk.len()]);
        }
    }
    out
}

/// Decodes standard or url-safe base64, padded or not.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// libtrust's key ID, which distribution computes for each `rootcertbundle` certificate:
/// the first 240 bits of sha256(DER SubjectPublicKeyInfo), base32, in 12 groups of 4
/// joined by ':'.
fn libtrust_key_id(spki_der: &[u8]) -> String {
    const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = sha256(spki_der);
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes: Vec<u8> = (0..30).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    let mut chars = String::new();
    for chunk in bytes.chunks(5) {
        let n = chunk.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
        for i in 0..8 {
            chars.push(B32[(n >> (35 - 5 * i) & 31) as usize] as char);
        }
    }
    chars.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":")
}
