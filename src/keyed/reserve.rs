//! Reservations on a key: tokens taken now that a [`cancel`](KeyedReservation::cancel) gives
//! back as an undo ([contract §2](crate::contract::bucket)), as [`Reservation`](crate::Reservation)
//! does for one bucket.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use super::KeyedLimiter;
use crate::decision::Decision;
use crate::reservation::ReserveError;

/// Reservations on keys.
impl<K: Hash + Eq, S: BuildHasher> KeyedLimiter<K, S> {
    /// Takes `n` tokens from `key`'s bucket as a [`KeyedReservation`]: keep it (drop it) and the
    /// tokens stay spent; [`cancel`](KeyedReservation::cancel) it and they come back as an undo.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_hour(10)?);
    /// let r = limiter.reserve_key("alice", 4).unwrap();
    /// assert_eq!(r.decision().remaining(), 6);
    /// assert_eq!(r.cancel().remaining(), 10); // the work was not needed after all
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`ReserveError::Denied`] with the denial when the tokens are not there;
    /// [`ReserveError::InsufficientCapacity`] when `n` exceeds the key's capacity.
    pub fn reserve_key<Q>(
        &self,
        key: &Q,
        n: u64,
    ) -> Result<KeyedReservation<'_, K, S>, ReserveError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.reserve_with(Handle::Borrowed(self), key, n)
    }

    /// [`reserve_key`](KeyedLimiter::reserve_key) for a limiter in an `Arc`: the reservation
    /// holds the limiter, so it can be stored or moved anywhere (`'static`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: Arc<KeyedLimiter<String>> = Arc::new(KeyedLimiter::new(Limit::per_hour(10)?));
    /// let r = limiter.reserve_key_owned("alice", 4).unwrap();
    /// let left = std::thread::spawn(move || r.cancel().remaining()).join().unwrap();
    /// assert_eq!(left, 10);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// As [`reserve_key`](KeyedLimiter::reserve_key).
    pub fn reserve_key_owned<Q>(
        self: &Arc<Self>,
        key: &Q,
        n: u64,
    ) -> Result<KeyedReservation<'static, K, S>, ReserveError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.reserve_with(Handle::Owned(self.clone()), key, n)
    }

    fn reserve_with<'a, Q>(
        &self,
        limiter: Handle<'a, K, S>,
        key: &Q,
        n: u64,
    ) -> Result<KeyedReservation<'a, K, S>, ReserveError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (decision, (slot, _)) = self.take_key_tracked(key, n)?;
        if decision.is_denied() {
            return Err(ReserveError::Denied(decision));
        }
        Ok(KeyedReservation {
            limiter,
            key: key.to_owned(),
            n,
            decision,
            slot,
        })
    }
}

/// The limiter a reservation gives back to: borrowed, or shared through an `Arc`.
enum Handle<'a, K, S> {
    Borrowed(&'a KeyedLimiter<K, S>),
    Owned(Arc<KeyedLimiter<K, S>>),
}

/// Tokens taken from one key by [`KeyedLimiter::reserve_key`] (or
/// [`reserve_key_owned`](KeyedLimiter::reserve_key_owned): `KeyedReservation<'static, K, S>`).
/// Dropping it keeps them spent; [`cancel`](KeyedReservation::cancel) gives them back.
#[must_use = "dropping a reservation keeps its tokens spent; call cancel() to give them back"]
pub struct KeyedReservation<'a, K, S> {
    limiter: Handle<'a, K, S>,
    key: K,
    n: u64,
    decision: Decision,
    /// The id of the limit slot the tokens were taken under (`NO_SLOT`: the key cap answered).
    slot: u32,
}

impl<K: Hash + Eq, S: BuildHasher> KeyedReservation<'_, K, S> {
    /// The decision that granted the reservation.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The key the tokens were taken from.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The tokens reserved.
    pub fn tokens(&self) -> u64 {
        self.n
    }

    /// Gives the tokens back as an *undo*, exactly as [`Reservation::cancel`](crate::Reservation::cancel)
    /// does for one bucket: at most what the key's bucket would hold had the reservation never
    /// been made; nothing after a limit change of the key's tier, or when the key cap answered
    /// the reservation. Returns the key's bucket after the undo.
    pub fn cancel(self) -> Decision
    where
        K: Clone,
    {
        let limiter = match &self.limiter {
            Handle::Borrowed(l) => *l,
            Handle::Owned(l) => &**l,
        };
        limiter.undo_key(&self.key, self.n, &self.decision, self.slot)
    }
}

impl<K: fmt::Debug, S> fmt::Debug for KeyedReservation<'_, K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedReservation")
            .field("key", &self.key)
            .field("tokens", &self.n)
            .field("decision", &self.decision)
            .finish()
    }
}
