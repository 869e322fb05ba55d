//! Distributed limits on Redis (feature `redis`): the same bucket and the same decisions,
//! shared by many processes through one Redis key per user key ([contract §4](crate::contract::redis)).
//!
//! One Lua script ([`SCRIPT`]) does refill and acquire atomically on the server, in one round
//! trip (`EVALSHA`; a `NOSCRIPT` answer reloads it). Time is the server's `TIME`, so clients'
//! clocks do not matter. Steps count from the Unix epoch, one epoch for every process. The key
//! expires when its bucket would be full again (a full bucket and a missing one are the same),
//! and the script touches only `KEYS[1]`, named `prefix{key}`, so the script itself is
//! Cluster-safe. The client is single-node: it follows no `MOVED` / `ASK` redirect and no
//! Sentinel failover, so [`RedisLimiterBuilder::connect`] refuses a server in cluster mode
//! ([`RedisLimitError::ClusterUnsupported`]) rather than erroring (or, under
//! [`OnFailure::FailOpen`], silently not limiting) every key another node owns.
//!
//! Memory policy: a bucket key evicted under `maxmemory` comes back full (an early reset that
//! can admit more than the limit). `connect` logs a warning when the server's
//! `maxmemory-policy` is not `noeviction`; give rate-limit keys a Redis whose memory suffices,
//! or `noeviction`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
//! use tollgate::redis::RedisLimiter;
//! use tollgate::Limit;
//!
//! let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(10)?, "rl:").await?;
//! let d = limiter.try_acquire(b"user-42", 1).await?;
//! println!("allowed: {}, remaining: {}", d.is_allowed(), d.remaining());
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::decision::{Decision, InsufficientCapacity};
use crate::limit::Limit;
use crate::state::{self, Outcome};
use crate::steps::{self, Steps};

mod denials;
mod error;

pub use error::{Outage, RedisLimitError, UnsupportedLimit};

use denials::{DenialCache, Denied};

/// The Lua script, as loaded into Redis.
pub const SCRIPT: &str = include_str!("limiter.lua");

/// Every number the script handles stays below this (Lua numbers are doubles).
const LUA_EXACT: u64 = 1 << 52;

/// What a call does when Redis does not answer in time (or at all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Allow the request; the decision says [`Decision::is_degraded`].
    FailOpen,
    /// Deny the request; the decision says [`Decision::is_degraded`].
    FailClosed,
    /// Return [`RedisLimitError::Unavailable`]. The default.
    #[default]
    ReturnError,
}

/// A Redis-backed limiter: every key's bucket lives in Redis, shared by all processes that use
/// the same URL, limit and prefix. Cloning is cheap: clones share the connection, the script
/// and the denial cache.
#[derive(Clone)]
pub struct RedisLimiter {
    con: ConnectionManager,
    script: Arc<redis::Script>,
    limit: Limit,
    steps: Steps,
    /// a and b in microseconds (the script's units).
    a: u64,
    b_us: u64,
    prefix: Arc<[u8]>,
    timeout: Duration,
    on_failure: OnFailure,
    denials: Option<Arc<DenialCache>>,
    /// When a degraded decision was last logged (seconds since `since`, plus one; 0: never),
    /// shared by clones: an outage logs a line every [`LOG_EVERY`], not one per request.
    degraded_logged: Arc<(std::sync::atomic::AtomicU64, std::time::Instant)>,
}

/// At most one log line per this long about decisions made without Redis.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("limit", &self.limit)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .finish()
    }
}

/// Builds a [`RedisLimiter`]. From [`RedisLimiter::builder`].
pub struct RedisLimiterBuilder {
    client: Result<redis::Client, redis::RedisError>,
    limit: Limit,
    prefix: Vec<u8>,
    timeout: Duration,
    on_failure: OnFailure,
    denial_cache: Option<usize>,
}

impl fmt::Debug for RedisLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiterBuilder")
            .field("limit", &self.limit)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .field("denial_cache", &self.denial_cache)
            .finish_non_exhaustive()
    }
}

