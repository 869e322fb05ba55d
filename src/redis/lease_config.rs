//! How a [`LeasedLimiter`](super::LeasedLimiter) leases, and what it counts.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// How a [`LeasedLimiter`](super::LeasedLimiter) leases.
///
/// ```
/// use std::time::Duration;
/// use tollgate::redis::LeaseConfig;
/// let config = LeaseConfig::new().expected_processes(8).hold(Duration::from_millis(100));
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub(super) max_tokens: Option<u64>,
    pub(super) processes: u64,
    pub(super) hold: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            max_tokens: None,
            processes: 8,
            hold: Duration::from_millis(250),
        }
    }
}

impl LeaseConfig {
    /// The defaults: leases of at most an eighth of the capacity (as for 8 processes), held at
    /// most 250 ms.
    ///
    /// ```
    /// # use tollgate::redis::LeaseConfig;
    /// assert_eq!(LeaseConfig::new(), LeaseConfig::default());
    /// ```
    pub fn new() -> LeaseConfig {
        LeaseConfig::default()
    }

    /// At most `n` tokens per lease (at least 1; capped at the capacity).
    ///
    /// ```
    /// # use tollgate::redis::LeaseConfig;
    /// let config = LeaseConfig::new().max_tokens(100);
    /// # let _ = config;
    /// ```
    pub fn max_tokens(mut self, n: u64) -> LeaseConfig {
        self.max_tokens = Some(n.max(1));
        self
    }

    /// Leases of at most `capacity / processes` tokens (at least 1), so that `processes`
    /// processes together never hold more than the capacity. Ignored after
    /// [`max_tokens`](LeaseConfig::max_tokens).
    ///
    /// ```
    /// # use tollgate::redis::LeaseConfig;
    /// let config = LeaseConfig::new().expected_processes(4);
    /// # let _ = config;
    /// ```
    pub fn expected_processes(mut self, processes: u64) -> LeaseConfig {
        self.processes = processes.max(1);
        self
    }

    /// How long a lease lasts at most (default 250 ms): its unspent tokens then go back.
    ///
    /// ```
    /// # use tollgate::redis::LeaseConfig;
    /// let config = LeaseConfig::new().hold(std::time::Duration::from_millis(50));
    /// # let _ = config;
    /// ```
    pub fn hold(mut self, hold: Duration) -> LeaseConfig {
        self.hold = hold.max(Duration::from_millis(1));
        self
    }
}

/// What a [`LeasedLimiter`](super::LeasedLimiter) did, since it was made.
///
/// ```no_run
/// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
/// # use tollgate::{redis::{LeaseConfig, RedisLimiter}, Limit};
/// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(1_000)?, "rl:")
///     .await?
///     .leased(LeaseConfig::new());
/// let _ = limiter.try_acquire(b"ann", 1).await?;
/// assert_eq!(limiter.stats().leases, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseStats {
    /// Script calls that took (or tried to take) a lease.
    pub leases: u64,
    /// Tokens leased.
    pub leased: u64,
    /// Tokens granted (from a lease or with its call): leased, less returned, less what the
    /// leases hold now.
    pub granted: u64,
    /// Tokens that left a lease unspent (to be given back), and what the undos gave back of
    /// them.
    pub returned: u64,
    /// See `returned`.
    pub given_back: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) leases: AtomicU64,
    pub(super) leased: AtomicU64,
    pub(super) returned: AtomicU64,
    pub(super) given_back: AtomicU64,
}
