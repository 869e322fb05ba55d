//! The limit: capacity, refill amount, refill interval and mode; their validation and errors.

use std::fmt;
use std::time::Duration;

use crate::steps::{gcd, Steps};

/// The largest capacity a limit may have: 2^32 tokens.
pub const MAX_CAPACITY: u64 = 1 << 32;

/// The shortest refill interval: 1 ns (in greedy mode, `interval / amount` must also be at least
/// 1 ns: one token per nanosecond at most).
pub const MIN_INTERVAL: Duration = Duration::from_nanos(1);

/// The longest refill interval: 2^32 seconds (about 136 years).
pub const MAX_INTERVAL: Duration = Duration::from_secs(1 << 32);

/// The shortest accepted wrap horizon: 30 days.
///
/// A bucket stores its refill mark modulo a power of two (see [`Limit::horizon`]). A bucket left
/// untouched for longer than its horizon may under-refill (deny) until it is touched again
/// within the horizon; it never over-admits. Limits whose horizon would be shorter than this
/// are rejected. Most limits have horizons of centuries.
pub const MIN_HORIZON: Duration = Duration::from_secs(30 * 24 * 3600);

/// How tokens come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refill {
    /// `refill_amount` whole tokens arrive at the end of every whole `refill_interval`.
    Interval,
    /// One token arrives every `refill_interval / refill_amount`, exactly (integer arithmetic,
    /// no drift).
    Greedy,
}

/// Which number of a limit was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitField {
    /// The capacity (burst size).
    Capacity,
    /// The tokens added per interval.
    RefillAmount,
    /// The refill period.
    RefillInterval,
}

impl fmt::Display for LimitField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitField::Capacity => "capacity",
            LimitField::RefillAmount => "refill_amount",
            LimitField::RefillInterval => "refill_interval",
        })
    }
}

/// A limit that cannot be represented. Names the field and says why.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Limit, LimitField};
///
/// let err = Limit::new(10, 20, Duration::from_secs(1)).unwrap_err();
/// assert_eq!(err.field(), LimitField::RefillAmount);
/// assert_eq!(
///     err.to_string(),
///     "invalid refill_amount: 20 exceeds the capacity (10)"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitError {
    /// The capacity is 0.
    ZeroCapacity,
    /// The capacity exceeds [`MAX_CAPACITY`].
    CapacityTooLarge {
        /// The capacity asked for.
        capacity: u64,
    },
    /// The refill amount is 0.
    ZeroRefillAmount,
    /// The refill amount exceeds the capacity.
    RefillExceedsCapacity {
        /// The refill amount asked for.
        refill_amount: u64,
        /// The capacity.
        capacity: u64,
    },
    /// The refill interval is zero.
    ZeroInterval,
    /// The refill interval exceeds [`MAX_INTERVAL`].
    IntervalTooLong {
        /// The interval asked for.
        interval: Duration,
    },
    /// Greedy mode: `interval / amount` is under 1 ns.
    StepTooShort {
        /// The interval asked for.
        interval: Duration,
        /// The refill amount asked for.
        refill_amount: u64,
    },
    /// The state's wrap horizon would be shorter than [`MIN_HORIZON`]: the capacity is too large
    /// for so fast a step.
    HorizonTooShort {
        /// The horizon this limit would have.
        horizon: Duration,
    },
}

