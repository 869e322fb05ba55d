//! The rest of the in-memory API over Redis: snapshots, refunds, charges, reservations (whose
//! cancel is an undo, [contract §2](crate::contract::bucket)), many keys in one round trip,
//! and live limit changes.

use std::sync::Arc;

use crate::decision::Decision;
use crate::limit::{Inherit, Limit};

use super::limits::{ScriptLimit, Table};
use super::{parse, Answer, Call, Outage, RedisLimitError, RedisLimiter};

impl RedisLimiter {
    /// `key`'s buckets as they are now, taking nothing (an acquire of 0: like every call, it
    /// records a new step's mark). The decision is the limit with the fewest tokens left.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_minute(10)?, "rl:").await?;
    /// println!("{} left", limiter.snapshot(b"ann").await?.remaining());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RedisLimitError::Unavailable`] when Redis fails and the policy is
    /// [`OnFailure::ReturnError`](super::OnFailure::ReturnError).
    pub async fn snapshot(&self, key: &[u8]) -> Result<Decision, RedisLimitError> {
        self.try_acquire(key, 0).await
    }

    /// [`snapshot`](RedisLimiter::snapshot) at an explicit time (microseconds since the Unix
    /// epoch), for deterministic tests.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_minute(10)?, "t:").await?;
    /// let d = limiter.snapshot_at(b"ann", 1_700_000_000_000_000).await?;
    /// # let _ = d;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`try_acquire_at`](RedisLimiter::try_acquire_at).
    pub async fn snapshot_at(&self, key: &[u8], now_us: u64) -> Result<Decision, RedisLimitError> {
        self.try_acquire_at(key, 0, now_us).await
    }

    /// Gives `n` tokens back to every limit of `key` (capped at each capacity): an explicit
    /// grant, for work that turned out not to need them. To take back a take of your own, use
    /// a [reservation](RedisLimiter::reserve) and cancel it (an undo).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_hour(10)?, "rl:").await?;
    /// let _ = limiter.try_acquire(b"ann", 5).await?;
    /// assert_eq!(limiter.refund(b"ann", 2).await?.remaining(), 7);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`snapshot`](RedisLimiter::snapshot).
    pub async fn refund(&self, key: &[u8], n: u64) -> Result<Decision, RedisLimitError> {
        self.update(key, Call::new("r", n, None)).await
    }

    /// [`refund`](RedisLimiter::refund) at an explicit time.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_minute(10)?, "t:").await?;
    /// let d = limiter.refund_at(b"ann", 1, 1_700_000_000_000_000).await?;
    /// # let _ = d;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`try_acquire_at`](RedisLimiter::try_acquire_at).
    pub async fn refund_at(
        &self,
        key: &[u8],
        n: u64,
        now_us: u64,
    ) -> Result<Decision, RedisLimitError> {
        self.update(key, Call::new("r", n, Some(now_us))).await
    }

    /// Charges `n` tokens after the fact to every limit of `key`, taking as many as there are
    /// (up to `n`) and refusing nothing, as [`TokenBucket::charge`](crate::TokenBucket::charge).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_hour(10)?, "rl:").await?;
    /// assert_eq!(limiter.charge(b"ann", 25).await?.remaining(), 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`snapshot`](RedisLimiter::snapshot).
    pub async fn charge(&self, key: &[u8], n: u64) -> Result<Decision, RedisLimitError> {
        self.update(key, Call::new("c", n, None)).await
    }

    /// [`charge`](RedisLimiter::charge) at an explicit time.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_minute(10)?, "t:").await?;
    /// let d = limiter.charge_at(b"ann", 3, 1_700_000_000_000_000).await?;
    /// # let _ = d;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`try_acquire_at`](RedisLimiter::try_acquire_at).
    pub async fn charge_at(
        &self,
        key: &[u8],
        n: u64,
        now_us: u64,
    ) -> Result<Decision, RedisLimitError> {
        self.update(key, Call::new("c", n, Some(now_us))).await
    }

    async fn update(&self, key: &[u8], call: Call<'_>) -> Result<Decision, RedisLimitError> {
        Ok(match self.run(key, call).await? {
            Answer::Redis(reply) => reply.decide(call.n).decision,
            Answer::Degraded(d) => d,
        })
    }

