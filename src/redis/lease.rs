//! Token leasing ([contract §4](crate::contract::redis)): [`LeasedLimiter`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::clock::{Clock, DefaultClock};
use crate::decision::Decision;
use crate::multi::MultiDecision;
use crate::state::{self, Outcome};

use super::lease_config::Counters;
use super::{Answer, Call, LeaseConfig, LeaseStats, RedisLimitError, RedisLimiter};

/// Token leasing ([contract §4](crate::contract::redis)): a process takes a batch of tokens
/// from a key's shared buckets in one script call and grants them locally, at memory speed,
/// until they run out or the lease ends; what it did not spend goes back as an undo.
///
/// Never over-admits: leased tokens are taken from the shared buckets before any is granted,
/// so every grant is a token the shared bucket gave. Inexact the other way only: tokens a
/// process holds are unavailable to the others until it spends or returns them.
///
/// # The bound
/// With `P` processes leasing a key, at most `P * (max_tokens + n - 1)` tokens are out on
/// lease at any moment (a process holds one lease per key, of at most `max_tokens`, plus less
/// than one request's `n` left from the last). That is all a busy key ever loses: a process
/// whose lease runs out takes the next, so its tokens are granted, not lost. A lease that ends
/// with tokens unspent (after [`LeaseConfig::hold`], or at [`LeasedLimiter::release_all`])
/// gives them back as an undo ([contract §2](crate::contract::bucket)): all of them when no
/// other process refilled the buckets since the lease was taken, else `q` fewer per step
/// another refilled (at most the unspent tokens: a quiet process, whose leases shrink to what
/// it spends, has few). So tokens lost to leasing are at most what the processes held when
/// their leases ended: under steady demand, at most `P * (max_tokens + n - 1)` at the end.
///
/// Outages add to that, on the safe side: a lease whose answer never came (a timeout, after
/// the script may have run) is lost, and so are unspent tokens whose return failed; they come
/// back as the bucket refills. Nothing is ever granted twice.
///
/// A grant is counted by the shared bucket when its lease is taken, up to `hold` before the
/// process grants it: over a window of length `W`, the grants are within the bucket's bound for
/// a window of `W + hold`.
///
/// A denial comes from Redis (exact) and stands locally until its `retry_after`, without a
/// round trip: tokens another process gives back meanwhile wait for that time.
///
/// Lease sizes adapt per key: each lease aims to last about half of `hold` at the rate the last
/// one was spent, at most twice the last size and at most `max_tokens`; so a busy process
/// grows to `max_tokens` in a few leases and a quiet one takes a token or two at a time.
///
/// Cloning is cheap; clones share the leases. Call [`release_all`](LeasedLimiter::release_all)
/// at shutdown (dropping the last clone inside a Tokio runtime does it in the background).
///
/// ```no_run
/// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
/// use tollgate::redis::{LeaseConfig, RedisLimiter};
/// use tollgate::Limit;
///
/// let redis = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(10_000)?, "rl:").await?;
/// let limiter = redis.leased(LeaseConfig::new().expected_processes(4));
/// let d = limiter.try_acquire(b"hot-key", 1).await?; // one round trip, then local
/// assert!(d.is_allowed());
/// limiter.release_all().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LeasedLimiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeasedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedLimiter")
            .field("redis", &self.inner.redis)
            .field("config", &self.inner.config)
            .field("keys", &self.inner.leases.len())
            .finish()
    }
}

struct Inner {
    redis: RedisLimiter,
    config: LeaseConfig,
    hold_ns: u64,
    clock: DefaultClock,
    leases: papaya::HashMap<Box<[u8]>, Arc<Lease>, foldhash::fast::RandomState>,
    counters: Counters,
}

/// One key's lease in this process.
struct Lease {
    /// The key's tier (picked once, as the keyed limiter does).
    tier: usize,
    /// Tokens left to grant locally.
    left: AtomicU64,
    /// When the lease ends (this process's clock, ns); 0: no lease.
    expires: AtomicU64,
    /// Server time minus local time (ns, wrapping), and the tier limit's mark after the lease:
    /// what a local grant's decision reports.
    offset: AtomicU64,
    mark: AtomicU64,
    /// Until when (local ns) a denial stands for requests of at least its `n`.
    deny_until: AtomicU64,
    denial: Mutex<Option<Denial>>,
    state: tokio::sync::Mutex<State>,
}

