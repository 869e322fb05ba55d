//! # tollgate
//!
//! Exact, lock-free token-bucket rate limiting.
//!
//! A [`TokenBucket`] holds its whole state (tokens and refill mark) in one `AtomicU64`,
//! updated by compare-and-swap: no lock, no allocation, one clock read per call. Every call
//! returns a [`Decision`]: allowed or not, tokens remaining, and the exact waits
//! (`retry_after`, `reset_after`, `next_refill_after`), computed with integer arithmetic.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{Limit, TokenBucket};
//!
//! // Capacity 10, 2 tokens back at the end of every second.
//! let bucket = TokenBucket::new(Limit::new(10, 2, Duration::from_secs(1))?);
//! for _ in 0..10 {
//!     assert!(bucket.check().is_allowed());
//! }
//! let denied = bucket.check();
//! assert!(denied.is_denied());
//! assert!(denied.retry_after() <= Duration::from_secs(1));
//! # Ok::<(), tollgate::LimitError>(())
//! ```
//!
//! ## Semantics
//!
//! A limit has a capacity C, a refill amount R and a refill interval I. In
//! [`Refill::Interval`] mode R whole tokens arrive at the end of every whole interval; in
//! [`Refill::Greedy`] mode one token arrives every I/R, exactly. A new bucket is full. A request
//! for `n` tokens is granted when `n` tokens are there, and then consumes them; a denial
//! consumes nothing (and writes nothing, unless it is the first call to see a new refill step). A request for more than C tokens is an error
//! ([`InsufficientCapacity`]): it could never succeed. A clock that goes backwards changes
//! nothing.
//!
//! Concurrent calls are linearizable: every history equals some sequential order of the same
//! calls (checked with loom, `tests/loom.rs`).
//!
//! What every part of the crate promises, precisely, is the [`contract`]: a
//! [limit](contract::limit), [one bucket](contract::bucket), [keyed buckets](contract::keyed),
//! [Redis](contract::redis) and [HTTP](contract::http).

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doctests (they use every feature).
#[cfg(all(doctest, feature = "http", feature = "redis", feature = "config"))]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

#[doc = include_str!("../docs/contract/index.md")]
pub mod contract {
    #[doc = include_str!("../docs/contract/limit.md")]
    pub mod limit {}
    #[doc = include_str!("../docs/contract/bucket.md")]
    pub mod bucket {}
    #[doc = include_str!("../docs/contract/keyed.md")]
    pub mod keyed {}
    #[doc = include_str!("../docs/contract/redis.md")]
    pub mod redis {}
    #[doc = include_str!("../docs/contract/http.md")]
    pub mod http {}
}

mod bucket;
mod cell;
mod clock;
mod decision;
#[cfg(feature = "http")]
pub mod http;
mod inflight;
mod keyed;
mod limit;
#[cfg(feature = "serde")]
mod limit_serde;
mod limits;
mod multi;
mod parse;
#[cfg(feature = "redis")]
pub mod redis;
mod reservation;
mod state;
mod stats;
mod steps;
mod sync;
mod upkeep;
#[cfg(feature = "tokio")]
mod wait;

pub use bucket::{TokenBucket, TooManyReconfigurations, MAX_RECONFIGURATIONS};
pub use clock::{
    Clock, CoarseClock, DefaultClock, ManualClock, MonotonicClock, COARSE_UPKEEP_INTERVAL,
};
pub use decision::{Decision, InsufficientCapacity};
pub use inflight::{Busy, InFlightLimiter, InFlightPermit};
pub use keyed::{
    AtCapacity, Evictor, KeyHashState, KeyHasher, KeyedLimiter, KeyedLimiterBuilder,
    KeyedReservation, SetLimitError, MAX_PRESIZE,
};
pub use limit::{
    Inherit, Limit, LimitError, LimitField, Refill, MAX_CAPACITY, MAX_INTERVAL, MIN_HORIZON,
    MIN_INTERVAL,
};
pub use multi::{MultiBucket, MultiDecision, MultiKeyedLimiter};
pub use parse::ParseLimitError;
pub use reservation::{Reservation, ReserveError};
pub use stats::Stats;
#[cfg(loom)]
#[doc(hidden)]
pub use upkeep::LoomUpkeep;
