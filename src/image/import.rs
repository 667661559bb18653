//! The one import path every local format goes through: resolve an index to a platform
//! manifest, then commit layers, config, manifest, record and names, in that order.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::manifest::{self, Descriptor, Document, Manifest};
use super::source::BlobSource;
use super::{config, platform, source_err, ImageError, Result};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::images::{ImageRecord, LayerRecord, Platform};
use crate::store::layers::{LayerBlob, LayerNeed, PendingBlob, PendingLayer};
use crate::store::Store;

/// An image that an import committed, with the names it got.
#[derive(Debug, Clone)]
pub struct Imported {
    pub record: ImageRecord,
    pub names: Vec<Reference>,
}

/// A platform manifest ready to import.
pub struct Resolved {
    pub manifest: Manifest,
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

const MAX_INDEX_DEPTH: usize = 4;

/// Reads `desc` from `src` (verified) and, if it is an index, picks the manifest for
/// `want` (recursively, for nested indexes).
pub fn resolve(src: &dyn BlobSource, desc: &Descriptor, want: &Platform) -> Result<Resolved> {
    let mut desc = desc.clone();
    for _ in 0..MAX_INDEX_DEPTH {
        let bytes = src.read_manifest(&desc.digest).map_err(|e| source_err(src.name(), e))?;
        crate::store::blobs::verify(&desc.digest, Some(desc.size), &Digest::of(&bytes), bytes.len() as u64)?;
        let doc = manifest::parse(&bytes, Some(&desc.media_type))
            .map_err(|source| ImageError::Manifest { at: format!("{} {}", src.name(), desc.digest), source })?;
        match doc {
            Document::Manifest(manifest, media_type) => {
                return Ok(Resolved { manifest, media_type, bytes, digest: desc.digest });
            }
            Document::Index(idx) => desc = select_platform(src.name(), &idx.manifests, want)?.clone(),
        }
    }
    Err(source_err(src.name(), "image indexes nested too deeply"))
}

/// With an explicit `--platform`, a single-platform image must be for that platform (an
/// index was already matched by [`resolve`]).
pub fn check_platform(src: &dyn BlobSource, r: &Resolved, want: &Platform) -> Result<()> {
    let bytes = src.read_document(&r.manifest.config.digest).map_err(|e| source_err(src.name(), e))?;
    let cfg = config::parse(&r.manifest.config.digest, &bytes)?;
    let have = super::manifest::PlatformSpec {
        os: cfg.platform.os.clone(),
        architecture: cfg.platform.architecture.clone(),
        variant: cfg.platform.variant.clone(),
    };
    if platform::score(want, &have).is_none() {
        return Err(ImageError::NoPlatform {
            source_name: src.name().to_owned(),
            want: want.to_string(),
            have: cfg.platform.to_string(),
        });
    }
    Ok(())
}

/// The best entry of an index for `want`; entries without a platform are skipped (they
/// are attestations and other artifacts).
pub fn select_platform<'a>(name: &str, entries: &'a [Descriptor], want: &Platform) -> Result<&'a Descriptor> {
    let mut best: Option<(u32, &Descriptor)> = None;
    for d in entries {
        let Some(p) = &d.platform else { continue };
        if let Some(s) = platform::score(want, p) {
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, d));
            }
        }
    }
    best.map(|(_, d)| d).ok_or_else(|| {
        let mut have: Vec<String> = entries
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| platform::normalize(&p.os, &p.architecture, p.variant.as_deref()).to_string())
            .collect();
        have.dedup();
        ImageError::NoPlatform {
            source_name: name.to_owned(),
            want: want.to_string(),
            have: if have.is_empty() { "no platform-tagged images".into() } else { have.join(", ") },
        }
    })
}

/// Layers extracted at once: downloads overlap, and two cores stay busy with the
/// inflate/hash and extract halves of the pipelines.
const PARALLEL_LAYERS: usize = 3;

