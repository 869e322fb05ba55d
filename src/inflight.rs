//! Per-key in-flight (concurrency) limits: at most `max` permits per key at once, each held
//! for as long as its work runs (an LLM request, a download), released when dropped.
//!
//! # Protocol
//!
//! Each key has a counter (`Arc<AtomicU64>`) in a concurrent map.
//! - Acquire: find the key's counter (inserting a zero one for a new key), then one CAS loop:
//!   `c → c + 1` while `c < max`; `c ≥ max` is a refusal. The permit holds the counter.
//! - Release (the permit's drop): `fetch_sub(1)`. The entry stays.
//! - Sweep (when a new key finds the map at twice the size the last sweep left, or
//!   [`InFlightLimiter::sweep`]): an idle entry is retired by a CAS `0 → DEAD`, then removed
//!   only if the map still holds that very counter. No permit can exist on a `DEAD` counter
//!   (it was 0), and none can be taken from it: an acquire that meets `DEAD` helps remove the
//!   entry and looks the key up again, so it gets a fresh counter. Permits in flight hold
//!   their counters, never a map reference.
//!
//! Counts never exceed `max`: every change to a counter is an RMW on that one atomic, and a
//! key has one live counter at a time (a new one is inserted only once the old one is
//! `DEAD`, and so empty for good). The loom models in `tests/loom.rs` check this with a
//! stand-in map (loom cannot see inside papaya; see `keyed/map.rs` for what the stand-in
//! assumes).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::num::NonZeroU64;
use std::sync::Arc;

use crate::keyed::KeyHasher;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// A counter retired by a sweep: no permit is ever taken from it again.
const DEAD: u64 = u64::MAX;

/// At most `max` requests in flight per key: a concurrency limit, where a rate limit bounds
/// how many start per second. A permit is held while the work runs and released when dropped.
///
/// ```
/// use std::num::NonZeroU64;
/// use tollgate::InFlightLimiter;
///
/// let limiter: InFlightLimiter<String> = InFlightLimiter::new(NonZeroU64::new(2).unwrap());
/// let a = limiter.try_acquire("alice").unwrap();
/// let b = limiter.try_acquire("alice").unwrap();
/// let busy = limiter.try_acquire("alice").unwrap_err();
/// assert_eq!((busy.in_flight, busy.max), (2, 2));
/// assert!(limiter.try_acquire("bob").is_ok()); // keys are independent
/// drop(a); // the work ended
/// assert!(limiter.try_acquire("alice").is_ok());
/// # drop(b);
/// ```
pub struct InFlightLimiter<K, S = KeyHasher> {
    map: map::CounterMap<K, S>,
    max: u64,
    /// The map's size at which a new key sweeps it: twice what the last sweep left.
    next_sweep: AtomicUsize,
}

/// A request admitted by an [`InFlightLimiter`]; dropping it ends the request's turn.
#[must_use = "dropping the permit releases it at once"]
pub struct InFlightPermit {
    counter: Arc<AtomicU64>,
    in_flight: u64,
    max: u64,
}

/// The key already has `max` requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy {
    /// Requests in flight on the key when it was asked.
    pub in_flight: u64,
    /// The limit.
    pub max: u64,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of at most {} requests already in flight on this key",
            self.in_flight, self.max
        )
    }
}

impl std::error::Error for Busy {}

impl<K: Hash + Eq> InFlightLimiter<K> {
    /// At most `max` permits per key at once.
    ///
    /// ```
    /// use std::num::NonZeroU64;
    /// use tollgate::InFlightLimiter;
    /// let limiter: InFlightLimiter<u64> = InFlightLimiter::new(NonZeroU64::new(4).unwrap());
    /// assert_eq!(limiter.max(), 4);
    /// ```
    pub fn new(max: NonZeroU64) -> Self {
        Self::with_hasher(max, KeyHasher::default())
    }
}

impl<K: Hash + Eq, S: BuildHasher> InFlightLimiter<K, S> {
    /// [`new`](InFlightLimiter::new) with a hasher of your own.
    ///
    /// ```
    /// use std::num::NonZeroU64;
    /// use tollgate::{InFlightLimiter, KeyHasher};
    /// let limiter: InFlightLimiter<u64> =
    ///     InFlightLimiter::with_hasher(NonZeroU64::new(4).unwrap(), KeyHasher::default());
    /// # let _ = limiter;
    /// ```
    pub fn with_hasher(max: NonZeroU64, hasher: S) -> Self {
        InFlightLimiter {
            map: map::CounterMap::new(hasher),
            // DEAD is never a count.
            max: max.get().min(DEAD - 1),
            next_sweep: AtomicUsize::new(MIN_SWEEP),
        }
    }

