//! Why a Redis-backed call failed: typed, with the underlying error as `source()`.

use std::fmt;
use std::time::Duration;

use crate::decision::InsufficientCapacity;
use crate::limit::LimitError;

/// Why a Redis-backed call failed.
///
/// ```
/// use tollgate::redis::{Outage, RedisLimitError};
/// let e = RedisLimitError::Unavailable(Outage::Timeout(std::time::Duration::from_millis(50)));
/// assert_eq!(e.to_string(), "redis unavailable: no answer within 50ms");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum RedisLimitError {
    /// The limit cannot be run exactly by the script (it needs whole microseconds and numbers
    /// below 2^52).
    UnsupportedLimit(UnsupportedLimit),
    /// A bad limit.
    InvalidLimit(LimitError),
    /// More tokens asked for than the capacity.
    InsufficientCapacity(InsufficientCapacity),
    /// The URL given to [`RedisLimiter::builder`](super::RedisLimiter::builder) is not a Redis
    /// URL.
    InvalidUrl(redis::RedisError),
    /// Redis did not answer within the timeout, or the connection or command failed.
    Unavailable(Outage),
    /// Redis answered something the script never returns (the reply, as integers).
    Protocol(Vec<i64>),
    /// An explicit time (`try_acquire_at`) at or past 2^52 microseconds, which the script
    /// cannot count exactly.
    TimeOutOfRange {
        /// The time given, in microseconds.
        now_us: u64,
    },
    /// The server given to [`RedisLimiter::builder`](super::RedisLimiter::builder) runs in
    /// cluster mode, where a single-node client would fail every key another node owns: use
    /// [`RedisLimiter::cluster`](super::RedisLimiter::cluster).
    ClusterUnsupported,
    /// A tier past the last one given to
    /// [`RedisLimiterBuilder::tiers`](super::RedisLimiterBuilder::tiers).
    UnknownTier {
        /// The tier asked for.
        tier: usize,
    },
    /// A `Reset` limit change needs the time of the change (it resets the buckets written
    /// before it, once): give [`set_tier_limit_at`](super::RedisLimiter::set_tier_limit_at) a
    /// time.
    ResetWithoutTime,
}

impl fmt::Display for RedisLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisLimitError::UnsupportedLimit(why) => {
                write!(f, "limit not supported by the Redis backend: {why}")
            }
            RedisLimitError::InvalidLimit(e) => e.fmt(f),
            RedisLimitError::InsufficientCapacity(e) => e.fmt(f),
            RedisLimitError::InvalidUrl(e) => write!(f, "invalid redis URL: {e}"),
            RedisLimitError::Unavailable(why) => write!(f, "redis unavailable: {why}"),
            RedisLimitError::Protocol(reply) => {
                write!(f, "unexpected answer from redis: {reply:?}")
            }
            RedisLimitError::TimeOutOfRange { now_us } => {
                write!(f, "time {now_us} us is past 2^52 microseconds")
            }
            RedisLimitError::ClusterUnsupported => write!(
                f,
                "the redis server runs in cluster mode: connect with RedisLimiter::cluster, which \
                 follows MOVED/ASK redirects"
            ),
            RedisLimitError::UnknownTier { tier } => write!(f, "no tier {tier}"),
            RedisLimitError::ResetWithoutTime => {
                write!(f, "a Reset limit change needs the time of the change")
            }
        }
    }
}

/// The message of a wrapped error is part of this one's `Display`, so `source()` goes on from
/// the wrapped error's own source (a report never prints one message twice).
impl std::error::Error for RedisLimitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RedisLimitError::InvalidUrl(e) => e.source(),
            RedisLimitError::Unavailable(e) => e.source(),
            _ => None,
        }
    }
}

impl From<LimitError> for RedisLimitError {
    fn from(e: LimitError) -> Self {
        RedisLimitError::InvalidLimit(e)
    }
}

/// What of a limit the Redis script cannot run exactly (its clock is whole microseconds, its
/// numbers are doubles, exact below 2^52).
///
/// ```
/// use tollgate::redis::UnsupportedLimit;
/// let e = UnsupportedLimit::FasterThanOnePerMicrosecond;
/// assert_eq!(e.to_string(), "more than one token per microsecond");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsupportedLimit {
    /// A step (a refill interval, or `interval / amount` in greedy mode) is not a whole number
    /// of microseconds.
    SubMicrosecondStep {
        /// The limit's refill interval.
        interval: Duration,
        /// Its refill amount.
        amount: u64,
    },
    /// More than one token per microsecond.
    FasterThanOnePerMicrosecond,
    /// The step rate, reduced to `a / b` tokens per microsecond, has `a * b` at or past 2^52.
    RateTooFine {
        /// The reduced numerator.
        a: u64,
        /// The reduced denominator, in microseconds.
        b_us: u64,
    },
    /// [`Inherit::Proportional`](crate::Inherit::Proportional) on a limit change: the script
    /// cannot scale tokens exactly (it needs 64-bit products); use `Keep` or `Reset`.
    ProportionalInherit,
}

impl fmt::Display for UnsupportedLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsupportedLimit::SubMicrosecondStep { interval, amount } => write!(
                f,
                "the step rate needs nanoseconds ({interval:?} / {amount}); Redis time is in \
                 whole microseconds"
            ),
            UnsupportedLimit::FasterThanOnePerMicrosecond => {
                write!(f, "more than one token per microsecond")
            }
            UnsupportedLimit::RateTooFine { a, b_us } => {
                write!(f, "the reduced rate {a}/{b_us} us multiplies past 2^52")
            }
            UnsupportedLimit::ProportionalInherit => write!(
                f,
                "proportional tokens on a limit change (the Redis script keeps or resets them)"
            ),
        }
    }
}

impl std::error::Error for UnsupportedLimit {}

/// Why Redis gave no answer.
///
/// ```
/// use tollgate::redis::Outage;
/// let e = Outage::Timeout(std::time::Duration::from_millis(50));
/// assert_eq!(e.to_string(), "no answer within 50ms");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Outage {
    /// No answer within the configured timeout.
    Timeout(Duration),
    /// The connection or the command failed.
    Redis(redis::RedisError),
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outage::Timeout(after) => write!(f, "no answer within {after:?}"),
            Outage::Redis(e) => e.fmt(f),
        }
    }
}

/// As for [`RedisLimitError`]: the Redis error's message is this one's, its source is ours.
impl std::error::Error for Outage {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Outage::Timeout(_) => None,
            Outage::Redis(e) => e.source(),
        }
    }
}
