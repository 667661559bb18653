//! `coracle fsck [--repair]`: exit 0 when the store is consistent (or was repaired), 1
//! when problems remain.

use clap::Args;

use super::CmdResult;
use crate::store::Store;

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Remove broken blobs, layers, images and names (run `coracle pull` again afterwards)
    #[arg(long)]
    repair: bool,
}

pub fn fsck(store: &Store, a: FsckArgs) -> CmdResult {
    let r = store.fsck(a.repair)?;
    for p in &r.problems {
        println!("{}{}", p.what, if p.repaired { " (removed)" } else { "" });
    }
    let repaired = r.problems.iter().filter(|p| p.repaired).count();
    println!(
        "checked {} blobs, {} layers, {} images, {} names: {} problems{}",
        r.blobs,
        r.layers,
        r.images,
        r.refs,
        r.problems.len(),
        if repaired > 0 { format!(", {repaired} repaired") } else { String::new() }
    );
    Ok(if r.clean() { 0 } else { 1 })
}