impl LimitError {
    /// The field that was rejected.
    pub fn field(&self) -> LimitField {
        match self {
            LimitError::ZeroCapacity
            | LimitError::CapacityTooLarge { .. }
            | LimitError::HorizonTooShort { .. } => LimitField::Capacity,
            LimitError::ZeroRefillAmount | LimitError::RefillExceedsCapacity { .. } => {
                LimitField::RefillAmount
            }
            LimitError::ZeroInterval
            | LimitError::IntervalTooLong { .. }
            | LimitError::StepTooShort { .. } => LimitField::RefillInterval,
        }
    }
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: ", self.field())?;
        match self {
            LimitError::ZeroCapacity => f.write_str("must be at least 1"),
            LimitError::CapacityTooLarge { capacity } => {
                write!(f, "{capacity} exceeds the maximum ({MAX_CAPACITY})")
            }
            LimitError::ZeroRefillAmount => f.write_str("must be at least 1"),
            LimitError::RefillExceedsCapacity {
                refill_amount,
                capacity,
            } => write!(f, "{refill_amount} exceeds the capacity ({capacity})"),
            LimitError::ZeroInterval => f.write_str("must be longer than zero"),
            LimitError::IntervalTooLong { interval } => {
                write!(f, "{interval:?} exceeds the maximum ({MAX_INTERVAL:?})")
            }
            LimitError::StepTooShort {
                interval,
                refill_amount,
            } => write!(
                f,
                "{interval:?} / {refill_amount} is under 1 ns per token (greedy mode refills \
                 at most one token per nanosecond; use interval mode)"
            ),
            LimitError::HorizonTooShort { horizon } => write!(
                f,
                "too large for this refill rate: the state's wrap horizon would be {horizon:?}, \
                 under the minimum of {MIN_HORIZON:?} (lower the capacity, or use interval mode \
                 with a longer interval)"
            ),
        }
    }
}

impl std::error::Error for LimitError {}

/// A rate limit: a bucket of `capacity` tokens that gets `refill_amount` tokens back every
/// `refill_interval`, by whole intervals ([`Refill::Interval`]) or one token at a time
/// ([`Refill::Greedy`]).
///
/// Every constructor is exact: none rounds a rate up (in the caller's favour).
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Limit, Refill};
///
/// // The classic bucket: 10 tokens of burst, 2 tokens back at the end of every second.
/// let classic = Limit::new(10, 2, Duration::from_secs(1))?;
/// assert_eq!(classic.mode(), Refill::Interval);
///
/// // 100 requests per minute, one every 600 ms, bursts of up to 20.
/// let smooth = Limit::per_minute(100)?.burst(20)?;
/// assert_eq!(smooth.capacity(), 20);
/// # Ok::<(), tollgate::LimitError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    capacity: u64,
    refill_amount: u64,
    refill_interval: Duration,
    mode: Refill,
    steps: Steps,
}

impl Limit {
    /// Interval refill: `refill_amount` tokens arrive at the end of every whole
    /// `refill_interval`; the bucket holds at most `capacity`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let limit = tollgate::Limit::new(10, 2, Duration::from_secs(1))?;
    /// assert_eq!(limit.capacity(), 10);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// A [`LimitError`] naming the field when a number is out of range: capacity in
    /// `1..=`[`MAX_CAPACITY`], refill amount in `1..=capacity`, interval in
    /// [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`], horizon at least [`MIN_HORIZON`].
    pub fn new(
        capacity: u64,
        refill_amount: u64,
        refill_interval: Duration,
    ) -> Result<Limit, LimitError> {
        Limit::build(capacity, refill_amount, refill_interval, Refill::Interval)
    }

    /// Greedy refill: one token every `refill_interval / refill_amount`, exactly.
    ///
    /// ```
    /// use std::time::Duration;
    /// // 3 tokens per second, one every 333.33.. ms (exact, no drift), burst 5.
    /// let limit = tollgate::Limit::greedy(5, 3, Duration::from_secs(1))?;
    /// assert_eq!(limit.mode(), tollgate::Refill::Greedy);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Limit::new`], and [`LimitError::StepTooShort`] when a token would come more often
    /// than once per nanosecond.
    pub fn greedy(
        capacity: u64,
        refill_amount: u64,
        refill_interval: Duration,
    ) -> Result<Limit, LimitError> {
        Limit::build(capacity, refill_amount, refill_interval, Refill::Greedy)
    }

    /// `n` per second, one every `1/n` s, with a burst of `n` (change it with [`Limit::burst`]).
    ///
    /// ```
    /// let limit = tollgate::Limit::per_second(50)?;
    /// assert_eq!(limit.capacity(), 50);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Limit::greedy`] (e.g. `n == 0`).
    pub fn per_second(n: u64) -> Result<Limit, LimitError> {
        Limit::greedy(n, n, Duration::from_secs(1))
    }

