//! The answer to every call: allowed or not, and the numbers a client needs ([contract §2](crate::contract::bucket)).

use std::fmt;
use std::time::Duration;

use crate::state::Outcome;
use crate::steps::{Rate, Steps};

/// The outcome of one call on a bucket.
///
/// The waits are computed when asked for, with integer arithmetic, exact to the nanosecond of
/// the limiter's clock.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Limit, ManualClock, TokenBucket};
///
/// let clock = ManualClock::new();
/// let bucket = TokenBucket::with_clock(Limit::new(2, 1, Duration::from_secs(1))?, clock.clone());
/// assert!(bucket.check().is_allowed());
/// assert!(bucket.check().is_allowed());
/// let d = bucket.check();
/// assert!(!d.is_allowed());
/// assert_eq!(d.capacity(), 2);
/// assert_eq!(d.remaining(), 0);
/// assert_eq!(d.retry_after(), Duration::from_secs(1));
/// assert_eq!(d.reset_after(), Duration::from_secs(2));
/// assert_eq!(d.next_refill_after(), Duration::from_secs(1));
/// # Ok::<(), tollgate::LimitError>(())
/// ```
///
/// A decision is `#[must_use]`: a call whose answer is ignored spent its tokens without
/// looking, so the compiler says so.
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// use tollgate::{Limit, TokenBucket};
/// let bucket = TokenBucket::new(Limit::per_second(1).unwrap());
/// bucket.check(); // error: unused `Decision` that must be used
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
#[must_use = "a decision says whether the call was allowed: `bucket.check();` alone spends a token \
              without looking"]
pub struct Decision {
    allowed: bool,
    tokens: u64,
    /// Refill mark after the call (full step index).
    mark: u64,
    /// Tokens asked for.
    n: u64,
    /// Clock reading of the call, and the limiter's epoch (same scale).
    now: u64,
    epoch: u64,
    rate: Rate,
    /// Made without the store, by a failure policy.
    degraded: bool,
    /// The id of the keyed limiter's limit slot the decision was made under (`u32::MAX`: not
    /// recorded, or not a keyed bucket's), for an undo through the HTTP layer's backend; and
    /// its tier (`u16::MAX`: none), a metrics label.
    slot: u32,
    tier: u16,
}

impl Decision {
    #[inline(always)]
    pub(crate) fn new(steps: &Steps, out: &Outcome, n: u64, now: u64, epoch: u64) -> Decision {
        Decision {
            allowed: out.allowed,
            tokens: out.tokens,
            mark: out.mark,
            n,
            now,
            epoch,
            rate: *steps.rate(),
            degraded: false,
            slot: u32::MAX,
            tier: u16::MAX,
        }
    }

    /// A decision made without the store (Redis unreachable) by its failure policy: allowed
    /// (fail open) or denied (fail closed). Remaining is reported as 0; a denial's waits are
    /// those of an empty bucket.
    #[cfg(feature = "redis")]
    pub(crate) fn degraded(steps: &Steps, allowed: bool, n: u64) -> Decision {
        let out = Outcome {
            allowed,
            tokens: 0,
            mark: 0,
            write: None,
        };
        Decision {
            degraded: true,
            ..Decision::new(steps, &out, n, 0, 0)
        }
    }

    /// This decision, recording the keyed limiter's slot it was made under: its id and tier.
    #[cfg(feature = "http")]
    #[inline]
    pub(crate) fn with_slot(self, (slot, tier): (u32, u16)) -> Decision {
        Decision { slot, tier, ..self }
    }

    /// The slot id recorded by [`with_slot`](Decision::with_slot) (`u32::MAX`: none).
    #[cfg(feature = "http")]
    #[inline]
    pub(crate) fn slot(&self) -> u32 {
        self.slot
    }

