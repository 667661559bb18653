//! Extracted layers: `layers/sha256/<diff-id>/root` is an overlayfs lower, visible only
//! once `layer.json` (the marker) exists. A layer is extracted into `tmp/`, made durable
//! with one syncfs(2), marked, then renamed into place (rkt's treestore "rendered" marker).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::lock::Lock;
use super::{blobs::verify, Result, Store, StoreError};
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

/// What a layer still needs before an image can use it.
#[derive(Debug)]
pub enum LayerNeed {
    Nothing(LayerMarker),
    /// Extracted, but this image's compressed blob is missing.
    Blob(LayerMarker),
    Extract,
}

/// A verified, durable blob in tmp/, not yet visible (removed if dropped).
pub struct PendingBlob {
    tmp: tempfile::NamedTempFile,
    pub digest: Digest,
}

impl PendingBlob {
    pub fn size(&self) -> u64 {
        self.tmp.as_file().metadata().map_or(0, |m| m.len())
    }
}

/// An extracted, verified, durable layer in tmp/, not yet visible (removed if dropped).
pub struct PendingLayer {
    dir: tempfile::TempDir,
    pub blob: PendingBlob,
    pub marker: LayerMarker,
}

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

    /// What the layer `diff_id` (from blob `blob`) still needs before an image can use it.
    pub fn layer_need(&self, blob: &LayerBlob, diff_id: &Digest) -> LayerNeed {
        match self.layer_marker(diff_id) {
            None => LayerNeed::Extract,
            Some(m) if blob.digest.as_ref().is_none_or(|d| self.has_blob(d)) => LayerNeed::Nothing(m),
            // Extracted already (maybe from another compression of the same tar).
            Some(m) => LayerNeed::Blob(m),
        }
    }

    /// The exclusive lock of a layer being extracted. Running containers hold it shared,
    /// so only take it for a layer that does not exist yet.
    pub fn lock_layer(&self, diff_id: &Digest) -> Result<Lock> {
        Lock::exclusive(&self.layer_lock_path(diff_id))
    }

    /// Reads a blob into tmp/, verified and durable, without committing it.
    pub fn fetch_blob<R: Read>(&self, d: &Digest, size: Option<u64>, src: R) -> Result<PendingBlob> {
        let mut w = self.blob_writer()?;
        let limit = size.map_or(u64::MAX, |s| s + 1);
        io::copy(&mut src.take(limit), &mut w)
            .map_err(|e| StoreError::Layer { blob: d.to_string(), source: layer::LayerError::Read(e) })?;
        let tmp = w.verify(d, size)?;
        Ok(PendingBlob { tmp, digest: d.clone() })
    }

    /// Makes a pending blob visible by one rename. Not durable by itself: the caller has
    /// made its data durable ([`Store::sync`]) before, and syncs the rename after.
    pub fn commit_blob(&self, p: PendingBlob) -> Result<()> {
        if self.has_blob(&p.digest) {
            return Ok(());
        }
        fs::set_permissions(p.tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(StoreError::io("chmod", p.tmp.path()))?;
        let target = self.blob_path(&p.digest);
        p.tmp.persist(&target).map_err(|e| StoreError::Io {
            action: "rename into",
            path: target.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// One syncfs(2) of the store's filesystem: every file, directory and rename in it
    /// durable at once. An import calls it twice: after extracting every layer (before
    /// any commit, so no rename can outlive a crash without its data) and after the
    /// commits (before the image record that refers to them).
    pub fn sync(&self) -> Result<()> {
        let root = File::open(self.root()).map_err(StoreError::io("open", self.root()))?;
        nix::unistd::syncfs(&root).map_err(|e| StoreError::Io {
            action: "syncfs",
            path: self.root().into(),
            source: e.into(),
        })
    }

    /// Runs `work` while another thread writes the store's dirty data back, one syncfs
    /// after the other, so that the [`Store::sync`] after it finds little left to write:
    /// the disk works while the CPUs decompress and extract. The kernel would otherwise
    /// start writing back only after 30 s or gigabytes of dirty pages, and the final
    /// sync would then write a whole image while nothing else happens (a third of a
    /// pull's time here, docs/benchmarks.md).
    ///
    /// The kernel reports a writeback error once per open file, so an error the thread's
    /// syncfs saw would never reach the final sync: it is returned here instead, when
    /// `work` itself succeeded.
    pub fn with_writeback<T, E: From<StoreError>>(&self, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        use std::sync::atomic::{AtomicBool, Ordering};
        // Between two syncfs that found little to write: no spinning on a clean fs.
        const PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
        // Stops the thread however `work` ends (a panic too: the scope waits for it).
        struct Stop<'a>(&'a AtomicBool, std::thread::Thread);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
                self.1.unpark();
            }
        }
        let done = AtomicBool::new(false);
        let (result, written) = std::thread::scope(|s| {
            let syncer = s.spawn(|| -> std::io::Result<()> {
                let root = File::open(self.root())?;
                while !done.load(Ordering::Acquire) {
                    let started = std::time::Instant::now();
                    nix::unistd::syncfs(&root)?;
                    if let Some(rest) = PAUSE.checked_sub(started.elapsed()) {
                        std::thread::park_timeout(rest);
                    }
                }
                Ok(())
            });
            let result = {
                let _stop = Stop(&done, syncer.thread().clone());
                work()
            };
            (result, syncer.join().unwrap_or(Ok(())))
        });
        let value = result?;
        written.map_err(StoreError::io("syncfs (writeback during the import)", self.root()))?;
        Ok(value)
    }

    /// Extracts a layer blob into tmp/: verified (blob digest and size when known, diff-id
    /// when known) and marked, but neither durable nor visible: the caller syncs the store
    /// once for every layer of an import ([`Store::sync`]), then commits.
    pub fn extract_layer<R: Read + Send>(
        &self,
        blob: &LayerBlob,
        diff_id: Option<&Digest>,
        open: impl FnOnce() -> io::Result<R>,
    ) -> Result<PendingLayer> {
        let tmp = self.tmp();
        let dir = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(&tmp)
            .map_err(StoreError::io("create directory in", &tmp))?;
        let root = dir.path().join("root");
        fs::DirBuilder::new().mode(0o755).create(&root).map_err(StoreError::io("create", &root))?;
        let root_fd: OwnedFd = File::open(&root).map_err(StoreError::io("open", &root))?.into();
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
            f.write_all(&json).map_err(StoreError::io("write", &marker_path))?;
        }
        Ok(PendingLayer { dir, blob: PendingBlob { tmp: blob_file, digest: un.blob_digest }, marker })
    }

    /// Makes an extracted layer (and its blob) visible: blob first, then the directory
    /// by one rename. The caller holds the layer's lock, has synced the store before
    /// (the layer's data) and syncs it after (the renames).
    pub fn commit_layer(&self, p: PendingLayer) -> Result<LayerMarker> {
        let PendingLayer { dir, blob, marker } = p;
        self.commit_blob(blob)?;
        let target = self.layer_dir(&marker.diff_id);
        let mut renamed = fs::rename(dir.path(), &target);
        let occupied = |r: &io::Result<()>| {
            r.as_ref().is_err_and(|e| matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)))
        };
        if occupied(&renamed) && self.layer_marker(&marker.diff_id).is_none() {
            // A dir without a valid marker is damage (fsck reports it), never a commit: a
            // commit renames a whole dir, marker included. Replace it (the caller holds
            // the layer lock, so no container uses it).
            self.remove_tree(&target)?;
            renamed = fs::rename(dir.path(), &target);
        }
        match renamed {
            Ok(()) => {
                let _ = dir.keep();
            }
            // Someone committed the same layer meanwhile: theirs is as good as ours.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {}
            Err(e) => return Err(StoreError::Io { action: "rename into", path: target, source: e }),
        }
        Ok(marker)
    }

    /// Free bytes an extraction leaves on the store's filesystem: 5% of it, at most 1 GiB.
    fn free_space_reserve(&self) -> u64 {
        nix::sys::statvfs::statvfs(self.root())
            .map(|st| (st.blocks() * st.fragment_size() / 20).min(1 << 30))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f` on its own thread; fails if it has not returned within 60 s (a hung writeback
    /// thread would otherwise hang the suite).
    fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(60)).expect("with_writeback did not return")
    }

    #[test]
    fn writeback_returns_what_the_work_returns_and_stops_when_it_panics() {
        within_a_minute(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("store")).unwrap();
            assert_eq!(store.with_writeback(|| Ok::<_, StoreError>(7)).unwrap(), 7);
            let failed = store.with_writeback(|| -> Result<(), StoreError> {
                Err(StoreError::io("extract", "x")(std::io::Error::other("boom")))
            });
            assert!(failed.unwrap_err().to_string().contains("boom"));
            // A panic in the work still stops the writeback thread, so the panic
            // propagates instead of the scope waiting forever.
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.with_writeback(|| -> Result<(), StoreError> { panic!("work panicked") })
            }));
            assert!(panicked.is_err());
        });
    }
}