    /// `n` per minute, one every `1/n` min, with a burst of `n`.
    ///
    /// ```
    /// let limit = tollgate::Limit::per_minute(600)?;
    /// assert_eq!(limit.refill_interval(), std::time::Duration::from_secs(60));
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Limit::greedy`].
    pub fn per_minute(n: u64) -> Result<Limit, LimitError> {
        Limit::greedy(n, n, Duration::from_secs(60))
    }

    /// `n` per hour, one every `1/n` h, with a burst of `n`.
    ///
    /// ```
    /// let limit = tollgate::Limit::per_hour(1000)?;
    /// assert_eq!(limit.refill_amount(), 1000);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Limit::greedy`].
    pub fn per_hour(n: u64) -> Result<Limit, LimitError> {
        Limit::greedy(n, n, Duration::from_secs(3600))
    }

    /// The same refill rate with another capacity (burst size).
    ///
    /// In greedy mode a burst smaller than the refill amount is fine when the rate can be
    /// written exactly with a smaller amount (`per_second(100).burst(10)` becomes one token
    /// every 10 ms, burst 10). In interval mode the amount must fit in the new capacity.
    ///
    /// ```
    /// let limit = tollgate::Limit::per_second(100)?.burst(10)?;
    /// assert_eq!(limit.capacity(), 10);
    /// assert_eq!(limit.refill_amount(), 1);
    /// assert_eq!(limit.refill_interval(), std::time::Duration::from_millis(10));
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// As the constructors; [`LimitError::RefillExceedsCapacity`] when the rate cannot be kept
    /// exactly with so small a capacity.
    pub fn burst(self, capacity: u64) -> Result<Limit, LimitError> {
        let (mut amount, mut interval) = (self.refill_amount, self.refill_interval);
        if self.mode == Refill::Greedy && amount > capacity {
            let ns = interval.as_nanos() as u64; // validated: <= MAX_INTERVAL, fits
            let g = gcd(amount, ns);
            if amount / g <= capacity {
                amount /= g;
                interval = Duration::from_nanos(ns / g);
            }
        }
        Limit::build(capacity, amount, interval, self.mode)
    }

    fn build(
        capacity: u64,
        refill_amount: u64,
        refill_interval: Duration,
        mode: Refill,
    ) -> Result<Limit, LimitError> {
        if capacity == 0 {
            return Err(LimitError::ZeroCapacity);
        }
        if capacity > MAX_CAPACITY {
            return Err(LimitError::CapacityTooLarge { capacity });
        }
        if refill_amount == 0 {
            return Err(LimitError::ZeroRefillAmount);
        }
        if refill_amount > capacity {
            return Err(LimitError::RefillExceedsCapacity {
                refill_amount,
                capacity,
            });
        }
        if refill_interval.is_zero() {
            return Err(LimitError::ZeroInterval);
        }
        if refill_interval > MAX_INTERVAL {
            return Err(LimitError::IntervalTooLong {
                interval: refill_interval,
            });
        }
        let ns = refill_interval.as_nanos() as u64; // <= 2^32 s < 2^64 ns
        let steps = match mode {
            Refill::Interval => Steps::new(capacity, refill_amount, 1, ns),
            Refill::Greedy => {
                if ns < refill_amount {
                    return Err(LimitError::StepTooShort {
                        interval: refill_interval,
                        refill_amount,
                    });
                }
                Steps::new(capacity, 1, refill_amount, ns)
            }
        };
        let horizon = horizon_of(&steps);
        if horizon < MIN_HORIZON {
            return Err(LimitError::HorizonTooShort { horizon });
        }
        Ok(Limit {
            capacity,
            refill_amount,
            refill_interval,
            mode,
            steps,
        })
    }

    /// The most tokens a bucket holds: the largest burst.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Tokens added per [`refill_interval`](Limit::refill_interval).
    pub fn refill_amount(&self) -> u64 {
        self.refill_amount
    }

    /// The refill period.
    pub fn refill_interval(&self) -> Duration {
        self.refill_interval
    }

    /// Interval or greedy refill.
    pub fn mode(&self) -> Refill {
        self.mode
    }

