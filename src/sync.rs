//! The one place that picks the atomics: loom's under `--cfg loom`, std's otherwise.
//!
//! Every atomic the crate's protocols depend on comes from here, so the loom models in
//! `tests/loom.rs` explore the same code that ships.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
