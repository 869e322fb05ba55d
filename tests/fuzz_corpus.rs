//! The fuzz targets' bodies over the checked-in corpus (`fuzz/corpus/<target>/`), so a
//! regression fails `cargo test` even without the fuzzer. The published crate has no `fuzz/`
//! (it is a crate of its own); there these tests say so and pass. In the repository a missing
//! corpus fails.
#![cfg(not(loom))]

mod fuzzing;
mod model;

use std::path::Path;

/// Whether this is the repository (with `fuzz/`) rather than the packaged crate.
fn has_fuzz_dir() -> bool {
    let present = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").is_dir();
    if !present {
        eprintln!("no fuzz/ directory (the packaged crate): corpus replay skipped");
    }
    present
}

/// Runs `body` over every corpus input of `target`; returns the sum of what it returned.
fn run(target: &str, body: impl Fn(&[u8]) -> usize) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let (mut inputs, mut total) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        total += body(&data);
        inputs += 1;
    }
    assert!(inputs >= 16, "{target}: only {inputs} corpus inputs");
    eprintln!("{target}: {inputs} corpus inputs passed");
    total
}

/// A differential target over its corpus must compare decisions, not just run: at least one
/// per input on average.
fn run_differential(target: &str, body: fn(&[u8]) -> usize) {
    if !has_fuzz_dir() {
        return;
    }
    let inputs = std::fs::read_dir(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target),
    )
    .map_or(0, Iterator::count);
    let compared = run(target, body);
    assert!(
        compared >= inputs,
        "{target}: {compared} decisions compared over {inputs} inputs"
    );
    eprintln!("{target}: {compared} decisions compared");
}

#[test]
fn bucket_vs_model() {
    run_differential("bucket_vs_model", fuzzing::bucket_vs_model);
}

#[test]
fn keyed_vs_model() {
    run_differential("keyed_vs_model", fuzzing::keyed_vs_model);
}

#[test]
fn limit_config() {
    if !has_fuzz_dir() {
        return;
    }
    run("limit_config", |data| {
        fuzzing::limit_config(data);
        0
    });
}

#[cfg(feature = "http")]
#[test]
fn http_input() {
    if !has_fuzz_dir() {
        return;
    }
    run("http_input", |data| {
        fuzzing::http_input(data);
        0
    });
}