#[derive(Clone, Copy)]
struct Denial {
    index: usize,
    tokens: u64,
    mark: u64,
    n: u64,
}

#[derive(Default)]
struct State {
    /// The marks the last lease left, per limit (for an undo of its unspent tokens).
    marks: Vec<u64>,
    /// The last lease's size and when it was taken (local ns).
    size: u64,
    leased: u64,
    taken_at: u64,
    /// Removed from the map: look the key up again.
    retired: bool,
    /// The limits the marks were taken under: after a change they count another limit's
    /// steps (or a reset came between), and unspent tokens are not given back.
    generation: u64,
}

impl RedisLimiter {
    /// This limiter, leasing tokens in batches: see [`LeasedLimiter`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::{LeaseConfig, RedisLimiter}, Limit};
    /// let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(1_000)?, "rl:")
    ///     .await?
    ///     .leased(LeaseConfig::new());
    /// # let _ = limiter; Ok(()) }
    /// ```
    pub fn leased(self, config: LeaseConfig) -> LeasedLimiter {
        let inner = Arc::new(Inner {
            redis: self,
            config,
            hold_ns: u64::try_from(config.hold.as_nanos()).unwrap_or(u64::MAX),
            clock: DefaultClock::new(),
            leases: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .build(),
            counters: Counters::default(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&inner);
            rt.spawn(sweep(weak, config.hold));
        }
        LeasedLimiter { inner }
    }
}

/// Returns expired leases' tokens, and forgets keys idle for ten holds, every `hold`.
async fn sweep(inner: Weak<Inner>, hold: Duration) {
    loop {
        tokio::time::sleep(hold).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = inner.clock.now();
        let due: Vec<(Box<[u8]>, Arc<Lease>)> = {
            let pinned = inner.leases.pin();
            pinned
                .iter()
                .filter(|(_, l)| now >= l.expires.load(Ordering::Acquire))
                .map(|(k, l)| (k.clone(), l.clone()))
                .collect()
        };
        for (key, lease) in due {
            let Ok(mut st) = lease.state.try_lock() else {
                continue; // in use: its caller handles it
            };
            if now < lease.expires.load(Ordering::Acquire) {
                continue;
            }
            inner.give_back(&key, &lease, &mut st).await;
            if now.saturating_sub(st.taken_at) >= inner.hold_ns.saturating_mul(10) {
                st.retired = true;
                let _ = inner
                    .leases
                    .pin()
                    .remove_if(&key, |_, l| Arc::ptr_eq(l, &lease));
            }
        }
    }
}

impl Inner {
    /// The lease's unspent tokens go back as an undo (the lease has ended).
    async fn give_back(&self, key: &[u8], lease: &Lease, st: &mut State) {
        // AcqRel: takes every token no spender took; a spender after this sees 0.
        let unspent = lease.left.swap(0, Ordering::AcqRel);
        self.counters.returned.fetch_add(unspent, Ordering::Relaxed);
        if unspent == 0 || st.marks.is_empty() {
            return;
        }
        if let Ok(Answer::Redis(reply)) = self
            .redis
            .run(
                key,
                Call {
                    undo: unspent,
                    taken: &st.marks,
                    taken_generation: st.generation,
                    ..Call::new("u", 0, None)
                },
            )
            .await
        {
            self.counters
                .given_back
                .fetch_add(reply.given, Ordering::Relaxed);
        }
        st.marks.clear();
    }

    fn lease(&self, key: &[u8]) -> Arc<Lease> {
        let pinned = self.leases.pin();
        if let Some(l) = pinned.get(key) {
            return l.clone();
        }
        pinned
            .get_or_insert_with(key.into(), || {
                Arc::new(Lease {
                    tier: self.redis.tier(key),
                    left: AtomicU64::new(0),
                    expires: AtomicU64::new(0),
                    offset: AtomicU64::new(0),
                    mark: AtomicU64::new(0),
                    deny_until: AtomicU64::new(0),
                    denial: Mutex::new(None),
                    state: tokio::sync::Mutex::new(State::default()),
                })
            })
            .clone()
    }

