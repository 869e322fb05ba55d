//! The fuzz targets' bodies over the checked-in corpus (`fuzz/corpus/<target>/`), so a
//! regression fails `cargo test` even without the fuzzer.
#![cfg(not(loom))]

mod fuzzing;
mod model;

use std::path::Path;

fn run(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        body(&data);
        inputs += 1;
    }
    assert!(inputs >= 16, "{target}: only {inputs} corpus inputs");
    eprintln!("{target}: {inputs} corpus inputs passed");
}

#[test]
fn bucket_vs_model() {
    run("bucket_vs_model", fuzzing::bucket_vs_model);
}

#[test]
fn keyed_vs_model() {
    run("keyed_vs_model", fuzzing::keyed_vs_model);
}

#[test]
fn limit_config() {
    run("limit_config", fuzzing::limit_config);
}

#[cfg(feature = "http")]
#[test]
fn http_input() {
    run("http_input", fuzzing::http_input);
}
