//! Distributed limits on Redis (feature `redis`): the same bucket and the same decisions,
//! shared by many processes through one Redis key per user key ([contract §4](crate::contract::redis)).
//!
//! One Lua script ([`SCRIPT`]) does refill and the call (acquire, snapshot, refund, undo,
//! charge, lease) atomically on the server, in one round trip (`EVALSHA`; a `NOSCRIPT` answer
//! reloads it), on one limit or on several all-or-nothing. Time is the server's `TIME`, so
//! clients' clocks do not matter. Steps count from the Unix epoch, one epoch for every
//! process. The key expires when its buckets would be full again (a full bucket and a missing
//! one are the same), and the script touches only `KEYS[1]`, named `prefix{key}`, so it runs on
//! Redis Cluster: [`RedisLimiter::cluster`] follows `MOVED` / `ASK` and a failover;
//! [`RedisLimiter::sentinel`] finds the master through Sentinel, and finds it again after a
//! failover.
//!
//! The API is the in-memory limiter's, over the network: [`try_acquire`](RedisLimiter::try_acquire),
//! [`snapshot`](RedisLimiter::snapshot), [`refund`](RedisLimiter::refund),
//! [`charge`](RedisLimiter::charge), [`reserve`](RedisLimiter::reserve) and
//! [`RedisReservation::cancel`] (an undo), several limits per key
//! ([`RedisLimiterBuilder::also`], [`try_acquire_all`](RedisLimiter::try_acquire_all)), tiers
//! and live limit changes ([`set_limit`](RedisLimiter::set_limit)), many keys in one round trip
//! ([`try_acquire_many`](RedisLimiter::try_acquire_many)), and leasing
//! ([`RedisLimiter::leased`]: tokens taken in batches and spent locally, at memory speed).
//!
//! Memory policy: a bucket key evicted under `maxmemory` comes back full (an early reset that
//! can admit more than the limit). `connect` logs a warning when the server's
//! `maxmemory-policy` is not `noeviction`; give rate-limit keys a Redis whose memory suffices,
//! or `noeviction`.
//!
//! What a lost master costs: Redis replicates asynchronously, so a master that dies loses the
//! writes its replica had not received (typically the last milliseconds). Buckets on it go
//! back to that older state, or to full for keys it had not replicated at all: up to the
//! tokens spent in that window may be granted again. Until the failover completes (Cluster:
//! about `cluster-node-timeout` plus an election; Sentinel: `down-after-milliseconds` plus an
//! election), calls on its keys answer by the [`OnFailure`] policy within the timeout.
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

use crate::decision::{Decision, InsufficientCapacity};
use crate::limit::Limit;
use crate::multi::MultiDecision;
use crate::state;
use crate::sync::ArcCell;

#[cfg(feature = "http")]
mod backend;
mod builder;
mod call;
mod conn;
mod denials;
mod error;
mod lease;
mod lease_config;
mod limits;
mod ops;

pub use builder::RedisLimiterBuilder;
pub use error::{Outage, RedisLimitError, UnsupportedLimit};
pub use lease::LeasedLimiter;
pub use lease_config::{LeaseConfig, LeaseStats};
pub use ops::RedisReservation;

use call::{parse, Answer, Call, Reply};
use conn::Conn;
use denials::{DenialCache, Denied};
use limits::{Table, LUA_EXACT};

/// The Lua script, as loaded into Redis.
pub const SCRIPT: &str = include_str!("limiter.lua");

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

/// Picks a key's tier.
type TierOf = Arc<dyn Fn(&[u8]) -> usize + Send + Sync>;

