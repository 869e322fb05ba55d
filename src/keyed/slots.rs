//! The limits keys can be under (*slots*): each tier's in force, and the ones live changes
//! replaced, for as long as an entry (or a call) still holds them. Each slot holds its limit,
//! its untouched bucket (what the changes made of a bucket no call touched) and, once
//! replaced, the change that replaced it and the slot it moved to.

use std::sync::Arc;

use super::KeyedLimiter;
use crate::bucket::TokenBucket;
use crate::clock::Clock;
use crate::limit::{Inherit, Limit};
use crate::state;
use crate::steps::Steps;
use crate::sync::OnceLock;

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
}

impl std::fmt::Display for SetLimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetLimitError::UnknownTier { tier, tiers } => {
                write!(f, "no tier {tier}: this limiter has {tiers} tier(s)")
            }
        }
    }
}

impl std::error::Error for SetLimitError {}

/// A live change: when, how tokens carry over, and the slot it moved the tier to.
pub(super) struct Change {
    pub(super) t: u64,
    pub(super) inherit: Inherit,
    pub(super) to: Arc<Slot>,
}

/// One limit keys can be under (a slot): a tier's limit, or the limit a change gave a tier.
pub(super) struct Slot {
    pub(super) limit: Limit,
    /// The tier whose limit this is.
    pub(super) tier: usize,
    /// This slot's number among the limiter's slots (wrapping; never [`NO_SLOT`]): what a
    /// decision records, so an undo can tell whether the key's bucket is still under it.
    pub(super) id: u32,
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
    /// Set once a change replaced this slot: its time (nanoseconds since the epoch), policy
    /// and the next slot. The next slot lives as long as this one: an entry under an old
    /// slot reaches the one in force through these links.
    pub(super) next: OnceLock<Change>,
}

/// A decision's slot id when no slot made it (the key cap's answer).
pub(crate) const NO_SLOT: u32 = u32::MAX;

impl Drop for Slot {
    /// Unlinks the chain of replaced slots one at a time: dropping a long chain recursively
    /// could overflow the stack.
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(change) = next {
            match Arc::try_unwrap(change.to) {
                Ok(mut slot) => next = slot.next.take(),
                Err(_) => break,
            }
        }
    }
}

impl Slot {
    /// The limit's arithmetic (kept in the limit; no copy).
    #[inline(always)]
    pub(super) fn steps(&self) -> &Steps {
        self.limit.steps()
    }

    pub(super) fn new(
        limit: Limit,
        tier: usize,
        id: u32,
        ttl_ns: u64,
        fresh: Option<(u64, u64)>,
    ) -> Slot {
        let steps = *limit.steps();
        let (fresh_tokens, fresh_mark) = fresh.unwrap_or((steps.cap, 0));
        Slot {
            limit,
            tier,
            id,
            idle_steps: steps.step_index(ttl_ns).saturating_add(2),
            fresh_tokens,
            fresh_mark,
            full_from: fresh_mark
                .saturating_add((steps.cap - fresh_tokens.min(steps.cap)).div_ceil(steps.q)),
            next: OnceLock::new(),
        }
    }

    /// Whether a change replaced this slot (its entries move to the next one on access).
    #[inline(always)]
    pub(super) fn is_replaced(&self) -> bool {
        // `OnceLock::get` loads with Acquire, pairing with the store of `set`: the change and
        // the next slot are seen.
        self.next.get().is_some()
    }