    /// The most permits a key can hold at once.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// A permit for `key`, or [`Busy`] when `key` already has `max` in flight.
    ///
    /// ```
    /// use std::num::NonZeroU64;
    /// use tollgate::InFlightLimiter;
    /// let limiter: InFlightLimiter<u64> = InFlightLimiter::new(NonZeroU64::new(1).unwrap());
    /// let permit = limiter.try_acquire(&7).unwrap();
    /// assert_eq!((permit.in_flight(), permit.remaining()), (1, 0));
    /// assert!(limiter.try_acquire(&7).is_err());
    /// ```
    ///
    /// # Errors
    /// [`Busy`] when the key already holds `max` permits.
    pub fn try_acquire<Q>(&self, key: &Q) -> Result<InFlightPermit, Busy>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        loop {
            let counter = match self.map.get(key) {
                Some(counter) => counter,
                None => {
                    self.maybe_sweep();
                    self.map.get_or_insert(key)
                }
            };
            // Relaxed: the counter is the whole state of the protocol; its RMWs are totally
            // ordered, and it publishes no other memory.
            let mut c = counter.load(Ordering::Relaxed);
            loop {
                if c == DEAD {
                    break;
                }
                if c >= self.max {
                    return Err(Busy {
                        in_flight: c,
                        max: self.max,
                    });
                }
                // Relaxed: as above.
                match counter.compare_exchange_weak(c, c + 1, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => {
                        return Ok(InFlightPermit {
                            counter,
                            in_flight: c + 1,
                            max: self.max,
                        })
                    }
                    Err(now) => c = now,
                }
            }
            // A sweep retired this counter: help remove it, then look again.
            self.map.remove_if_same(key, &counter);
            crate::sync::yield_now();
        }
    }

    /// Requests in flight on `key` now.
    ///
    /// ```
    /// use std::num::NonZeroU64;
    /// use tollgate::InFlightLimiter;
    /// let limiter: InFlightLimiter<u64> = InFlightLimiter::new(NonZeroU64::new(3).unwrap());
    /// let _p = limiter.try_acquire(&1).unwrap();
    /// assert_eq!(limiter.in_flight(&1), 1);
    /// assert_eq!(limiter.in_flight(&2), 0);
    /// ```
    pub fn in_flight<Q>(&self, key: &Q) -> u64
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .get(key)
            // Relaxed: a reading.
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|&c| c != DEAD)
            .unwrap_or(0)
    }

    /// Keys with an entry (idle ones stay until a sweep).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the entries of keys with nothing in flight; returns how many. New keys call it
    /// when the map has doubled since the last sweep, so memory follows the keys in flight
    /// without it; call it to return memory sooner.
    ///
    /// ```
    /// use std::num::NonZeroU64;
    /// use tollgate::InFlightLimiter;
    /// let limiter: InFlightLimiter<u64> = InFlightLimiter::new(NonZeroU64::new(3).unwrap());
    /// drop(limiter.try_acquire(&1).unwrap());
    /// let _held = limiter.try_acquire(&2).unwrap();
    /// assert_eq!(limiter.sweep(), 1);
    /// assert_eq!(limiter.len(), 1);
    /// ```
    pub fn sweep(&self) -> usize {
        let removed = self.map.sweep(|counter| {
            // Relaxed: as in `try_acquire`; the CAS from 0 is what makes the removal safe.
            counter
                .compare_exchange(0, DEAD, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        });
        // Relaxed: a heuristic threshold.
        self.next_sweep
            .store((self.map.len() * 2).max(MIN_SWEEP), Ordering::Relaxed);
        removed
    }

    fn maybe_sweep(&self) {
        // Relaxed: a heuristic threshold; a sweep more or less changes no count.
        let due = self.next_sweep.load(Ordering::Relaxed);
        // Claimed by one caller (the others see `usize::MAX` until the sweep sets the next
        // mark), so a flood of new keys does not sweep the map many times at once.
        if self.map.len() >= due
            && self
                .next_sweep
                .compare_exchange(due, usize::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep();
        }
    }
}

/// The map size below which new keys never sweep.
const MIN_SWEEP: usize = 1024;

impl InFlightPermit {
    /// Requests in flight on the key right after this one was admitted (itself included).
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// How many more the key could admit right after this one.
    pub fn remaining(&self) -> u64 {
        self.max - self.in_flight
    }

