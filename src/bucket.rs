//! One lock-free bucket: load the word, run the pure step, compare-and-swap.

use crossbeam_utils::CachePadded;

use crate::cell::Cell;
use crate::clock::{Clock, DefaultClock};
use crate::decision::{Decision, InsufficientCapacity};
use crate::limit::{Inherit, Limit};
use crate::limits::{Limits, MAX_LIMITS};
use crate::state;
use crate::steps::Steps;
use crate::sync::{AtomicUsize, Mutex, Ordering};

/// A lock-free token bucket (lock-free except while [`set_limit`](TokenBucket::set_limit) swaps
/// the limit): its whole state (tokens and refill mark) is one `AtomicU64`,
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
    /// The node calls use: an index into `nodes`.
    current: AtomicUsize,
    /// The first limit, then one per `set_limit`. A node, once published, lives as long as the
    /// bucket: a call may still be using it.
    nodes: Limits<Node, [Node; 1]>,
    /// Serializes reconfigurations.
    reconfig: Mutex<()>,
    epoch: u64,
    clock: C,
}

/// One limit of a bucket and the word kept under it.
struct Node {
    limit: Limit,
    cell: CachePadded<Cell>,
}

impl Node {
    /// The limit's arithmetic (kept in the limit; no copy).
    #[inline(always)]
    fn steps(&self) -> &Steps {
        self.limit.steps()
    }
}

/// How many times a bucket's limit can be replaced (see [`TokenBucket::set_limit`]).
pub const MAX_RECONFIGURATIONS: usize = MAX_LIMITS - 1;

/// Why [`TokenBucket::set_limit`] did not replace the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyReconfigurations;

impl std::fmt::Display for TooManyReconfigurations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this bucket's limit was already replaced {MAX_RECONFIGURATIONS} times; build a new \
             bucket"
        )
    }
}

