//! The one place that picks the atomics and locks: loom's under `--cfg loom`, std's otherwise.
//!
//! Every atomic, lock and once-cell the crate's protocols depend on comes from here, so the
//! loom models in `tests/loom.rs` explore the same code that ships. (The decision counters of
//! `stats.rs` and the coarse clock's upkeep are plain std atomics: they publish nothing a
//! protocol reads.)

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, OnceLock};

/// Lets another thread run while this one waits for it (loom needs to see the wait).
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// `std::sync::OnceLock` as loom sees it: the value lives in a std `OnceLock` (loom runs one
/// thread at a time, and no protocol initializes the same cell from two threads at once: every
/// `set` and `get_or_init` runs under a reconfiguration lock), and its publication is a loom
/// flag stored with Release and loaded with Acquire, so loom checks that whoever reads the
/// value is ordered after whoever wrote it, as std's `OnceLock` guarantees.
#[cfg(loom)]
pub(crate) struct OnceLock<T> {
    value: std::sync::OnceLock<T>,
    set: loom::sync::atomic::AtomicBool,
}

#[cfg(loom)]
impl<T> OnceLock<T> {
    pub(crate) fn new() -> Self {
        OnceLock {
            value: std::sync::OnceLock::new(),
            set: loom::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn get(&self) -> Option<&T> {
        // Acquire: pairs with the Release below.
        if self.set.load(Ordering::Acquire) {
            self.value.get()
        } else {
            None
        }
    }

    pub(crate) fn set(&self, value: T) -> Result<(), T> {
        self.value.set(value)?;
        // Release: publishes the value.
        self.set.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn get_or_init(&self, f: impl FnOnce() -> T) -> &T {
        if self.get().is_none() {
            let _ = self.set(f());
        }
        self.get().expect("set above")
    }
}
