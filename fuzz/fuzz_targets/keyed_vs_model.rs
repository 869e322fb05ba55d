//! Fuzz target `keyed_vs_model`: the body lives in `tests/fuzzing/mod.rs`, shared with `cargo test`.
#![no_main]

#[allow(dead_code)]
#[path = "../../tests/model/mod.rs"]
mod model;
#[path = "../../tests/fuzzing/mod.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzzing::keyed_vs_model(data);
});
