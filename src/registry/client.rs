//! An OCI distribution API client (distribution-spec: pull): manifests and blobs of one
//! repository, with token or basic auth, redirects followed by hand so that credentials
//! never go to another host, HTTPS by default and plain HTTP only for loopback
//! registries or with `--tls-verify=false` (as docker does).

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::Response;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::{Agent, Body};

use super::auth::{self, Challenge};
use super::RegistryError;
use crate::digest::Digest;
use crate::reference::Reference;

/// Every manifest media type we can use, for content negotiation.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest we read.
const MAX_MANIFEST: u64 = 4 << 20;
const MAX_REDIRECTS: usize = 5;

pub struct Client {
    agent: Agent,
    /// `https://host[:port]` or `http://…`.
    base: String,
    host: String,
    repo: String,
    /// Looked up only when a challenge asks for them (a credential helper is a process).
    creds: std::sync::OnceLock<Option<(String, String)>>,
    /// The registry's name as credentials are filed under (`docker.io`, `host:port`).
    domain: String,
    /// The current `Authorization` value for this registry.
    authorization: Mutex<Option<String>>,
}

/// The host serving a reference's registry (`docker.io` is served by
/// `registry-1.docker.io`).
pub fn registry_host(r: &Reference) -> String {
    match r.domain() {
        "docker.io" => "registry-1.docker.io".to_owned(),
        d => d.to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    // `[v6]:port`, a bare v6 address, or `name[:port]`.
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else if host.matches(':').count() > 1 {
        host
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// TLS settings of a pull or login.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// Verify certificates (false also allows plain HTTP).
    pub verify: bool,
    /// `--cert-dir`: CAs (`*.crt`) and client certificates (`*.cert`/`*.key`) for this
    /// registry, instead of `/etc/containers/certs.d/HOST` and `/etc/docker/certs.d/HOST`.
    pub cert_dir: Option<std::path::PathBuf>,
}

impl Tls {
    fn dirs(&self, host: &str) -> Vec<std::path::PathBuf> {
        match &self.cert_dir {
            Some(d) => vec![d.clone()],
            None => ["/etc/containers/certs.d", "/etc/docker/certs.d"]
                .iter()
                .map(|b| std::path::Path::new(b).join(host))
                .collect(),
        }
    }
}

fn agent(tls: &Tls, verify: bool, host: &str) -> Agent {
    let dirs = tls.dirs(host);
    // The system's trust store (rustls-platform-verifier reads the OS roots), or those
    // roots plus the registry's own CAs from its cert dir.
    let mut tls = TlsConfig::builder().disable_verification(!verify).root_certs(RootCerts::PlatformVerifier);
    if let Some(roots) = extra_roots(&dirs) {
        tls = tls.root_certs(roots);
    }
    if let Some(cert) = client_cert(&dirs) {
        tls = tls.client_cert(Some(cert));
    }
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        // Headers must come within this time for every request; small documents
        // (manifests, tokens) must also arrive whole within it (see `send_once`).
        .timeout_recv_response(Some(DOCUMENT_TIMEOUT))
        .user_agent(concat!("coracle/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build())
        .build();
    Agent::new_with_config(config)
}

/// A client certificate from `certs.d/HOST/`: `NAME.cert` with its key `NAME.key` (the
/// layout docker and podman use).
fn client_cert(dirs: &[std::path::PathBuf]) -> Option<ureq::tls::ClientCert> {
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "cert") {
                continue;
            }
            let (Ok(cert), Ok(key)) = (std::fs::read(&p), std::fs::read(p.with_extension("key"))) else { continue };
            let chain: Vec<_> = ureq::tls::parse_pem(&cert)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if let (false, Ok(key)) = (chain.is_empty(), ureq::tls::PrivateKey::from_pem(&key)) {
                return Some(ureq::tls::ClientCert::new_with_certs(&chain, key));
            }
        }
    }
    None
}

/// The system's trust store plus `*.crt` CAs of `/etc/containers/certs.d/HOST/` and
/// `/etc/docker/certs.d/HOST/`, when such a directory has any.
fn extra_roots(dirs: &[std::path::PathBuf]) -> Option<RootCerts> {
    let mut extra = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "crt") {
                if let Ok(pem) = std::fs::read(e.path()) {
                    extra.extend(ureq::tls::parse_pem(&pem).filter_map(|i| match i {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    }));
                }
            }
        }
    }
    if extra.is_empty() {
        return None;
    }
    let system = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    extra.extend(ureq::tls::parse_pem(&system).filter_map(|i| match i {
        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
        _ => None,
    }));
    Some(RootCerts::new_with_certs(&extra))
}