impl std::error::Error for TooManyReconfigurations {}

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
        let epoch = clock.now();
        TokenBucket::with_epoch(limit, clock, epoch)
    }

    /// A full bucket on `clock` with epoch `epoch` (the keyed limiter's overflow bucket shares
    /// the limiter's).
    pub(crate) fn with_epoch(limit: Limit, clock: C, epoch: u64) -> TokenBucket<C> {
        let steps = *limit.steps();
        TokenBucket {
            current: AtomicUsize::new(0),
            nodes: Limits::new([Node {
                limit,
                cell: CachePadded::new(Cell::full(&steps, 0)),
            }]),
            reconfig: Mutex::new(()),
            epoch,
            clock,
        }
    }

    /// The node calls use now.
    #[inline(always)]
    fn node(&self) -> &Node {
        self.node_at(self.node_index())
    }

    /// The index of the node calls use now.
    #[inline(always)]
    fn node_index(&self) -> usize {
        // Acquire: pairs with the Release in `set_limit`, so the node's word, written before
        // the index, is seen.
        self.current.load(Ordering::Acquire)
    }

    /// Node `i` (0 is the first).
    #[inline(always)]
    fn node_at(&self, i: usize) -> &Node {
        self.nodes.get(i)
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
    #[inline(always)]
    pub fn try_acquire(&self, n: u64) -> Result<Decision, InsufficientCapacity> {
        self.take_at(n, self.clock.now())
    }

    /// `try_acquire(n)` at clock reading `now` (a caller that has already read the clock).
    #[inline(always)]
    pub(crate) fn take_at(&self, n: u64, now: u64) -> Result<Decision, InsufficientCapacity> {
        let node = self.node();
        if n > node.steps().cap {
            return Err(InsufficientCapacity {
                requested: n,
                capacity: node.steps().cap,
            });
        }
        match node.cell.acquire(node.steps(), n, now, self.epoch) {
            Some(d) => Ok(d),
            None => self.take_after_seal(n, now),
        }
    }

    /// The word was sealed: `set_limit` is publishing the next node; wait for it and retry.
    /// The one place a call waits for another: the reconfiguring thread holds the seal for a
    /// conversion and a store (tens of nanoseconds), or, if it is descheduled between its seal
    /// and its publish, until it runs again. Calls yield meanwhile; none blocks on a lock.
    #[cold]
    #[inline(never)]
    fn take_after_seal(&self, n: u64, now: u64) -> Result<Decision, InsufficientCapacity> {
        loop {
            crate::sync::yield_now();
            let node = self.node();
            if n > node.steps().cap {
                return Err(InsufficientCapacity {
                    requested: n,
                    capacity: node.steps().cap,
                });
            }
            if let Some(d) = node.cell.acquire(node.steps(), n, now, self.epoch) {
                return Ok(d);
            }
        }
    }

    /// `try_acquire(n)` that also says which limit (node) the decision was made under, for a
    /// later [`undo`](TokenBucket::undo).
    pub(crate) fn take_tracked(&self, n: u64) -> Result<(Decision, usize), InsufficientCapacity> {
        let now = self.clock.now();
        loop {
            let i = self.node_index();
            let node = self.node_at(i);
            if n > node.steps().cap {
                return Err(InsufficientCapacity {
                    requested: n,
                    capacity: node.steps().cap,
                });
            }
            if let Some(d) = node.cell.acquire(node.steps(), n, now, self.epoch) {
                return Ok((d, i));
            }
            // Sealed: `set_limit` is publishing the next node.
            crate::sync::yield_now();
        }
    }

    /// Undoes a take of `n` tokens that `taken` granted under node `node` ([contract §2](crate::contract::bucket), undo
    /// versus refund): the bucket ends with at most what it would hold had the take never
    /// happened (see `state::undo`). Under a limit changed since the take, nothing comes back
    /// (the conversion may have capped the difference already).
    pub(crate) fn undo(&self, n: u64, taken: &Decision, node: usize) -> Decision {
        let mark = taken.mark();
        let now = self.clock.now();
        loop {
            let i = self.node_index();
            let current = self.node_at(i);
            let give = if i == node { n } else { 0 };
            if let Some(d) =
                current
                    .cell
                    .update(current.steps(), now, self.epoch, give, |s, w, k, n| {
                        state::undo(s, w, k, n, mark)
                    })
            {
                return d;
            }
            crate::sync::yield_now();
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
    #[inline(always)]
    pub fn check(&self) -> Decision {
        // Capacity is at least 1, under every limit.
        match self.try_acquire(1) {
            Ok(d) => d,
            Err(_) => unreachable!("capacity is at least 1"),
        }
    }

    /// The bucket as it is now, consuming nothing: a peek (`try_acquire(0)`).
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_minute(10)?);
    /// let _ = bucket.try_acquire(4).unwrap();
    /// assert_eq!(bucket.snapshot().remaining(), 6);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    #[inline]
    pub fn snapshot(&self) -> Decision {
        match self.try_acquire(0) {
            Ok(d) => d,
            Err(_) => unreachable!("0 never exceeds the capacity"),
        }
    }

    /// Gives `n` tokens back (capped at the capacity), for work that turned out not to need
    /// them. The decision shows the bucket after the refund.
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_hour(10)?);
    /// let _ = bucket.try_acquire(5).unwrap();
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
    /// let _ = bucket.try_acquire(3).unwrap();
    /// assert_eq!(bucket.add_tokens(1).remaining(), 1);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn add_tokens(&self, n: u64) -> Decision {
        self.update(n, state::add)
    }

    /// Charges `n` tokens after the fact, taking as many as there are (up to `n`) and refusing
    /// nothing: for a cost known only once the work is done (bytes sent, tokens a model
    /// generated). The decision is allowed and shows what is left: 0 when the charge took more
    /// than there was, so the next requests wait for the refill.
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_hour(100)?);
    /// assert_eq!(bucket.charge(30).remaining(), 70);
    /// assert_eq!(bucket.charge(500).remaining(), 0); // all there was
    /// assert!(bucket.check().is_denied());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn charge(&self, n: u64) -> Decision {
        self.update(n, state::drain)
    }

    /// Fills the bucket to its capacity now.
    ///
    /// ```
    /// use tollgate::{Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_hour(3)?);
    /// let _ = bucket.try_acquire(3).unwrap();
    /// assert_eq!(bucket.reset().remaining(), 3);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn reset(&self) -> Decision {
        self.update(0, |s, w, k, _| state::reset(s, w, k))
    }

    /// Applies `op` (a refund, grant, reset or charge) to the bucket now.
    pub(crate) fn update(
        &self,
        n: u64,
        op: impl Fn(&Steps, u64, u64, u64) -> state::Outcome + Copy,
    ) -> Decision {
        let now = self.clock.now();
        loop {
            let node = self.node();
            if let Some(d) = node.cell.update(node.steps(), now, self.epoch, n, op) {
                return d;
            }
            crate::sync::yield_now();
        }
    }

    /// Replaces the limit while calls go on, atomically: every call is decided wholly under
    /// the old limit or wholly under the new one. The tokens carry over as `inherit` says;
    /// refills under the new limit count from the step of this call. Calls that race the swap
    /// wait the few instructions it takes (so calls are lock-free except during a swap). At most
    /// [`MAX_RECONFIGURATIONS`] per bucket (each replaced limit is kept until the bucket drops,
    /// as a call may still use it: at most 384 bytes each, the word being cache-padded, and a
    /// 4 KiB table at the first change). Setting the limit already in force changes nothing and does not count (a
    /// configuration reload may call this freely); with [`Inherit::Reset`] it is a
    /// [`reset`](TokenBucket::reset).
    ///
    /// ```
    /// use tollgate::{Inherit, Limit, TokenBucket};
    /// let bucket = TokenBucket::new(Limit::per_hour(10)?);
    /// let _ = bucket.try_acquire(4).unwrap();
    /// let d = bucket.set_limit(Limit::per_hour(100)?, Inherit::Proportional).unwrap();
    /// assert_eq!(d.remaining(), 60);
    /// assert_eq!(bucket.limit().capacity(), 100);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`TooManyReconfigurations`] after [`MAX_RECONFIGURATIONS`] replacements (the limit is
    /// unchanged).
    pub fn set_limit(
        &self,
        limit: Limit,
        inherit: Inherit,
    ) -> Result<Decision, TooManyReconfigurations> {
        let _serial = self.reconfig.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.node();
        if limit == old.limit {
            // Nothing to convert: `Reset` is a plain reset, the others change nothing.
            return Ok(match inherit {
                Inherit::Reset => self.reset(),
                Inherit::Keep | Inherit::Proportional => self.snapshot(),
            });
        }
        // Relaxed: reconfigurations are serialized by the lock, which orders this load.
        let index = self.current.load(Ordering::Relaxed);
        if index >= MAX_RECONFIGURATIONS {
            return Err(TooManyReconfigurations);
        }
        let steps = *limit.steps();
        // Prepared before the seal, so calls wait only for the arithmetic below; readers see
        // the node only once the index below names it.
        let node = Box::new(Node {
            limit,
            cell: CachePadded::new(Cell::full(&steps, 0)),
        });
        // The clock (user code, which may panic) is read before the node is stored: from the
        // store to the publication below nothing can unwind, so no stored node is left
        // unpublished (which would make every later change fail).
        let now = self.clock.now();
        let t = now.saturating_sub(self.epoch);
        if self.nodes.set(index + 1, node).is_err() {
            // Unreachable: `index + 1 <= MAX_RECONFIGURATIONS < MAX_LIMITS`, and each index is
            // stored once, under the lock, just before it is published.
            debug_assert!(false, "node {} stored twice", index + 1);
            return Err(TooManyReconfigurations);
        }
        let new = self.node_at(index + 1);
        // Seal the old word: from here no call can change it, and its state is final.
        let word = old.cell.seal_now();
        let word = state::convert_word(old.steps(), word, t, &steps, inherit);
        new.cell.set(word);
        let k = steps.step_index(t);
        let out = state::step(&steps, word, k, 0);
        // Release: publishes the node (and its word) with the index.
        self.current.store(index + 1, Ordering::Release);
        Ok(Decision::new(&steps, &out, 0, now, self.epoch))
    }

    /// The limit this bucket enforces now.
    pub fn limit(&self) -> &Limit {
        &self.node().limit
    }

    /// The clock this bucket reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }
}

impl<C: Clock> std::fmt::Debug for TokenBucket<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket")
            .field("limit", &self.node().limit)
            .field("word", &self.node().cell.load())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    /// The size `set_limit`'s docs (and docs/ARCHITECTURE.md) give for a replaced limit.
    #[test]
    fn a_replaced_limit_costs_at_most_384_bytes() {
        assert!(std::mem::size_of::<super::Node>() <= 384);
    }
}