    /// The next lease's size: about half a hold at the rate the last was spent, at most
    /// twice the last and at most the cap.
    fn size(&self, st: &State, now: u64, unspent: u64, cap: u64) -> u64 {
        let max = self
            .config
            .max_tokens
            .unwrap_or(cap / self.config.processes)
            .clamp(1, cap);
        if st.leased == 0 {
            return 1;
        }
        let used = st.leased.saturating_sub(unspent);
        let elapsed = now.saturating_sub(st.taken_at).max(1);
        let target = (u128::from(used) * u128::from(self.hold_ns / 2) / u128::from(elapsed))
            .min(u128::from(u64::MAX)) as u64;
        target.clamp(1, max.min(st.size.saturating_mul(2).max(1)))
    }
}

impl LeasedLimiter {
    /// Grants `n` tokens from this process's lease of `key`, taking a new lease from Redis when
    /// it runs out or ends. A grant from the lease reports the tokens left in the lease as
    /// `remaining`; a denial is Redis's (exact), and stands locally until its `retry_after`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::{LeaseConfig, RedisLimiter}, Limit};
    /// # let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(1_000)?, "rl:")
    /// #     .await?.leased(LeaseConfig::new());
    /// if limiter.try_acquire(b"ann", 1).await?.is_allowed() {
    ///     // serve
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`RedisLimiter::try_acquire`].
    pub async fn try_acquire(&self, key: &[u8], n: u64) -> Result<Decision, RedisLimitError> {
        let inner = &*self.inner;
        if n == 0 {
            return inner.redis.snapshot(key).await;
        }
        // The hot path: a grant from the lease, under the map's guard (no reference count).
        if let Some(d) = inner.leases.pin().get(key).and_then(|l| self.local(l, n)) {
            return Ok(d);
        }
        let capacity = inner
            .redis
            .table
            .with(|t| t.capacity(inner.redis.tier(key)));
        if n > capacity {
            // Before touching the lease: nothing to give back.
            return Err(RedisLimitError::InsufficientCapacity(
                crate::decision::InsufficientCapacity {
                    requested: n,
                    capacity,
                },
            ));
        }
        loop {
            let lease = inner.lease(key);
            if let Some(d) = self.local(&lease, n) {
                return Ok(d);
            }
            // One renewal at a time per key, a wait bounded by the timeout: past it (a slow
            // renewal, or an outage where each takes that long) this call is decided on Redis
            // as a plain acquire, within its own timeout, then the failure policy.
            let timeout = inner.redis.timeout;
            let Ok(mut st) = tokio::time::timeout(timeout, lease.state.lock()).await else {
                return inner.redis.try_acquire(key, n).await;
            };
            if st.retired {
                continue;
            }
            if let Some(d) = self.local(&lease, n) {
                return Ok(d);
            }
            return self.renew(key, &lease, &mut st, n).await;
        }
    }