/// The schemes to try for `host`: HTTPS, then plain HTTP where that is allowed.
fn schemes(host: &str, tls: &Tls) -> &'static [&'static str] {
    if !tls.verify || is_loopback(host) {
        &["https", "http"]
    } else {
        &["https"]
    }
}

impl Client {
    fn new(tls: &Tls, scheme: &str, host: &str, domain: &str, repo: &str, creds: Option<(String, String)>) -> Client {
        Client {
            agent: agent(tls, tls.verify || scheme == "http", host),
            base: format!("{scheme}://{host}"),
            host: host.to_owned(),
            repo: repo.to_owned(),
            creds: creds.map_or_else(std::sync::OnceLock::new, |c| std::sync::OnceLock::from(Some(c))),
            domain: domain.to_owned(),
            authorization: Mutex::new(None),
        }
    }

    /// Connects to the registry of `r` and finds out how to talk to it (scheme, auth).
    pub fn connect(r: &Reference, tls: &Tls) -> Result<Client, RegistryError> {
        let host = registry_host(r);
        let schemes = schemes(&host, tls);
        let mut last_err = None;
        for &scheme in schemes {
            let c = Client::new(tls, scheme, &host, r.domain(), r.path(), None);
            // Probing HTTPS where HTTP may follow: no retries (a plain-HTTP registry
            // fails the handshake every time).
            let ping = format!("{}/v2/", c.base);
            let probing = scheme == "https" && schemes.len() > 1;
            let answer = if probing { c.send_once(&ping, None, 0, None) } else { c.send(&ping, None) };
            match (answer, last_err.take()) {
                (Ok(_), _) => return Ok(c),
                // Only a transport failure (TLS handshake, refused) falls back to HTTP.
                (Err(e @ RegistryError::Transport { .. }), None) => last_err = Some(e),
                // A TLS server answers plain HTTP with 400: then the HTTPS error explains.
                (Err(e @ RegistryError::Http { status: 400, .. }), Some(https)) => {
                    return Err(RegistryError::Protocol(host, format!("{https} (and over plain HTTP: {e})")))
                }
                (Err(e), _) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| RegistryError::Protocol(host, "no usable scheme".into())))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn creds(&self) -> Option<&(String, String)> {
        self.creds.get_or_init(|| auth::credentials(&self.domain).or_else(|| auth::credentials(&self.host))).as_ref()
    }

    /// `coracle login`: checks that `creds` are accepted by the registry at `domain`
    /// (basic auth on /v2/, or a token from the realm it names).
    pub fn check_login(domain: &str, creds: (String, String), tls: &Tls) -> Result<(), RegistryError> {
        let host = if domain == "docker.io" { "registry-1.docker.io".to_owned() } else { domain.to_owned() };
        let mut last = None;
        for &scheme in schemes(&host, tls) {
            let c = Client::new(tls, scheme, &host, domain, "", Some(creds.clone()));
            let url = format!("{}/v2/", c.base);
            let resp = match c.agent.get(&url).call() {
                Ok(r) => r,
                Err(e) => {
                    last = Some(RegistryError::Transport { url, source: Box::new(e) });
                    continue;
                }
            };
            if resp.status().is_success() {
                return Ok(());
            }
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge)
                .ok_or_else(|| RegistryError::Auth(host.clone(), format!("/v2/ answered {}", resp.status())))?;
            let value = c.answer(&challenge)?;
            let resp = c
                .agent
                .get(&url)
                .header("Authorization", value)
                .call()
                .map_err(|e| RegistryError::Transport { url: url.clone(), source: Box::new(e) })?;
            return match resp.status().as_u16() {
                200..=299 => Ok(()),
                s => Err(RegistryError::Auth(host, format!("credentials refused (HTTP {s})"))),
            };
        }
        Err(last.unwrap_or_else(|| RegistryError::Protocol(host, "no usable scheme".into())))
    }

    /// [`Self::send_once`] with retries: transport errors, 429 and 5xx are retried with
    /// backoff (0.5 s, 1 s, 2 s).
    fn send(&self, url: &str, accept: Option<&str>) -> Result<Response<Body>, RegistryError> {
        // A manifest is small: its whole body must arrive in time too.
        self.send_range(url, accept, 0, accept.map(|_| DOCUMENT_TIMEOUT))
    }

    fn send_range(
        &self,
        url: &str,
        accept: Option<&str>,
        from: u64,
        body_timeout: Option<Duration>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send_once(url, accept, from, body_timeout) {
                Err(e) if attempt < RETRIES && e.is_transient() => {
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                r => return r,
            }
        }
    }