/// A Redis-backed limiter: every key's buckets live in Redis, shared by all processes that use
/// the same Redis, limits and prefix. Cloning is cheap: clones share the connection, the
/// script, the limits in force and the denial cache.
#[derive(Clone)]
pub struct RedisLimiter {
    con: Conn,
    script: Arc<redis::Script>,
    table: Arc<ArcCell<Table>>,
    tier_of: Option<TierOf>,
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
        let table = self.table.load();
        f.debug_struct("RedisLimiter")
            .field(
                "tiers",
                &table.tiers.iter().map(|l| l.limit).collect::<Vec<_>>(),
            )
            .field(
                "also",
                &table.also.iter().map(|l| l.limit).collect::<Vec<_>>(),
            )
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("timeout", &self.timeout)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Connects to one server with the defaults (50 ms timeout, errors returned, no denial
    /// cache). `url` is a `redis://` or `unix://` URL; keys are named `prefix{key}`.
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

    /// A builder for one server (`redis://` or `unix://` URL).
    ///
    /// ```
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let b = RedisLimiter::builder("redis://127.0.0.1/", Limit::per_second(5)?, "rl:");
    /// # let _ = b; Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn builder(url: &str, limit: Limit, key_prefix: &str) -> RedisLimiterBuilder {
        RedisLimiterBuilder::single(url, limit, key_prefix)
    }

    /// A builder for a Redis Cluster, from one or more of its nodes (`redis://host:port`): the
    /// client learns the slot map, follows `MOVED` / `ASK` redirects, and refreshes the map
    /// after a failover.
    ///
    /// ```
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let b = RedisLimiter::cluster(&["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"],
    ///     Limit::per_second(5)?, "rl:");
    /// # let _ = b; Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn cluster(nodes: &[&str], limit: Limit, key_prefix: &str) -> RedisLimiterBuilder {
        RedisLimiterBuilder::cluster(nodes, limit, key_prefix)
    }

    /// A builder for the master that Sentinel names `master`, found through `sentinels`
    /// (`redis://host:port` of the sentinels). After a failed call the sentinels are asked
    /// again, in the background, and calls move to the new master once it is found.
    ///
    /// ```
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let b = RedisLimiter::sentinel(&["redis://127.0.0.1:26379"], "mymaster",
    ///     Limit::per_second(5)?, "rl:");
    /// # let _ = b; Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn sentinel(
        sentinels: &[&str],
        master: &str,
        limit: Limit,
        key_prefix: &str,
    ) -> RedisLimiterBuilder {
        RedisLimiterBuilder::sentinel(sentinels, master, limit, key_prefix)
    }

    /// The limit of tier 0 in force.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(5)?, "rl:").await?;
    /// assert_eq!(limiter.limit(), Limit::per_second(5)?);
    /// # Ok(()) }
    /// ```
    pub fn limit(&self) -> Limit {
        self.table.with(|t| t.tiers[0].limit)
    }

    /// The limit of `tier` in force (`None` past the last tier).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(5)?, "rl:").await?;
    /// assert_eq!(limiter.tier_limit(1), None);
    /// # Ok(()) }
    /// ```
    pub fn tier_limit(&self, tier: usize) -> Option<Limit> {
        self.table.with(|t| t.tiers.get(tier).map(|l| l.limit))
    }

