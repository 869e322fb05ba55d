//! The one place that picks the atomics: loom's under `--cfg loom`, std's otherwise.
//!
//! Every atomic the crate's protocols depend on comes from here, so the loom models in
//! `tests/loom.rs` explore the same code that ships.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Lets another thread run while this one waits for it (loom needs to see the wait).
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}
