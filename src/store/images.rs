//! Image records: `images/<manifest-hex>.json`, one per image in the store, written after
//! every blob and layer it names is committed. An image is its manifest digest; names
//! (refs) point at records. A record without names is a dangling (`<none>`) image.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{fsync_dir, Result, Store, StoreError};
use crate::digest::Digest;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub blob: Digest,
    pub media_type: String,
    /// Compressed size.
    pub size: u64,
    pub diff_id: Digest,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The manifest digest: the image's identity.
    pub digest: Digest,
    pub media_type: String,
    pub config: Digest,
    pub platform: Platform,
    pub layers: Vec<LayerRecord>,
    /// `created` from the image config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Uncompressed size: the sum of the layers' tar streams.
    pub size: u64,
    /// When it entered this store (seconds since the epoch).
    pub loaded: u64,
}

impl Store {
    fn image_path(&self, d: &Digest) -> PathBuf {
        self.path("images").join(format!("{}.json", d.hex()))
    }

    pub fn put_image(&self, rec: &ImageRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(rec).expect("record serialises");
        self.write_atomic(&self.path("images"), &format!("{}.json", rec.digest.hex()), &json)
    }

    pub fn get_image(&self, d: &Digest) -> Result<Option<ImageRecord>> {
        let p = self.image_path(d);
        match fs::read(&p) {
            Ok(data) => {
                serde_json::from_slice(&data).map(Some).map_err(|e| StoreError::Corrupt { path: p, why: e.to_string() })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { action: "read", path: p, source: e }),
        }
    }

    pub fn remove_image(&self, d: &Digest) -> Result<()> {
        let p = self.image_path(d);
        match fs::remove_file(&p) {
            Ok(()) => fsync_dir(&self.path("images")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io { action: "remove", path: p, source: e }),
        }
    }

    /// The digests of every image record (corrupt ones included: fsck judges them).
    pub fn image_digests(&self) -> Result<Vec<Digest>> {
        let dir = self.path("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(StoreError::io("read", &dir))? {
            let e = e.map_err(StoreError::io("read", &dir))?;
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if let Ok(d) = Digest::from_hex(hex) {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for d in self.image_digests()? {
            if let Ok(Some(r)) = self.get_image(&d) {
                out.push(r);
            }
        }
        Ok(out)
    }
}
