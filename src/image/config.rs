//! The image config (OCI image-spec config.md, which Docker's config also satisfies):
//! parsed with oci-spec, checked for what the store relies on (diff-ids, platform).

use oci_spec::image::ImageConfiguration;

use super::{ImageError, Result};
use crate::digest::Digest;
use crate::store::images::Platform;

pub struct Config {
    pub raw: ImageConfiguration,
    pub diff_ids: Vec<Digest>,
    pub platform: Platform,
    pub created: Option<String>,
}

pub fn parse(digest: &Digest, data: &[u8]) -> Result<Config> {
    let err = |why: String| ImageError::Config { digest: digest.clone(), why };
    let raw: ImageConfiguration = serde_json::from_slice(data).map_err(|e| err(format!("malformed: {e}")))?;
    if raw.rootfs().typ() != "layers" {
        return Err(err(format!("rootfs type {:?}, expected \"layers\"", raw.rootfs().typ())));
    }
    let diff_ids = raw
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse::<Digest>().map_err(|e| err(format!("diff_id: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let platform =
        super::platform::normalize(&raw.os().to_string(), &raw.architecture().to_string(), raw.variant().as_deref());
    Ok(Config { created: raw.created().clone(), raw, diff_ids, platform })
}
