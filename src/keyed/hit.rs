//! The hit path: hash the key once, pick its shard, look it up under a pinned guard, and run
//! the bucket's own CAS loop on the cell in place (no allocation, no map write). A miss goes to
//! [`first_touch`](super::first_touch); a dead cell (tombstone or seal) is helped along and the
//! key looked up again.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use super::first_touch::Touch;
use super::map::{Entry, Pinned, Probe};
use super::slots::NO_SLOT;
use super::KeyedLimiter;
use crate::cell::Cell;
use crate::clock::Clock;
use crate::decision::{Decision, InsufficientCapacity};
use crate::steps::TOMBSTONE;

impl<K: Hash + Eq, S: BuildHasher> KeyedLimiter<K, S> {
    /// Takes one token from `key`'s bucket (creating a full one on first sight).
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_second(1)?);
    /// assert!(limiter.check_key(&42).is_allowed());
    /// assert!(limiter.check_key(&42).is_denied());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    #[inline]
    pub fn check_key<Q>(&self, key: &Q) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.try_acquire_key(key, 1) {
            Ok(d) => d,
            Err(_) => unreachable!("capacity is at least 1"),
        }
    }

    /// Takes `n` tokens from `key`'s bucket if they are there (`n == 0`: a peek). A `String`
    /// keyed limiter is queried with `&str`; a hit allocates nothing.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_second(10)?);
    /// let d = limiter.try_acquire_key("api-key-1", 4).unwrap();
    /// assert_eq!(d.remaining(), 6);
    /// assert!(limiter.try_acquire_key("api-key-1", 11).is_err());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`InsufficientCapacity`] when `n` exceeds the capacity. Nothing changes (no bucket is
    /// created).
    #[inline]
    pub fn try_acquire_key<Q>(&self, key: &Q, n: u64) -> Result<Decision, InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let d = self.decide(key, n).map(|(d, _)| d);
        if let (Some(c), Ok(d)) = (&self.counters, &d) {
            c.decided(d.is_allowed());
        }
        d
    }

    /// `try_acquire_key` that also says under which limit slot the key's bucket decided: its
    /// (id, tier) ([`NO_SLOT`]: the key cap's answer, not the key's
    /// bucket), for a later [`undo_key`](KeyedLimiter::undo_key).
    pub(crate) fn take_key_tracked<Q>(
        &self,
        key: &Q,
        n: u64,
    ) -> Result<(Decision, (u32, u16)), InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let d = self.decide(key, n);
        if let (Some(c), Ok((d, _))) = (&self.counters, &d) {
            c.decided(d.is_allowed());
        }
        d
    }

    /// The contract's exact peek at `key` (as `try_acquire_key(key, 0)`) ahead of a request for `n`
    /// tokens, with the (id, tier) of the slot it was made under: counted in the stats only as
    /// the denial it foretells, if it does (a grant is counted by the take that follows).
    pub(crate) fn peek_for<Q>(
        &self,
        key: &Q,
        n: u64,
    ) -> Result<(Decision, (u32, u16)), InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (d, tag) = self.decide(key, 0)?;
        if let Some(c) = &self.counters {
            if d.remaining() < n && n <= d.capacity() {
                c.decided(false);
            }
        }
        Ok((d, tag))
    }

    /// One call on `key`: the decision, and the (id, tier) of the slot of the bucket that made
    /// it (id [`NO_SLOT`] when the key cap answered).
    #[inline(always)]
    fn decide<Q>(&self, key: &Q, n: u64) -> Result<(Decision, (u32, u16)), InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = self.clock.now();
        let (hash, shard) = self.shard_of(key);
        let probe = Probe { hash, key };
        let pinned = shard.map.pin();
        loop {
            let entry = match pinned.get(&probe) {
                Some(found) => found,
                None => match self.first_touch(shard, &pinned, &probe, n, now) {
                    Touch::Inserted(d, tag) => return Ok((d, tag)),
                    Touch::Existing => continue,
                    Touch::Full(slot) => {
                        return Ok((self.at_capacity(&slot, n, now), (NO_SLOT, u16::MAX)))
                    }
                    Touch::TooMany(e) => return Err(e),
                },
            };
            // `entry` by hand: through the helper this path measured 8 instructions more per
            // call (callgrind, 1,000,000 hits).
            let under = &*entry.slot;
            if under.is_replaced() {
                self.migrate(&pinned, &probe, entry);
                continue;
            }
            if n > under.steps().cap {
                return Err(InsufficientCapacity {
                    requested: n,
                    capacity: under.steps().cap,
                });
            }
            if let Some(d) = entry.cell.acquire(under.steps(), n, now, self.epoch) {
                return Ok((d, under.tag()));
            }
            self.dead(&pinned, &probe, &entry.cell);
        }
    }

    /// The key's entry under the limit in force (an entry under a replaced slot is moved over
    /// first). `None` when the key has no entry. (`decide` does the same inline.)
    #[inline]
    pub(super) fn entry<'p, Q>(
        &self,
        pinned: &'p Pinned<'_, K>,
        probe: &Probe<'_, Q>,
    ) -> Option<&'p Entry>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        loop {
            let entry = pinned.get(probe)?;
            if !entry.slot.is_replaced() {
                return Some(entry);
            }
            self.migrate(pinned, probe, entry);
        }
    }

    /// A call met a dead cell: a tombstone (the bucket is being evicted: help remove it) or a
    /// seal (another call is moving the bucket to a new limit: let it finish). The caller then
    /// looks the key up again.
    #[cold]
    #[inline(never)]
    pub(super) fn dead<Q>(&self, pinned: &Pinned<'_, K>, probe: &Probe<'_, Q>, cell: &Cell)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if cell.load() == TOMBSTONE {
            if pinned.remove_tombstoned(probe) {
                self.removed(1);
            }
        } else {
            crate::sync::yield_now();
        }
    }
}
