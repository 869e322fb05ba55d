//! Counters of what a limiter decided: allowed, denied, evicted. Sharded, so threads counting
//! at once mostly touch their own cache lines.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// What a limiter has decided since it was built. From
/// [`KeyedLimiter::stats`](crate::KeyedLimiter::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls granted.
    pub allowed: u64,
    /// Calls denied.
    pub denied: u64,
    /// Buckets evicted (idle and full).
    pub evicted: u64,
}

#[derive(Default)]
struct Slot {
    allowed: AtomicU64,
    denied: AtomicU64,
    evicted: AtomicU64,
}

/// Sharded counters: one cache-padded slot per thread (modulo the slot count).
pub(crate) struct Counters {
    slots: Box<[CachePadded<Slot>]>,
    mask: usize,
}

/// The slot index of this thread: threads are numbered as they first count.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // Relaxed: a unique number is all that is needed.
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}

impl Counters {
    pub(crate) fn new() -> Counters {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = (cores * 2).next_power_of_two();
        Counters {
            slots: (0..n).map(|_| CachePadded::new(Slot::default())).collect(),
            mask: n - 1,
        }
    }

    #[inline]
    fn slot(&self) -> &Slot {
        &self.slots[thread_index() & self.mask]
    }

    /// Counts one decision.
    #[inline]
    pub(crate) fn decided(&self, allowed: bool) {
        let slot = self.slot();
        // Relaxed (all counters): counts, read as a snapshot; they order nothing.
        if allowed {
            slot.allowed.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.denied.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts evictions.
    pub(crate) fn evicted(&self, n: u64) {
        if n > 0 {
            // Relaxed: as in `decided`.
            self.slot().evicted.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The sums (a snapshot; counts racing with it may or may not be in it).
    pub(crate) fn read(&self) -> Stats {
        self.slots.iter().fold(Stats::default(), |s, slot| Stats {
            // Relaxed: as in `decided`.
            allowed: s.allowed + slot.allowed.load(Ordering::Relaxed),
            denied: s.denied + slot.denied.load(Ordering::Relaxed),
            evicted: s.evicted + slot.evicted.load(Ordering::Relaxed),
        })
    }
}

#[cfg(feature = "metrics")]
impl Stats {
    /// Publishes these counts to the `metrics` facade as counters `tollgate_allowed_total`,
    /// `tollgate_denied_total` and `tollgate_evicted_total`, labelled `limiter = name`. Call it
    /// on a timer (absolute values: repeated calls are fine).
    pub fn publish(&self, name: &str) {
        let label = name.to_string();
        metrics::counter!("tollgate_allowed_total", "limiter" => label.clone())
            .absolute(self.allowed);
        metrics::counter!("tollgate_denied_total", "limiter" => label.clone())
            .absolute(self.denied);
        metrics::counter!("tollgate_evicted_total", "limiter" => label).absolute(self.evicted);
    }
}
