//! `coracle import`: a rootfs tarball (plain, gzip or zstd) becomes a one-layer image with
//! a minimal config, as `docker import` and `podman import` do.

use std::io::Read;

use serde_json::json;

use super::import::{self, Imported, Resolved};
use super::manifest::{Descriptor, Manifest, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST};
use super::source::BlobSource;
use super::{platform, Result};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::store::layers::LayerBlob;
use crate::store::Store;

/// The config this import wrote; the layer comes already extracted.
struct Generated {
    config: Digest,
    bytes: Vec<u8>,
}

impl BlobSource for Generated {
    fn name(&self) -> &str {
        "import"
    }
    fn open(&self, d: &Digest) -> std::io::Result<Box<dyn Read + Send + '_>> {
        if *d == self.config {
            return Ok(Box::new(&self.bytes[..]));
        }
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("blob {d}")))
    }
}

pub fn import<R: Read + Send>(store: &Store, input: R, name: Option<&Reference>) -> Result<Imported> {
    let pending = store.with_writeback(|| store.extract_layer(&LayerBlob::default(), None, || Ok(input)))?;
    let marker = pending.marker.clone();
    let layer_type = match marker.compression.as_str() {
        "gzip" => OCI_LAYER_GZIP.to_owned(),
        "zstd" => "application/vnd.oci.image.layer.v1.tar+zstd".to_owned(),
        _ => OCI_LAYER_TAR.to_owned(),
    };
    let blob_size = pending.blob.size();
    let host = platform::host();
    let now = rfc3339_now();
    let mut cfg = json!({
        "created": now,
        "architecture": host.architecture,
        "os": host.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [marker.diff_id.to_string()]},
        "history": [{"created": now, "created_by": "coracle import"}],
    });
    if let Some(v) = &host.variant {
        cfg["variant"] = json!(v);
    }
    let cfg_bytes = serde_json::to_vec(&cfg).expect("config serialises");
    let cfg_digest = Digest::of(&cfg_bytes);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: cfg_digest,
            size: cfg_bytes.len() as u64,
            platform: None,
            annotations: None,
        },
        layers: vec![Descriptor {
            media_type: layer_type,
            digest: marker.blob.clone(),
            size: blob_size,
            platform: None,
            annotations: None,
        }],
    };
    let bytes = serde_json::to_vec(&manifest).expect("manifest serialises");
    let resolved = Resolved { digest: Digest::of(&bytes), manifest, media_type: OCI_MANIFEST.into(), bytes };
    let src = Generated { config: resolved.manifest.config.digest.clone(), bytes: cfg_bytes };
    let names: Vec<Reference> = name.into_iter().cloned().collect();
    import::import_manifest(store, &src, &resolved, &names, vec![pending])
}

/// The current UTC time as RFC 3339 (`2026-11-22T13:45:00Z`).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

pub fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        // `date -u -d @1795000000`
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