/// Extracts every `(descriptor, diff-id)` into tmp/, a few at a time, with the store's
/// writeback running meanwhile; the first error stops the others from starting and is
/// returned.
fn extract_all(store: &Store, src: &dyn BlobSource, jobs: &[(&Descriptor, &Digest)]) -> Result<Vec<PendingLayer>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    store.with_writeback(|| {
        let results: Vec<Result<Vec<PendingLayer>>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..PARALLEL_LAYERS.min(jobs.len()))
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if i >= jobs.len() || failed.load(std::sync::atomic::Ordering::SeqCst) {
                                return Ok(done);
                            }
                            let (l, diff_id) = jobs[i];
                            let blob = LayerBlob { digest: Some(l.digest.clone()), size: Some(l.size) };
                            match store.extract_layer(&blob, Some(diff_id), || src.open(&l.digest)) {
                                Ok(p) => done.push(p),
                                Err(e) => {
                                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                                    return Err(e.into());
                                }
                            }
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err(source_err(src.name(), "extraction thread panicked"))))
                .collect()
        });
        let mut out = Vec::new();
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    })
}

/// Commits the image `r` from `src` into the store and names it. Nothing becomes visible
/// until every part is verified: layers are extracted into tmp/ (under their locks, taken
/// in digest order so that concurrent imports cannot deadlock), then blobs, layers,
/// config, manifest, record and names are committed in that order. `ready` holds layers
/// the caller has already extracted (`coracle import`).
pub fn import_manifest(
    store: &Store,
    src: &dyn BlobSource,
    r: &Resolved,
    names: &[Reference],
    ready: Vec<PendingLayer>,
) -> Result<Imported> {
    let m = &r.manifest;
    // A config already in the store (verified when it was committed) is not fetched again.
    let cfg_bytes = match store.read_blob(&m.config.digest) {
        Ok(b) => b,
        // Never more than the descriptor says (+1 to notice a longer one).
        Err(_) => {
            let limit = m.config.size.min(crate::store::blobs::MAX_DOCUMENT) + 1;
            let mut data = Vec::new();
            src.open(&m.config.digest)
                .and_then(|r| std::io::Read::read_to_end(&mut std::io::Read::take(r, limit), &mut data))
                .map_err(|e| source_err(src.name(), e))?;
            data
        }
    };
    let cfg_len = cfg_bytes.len() as u64;
    crate::store::blobs::verify(&m.config.digest, Some(m.config.size), &Digest::of(&cfg_bytes), cfg_len)?;
    let cfg = config::parse(&m.config.digest, &cfg_bytes)?;
    if cfg.diff_ids.len() != m.layers.len() {
        return Err(ImageError::Config {
            digest: m.config.digest.clone(),
            why: format!("lists {} diff_ids but the manifest has {} layers", cfg.diff_ids.len(), m.layers.len()),
        });
    }
    let blob_of = |l: &Descriptor| LayerBlob { digest: Some(l.digest.clone()), size: Some(l.size) };

    // Lock the layers this import must extract, in a global order.
    let mut to_lock: Vec<&Digest> = m
        .layers
        .iter()
        .zip(&cfg.diff_ids)
        .filter(|(l, d)| matches!(store.layer_need(&blob_of(l), d), LayerNeed::Extract))
        .map(|(_, d)| d)
        .collect();
    to_lock.sort();
    to_lock.dedup();
    let _locks = to_lock.iter().map(|d| store.lock_layer(d)).collect::<Result<Vec<_>, _>>()?;

    let mut ready: HashMap<Digest, PendingLayer> = ready.into_iter().map(|p| (p.marker.diff_id.clone(), p)).collect();
    let mut pending_layers: Vec<PendingLayer> = Vec::new();
    let mut pending_blobs: Vec<PendingBlob> = Vec::new();
    let mut to_extract: Vec<(&Descriptor, &Digest)> = Vec::new();
    let mut sizes: HashMap<&Digest, u64> = HashMap::new();
    for (l, diff_id) in m.layers.iter().zip(&cfg.diff_ids) {
        let blob = blob_of(l);
        if sizes.contains_key(diff_id) || pending_blobs.iter().any(|p| p.digest == l.digest) {
            continue;
        }
        // Checked again now that the locks are held: another import may have finished.
        match store.layer_need(&blob, diff_id) {
            LayerNeed::Nothing(marker) => {
                sizes.insert(diff_id, marker.size);
            }
            LayerNeed::Blob(marker) => {
                let p = match ready.remove(diff_id) {
                    Some(p) if p.blob.digest == l.digest => p.blob,
                    _ => store.fetch_blob(
                        &l.digest,
                        Some(l.size),
                        src.open(&l.digest).map_err(|e| source_err(src.name(), e))?,
                    )?,
                };
                pending_blobs.push(p);
                sizes.insert(diff_id, marker.size);
            }
            LayerNeed::Extract => match ready.remove(diff_id) {
                Some(p) => {
                    sizes.insert(diff_id, p.marker.size);
                    pending_layers.push(p);
                }
                None => {
                    sizes.insert(diff_id, 0);
                    to_extract.push((l, diff_id));
                }
            },
        }
    }
    for p in extract_all(store, src, &to_extract)? {
        if let Some(s) = sizes.get_mut(&p.marker.diff_id) {
            *s = p.marker.size;
        }
        pending_layers.push(p);
    }
    let layers: Vec<LayerRecord> = m
        .layers
        .iter()
        .zip(&cfg.diff_ids)
        .map(|(l, diff_id)| LayerRecord {
            blob: l.digest.clone(),
            media_type: l.media_type.clone(),
            size: l.size,
            diff_id: diff_id.clone(),
        })
        .collect();
    let size = cfg.diff_ids.iter().map(|d| sizes.get(d).copied().unwrap_or(0)).sum();

    // From here on, under the names lock (so that an `rmi` deciding "last name gone,
    // delete the record" never interleaves, and no other import puts the same config or
    // manifest blob meanwhile), a failure — ENOSPC in a blob, a rename's directory block,
    // the record — takes back what this import made visible: all or nothing. The layers
    // and their blobs are ours alone until the record names them: we hold their locks.
    let _names = store.lock_names()?;
    let mut undo = Undo { store, blobs: Vec::new(), layers: Vec::new() };
    for (d, size, bytes) in
        [(&m.config.digest, m.config.size, &cfg_bytes[..]), (&r.digest, r.bytes.len() as u64, &r.bytes[..])]
    {
        if !store.has_blob(d) {
            store.put_blob(d, Some(size), bytes)?;
            undo.blobs.push(d.clone());
        }
    }
    // Durability in two syncfs calls for the whole image, not fsyncs per file and layer:
    // every extracted tree and blob first, then the renames that make them visible, then
    // (below) the records that name them.
    if !pending_blobs.is_empty() || !pending_layers.is_empty() {
        store.sync()?;
        for b in pending_blobs {
            let (digest, new) = (b.digest.clone(), !store.has_blob(&b.digest));
            store.commit_blob(b)?;
            if new {
                undo.blobs.push(digest);
            }
        }
        for p in pending_layers {
            let (diff_id, new) = (p.marker.diff_id.clone(), store.layer_marker(&p.marker.diff_id).is_none());
            let blob = (p.blob.digest.clone(), !store.has_blob(&p.blob.digest));
            store.commit_layer(p)?;
            if new {
                undo.layers.push(diff_id);
            }
            if blob.1 {
                undo.blobs.push(blob.0);
            }
        }
        store.sync()?;
    }
    let record = ImageRecord {
        digest: r.digest.clone(),
        media_type: r.media_type.clone(),
        config: m.config.digest.clone(),
        platform: cfg.platform,
        layers,
        created: cfg.created,
        size,
        loaded: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    // Keep the first load time of an image imported again.
    let old = store.get_image(&record.digest).ok().flatten();
    let record = match &old {
        Some(o) => ImageRecord { loaded: o.loaded, ..record },
        None => record,
    };
    let named = store.put_image(&record).and_then(|()| {
        for n in names {
            store.set_ref(n, &record.digest)?;
        }
        Ok(())
    });
    if let Err(e) = named {
        // A record of ours that no name reached yet goes too (a named one stays: it is
        // consistent, and a name may already point at it).
        let unnamed = store.list_refs().map(|refs| refs.iter().all(|(_, d)| *d != record.digest)).unwrap_or(false);
        if old.is_none() && unnamed {
            let _ = store.remove_image(&record.digest);
        } else {
            undo.disarm();
        }
        return Err(e.into());
    }
    undo.disarm();
    Ok(Imported { record, names: names.to_vec() })
}

/// What an import made visible, taken back when it fails before the image is named.
struct Undo<'a> {
    store: &'a Store,
    blobs: Vec<Digest>,
    layers: Vec<Digest>,
}

impl Undo<'_> {
    fn disarm(&mut self) {
        self.blobs.clear();
        self.layers.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        // Layer dirs leave by rename into tmp/ (no space needed), then deletion.
        for d in &self.layers {
            let _ = self.store.remove_tree(&self.store.layer_dir(d));
        }
        for d in &self.blobs {
            let _ = std::fs::remove_file(self.store.blob_path(d));
        }
    }
}
