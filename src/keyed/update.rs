//! Calls that give tokens back or read without taking: snapshots, refunds, grants, resets, and
//! the undo of an all-or-nothing call's take. None of them empties a bucket, so a key without a
//! bucket whose untouched bucket is full needs no entry.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use super::map::Probe;
use super::KeyedLimiter;
use crate::clock::Clock;
use crate::decision::Decision;
use crate::state::{self, Outcome};
use crate::steps::Steps;

impl<K: Hash + Eq, S: BuildHasher> KeyedLimiter<K, S> {
    /// Undoes a take of `n` tokens from `key` that `taken` granted under slot `slot` ([contract §2](crate::contract::bucket),
    /// undo versus refund; see `state::undo`). Under a slot no longer the key's (its limit
    /// changed since), or for a take the key cap answered, nothing comes back. A key whose
    /// bucket was evicted since was full meanwhile, so the undo's count of refill steps gives
    /// nothing back either.
    pub(crate) fn undo_key<Q>(&self, key: &Q, n: u64, taken: &Decision, slot: u32) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mark = taken.mark();
        self.update_key(key, n, Some(slot), move |s, w, k, n| {
            state::undo(s, w, k, n, mark)
        })
    }

    /// `key`'s bucket as it is now, consuming nothing and creating nothing (a key without a
    /// bucket is full). Because nothing is stored for a new key, a later call whose clock reads
    /// earlier than this one (a stale reading) sees a fresh bucket marked at its own step; for
    /// the exact peek of the contract, which records the new bucket, use
    /// `try_acquire_key(key, 0)`. The same holds for `refund_key`, `add_tokens_key` and `reset_key` on a key without a bucket.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_hour(5)?);
    /// assert_eq!(limiter.snapshot_key("new").remaining(), 5);
    /// assert!(limiter.is_empty());
    /// let _ = limiter.try_acquire_key("k", 2).unwrap();
    /// assert_eq!(limiter.snapshot_key("k").remaining(), 3);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn snapshot_key<Q>(&self, key: &Q) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.update_key(key, 0, None, state::add)
    }

    /// Gives `n` tokens back to `key`'s bucket (capped at the capacity).
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_hour(5)?);
    /// let _ = limiter.try_acquire_key(&1, 4).unwrap();
    /// assert_eq!(limiter.refund_key(&1, 3).remaining(), 4);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn refund_key<Q>(&self, key: &Q, n: u64) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.update_key(key, n, None, state::add)
    }

    /// Adds `n` tokens to `key`'s bucket (capped at the capacity).
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_hour(5)?);
    /// let _ = limiter.try_acquire_key(&1, 5).unwrap();
    /// assert_eq!(limiter.add_tokens_key(&1, 2).remaining(), 2);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn add_tokens_key<Q>(&self, key: &Q, n: u64) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.update_key(key, n, None, state::add)
    }

    /// Fills `key`'s bucket to its capacity.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_hour(5)?);
    /// let _ = limiter.try_acquire_key(&1, 5).unwrap();
    /// assert_eq!(limiter.reset_key(&1).remaining(), 5);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn reset_key<Q>(&self, key: &Q) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.update_key(key, 0, None, |s, w, k, _| state::reset(s, w, k))
    }

    /// Charges `n` tokens to `key`'s bucket after the fact, taking as many as there are (up to
    /// `n`) and refusing nothing: for a cost known only once the work is done (bytes sent,
    /// tokens a model generated). The decision is allowed and shows what is left: 0 when the
    /// charge took more than there was, so the key's next requests wait for the refill. A new
    /// key at the key cap is charged on the shared overflow bucket that answers it
    /// ([`AtCapacity::Overflow`](crate::AtCapacity::Overflow)); under
    /// [`AtCapacity::Deny`](crate::AtCapacity::Deny) it is denied anyway.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_hour(100)?);
    /// assert_eq!(limiter.charge_key("alice", 30).remaining(), 70);
    /// assert_eq!(limiter.charge_key("alice", 500).remaining(), 0); // all there was
    /// assert!(limiter.check_key("alice").is_denied());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn charge_key<Q>(&self, key: &Q, n: u64) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.update_key(key, n, None, state::drain)
    }

    /// Applies `op` to `key`'s bucket. When `op` never empties a bucket (it adds or fills), a
    /// key without a bucket (or one being evicted) whose untouched bucket is full is full
    /// before and after: the answer is computed on a full word and nothing is inserted. (Only
    /// after a change that raised the capacity with [`Inherit::Keep`](crate::Inherit::Keep) is
    /// an untouched bucket not full for a while; then the key's bucket is created first, by an
    /// exact peek.) An `op` that takes (`drain`, with `n > 0`) always needs the bucket: it is
    /// created first, unless the key cap refuses it. With `only`, `op` gets `n` only for an
    /// entry under that slot, and 0 otherwise.
    fn update_key<Q>(
        &self,
        key: &Q,
        n: u64,
        only: Option<u32>,
        op: impl Fn(&Steps, u64, u64, u64) -> Outcome + Copy,
    ) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = self.clock.now();
        let (hash, shard) = self.shard_of(key);
        let probe = Probe { hash, key };
        let pinned = shard.map.pin();
        let mut inserted = false;
        loop {
            if let Some(entry) = self.entry(&pinned, &probe) {
                let under = &entry.slot;
                let n = if only.is_none_or(|s| s == under.id) {
                    n
                } else {
                    0
                };
                if let Some(d) = entry.cell.update(under.steps(), now, self.epoch, n, op) {
                    return d;
                }
                self.dead(&pinned, &probe, &entry.cell);
                continue;
            }
            let under = self.current_slot(self.tier_of(&key.to_owned()));
            let k = under.steps().step_index(now.saturating_sub(self.epoch));
            let (tokens, _) = under.fresh(k);
            let out = op(under.steps(), under.fresh_word(k), k, n);
            if (tokens == under.steps().cap && out.tokens == tokens) || inserted {
                return Decision::new(under.steps(), &out, 0, now, self.epoch);
            }
            // Not full, or the op takes: the change must be recorded, so create the bucket (an
            // exact peek) and go again; a bucket evicted meanwhile is created again. At the key
            // cap nothing is created and the answer is computed as above.
            if let super::first_touch::Touch::Full(_) =
                self.first_touch(shard, &pinned, &probe, 0, now)
            {
                if out.tokens < tokens && self.at_capacity == super::AtCapacity::Overflow {
                    // A new key at the key cap draws on the shared overflow bucket: a charge
                    // after the fact goes there.
                    return self.overflow.with(|b| b.update(n, op));
                }
                inserted = true;
            }
        }
    }
}
