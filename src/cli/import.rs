//! `coracle pull` (local transports), `coracle load`, `coracle import`.

use clap::Args;

use super::CmdResult;
use crate::image::{self, Imported};
use crate::reference::Reference;
use crate::store::Store;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Name the image NAME[:TAG] instead of the name the source gives it
    #[arg(long, value_name = "NAME[:TAG]")]
    tag: Option<Reference>,
    /// oci:DIR[:REF], oci-archive:FILE[:REF] or docker-archive:FILE[:NAME:TAG|:@N]
    source: String,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The archive to load (- for standard input)
    #[arg(short, long, value_name = "FILE")]
    input: String,
    /// Name the image NAME[:TAG] (the archive must hold one image)
    #[arg(long, value_name = "NAME[:TAG]")]
    tag: Option<Reference>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// A tarball of a root filesystem (plain, gzip or zstd), or - for standard input
    file: String,
    /// The new image's name
    name: Option<Reference>,
}

pub fn pull(store: &Store, a: PullArgs) -> CmdResult {
    let imported = image::pull(store, &a.source, a.tag.as_ref())?;
    for i in &imported {
        for n in &i.names {
            eprintln!("Copied {} as {}", a.source, n);
        }
    }
    // The digests last, on stdout, for scripts.
    for i in &imported {
        println!("{}", i.record.digest);
    }
    Ok(0)
}

pub fn load(store: &Store, a: LoadArgs) -> CmdResult {
    let imported = image::load(store, &a.input, a.tag.as_ref())?;
    print_loaded(&imported);
    Ok(0)
}

fn print_loaded(imported: &[Imported]) {
    for i in imported {
        if i.names.is_empty() {
            println!("Loaded image ID: {}", i.record.digest);
        }
        for n in &i.names {
            println!("Loaded image: {n}");
        }
    }
}

pub fn import(store: &Store, a: ImportArgs) -> CmdResult {
    let imported = image::import_rootfs(store, &a.file, a.name.as_ref())?;
    println!("{}", imported.record.digest);
    Ok(0)
}