    /// A grant from the lease, or a standing denial, without a round trip.
    #[inline]
    fn local(&self, lease: &Lease, n: u64) -> Option<Decision> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        // Acquire: pairs with the renewal's Release store, after which `left` holds the new
        // lease's tokens.
        if now < lease.expires.load(Ordering::Acquire) {
            // AcqRel: the token count is the protocol; each grant takes its own tokens.
            if let Ok(before) = lease
                .left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(n))
            {
                return self.granted(lease, now, before - n, n);
            }
        }
        // Acquire: pairs with the Release store after the denial was recorded.
        if now < lease.deny_until.load(Ordering::Acquire) {
            let denial = (*lease.denial.lock().unwrap_or_else(|p| p.into_inner()))?;
            if n >= denial.n {
                return self.denied(lease, now, denial, n);
            }
        }
        None
    }

    fn granted(&self, lease: &Lease, now: u64, left: u64, n: u64) -> Option<Decision> {
        let out = Outcome {
            allowed: true,
            tokens: left,
            // Relaxed: informational (the decision's waits), published with `expires`.
            mark: lease.mark.load(Ordering::Relaxed),
            write: None,
        };
        let server_now = now.wrapping_add(lease.offset.load(Ordering::Relaxed));
        // `with`: no reference count taken on the hot path.
        self.inner.redis.table.with(|table| {
            let steps = &table.limits(lease.tier).next()?.steps;
            Some(Decision::new(steps, &out, n, server_now, 0))
        })
    }

    /// The denial Redis made, refilled to now (tokens given back by other calls are missed
    /// until `retry_after`).
    fn denied(&self, lease: &Lease, now: u64, denial: Denial, n: u64) -> Option<Decision> {
        let table = self.inner.redis.table.load();
        let steps = &table.limits(lease.tier).nth(denial.index)?.steps;
        if n > steps.cap {
            return None;
        }
        let server_now = now.wrapping_add(lease.offset.load(Ordering::Relaxed));
        let word = steps.word(denial.tokens, denial.mark);
        let out = state::step(steps, word, steps.step_index(server_now), n);
        (!out.allowed).then(|| Decision::new(steps, &out, n, server_now, 0))
    }

    /// A new lease (the last one's unspent tokens go back first when it has ended; when it
    /// merely ran out, what is left counts towards `n`).
    async fn renew(
        &self,
        key: &[u8],
        lease: &Lease,
        st: &mut State,
        n: u64,
    ) -> Result<Decision, RedisLimitError> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let ended = now >= lease.expires.load(Ordering::Acquire);
        // AcqRel: takes what no spender took.
        let left = lease.left.swap(0, Ordering::AcqRel);
        let (unspent, keep) = if ended { (left, 0) } else { (0, left) };
        let need = n - keep; // keep < n: the lease could not grant n
        let cap = inner.redis.table.load().capacity(lease.tier);
        let size = inner.size(st, now, unspent, cap).max(need);
        let call = Call {
            lease: size,
            undo: if st.marks.is_empty() { 0 } else { unspent },
            taken: &st.marks,
            taken_generation: st.generation,
            ..Call::new("l", need, None)
        };
        inner.counters.leases.fetch_add(1, Ordering::Relaxed);
        // Out of the lease, whether the undo gives them back or not (stats: granted).
        inner
            .counters
            .returned
            .fetch_add(unspent, Ordering::Relaxed);
        let answer = inner.redis.run(key, call).await;
        let reply = match answer {
            Ok(Answer::Redis(reply)) => reply,
            other => {
                // Release: the tokens kept go back to the lease.
                lease.left.fetch_add(keep, Ordering::Release);
                return match other {
                    Ok(Answer::Degraded(d)) => Ok(d),
                    Err(e) => Err(e),
                    Ok(Answer::Redis(_)) => unreachable!(),
                };
            }
        };
        if call.undo > 0 {
            inner
                .counters
                .given_back
                .fetch_add(reply.given, Ordering::Relaxed);
        }
        // Tokens kept from the last lease were taken at its (earlier) marks: an undo of what is
        // left must count the steps since then, so the earliest marks stay (for the new
        // tokens too: counting more steps gives back less, never more).
        if keep == 0 || st.marks.is_empty() {
            st.marks = reply.marks();
            st.generation = reply.table.generation;
        }
        let server_ns = reply.now_us.saturating_mul(1000);
        // Relaxed: both are informational, published by the Release stores below.
        lease
            .offset
            .store(server_ns.wrapping_sub(now), Ordering::Relaxed);
        lease.mark.store(reply.buckets[0].1, Ordering::Relaxed);
        if !reply.allowed {
            if keep == 0 {
                // Nothing outstanding: an ended lease was given back in this call.
                st.marks.clear();
            }
            lease.left.fetch_add(keep, Ordering::Release);
            let d: MultiDecision = reply.decide(need);
            let (tokens, mark) = reply.buckets[d.index];
            *lease.denial.lock().unwrap_or_else(|p| p.into_inner()) = Some(Denial {
                index: d.index,
                tokens,
                mark,
                n: need + keep,
            });
            let wait = u64::try_from(d.decision.retry_after().as_nanos()).unwrap_or(u64::MAX);
            // Release: publishes the denial above.
            lease
                .deny_until
                .store(now.saturating_add(wait), Ordering::Release);
            return Ok(d.decision);
        }
        inner
            .counters
            .leased
            .fetch_add(reply.taken, Ordering::Relaxed);
        // The script takes at least `need = n - keep` when it grants.
        let Some(left) = (keep + reply.taken).checked_sub(n) else {
            lease.left.fetch_add(keep + reply.taken, Ordering::Release);
            return Err(RedisLimitError::Protocol(vec![reply.taken as i64]));
        };
        st.size = size;
        st.leased = reply.taken + keep;
        st.taken_at = now;
        // Release: the lease's tokens, then its end: a spender that sees the end sees them.
        lease.left.store(left, Ordering::Release);
        lease
            .expires
            .store(now.saturating_add(inner.hold_ns), Ordering::Release);
        lease.deny_until.store(0, Ordering::Release);
        Ok(self
            .granted(lease, now, left, n)
            .unwrap_or_else(|| reply.decide(n).decision))
    }

    /// Gives back every lease's unspent tokens now (an undo each) and ends the leases: call
    /// it at shutdown. Returns the tokens given back.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::{LeaseConfig, RedisLimiter}, Limit};
    /// # let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(1_000)?, "rl:")
    /// #     .await?.leased(LeaseConfig::new());
    /// limiter.release_all().await;
    /// # Ok(()) }
    /// ```
    pub async fn release_all(&self) -> u64 {
        let inner = &*self.inner;
        let before = inner.counters.given_back.load(Ordering::Relaxed);
        let all: Vec<(Box<[u8]>, Arc<Lease>)> = inner
            .leases
            .pin()
            .iter()
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        for (key, lease) in all {
            let mut st = lease.state.lock().await;
            lease.expires.store(0, Ordering::Release);
            inner.give_back(&key, &lease, &mut st).await;
        }
        inner.counters.given_back.load(Ordering::Relaxed) - before
    }

    /// What this limiter (and its clones) did so far. Nothing is counted per local grant
    /// (the hot path writes only the lease's counter): `granted` is the tokens leased, less
    /// those returned and those the leases still hold (this walks the leases).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::{LeaseConfig, RedisLimiter}, Limit};
    /// # let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(1_000)?, "rl:")
    /// #     .await?.leased(LeaseConfig::new());
    /// let s = limiter.stats();
    /// println!("{} tokens granted with {} round trips", s.granted, s.leases);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> LeaseStats {
        let c = &self.inner.counters;
        // Relaxed: a report, not a protocol (a grant racing this call may be counted or not).
        let held: u64 = self
            .inner
            .leases
            .pin()
            .values()
            .map(|l| l.left.load(Ordering::Relaxed))
            .sum();
        // Relaxed: counters, read for reporting.
        let (leased, returned) = (
            c.leased.load(Ordering::Relaxed),
            c.returned.load(Ordering::Relaxed),
        );
        LeaseStats {
            leases: c.leases.load(Ordering::Relaxed),
            leased,
            granted: leased.saturating_sub(returned).saturating_sub(held),
            returned,
            given_back: c.given_back.load(Ordering::Relaxed),
        }
    }

    /// The Redis limiter underneath.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tollgate::redis::RedisLimitError> {
    /// # use tollgate::{redis::{LeaseConfig, RedisLimiter}, Limit};
    /// # let limiter = RedisLimiter::new("redis://127.0.0.1/", Limit::per_second(1_000)?, "rl:")
    /// #     .await?.leased(LeaseConfig::new());
    /// assert_eq!(limiter.redis().limit(), Limit::per_second(1_000)?);
    /// # Ok(()) }
    /// ```
    pub fn redis(&self) -> &RedisLimiter {
        &self.inner.redis
    }
}

/// A lease's unspent tokens to give back: key, tokens, the marks and limits table of the take.
type Unspent = (Box<[u8]>, u64, Vec<u64>, u64);

/// The last clone gone: leases still held go back in the background (when a Tokio runtime
/// runs; otherwise they come back as their buckets refill).
impl Drop for Inner {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let held: Vec<Unspent> = self
            .leases
            .pin()
            .iter()
            .filter_map(|(k, l)| {
                let st = l.state.try_lock().ok()?;
                let unspent = l.left.swap(0, Ordering::AcqRel);
                (unspent > 0 && !st.marks.is_empty())
                    .then(|| (k.clone(), unspent, st.marks.clone(), st.generation))
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let redis = self.redis.clone();
        rt.spawn(async move {
            for (key, unspent, marks, generation) in held {
                let _ = redis.undo_at(&key, unspent, &marks, generation, None).await;
            }
        });
    }
}
