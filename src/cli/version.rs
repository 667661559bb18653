//! `coracle version` (and `--version`): the crate version, the git revision it was built
//! from (build.rs) and the target triple.

use super::CmdResult;

/// The git revision the binary was built from: a short hash, `-dirty` when the tree had
/// changes, or `unknown` (build.rs).
pub const GIT_REV: &str = env!("CORACLE_GIT_REV");
/// The target triple the binary was built for.
pub const TARGET: &str = env!("CORACLE_TARGET");

/// `0.1.0 (git c54a8d7-dirty, x86_64-unknown-linux-gnu)`; clap prints it after the name
/// for `--version`.
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("CORACLE_GIT_REV"), ", ", env!("CORACLE_TARGET"), ")");

pub fn version() -> CmdResult {
    println!("coracle {VERSION}");
    Ok(0)
}
