//! Eviction and bounded memory: sweeps of one shard (on new keys, paced so the work is
//! amortized O(1) per new key), full passes ([`KeyedLimiter::evict_idle`]), and their pacing
//! against a background evictor. A bucket is evicted only when full and idle long enough, by a
//! CAS to the tombstone from the word checked, then removal.

use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use super::map::Pinned;
use super::migrate::follow;
use super::slots::Slot;
use super::{KeyedLimiter, Shard};
use crate::clock::Clock;
use crate::steps;
use crate::sync::Ordering;

/// The least number of new-key attempts between two automatic sweeps of a shard.
pub(super) const MIN_SWEEP_EVERY: usize = 64;

impl<K: Hash + Eq, S: BuildHasher> KeyedLimiter<K, S> {
    /// Sweeps one shard at clock reading `now`; returns how many buckets it evicted.
    #[cold]
    pub(super) fn sweep(&self, shard: &Shard<K>, pinned: &Pinned<'_, K>, now: u64) -> usize {
        let t = now.saturating_sub(self.epoch);
        // The step of `now` under the last slot seen (entries of one slot are the common case).
        let mut step_of: (*const Slot, u64) = (std::ptr::null(), 0);
        let removed = pinned.sweep(|_, entry| {
            let word = entry.cell.load();
            if steps::is_dead(word) {
                return false;
            }
            // Judged under the limit in force (an entry under a replaced slot is converted).
            let (under, now_word) = follow(&entry.slot, word);
            if !std::ptr::eq(step_of.0, &**under) {
                step_of = (&**under, under.steps().step_index(t));
            }
            under.is_evictable(now_word, step_of.1) && entry.cell.tombstone(word)
        });
        self.removed(removed);
        if removed > 0 {
            // Removed entries hold their slots (and every slot since): let them go promptly.
            pinned.flush();
        }
        // Relaxed: pacing only.
        let left = pinned.len();
        shard
            .next_sweep
            .store((2 * left).max(left + MIN_SWEEP_EVERY), Ordering::Relaxed);
        shard.misses.store(0, Ordering::Relaxed);
        shard
            .swept_at
            .fetch_max(self.step_now(now), Ordering::Relaxed);
        removed
    }

    pub(super) fn removed(&self, n: usize) {
        if let Some(c) = &self.counters {
            c.evicted(n as u64);
        }
        if n > 0 && self.max_keys != usize::MAX {
            // Relaxed: a count, as in `first_touch`.
            self.keys.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// The step of clock reading `now` in tier 0's first limit (sweep pacing's).
    pub(super) fn step_now(&self, now: u64) -> u64 {
        self.pace.step_index(now.saturating_sub(self.epoch))
    }

    /// Evicts every idle full bucket now (a full pass over all shards); returns how many.
    /// Never needed for bounded memory (sweeps run automatically); useful before measuring,
    /// or on a timer (see [`spawn_evictor`](KeyedLimiter::spawn_evictor)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{KeyedLimiter, Limit, ManualClock};
    /// let clock = ManualClock::new();
    /// let limiter: KeyedLimiter<u32> = KeyedLimiter::builder(Limit::per_second(5)?)
    ///     .clock(clock.clone())
    ///     .idle_ttl(Duration::from_secs(10))
    ///     .build();
    /// let _ = limiter.check_key(&1);
    /// assert_eq!(limiter.evict_idle(), 0); // not idle yet
    /// clock.advance(Duration::from_secs(11));
    /// assert_eq!(limiter.evict_idle(), 1);
    /// assert!(limiter.is_empty());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now();
        let removed = self
            .shards
            .iter()
            .map(|shard| self.sweep(shard, &shard.map.pin(), now))
            .sum();
        // Relaxed: pacing only (see `swept_in_background`).
        self.evicted_at
            .store(self.clock.now().saturating_add(1), Ordering::Relaxed);
        removed
    }

    /// [`evict_idle`](KeyedLimiter::evict_idle) unless a full pass ended less than half an
    /// [`eviction_period`](KeyedLimiter::eviction_period) ago (several layers, or a layer and
    /// [`spawn_evictor`](KeyedLimiter::spawn_evictor), sharing one limiter then make one pass
    /// per period between them, not one each). Returns how many buckets it evicted.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn evict_idle_if_due(&self) -> usize {
        // Relaxed: pacing only.
        let at = self.evicted_at.load(Ordering::Relaxed);
        let half = u64::try_from(self.eviction_period().as_nanos() / 2).unwrap_or(u64::MAX);
        if at != 0 && self.clock.now().saturating_add(1).saturating_sub(at) < half {
            return 0;
        }
        self.evict_idle()
    }

    /// How often a background evictor should call [`evict_idle`](KeyedLimiter::evict_idle):
    /// half the `idle_ttl`, between 10 ms and 10 s. The HTTP layer runs one at this period.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_second(5)?)
    ///     .idle_ttl(Duration::from_secs(4))
    ///     .build();
    /// assert_eq!(limiter.eviction_period(), Duration::from_secs(2));
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn eviction_period(&self) -> Duration {
        (self.idle_ttl / 2).clamp(Duration::from_millis(10), Duration::from_secs(10))
    }

    /// Whether full passes ([`evict_idle`](KeyedLimiter::evict_idle)) have come recently enough
    /// (within two periods) that a new key need not sweep its shard on the request path: a
    /// background evictor is keeping memory bounded. When the passes stop, sweeps on new keys
    /// resume.
    pub(super) fn swept_in_background(&self, now: u64) -> bool {
        // Relaxed: pacing only.
        let at = self.evicted_at.load(Ordering::Relaxed);
        let window = u64::try_from(self.eviction_period().as_nanos() * 2).unwrap_or(u64::MAX);
        at != 0 && now.saturating_add(1).saturating_sub(at) <= window
    }
}
