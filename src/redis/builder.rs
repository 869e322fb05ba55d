//! Building a [`RedisLimiter`]: where Redis is (one server, a Cluster, or Sentinel), the
//! limits (tiers, and limits every key also has), the timeout, the failure policy and the
//! denial cache.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::conn::{Conn, Sentinel};
use super::limits::{ScriptLimit, Table};
use super::{DenialCache, OnFailure, Outage, RedisLimitError, RedisLimiter, TierOf, SCRIPT};
use crate::limit::Limit;
use crate::sync::ArcCell;

/// Where the buckets live.
enum Target {
    Single(Result<redis::Client, redis::RedisError>),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// Builds a [`RedisLimiter`]. From [`RedisLimiter::builder`], [`RedisLimiter::cluster`] or
/// [`RedisLimiter::sentinel`].
///
/// ```no_run
/// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
/// use std::time::Duration;
/// use tollgate::redis::{OnFailure, RedisLimiter};
/// use tollgate::Limit;
///
/// let limiter = RedisLimiter::builder("redis://127.0.0.1/", Limit::per_second(10)?, "rl:")
///     .also([Limit::per_hour(1_000)?])
///     .timeout(Duration::from_millis(20))
///     .on_failure(OnFailure::FailOpen)
///     .connect()
///     .await?;
/// # let _ = limiter; Ok(()) }
/// ```
pub struct RedisLimiterBuilder {
    target: Target,
    limit: Limit,
    tiers: Vec<Limit>,
    tier_of: Option<TierOf>,
    also: Vec<Limit>,
    prefix: Vec<u8>,
    timeout: Duration,
    on_failure: OnFailure,
    denial_cache: Option<usize>,
}

impl fmt::Debug for RedisLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiterBuilder")
            .field("limit", &self.limit)
            .field("tiers", &self.tiers)
            .field("also", &self.also)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .field("denial_cache", &self.denial_cache)
            .finish_non_exhaustive()
    }
}

impl RedisLimiterBuilder {
    fn new(target: Target, limit: Limit, key_prefix: &str) -> RedisLimiterBuilder {
        RedisLimiterBuilder {
            target,
            limit,
            tiers: Vec::new(),
            tier_of: None,
            also: Vec::new(),
            prefix: key_prefix.as_bytes().to_vec(),
            timeout: Duration::from_millis(50),
            on_failure: OnFailure::default(),
            denial_cache: None,
        }
    }

    pub(super) fn single(url: &str, limit: Limit, key_prefix: &str) -> RedisLimiterBuilder {
        RedisLimiterBuilder::new(Target::Single(redis::Client::open(url)), limit, key_prefix)
    }

    pub(super) fn cluster(nodes: &[&str], limit: Limit, key_prefix: &str) -> RedisLimiterBuilder {
        let nodes = nodes.iter().map(|s| s.to_string()).collect();
        RedisLimiterBuilder::new(Target::Cluster(nodes), limit, key_prefix)
    }

    pub(super) fn sentinel(
        sentinels: &[&str],
        master: &str,
        limit: Limit,
        key_prefix: &str,
    ) -> RedisLimiterBuilder {
        let target = Target::Sentinel {
            sentinels: sentinels.iter().map(|s| s.to_string()).collect(),
            master: master.to_string(),
        };
        RedisLimiterBuilder::new(target, limit, key_prefix)
    }

