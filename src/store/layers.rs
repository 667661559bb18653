//! Extracted layers: `layers/sha256/<diff-id>/root` is an overlayfs lower, visible only
//! once `layer.json` (the marker) exists. A layer is extracted into `tmp/`, made durable
//! with one syncfs(2), marked, then renamed into place (rkt's treestore "rendered" marker).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lock::Lock;
use super::{blobs::verify, fsync_dir, Result, Store, StoreError};
use crate::digest::Digest;
use crate::layer::{self, Limits};

/// The marker: what we know of a committed layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerMarker {
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar stream.
    pub size: u64,
    pub entries: u64,
    /// The compressed blob it was first extracted from.
    pub blob: Digest,
    pub compression: String,
}

/// A layer blob as a manifest describes it (both unknown for `coracle import`).
#[derive(Debug, Clone, Default)]
pub struct LayerBlob {
    pub digest: Option<Digest>,
    pub size: Option<u64>,
}

impl LayerBlob {
    fn label(&self) -> String {
        self.digest.as_ref().map_or_else(|| "(imported tarball)".to_owned(), Digest::to_string)
    }
}

pub const MARKER: &str = "layer.json";

impl Store {
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root().join("layers").join(diff_id.algorithm()).join(diff_id.hex())
    }

    /// The directory to use as an overlayfs lower.
    pub fn layer_root(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join("root")
    }

    pub(crate) fn layer_lock_path(&self, diff_id: &Digest) -> PathBuf {
        self.root().join("locks/layers").join(diff_id.hex())
    }

    /// The marker of a committed layer; `None` when the layer does not exist (a
    /// directory without a readable marker does not count).
    pub fn layer_marker(&self, diff_id: &Digest) -> Option<LayerMarker> {
        let data = fs::read(self.layer_dir(diff_id).join(MARKER)).ok()?;
        serde_json::from_slice::<LayerMarker>(&data).ok().filter(|m| &m.diff_id == diff_id)
    }

    /// Makes sure the layer `diff_id` and its blob are in the store, reading the blob from
    /// `open()` only if something is missing. Two processes ensuring the same layer
    /// serialise on its lock; the second finds it committed and reads nothing.
    pub fn ensure_layer<R: Read + Send>(
        &self,
        blob: &LayerBlob,
        diff_id: Option<&Digest>,
        open: impl FnOnce() -> io::Result<R>,
    ) -> Result<LayerMarker> {
        let complete = |m: &LayerMarker| blob.digest.as_ref().is_none_or(|d| self.has_blob(d)) && m.size > 0;
        let _lock = match diff_id {
            Some(d) => match self.layer_marker(d) {
                Some(m) if complete(&m) => return Ok(m),
                // Committed, only the blob is missing: the blob lock below is enough. The
                // layer lock is held shared by every running container using the layer, so
                // taking it exclusively here waited for all of them to exit. The layer cannot
                // vanish meanwhile: removing one needs the store lock exclusively.
                Some(_) => None,
                None => Some(Lock::exclusive(&self.layer_lock_path(d))?),
            },
            None => None,
        };
        if let Some(m) = diff_id.and_then(|d| self.layer_marker(d)) {
            // Extracted already (maybe from another compression of the same tar): only
            // the blob is missing.
            if let Some(d) = &blob.digest {
                if !self.has_blob(d) {
                    let _blob_lock = Lock::exclusive(&self.root().join("locks/blobs").join(d.hex()))?;
                    // Checked again under the blob lock: its holder may just have committed
                    // it (the layer lock no longer serialises this path).
                    if !self.has_blob(d) {
                        let src = open().map_err(|e| StoreError::Layer {
                            blob: blob.label(),
                            source: layer::LayerError::Read(e),
                        })?;
                        self.ingest_blob(d, blob.size, src)?;
                    }
                }
            }
            return Ok(m);
        }
        self.extract(blob, diff_id, open)
    }

    fn extract<R: Read + Send>(
        &self,
        blob: &LayerBlob,
        diff_id: Option<&Digest>,
        open: impl FnOnce() -> io::Result<R>,
    ) -> Result<LayerMarker> {
        let tmp = self.tmp();
        let dir = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(&tmp)
            .map_err(StoreError::io("create directory in", &tmp))?;
        let root = dir.path().join("root");
        fs::DirBuilder::new().mode(0o755).create(&root).map_err(StoreError::io("create", &root))?;
        let root_fd: OwnedFd = File::open(&root).map_err(StoreError::io("open", &root))?.into();
        let sync_fd = root_fd.try_clone().map_err(StoreError::io("dup", &root))?;
        let mut blob_file = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(StoreError::io("create temporary file in", &tmp))?;
        let layer_err = |source| StoreError::Layer { blob: blob.label(), source };
        let src = open().map_err(|e| layer_err(layer::LayerError::Read(e)))?;
        let limits = Limits { declared_size: blob.size, reserve: self.free_space_reserve() };
        let un = layer::unpack(src, Some(blob_file.as_file_mut()), root_fd, limits).map_err(layer_err)?;
        if let Some(d) = &blob.digest {
            verify(d, blob.size, &un.blob_digest, un.blob_size)?;
        }
        if let Some(expected) = diff_id {
            if *expected != un.diff_id {
                return Err(StoreError::DiffIdMismatch {
                    blob: blob.label(),
                    expected: expected.clone(),
                    actual: un.diff_id.clone(),
                });
            }
        }
        // One syncfs makes every extracted file durable (instead of an fsync per file).
        nix::unistd::syncfs(&sync_fd).map_err(|e| StoreError::Io {
            action: "syncfs",
            path: root.clone(),
            source: e.into(),
        })?;
        self.commit_blob_file(blob_file, &un.blob_digest)?;
        let marker = LayerMarker {
            diff_id: un.diff_id.clone(),
            size: un.diff_size,
            entries: un.stats.entries,
            blob: un.blob_digest.clone(),
            compression: un.compression.name().to_owned(),
        };
        let json = serde_json::to_vec_pretty(&marker).expect("marker serialises");
        let marker_path = dir.path().join(MARKER);
        {
            use std::io::Write;
            let mut f = File::create(&marker_path).map_err(StoreError::io("create", &marker_path))?;
            f.write_all(&json).and_then(|_| f.sync_all()).map_err(StoreError::io("write", &marker_path))?;
        }
        fsync_dir(dir.path())?;
        let target = self.layer_dir(&un.diff_id);
        let mut renamed = fs::rename(dir.path(), &target);
        let occupied = |r: &io::Result<()>| {
            r.as_ref().is_err_and(|e| matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)))
        };
        if occupied(&renamed) && self.layer_marker(&un.diff_id).is_none() {
            // A dir without a valid marker is damage (fsck reports it), never a commit: a
            // commit renames a whole dir, marker included. Taking it for "someone committed
            // meanwhile" let the import succeed over a layer that does not count as existing.
            // Replace it, never from under a running container: with a diff-id,
            // ensure_layer holds the layer lock exclusively already.
            let _lock = match diff_id {
                Some(_) => None,
                None => Some(Lock::exclusive(&self.layer_lock_path(&un.diff_id))?),
            };
            self.remove_tree(&target)?;
            renamed = fs::rename(dir.path(), &target);
        }
        match renamed {
            Ok(()) => {
                let _ = dir.keep();
            }
            // Someone committed the same layer meanwhile (only possible without a diff-id
            // lock, i.e. `coracle import`): theirs is as good as ours; ours is dropped.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {}
            Err(e) => return Err(StoreError::Io { action: "rename into", path: target, source: e }),
        }
        fsync_dir(target.parent().unwrap_or(self.root()))?;
        Ok(marker)
    }

    /// Free bytes an extraction leaves on the store's filesystem: 5% of it, at most 1 GiB.
    fn free_space_reserve(&self) -> u64 {
        nix::sys::statvfs::statvfs(self.root())
            .map(|st| (st.blocks() * st.fragment_size() / 20).min(1 << 30))
            .unwrap_or(0)
    }
}
