//! Reservations: tokens taken now that can be given back.

use std::fmt;

use crate::clock::Clock;
use crate::decision::{Decision, InsufficientCapacity};
use crate::TokenBucket;

/// Tokens taken by [`TokenBucket::reserve`]. Dropping it keeps them spent;
/// [`cancel`](Reservation::cancel) gives them back.
#[must_use = "dropping a reservation keeps its tokens spent; call cancel() to give them back"]
pub struct Reservation<'a, C: Clock> {
    bucket: &'a TokenBucket<C>,
    n: u64,
    decision: Decision,
}

impl<'a, C: Clock> Reservation<'a, C> {
    pub(crate) fn new(bucket: &'a TokenBucket<C>, n: u64, decision: Decision) -> Self {
        Reservation {
            bucket,
            n,
            decision,
        }
    }

    /// The decision that granted the reservation.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The tokens reserved.
    pub fn tokens(&self) -> u64 {
        self.n
    }

    /// Gives the tokens back (capped at the capacity); returns the bucket after the refund.
    pub fn cancel(self) -> Decision {
        self.bucket.refund(self.n)
    }
}

impl<C: Clock> fmt::Debug for Reservation<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("tokens", &self.n)
            .field("decision", &self.decision)
            .finish()
    }
}

/// Why [`TokenBucket::reserve`] gave no reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveError {
    /// The tokens are not there now; the denial says when they will be.
    Denied(Decision),
    /// More tokens than the capacity: never possible.
    InsufficientCapacity(InsufficientCapacity),
}

impl From<InsufficientCapacity> for ReserveError {
    fn from(e: InsufficientCapacity) -> Self {
        ReserveError::InsufficientCapacity(e)
    }
}

impl fmt::Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReserveError::Denied(d) => write!(
                f,
                "not enough tokens now; retry after {:?}",
                d.retry_after()
            ),
            ReserveError::InsufficientCapacity(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReserveError {}
