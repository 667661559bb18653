//! Bytes as an OCI/Docker manifest or index, under every outer media type; accepted
//! documents must round-trip through serde. See `fuzz/harness.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::manifest_parse(data);
});