impl RedisLimiterBuilder {
    /// The per-call timeout (default 50 ms): past it, [`OnFailure`] applies.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What a call does when Redis fails (default [`OnFailure::ReturnError`]).
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// Deny keys locally, with no round trip, until the time Redis said they may retry; hold
    /// about `max_keys` of them (rounded up to a multiple of 16: the cache has 16 shards) (`None`: off, the default). That time is the server's,
    /// advanced by this process's monotonic clock: the client's wall clock plays no part.
    pub fn denial_cache(mut self, max_keys: Option<usize>) -> Self {
        self.denial_cache = max_keys;
        self
    }

    /// Connects (a multiplexed connection that reconnects by itself).
    ///
    /// # Errors
    /// [`RedisLimitError::UnsupportedLimit`] when the limit needs what the script cannot do
    /// exactly (an interval that is not whole microseconds, more than one token per
    /// microsecond, or a rate whose reduced numbers multiply past 2^52);
    /// [`RedisLimitError::InvalidUrl`] for a URL that is not Redis's;
    /// [`RedisLimitError::Unavailable`] when the first connection fails within four timeouts
    /// (at least 400 ms); [`RedisLimitError::ClusterUnsupported`] for a server in cluster mode.
    pub async fn connect(self) -> Result<RedisLimiter, RedisLimitError> {
        let limit = self.limit;
        let steps = *limit.steps();
        if !steps.b.is_multiple_of(1000) {
            return Err(RedisLimitError::UnsupportedLimit(
                UnsupportedLimit::SubMicrosecondStep {
                    interval: limit.refill_interval(),
                    amount: limit.refill_amount(),
                },
            ));
        }
        let (a, b_us) = (steps.a, steps.b / 1000);
        let g = steps::gcd(a, b_us);
        let (a, b_us) = (a / g, b_us / g);
        if a > b_us {
            return Err(RedisLimitError::UnsupportedLimit(
                UnsupportedLimit::FasterThanOnePerMicrosecond,
            ));
        }
        if a.checked_mul(b_us).is_none_or(|ab| ab >= LUA_EXACT) {
            return Err(RedisLimitError::UnsupportedLimit(
                UnsupportedLimit::RateTooFine { a, b_us },
            ));
        }
        let client = self.client.map_err(RedisLimitError::InvalidUrl)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let wait = self.timeout.max(Duration::from_millis(100)) * 4;
        let con = tokio::time::timeout(wait, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| RedisLimitError::Unavailable(Outage::Timeout(wait)))?
            .map_err(|e| RedisLimitError::Unavailable(Outage::Redis(e)))?;
        check_server(&con, self.timeout).await?;
        Ok(RedisLimiter {
            con,
            script: Arc::new(redis::Script::new(SCRIPT)),
            limit,
            steps,
            a,
            b_us,
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

/// What `connect` checks of the server: cluster mode (refused) and an evicting memory policy
/// (a warning). A server that refuses `INFO` or `CONFIG` (a restricted ACL) passes.
async fn check_server(con: &ConnectionManager, timeout: Duration) -> Result<(), RedisLimitError> {
    let mut con = con.clone();
    let wait = timeout.max(Duration::from_millis(100)) * 4;
    let info = tokio::time::timeout(
        wait,
        redis::cmd("INFO")
            .arg("cluster")
            .query_async::<String>(&mut con),
    )
    .await;
    if let Ok(Ok(info)) = info {
        if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Err(RedisLimitError::ClusterUnsupported);
        }
    }
    let policy = tokio::time::timeout(
        wait,
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<Vec<String>>(&mut con),
    )
    .await;
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
    Ok(())
}

impl RedisLimiter {
    /// Connects with the defaults (50 ms timeout, errors returned, no denial cache).
    /// `url` is a `redis://` or `unix://` URL; keys are named `prefix{key}`.
    ///
    /// # Errors
    /// As [`RedisLimiterBuilder::connect`].
    pub async fn new(
        url: &str,
        limit: Limit,
        key_prefix: &str,
    ) -> Result<RedisLimiter, RedisLimitError> {
        RedisLimiter::builder(url, limit, key_prefix)
            .connect()
            .await
    }

    /// A builder for the timeout, the failure policy and the denial cache.
    pub fn builder(url: &str, limit: Limit, key_prefix: &str) -> RedisLimiterBuilder {
        RedisLimiterBuilder {
            client: redis::Client::open(url),
            limit,
            prefix: key_prefix.as_bytes().to_vec(),
            timeout: Duration::from_millis(50),
            on_failure: OnFailure::default(),
            denial_cache: None,
        }
    }

    /// The limit every key gets.
    pub fn limit(&self) -> &Limit {
        &self.limit
    }

    /// The Redis key of a user key: `prefix{key}` (the braces make it its own Cluster hash
    /// slot tag).
    pub fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len() + 2);
        k.extend_from_slice(&self.prefix);
        k.push(b'{');
        k.extend_from_slice(key);
        k.push(b'}');
        k
    }

    /// Takes `n` tokens from `key`'s bucket in Redis if they are there, on the server's clock.
    ///
    /// # Errors
    /// [`RedisLimitError::InsufficientCapacity`] for `n` above the capacity (no round trip);
    /// [`RedisLimitError::Unavailable`] when Redis fails and the policy is
    /// [`OnFailure::ReturnError`].
    pub async fn try_acquire(&self, key: &[u8], n: u64) -> Result<Decision, RedisLimitError> {
        self.call(key, n, None).await
    }

    /// As [`try_acquire`](RedisLimiter::try_acquire), at an explicit time (microseconds since the
    /// Unix epoch) instead of the server's: for deterministic tests. Sets no expiry.
    ///
    /// # Errors
    /// As [`try_acquire`](RedisLimiter::try_acquire), and
    /// [`RedisLimitError::TimeOutOfRange`] for a time at or past 2^52 microseconds.
    pub async fn try_acquire_at(
        &self,
        key: &[u8],
        n: u64,
        now_us: u64,
    ) -> Result<Decision, RedisLimitError> {
        if now_us >= LUA_EXACT {
            return Err(RedisLimitError::TimeOutOfRange { now_us });
        }
        self.call(key, n, Some(now_us)).await
    }

    async fn call(
        &self,
        key: &[u8],
        n: u64,
        now_us: Option<u64>,
    ) -> Result<Decision, RedisLimitError> {
        if n > self.steps.cap {
            return Err(RedisLimitError::InsufficientCapacity(
                InsufficientCapacity {
                    requested: n,
                    capacity: self.steps.cap,
                },
            ));
        }
        if let (Some(cache), None) = (&self.denials, now_us) {
            if let Some(d) = self.cached_denial(cache, key, n) {
                return Ok(d);
            }
        }
        let mut con = self.con.clone();
        let mut invocation = self.script.key(self.redis_key(key));
        invocation
            .arg(self.steps.cap)
            .arg(self.steps.q)
            .arg(self.a)
            .arg(self.b_us)
            .arg(n);
        match now_us {
            Some(t) => invocation.arg(t),
            None => invocation.arg(""),
        };
        let answer =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut con)).await;
        let reply = match answer {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return self.failed(n, Outage::Redis(e)),
            Err(_) => return self.failed(n, Outage::Timeout(self.timeout)),
        };
        let [allowed, tokens, mark, now] = reply[..] else {
            return Err(RedisLimitError::Protocol(reply));
        };
        let (tokens, mark, now_ns) = (
            tokens as u64,
            mark as u64,
            (now as u64).saturating_mul(1000),
        );
        let out = Outcome {
            allowed: allowed == 1,
            tokens,
            mark,
            write: None,
        };
        let d = Decision::new(&self.steps, &out, n, now_ns, 0);
        if let (Some(cache), false, None) = (&self.denials, d.is_allowed(), now_us) {
            self.remember_denial(cache, key, &d, tokens, mark, n);
        }
        Ok(d)
    }

    fn failed(&self, n: u64, why: Outage) -> Result<Decision, RedisLimitError> {
        match self.on_failure {
            OnFailure::ReturnError => Err(RedisLimitError::Unavailable(why)),
            policy => {
                self.log_degraded(policy, &why);
                Ok(Decision::degraded(
                    &self.steps,
                    policy == OnFailure::FailOpen,
                    n,
                ))
            }
        }
    }

    /// Logs a decision made without Redis, at most once every [`LOG_EVERY`] per limiter (and
    /// its clones), so an outage is seen without flooding the log.
    fn log_degraded(&self, policy: OnFailure, why: &Outage) {
        use std::sync::atomic::Ordering;
        let (last, since) = &*self.degraded_logged;
        let now = since.elapsed().as_secs() + 1;
        // Relaxed: a log throttle; a rare duplicate line is harmless.
        let seen = last.load(Ordering::Relaxed);
        if (seen == 0 || now >= seen + LOG_EVERY.as_secs())
            && last
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let verdict = if policy == OnFailure::FailOpen {
                "allowed without limiting (fail open)"
            } else {
                "refused (fail closed)"
            };
            tracing::warn!(
                error = %why,
                "tollgate: redis unavailable; requests are {verdict} (logged at most every {:?})",
                LOG_EVERY
            );
        }
    }

    fn remember_denial(
        &self,
        cache: &DenialCache,
        key: &[u8],
        d: &Decision,
        tokens: u64,
        mark: u64,
        n: u64,
    ) {
        let until = d.now_ns().saturating_add(d.retry_after().as_nanos() as u64);
        cache.insert(
            key,
            Denied {
                tokens,
                mark,
                server_ns: d.now_ns(),
                seen: std::time::Instant::now(),
                until,
                n,
            },
            d.now_ns(),
        );
    }

    /// A local denial, when the cache holds one for `key` that still stands for `n` tokens.
    fn cached_denial(&self, cache: &DenialCache, key: &[u8], n: u64) -> Option<Decision> {
        let denied = cache.get(key)?;
        let Denied {
            tokens,
            mark,
            n: denied_n,
            ..
        } = denied;
        let now_ns = denied.server_now_ns();
        if n < denied_n {
            // Fewer tokens may already be there.
            return None;
        }
        // The state Redis reported, refilled to now: nobody else can have added tokens.
        let k = self.steps.step_index(now_ns);
        let word = self.steps.word(tokens, mark);
        let out = state::step(&self.steps, word, k, n);
        (!out.allowed).then(|| Decision::new(&self.steps, &out, n, now_ns, 0))
    }
}

