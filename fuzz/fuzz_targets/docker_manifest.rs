//! Bytes as the `manifest.json` of a docker-save archive, imported into a fresh store in
//! the sandbox. See `fuzz/harness.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(init: harness::fuzz_init(), |data: &[u8]| {
    harness::docker_manifest(&harness::fuzz_sandbox(), data);
});