    /// The tier recorded by [`with_slot`](Decision::with_slot) (`u16::MAX`: none).
    #[cfg(feature = "http")]
    #[inline]
    pub(crate) fn tier(&self) -> u16 {
        self.tier
    }

    /// The refill mark the call left (a full step index): where an undo of its take counts
    /// later refills from.
    #[inline]
    pub(crate) fn mark(&self) -> u64 {
        self.mark
    }

    /// The numbers of the limit this decision was made under.
    #[cfg(feature = "http")]
    pub(crate) fn rate(&self) -> &Rate {
        &self.rate
    }

    /// The clock reading of the call (nanoseconds, the limiter's clock).
    #[cfg(feature = "redis")]
    pub(crate) fn now_ns(&self) -> u64 {
        self.now
    }

    /// The denial of `n` tokens from this decision's state (for a decision that did not
    /// consume: a peek).
    pub(crate) fn denied_for(&self, n: u64) -> Decision {
        Decision {
            allowed: false,
            n,
            ..*self
        }
    }

    /// Whether this decision was made without the store it should have come from (a Redis
    /// backend that did not answer, by its failure policy). Always false for in-memory limiters.
    #[inline]
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    /// Whether the request was granted (its tokens are consumed).
    #[inline]
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Whether the request was refused (nothing consumed).
    #[inline]
    pub fn is_denied(&self) -> bool {
        !self.allowed
    }

    /// The bucket's capacity C (the `q` of `RateLimit-Policy`).
    #[inline]
    pub fn capacity(&self) -> u64 {
        self.rate.cap
    }

    /// Tokens left after this call.
    #[inline]
    pub fn remaining(&self) -> u64 {
        self.tokens
    }

    /// For a denial, the exact wait until the requested tokens are there; zero when allowed.
    pub fn retry_after(&self) -> Duration {
        if self.allowed {
            return Duration::ZERO;
        }
        self.until_tokens(self.n)
    }

    /// The wait until the bucket is full again (zero when full).
    pub fn reset_after(&self) -> Duration {
        self.until_tokens(self.rate.cap)
    }

    /// The wait until more tokens arrive: the next refill step (zero when full).
    pub fn next_refill_after(&self) -> Duration {
        if self.tokens >= self.rate.cap {
            return Duration::ZERO;
        }
        self.until_step(self.mark.saturating_add(1))
    }

    /// The wait until the bucket holds `want` tokens (zero if it does).
    fn until_tokens(&self, want: u64) -> Duration {
        if self.tokens >= want {
            return Duration::ZERO;
        }
        let steps = (want - self.tokens).div_ceil(self.rate.q);
        self.until_step(self.mark.saturating_add(steps))
    }

    /// `T(j) - now`, saturating at zero.
    fn until_step(&self, j: u64) -> Duration {
        let at = self.epoch.saturating_add(self.rate.step_start(j));
        Duration::from_nanos(at.saturating_sub(self.now))
    }
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("allowed", &self.allowed)
            .field("capacity", &self.capacity())
            .field("remaining", &self.tokens)
            .field("retry_after", &self.retry_after())
            .field("reset_after", &self.reset_after())
            .field("next_refill_after", &self.next_refill_after())
            .finish()
    }
}

/// A request for more tokens than the bucket can ever hold: it can never succeed.
///
/// ```
/// use tollgate::{Limit, TokenBucket};
/// let bucket = TokenBucket::new(Limit::per_second(5)?);
/// let err = bucket.try_acquire(6).unwrap_err();
/// assert_eq!((err.requested, err.capacity), (6, 5));
/// # Ok::<(), tollgate::LimitError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsufficientCapacity {
    /// Tokens asked for.
    pub requested: u64,
    /// The bucket's capacity.
    pub capacity: u64,
}

impl fmt::Display for InsufficientCapacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tokens requested, but the bucket holds at most {}: the request can never succeed",
            self.requested, self.capacity
        )
    }
}

impl std::error::Error for InsufficientCapacity {}
