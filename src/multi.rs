//! Several limits at once on one subject (10 per second and 1,000 per hour): a request is
//! granted only when every limit grants it, and a denial by any limit consumes from none.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use crate::clock::{Clock, DefaultClock};
use crate::decision::{Decision, InsufficientCapacity};
use crate::limit::Limit;
use crate::{KeyHasher, KeyedLimiter, TokenBucket};

/// The outcome of a call under several limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a decision says whether the call was allowed"]
pub struct MultiDecision {
    /// For a denial, the decision of the first limit that denied; for a grant, the decision of
    /// the limit with the fewest tokens left (the one that will deny first).
    pub decision: Decision,
    /// The index (in the order given) of the limit `decision` comes from.
    pub index: usize,
}

impl MultiDecision {
    /// Whether every limit granted the request.
    pub fn is_allowed(&self) -> bool {
        self.decision.is_allowed()
    }
}

/// Runs one all-or-nothing call over `n_limits` limits: first a `peek(i, n)` at every limit (a
/// denial there consumes nothing, and is the common case under a flood); then a take from each
/// in order. A take that fails after its peek passed (another caller got there first, or the
/// limit was changed meanwhile) *undoes* what this call took before it ([contract §2](crate::contract::bucket): never more
/// back than the history without those takes would hold), and the call is denied by that
/// limit (or fails, for a capacity now below `n`). `acquire` returns the decision and where it
/// was made (a bucket's limit node, a key's limit slot), which `undo` gets back.
fn all_or_nothing(
    n_limits: usize,
    n: u64,
    peek: impl Fn(usize, u64) -> Result<Decision, InsufficientCapacity>,
    acquire: impl Fn(usize, u64) -> Result<(Decision, usize), InsufficientCapacity>,
    undo: impl Fn(usize, u64, &Decision, usize),
) -> Result<MultiDecision, InsufficientCapacity> {
    for i in 0..n_limits {
        let peek = peek(i, n)?;
        if n > peek.capacity() {
            return Err(InsufficientCapacity {
                requested: n,
                capacity: peek.capacity(),
            });
        }
        if peek.remaining() < n {
            // Denied here, from the peek's state: nothing taken anywhere.
            return Ok(MultiDecision {
                decision: peek.denied_for(n),
                index: i,
            });
        }
    }
    // What was taken so far, for an undo: on the stack for up to 8 limits.
    let mut stack: [Option<(Decision, usize)>; 8] = [None; 8];
    let mut heap: Vec<(Decision, usize)> = Vec::new();
    let mut best: Option<MultiDecision> = None;
    for i in 0..n_limits {
        let taken = acquire(i, n);
        let granted = match &taken {
            Ok((d, _)) => d.is_allowed(),
            Err(_) => false,
        };
        if !granted {
            for j in 0..i {
                let (d, at) = match stack.get(j) {
                    Some(Some(t)) => *t,
                    _ => heap[j - stack.len()],
                };
                undo(j, n, &d, at);
            }
        }
        let (decision, at) = taken?;
        if decision.is_denied() {
            return Ok(MultiDecision { decision, index: i });
        }
        match stack.get_mut(i) {
            Some(slot) => *slot = Some((decision, at)),
            None => heap.push((decision, at)),
        }
        if best.is_none_or(|b| decision.remaining() < b.decision.remaining()) {
            best = Some(MultiDecision { decision, index: i });
        }
    }
    // `n_limits >= 1` (the constructors take a first limit), so `best` is set.
    Ok(best.unwrap_or_else(|| unreachable!("at least one limit")))
}

/// One subject under several limits, each a [`TokenBucket`] on one shared clock.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Limit, ManualClock, MultiBucket};
///
/// let clock = ManualClock::new();
/// let limits = MultiBucket::with_clock(Limit::per_second(10)?, [Limit::per_hour(12)?], clock.clone());
/// for _ in 0..10 {
///     assert!(limits.check().is_allowed());
/// }
/// let d = limits.check();
/// assert!(!d.is_allowed());
/// assert_eq!(d.index, 0); // the per-second limit denied
/// clock.advance(Duration::from_secs(1));
/// assert!(limits.check().is_allowed());
/// assert!(limits.check().is_allowed());
/// let d = limits.check();
/// assert_eq!(d.index, 1); // now the hourly one
/// # Ok::<(), tollgate::LimitError>(())
/// ```
pub struct MultiBucket<C: Clock = DefaultClock> {
    buckets: Box<[TokenBucket<C>]>,
}

impl<C: Clock> std::fmt::Debug for MultiBucket<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.buckets.iter()).finish()
    }
}

