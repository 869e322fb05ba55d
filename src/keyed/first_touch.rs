//! First touch: a key without an entry gets its slot's untouched bucket, at the step of a clock
//! reading taken after the miss, already charged with the call's tokens; racing first touches
//! create one bucket. Also the key cap: counting keys, and what a new key gets at the cap.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use std::sync::Arc;

use super::map::{Entry, Hashed, Pinned, Probe};
use super::slots::Slot;
use super::sweep::MIN_SWEEP_EVERY;
use super::{KeyedLimiter, Shard};
use crate::cell::Cell;
use crate::clock::Clock;
use crate::decision::{Decision, InsufficientCapacity};
use crate::state;
use crate::sync::Ordering;

/// Inserts into a shard between two hand-overs of its retired memory to the collector.
const FLUSH_EVERY: usize = 1024;

/// What a keyed limiter does with a new key when it already holds `max_keys` keys (and a sweep
/// of the key's shard found nothing to evict).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AtCapacity {
    /// New keys draw from one shared overflow bucket with the same limit. A flood of new keys
    /// (random user ids, spoofed IPs) shares one bucket's worth of tokens; existing keys are
    /// unaffected. The default.
    #[default]
    Overflow,
    /// New keys are denied, as if their bucket were empty (`retry_after` is the time for the
    /// requested tokens to arrive in an empty bucket).
    Deny,
}

/// What a first touch found.
pub(super) enum Touch {
    /// This call inserted the key's bucket, already charged with its request, under the slot
    /// with this (id, tier).
    Inserted(Decision, (u32, u16)),
    /// The key was there (another thread inserted it): look it up again.
    Existing,
    /// No room: the key cap is reached (the key's slot, for the answer).
    Full(Arc<Slot>),
    /// More tokens than the key's tier holds.
    TooMany(InsufficientCapacity),
}

impl<K: Hash + Eq, S: BuildHasher> KeyedLimiter<K, S> {
    /// A miss: maybe sweep the shard, then insert the key's bucket: its slot's untouched bucket
    /// at the step of `now`, already charged with this call's `n` tokens (inserting it
    /// publishes the acquisition, so no CAS follows).
    #[cold]
    pub(super) fn first_touch<Q>(
        &self,
        shard: &Shard<K>,
        pinned: &Pinned<'_, K>,
        probe: &Probe<'_, Q>,
        n: u64,
        now: u64,
    ) -> Touch
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        // A reading taken now, after the miss (contract §3, stale readings). The caller's `now` may
        // be from before a sweep that evicted this key's bucket (the call was preempted between
        // its clock read and its lookup); a fresh bucket at that old step would refill again
        // steps the evicted one had already refilled. The sweep read its clock before its
        // removal, which this miss observed (papaya's removal stores with Release, its lookups
        // load with Acquire; the stand-in map locks), so this reading is at least the sweep's:
        // the new bucket starts at or after the step from which the evicted one was full, where
        // the two are the same. The call is then decided at this later reading, as a
        // never-evicting limiter would decide a call that read the clock now.
        let now = now.max(self.clock.now());
        // The owned key is needed early only to pick a tier; otherwise only to insert.
        let (under, key) = match self.tier_of {
            None => (self.current_slot(0), None),
            Some(_) => {
                let key = probe.key.to_owned();
                (self.current_slot(self.tier_of(&key)), Some(key))
            }
        };
        if n > under.steps().cap {
            return Touch::TooMany(InsufficientCapacity {
                requested: n,
                capacity: under.steps().cap,
            });
        }
        // Relaxed (all counters here): they pace sweeps and bound the key count; they publish
        // no memory, and the count's bound is kept by the read-modify-writes themselves.
        let len = pinned.len();
        let due = shard.next_sweep.load(Ordering::Relaxed);
        // Claimed by one caller (the others see `usize::MAX` until the sweep sets the next
        // mark), so a flood of new keys does not sweep one shard many times at once.
        if len >= due
            && !self.swept_in_background(now)
            && shard
                .next_sweep
                .compare_exchange(due, usize::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(shard, pinned, now);
        }
        let capped = self.max_keys != usize::MAX;
        if capped && !self.reserve(shard, pinned, now) {
            // The key may have been inserted meanwhile by another thread.
            return match pinned.get(probe) {
                Some(_) => Touch::Existing,
                None => Touch::Full(under),
            };
        }
        let k = under.steps().step_index(now.saturating_sub(self.epoch));
        let fresh = under.fresh_word(k);
        let out = state::step(under.steps(), fresh, k, n);
        let key = key.unwrap_or_else(|| probe.key.to_owned());
        let stored = Hashed::new(probe.hash, key);
        let decision = Decision::new(under.steps(), &out, n, now, self.epoch);
        let tag = under.tag();
        match pinned.try_insert_with(stored, || Entry {
            cell: Cell::new(out.write.unwrap_or(fresh)),
            slot: under,
        }) {
            Ok(_) => {
                if (len + 1).is_multiple_of(FLUSH_EVERY) {
                    // Growing: let old tables from finished resizes be freed promptly.
                    pinned.flush();
                }
                Touch::Inserted(decision, tag)
            }
            Err(_) => {
                if capped {
                    self.keys.fetch_sub(1, Ordering::Relaxed);
                }
                Touch::Existing
            }
        }
    }

    /// Reserves room for one more key under the cap. At the cap the key's shard is swept first
    /// when an eighth of its size in refused keys, or a quarter of `idle_ttl`, has gone by since
    /// its last sweep (amortized O(1) per attempt under a flood).
    fn reserve(&self, shard: &Shard<K>, pinned: &Pinned<'_, K>, now: u64) -> bool {
        if self.count_key() {
            return true;
        }
        let misses = shard.misses.fetch_add(1, Ordering::Relaxed) + 1;
        let every = (pinned.len() / 8).max(MIN_SWEEP_EVERY);
        let since = shard.swept_at.load(Ordering::Relaxed);
        let k = self.step_now(now);
        if misses < every && k < since.saturating_add(self.pace_idle_steps / 4 + 1) {
            return false;
        }
        self.sweep(shard, pinned, now);
        self.count_key()
    }

    /// Counts one more key if the cap allows it.
    fn count_key(&self) -> bool {
        // Relaxed: as in `first_touch`.
        if self.keys.fetch_add(1, Ordering::Relaxed) < self.max_keys {
            return true;
        }
        self.keys.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// The answer for a new key under `slot` at the key cap.
    #[cold]
    pub(super) fn at_capacity(&self, slot: &Slot, n: u64, now: u64) -> Decision {
        if self.at_capacity == AtCapacity::Overflow {
            if let Ok(d) = self.overflow.with(|b| b.take_at(n, now)) {
                return d;
            }
        }
        // Deny (or more than the overflow bucket holds): as from an empty bucket of the key's
        // own limit.
        let steps = slot.steps();
        let k = steps.step_index(now.saturating_sub(self.epoch));
        let out = state::step(steps, steps.empty(k), k, n.min(steps.cap));
        Decision::new(steps, &out, n, now, self.epoch)
    }
}
