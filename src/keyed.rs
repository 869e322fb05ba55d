//! Per-key limits: one bucket per key in sharded concurrent maps, with invisible idle eviction
//! and bounded memory (SPEC §3).
//!
//! # Protocol
//!
//! - Hit: hash the key once, pick the shard from the hash, `get` under a pinned guard, then the
//!   bucket's own CAS loop on the cell in place. No allocation, no map write.
//! - First touch: `try_insert_with` a full bucket whose mark is the caller's step; racing first
//!   touches create one bucket (the losers get the winner's cell).
//! - Eviction: a bucket is removed only when [`is_evictable`](crate::state::Steps::is_evictable):
//!   full, and already full `idle_steps` ago. The evictor first swaps the word to the tombstone
//!   with a CAS from the word it checked (so no acquire landed in between), then removes the
//!   entry. An acquire that meets a tombstone helps remove it and looks the key up again.
//!   Because all buckets share one epoch, a full bucket and a fresh one decide identically:
//!   eviction is invisible as long as the clock never steps back by more than `idle_ttl`.
//! - Memory: a new key that finds its shard at twice the size its last sweep left sweeps the
//!   shard first. The work is amortized O(1) per new key and never more than one shard (a
//!   `1/shards` slice of the map) at a time. At the key cap a shard is swept after an eighth of
//!   its size in refused keys, or when a quarter of `idle_ttl` has passed since its last sweep,
//!   before the [`AtCapacity`] policy applies.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::bucket::Cell;
use crate::clock::{AnyClock, Clock, DefaultClock};
use crate::decision::{Decision, InsufficientCapacity};
use crate::limit::Limit;
use crate::map::{Hashed, Pinned, Probe, ShardMap};
use crate::state::{self, Steps};

/// The default key hasher: foldhash, fast, with a random seed per limiter, so nobody can
/// precompute keys that collide (hash flooding).
pub type KeyHasher = foldhash::fast::RandomState;

/// Inserts into a shard between two hand-overs of its retired memory to the collector.
const FLUSH_EVERY: usize = 1024;

/// The least number of new-key attempts between two automatic sweeps of a shard.
const MIN_SWEEP_EVERY: usize = 64;

/// What a keyed limiter does with a new key when it already holds `max_keys` keys (and a sweep
/// of the key's shard found nothing to evict).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtCapacity {
    /// New keys draw from one shared overflow bucket with the same limit. A flood of new keys
    /// (random user ids, spoofed IPs) shares one bucket's worth of tokens; existing keys are
    /// unaffected. The default.
    #[default]
    Overflow,
    /// New keys are denied, as if their bucket were empty (`retry_after` is the time for the
    /// requested tokens to arrive in an empty bucket).
    Deny,
}

struct Shard<K> {
    map: ShardMap<K>,
    /// The map's size at which a new key sweeps the shard: twice what the last sweep left.
    next_sweep: AtomicUsize,
    /// New-key attempts refused at the key cap since the last sweep.
    misses: AtomicUsize,
    /// Step of the last sweep.
    swept_at: AtomicU64,
}

/// What a first touch found.
enum Touch<'p> {
    /// This call inserted the key's bucket, already charged with its request.
    Inserted(Decision),
    /// The key was there (another thread inserted it): its tier and cell.
    Existing(usize, &'p Cell),
    /// No room: the key cap is reached.
    Full,
    /// More tokens than the key's tier holds.
    TooMany(InsufficientCapacity),
}

