//! Pulling from registries (OCI distribution API): a [`client::Client`] per repository
//! serves as the [`BlobSource`] of the ordinary import path, so registry pulls get the
//! same verification, platform selection and all-or-nothing commit as local imports.

pub mod auth;
pub mod client;
pub mod mirrors;

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Mutex;

use crate::digest::Digest;
use crate::image::import::{self, Imported};
use crate::image::manifest::Descriptor;
use crate::image::source::BlobSource;
use crate::image::{platform, ImageError};
use crate::reference::Reference;
use crate::store::images::Platform;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {source}")]
    Transport { url: String, source: Box<ureq::Error> },
    #[error("{url}: HTTP {status}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    Http { url: String, status: u16, detail: String },
    #[error("authenticate to {0}: {1}")]
    Auth(String, String),
    #[error("{0}: {1}")]
    Protocol(String, String),
    #[error("{reference}: the registry served content with digest {actual}, not the {expected} asked for")]
    DigestMismatch { reference: String, expected: Digest, actual: Digest },
}

impl RegistryError {
    /// Worth another try: the network, rate limits, a server error.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// What a pull reports while it runs (the CLI renders it; the library never prints).
#[derive(Debug, Clone)]
pub enum Progress {
    /// The image is resolved: these layers must be downloaded (digest, size).
    Plan(Vec<(Digest, u64)>),
    /// Bytes of a layer blob received so far.
    Bytes(Digest, u64),
    /// A layer blob is fully received.
    Done(Digest),
}

pub type Reporter<'a> = &'a (dyn Fn(&Progress) + Sync);

pub struct PullOptions<'a> {
    pub platform: Option<Platform>,
    pub tls: client::Tls,
    pub progress: Option<Reporter<'a>>,
}

/// A repository as a blob source: manifests from `/manifests/`, blobs from `/blobs/`.
struct Remote<'a> {
    client: client::Client,
    name: String,
    documents: Mutex<HashMap<Digest, Vec<u8>>>,
    /// Sizes the manifest declares, for the download time budget.
    sizes: Mutex<HashMap<Digest, u64>>,
    progress: Option<Reporter<'a>>,
}

/// Counts a blob's bytes for the progress reporter.
struct Counted<'a, R> {
    inner: R,
    digest: Digest,
    n: u64,
    last: u64,
    finished: bool,
    report: Reporter<'a>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        if n == 0 && !self.finished {
            self.finished = true;
            (self.report)(&Progress::Done(self.digest.clone()));
        } else if self.n - self.last >= 1 << 20 {
            self.last = self.n;
            (self.report)(&Progress::Bytes(self.digest.clone(), self.n));
        }
        Ok(n)
    }
}

impl BlobSource for Remote<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn open(&self, d: &Digest) -> io::Result<Box<dyn Read + Send + '_>> {
        if let Some(doc) = self.documents.lock().ok().and_then(|m| m.get(d).cloned()) {
            return Ok(Box::new(io::Cursor::new(doc)));
        }
        let size = self.sizes.lock().ok().and_then(|m| m.get(d).copied());
        let body = self.client.blob(d, size).map_err(io::Error::other)?;
        Ok(match self.progress {
            Some(report) => {
                Box::new(Counted { inner: body, digest: d.clone(), n: 0, last: 0, finished: false, report })
            }
            None => body,
        })
    }
    fn read_manifest(&self, d: &Digest) -> io::Result<Vec<u8>> {
        if let Some(doc) = self.documents.lock().ok().and_then(|m| m.get(d).cloned()) {
            return Ok(doc);
        }
        self.client.manifest(&d.to_string()).map(|(data, _)| data).map_err(io::Error::other)
    }
}

/// `coracle pull NAME[:TAG][@DIGEST]`: the image for this host's platform (or
/// `opts.platform`), verified against the digest when one is given, named by its tag.
pub fn pull(store: &Store, r: &Reference, opts: &PullOptions) -> Result<Imported, ImageError> {
    let name = r.to_string();
    let reg = |e: RegistryError| ImageError::Source { source_name: name.clone(), why: e.to_string() };
    let wanted = r.digest().map_or_else(|| r.tag().unwrap_or("latest").to_owned(), Digest::to_string);
    // Mirrors (registries.conf) first, then the registry itself: the first that serves
    // the manifest serves the whole pull.
    let candidates = mirrors::candidates(r).map_err(|e| reg(RegistryError::Protocol("registries.conf".into(), e)))?;
    let mut last = None;
    let mut found = None;
    for c in &candidates {
        let tls = client::Tls { verify: opts.tls.verify && !c.insecure, cert_dir: opts.tls.cert_dir.clone() };
        match client::Client::connect(&c.reference, &tls).and_then(|cl| cl.manifest(&wanted).map(|m| (cl, m))) {
            Ok(ok) => {
                found = Some(ok);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let (client, (bytes, media_type)) = match found {
        Some(f) => f,
        None => {
            return Err(reg(
                last.unwrap_or_else(|| RegistryError::Protocol(name.clone(), "nowhere to pull from".into()))
            ))
        }
    };
    let digest = Digest::of(&bytes);
    if let Some(expected) = r.digest() {
        if *expected != digest {
            return Err(reg(RegistryError::DigestMismatch {
                reference: name.clone(),
                expected: expected.clone(),
                actual: digest,
            }));
        }
    }
    let desc =
        Descriptor { media_type, digest: digest.clone(), size: bytes.len() as u64, platform: None, annotations: None };
    let remote = Remote {
        client,
        name: name.clone(),
        documents: Mutex::new(HashMap::from([(digest, bytes)])),
        sizes: Mutex::new(HashMap::new()),
        progress: opts.progress,
    };
    let want = opts.platform.clone().unwrap_or_else(platform::host);
    let _hold = store.lock_shared()?;
    let resolved = import::resolve(&remote, &desc, &want)?;
    if let Ok(mut sizes) = remote.sizes.lock() {
        let m = &resolved.manifest;
        sizes.extend(m.layers.iter().chain([&m.config]).map(|d| (d.digest.clone(), d.size)));
    }
    if opts.platform.is_some() {
        import::check_platform(&remote, &resolved, &want)?;
    }
    if let Some(report) = opts.progress {
        let missing: Vec<(Digest, u64)> = resolved
            .manifest
            .layers
            .iter()
            .filter(|l| !store.has_blob(&l.digest))
            .map(|l| (l.digest.clone(), l.size))
            .collect();
        report(&Progress::Plan(missing));
    }
    let names: Vec<Reference> = match r.tag() {
        Some(t) => vec![r.with_tag(t)?],
        None => Vec::new(),
    };
    import::import_manifest(store, &remote, &resolved, &names, Vec::new())
}
