//! Images: getting them into the store from local formats, and finding them again.
//!
//! Every source (OCI layout dir, OCI archive, docker-archive, rootfs tarball) is reduced
//! to a [`BlobSource`] plus a manifest; [`import::import_manifest`] then verifies and
//! commits layers, config, manifest, record and names, in that order, under a shared
//! store lock so gc never sees a half-imported image.

pub mod archive;
pub mod config;
pub mod docker;
pub mod import;
pub mod lookup;
pub mod manifest;
pub mod oci;
pub mod platform;
pub mod rootfs;
pub mod source;
pub mod transport;

use crate::digest::Digest;
use crate::reference::ReferenceError;
use crate::store::StoreError;

pub use import::Imported;
pub use manifest::ManifestError;
pub use transport::{import_rootfs, load, pull};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Reference(#[from] ReferenceError),
    #[error("{at}: {source}")]
    Manifest { at: String, source: ManifestError },
    #[error("{source_name}: {why}")]
    Source { source_name: String, why: String },
    #[error("image config {digest}: {why}")]
    Config { digest: Digest, why: String },
    #[error("{source_name}: no image for {want}; it has: {have}")]
    NoPlatform { source_name: String, want: String, have: String },
    #[error("image {0:?} not found in the store")]
    NotFound(String),
    #[error("{0:?} matches more than one image: {1}")]
    AmbiguousId(String, String),
    #[error("unknown source {0:?}: expected oci:DIR[:REF], oci-archive:FILE[:REF] or docker-archive:FILE[:NAME:TAG]")]
    UnknownTransport(String),
    #[error("image {0:?} is in use by running container {1} (stop it first)")]
    InUse(String, String),
    #[error("--tag names one image but {0} holds {1}")]
    TagNeedsOneImage(String, usize),
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) fn source_err(source_name: &str, why: impl std::fmt::Display) -> ImageError {
    ImageError::Source { source_name: source_name.to_owned(), why: why.to_string() }
}