    /// How long a bucket may go untouched before its packed refill mark becomes ambiguous.
    /// Beyond it, a bucket may under-refill (never over-admit) until touched again. At least
    /// [`MIN_HORIZON`]; a horizon beyond `u64::MAX` nanoseconds (about 584 years) is reported
    /// as that.
    ///
    /// ```
    /// let limit = tollgate::Limit::per_second(1000)?;
    /// assert!(limit.horizon() > std::time::Duration::from_secs(100 * 365 * 24 * 3600));
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn horizon(&self) -> Duration {
        horizon_of(&self.steps)
    }

    /// The time for an empty bucket to fill again.
    ///
    /// ```
    /// use std::time::Duration;
    /// let limit = tollgate::Limit::new(10, 2, Duration::from_secs(1))?;
    /// assert_eq!(limit.time_to_fill(), Duration::from_secs(5));
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn time_to_fill(&self) -> Duration {
        self.steps.time_to_fill()
    }

    pub(crate) fn steps(&self) -> &Steps {
        &self.steps
    }
}

fn horizon_of(s: &Steps) -> Duration {
    let ns = (s.horizon_steps() as u128 * s.b as u128) / s.a as u128;
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// What a bucket's tokens become when its limit is replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inherit {
    /// The same number of tokens, capped at the new capacity. The default.
    #[default]
    Keep,
    /// The same fraction of the capacity, rounded down (never in the caller's favour).
    Proportional,
    /// A full bucket under the new limit.
    Reset,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_bad_field() {
        let s = Duration::from_secs(1);
        assert_eq!(Limit::new(0, 1, s).unwrap_err(), LimitError::ZeroCapacity);
        assert_eq!(
            Limit::new(MAX_CAPACITY + 1, 1, s).unwrap_err().field(),
            LimitField::Capacity
        );
        assert_eq!(
            Limit::new(1, 0, s).unwrap_err(),
            LimitError::ZeroRefillAmount
        );
        assert_eq!(
            Limit::new(1, 1, Duration::ZERO).unwrap_err(),
            LimitError::ZeroInterval
        );
        assert_eq!(
            Limit::new(1, 1, MAX_INTERVAL + Duration::from_nanos(1))
                .unwrap_err()
                .field(),
            LimitField::RefillInterval
        );
        assert!(matches!(
            Limit::greedy(10, 10, Duration::from_nanos(9)).unwrap_err(),
            LimitError::StepTooShort { .. }
        ));
        assert!(matches!(
            Limit::per_second(1 << 29).unwrap_err(),
            LimitError::HorizonTooShort { .. }
        ));
        assert!(Limit::new(MAX_CAPACITY, 1, Duration::from_secs(1)).is_ok());
        assert!(Limit::new(1, 1, MAX_INTERVAL).is_ok());
        assert!(Limit::new(1, 1, MIN_INTERVAL).is_ok());
    }

    #[test]
    fn every_horizon_meets_the_minimum() {
        for cap in [1u64, 2, 100, 1 << 20, 1 << 24, MAX_CAPACITY] {
            for ns in [1u64, 1000, 1_000_000, 1_000_000_000] {
                for l in [
                    Limit::new(cap, 1, Duration::from_nanos(ns)),
                    Limit::greedy(cap, cap.min(ns), Duration::from_nanos(ns)),
                ]
                .into_iter()
                .flatten()
                {
                    assert!(l.horizon() >= MIN_HORIZON, "{l:?}");
                }
            }
        }
    }

    #[test]
    fn burst_keeps_the_rate_exactly() {
        let l = Limit::per_second(3).unwrap().burst(1);
        // 3 per second cannot be written with one token per step of whole nanoseconds.
        assert_eq!(
            l.unwrap_err(),
            LimitError::RefillExceedsCapacity {
                refill_amount: 3,
                capacity: 1
            }
        );
        let l = Limit::per_second(3).unwrap().burst(30).unwrap();
        assert_eq!((l.capacity(), l.refill_amount()), (30, 3));
        assert!(Limit::new(10, 5, Duration::from_secs(1))
            .unwrap()
            .burst(4)
            .is_err());
    }
}
