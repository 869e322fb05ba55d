//! The limits keys can be under (*slots*): the tiers first, then one per live limit change, in
//! one append-only [`Limits`](crate::limits::Limits) list. Each slot holds its limit, its untouched bucket (what the
//! changes made of a bucket no call touched) and, once replaced, the change that replaced it.

use super::KeyedLimiter;
use crate::clock::Clock;
use crate::limit::{Inherit, Limit};
use crate::limits::MAX_LIMITS;
use crate::state;
use crate::steps::Steps;
use crate::sync::{AtomicUsize, OnceLock, Ordering};
use crate::TooManyReconfigurations;

/// Why [`KeyedLimiter::set_tier_limit`] did not change a limit (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetLimitError {
    /// The limiter has no tier `tier` (it has `tiers`: 0 ..= `tiers - 1`).
    UnknownTier {
        /// The tier asked for.
        tier: usize,
        /// How many tiers the limiter has.
        tiers: usize,
    },
    /// The limiter already holds its 256 limits: its tiers plus every change so far.
    TooManyReconfigurations,
}

impl std::fmt::Display for SetLimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetLimitError::UnknownTier { tier, tiers } => {
                write!(f, "no tier {tier}: this limiter has {tiers} tier(s)")
            }
            SetLimitError::TooManyReconfigurations => write!(
                f,
                "this limiter already holds {MAX_LIMITS} limits (its tiers and every change); \
                 build a new limiter"
            ),
        }
    }
}

impl std::error::Error for SetLimitError {}

/// One limit keys can be under (a slot): a tier's limit, or the limit a change gave a tier.
pub(super) struct Slot {
    pub(super) limit: Limit,
    /// The tier whose limit this is.
    pub(super) tier: usize,
    /// Steps a full bucket must have been idle before it may be evicted.
    pub(super) idle_steps: u64,
    /// The bucket of a key no call has touched: `fresh_tokens` at step `fresh_mark`, refilling
    /// from there. Full from the epoch for a tier's first limit; after a change, what the
    /// change made of the previous slot's untouched bucket (so a key seen for the first time
    /// and a key whose bucket was evicted are the same as one kept all along).
    fresh_tokens: u64,
    fresh_mark: u64,
    /// The first step at which the untouched bucket is full; eviction waits for it.
    full_from: u64,
    /// 0 while in force; `s + 1` once a change replaced this slot by slot `s`.
    pub(super) replaced_by: AtomicUsize,
    /// That change: its time (nanoseconds since the epoch) and policy. Set before
    /// `replaced_by`.
    pub(super) change: OnceLock<(u64, Inherit)>,
}

impl Slot {
    /// The limit's arithmetic (kept in the limit; no copy).
    #[inline(always)]
    pub(super) fn steps(&self) -> &Steps {
        self.limit.steps()
    }

    pub(super) fn new(limit: Limit, tier: usize, ttl_ns: u64, fresh: Option<(u64, u64)>) -> Slot {
        let steps = *limit.steps();
        let (fresh_tokens, fresh_mark) = fresh.unwrap_or((steps.cap, 0));
        Slot {
            limit,
            tier,
            idle_steps: steps.step_index(ttl_ns).saturating_add(2),
            fresh_tokens,
            fresh_mark,
            full_from: fresh_mark
                .saturating_add((steps.cap - fresh_tokens.min(steps.cap)).div_ceil(steps.q)),
            replaced_by: AtomicUsize::new(0),
            change: OnceLock::new(),
        }
    }

    /// Whether a change replaced this slot (its entries move to the next one on access).
    #[inline(always)]
    pub(super) fn is_replaced(&self) -> bool {
        // Acquire: pairs with the Release in `set_tier_limit`, so `change` and the next slot
        // are seen.
        self.replaced_by.load(Ordering::Acquire) != 0
    }

