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

/// An `Arc` that can be swapped while others read it: `arc-swap`'s lock-free `ArcSwap` in
/// builds; under loom a mutex over the `Arc` (stronger: every load and store is ordered with
/// every other). The protocols need only that a load returns the last value stored before it
/// in the cell's order, with what was written before that store (Release/Acquire), which
/// `ArcSwap` gives.
#[cfg(not(loom))]
pub(crate) struct ArcCell<T>(arc_swap::ArcSwap<T>);

#[cfg(not(loom))]
impl<T> ArcCell<T> {
    pub(crate) fn new(value: std::sync::Arc<T>) -> Self {
        ArcCell(arc_swap::ArcSwap::new(value))
    }

    /// The value now (a reference count taken).
    #[inline]
    pub(crate) fn load(&self) -> std::sync::Arc<T> {
        self.0.load_full()
    }

    /// Runs `f` on the value now, without taking a reference count.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.load())
    }

    pub(crate) fn store(&self, value: std::sync::Arc<T>) {
        self.0.store(value);
    }
}

/// See the builds' `ArcCell`.
#[cfg(loom)]
pub(crate) struct ArcCell<T>(loom::sync::Mutex<std::sync::Arc<T>>);

#[cfg(loom)]
impl<T> ArcCell<T> {
    pub(crate) fn new(value: std::sync::Arc<T>) -> Self {
        ArcCell(loom::sync::Mutex::new(value))
    }

    pub(crate) fn load(&self) -> std::sync::Arc<T> {
        self.0.lock().unwrap().clone()
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let value = self.load();
        f(&value)
    }

    pub(crate) fn store(&self, value: std::sync::Arc<T>) {
        *self.0.lock().unwrap() = value;
    }
}

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

    pub(crate) fn take(&mut self) -> Option<T> {
        // Relaxed: `&mut self`, no other thread can look.
        self.set.store(false, Ordering::Relaxed);
        self.value.take()
    }

    pub(crate) fn get_or_init(&self, f: impl FnOnce() -> T) -> &T {
        if self.get().is_none() {
            let _ = self.set(f());
        }
        self.get().expect("set above")
    }
}