    /// The decision's record of this slot: (id, tier).
    #[inline(always)]
    pub(super) fn tag(&self) -> (u32, u16) {
        (self.id, u16::try_from(self.tier).unwrap_or(u16::MAX))
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

    /// Whether a bucket holding `word` (under this slot) may be evicted at step `k`: at
    /// `k0 = k - idle_steps` it is full and the same as the untouched bucket, tokens and mark.
    /// A call leaves its own step as the mark, so a bucket no call touched since `k0` has the
    /// mark `k0`, or the later one a limit change gave every bucket of the tier (the untouched
    /// bucket's too). From `k0` on the two refill alike, so replacing the bucket by the
    /// untouched one is invisible to any call whose clock reads at least `k0` (contract §3).
    /// Without changes this is "full since `k0`, mark `k0`"; with changes more often than
    /// `idle_ttl`, buckets full at the last change are evicted all the same.
    pub(super) fn is_evictable(&self, word: u64, k: u64) -> bool {
        if crate::steps::is_dead(word) || k < self.idle_steps {
            return false;
        }
        let k0 = k - self.idle_steps;
        let (tokens, mark, _) = self.steps().refill(word, k0);
        tokens == self.steps().cap && (tokens, mark) == self.fresh(k0)
    }
}

/// Limits, and their live changes.
impl<K, S> KeyedLimiter<K, S> {
    /// The slot in force for tier `tier` (a reference count taken: for an entry to hold).
    #[inline]
    pub(super) fn current_slot(&self, tier: usize) -> Arc<Slot> {
        self.current[tier].load()
    }

    /// The tier of a decision's slot record (`None`: the key cap answered).
    #[cfg(feature = "http")]
    pub(crate) fn tier_of_tag(tier: u16) -> Option<usize> {
        (tier != u16::MAX).then_some(usize::from(tier))
    }

