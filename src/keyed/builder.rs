//! [`KeyedLimiterBuilder`]: the settings of a keyed limiter, and building it.

use std::hash::Hash;
use std::marker::PhantomData;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use super::map::ShardMap;
use super::slots::Slot;
use super::sweep::MIN_SWEEP_EVERY;
use super::{AtCapacity, KeyHasher, KeyedLimiter, Shard, TierFn};
use crate::bucket::TokenBucket;
use crate::clock::{AnyClock, Clock, DefaultClock};
use crate::limit::Limit;
use crate::sync::{ArcCell, AtomicU64, AtomicUsize, Mutex};
use std::sync::Arc;

/// The most keys [`KeyedLimiterBuilder::expected_keys`] presizes the maps for (2^24); they grow on
/// demand beyond it.
pub const MAX_PRESIZE: usize = 1 << 24;

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
///     .expected_keys(1_000)
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
    expected_keys: usize,
    hasher: S,
    _key: PhantomData<fn() -> K>,
}

impl<K, S: std::fmt::Debug> std::fmt::Debug for KeyedLimiterBuilder<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiterBuilder")
            .field("limit", &self.limit)
            .field("tiers", &self.tiers)
            .field("stats", &self.stats)
            .field("clock", &self.clock)
            .field("idle_ttl", &self.idle_ttl)
            .field("max_keys", &self.max_keys)
            .field("shards", &self.shards)
            .field("expected_keys", &self.expected_keys)
            .field("hasher", &self.hasher)
            .finish()
    }
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

    /// Presize the maps for this many keys in all (they grow on demand beyond it). Clamped to
    /// [`max_keys`](KeyedLimiterBuilder::max_keys) when that is set, and to [`MAX_PRESIZE`]
    /// keys: a huge number allocates at most that much up front and never panics.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// // Presized for 2^24 keys, not usize::MAX: no allocation failure, no panic.
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_second(5)?)
    ///     .shards(4)
    ///     .expected_keys(usize::MAX)
    ///     .build();
    /// assert!(limiter.check_key(&1).is_allowed());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn expected_keys(mut self, keys: usize) -> Self {
        self.expected_keys = keys;
        self
    }

    /// Per-key limits (tiers: free / pro / internal). Tier 0 is the builder's limit, tier `i`
    /// (1 ..= 255) is `more[i - 1]`; `tier_of` picks a key's tier when the key is first seen,
    /// and must give the same answer for the same key. An index out of range means tier 0. The
    /// tier is kept with the key's entry, so a call still does one map lookup. Limits past 255 are
    /// ignored. The key cap's shared overflow bucket, and [`KeyedLimiter::limit`], use tier 0.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let free = Limit::per_minute(10)?;
    /// let pro = Limit::per_minute(1_000)?;
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::builder(free)
    ///     .tiers([pro], |user: &String| usize::from(user.starts_with("pro-")))
    ///     .build();
    /// assert_eq!(limiter.check_key("pro-ann").capacity(), 1_000);
    /// assert_eq!(limiter.check_key("bob").capacity(), 10);
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

    /// Count decisions and evictions, for [`KeyedLimiter::stats`]. Default: off. When on, each
    /// call costs one atomic add on a counter line its thread mostly owns.
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
            expected_keys: self.expected_keys,
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
        let first: Vec<Slot> = std::iter::once(self.limit)
            .chain(self.tiers)
            .enumerate()
            .map(|(tier, limit)| Slot::new(limit, tier, tier as u32, ttl_ns, None))
            .collect();
        let (pace, pace_idle_steps) = (*first[0].steps(), first[0].idle_steps);
        let shards = self
            .shards
            .unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cores * 4).max(4)
            })
            .clamp(1, 1 << 16)
            .next_power_of_two();
        let (max_keys, at_capacity) = self.max_keys.unwrap_or((usize::MAX, AtCapacity::Overflow));
        let per_shard = self
            .expected_keys
            .min(max_keys)
            .min(MAX_PRESIZE)
            .div_ceil(shards);
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
            overflow: ArcCell::new(Arc::new(TokenBucket::with_epoch(
                self.limit,
                clock.clone(),
                epoch,
            ))),
            changes: Mutex::new((first.len() as u32, 0)),
            current: first
                .into_iter()
                .map(|slot| ArcCell::new(Arc::new(slot)))
                .collect(),
            pace,
            pace_idle_steps,
            tier_of: self.tier_of,
            clock,
            epoch,
            max_keys,
            at_capacity,
            keys: CachePadded::new(AtomicUsize::new(0)),
            idle_ttl,
            evicted_at: AtomicU64::new(0),
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
            expected_keys: 0,
            hasher: KeyHasher::default(),
            _key: PhantomData,
        }
    }
}