    /// The per-call timeout (default 50 ms): past it, [`OnFailure`] applies.
    ///
    /// ```
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let b = RedisLimiter::builder("redis://127.0.0.1/", Limit::per_second(5)?, "rl:")
    ///     .timeout(std::time::Duration::from_millis(10));
    /// # let _ = b; Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What a call does when Redis fails (default [`OnFailure::ReturnError`]).
    ///
    /// ```
    /// # use tollgate::{redis::{OnFailure, RedisLimiter}, Limit};
    /// let b = RedisLimiter::builder("redis://127.0.0.1/", Limit::per_second(5)?, "rl:")
    ///     .on_failure(OnFailure::FailClosed);
    /// # let _ = b; Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// Deny keys locally, with no round trip, until the time Redis said they may retry; hold
    /// about `max_keys` of them (rounded up to a multiple of 16: the cache has 16 shards)
    /// (`None`: off, the default). That time is the server's, advanced by this process's
    /// monotonic clock: the client's wall clock plays no part.
    ///
    /// ```
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let b = RedisLimiter::builder("redis://127.0.0.1/", Limit::per_second(5)?, "rl:")
    ///     .denial_cache(Some(10_000));
    /// # let _ = b; Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn denial_cache(mut self, max_keys: Option<usize>) -> Self {
        self.denial_cache = max_keys;
        self
    }

    /// Limits every key has besides its own (10 per second *and* 1,000 per hour): a call is
    /// granted only when all grant it, checked and taken in one script call (all or nothing).
    ///
    /// ```
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let b = RedisLimiter::builder("redis://127.0.0.1/", Limit::per_second(10)?, "rl:")
    ///     .also([Limit::per_hour(1_000)?]);
    /// # let _ = b; Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn also(mut self, limits: impl IntoIterator<Item = Limit>) -> Self {
        self.also.extend(limits);
        self
    }

    /// Tiers, as [`KeyedLimiterBuilder::tiers`](crate::KeyedLimiterBuilder::tiers): tier 0 is
    /// the builder's limit, tier `i` (1 ..= 255) is `more[i - 1]`; `tier_of` picks a key's tier
    /// on every call and must give the same answer for the same key (an index out of range
    /// means tier 0). Limits given to [`also`](RedisLimiterBuilder::also) apply to every tier.
    ///
    /// ```
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let b = RedisLimiter::builder("redis://127.0.0.1/", Limit::per_minute(10)?, "rl:")
    ///     .tiers([Limit::per_minute(1_000)?], |key: &[u8]| usize::from(key.starts_with(b"pro-")));
    /// # let _ = b; Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn tiers(
        mut self,
        more: impl IntoIterator<Item = Limit>,
        tier_of: impl Fn(&[u8]) -> usize + Send + Sync + 'static,
    ) -> Self {
        self.tiers = more.into_iter().take(255).collect();
        self.tier_of = Some(Arc::new(tier_of));
        self
    }

    /// Connects: to one server (a multiplexed connection that reconnects by itself), to a
    /// Cluster (following `MOVED` / `ASK`), or to the master Sentinel names.
    ///
    /// # Errors
    /// [`RedisLimitError::UnsupportedLimit`] when a limit needs what the script cannot do
    /// exactly (an interval that is not whole microseconds, more than one token per
    /// microsecond, or a rate whose reduced numbers multiply past 2^52);
    /// [`RedisLimitError::InvalidUrl`] for a URL that is not Redis's;
    /// [`RedisLimitError::Unavailable`] when the first connection fails within four timeouts
    /// (at least 400 ms); [`RedisLimitError::ClusterUnsupported`] for a server in cluster mode
    /// given to [`RedisLimiter::builder`] (use [`RedisLimiter::cluster`]).
    pub async fn connect(self) -> Result<RedisLimiter, RedisLimitError> {
        let checked = |l: &Limit| ScriptLimit::new(*l).map_err(RedisLimitError::UnsupportedLimit);
        let tiers = std::iter::once(&self.limit)
            .chain(&self.tiers)
            .map(checked)
            .collect::<Result<Vec<_>, _>>()?;
        let also = self.also.iter().map(checked).collect::<Result<_, _>>()?;
        let wait = self.timeout.max(Duration::from_millis(100)) * 4;
        let unavailable = |e| RedisLimitError::Unavailable(Outage::Redis(e));
        let timed_out = || RedisLimitError::Unavailable(Outage::Timeout(wait));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = match self.target {
            Target::Single(client) => {
                let client = client.map_err(RedisLimitError::InvalidUrl)?;
                let con =
                    tokio::time::timeout(wait, ConnectionManager::new_with_config(client, config))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(unavailable)?;
                Conn::Single(con)
            }
            Target::Cluster(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    // Calls are bounded by the limiter's own timeout; within it, follow
                    // redirects and ride out a failover (slot map refreshed on MOVED).
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(RedisLimitError::InvalidUrl)?;
                let con = tokio::time::timeout(wait, client.get_async_connection())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(unavailable)?;
                Conn::Cluster(con)
            }
            Target::Sentinel { sentinels, master } => {
                let client = redis::sentinel::SentinelClient::build(
                    sentinels,
                    master,
                    None,
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(RedisLimitError::InvalidUrl)?;
                let s = Sentinel::connect(client, config, wait)
                    .await
                    .map_err(unavailable)?;
                Conn::Sentinel(Arc::new(s))
            }
        };
        if matches!(con, Conn::Single(_)) {
            check_cluster(&con, wait).await?;
        }
        check_memory_policy(&con, wait).await;
        Ok(RedisLimiter {
            con,
            script: Arc::new(redis::Script::new(SCRIPT)),
            table: Arc::new(ArcCell::new(Arc::new(Table {
                tiers,
                also,
                generation: 0,
            }))),
            tier_of: self.tier_of,
            prefix: self.prefix.into(),
            timeout: self.timeout,
            on_failure: self.on_failure,
            denials: self.denial_cache.map(|cap| Arc::new(DenialCache::new(cap))),
            degraded_logged: Arc::new((
                std::sync::atomic::AtomicU64::new(0),
                std::time::Instant::now(),
            )),
        })
    }
}

/// A single-node client refuses a server in cluster mode: keys on other nodes would fail. A
/// server that refuses `INFO` (a restricted ACL) passes.
async fn check_cluster(con: &Conn, wait: Duration) -> Result<(), RedisLimitError> {
    let mut cmd = redis::cmd("INFO");
    cmd.arg("cluster");
    let info = tokio::time::timeout(wait, con.query::<String>(&cmd)).await;
    if let Ok(Ok(info)) = info {
        if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Err(RedisLimitError::ClusterUnsupported);
        }
    }
    Ok(())
}

/// A warning when the server may evict keys under `maxmemory` (an evicted bucket comes back
/// full: an early reset). A server that refuses `CONFIG` passes.
async fn check_memory_policy(con: &Conn, wait: Duration) {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("GET").arg("maxmemory-policy");
    let policy = tokio::time::timeout(wait, con.query::<Vec<String>>(&cmd)).await;
    if let Ok(Ok(pair)) = policy {
        if let Some(policy) = pair.get(1).filter(|p| p.as_str() != "noeviction") {
            tracing::warn!(
                policy = %policy,
                "tollgate: this redis server may evict keys when it reaches maxmemory; an \
                 evicted bucket comes back full (an early reset): use noeviction, or enough \
                 memory"
            );
        }
    }
}