    /// The limit of tier 0 (every key's, without tiers) now.
    pub fn limit(&self) -> Limit {
        self.current[0].with(|slot| slot.limit)
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
    pub fn tier_limit(&self, tier: usize) -> Option<Limit> {
        self.current.get(tier).map(|c| c.with(|slot| slot.limit))
    }

    /// Replaces tier 0's limit (every key's, without tiers) while calls go on; see
    /// [`set_tier_limit`](KeyedLimiter::set_tier_limit).
    ///
    /// ```
    /// use tollgate::{Inherit, KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_minute(10)?);
    /// let _ = limiter.try_acquire_key("alice", 4).unwrap(); // 6 left of 10
    /// limiter.set_limit(Limit::per_minute(100)?, Inherit::Proportional);
    /// assert_eq!(limiter.snapshot_key("alice").remaining(), 60);
    /// assert_eq!(limiter.snapshot_key("bob").remaining(), 100); // untouched: full
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn set_limit(&self, limit: Limit, inherit: Inherit) {
        let _ = self.set_tier_limit(0, limit, inherit);
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
    /// Changes never run out: a replaced limit is kept (a few hundred bytes) only while a
    /// key's bucket, not yet moved, still holds it. A bucket moves on its next call; an
    /// untouched one is evicted by the first sweep after it is full again (a bucket a change
    /// left full is evicted at once). So the limits kept are those of the changes within about
    /// the limit's time to fill plus a sweep period: a handful for a limiter changed every
    /// second with a per-second or per-minute limit; up to one per change within a day for a
    /// per-day limit changed as often. Setting the limit already in force with
    /// [`Inherit::Keep`] or [`Inherit::Proportional`] changes nothing. The HTTP layer's
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
    /// [`SetLimitError::UnknownTier`] for a tier the limiter does not have (nothing changes).
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
        let (ids, last) = *changes;
        let old = self.current_slot(tier);
        if limit == old.limit && inherit != Inherit::Reset {
            return Ok(());
        }
        // Changes are ordered in time even if the clock steps back between them.
        let t = self.clock.now().saturating_sub(self.epoch).max(last);
        let (tokens, mark) = old.fresh(old.steps().step_index(t));
        let fresh = state::convert(old.steps(), tokens, mark, t, limit.steps(), inherit);
        let new = Arc::new(Slot::new(
            limit,
            tier,
            ids,
            u64::try_from(self.idle_ttl.as_nanos()).unwrap_or(u64::MAX),
            Some(fresh),
        ));
        // Publishes the new slot with the change (`OnceLock::set` stores with Release); a
        // call that sees the change moves its key's bucket over. Only this call (under the
        // lock) sets the tier's slot in force, so the link is set once.
        let _ = old.next.set(Change {
            t,
            inherit,
            to: new.clone(),
        });
        // New keys of this tier go to the new slot (the cell's store is Release, its loads
        // Acquire).
        self.current[tier].store(new);
        // Ids wrap, skipping `NO_SLOT`; an id comes back only after 2^32 - 1 changes.
        let next_id = ids.wrapping_add(1) % NO_SLOT;
        *changes = (next_id, t);
        if tier == 0 {
            self.overflow_follows(limit, inherit);
        }
        Ok(())
    }

    /// Tier 0's limit changed: the overflow bucket follows. A bucket allows
    /// [`MAX_RECONFIGURATIONS`](crate::MAX_RECONFIGURATIONS) changes; after those, a new
    /// bucket under the new limit takes its place, holding what the old one holds now
    /// converted by `inherit` (a take racing the swap on the old bucket is then not carried
    /// over: the overflow bucket is a shared fallback for keys beyond the cap).
    pub(super) fn overflow_follows(&self, limit: Limit, inherit: Inherit) {
        let old = self.overflow.load();
        if old.set_limit(limit, inherit).is_ok() {
            return;
        }
        let now = old.snapshot();
        let cap = limit.capacity();
        let tokens = match inherit {
            Inherit::Keep => now.remaining().min(cap),
            Inherit::Proportional => {
                (u128::from(now.remaining()) * u128::from(cap) / u128::from(now.capacity().max(1)))
                    as u64
            }
            Inherit::Reset => cap,
        };
        let new = TokenBucket::with_epoch(limit, self.clock.clone(), self.epoch);
        let _ = new.try_acquire(cap - tokens.min(cap));
        self.overflow.store(Arc::new(new));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn evictable_when_full_idle_and_the_same_as_untouched() {
        let limit = Limit::new(3, 1, Duration::from_nanos(10)).unwrap();
        let s = *limit.steps();
        // idle_ttl 40 ns: 4 steps, plus 2.
        let slot = Slot::new(limit, 0, 0, 40, None);
        let idle = slot.idle_steps;
        // Full at mark 10: evictable once `idle` steps have passed.
        assert!(!slot.is_evictable(s.full(10), 10 + idle - 1));
        assert!(slot.is_evictable(s.full(10), 10 + idle));
        // One token short at mark 10: full from step 11.
        assert!(!slot.is_evictable(s.pack(10, 2), 10 + idle));
        assert!(slot.is_evictable(s.pack(10, 2), 11 + idle));
        // A stale evictor (mark ahead) and a tombstone are never evicted.
        assert!(!slot.is_evictable(s.full(20), 15));
        assert!(!slot.is_evictable(crate::steps::TOMBSTONE, 100));
        // After a change at step 50 (full untouched bucket marked 50), a bucket the change
        // left full at mark 50 is the untouched one: evictable at once.
        let changed = Slot::new(limit, 0, 1, 40, Some((3, 50)));
        assert!(changed.is_evictable(s.full(50), 51));
        assert!(!changed.is_evictable(s.pack(50, 2), 51));
        // A Keep raise: the untouched bucket holds 1 of 3 from step 50, full from step 52.
        let raised = Slot::new(limit, 0, 2, 40, Some((1, 50)));
        assert!(
            !raised.is_evictable(s.full(50), 51),
            "not the untouched bucket"
        );
        assert!(!raised.is_evictable(s.full(52), 52 + idle - 1));
        assert!(raised.is_evictable(s.full(52), 52 + idle));
    }

    /// The size `set_tier_limit`'s docs give for a replaced limit.
    #[test]
    fn a_replaced_limit_costs_at_most_256_bytes() {
        // Plus the `Arc`'s two counts.
        assert!(std::mem::size_of::<super::Slot>() <= 256);
    }
}