#[cfg(feature = "http")]
impl crate::http::Backend for RedisLimiter {
    type Error = RedisLimitError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<crate::http::Verdict, RedisLimitError>> + Send>,
    >;

    fn acquire(&self, key: &crate::http::Key, cost: u64) -> Self::Future {
        use crate::http::Key;
        // A tag per kind of key, so keys of different kinds never share a bucket (as they do
        // not in a `KeyedLimiter<Key>`): the global key is not the API key `*`.
        let tagged = |tag: &[u8], body: &[u8]| [tag, body].concat();
        let bytes: Vec<u8> = match key {
            Key::Global => b"g".to_vec(),
            Key::Ip(ip) => tagged(b"i:", ip.to_string().as_bytes()),
            Key::Header(v) => tagged(b"h:", v.as_bytes()),
            // The token only: `Bearer t` and `bearer t` are one key. Tagged `b:` as bearer
            // tokens were (as `Key::Bytes`) before `Key::Bearer`, so their buckets carry over;
            // a closure's `Key::Bytes` equal to a token shares that bucket, as it did.
            Key::Bearer(v) => tagged(b"b:", key.bearer_token().unwrap_or(v.as_bytes())),
            Key::Bytes(b) => tagged(b"b:", b),
            Key::Text(t) => tagged(b"t:", t.as_bytes()),
        };
        let this = self.clone();
        Box::pin(async move {
            match this.try_acquire(&bytes, cost).await {
                Ok(d) => Ok(Ok(d)),
                Err(RedisLimitError::InsufficientCapacity(e)) => Ok(Err(e)),
                Err(e) => Err(e),
            }
        })
    }

    fn limit(&self) -> Limit {
        self.limit
    }
}
