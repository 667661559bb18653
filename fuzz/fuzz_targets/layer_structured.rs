//! Structure-aware layers: an `arbitrary`-built [`Spec`] (entries of every kind, names with
//! `..`, absolute and sandbox-absolute link targets, whiteouts, opaque markers, GNU long
//! names, pax records and xattrs, one or two layers) rendered into tars and extracted next
//! to the sentinels; see `fuzz/harness.rs`. An input that is a JSON `Spec` (the seeds, the
//! regressions) is taken as such. With `CORACLE_FUZZ_DUMP=FILE` the spec is written to
//! FILE as JSON first: `scripts/fuzz` keeps crashes that way.

#![no_main]

#[path = "../harness.rs"]
mod harness;

use harness::Spec;

fn decode(data: &[u8]) -> Option<Spec> {
    if data.first() == Some(&b'{') {
        if let Ok(spec) = serde_json::from_slice(data) {
            return Some(spec);
        }
    }
    arbitrary::Arbitrary::arbitrary_take_rest(arbitrary::Unstructured::new(data)).ok()
}

libfuzzer_sys::fuzz_target!(init: harness::fuzz_init(), |data: &[u8]| {
    let Some(spec) = decode(data) else { return };
    if let Some(path) = std::env::var_os("CORACLE_FUZZ_DUMP") {
        let json = serde_json::to_vec_pretty(&spec).expect("a spec serialises");
        std::fs::write(&path, json).expect("write CORACLE_FUZZ_DUMP");
    }
    harness::layer_structured(&harness::fuzz_sandbox(), &spec);
});
