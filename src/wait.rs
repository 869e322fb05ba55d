//! Waiting for tokens (feature `tokio`): `acquire(n).await` sleeps until the tokens are there.

use std::time::Duration;

use crate::clock::Clock;
use crate::decision::{Decision, InsufficientCapacity};
use crate::TokenBucket;

/// A random duration in `0..=max` (for jitter): std's randomly keyed hasher over a counter.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    if max.is_zero() {
        return Duration::ZERO;
    }
    // Relaxed: a counter that only varies the hash input.
    let x = RandomState::new().hash_one(CALLS.fetch_add(1, Ordering::Relaxed));
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(x % nanos.saturating_add(1))
}

/// Tries, and sleeps `retry_after` (plus jitter) between tries, until `attempt` grants.
pub(crate) async fn wait_for(
    max_jitter: Duration,
    mut attempt: impl FnMut() -> Result<Decision, InsufficientCapacity>,
) -> Result<Decision, InsufficientCapacity> {
    loop {
        let d = attempt()?;
        if d.is_allowed() {
            return Ok(d);
        }
        tokio::time::sleep(d.retry_after() + jitter(max_jitter)).await;
    }
}

impl<C: Clock> TokenBucket<C> {
    /// Waits until `n` tokens are there and takes them: the returned decision is the grant (no
    /// second `check` needed). Cancellation-safe: each try is one atomic step and the waits
    /// between tries hold nothing, so a future dropped before it completes has consumed nothing.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use tollgate::{Limit, TokenBucket};
    ///
    /// let bucket = TokenBucket::new(Limit::new(2, 2, Duration::from_millis(20))?);
    /// bucket.acquire(2).await?; // at once
    /// bucket.acquire(2).await?; // about 20 ms later
    /// assert!(bucket.acquire(3).await.is_err()); // more than the capacity: never
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`InsufficientCapacity`] at once when `n` exceeds the capacity (it could never succeed).
    pub async fn acquire(&self, n: u64) -> Result<Decision, InsufficientCapacity> {
        self.acquire_with_jitter(n, Duration::ZERO).await
    }

    /// As [`acquire`](TokenBucket::acquire), adding a random `0..=max_jitter` to every wait, so
    /// that many waiters do not all retry at the same instant.
    ///
    /// # Errors
    /// As [`acquire`](TokenBucket::acquire).
    pub async fn acquire_with_jitter(
        &self,
        n: u64,
        max_jitter: Duration,
    ) -> Result<Decision, InsufficientCapacity> {
        wait_for(max_jitter, || self.try_acquire(n)).await
    }
}

impl<K, S> crate::KeyedLimiter<K, S>
where
    K: std::hash::Hash + Eq,
    S: std::hash::BuildHasher,
{
    /// Waits until `n` tokens are there in `key`'s bucket and takes them; cancellation-safe,
    /// as [`TokenBucket::acquire`].
    ///
    /// # Errors
    /// [`InsufficientCapacity`] at once when `n` exceeds the capacity.
    pub async fn acquire_key<Q>(&self, key: &Q, n: u64) -> Result<Decision, InsufficientCapacity>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        wait_for(Duration::ZERO, || self.try_acquire_key(key, n)).await
    }
}
