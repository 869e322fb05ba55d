//! Reservations: tokens taken now that can be given back.

use std::fmt;
use std::sync::Arc;

use crate::clock::Clock;
use crate::decision::{Decision, InsufficientCapacity};
use crate::TokenBucket;

/// Reservations on a bucket.
impl<C: Clock> TokenBucket<C> {
    /// Takes `n` tokens as a [`Reservation`]: keep it (drop it) and the
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
    /// [`ReserveError::Denied`] with the denial when the tokens are
    /// not there; [`ReserveError::InsufficientCapacity`]
    /// when `n` exceeds the capacity.
    pub fn reserve(&self, n: u64) -> Result<Reservation<'_, C>, ReserveError> {
        let (d, node) = self.take_tracked(n)?;
        if d.is_denied() {
            return Err(ReserveError::Denied(d));
        }
        Ok(Reservation::new(Handle::Borrowed(self), n, d, node))
    }

    /// [`reserve`](TokenBucket::reserve) for a bucket in an `Arc`: the reservation holds the
    /// bucket itself, so it can be stored or moved anywhere (`'static`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::{Limit, Reservation, TokenBucket};
    /// let bucket = Arc::new(TokenBucket::new(Limit::per_hour(10)?));
    /// let r: Reservation<'static, _> = bucket.reserve_owned(4).unwrap();
    /// let handle = std::thread::spawn(move || r.cancel().remaining());
    /// assert_eq!(handle.join().unwrap(), 10);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// As [`reserve`](TokenBucket::reserve).
    pub fn reserve_owned(
        self: &Arc<Self>,
        n: u64,
    ) -> Result<Reservation<'static, C>, ReserveError> {
        let (d, node) = self.take_tracked(n)?;
        if d.is_denied() {
            return Err(ReserveError::Denied(d));
        }
        Ok(Reservation::new(Handle::Owned(self.clone()), n, d, node))
    }
}

/// The bucket a reservation gives back to: borrowed, or shared through an `Arc`.
enum Handle<'a, C: Clock> {
    Borrowed(&'a TokenBucket<C>),
    Owned(Arc<TokenBucket<C>>),
}

impl<C: Clock> std::ops::Deref for Handle<'_, C> {
    type Target = TokenBucket<C>;
    fn deref(&self) -> &TokenBucket<C> {
        match self {
            Handle::Borrowed(b) => b,
            Handle::Owned(b) => b,
        }
    }
}

/// Tokens taken by [`TokenBucket::reserve`] (or [`reserve_owned`](TokenBucket::reserve_owned):
/// `Reservation<'static, C>`). Dropping it keeps them spent; [`cancel`](Reservation::cancel)
/// gives them back.
#[must_use = "dropping a reservation keeps its tokens spent; call cancel() to give them back"]
pub struct Reservation<'a, C: Clock> {
    bucket: Handle<'a, C>,
    n: u64,
    decision: Decision,
    /// The limit (the bucket's node) the tokens were taken under.
    node: usize,
}

impl<'a, C: Clock> Reservation<'a, C> {
    fn new(bucket: Handle<'a, C>, n: u64, decision: Decision, node: usize) -> Self {
        Reservation {
            bucket,
            n,
            decision,
            node,
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

    /// Gives the tokens back as an *undo*: the bucket ends with at most what it would hold had
    /// the reservation never been made. Cancelled within the refill step it was made in (or
    /// before any other call saw a new step), all the tokens come back, capped at the capacity.
    /// For each refill step that other calls applied since, one refill's worth (`q` tokens)
    /// less comes back: those refills might have been capped at the capacity had the tokens
    /// not been taken, so giving them all back could grant more than the limit allows. After a
    /// [`set_limit`](TokenBucket::set_limit) since the reservation, nothing comes back. For an
    /// unconditional grant, use [`TokenBucket::refund`]. Returns the bucket after the undo.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{Limit, ManualClock, TokenBucket};
    /// let clock = ManualClock::new();
    /// let bucket = TokenBucket::with_clock(Limit::new(1, 1, Duration::from_secs(1))?, clock.clone());
    /// let r = bucket.reserve(1).unwrap();
    /// clock.advance(Duration::from_secs(1));
    /// assert!(bucket.check().is_allowed()); // the step-1 refill, taken by someone else
    /// // Without the reservation the bucket was full at step 1 and that refill was capped:
    /// // nothing comes back.
    /// assert_eq!(r.cancel().remaining(), 0);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn cancel(self) -> Decision {
        self.bucket.undo(self.n, &self.decision, self.node)
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
#[non_exhaustive]
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

/// No `source()`: the wrapped [`InsufficientCapacity`]'s message is this one's.
impl std::error::Error for ReserveError {}