    /// The untouched bucket at step `k`: (tokens, mark).
    #[inline]
    pub(super) fn fresh(&self, k: u64) -> (u64, u64) {
        if k >= self.full_from {
            (self.steps().cap, k.max(self.fresh_mark))
        } else if k <= self.fresh_mark {
            (self.fresh_tokens, self.fresh_mark)
        } else {
            // Below `full_from`: fewer than C tokens, no overflow.
            (
                self.fresh_tokens + (k - self.fresh_mark) * self.steps().q,
                k,
            )
        }
    }

    /// The untouched bucket at step `k`, packed.
    #[inline]
    pub(super) fn fresh_word(&self, k: u64) -> u64 {
        let (tokens, mark) = self.fresh(k);
        self.steps().word(tokens, mark)
    }

    /// Whether a bucket holding `word` may be evicted at step `k`: idle and full long enough,
    /// and the untouched bucket is full by then too (so the two are the same).
    pub(super) fn is_evictable(&self, word: u64, k: u64) -> bool {
        self.steps().is_evictable(word, k, self.idle_steps) && k - self.idle_steps >= self.full_from
    }
}

/// Limits, and their live changes.
impl<K, S> KeyedLimiter<K, S> {
    /// Slot `i` (a tier's limit, or one a change gave it).
    #[inline(always)]
    pub(super) fn slot(&self, i: usize) -> &Slot {
        self.slots.get(i)
    }

    /// The slot in force for tier `tier`.
    #[inline]
    pub(super) fn current_slot(&self, tier: usize) -> usize {
        // Acquire: pairs with the Release in `set_tier_limit`, so the slot is seen.
        self.current[tier].load(Ordering::Acquire)
    }

    /// The tier of the limit slot `slot` (`None` for `usize::MAX`: the key cap's answer).
    #[cfg(feature = "http")]
    pub(crate) fn tier_of_slot(&self, slot: usize) -> Option<usize> {
        (slot != usize::MAX).then(|| self.slot(slot).tier)
    }

    /// The limit of tier 0 (every key's, without tiers) now.
    pub fn limit(&self) -> &Limit {
        &self.slot(self.current_slot(0)).limit
    }