impl MultiBucket<DefaultClock> {
    /// Buckets for `first` and `more` on the default clock.
    pub fn new(first: Limit, more: impl IntoIterator<Item = Limit>) -> Self {
        MultiBucket::with_clock(first, more, DefaultClock::new())
    }
}

impl<C: Clock + Clone> MultiBucket<C> {
    /// Buckets for `first` and `more` on `clock` (one clone each).
    pub fn with_clock(first: Limit, more: impl IntoIterator<Item = Limit>, clock: C) -> Self {
        MultiBucket {
            buckets: std::iter::once(first)
                .chain(more)
                .map(|l| TokenBucket::with_clock(l, clock.clone()))
                .collect(),
        }
    }
}

impl<C: Clock> MultiBucket<C> {
    /// Takes `n` tokens from every limit, or from none.
    ///
    /// # Errors
    /// [`InsufficientCapacity`] when `n` exceeds some limit's capacity (nothing taken).
    pub fn try_acquire(&self, n: u64) -> Result<MultiDecision, InsufficientCapacity> {
        all_or_nothing(
            self.buckets.len(),
            n,
            |i, _| self.buckets[i].try_acquire(0),
            |i, n| self.buckets[i].take_tracked(n),
            |i, n, taken, node| {
                let _ = self.buckets[i].undo(n, taken, node);
            },
        )
    }

    /// Takes one token from every limit, or from none.
    pub fn check(&self) -> MultiDecision {
        match self.try_acquire(1) {
            Ok(d) => d,
            Err(_) => unreachable!("capacities are at least 1"),
        }
    }

    /// The buckets, in the order of the limits.
    pub fn buckets(&self) -> &[TokenBucket<C>] {
        &self.buckets
    }
}

/// Keys under several limits: one [`KeyedLimiter`] per limit (a grant peeks at and then takes
/// from each: two lookups per limit).
///
/// ```
/// use tollgate::{Limit, MultiKeyedLimiter};
/// let limits: MultiKeyedLimiter<String> =
///     MultiKeyedLimiter::new(Limit::per_second(5)?, [Limit::per_hour(100)?]);
/// assert!(limits.check_key("alice").is_allowed());
/// # Ok::<(), tollgate::LimitError>(())
/// ```
pub struct MultiKeyedLimiter<K, S = KeyHasher> {
    limiters: Box<[KeyedLimiter<K, S>]>,
}

impl<K: Hash + Eq, S> std::fmt::Debug for MultiKeyedLimiter<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.limiters.iter()).finish()
    }
}

impl<K: Hash + Eq> MultiKeyedLimiter<K, KeyHasher> {
    /// One keyed limiter per limit (`first`, then `more`), with the defaults.
    pub fn new(first: Limit, more: impl IntoIterator<Item = Limit>) -> Self {
        MultiKeyedLimiter::from_limiters(
            KeyedLimiter::new(first),
            more.into_iter().map(KeyedLimiter::new),
        )
    }
}

impl<K: Hash + Eq, S: BuildHasher> MultiKeyedLimiter<K, S> {
    /// From keyed limiters built as wanted (clock, eviction, cap...).
    pub fn from_limiters(
        first: KeyedLimiter<K, S>,
        more: impl IntoIterator<Item = KeyedLimiter<K, S>>,
    ) -> Self {
        MultiKeyedLimiter {
            limiters: std::iter::once(first).chain(more).collect(),
        }
    }

    /// Takes `n` tokens from every limit of `key`, or from none.
    ///
    /// # Errors
    /// [`InsufficientCapacity`] when `n` exceeds some limit's capacity.
    pub fn try_acquire_key<Q>(&self, key: &Q, n: u64) -> Result<MultiDecision, InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        all_or_nothing(
            self.limiters.len(),
            n,
            // the contract's exact peek (it records a new key's bucket, whose mark later stale readings
            // must see), counted in the stats only as a denial.
            |i, n| self.limiters[i].peek_for(key, n).map(|(d, _)| d),
            |i, n| {
                self.limiters[i]
                    .take_key_tracked(key, n)
                    .map(|(d, (slot, _))| (d, slot as usize))
            },
            |i, n, taken, slot| {
                let _ = self.limiters[i].undo_key(key, n, taken, slot as u32);
            },
        )
    }

    /// Takes one token from every limit of `key`, or from none.
    pub fn check_key<Q>(&self, key: &Q) -> MultiDecision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.try_acquire_key(key, 1) {
            Ok(d) => d,
            Err(_) => unreachable!("capacities are at least 1"),
        }
    }

    /// The limiters, in the order of the limits.
    pub fn limiters(&self) -> &[KeyedLimiter<K, S>] {
        &self.limiters
    }
}