    /// The Redis key of a user key: `prefix{key}` (the braces make it its own Cluster hash
    /// slot tag).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(5)?, "rl:").await?;
    /// assert_eq!(limiter.redis_key(b"ann"), b"rl:{ann}");
    /// # Ok(()) }
    /// ```
    pub fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len() + 2);
        k.extend_from_slice(&self.prefix);
        k.push(b'{');
        k.extend_from_slice(key);
        k.push(b'}');
        k
    }

    /// The tier of `key`.
    fn tier(&self, key: &[u8]) -> usize {
        self.tier_of.as_ref().map_or(0, |f| f(key))
    }

    /// Takes `n` tokens from `key`'s buckets in Redis if they are there, on the server's clock.
    /// With several limits ([`RedisLimiterBuilder::also`]) the decision is the one
    /// [`try_acquire_all`](RedisLimiter::try_acquire_all) reports.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(5)?, "rl:").await?;
    /// let d = limiter.try_acquire(b"ann", 2).await?;
    /// assert!(d.is_allowed());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RedisLimitError::InsufficientCapacity`] for `n` above the capacity (no round trip);
    /// [`RedisLimitError::Unavailable`] when Redis fails and the policy is
    /// [`OnFailure::ReturnError`].
    pub async fn try_acquire(&self, key: &[u8], n: u64) -> Result<Decision, RedisLimitError> {
        Ok(self.try_acquire_all(key, n).await?.decision)
    }

    /// As [`try_acquire`](RedisLimiter::try_acquire), at an explicit time (microseconds since the
    /// Unix epoch) instead of the server's: for deterministic tests. Sets no expiry.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(5)?, "t:").await?;
    /// let d = limiter.try_acquire_at(b"ann", 5, 1_700_000_000_000_000).await?;
    /// assert_eq!(d.remaining(), 0);
    /// # Ok(()) }
    /// ```
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
        Ok(self.try_acquire_all_at(key, n, now_us).await?.decision)
    }

    /// Takes `n` tokens from every limit of `key` (its tier's and those given to
    /// [`also`](RedisLimiterBuilder::also)), or from none: checked and taken in one script
    /// call. The decision is the first denying limit's, or for a grant the limit with the
    /// fewest tokens left; `index` says which (0: the tier's limit).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::builder("redis://127.0.0.1/", Limit::per_second(10)?, "rl:")
    ///     .also([Limit::per_hour(12)?])
    ///     .connect()
    ///     .await?;
    /// let d = limiter.try_acquire_all(b"ann", 1).await?;
    /// if !d.is_allowed() {
    ///     println!("limit #{} refused; retry in {:?}", d.index, d.decision.retry_after());
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`try_acquire`](RedisLimiter::try_acquire).
    pub async fn try_acquire_all(
        &self,
        key: &[u8],
        n: u64,
    ) -> Result<MultiDecision, RedisLimitError> {
        self.acquire(key, n, None).await
    }

    /// [`try_acquire_all`](RedisLimiter::try_acquire_all) at an explicit time, as
    /// [`try_acquire_at`](RedisLimiter::try_acquire_at).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_minute(10)?, "t:").await?;
    /// let d = limiter.try_acquire_all_at(b"ann", 1, 1_700_000_000_000_000).await?;
    /// # let _ = d;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`try_acquire_at`](RedisLimiter::try_acquire_at).
    pub async fn try_acquire_all_at(
        &self,
        key: &[u8],
        n: u64,
        now_us: u64,
    ) -> Result<MultiDecision, RedisLimitError> {
        self.acquire(key, n, Some(now_us)).await
    }

    async fn acquire(
        &self,
        key: &[u8],
        n: u64,
        now_us: Option<u64>,
    ) -> Result<MultiDecision, RedisLimitError> {
        if let (Some(cache), None) = (&self.denials, now_us) {
            if let Some(d) = self.cached_denial(cache, key, n) {
                return Ok(d);
            }
        }
        match self.run(key, Call::new("a", n, now_us)).await? {
            Answer::Degraded(decision) => Ok(MultiDecision { decision, index: 0 }),
            Answer::Redis(reply) => {
                let d = reply.decide(n);
                if let (Some(cache), false, None) = (&self.denials, d.is_allowed(), now_us) {
                    self.remember_denial(cache, key, &d, &reply, n);
                }
                Ok(d)
            }
        }
    }

    /// Runs one script call on `key`: checks `n` against the capacity and an explicit time
    /// against 2^52, builds the arguments from the limits in force, and applies the failure
    /// policy when Redis does not answer in time.
    async fn run(&self, key: &[u8], call: Call<'_>) -> Result<Answer, RedisLimitError> {
        let table = self.table.load();
        let tier = self.tier(key);
        let tier = if tier < table.tiers.len() { tier } else { 0 };
        // The one place an undo meets a limit change: its marks are the earlier limit's.
        let call = Call {
            undo: if call.taken_generation == table.generation {
                call.undo
            } else {
                0
            },
            ..call
        };
        self.check(&table, tier, &call)?;
        let redis_key = self.redis_key(key);
        let mut inv = self.script.key(redis_key);
        inv.arg(call.op);
        match call.now_us {
            Some(t) => inv.arg(t),
            None => inv.arg(""),
        };
        inv.arg(call.n)
            .arg(call.lease)
            .arg(call.undo)
            .arg(table.count());
        for (i, limit) in table.limits(tier).enumerate() {
            limit.push_args(&mut inv, call.taken.get(i).copied());
        }
        let answer = tokio::time::timeout(self.timeout, self.con.invoke(&inv)).await;
        let reply = match answer {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return self.failed(&table, tier, call.n, Outage::Redis(e)),
            Err(_) => return self.failed(&table, tier, call.n, Outage::Timeout(self.timeout)),
        };
        parse(reply, table, tier).map(Answer::Redis)
    }

    /// What every call checks before a round trip.
    fn check(&self, table: &Table, tier: usize, call: &Call<'_>) -> Result<(), RedisLimitError> {
        let capacity = table.capacity(tier);
        let asked = if call.op == "a" || call.op == "l" {
            call.n
        } else {
            0
        };
        if asked > capacity {
            return Err(RedisLimitError::InsufficientCapacity(
                InsufficientCapacity {
                    requested: asked,
                    capacity,
                },
            ));
        }
        if let Some(now_us) = call.now_us.filter(|&t| t >= LUA_EXACT) {
            return Err(RedisLimitError::TimeOutOfRange { now_us });
        }
        if call.undo > 0 && call.taken.len() != table.count() {
            return Err(RedisLimitError::Protocol(Vec::new()));
        }
        Ok(())
    }

    fn failed(
        &self,
        table: &Table,
        tier: usize,
        n: u64,
        why: Outage,
    ) -> Result<Answer, RedisLimitError> {
        self.con.failed();
        match self.on_failure {
            OnFailure::ReturnError => Err(RedisLimitError::Unavailable(why)),
            policy => {
                self.log_degraded(policy, &why);
                let steps = &table.tiers.get(tier).unwrap_or(&table.tiers[0]).steps;
                Ok(Answer::Degraded(Decision::degraded(
                    steps,
                    policy == OnFailure::FailOpen,
                    n,
                )))
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
        d: &MultiDecision,
        reply: &Reply,
        n: u64,
    ) {
        let (tokens, mark) = reply.buckets[d.index];
        let now = d.decision.now_ns();
        let until = now.saturating_add(d.decision.retry_after().as_nanos() as u64);
        let denied = Denied {
            tokens,
            mark,
            server_ns: now,
            seen: std::time::Instant::now(),
            until,
            n,
            which: d.index,
            generation: reply.table.generation,
        };
        cache.insert(key, denied, now);
    }

    /// A local denial, when the cache holds one for `key` that still stands for `n` tokens
    /// under the limits in force.
    fn cached_denial(&self, cache: &DenialCache, key: &[u8], n: u64) -> Option<MultiDecision> {
        let denied = cache.get(key)?;
        if n < denied.n {
            // Fewer tokens may already be there.
            return None;
        }
        let table = self.table.load();
        if denied.generation != table.generation {
            return None;
        }
        let tier = self.tier(key);
        let steps = &table.limits(tier).nth(denied.which)?.steps;
        if n > table.capacity(tier) {
            return None;
        }
        // The state Redis reported, refilled to now (tokens another call gave back are not
        // seen: a denial may outlast the real one, never the other way).
        let now_ns = denied.server_now_ns();
        let k = steps.step_index(now_ns);
        let word = steps.word(denied.tokens, denied.mark);
        let out = state::step(steps, word, k, n);
        (!out.allowed).then(|| MultiDecision {
            decision: Decision::new(steps, &out, n, now_ns, 0),
            index: denied.which,
        })
    }
}