/// One token bucket per key: per user, per API key, per client IP.
///
/// Buckets live in sharded papaya maps; idle full buckets are evicted automatically (invisible
/// to decisions), so memory follows the set of active keys.
///
/// ```
/// use tollgate::{KeyedLimiter, Limit};
///
/// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_second(2)?);
/// assert!(limiter.check_key("alice").is_allowed());
/// assert!(limiter.check_key("alice").is_allowed());
/// assert!(limiter.check_key("alice").is_denied());
/// assert!(limiter.check_key("bob").is_allowed()); // keys are independent
/// assert_eq!(limiter.len(), 2);
/// # Ok::<(), tollgate::LimitError>(())
/// ```
pub struct KeyedLimiter<K, S = KeyHasher> {
    shards: Box<[CachePadded<Shard<K>>]>,
    shard_mask: u64,
    hasher: S,
    /// The limits keys can have; tier 0 is the builder's limit.
    tiers: Box<[Tier]>,
    tier_of: Option<TierFn<K>>,
    clock: AnyClock,
    epoch: u64,
    max_keys: usize,
    at_capacity: AtCapacity,
    overflow: Cell,
    keys: CachePadded<AtomicUsize>,
    idle_ttl: Duration,
    /// Decision counters, when asked for.
    counters: Option<Box<crate::stats::Counters>>,
}

/// Picks a key's tier (an index into the limits) when the key is first seen.
type TierFn<K> = std::sync::Arc<dyn Fn(&K) -> usize + Send + Sync>;

/// One limit a key can have, with its precomputed arithmetic.
struct Tier {
    steps: Steps,
    limit: Limit,
    /// Steps a full bucket must have been idle before it may be evicted.
    idle_steps: u64,
}

/// Builds a [`KeyedLimiter`]. From [`KeyedLimiter::builder`].
///
/// ```
/// use std::time::Duration;
/// use tollgate::{AtCapacity, KeyedLimiter, Limit, ManualClock};
///
/// let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_minute(60)?)
///     .clock(ManualClock::new())
///     .idle_ttl(Duration::from_secs(300))
///     .max_keys(100_000, AtCapacity::Deny)
///     .shards(8)
///     .capacity(1_000)
///     .build();
/// assert!(limiter.check_key(&7).is_allowed());
/// # Ok::<(), tollgate::LimitError>(())
/// ```
pub struct KeyedLimiterBuilder<K, S = KeyHasher> {
    limit: Limit,
    tiers: Vec<Limit>,
    tier_of: Option<TierFn<K>>,
    stats: bool,
    clock: Option<AnyClock>,
    idle_ttl: Option<Duration>,
    max_keys: Option<(usize, AtCapacity)>,
    shards: Option<usize>,
    capacity: usize,
    hasher: S,
    _key: PhantomData<fn() -> K>,
}

