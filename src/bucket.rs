//! One lock-free bucket: load the word, run the pure step, compare-and-swap.

use crossbeam_utils::CachePadded;

use crate::clock::{Clock, DefaultClock};
use crate::decision::{Decision, InsufficientCapacity};
use crate::limit::Limit;
use crate::state::{self, Steps, TOMBSTONE};
use crate::sync::{AtomicU64, Ordering};

/// The atomic word of one bucket, shared by [`TokenBucket`] and the keyed limiter.
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
    /// the cell is a tombstone (the caller looks the key up again). Lock-free: a failed CAS
    /// retries from the value it returned; a denial or a peek stores nothing unless it is the
    /// first to see a new step.
    #[inline(always)]
    pub(crate) fn acquire(&self, steps: &Steps, n: u64, now: u64, epoch: u64) -> Option<Decision> {
        // Relaxed: the word is self-contained (no other memory is published through it), and
        // all read-modify-writes of one location are totally ordered by coherence.
        let mut word = self.0.load(Ordering::Relaxed);
        let k = steps.step_index_near(now.saturating_sub(epoch), word);
        loop {
            if word == TOMBSTONE {
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
    /// `acquire`. `None` on a tombstone.
    #[inline]
    pub(crate) fn update(
        &self,
        steps: &Steps,
        now: u64,
        epoch: u64,
        n: u64,
        op: impl Fn(&Steps, u64, u64, u64) -> state::Outcome,
    ) -> Option<Decision> {
        // Relaxed: as in `acquire`.
        let mut word = self.0.load(Ordering::Relaxed);
        let k = steps.step_index_near(now.saturating_sub(epoch), word);
        loop {
            if word == TOMBSTONE {
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
}

/// A lock-free token bucket: its whole state (tokens and refill mark) is one `AtomicU64`,
/// updated by compare-and-swap. Share it by reference or in an `Arc`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Limit, TokenBucket};
///
/// // 10 tokens of burst, 2 back every second.
/// let bucket = TokenBucket::new(Limit::new(10, 2, Duration::from_secs(1))?);
/// let allowed = (0..15).filter(|_| bucket.check().is_allowed()).count();
/// assert_eq!(allowed, 10);
/// # Ok::<(), tollgate::LimitError>(())
/// ```
pub struct TokenBucket<C: Clock = DefaultClock> {
    steps: Steps,
    epoch: u64,
    clock: C,
    limit: Limit,
    cell: CachePadded<Cell>,
}

impl TokenBucket<DefaultClock> {
    /// A full bucket on the default clock ([`CoarseClock`](crate::CoarseClock)).
    pub fn new(limit: Limit) -> TokenBucket<DefaultClock> {
        TokenBucket::with_clock(limit, DefaultClock::new())
    }
}

impl<C: Clock> TokenBucket<C> {
    /// A full bucket on `clock`; its epoch is the clock's time now.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{Limit, ManualClock, TokenBucket};
    /// let clock = ManualClock::new();
    /// let bucket = TokenBucket::with_clock(Limit::new(1, 1, Duration::from_secs(1))?, clock.clone());
    /// assert!(bucket.check().is_allowed());
    /// assert!(!bucket.check().is_allowed());
    /// clock.advance(Duration::from_secs(1));
    /// assert!(bucket.check().is_allowed());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn with_clock(limit: Limit, clock: C) -> TokenBucket<C> {
        let steps = *limit.steps();
        let epoch = clock.now();
        TokenBucket {
            steps,
            epoch,
            clock,
            limit,
            cell: CachePadded::new(Cell::full(&steps, 0)),
        }
    }

    /// Takes `n` tokens if they are there; otherwise consumes nothing. `n == 0` is a peek:
    /// always allowed, consumes nothing.
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_second(10)?);
    /// let d = bucket.try_acquire(4).unwrap();
    /// assert!(d.is_allowed());
    /// assert!(d.remaining() <= 6);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`InsufficientCapacity`] when `n` exceeds the capacity: such a request can never be
    /// granted. Nothing changes.
    #[inline]
    pub fn try_acquire(&self, n: u64) -> Result<Decision, InsufficientCapacity> {
        if n > self.steps.cap {
            return Err(InsufficientCapacity {
                requested: n,
                capacity: self.steps.cap,
            });
        }
        Ok(self.take(n))
    }

    /// `n <= C`.
    #[inline(always)]
    fn take(&self, n: u64) -> Decision {
        let now = self.clock.now();
        match self.cell.acquire(&self.steps, n, now, self.epoch) {
            Some(d) => d,
            // A lone bucket is never evicted.
            None => unreachable!("a TokenBucket is never tombstoned"),
        }
    }

    /// Takes one token: `try_acquire(1)`, which cannot fail.
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_second(1)?);
    /// assert!(bucket.check().is_allowed());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    #[inline]
    pub fn check(&self) -> Decision {
        // Capacity is at least 1.
        self.take(1)
    }

    /// The bucket as it is now, consuming nothing: a peek (`try_acquire(0)`).
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_minute(10)?);
    /// bucket.try_acquire(4).unwrap();
    /// assert_eq!(bucket.snapshot().remaining(), 6);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    #[inline]
    pub fn snapshot(&self) -> Decision {
        self.take(0)
    }

    /// Gives `n` tokens back (capped at the capacity), for work that turned out not to need
    /// them. The decision shows the bucket after the refund.
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_hour(10)?);
    /// bucket.try_acquire(5).unwrap();
    /// assert_eq!(bucket.refund(2).remaining(), 7);
    /// assert_eq!(bucket.refund(100).remaining(), 10); // never above the capacity
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn refund(&self, n: u64) -> Decision {
        self.update(n, state::add)
    }

    /// Adds `n` tokens (capped at the capacity): a grant beyond the refill schedule.
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_hour(3)?);
    /// bucket.try_acquire(3).unwrap();
    /// assert_eq!(bucket.add_tokens(1).remaining(), 1);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn add_tokens(&self, n: u64) -> Decision {
        self.update(n, state::add)
    }

    /// Fills the bucket to its capacity now.
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_hour(3)?);
    /// bucket.try_acquire(3).unwrap();
    /// assert_eq!(bucket.reset().remaining(), 3);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn reset(&self) -> Decision {
        self.update(0, |s, w, k, _| state::reset(s, w, k))
    }

    /// Takes `n` tokens as a [`Reservation`](crate::Reservation): keep it (drop it) and the
    /// tokens stay spent; [`cancel`](crate::Reservation::cancel) it and they come back.
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_hour(10)?);
    /// let r = bucket.reserve(4).unwrap();
    /// assert_eq!(r.decision().remaining(), 6);
    /// r.cancel(); // the work was not needed after all
    /// assert_eq!(bucket.snapshot().remaining(), 10);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`ReserveError::Denied`](crate::ReserveError::Denied) with the denial when the tokens are
    /// not there; [`ReserveError::InsufficientCapacity`](crate::ReserveError::InsufficientCapacity)
    /// when `n` exceeds the capacity.
    pub fn reserve(&self, n: u64) -> Result<crate::Reservation<'_, C>, crate::ReserveError> {
        let d = self.try_acquire(n)?;
        if d.is_denied() {
            return Err(crate::ReserveError::Denied(d));
        }
        Ok(crate::Reservation::new(self, n, d))
    }

    fn update(&self, n: u64, op: impl Fn(&Steps, u64, u64, u64) -> state::Outcome) -> Decision {
        let now = self.clock.now();
        match self.cell.update(&self.steps, now, self.epoch, n, op) {
            Some(d) => d,
            None => unreachable!("a TokenBucket is never tombstoned"),
        }
    }

    /// The limit this bucket enforces.
    pub fn limit(&self) -> &Limit {
        &self.limit
    }

    /// The clock this bucket reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }
}

impl<C: Clock> std::fmt::Debug for TokenBucket<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket")
            .field("limit", &self.limit)
            .field("word", &self.cell.load())
            .finish()
    }
}
