//! Bytes as an image config (`coracle::image::config::parse`). See `fuzz/harness.rs`.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::config_parse(data);
});
