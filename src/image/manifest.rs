//! Manifests and indexes (OCI image-spec and Docker schema 2), parsed strictly.
//!
//! We use our own small types rather than oci-spec's here because the checks that matter
//! are on the raw document: a manifest must not also be an index (CVE-2021-41190, the
//! OCI "ambiguous documents" advisory), and its `mediaType` must agree with the descriptor
//! that led to it. Digests are validated as they are parsed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
const LAYER_TYPES: &[&str] = &[
    OCI_LAYER_TAR,
    OCI_LAYER_GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
/// Most layers one image may have.
pub const MAX_LAYERS: usize = 4096;
/// Most entries one index may list.
const MAX_INDEX_ENTRIES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("malformed {what}: {source}")]
    Json { what: &'static str, source: serde_json::Error },
    #[error("ambiguous document: it has both `manifests` and `layers`/`config` (CVE-2021-41190)")]
    Ambiguous,
    #[error("document says mediaType {inner:?} but was referenced as {outer:?}")]
    MediaTypeMismatch { inner: String, outer: String },
    #[error(
        "Docker schema 1 manifests are not supported (deprecated since 2017): push the image again with a current tool"
    )]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    UnknownType(String),
    #[error("unsupported schemaVersion {0}")]
    SchemaVersion(u32),
    #[error("not a container image: config media type {0:?}")]
    NotAnImage(String),
    #[error("not a container image layer: media type {0:?}")]
    LayerType(String),
    #[error("{0} layers, more than the {MAX_LAYERS} supported")]
    TooManyLayers(usize),
    #[error("index lists {0} manifests, more than {MAX_INDEX_ENTRIES}")]
    IndexTooLarge(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug)]
pub enum Document {
    Manifest(Manifest, String),
    Index(Index),
}

/// Only the fields that decide what a document is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    layers: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    fs_layers: Option<serde::de::IgnoredAny>,
}

fn json<T: for<'de> Deserialize<'de>>(data: &[u8], what: &'static str) -> Result<T, ManifestError> {
    serde_json::from_slice(data).map_err(|source| ManifestError::Json { what, source })
}

/// Parses a manifest or index. `outer` is the media type of the descriptor that pointed
/// here, when there was one.
pub fn parse(data: &[u8], outer: Option<&str>) -> Result<Document, ManifestError> {
    let shape: Shape = json(data, "manifest")?;
    let inner = shape.media_type.clone().filter(|m| !m.is_empty());
    if let (Some(i), Some(o)) = (&inner, outer.filter(|o| !o.is_empty())) {
        if i != o {
            return Err(ManifestError::MediaTypeMismatch { inner: i.clone(), outer: o.to_owned() });
        }
    }
    let kind = inner.or_else(|| outer.filter(|o| !o.is_empty()).map(str::to_owned));
    if shape.fs_layers.is_some()
        || shape.schema_version == Some(1)
        || kind.as_deref().is_some_and(|k| SCHEMA1.contains(&k))
    {
        return Err(ManifestError::Schema1);
    }
    let is_index = shape.manifests.is_some();
    if is_index && (shape.layers.is_some() || shape.config.is_some()) {
        return Err(ManifestError::Ambiguous);
    }
    let kind = match kind {
        Some(k) => k,
        // OCI allows mediaType to be absent; then the fields decide.
        None if is_index => OCI_INDEX.to_owned(),
        None => OCI_MANIFEST.to_owned(),
    };
    match kind.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            if !is_index {
                return Err(ManifestError::MediaTypeMismatch { inner: "manifest".into(), outer: kind });
            }
            let idx: Index = json(data, "index")?;
            if idx.schema_version != 2 {
                return Err(ManifestError::SchemaVersion(idx.schema_version));
            }
            if idx.manifests.len() > MAX_INDEX_ENTRIES {
                return Err(ManifestError::IndexTooLarge(idx.manifests.len()));
            }
            Ok(Document::Index(idx))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            if is_index {
                return Err(ManifestError::MediaTypeMismatch { inner: "index".into(), outer: kind });
            }
            let m: Manifest = json(data, "manifest")?;
            if m.schema_version != 2 {
                return Err(ManifestError::SchemaVersion(m.schema_version));
            }
            if m.config.media_type != OCI_CONFIG && m.config.media_type != DOCKER_CONFIG {
                return Err(ManifestError::NotAnImage(m.config.media_type.clone()));
            }
            if m.layers.len() > MAX_LAYERS {
                return Err(ManifestError::TooManyLayers(m.layers.len()));
            }
            if let Some(l) = m.layers.iter().find(|l| !LAYER_TYPES.contains(&l.media_type.as_str())) {
                return Err(ManifestError::LayerType(l.media_type.clone()));
            }
            Ok(Document::Manifest(m, kind))
        }
        other => Err(ManifestError::UnknownType(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{D}","size":0}},"layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{D}","size":0}}]{extra}}}"#
        )
    }

    #[test]
    fn parses_manifest_and_index() {
        assert!(matches!(parse(manifest("").as_bytes(), Some(OCI_MANIFEST)).unwrap(), Document::Manifest(..)));
        let idx =
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1}}]}}"#);
        assert!(matches!(parse(idx.as_bytes(), None).unwrap(), Document::Index(_)));
    }

    #[test]
    fn manifest_that_is_also_an_index_is_refused() {
        let m = manifest(r#","manifests":[]"#);
        assert!(matches!(parse(m.as_bytes(), None), Err(ManifestError::Ambiguous)));
    }

    #[test]
    fn media_type_must_match_the_descriptor() {
        assert!(matches!(
            parse(manifest("").as_bytes(), Some(OCI_INDEX)),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
    }

    #[test]
    fn schema1_and_artifacts_are_refused_clearly() {
        let s1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(parse(s1.as_bytes(), None), Err(ManifestError::Schema1)));
        let art = manifest("").replace(OCI_CONFIG, "application/vnd.cncf.helm.config.v1+json");
        assert!(matches!(parse(art.as_bytes(), None), Err(ManifestError::NotAnImage(_))));
        let bad_digest = manifest("").replacen(D, "sha256:../../etc/passwd", 1);
        assert!(matches!(parse(bad_digest.as_bytes(), None), Err(ManifestError::Json { .. })));
    }
}
