//! Writes the default fixture image (the probe, busybox, the base tree from
//! rootfs-fixtures/) as an OCI layout: `cargo run --example fixture -- PROBE BUSYBOX OUTDIR`.
//! Used by `scripts/demo`; the tests build the same image through tests/util.

#[path = "../rootfs-fixtures/assemble.rs"]
mod assemble;

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: fixture PROBE BUSYBOX OUTDIR");
        std::process::exit(2);
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("rootfs-fixtures");
    let rootfs = assemble::default_rootfs(&fixtures, Path::new(&args[1]), Some(Path::new(&args[2])));
    let mut img = assemble::Image::new(vec![(rootfs, assemble::Comp::Gzip)]);
    img.runtime["Cmd"] = serde_json::json!(["/bin/probe", "pid"]);
    let built = assemble::build(&img);
    assemble::write_oci_layout(Path::new(&args[3]), &[(&built, Some("latest"))]);
    println!("{}", built.manifest.digest);
}
