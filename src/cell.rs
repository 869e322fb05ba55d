//! The atomic word of one bucket: a load, the pure step function, a compare-and-swap. The one
//! place that touches a bucket's `AtomicU64`, shared by [`TokenBucket`](crate::TokenBucket) and
//! the keyed limiter.

use crate::decision::Decision;
use crate::state::{self, Outcome};
use crate::steps::{self, Steps, SEALED, TOMBSTONE};
use crate::sync::{AtomicU64, Ordering};

/// The atomic word of one bucket, shared by [`TokenBucket`](crate::TokenBucket) and the keyed
/// limiter.
#[derive(Debug)]
pub(crate) struct Cell(AtomicU64);

impl Cell {
    /// A full bucket marked at step `k`.
    pub(crate) fn full(steps: &Steps, k: u64) -> Cell {
        Cell::new(steps.full(k))
    }

    /// A bucket holding `word`.
    pub(crate) fn new(word: u64) -> Cell {
        Cell(AtomicU64::new(word))
    }

    /// Refill to the step of clock reading `now` and try to take `n <= C` tokens. `None` when
    /// the cell is a tombstone or sealed (the caller looks the key up again). Lock-free: a failed CAS
    /// retries from the value it returned; a denial or a peek stores nothing unless it is the
    /// first to see a new step.
    #[inline(always)]
    pub(crate) fn acquire(&self, steps: &Steps, n: u64, now: u64, epoch: u64) -> Option<Decision> {
        // Relaxed: the word is self-contained (no other memory is published through it), and
        // all read-modify-writes of one location are totally ordered by coherence.
        let mut word = self.0.load(Ordering::Relaxed);
        let k = steps.step_index_near(now.saturating_sub(epoch), word);
        loop {
            if steps::is_dead(word) {
                return None;
            }
            let out = state::step(steps, word, k, n);
            let Some(new) = out.write else {
                return Some(Decision::new(steps, &out, n, now, epoch));
            };
            // Relaxed on both sides: as above; the CAS alone decides who consumed what.
            match self
                .0
                .compare_exchange_weak(word, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(Decision::new(steps, &out, n, now, epoch)),
                Err(seen) => word = seen,
            }
        }
    }

    /// Applies `op` (a pure step on the word) at the step of `now` with a CAS loop, like
    /// `acquire`. `None` on a tombstone or a seal.
    #[inline]
    pub(crate) fn update(
        &self,
        steps: &Steps,
        now: u64,
        epoch: u64,
        n: u64,
        op: impl Fn(&Steps, u64, u64, u64) -> Outcome,
    ) -> Option<Decision> {
        // Relaxed: as in `acquire`.
        let mut word = self.0.load(Ordering::Relaxed);
        let k = steps.step_index_near(now.saturating_sub(epoch), word);
        loop {
            if steps::is_dead(word) {
                return None;
            }
            let out = op(steps, word, k, n);
            let Some(new) = out.write else {
                return Some(Decision::new(steps, &out, 0, now, epoch));
            };
            // Relaxed: as in `acquire`.
            match self
                .0
                .compare_exchange_weak(word, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(Decision::new(steps, &out, 0, now, epoch)),
                Err(seen) => word = seen,
            }
        }
    }

    /// Sets the word of a cell nobody else can see yet.
    pub(crate) fn set(&self, word: u64) {
        // Relaxed: the cell is published afterwards by a Release store.
        self.0.store(word, Ordering::Relaxed);
    }

    /// Current word (for eviction checks).
    #[inline]
    pub(crate) fn load(&self) -> u64 {
        // Relaxed: a snapshot; eviction confirms it with a CAS.
        self.0.load(Ordering::Relaxed)
    }

    /// Replaces `expected` with the tombstone; false when the word changed meanwhile.
    pub(crate) fn tombstone(&self, expected: u64) -> bool {
        // Relaxed: the tombstone is seen through this word's own coherence order; the map
        // removal that follows is ordered by the map itself.
        self.0
            .compare_exchange(expected, TOMBSTONE, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Seals the word whatever it holds, and returns it (a bucket's limit change: a bucket
    /// outside a map is never a tombstone).
    pub(crate) fn seal_now(&self) -> u64 {
        // Relaxed: as for the tombstone; the new node is published by a Release store.
        self.0.swap(SEALED, Ordering::Relaxed)
    }

    /// Puts `word` back in place of the seal this thread set (a migration that unwound).
    pub(crate) fn unseal(&self, word: u64) {
        // Relaxed: as for the seal; only the sealing thread leaves the seal, so the word is
        // the one every other call waited to see again.
        let _ = self
            .0
            .compare_exchange(SEALED, word, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Replaces `expected` with the seal (the keyed limiter's migration to a new limit); false
    /// when the word changed meanwhile.
    pub(crate) fn seal(&self, expected: u64) -> bool {
        // Relaxed: as for the tombstone; the replacement entry is published by the map.
        self.0
            .compare_exchange(expected, SEALED, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}
