//! `docker save` archives (`docker-archive:FILE[:NAME:TAG]`): the legacy layout
//! (`manifest.json` + `<id>/layer.tar`) and the OCI-based one of Docker 25+, which keeps
//! `manifest.json` but points it into `blobs/sha256/`. There is no manifest blob in either,
//! so we write a Docker schema 2 manifest for the image, deterministically (the same
//! archive always gives the same image digest).

use std::collections::HashMap;
use std::io::{self, Read};

use serde::Deserialize;

use super::archive::TarIndex;
use super::import::{self, Imported, Resolved};
use super::manifest::{Descriptor, Manifest, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, DOCKER_MANIFEST};
use super::source::BlobSource;
use super::{config, source_err, ImageError, Result};
use crate::digest::{Digest, HashingReader};
use crate::layer::Compression;
use crate::reference::Reference;
use crate::store::blobs::MAX_DOCUMENT;
use crate::store::Store;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Blobs of one docker-archive image, found by digest among the archive's members.
struct Members<'a> {
    index: &'a TarIndex,
    by_digest: HashMap<Digest, String>,
    name: &'a str,
}

impl BlobSource for Members<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn open(&self, d: &Digest) -> io::Result<Box<dyn Read + Send + '_>> {
        let path = self.by_digest.get(d).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("blob {d}")))?;
        Ok(Box::new(self.index.open(path)?))
    }
}

/// Which images of the archive to import.
pub enum Selector {
    All,
    Name(Reference),
    Position(usize),
}

pub fn parse_selector(source: &str, s: Option<&str>) -> Result<Selector> {
    match s {
        None => Ok(Selector::All),
        Some(s) => match s.strip_prefix('@') {
            Some(n) => {
                n.parse().map(Selector::Position).map_err(|_| source_err(source, format!("bad image position {s:?}")))
            }
            None => Ok(Selector::Name(s.parse()?)),
        },
    }
}

pub fn import_archive(
    store: &Store,
    index: &TarIndex,
    name: &str,
    sel: &Selector,
    tag: Option<&Reference>,
) -> Result<Vec<Imported>> {
    let raw =
        index.read_small("manifest.json", MAX_DOCUMENT).map_err(|e| source_err(name, format!("manifest.json: {e}")))?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&raw).map_err(|e| source_err(name, format!("manifest.json: {e}")))?;
    let tags_of =
        |e: &Entry| -> Vec<Reference> { e.repo_tags.iter().flatten().filter_map(|t| t.parse().ok()).collect() };
    let chosen: Vec<&Entry> = match sel {
        Selector::All => entries.iter().collect(),
        Selector::Position(n) => entries.get(*n).into_iter().collect(),
        Selector::Name(r) => entries.iter().filter(|e| tags_of(e).contains(r)).collect(),
    };
    if chosen.is_empty() {
        let all: Vec<String> = entries.iter().flat_map(tags_of).map(|r| r.familiar()).collect();
        return Err(source_err(
            name,
            format!(
                "no such image in the archive; it has: {}",
                if all.is_empty() { "untagged images only".into() } else { all.join(", ") }
            ),
        ));
    }
    if tag.is_some() && chosen.len() > 1 {
        return Err(ImageError::TagNeedsOneImage(name.to_owned(), chosen.len()));
    }
    let mut prepared = Vec::new();
    for e in chosen {
        let names = match (tag, sel) {
            (Some(t), _) => vec![t.clone()],
            (None, Selector::Name(r)) => vec![r.clone()],
            (None, _) => tags_of(e),
        };
        prepared.push((prepare(index, name, e)?, names));
    }
    let mut out = Vec::new();
    for ((resolved, by_digest), names) in prepared {
        let src = Members { index, by_digest, name };
        out.push(import::import_manifest(store, &src, &resolved, &names, Vec::new())?);
    }
    Ok(out)
}

/// Builds the manifest for one `manifest.json` entry, verifying that every member exists.
fn prepare(index: &TarIndex, name: &str, e: &Entry) -> Result<(Resolved, HashMap<Digest, String>)> {
    let member_err = |path: &str, err: io::Error| source_err(name, format!("{path:?} named by manifest.json: {err}"));
    let cfg_bytes = index.read_small(&e.config, MAX_DOCUMENT).map_err(|err| member_err(&e.config, err))?;
    let cfg_digest = Digest::of(&cfg_bytes);
    let cfg = config::parse(&cfg_digest, &cfg_bytes)?;
    if cfg.diff_ids.len() != e.layers.len() {
        return Err(ImageError::Config {
            digest: cfg_digest,
            why: format!("lists {} diff_ids but manifest.json has {} layers", cfg.diff_ids.len(), e.layers.len()),
        });
    }
    let mut by_digest = HashMap::from([(cfg_digest.clone(), e.config.clone())]);
    let mut layers = Vec::new();
    for (path, diff_id) in e.layers.iter().zip(&cfg.diff_ids) {
        let size = index.size(path).ok_or_else(|| member_err(path, io::ErrorKind::NotFound.into()))?;
        let mut head = [0u8; 8];
        let n = index.open(path).and_then(|mut r| r.read(&mut head)).map_err(|err| member_err(path, err))?;
        let compression = Compression::sniff(&head[..n]).map_err(|err| source_err(name, format!("{path}: {err}")))?;
        let (digest, media_type) = match compression {
            // An uncompressed layer's blob digest is its diff-id; unpacking checks both.
            Compression::None => (diff_id.clone(), DOCKER_LAYER_TAR),
            Compression::Gzip => (blob_digest(index, path).map_err(|err| member_err(path, err))?, DOCKER_LAYER_GZIP),
            Compression::Zstd => {
                return Err(source_err(name, format!("{path}: zstd layers cannot be described by a Docker manifest")))
            }
        };
        by_digest.insert(digest.clone(), path.clone());
        layers.push(Descriptor { media_type: media_type.into(), digest, size, platform: None, annotations: None });
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(DOCKER_MANIFEST.into()),
        config: Descriptor {
            media_type: DOCKER_CONFIG.into(),
            digest: cfg_digest,
            size: cfg_bytes.len() as u64,
            platform: None,
            annotations: None,
        },
        layers,
    };
    let bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
    let digest = Digest::of(&bytes);
    Ok((Resolved { manifest, media_type: DOCKER_MANIFEST.into(), bytes, digest }, by_digest))
}

/// The digest of a compressed member: from its `blobs/sha256/<hex>` name when it has one
/// (verified again on ingest), else by hashing it.
fn blob_digest(index: &TarIndex, path: &str) -> io::Result<Digest> {
    if let Some(d) = path.strip_prefix("blobs/sha256/").and_then(|h| Digest::from_hex(h).ok()) {
        return Ok(d);
    }
    let mut r = HashingReader::new(index.open(path)?);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish().0)
}
