//! The content-addressed store under `--root`: layout, atomic writes, and the store-wide
//! lock. Each kind of object has its own file: blobs, layers, images, refs, gc, fsck,
//! usage.
//!
//! Layout (docs/on-disk-format.md):
//! ```text
//! lock                          flock: shared by importers, exclusive by gc
//! blobs/sha256/<hex>            verified blobs: manifests, configs, compressed layers
//! layers/sha256/<diff-id>/      root/ (the extracted layer) + layer.json (marker, last)
//! images/<manifest-hex>.json    one record per image (what `images` lists)
//! refs/<escaped name>           image name -> manifest digest
//! locks/{layers,blobs}/<hex>    per-object flocks
//! tmp/                          ingest area on the same filesystem; gc empties it
//! containers/<id>/              per-container scratch (upper/work)
//! ```

pub mod blobs;
pub mod fsck;
pub mod gc;
pub mod images;
pub mod layers;
pub mod lock;
pub mod refs;
pub mod usage;

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::layer::LayerError;
use lock::Lock;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("blob {digest}: digest mismatch: content hashes to {actual}")]
    DigestMismatch { digest: Digest, actual: Digest },
    #[error("blob {digest}: size mismatch: descriptor says {expected} bytes, content has {actual}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    #[error("layer {blob}: diff-id mismatch: the config says {expected}, the uncompressed layer hashes to {actual}")]
    DiffIdMismatch { blob: String, expected: Digest, actual: Digest },
    #[error("layer {blob}: {source}")]
    Layer { blob: String, source: LayerError },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("blob {0} is larger than {1} bytes, too large for a manifest or config")]
    DocumentTooLarge(Digest, u64),
    #[error("corrupt store record {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { action, path, source }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An opened store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

const SUBDIRS: &[&str] =
    &["blobs/sha256", "layers/sha256", "images", "refs", "locks/layers", "locks/blobs", "tmp", "containers"];

impl Store {
    /// Opens the store at `root`, creating it (mode 0700) if needed.
    pub fn open(root: &Path) -> Result<Store> {
        // The common case, every run: the store exists as made. Only stat, no write (a
        // chmod would dirty the inode on every start).
        let made = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
        let root_ok = fs::symlink_metadata(root).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o7777 == 0o700);
        if root_ok && SUBDIRS.iter().all(|d| made(&root.join(d))) {
            return Ok(Store { root: root.to_path_buf() });
        }
        let mut b = DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(root).map_err(StoreError::io("create store", root))?;
        // The store holds setuid binaries and device nodes from images: only root may
        // traverse it, whatever the umask or a pre-existing directory said.
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(StoreError::io("chmod", root))?;
        for d in SUBDIRS {
            let p = root.join(d);
            b.create(&p).map_err(StoreError::io("create", &p))?;
        }
        Ok(Store { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub(crate) fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Shared hold on the store: importers and container starts; excludes gc only.
    pub fn lock_shared(&self) -> Result<Lock> {
        Lock::shared(&self.path("lock"))
    }

    /// Held while names and image records change together (import, tag, rmi).
    pub fn lock_names(&self) -> Result<Lock> {
        Lock::exclusive(&self.path("names.lock"))
    }

    /// Exclusive hold on the store: gc and fsck --repair.
    pub fn lock_exclusive(&self) -> Result<Lock> {
        Lock::exclusive(&self.path("lock"))
    }

    /// Writes `data` to `dir/name` atomically and durably: tmp file, fsync, rename, fsync dir.
    pub(crate) fn write_atomic(&self, dir: &Path, name: &str, data: &[u8]) -> Result<()> {
        let target = dir.join(name);
        let mut tmp = tempfile::Builder::new()
            .prefix("write-")
            .tempfile_in(self.tmp())
            .map_err(StoreError::io("create temporary file in", self.tmp()))?;
        tmp.write_all(data).map_err(StoreError::io("write", tmp.path()))?;
        tmp.as_file().sync_all().map_err(StoreError::io("fsync", tmp.path()))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(StoreError::io("chmod", tmp.path()))?;
        tmp.persist(&target).map_err(|e| StoreError::Io {
            action: "rename into",
            path: target.clone(),
            source: e.error,
        })?;
        fsync_dir(dir)
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("fsync", dir))
}

/// Disk usage of a file tree, in bytes of allocated blocks (hard links counted once).
pub(crate) fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(md) = fs::symlink_metadata(p) else { return 0 };
        let mut total = 0;
        if md.nlink() <= 1 || md.is_dir() || seen.insert((md.dev(), md.ino())) {
            total += md.blocks() * 512;
        }
        if md.is_dir() {
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    total += walk(&e.path(), seen);
                }
            }
        }
        total
    }
    walk(path, &mut Default::default())
}