impl<K, S> KeyedLimiterBuilder<K, S> {
    /// The clock (default: [`DefaultClock`]). Any [`Clock`]; the shipped ones are called without
    /// dynamic dispatch.
    pub fn clock<C: Clock + 'static>(mut self, clock: C) -> Self {
        self.clock = Some(AnyClock::new(clock));
        self
    }

    /// How long a full bucket must have been idle before it may be evicted. Default: the
    /// limit's time to fill, at least 1 s. Eviction never changes a decision (a full bucket and
    /// a fresh one are the same), so this only trades re-creating buckets against memory, as
    /// long as the clock never steps back by more than `idle_ttl`.
    pub fn idle_ttl(mut self, idle_ttl: Duration) -> Self {
        self.idle_ttl = Some(idle_ttl);
        self
    }

    /// A hard bound on the number of keys, and what new keys get at the bound. Default: none.
    /// A bound of 0 sends every key to the policy.
    pub fn max_keys(mut self, max_keys: usize, at_capacity: AtCapacity) -> Self {
        self.max_keys = Some((max_keys, at_capacity));
        self
    }

    /// The number of shards, rounded up to a power of two (1 ..= 65,536). Default: 4 per core,
    /// at least 4.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Presize for this many keys in all.
    pub fn capacity(mut self, keys: usize) -> Self {
        self.capacity = keys;
        self
    }

    /// Per-key limits (tiers: free / pro / internal). Tier 0 is the builder's limit, tier `i`
    /// (1 ..= 255) is `more[i - 1]`; `tier_of` picks a key's tier when the key is first seen,
    /// and must give the same answer for the same key. An index out of range means tier 0. The
    /// tier is kept with the key, so a call still does one map lookup. Limits past 255 are
    /// ignored. The key cap's shared overflow bucket, and [`KeyedLimiter::limit`], use tier 0.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let free = Limit::per_minute(10)?;
    /// let pro = Limit::per_minute(1_000)?;
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::builder(free)
    ///     .tiers([pro], |user: &String| usize::from(user.starts_with("pro-")))
    ///     .build();
    /// assert_eq!(limiter.check_key("pro-ann").limit(), 1_000);
    /// assert_eq!(limiter.check_key("bob").limit(), 10);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn tiers(
        mut self,
        more: impl IntoIterator<Item = Limit>,
        tier_of: impl Fn(&K) -> usize + Send + Sync + 'static,
    ) -> Self {
        self.tiers = more.into_iter().take(255).collect();
        self.tier_of = Some(std::sync::Arc::new(tier_of));
        self
    }

    /// Count decisions and evictions, for [`KeyedLimiter::stats`]. Default: off (each call
    /// then costs one uncontended atomic add on a per-thread counter line).
    pub fn stats(mut self, on: bool) -> Self {
        self.stats = on;
        self
    }

    /// The key hasher (default: [`KeyHasher`], randomly seeded per limiter).
    pub fn hasher<S2>(self, hasher: S2) -> KeyedLimiterBuilder<K, S2> {
        KeyedLimiterBuilder {
            limit: self.limit,
            tiers: self.tiers,
            tier_of: self.tier_of,
            stats: self.stats,
            clock: self.clock,
            idle_ttl: self.idle_ttl,
            max_keys: self.max_keys,
            shards: self.shards,
            capacity: self.capacity,
            hasher,
            _key: PhantomData,
        }
    }

    /// Builds the limiter; its epoch (shared by all keys) is the clock's time now.
    pub fn build(self) -> KeyedLimiter<K, S>
    where
        K: Hash + Eq,
    {
        let clock = self
            .clock
            .unwrap_or_else(|| AnyClock::new(DefaultClock::new()));
        let epoch = clock.now();
        let idle_ttl = self
            .idle_ttl
            .unwrap_or_else(|| self.limit.time_to_fill().max(Duration::from_secs(1)));
        let ttl_ns = u64::try_from(idle_ttl.as_nanos()).unwrap_or(u64::MAX);
        let tiers: Box<[Tier]> = std::iter::once(self.limit)
            .chain(self.tiers)
            .map(|limit| {
                let steps = *limit.steps();
                Tier {
                    steps,
                    limit,
                    idle_steps: steps.step_index(ttl_ns).saturating_add(2),
                }
            })
            .collect();
        let shards = self
            .shards
            .unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cores * 4).max(4)
            })
            .clamp(1, 1 << 16)
            .next_power_of_two();
        let per_shard = self.capacity.div_ceil(shards);
        let (max_keys, at_capacity) = self.max_keys.unwrap_or((usize::MAX, AtCapacity::Overflow));
        KeyedLimiter {
            shards: (0..shards)
                .map(|_| {
                    CachePadded::new(Shard {
                        map: ShardMap::with_capacity(per_shard),
                        next_sweep: AtomicUsize::new(MIN_SWEEP_EVERY),
                        misses: AtomicUsize::new(0),
                        swept_at: AtomicU64::new(0),
                    })
                })
                .collect(),
            shard_mask: shards as u64 - 1,
            hasher: self.hasher,
            overflow: Cell::full(&tiers[0].steps, 0),
            tiers,
            tier_of: self.tier_of,
            clock,
            epoch,
            max_keys,
            at_capacity,
            keys: CachePadded::new(AtomicUsize::new(0)),
            idle_ttl,
            counters: self.stats.then(|| Box::new(crate::stats::Counters::new())),
        }
    }
}

impl<K: Hash + Eq> KeyedLimiter<K, KeyHasher> {
    /// A keyed limiter with the defaults: default clock, randomly seeded hasher, automatic
    /// eviction, no key cap.
    pub fn new(limit: Limit) -> Self {
        Self::builder(limit).build()
    }