    /// A GET with auth: on 401, answers the challenge once and retries. Redirects are
    /// followed here, and only the registry's own host ever gets the Authorization.
    fn send_once(
        &self,
        url: &str,
        accept: Option<&str>,
        from: u64,
        body_timeout: Option<Duration>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut url = url.to_owned();
        let mut answers = 0;
        for _ in 0..=MAX_REDIRECTS {
            let same_host = url.starts_with(&format!("{}/", self.base));
            let mut req = self.agent.get(&url);
            if body_timeout.is_some() {
                req = req.config().timeout_recv_body(body_timeout).build();
            }
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if from > 0 {
                req = req.header("Range", format!("bytes={from}-"));
            }
            if same_host {
                if let Some(a) = self.authorization.lock().map(|g| g.clone()).unwrap_or(None) {
                    req = req.header("Authorization", a);
                }
            }
            let resp = req.call().map_err(|e| RegistryError::Transport { url: url.clone(), source: Box::new(e) })?;
            let status = resp.status().as_u16();
            match status {
                200..=299 => return Ok(resp),
                301 | 302 | 303 | 307 | 308 => {
                    let loc = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    url = join_url(&url, loc);
                }
                // A token may be refused once more (expired between issue and use):
                // answer a second challenge with a fresh one.
                401 if same_host && answers < 2 => {
                    answers += 1;
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .and_then(auth::parse_challenge)
                        .ok_or_else(|| {
                            RegistryError::Auth(
                                self.host.clone(),
                                "401 without a usable WWW-Authenticate challenge".into(),
                            )
                        })?;
                    let value = self.answer(&challenge)?;
                    *self
                        .authorization
                        .lock()
                        .map_err(|_| RegistryError::Protocol(self.host.clone(), "lock poisoned".into()))? = Some(value);
                }
                _ => return Err(http_error(&url, resp)),
            }
        }
        Err(RegistryError::Protocol(self.host.clone(), format!("too many redirects for {url}")))
    }

    /// The Authorization value for a challenge: basic credentials, or a bearer token
    /// from the realm (with credentials when we have them).
    fn answer(&self, c: &Challenge) -> Result<String, RegistryError> {
        match c.scheme.as_str() {
            "basic" => {
                let (u, p) = self.creds().ok_or_else(|| {
                    RegistryError::Auth(
                        self.host.clone(),
                        "the registry wants credentials and none are configured".into(),
                    )
                })?;
                Ok(auth::basic(u, p))
            }
            "bearer" => {
                let realm = c
                    .params
                    .get("realm")
                    .ok_or_else(|| RegistryError::Auth(self.host.clone(), "bearer challenge without realm".into()))?;
                let mut url = if self.repo.is_empty() {
                    // A login check: no repository, the account's own token.
                    format!("{realm}?account={}", encode(self.creds().map_or("", |c| c.0.as_str())))
                } else {
                    format!("{realm}?scope={}", encode(&format!("repository:{}:pull", self.repo)))
                };
                if let Some(s) = c.params.get("service") {
                    url.push_str(&format!("&service={}", encode(s)));
                }
                let mut req = self.agent.get(&url).config().timeout_recv_body(Some(DOCUMENT_TIMEOUT)).build();
                if let Some((u, p)) = self.creds() {
                    req = req.header("Authorization", auth::basic(u, p));
                }
                // Not a transport error (those are retried): a token server that does not
                // answer in time is an authentication failure.
                let resp = req
                    .call()
                    .map_err(|e| RegistryError::Auth(self.host.clone(), format!("token server {realm}: {e}")))?;
                if !resp.status().is_success() {
                    return Err(RegistryError::Auth(
                        self.host.clone(),
                        format!("token server {realm} answered {}", resp.status()),
                    ));
                }
                let body = resp.into_body().with_config().limit(1 << 20).read_to_vec();
                let body =
                    body.map_err(|e| RegistryError::Auth(self.host.clone(), format!("token server {realm}: {e}")))?;
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| RegistryError::Auth(self.host.clone(), format!("token response: {e}")))?;
                let token = v["token"]
                    .as_str()
                    .or_else(|| v["access_token"].as_str())
                    .ok_or_else(|| RegistryError::Auth(self.host.clone(), "token response without a token".into()))?;
                Ok(format!("Bearer {token}"))
            }
            other => Err(RegistryError::Auth(self.host.clone(), format!("unsupported auth scheme {other:?}"))),
        }
    }

    /// A manifest or index by tag or digest: its bytes and media type. A
    /// `Docker-Content-Digest` header, when the registry sends one, must match the bytes.
    pub fn manifest(&self, reference: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repo);
        let resp = self.send(&url, Some(ACCEPT))?;
        let header_digest =
            resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        let mut data = Vec::new();
        resp.into_body()
            .into_with_config()
            .limit(MAX_MANIFEST + 1)
            .reader()
            .read_to_end(&mut data)
            .map_err(|e| RegistryError::Protocol(url.clone(), format!("read manifest: {e}")))?;
        if data.len() as u64 > MAX_MANIFEST {
            return Err(RegistryError::Protocol(
                self.host.clone(),
                format!("manifest {reference} is larger than {MAX_MANIFEST} bytes"),
            ));
        }
        if let Some(claimed) = header_digest {
            let actual = Digest::of(&data);
            if claimed.parse::<Digest>().map_or(true, |d| d != actual) {
                return Err(RegistryError::Protocol(
                    self.host.clone(),
                    format!(
                        "manifest {reference}: Docker-Content-Digest says {claimed}, the content hashes to {actual}"
                    ),
                ));
            }
        }
        Ok((data, ctype))
    }

    /// A blob's content, streamed; a broken download resumes where it stopped (HTTP
    /// range request, or skipping what we had when the server ignores ranges).
    /// With the blob's `size` known, the body must arrive within a time budget for it
    /// (a server that stops sending cannot hang the pull forever).
    pub fn blob(&self, d: &Digest, size: Option<u64>) -> Result<Box<dyn Read + Send + '_>, RegistryError> {
        let url = format!("{}/v2/{}/blobs/{d}", self.base, self.repo);
        let resp = self.send_range(&url, None, 0, size.map(body_budget))?;
        Ok(Box::new(Resuming {
            client: self,
            url,
            body: Box::new(resp.into_body().into_reader()),
            pos: 0,
            size,
            resumes: 0,
        }))
    }
}