    /// Takes `n` tokens from every limit of `key` as a [`RedisReservation`]: keep it and the
    /// tokens stay spent; [`cancel`](RedisReservation::cancel) it and they come back as an
    /// *undo* ([contract §2](crate::contract::bucket)): never more than the bucket would hold
    /// had the take not happened. `Ok(Err(denial))` when the tokens are not there.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_hour(10)?, "rl:").await?;
    /// if let Ok(r) = limiter.reserve(b"ann", 4).await? {
    ///     assert_eq!(r.decision().remaining(), 6);
    ///     r.cancel().await?; // the work was not needed after all
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`try_acquire`](RedisLimiter::try_acquire).
    pub async fn reserve(
        &self,
        key: &[u8],
        n: u64,
    ) -> Result<Result<RedisReservation, Decision>, RedisLimitError> {
        self.reserve_inner(key, n, None).await
    }

    /// [`reserve`](RedisLimiter::reserve) at an explicit time.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_minute(10)?, "t:").await?;
    /// let r = limiter.reserve_at(b"ann", 2, 1_700_000_000_000_000).await?;
    /// # let _ = r;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`try_acquire_at`](RedisLimiter::try_acquire_at).
    pub async fn reserve_at(
        &self,
        key: &[u8],
        n: u64,
        now_us: u64,
    ) -> Result<Result<RedisReservation, Decision>, RedisLimitError> {
        self.reserve_inner(key, n, Some(now_us)).await
    }

    async fn reserve_inner(
        &self,
        key: &[u8],
        n: u64,
        now_us: Option<u64>,
    ) -> Result<Result<RedisReservation, Decision>, RedisLimitError> {
        let (decision, marks, generation) = match self.run(key, Call::new("a", n, now_us)).await? {
            // The limits the take ran under (a change during the call is a change after it).
            Answer::Redis(reply) => (
                reply.decide(n).decision,
                Some(reply.marks()),
                reply.table.generation,
            ),
            Answer::Degraded(d) => (d, None, 0),
        };
        if decision.is_denied() {
            return Ok(Err(decision));
        }
        Ok(Ok(RedisReservation {
            limiter: self.clone(),
            key: key.to_vec(),
            n,
            decision,
            marks,
            generation,
        }))
    }

    /// Undoes a take of `n` tokens from `key` whose call left the marks `taken` (one per
    /// limit) under the limits table `generation`: what an undo gives back, by
    /// [`state::undo`](crate::state)'s formula (nothing after a limit change).
    pub(super) async fn undo_at(
        &self,
        key: &[u8],
        n: u64,
        taken: &[u64],
        generation: u64,
        now_us: Option<u64>,
    ) -> Result<Decision, RedisLimitError> {
        let call = Call {
            undo: n,
            taken,
            taken_generation: generation,
            ..Call::new("u", 0, now_us)
        };
        self.update(key, call).await
    }

    /// Takes from many keys in one round trip (a pipeline; on a Cluster, calls to every node
    /// at once): `calls[i]` is `(key, n)`, and the answer `i` is its decision, as
    /// [`try_acquire`](RedisLimiter::try_acquire) would give. When Redis fails, every call
    /// answers by the failure policy.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(10)?, "rl:").await?;
    /// let answers = limiter.try_acquire_many(&[(&b"ann"[..], 1), (&b"bob"[..], 3)]).await;
    /// assert_eq!(answers.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire_many<K: AsRef<[u8]>>(
        &self,
        calls: &[(K, u64)],
    ) -> Vec<Result<Decision, RedisLimitError>> {
        self.acquire_many(calls, None).await
    }

    /// [`try_acquire_many`](RedisLimiter::try_acquire_many) at an explicit time.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_minute(10)?, "t:").await?;
    /// let answers = limiter.try_acquire_many_at(&[(&b"ann"[..], 1)], 1_700_000_000_000_000).await;
    /// # let _ = answers;
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire_many_at<K: AsRef<[u8]>>(
        &self,
        calls: &[(K, u64)],
        now_us: u64,
    ) -> Vec<Result<Decision, RedisLimitError>> {
        self.acquire_many(calls, Some(now_us)).await
    }

    async fn acquire_many<K: AsRef<[u8]>>(
        &self,
        calls: &[(K, u64)],
        now_us: Option<u64>,
    ) -> Vec<Result<Decision, RedisLimitError>> {
        let table = self.table.load();
        let mut out: Vec<Option<Result<Decision, RedisLimitError>>> =
            (0..calls.len()).map(|_| None).collect();
        let mut sent = Vec::new();
        let mut invs = Vec::new();
        for (i, (key, n)) in calls.iter().enumerate() {
            let key = key.as_ref();
            let tier = Some(self.tier(key))
                .filter(|&t| t < table.tiers.len())
                .unwrap_or(0);
            let call = Call::new("a", *n, now_us);
            if let Err(e) = self.check(&table, tier, &call) {
                out[i] = Some(Err(e));
                continue;
            }
            let mut inv = self.script.key(self.redis_key(key));
            inv.arg("a");
            match now_us {
                Some(t) => inv.arg(t),
                None => inv.arg(""),
            };
            inv.arg(*n).arg(0).arg(0).arg(table.count());
            for limit in table.limits(tier) {
                limit.push_args(&mut inv, None);
            }
            invs.push(inv);
            sent.push((i, tier, *n));
        }
        if !invs.is_empty() {
            let answers = self.con.invoke_many(&invs, self.timeout).await;
            for (j, &(i, tier, n)) in sent.iter().enumerate() {
                let answer = match &answers {
                    Ok(a) => match &a[j] {
                        Ok(Ok(reply)) => {
                            parse(reply.clone(), table.clone(), tier).map(Answer::Redis)
                        }
                        Ok(Err(e)) => self.failed(&table, tier, n, Outage::Redis(e.clone())),
                        Err(t) => self.failed(&table, tier, n, Outage::Timeout(*t)),
                    },
                    Err(Outage::Timeout(t)) => self.failed(&table, tier, n, Outage::Timeout(*t)),
                    Err(Outage::Redis(e)) => self.failed(&table, tier, n, Outage::Redis(e.clone())),
                };
                out[i] = Some(answer.map(|a| match a {
                    Answer::Redis(reply) => reply.decide(n).decision,
                    Answer::Degraded(d) => d,
                }));
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| unreachable!("every call answered")))
            .collect()
    }

    /// Replaces the limit of tier 0, as
    /// [`KeyedLimiter::set_limit`](crate::KeyedLimiter::set_limit): from now on this limiter
    /// (and its clones) uses `limit`, and each key's buckets convert at their next call, as of
    /// the change (the server's time, asked now; when Redis does not answer, as of that next
    /// call). Redis holds no configuration: change every process that shares the buckets (a
    /// bucket written under another limit converts again). `inherit` is `Keep` or `Reset`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Inherit, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(10)?, "rl:").await?;
    /// limiter.set_limit(Limit::per_second(20)?, Inherit::Keep).await?;
    /// assert_eq!(limiter.limit(), Limit::per_second(20)?);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RedisLimitError::UnsupportedLimit`] for a limit the script cannot run exactly, or
    /// [`Inherit::Proportional`]. Nothing changes then.
    pub async fn set_limit(&self, limit: Limit, inherit: Inherit) -> Result<(), RedisLimitError> {
        self.set_tier_limit(0, limit, inherit).await
    }

    /// [`set_limit`](RedisLimiter::set_limit) for `tier`.
    ///
    /// Over Redis a full bucket is no key, so a bucket full at the change is full under the new
    /// limit (in memory, a `Keep` change that raises the capacity leaves it at the old one). A
    /// `Reset` applies once to a bucket last written before the change; a bucket a process
    /// still on the earlier limit wrote after the change keeps its tokens (a reset may be
    /// missed, never repeated). A reservation taken before a change gives nothing back when
    /// cancelled after it.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Inherit, Limit};
    /// let limiter = RedisLimiter::builder("redis://127.0.0.1/", Limit::per_minute(10)?, "rl:")
    ///     .tiers([Limit::per_minute(100)?], |key: &[u8]| usize::from(key.starts_with(b"pro-")))
    ///     .connect()
    ///     .await?;
    /// limiter.set_tier_limit(1, Limit::per_minute(500)?, Inherit::Reset).await?;
    /// assert_eq!(limiter.tier_limit(1), Some(Limit::per_minute(500)?));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`set_limit`](RedisLimiter::set_limit), [`RedisLimitError::UnknownTier`] past the
    /// last tier, and [`RedisLimitError::Unavailable`] when a `Reset` change cannot learn the
    /// server's time (nothing changes).
    pub async fn set_tier_limit(
        &self,
        tier: usize,
        limit: Limit,
        inherit: Inherit,
    ) -> Result<(), RedisLimitError> {
        let cmd = redis::cmd("TIME");
        let time = tokio::time::timeout(self.timeout, self.con.query::<(u64, u64)>(&cmd)).await;
        let since_us = match time {
            Ok(Ok((s, us))) => Some(s.saturating_mul(1_000_000).saturating_add(us)),
            // A reset needs the change's time (it resets buckets written before it, once).
            Ok(Err(e)) if inherit == Inherit::Reset => {
                return Err(RedisLimitError::Unavailable(Outage::Redis(e)))
            }
            Err(_) if inherit == Inherit::Reset => {
                return Err(RedisLimitError::Unavailable(Outage::Timeout(self.timeout)))
            }
            _ => None,
        };
        self.set_tier_limit_at(tier, limit, inherit, since_us)
    }

    /// [`set_tier_limit`](RedisLimiter::set_tier_limit) as of an explicit time (microseconds
    /// since the Unix epoch; `None`: each bucket converts as of its next call), for
    /// deterministic tests and for processes told the time of a change.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Inherit, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_minute(10)?, "t:").await?;
    /// limiter.set_tier_limit_at(0, Limit::per_minute(5)?, Inherit::Keep, Some(1_700_000_000_000_000))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`set_tier_limit`](RedisLimiter::set_tier_limit), and
    /// [`RedisLimitError::ResetWithoutTime`] for `Inherit::Reset` without a time.
    pub fn set_tier_limit_at(
        &self,
        tier: usize,
        limit: Limit,
        inherit: Inherit,
        since_us: Option<u64>,
    ) -> Result<(), RedisLimitError> {
        if inherit == Inherit::Reset && since_us.is_none() {
            return Err(RedisLimitError::ResetWithoutTime);
        }
        let new = ScriptLimit::replacing(limit, inherit, since_us)
            .map_err(RedisLimitError::UnsupportedLimit)?;
        let old = self.table.load();
        if tier >= old.tiers.len() {
            return Err(RedisLimitError::UnknownTier { tier });
        }
        let mut table: Table = (*old).clone();
        table.tiers[tier] = new;
        table.generation += 1;
        self.table.store(Arc::new(table));
        Ok(())
    }
}

