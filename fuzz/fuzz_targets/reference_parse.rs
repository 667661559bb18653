//! A string as an image reference; accepted references must reparse from their normal
//! and short forms. See `fuzz/harness.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::reference_parse(data);
});
