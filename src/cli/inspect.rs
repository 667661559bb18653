//! `coracle inspect`: a JSON array with one object per image, as docker and podman print.

use clap::Args;
use serde_json::{json, Value};

use super::CmdResult;
use crate::image::lookup;
use crate::store::Store;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Names, IDs or digests
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn inspect(store: &Store, a: InspectArgs) -> CmdResult {
    let mut out = Vec::new();
    for arg in &a.images {
        let rec = lookup::find(store, arg)?;
        let names: Vec<String> = lookup::names_of(store, &rec.digest)?.iter().map(ToString::to_string).collect();
        let config: Value = serde_json::from_slice(&store.read_blob(&rec.config)?)?;
        out.push(json!({
            "id": rec.digest.hex(),
            "names": names,
            "digest": rec.digest,
            "media_type": rec.media_type,
            "config_digest": rec.config,
            "platform": rec.platform,
            "created": rec.created,
            "size": rec.size,
            "layers": rec.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
            "layer_blobs": rec.layers,
            "config": config,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
