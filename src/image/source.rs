//! Where blobs come from during an import: an OCI layout directory, or members of a tar
//! archive. Blob paths are built from validated digests only.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::archive::TarIndex;
use crate::digest::Digest;
use crate::store::blobs::MAX_DOCUMENT;

pub trait BlobSource: Sync {
    /// A short name for messages, e.g. `oci:/srv/img`.
    fn name(&self) -> &str;
    /// Opens the blob `d` for streaming.
    fn open(&self, d: &Digest) -> io::Result<Box<dyn Read + Send + '_>>;

    /// Reads a manifest or index (a registry serves those from another endpoint than
    /// blobs).
    fn read_manifest(&self, d: &Digest) -> io::Result<Vec<u8>> {
        self.read_document(d)
    }

    /// Reads a small blob (manifest, index, config) whole, bounded.
    fn read_document(&self, d: &Digest) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open(d)?.take(MAX_DOCUMENT + 1).read_to_end(&mut data)?;
        if data.len() as u64 > MAX_DOCUMENT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {d} is larger than {MAX_DOCUMENT} bytes"),
            ));
        }
        Ok(data)
    }
}

/// `blobs/<alg>/<hex>` inside an OCI layout.
pub fn layout_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.hex())
}

/// An OCI image layout directory.
pub struct DirSource {
    pub dir: PathBuf,
    pub name: String,
}

impl BlobSource for DirSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn open(&self, d: &Digest) -> io::Result<Box<dyn Read + Send + '_>> {
        let p = self.dir.join(layout_path(d));
        let f = open_regular(&p).map_err(|e| io::Error::new(e.kind(), format!("blob {d}: {e}")))?;
        crate::sys::advise_sequential(std::os::fd::AsFd::as_fd(&f));
        Ok(Box::new(f))
    }
}

/// Opens a file of a layout for reading, refusing anything but a regular file (symlinks
/// are followed: blob dirs may be shared). O_NONBLOCK keeps open(2) of a FIFO from
/// blocking; it changes nothing for reads of a regular file.
pub fn open_regular(p: &Path) -> io::Result<File> {
    use nix::sys::statfs::{fstatfs, DEBUGFS_MAGIC, PROC_SUPER_MAGIC, SECURITYFS_MAGIC, SYSFS_MAGIC, TRACEFS_MAGIC};
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    // Kernel pseudo files say S_IFREG, but reading one can block or change host state
    // (/proc/kmsg consumes the kernel log): a symlink from a layout must not reach them.
    let fs = fstatfs(&f).map_err(io::Error::from)?.filesystem_type();
    if [PROC_SUPER_MAGIC, SYSFS_MAGIC, DEBUGFS_MAGIC, SECURITYFS_MAGIC, TRACEFS_MAGIC].contains(&fs) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file (a kernel pseudo file)"));
    }
    Ok(f)
}

/// Reads a small regular file whole, at most `max` bytes.
pub fn read_regular(p: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    open_regular(p)?.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(data)
}

/// An OCI layout inside a tar archive (an OCI archive, or a new-style `docker save`).
pub struct ArchiveSource {
    pub index: TarIndex,
    pub name: String,
}

impl BlobSource for ArchiveSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn open(&self, d: &Digest) -> io::Result<Box<dyn Read + Send + '_>> {
        let r = self.index.open(&layout_path(d)).map_err(|e| io::Error::new(e.kind(), format!("blob {d}: {e}")))?;
        Ok(Box::new(r))
    }
}