const RETRIES: usize = 4;

/// Time allowed for a blob body: a minute plus 64 KiB/s.
fn body_budget(size: u64) -> Duration {
    Duration::from_secs(60 + size / (64 << 10))
}
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DOCUMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A blob body that reopens itself after a transport error.
struct Resuming<'a> {
    client: &'a Client,
    url: String,
    body: Box<dyn Read + Send>,
    pos: u64,
    size: Option<u64>,
    resumes: usize,
}

impl Read for Resuming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.body.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if self.resumes < RETRIES && e.kind() != std::io::ErrorKind::Interrupted => {
                    self.resumes += 1;
                    std::thread::sleep(Duration::from_millis(250 << self.resumes));
                    let budget = self.size.map(|s| body_budget(s.saturating_sub(self.pos)));
                    let resp =
                        self.client.send_range(&self.url, None, self.pos, budget).map_err(std::io::Error::other)?;
                    let partial = resp.status().as_u16() == 206;
                    let mut body: Box<dyn Read + Send> = Box::new(resp.into_body().into_reader());
                    if !partial {
                        // The server sent the whole blob again: skip what we have.
                        std::io::copy(&mut (&mut body).take(self.pos), &mut std::io::sink())?;
                    }
                    self.body = body;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Client {}

fn http_error(url: &str, resp: Response<Body>) -> RegistryError {
    let status = resp.status().as_u16();
    let body = resp.into_body().with_config().limit(4096).read_to_string().unwrap_or_default();
    // The distribution spec's error body: {"errors":[{"code":…,"message":…}]}.
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v["errors"][0]["message"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["errors"][0]["code"].as_str().map(str::to_owned))
        })
        .unwrap_or_default();
    RegistryError::Http { url: url.to_owned(), status, detail }
}

/// Resolves a Location header against the URL it answered.
fn join_url(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_owned();
    }
    let origin_end =
        base.find("://").map(|i| base[i + 3..].find('/').map_or(base.len(), |j| i + 3 + j)).unwrap_or(base.len());
    if loc.starts_with('/') {
        format!("{}{loc}", &base[..origin_end])
    } else {
        let dir_end = base.rfind('/').filter(|&i| i >= origin_end).unwrap_or(origin_end);
        format!("{}/{loc}", &base[..dir_end])
    }
}

/// Percent-encoding for query values.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "::1"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn redirects_and_encoding() {
        assert_eq!(join_url("https://r.io/v2/a/blobs/x", "https://cdn.io/b?sig=1"), "https://cdn.io/b?sig=1");
        assert_eq!(join_url("https://r.io/v2/a/blobs/x", "/other"), "https://r.io/other");
        assert_eq!(encode("repository:library/busybox:pull"), "repository%3Alibrary%2Fbusybox%3Apull");
    }
}