    /// A builder for the other settings.
    pub fn builder(limit: Limit) -> KeyedLimiterBuilder<K, KeyHasher> {
        KeyedLimiterBuilder {
            limit,
            tiers: Vec::new(),
            tier_of: None,
            stats: false,
            clock: None,
            idle_ttl: None,
            max_keys: None,
            shards: None,
            capacity: 0,
            hasher: KeyHasher::default(),
            _key: PhantomData,
        }
    }
}

impl<K: Hash + Eq, S: BuildHasher> KeyedLimiter<K, S> {
    /// Takes one token from `key`'s bucket (creating a full one on first sight).
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_second(1)?);
    /// assert!(limiter.check_key(&42).is_allowed());
    /// assert!(limiter.check_key(&42).is_denied());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    #[inline]
    pub fn check_key<Q>(&self, key: &Q) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.try_acquire_key(key, 1) {
            Ok(d) => d,
            Err(_) => unreachable!("capacity is at least 1"),
        }
    }

    /// Takes `n` tokens from `key`'s bucket if they are there (`n == 0`: a peek). A `String`
    /// keyed limiter is queried with `&str`; a hit allocates nothing.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_second(10)?);
    /// let d = limiter.try_acquire_key("api-key-1", 4).unwrap();
    /// assert_eq!(d.remaining(), 6);
    /// assert!(limiter.try_acquire_key("api-key-1", 11).is_err());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`InsufficientCapacity`] when `n` exceeds the capacity. Nothing changes (no bucket is
    /// created).
    #[inline]
    pub fn try_acquire_key<Q>(&self, key: &Q, n: u64) -> Result<Decision, InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let d = self.decide(key, n);
        if let (Some(c), Ok(d)) = (&self.counters, &d) {
            c.decided(d.is_allowed());
        }
        d
    }

    #[inline(always)]
    fn decide<Q>(&self, key: &Q, n: u64) -> Result<Decision, InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = self.clock.now();
        let (hash, shard) = self.shard_of(key);
        let probe = Probe { hash, key };
        let pinned = shard.map.pin();
        loop {
            let (tier, cell) = match pinned.get(&probe) {
                Some((tier, cell)) => (self.tier(tier), cell),
                None => match self.first_touch(shard, &pinned, &probe, n, now) {
                    Touch::Inserted(d) => return Ok(d),
                    Touch::Existing(tier, cell) => (self.tier(tier), cell),
                    Touch::Full => return Ok(self.at_capacity(n, now)),
                    Touch::TooMany(e) => return Err(e),
                },
            };
            if n > tier.steps.cap {
                return Err(InsufficientCapacity {
                    requested: n,
                    capacity: tier.steps.cap,
                });
            }
            if let Some(d) = cell.acquire(&tier.steps, n, now, self.epoch) {
                return Ok(d);
            }
            // A tombstone: the bucket is being evicted. Help remove it, then look again.
            if pinned.remove_tombstoned(&probe) {
                self.removed(1);
            }
        }
    }

    /// Tier `i`, or tier 0 when `i` is out of range.
    #[inline(always)]
    fn tier(&self, i: usize) -> &Tier {
        self.tiers.get(i).unwrap_or(&self.tiers[0])
    }

    /// The tier index of a key seen for the first time.
    fn tier_of(&self, key: &K) -> u8 {
        match &self.tier_of {
            Some(f) => u8::try_from(f(key))
                .ok()
                .filter(|&t| usize::from(t) < self.tiers.len())
                .unwrap_or(0),
            None => 0,
        }
    }

    /// A miss: maybe sweep the shard, then insert the key's bucket: a full bucket marked at the
    /// step of `now`, already charged with this call's `n` tokens (inserting it publishes the
    /// acquisition, so no CAS follows).
    #[cold]
    fn first_touch<'p, Q>(
        &self,
        shard: &Shard<K>,
        pinned: &'p Pinned<'_, K>,
        probe: &Probe<'_, Q>,
        n: u64,
        now: u64,
    ) -> Touch<'p>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let key = probe.key.to_owned();
        let tier_index = self.tier_of(&key);
        let tier = self.tier(usize::from(tier_index));
        if n > tier.steps.cap {
            return Touch::TooMany(InsufficientCapacity {
                requested: n,
                capacity: tier.steps.cap,
            });
        }
        // Relaxed (all counters here): they pace sweeps and bound the key count; they publish
        // no memory, and the count's bound is kept by the read-modify-writes themselves.
        let len = pinned.len();
        if len >= shard.next_sweep.load(Ordering::Relaxed) {
            self.sweep(shard, pinned, now);
        }
        let capped = self.max_keys != usize::MAX;
        if capped && !self.reserve(shard, pinned, now) {
            // The key may have been inserted meanwhile by another thread.
            return pinned
                .get(probe)
                .map_or(Touch::Full, |(t, cell)| Touch::Existing(t, cell));
        }
        let k = tier.steps.step_index(now.saturating_sub(self.epoch));
        let fresh = tier.steps.full(k);
        let out = state::step(&tier.steps, fresh, k, n);
        let stored = Hashed::new(probe.hash, key, tier_index);
        match pinned.try_insert_with(stored, || Cell::new(out.write.unwrap_or(fresh))) {
            Ok(_) => {
                if (len + 1).is_multiple_of(FLUSH_EVERY) {
                    // Growing: let old tables from finished resizes be freed promptly.
                    pinned.flush();
                }
                Touch::Inserted(Decision::new(&tier.steps, &out, n, now, self.epoch))
            }
            Err(cell) => {
                if capped {
                    self.keys.fetch_sub(1, Ordering::Relaxed);
                }
                // Same key, same tier (`tier_of` is a function of the key).
                Touch::Existing(usize::from(tier_index), cell)
            }
        }
    }

    /// Reserves room for one more key under the cap. At the cap the key's shard is swept first
    /// when an eighth of its size in refused keys, or a quarter of `idle_ttl`, has gone by since
    /// its last sweep (amortized O(1) per attempt under a flood).
    fn reserve(&self, shard: &Shard<K>, pinned: &Pinned<'_, K>, now: u64) -> bool {
        let k = self.step_now(now);
        for attempt in 0..2 {
            if self.keys.fetch_add(1, Ordering::Relaxed) < self.max_keys {
                return true;
            }
            self.keys.fetch_sub(1, Ordering::Relaxed);
            if attempt == 1 {
                break;
            }
            let misses = shard.misses.fetch_add(1, Ordering::Relaxed) + 1;
            let every = (pinned.len() / 8).max(MIN_SWEEP_EVERY);
            let since = shard.swept_at.load(Ordering::Relaxed);
            if misses < every && k < since.saturating_add(self.tiers[0].idle_steps / 4 + 1) {
                break;
            }
            self.sweep(shard, pinned, now);
        }
        false
    }

    /// The key's hash (computed once per call) and its shard, picked by bits 32.. of the hash
    /// (papaya indexes its table with the low bits and tags with the top 7).
    #[inline(always)]
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> (u64, &Shard<K>) {
        let hash = crate::map::plain(self.hasher.hash_one(key));
        (
            hash,
            &self.shards[((hash >> 32) & self.shard_mask) as usize],
        )
    }

    /// The step of clock reading `now` in tier 0 (the overflow bucket's, and sweep pacing's).
    fn step_now(&self, now: u64) -> u64 {
        self.tiers[0]
            .steps
            .step_index(now.saturating_sub(self.epoch))
    }

    #[cold]
    fn at_capacity(&self, n: u64, now: u64) -> Decision {
        let k = self.step_now(now);
        let steps = &self.tiers[0].steps;
        match self.at_capacity {
            AtCapacity::Overflow => match self.overflow.acquire(steps, n, now, self.epoch) {
                Some(d) => d,
                None => unreachable!("the overflow bucket is never evicted"),
            },
            AtCapacity::Deny => {
                let out = state::step(steps, steps.empty(k), k, n.min(steps.cap));
                Decision::new(steps, &out, n, now, self.epoch)
            }
        }
    }

    /// Sweeps one shard at clock reading `now`; returns how many buckets it evicted.
    #[cold]
    fn sweep(&self, shard: &Shard<K>, pinned: &Pinned<'_, K>, now: u64) -> usize {
        let t = now.saturating_sub(self.epoch);
        let removed = pinned.sweep(|tier, cell| {
            let tier = self.tier(tier);
            let word = cell.load();
            let k = tier.steps.step_index(t);
            tier.steps.is_evictable(word, k, tier.idle_steps) && cell.tombstone(word)
        });
        self.removed(removed);
        // Relaxed: pacing only.
        let left = pinned.len();
        shard
            .next_sweep
            .store((2 * left).max(left + MIN_SWEEP_EVERY), Ordering::Relaxed);
        shard.misses.store(0, Ordering::Relaxed);
        shard
            .swept_at
            .fetch_max(self.step_now(now), Ordering::Relaxed);
        removed
    }

    fn removed(&self, n: usize) {
        if let Some(c) = &self.counters {
            c.evicted(n as u64);
        }
        if n > 0 && self.max_keys != usize::MAX {
            // Relaxed: a count, as in `first_touch`.
            self.keys.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// `key`'s bucket as it is now, consuming nothing and creating nothing (a key without a
    /// bucket is full). Because nothing is stored for a new key, a later call whose clock reads
    /// earlier than this one (a stale reading) sees a fresh bucket marked at its own step; for
    /// SPEC's exact peek, which records the new bucket, use `try_acquire_key(key, 0)`. The same
    /// holds for `refund_key`, `add_tokens_key` and `reset_key` on a key without a bucket.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_hour(5)?);
    /// assert_eq!(limiter.snapshot_key("new").remaining(), 5);
    /// assert!(limiter.is_empty());
    /// limiter.try_acquire_key("k", 2).unwrap();
    /// assert_eq!(limiter.snapshot_key("k").remaining(), 3);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn snapshot_key<Q>(&self, key: &Q) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.update_key(key, 0, state::add)
    }

    /// Gives `n` tokens back to `key`'s bucket (capped at the capacity).
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_hour(5)?);
    /// limiter.try_acquire_key(&1, 4).unwrap();
    /// assert_eq!(limiter.refund_key(&1, 3).remaining(), 4);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn refund_key<Q>(&self, key: &Q, n: u64) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.update_key(key, n, state::add)
    }

    /// Adds `n` tokens to `key`'s bucket (capped at the capacity).
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_hour(5)?);
    /// limiter.try_acquire_key(&1, 5).unwrap();
    /// assert_eq!(limiter.add_tokens_key(&1, 2).remaining(), 2);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn add_tokens_key<Q>(&self, key: &Q, n: u64) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.update_key(key, n, state::add)
    }

    /// Fills `key`'s bucket to its capacity.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_hour(5)?);
    /// limiter.try_acquire_key(&1, 5).unwrap();
    /// assert_eq!(limiter.reset_key(&1).remaining(), 5);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn reset_key<Q>(&self, key: &Q) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.update_key(key, 0, |s, w, k, _| state::reset(s, w, k))
    }

    /// Applies `op` to `key`'s bucket. `op` never empties a bucket (it adds or fills), so a key
    /// without a bucket (or one being evicted) is full before and after: the answer is computed
    /// on a full word and nothing is inserted.
    fn update_key<Q>(
        &self,
        key: &Q,
        n: u64,
        op: impl Fn(&Steps, u64, u64, u64) -> state::Outcome + Copy,
    ) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = self.clock.now();
        let (hash, shard) = self.shard_of(key);
        let probe = Probe { hash, key };
        let pinned = shard.map.pin();
        if let Some((tier, cell)) = pinned.get(&probe) {
            let steps = &self.tier(tier).steps;
            if let Some(d) = cell.update(steps, now, self.epoch, n, op) {
                return d;
            }
        }
        let steps = &self.tier(usize::from(self.tier_of(&key.to_owned()))).steps;
        let k = steps.step_index(now.saturating_sub(self.epoch));
        let out = op(steps, steps.full(k), k, n);
        Decision::new(steps, &out, 0, now, self.epoch)
    }

    /// Evicts every idle full bucket now (a full pass over all shards); returns how many.
    /// Never needed for bounded memory (sweeps run automatically); useful before measuring,
    /// or on a timer (see [`spawn_evictor`](KeyedLimiter::spawn_evictor)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{KeyedLimiter, Limit, ManualClock};
    /// let clock = ManualClock::new();
    /// let limiter: KeyedLimiter<u32> = KeyedLimiter::builder(Limit::per_second(5)?)
    ///     .clock(clock.clone())
    ///     .idle_ttl(Duration::from_secs(10))
    ///     .build();
    /// limiter.check_key(&1);
    /// assert_eq!(limiter.evict_idle(), 0); // not idle yet
    /// clock.advance(Duration::from_secs(11));
    /// assert_eq!(limiter.evict_idle(), 1);
    /// assert!(limiter.is_empty());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now();
        self.shards
            .iter()
            .map(|shard| self.sweep(shard, &shard.map.pin(), now))
            .sum()
    }

    /// What this limiter decided so far, when built with
    /// [`stats(true)`](KeyedLimiterBuilder::stats); `None` otherwise.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u32> = KeyedLimiter::builder(Limit::per_hour(1)?).stats(true).build();
    /// limiter.check_key(&1);
    /// limiter.check_key(&1);
    /// let stats = limiter.stats().unwrap();
    /// assert_eq!((stats.allowed, stats.denied), (1, 1));
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn stats(&self) -> Option<crate::Stats> {
        self.counters.as_ref().map(|c| c.read())
    }

    /// The number of keys held (buckets in the maps).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map.pin().len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The limit every key gets.
    pub fn limit(&self) -> &Limit {
        &self.tiers[0].limit
    }

    /// The idle time after which a full bucket may be evicted.
    pub fn idle_ttl(&self) -> Duration {
        self.idle_ttl
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(not(loom))]
impl<K, S> KeyedLimiter<K, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Starts a background thread that calls [`evict_idle`](KeyedLimiter::evict_idle) every
    /// `period`. It stops when the returned handle drops (or when the limiter is dropped).
    /// Optional: sweeps also run automatically on new keys.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: Arc<KeyedLimiter<u64>> = Arc::new(KeyedLimiter::new(Limit::per_second(5)?));
    /// let evictor = limiter.spawn_evictor(Duration::from_secs(30));
    /// drop(evictor); // stops and joins the thread
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn spawn_evictor(self: &std::sync::Arc<Self>, period: Duration) -> Evictor {
        let weak = std::sync::Arc::downgrade(self);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tollgate-evictor".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    match weak.upgrade() {
                        Some(limiter) => {
                            limiter.evict_idle();
                        }
                        None => break,
                    }
                }
            })
            .ok();
        Evictor {
            stop: Some(stop),
            thread,
        }
    }
}

/// A running background evictor; dropping it stops the thread.
#[derive(Debug)]
pub struct Evictor {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Evictor {
    /// Whether the thread was started (spawning can fail; eviction then stays automatic only).
    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for Evictor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<K: Hash + Eq, S> std::fmt::Debug for KeyedLimiter<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("limit", &self.tiers[0].limit)
            .field("tiers", &self.tiers.len())
            .field(
                "keys",
                &self.shards.iter().map(|s| s.map.pin().len()).sum::<usize>(),
            )
            .field("shards", &self.shards.len())
            .field("idle_ttl", &self.idle_ttl)
            .field("clock", &self.clock)
            .finish()
    }
}
