//! What a store holds, cheaply, for `coracle info`: counts and sizes from directory
//! listings, one stat per blob and the sizes recorded in layer markers. Nothing is
//! hashed, no layer tree is walked, no lock is taken, and nothing is created.

use std::fs;
use std::io;
use std::path::Path;

use super::gc::digest_entries;
use super::{Result, Store, StoreError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Image records (`images/*.json`).
    pub images: u64,
    /// Names (`refs/*`).
    pub names: u64,
    pub blobs: u64,
    /// Bytes of the blobs (file lengths).
    pub blob_bytes: u64,
    /// Layers with a valid marker.
    pub layers: u64,
    /// Uncompressed size of those layers, as recorded in their markers.
    pub layer_bytes: u64,
    /// Layer directories without a valid marker (an interrupted extraction; gc removes them).
    pub incomplete_layers: u64,
}

impl Usage {
    pub fn total_bytes(&self) -> u64 {
        self.blob_bytes + self.layer_bytes
    }
}

impl Store {
    /// The store at `root` as it is, without creating or repairing anything (unlike
    /// [`Store::open`]); `None` when `root` is not a directory.
    pub fn open_existing(root: &Path) -> Option<Store> {
        fs::metadata(root).is_ok_and(|m| m.is_dir()).then(|| Store { root: root.to_path_buf() })
    }

    /// Counts and sizes of what the store holds. A missing subdirectory counts as empty.
    pub fn usage(&self) -> Result<Usage> {
        let mut u = Usage::default();
        for (_, path) in missing_is_empty(digest_entries(&self.path("blobs/sha256")))? {
            u.blobs += 1;
            u.blob_bytes += fs::symlink_metadata(&path).map_or(0, |m| m.len());
        }
        for (d, _) in missing_is_empty(digest_entries(&self.path("layers/sha256")))? {
            match self.layer_marker(&d) {
                Some(m) => {
                    u.layers += 1;
                    u.layer_bytes += m.size;
                }
                None => u.incomplete_layers += 1,
            }
        }
        u.images = missing_is_empty(self.image_digests())?.len() as u64;
        let refs = self.path("refs");
        u.names = match fs::read_dir(&refs) {
            Ok(rd) => rd.filter(|e| e.is_ok()).count() as u64,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(StoreError::Io { action: "read", path: refs, source: e }),
        };
        Ok(u)
    }
}

fn missing_is_empty<T>(r: Result<Vec<T>>) -> Result<Vec<T>> {
    match r {
        Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Store::open_existing(&dir.path().join("nope")).is_none());
        // A bare directory: every subdirectory missing, nothing created.
        let bare = Store::open_existing(dir.path()).unwrap();
        assert_eq!(bare.usage().unwrap(), Usage::default());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let s = Store::open(&dir.path().join("store")).unwrap();
        assert_eq!(s.usage().unwrap(), Usage::default());
    }
}
