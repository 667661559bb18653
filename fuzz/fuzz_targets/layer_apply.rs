//! Raw bytes as a layer blob (tar, gzip or zstd, sniffed as the store does), extracted by
//! `coracle::layer::unpack` next to the sentinels; see `fuzz/harness.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(init: harness::fuzz_init(), |data: &[u8]| {
    harness::layer_apply(&harness::fuzz_sandbox(), data);
});