/// Tokens taken from a key's buckets in Redis that can be given back: keep it (drop it) and
/// they stay spent; [`cancel`](RedisReservation::cancel) it and they come back as an undo.
/// From [`RedisLimiter::reserve`].
#[derive(Debug)]
#[must_use = "dropping a reservation keeps the tokens spent; cancel it to give them back"]
pub struct RedisReservation {
    limiter: RedisLimiter,
    key: Vec<u8>,
    n: u64,
    decision: Decision,
    /// The marks the take left, per limit (`None`: granted without Redis, by the policy).
    marks: Option<Vec<u64>>,
    /// The limits in force at the take: after a change the marks count another limit's steps.
    generation: u64,
}

impl RedisReservation {
    /// The take's decision.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// # let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_hour(10)?, "rl:").await?;
    /// let r = limiter.reserve(b"ann", 4).await?.unwrap();
    /// assert!(r.decision().is_allowed());
    /// # Ok(()) }
    /// ```
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// How many tokens were taken.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// # let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_hour(10)?, "rl:").await?;
    /// assert_eq!(limiter.reserve(b"ann", 4).await?.unwrap().tokens(), 4);
    /// # Ok(()) }
    /// ```
    pub fn tokens(&self) -> u64 {
        self.n
    }

    /// Gives the tokens back as an undo. A reservation granted without Redis (fail open) has
    /// nothing to give back: its decision is returned.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// # let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_hour(10)?, "rl:").await?;
    /// let r = limiter.reserve(b"ann", 4).await?.unwrap();
    /// assert_eq!(r.cancel().await?.remaining(), 10);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`RedisLimiter::refund`].
    pub async fn cancel(self) -> Result<Decision, RedisLimitError> {
        self.cancel_inner(None).await
    }

    /// [`cancel`](RedisReservation::cancel) at an explicit time.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::RedisLimiter, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_minute(10)?, "t:").await?;
    /// if let Ok(r) = limiter.reserve_at(b"ann", 2, 1_700_000_000_000_000).await? {
    ///     r.cancel_at(1_700_000_000_000_001).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`RedisLimiter::refund_at`].
    pub async fn cancel_at(self, now_us: u64) -> Result<Decision, RedisLimitError> {
        self.cancel_inner(Some(now_us)).await
    }

    async fn cancel_inner(self, now_us: Option<u64>) -> Result<Decision, RedisLimitError> {
        match &self.marks {
            Some(marks) => {
                let (key, n, generation) = (&self.key, self.n, self.generation);
                self.limiter
                    .undo_at(key, n, marks, generation, now_us)
                    .await
            }
            None => Ok(self.decision),
        }
    }
}