    /// The limit of tier `tier` now; `None` when there is no such tier.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u32> = KeyedLimiter::builder(Limit::per_second(1)?)
    ///     .tiers([Limit::per_second(100)?], |id: &u32| usize::from(*id >= 1_000))
    ///     .build();
    /// assert_eq!(limiter.tier_limit(1).unwrap().capacity(), 100);
    /// assert!(limiter.tier_limit(2).is_none());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn tier_limit(&self, tier: usize) -> Option<&Limit> {
        (tier < self.current.len()).then(|| &self.slot(self.current_slot(tier)).limit)
    }

    /// Replaces tier 0's limit (every key's, without tiers) while calls go on; see
    /// [`set_tier_limit`](KeyedLimiter::set_tier_limit).
    ///
    /// ```
    /// use tollgate::{Inherit, KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_minute(10)?);
    /// let _ = limiter.try_acquire_key("alice", 4).unwrap(); // 6 left of 10
    /// limiter.set_limit(Limit::per_minute(100)?, Inherit::Proportional).unwrap();
    /// assert_eq!(limiter.snapshot_key("alice").remaining(), 60);
    /// assert_eq!(limiter.snapshot_key("bob").remaining(), 100); // untouched: full
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`TooManyReconfigurations`] when the limiter already holds its 256 limits (its tiers
    /// plus every change so far); nothing changes.
    pub fn set_limit(&self, limit: Limit, inherit: Inherit) -> Result<(), TooManyReconfigurations> {
        self.set_tier_limit(0, limit, inherit)
            .map_err(|_| TooManyReconfigurations)
    }

    /// Replaces tier `tier`'s limit while calls go on, atomically per key: every call on a key
    /// is decided wholly under the old limit or wholly under the new one, and each bucket's
    /// tokens carry over as `inherit` says, as if [`TokenBucket::set_limit`](crate::TokenBucket::set_limit) had been called on
    /// every bucket of the tier at once. Refills under the new limit count from the step of
    /// this call.
    ///
    /// The work is lazy and O(1) here: each key's bucket moves to the new limit the next time
    /// a call touches it (or a sweep looks at it), converted as of the change's time; calls on
    /// that one key wait while it moves (a copy of the key and one map insert). The hot path
    /// pays one extra load of a read-mostly flag. Eviction stays invisible: a key
    /// seen for the first time after the change gets what the change made of an untouched
    /// bucket. That is a full bucket, except after raising the capacity with
    /// [`Inherit::Keep`]: then an untouched bucket keeps the old capacity's tokens and refills
    /// from there, exactly like a bucket that was full at the change.
    ///
    /// Setting the limit already in force with [`Inherit::Keep`] or [`Inherit::Proportional`]
    /// changes nothing and does not count. Otherwise each change takes one of the limiter's 256
    /// limit slots (its tiers take the first ones) for the limiter's life: replaced limits are
    /// kept (at most 256 bytes each) because entries may still name them. The HTTP layer's
    /// `RateLimit-Policy` follows: each response describes the limit its decision was made
    /// under.
    ///
    /// ```
    /// use tollgate::{Inherit, KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u32> = KeyedLimiter::builder(Limit::per_minute(10)?)
    ///     .tiers([Limit::per_minute(100)?], |id: &u32| usize::from(*id >= 1_000))
    ///     .build();
    /// let _ = limiter.try_acquire_key(&1_001, 30).unwrap(); // a pro key: 70 left of 100
    /// limiter.set_tier_limit(1, Limit::per_minute(50)?, Inherit::Keep).unwrap();
    /// assert_eq!(limiter.snapshot_key(&1_001).remaining(), 50); // capped at the new capacity
    /// assert_eq!(limiter.snapshot_key(&1).remaining(), 10); // tier 0 unchanged
    /// assert!(limiter.set_tier_limit(2, Limit::per_minute(1)?, Inherit::Keep).is_err());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`SetLimitError::UnknownTier`] for a tier the limiter does not have;
    /// [`SetLimitError::TooManyReconfigurations`] when it already holds its 256 limits. Nothing
    /// changes either way.
    pub fn set_tier_limit(
        &self,
        tier: usize,
        limit: Limit,
        inherit: Inherit,
    ) -> Result<(), SetLimitError> {
        if tier >= self.current.len() {
            return Err(SetLimitError::UnknownTier {
                tier,
                tiers: self.current.len(),
            });
        }
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let (used, last) = *changes;
        let slot = self.current_slot(tier);
        let old = self.slot(slot);
        if limit == old.limit && inherit != Inherit::Reset {
            return Ok(());
        }
        if used >= MAX_LIMITS {
            return Err(SetLimitError::TooManyReconfigurations);
        }
        // Changes are ordered in time even if the clock steps back between them.
        let t = self.clock.now().saturating_sub(self.epoch).max(last);
        let (tokens, mark) = old.fresh(old.steps().step_index(t));
        let fresh = state::convert(old.steps(), tokens, mark, t, limit.steps(), inherit);
        let new = Box::new(Slot::new(
            limit,
            tier,
            u64::try_from(self.idle_ttl.as_nanos()).unwrap_or(u64::MAX),
            Some(fresh),
        ));
        if self.slots.set(used, new).is_err() {
            return Err(SetLimitError::TooManyReconfigurations);
        }
        let _ = old.change.set((t, inherit));
        // Release: publishes the new slot and the change with the mark; a call that sees the
        // mark moves its key's bucket over.
        old.replaced_by.store(used + 1, Ordering::Release);
        // Release: new keys of this tier go to the new slot; pairs with `current_slot`.
        self.current[tier].store(used, Ordering::Release);
        *changes = (used + 1, t);
        if tier == 0 {
            // At most 255 changes reach tier 0: the overflow bucket's own bound holds.
            let _ = self.overflow.set_limit(limit, inherit);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The size `set_tier_limit`'s docs give for a replaced limit.
    #[test]
    fn a_replaced_limit_costs_at_most_256_bytes() {
        assert!(std::mem::size_of::<super::Slot>() <= 256);
    }
}