    /// The key's limit.
    pub fn max(&self) -> u64 {
        self.max
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        // Relaxed: as in `try_acquire`.
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for InFlightPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightPermit")
            .field("in_flight", &self.in_flight)
            .field("max", &self.max)
            .finish()
    }
}

impl<K, S> std::fmt::Debug for InFlightLimiter<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightLimiter")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[cfg(not(loom))]
mod map {
    //! The counters in a papaya map.
    use super::*;

    pub(super) struct CounterMap<K, S> {
        map: papaya::HashMap<K, Arc<AtomicU64>, S>,
    }

    impl<K: Hash + Eq, S: BuildHasher> CounterMap<K, S> {
        pub(super) fn new(hasher: S) -> Self {
            CounterMap {
                map: papaya::HashMap::with_hasher(hasher),
            }
        }

        pub(super) fn get<Q>(&self, key: &Q) -> Option<Arc<AtomicU64>>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.map.pin().get(key).cloned()
        }

        pub(super) fn get_or_insert<Q>(&self, key: &Q) -> Arc<AtomicU64>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        {
            self.map
                .pin()
                .get_or_insert_with(key.to_owned(), || Arc::new(AtomicU64::new(0)))
                .clone()
        }

        /// Removes `key`'s entry if it is still `counter`.
        pub(super) fn remove_if_same<Q>(&self, key: &Q, counter: &Arc<AtomicU64>)
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            let _ = self
                .map
                .pin()
                .remove_if(key, |_, v| Arc::ptr_eq(v, counter));
        }

        pub(super) fn len(&self) -> usize {
            self.map.len()
        }

        /// Removes every entry `retire` retires; returns how many.
        pub(super) fn sweep(&self, retire: impl Fn(&AtomicU64) -> bool) -> usize {
            let pinned = self.map.pin();
            let mut removed = 0;
            for (k, v) in pinned.iter() {
                if retire(v)
                    && matches!(
                        pinned.remove_if(k, |_, now| Arc::ptr_eq(now, v)),
                        Ok(Some(_))
                    )
                {
                    removed += 1;
                }
            }
            removed
        }
    }
}

#[cfg(loom)]
mod map {
    //! A stand-in loom can see: a mutex over a vector (stronger than papaya: every operation
    //! is linearizable; see `keyed/map.rs`).
    use super::*;
    use crate::sync::Mutex;

    pub(super) struct CounterMap<K, S> {
        entries: Mutex<Vec<(K, Arc<AtomicU64>)>>,
        _hasher: S,
    }

    impl<K: Hash + Eq, S: BuildHasher> CounterMap<K, S> {
        pub(super) fn new(hasher: S) -> Self {
            CounterMap {
                entries: Mutex::new(Vec::new()),
                _hasher: hasher,
            }
        }

        pub(super) fn get<Q>(&self, key: &Q) -> Option<Arc<AtomicU64>>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            let entries = self.entries.lock().unwrap();
            entries
                .iter()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v.clone())
        }

        pub(super) fn get_or_insert<Q>(&self, key: &Q) -> Arc<AtomicU64>
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        {
            let mut entries = self.entries.lock().unwrap();
            if let Some((_, v)) = entries.iter().find(|(k, _)| k.borrow() == key) {
                return v.clone();
            }
            let v = Arc::new(AtomicU64::new(0));
            entries.push((key.to_owned(), v.clone()));
            v
        }

        pub(super) fn remove_if_same<Q>(&self, key: &Q, counter: &Arc<AtomicU64>)
        where
            K: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            let mut entries = self.entries.lock().unwrap();
            entries.retain(|(k, v)| !(k.borrow() == key && Arc::ptr_eq(v, counter)));
        }

        pub(super) fn len(&self) -> usize {
            self.entries.lock().unwrap().len()
        }

        pub(super) fn sweep(&self, retire: impl Fn(&AtomicU64) -> bool) -> usize {
            // Like papaya's iteration: each entry is looked at and removed on its own, the
            // lock taken per step, so other calls run in between.
            let snapshot: Vec<Arc<AtomicU64>> = {
                let entries = self.entries.lock().unwrap();
                entries.iter().map(|(_, v)| v.clone()).collect()
            };
            let mut removed = 0;
            for v in snapshot {
                if retire(&v) {
                    let mut entries = self.entries.lock().unwrap();
                    let before = entries.len();
                    entries.retain(|(_, now)| !Arc::ptr_eq(now, &v));
                    removed += before - entries.len();
                }
            }
            removed
        }
    }
}
