//! Blobs: immutable, verified, named by their sha256. Ingest streams into `tmp/`, checks
//! size and digest, fsyncs, then renames into `blobs/sha256/<hex>` (containerd's content
//! writer Commit: a blob is either absent or whole).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use super::{fsync_dir, Result, Store, StoreError};
use crate::digest::{Digest, Hasher};

/// Largest manifest, index or config we read into memory.
pub const MAX_DOCUMENT: u64 = 4 << 20;

impl Store {
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root().join("blobs").join(d.algorithm()).join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Reads a small blob (manifest, config) whole.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let f = File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::MissingBlob(d.clone()),
            _ => StoreError::Io { action: "open", path: p.clone(), source: e },
        })?;
        // Sized from the file's length: one read, not a series of doubling ones (the
        // config of every `coracle run`).
        let len = f.metadata().map_or(0, |m| m.len()).min(MAX_DOCUMENT);
        let mut data = Vec::with_capacity(len as usize + 1);
        f.take(MAX_DOCUMENT + 1).read_to_end(&mut data).map_err(StoreError::io("read", &p))?;
        if data.len() as u64 > MAX_DOCUMENT {
            return Err(StoreError::DocumentTooLarge(d.clone(), MAX_DOCUMENT));
        }
        Ok(data)
    }

    /// Stores `data` as the blob `expected` (and `size`, when known), verifying both.
    pub fn put_blob(&self, expected: &Digest, size: Option<u64>, data: &[u8]) -> Result<()> {
        verify(expected, size, &Digest::of(data), data.len() as u64)?;
        if self.has_blob(expected) {
            return Ok(());
        }
        let dir = self.blob_path(expected).parent().map(PathBuf::from).unwrap_or_default();
        self.write_atomic(&dir, expected.hex(), data)
    }

    /// Streams `src` into the blob `expected`, verifying size and digest before commit.
    pub fn ingest_blob(&self, expected: &Digest, size: Option<u64>, src: impl Read) -> Result<()> {
        let mut w = self.blob_writer()?;
        let limit = size.map_or(u64::MAX, |s| s + 1);
        io::copy(&mut src.take(limit), &mut w).map_err(StoreError::io("copy blob into", w.tmp.path()))?;
        w.commit(expected, size)
    }

    /// A writer for a blob whose digest is checked at commit.
    pub fn blob_writer(&self) -> Result<BlobWriter<'_>> {
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp())
            .map_err(StoreError::io("create temporary file in", self.tmp()))?;
        Ok(BlobWriter { store: self, tmp, hasher: Hasher::new() })
    }

    /// Commits an already written and hashed temporary file as blob `actual`.
    pub(crate) fn commit_blob_file(&self, tmp: tempfile::NamedTempFile, actual: &Digest) -> Result<()> {
        if self.has_blob(actual) {
            return Ok(());
        }
        tmp.as_file().sync_all().map_err(StoreError::io("fsync", tmp.path()))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(StoreError::io("chmod", tmp.path()))?;
        let target = self.blob_path(actual);
        tmp.persist(&target).map_err(|e| StoreError::Io {
            action: "rename into",
            path: target.clone(),
            source: e.error,
        })?;
        fsync_dir(target.parent().unwrap_or(self.root()))
    }
}

pub(crate) fn verify(expected: &Digest, size: Option<u64>, actual: &Digest, actual_size: u64) -> Result<()> {
    if let Some(s) = size {
        if s != actual_size {
            return Err(StoreError::SizeMismatch { digest: expected.clone(), expected: s, actual: actual_size });
        }
    }
    if expected != actual {
        return Err(StoreError::DigestMismatch { digest: expected.clone(), actual: actual.clone() });
    }
    Ok(())
}

pub struct BlobWriter<'a> {
    store: &'a Store,
    tmp: tempfile::NamedTempFile,
    hasher: Hasher,
}

impl BlobWriter<'_> {
    /// Verifies and commits; on any error the temporary file is removed.
    pub fn commit(self, expected: &Digest, size: Option<u64>) -> Result<()> {
        let (actual, n) = self.hasher.finish();
        verify(expected, size, &actual, n)?;
        self.store.commit_blob_file(self.tmp, &actual)
    }

    /// Verifies and fsyncs without committing: the caller commits later.
    pub fn verify(self, expected: &Digest, size: Option<u64>) -> Result<tempfile::NamedTempFile> {
        let (actual, n) = self.hasher.finish();
        verify(expected, size, &actual, n)?;
        self.tmp.as_file().sync_all().map_err(StoreError::io("fsync", self.tmp.path()))?;
        Ok(self.tmp)
    }

    /// Commits under whatever digest the content has.
    pub fn commit_any(self) -> Result<(Digest, u64)> {
        let (actual, n) = self.hasher.finish();
        self.store.commit_blob_file(self.tmp, &actual)?;
        Ok((actual, n))
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tmp.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}
