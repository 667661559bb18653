//! `coracle gc` / `coracle prune`: prints each thing it deleted (store objects, and the
//! --state entries of containers whose `coracle run` died), then what it freed.

use super::output::human_size;
use super::CmdResult;
use crate::store::Store;

pub fn gc(store: &Store, state_dir: &std::path::Path) -> CmdResult {
    let r = store.gc()?;
    for id in crate::run::state::prune(state_dir)? {
        println!("deleted state of dead container {id}");
    }
    for (d, n) in &r.blobs {
        println!("deleted blob {d} ({})", human_size(*n));
    }
    for (d, n) in &r.layers {
        println!("deleted layer {d} ({})", human_size(*n));
    }
    for (name, n) in &r.tmp {
        println!("deleted tmp/{name} ({})", human_size(*n));
    }
    for (id, n) in &r.containers {
        println!("deleted container {id} ({})", human_size(*n));
    }
    for d in &r.in_use {
        println!("kept layer {d}: in use by a running container");
    }
    println!(
        "freed {}: {} blobs, {} layers, {} tmp entries, {} containers",
        human_size(r.bytes()),
        r.blobs.len(),
        r.layers.len(),
        r.tmp.len(),
        r.containers.len()
    );
    Ok(0)
}
