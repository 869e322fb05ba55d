//! Per-key limits: one bucket per key in sharded concurrent maps, with invisible idle eviction
//! and bounded memory (SPEC §3).
//!
//! # Protocol
//!
//! - Hit: hash the key once, pick the shard from the hash, `get` under a pinned guard, then the
//!   bucket's own CAS loop on the cell in place. No allocation, no map write.
//! - First touch: `try_insert_with` the slot's untouched bucket (full, but for a `Keep` raise)
//!   at the step of a clock reading taken after the miss (never the caller's earlier, possibly
//!   stale one: its key may have been evicted since, and a bucket recreated at the old step
//!   would refill those steps twice), already charged; racing first touches create one bucket
//!   (the losers look the key up again).
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
//! - Limit changes: every limit a key can be under is a *slot* (the tiers first, then one per
//!   change, at most [`MAX_SLOTS`]); a key's slot is kept in spare bits of its stored hash. A
//!   change adds a slot, records its time and policy on the old one and marks it replaced
//!   (Release), then points the tier at the new slot. A call that finds its key under a
//!   replaced slot seals the word (CAS to [`SEALED`](crate::state::SEALED), distinct from the
//!   tombstone, so no helper removes the entry), converts it through every change since
//!   ([`state::convert`]) and replaces the entry; calls meeting the seal wait for the
//!   replacement. A call that raced the change onto the old slot is ordered before it: the
//!   conversion then applies from that call's step. The seal is the one place a call waits for
//!   another: calls on that one key yield until the migrating call has copied the key and
//!   replaced the entry (a clone and one map insert; longer only if that thread is descheduled
//!   meanwhile, until it runs again). A panic in the key's `Clone` or `Eq` during the move puts
//!   the word back (the key is never left sealed). Each slot also holds its untouched bucket
//!   (what the changes made of a bucket no call touched), which is what a first touch gets and
//!   what eviction compares with, so eviction stays invisible across changes.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::bucket::{Cell, Inherit, TokenBucket, TooManyReconfigurations};
use crate::clock::{AnyClock, Clock, DefaultClock};
use crate::decision::{Decision, InsufficientCapacity};
use crate::limit::Limit;
use crate::map::{Hashed, Pinned, Probe, ShardMap};
use crate::state::{self, Steps, TOMBSTONE};
use crate::sync::{AtomicU64, AtomicUsize, Mutex, OnceLock, Ordering};

/// The default key hasher: foldhash, fast, with a random seed per limiter, so nobody can
/// precompute keys that collide (hash flooding).
pub type KeyHasher = foldhash::fast::RandomState;

/// Inserts into a shard between two hand-overs of its retired memory to the collector.
const FLUSH_EVERY: usize = 1024;

/// The least number of new-key attempts between two automatic sweeps of a shard.
const MIN_SWEEP_EVERY: usize = 64;

/// How many limits a keyed limiter can ever hold: its tiers plus every limit change (the slot
/// of a key's limit is kept in 8 bits of its stored hash).
const MAX_SLOTS: usize = 256;

/// The most keys [`KeyedLimiterBuilder::capacity`] presizes the maps for (2^24); they grow on
/// demand beyond it.
pub const MAX_PRESIZE: usize = 1 << 24;

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

/// Why [`KeyedLimiter::set_tier_limit`] did not change a limit (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetLimitError {
    /// The limiter has no tier `tier` (it has `tiers`: 0 ..= `tiers - 1`).
    UnknownTier {
        /// The tier asked for.
        tier: usize,
        /// How many tiers the limiter has.
        tiers: usize,
    },
    /// The limiter already holds its 256 limits: its tiers plus every change so far.
    TooManyReconfigurations,
}

impl std::fmt::Display for SetLimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetLimitError::UnknownTier { tier, tiers } => {
                write!(f, "no tier {tier}: this limiter has {tiers} tier(s)")
            }
            SetLimitError::TooManyReconfigurations => write!(
                f,
                "this limiter already holds {MAX_SLOTS} limits (its tiers and every change); \
                 build a new limiter"
            ),
        }
    }
}

impl std::error::Error for SetLimitError {}

/// What a first touch found.
enum Touch {
    /// This call inserted the key's bucket under this slot, already charged with its request.
    Inserted(Decision, usize),
    /// The key was there (another thread inserted it): look it up again.
    Existing,
    /// No room: the key cap is reached (the key's slot, for the answer).
    Full(usize),
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
    /// The limits keys are under (slots): first the tiers, tier 0 being the builder's limit.
    first: Box<[Tier]>,
    /// Slots added by limit changes, allocated at the first change. A slot, once published,
    /// lives as long as the limiter: entries may still name it.
    later: OnceLock<Box<[OnceLock<Box<Tier>>]>>,
    /// The slot in force for each tier.
    current: Box<[AtomicUsize]>,
    /// Serializes limit changes; holds the slots used and the time of the last change.
    changes: Mutex<(usize, u64)>,
    tier_of: Option<TierFn<K>>,
    clock: AnyClock,
    epoch: u64,
    max_keys: usize,
    at_capacity: AtCapacity,
    /// The shared bucket of new keys at the key cap; follows tier 0's limit.
    overflow: TokenBucket<AnyClock>,
    keys: CachePadded<AtomicUsize>,
    idle_ttl: Duration,
    /// Clock reading (plus one; 0: never) at the end of the last full pass ([`evict_idle`]):
    /// while passes keep coming, from a background evictor, new keys leave sweeps to them.
    ///
    /// [`evict_idle`]: KeyedLimiter::evict_idle
    evicted_at: AtomicU64,
    /// Decision counters, when asked for.
    counters: Option<Box<crate::stats::Counters>>,
}

/// Puts a sealed cell's word back if the migration that sealed it unwinds (a panic in the key's
/// `Clone` or `Eq`); forgotten once the replacement entry is in.
struct Unseal<'a> {
    cell: &'a Cell,
    word: u64,
}

impl Drop for Unseal<'_> {
    fn drop(&mut self) {
        self.cell.unseal(self.word);
    }
}

/// Picks a key's tier (an index into the limits) when the key is first seen.
type TierFn<K> = std::sync::Arc<dyn Fn(&K) -> usize + Send + Sync>;

/// One limit keys can be under (a slot): a tier's limit, or the limit a change gave a tier.
struct Tier {
    limit: Limit,
    /// Steps a full bucket must have been idle before it may be evicted.
    idle_steps: u64,
    /// The bucket of a key no call has touched: `fresh_tokens` at step `fresh_mark`, refilling
    /// from there. Full from the epoch for a tier's first limit; after a change, what the
    /// change made of the previous slot's untouched bucket (so a key seen for the first time
    /// and a key whose bucket was evicted are the same as one kept all along).
    fresh_tokens: u64,
    fresh_mark: u64,
    /// The first step at which the untouched bucket is full; eviction waits for it.
    full_from: u64,
    /// 0 while in force; `s + 1` once a change replaced this slot by slot `s`.
    replaced_by: AtomicUsize,
    /// That change: its time (nanoseconds since the epoch) and policy. Set before
    /// `replaced_by`.
    change: OnceLock<(u64, Inherit)>,
}

impl Tier {
    /// The limit's arithmetic (kept in the limit; no copy).
    #[inline(always)]
    fn steps(&self) -> &Steps {
        self.limit.steps()
    }

    fn new(limit: Limit, ttl_ns: u64, fresh: Option<(u64, u64)>) -> Tier {
        let steps = *limit.steps();
        let (fresh_tokens, fresh_mark) = fresh.unwrap_or((steps.cap, 0));
        Tier {
            limit,
            idle_steps: steps.step_index(ttl_ns).saturating_add(2),
            fresh_tokens,
            fresh_mark,
            full_from: fresh_mark
                .saturating_add((steps.cap - fresh_tokens.min(steps.cap)).div_ceil(steps.q)),
            replaced_by: AtomicUsize::new(0),
            change: OnceLock::new(),
        }
    }

    /// Whether a change replaced this slot (its entries move to the next one on access).
    #[inline(always)]
    fn is_replaced(&self) -> bool {
        // Acquire: pairs with the Release in `set_tier_limit`, so `change` and the next slot
        // are seen.
        self.replaced_by.load(Ordering::Acquire) != 0
    }

    /// The untouched bucket at step `k`: (tokens, mark).
    #[inline]
    fn fresh(&self, k: u64) -> (u64, u64) {
        if k >= self.full_from {
            (self.steps().cap, k.max(self.fresh_mark))
        } else if k <= self.fresh_mark {
            (self.fresh_tokens, self.fresh_mark)
        } else {
            // Below `full_from`: fewer than C tokens, no overflow.
            (
                self.fresh_tokens + (k - self.fresh_mark) * self.steps().q,
                k,
            )
        }
    }

    /// The untouched bucket at step `k`, packed.
    #[inline]
    fn fresh_word(&self, k: u64) -> u64 {
        let (tokens, mark) = self.fresh(k);
        self.steps().word(tokens, mark)
    }

    /// Whether a bucket holding `word` may be evicted at step `k`: idle and full long enough,
    /// and the untouched bucket is full by then too (so the two are the same).
    fn is_evictable(&self, word: u64, k: u64) -> bool {
        self.steps().is_evictable(word, k, self.idle_steps) && k - self.idle_steps >= self.full_from
    }
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

    /// Presize the maps for this many keys in all (they grow on demand beyond it). Clamped to
    /// [`max_keys`](KeyedLimiterBuilder::max_keys) when that is set, and to [`MAX_PRESIZE`]
    /// keys: a huge number allocates at most that much up front and never panics.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// // Presized for 2^24 keys, not usize::MAX: no allocation failure, no panic.
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_second(5)?)
    ///     .shards(4)
    ///     .capacity(usize::MAX)
    ///     .build();
    /// assert!(limiter.check_key(&1).is_allowed());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
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
        let first: Box<[Tier]> = std::iter::once(self.limit)
            .chain(self.tiers)
            .map(|limit| Tier::new(limit, ttl_ns, None))
            .collect();
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
            .capacity
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
            overflow: TokenBucket::with_epoch(self.limit, clock.clone(), epoch),
            current: (0..first.len()).map(AtomicUsize::new).collect(),
            changes: Mutex::new((first.len(), 0)),
            first,
            later: OnceLock::new(),
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
        let d = self.decide(key, n).map(|(d, _)| d);
        if let (Some(c), Ok(d)) = (&self.counters, &d) {
            c.decided(d.is_allowed());
        }
        d
    }

    /// `try_acquire_key` that also says under which limit slot the key's bucket decided
    /// (`usize::MAX`: the key cap's answer, not the key's bucket), for a later
    /// [`undo_key`](KeyedLimiter::undo_key).
    pub(crate) fn take_key_tracked<Q>(
        &self,
        key: &Q,
        n: u64,
    ) -> Result<(Decision, usize), InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let d = self.decide(key, n);
        if let (Some(c), Ok((d, _))) = (&self.counters, &d) {
            c.decided(d.is_allowed());
        }
        d
    }

    /// Undoes a take of `n` tokens from `key` that `taken` granted under slot `slot` (SPEC §2,
    /// undo versus refund; see `state::undo`). Under a slot no longer the key's (its limit
    /// changed since), or for a take the key cap answered, nothing comes back. A key whose
    /// bucket was evicted since was full meanwhile, so the undo's count of refill steps gives
    /// nothing back either.
    pub(crate) fn undo_key<Q>(&self, key: &Q, n: u64, taken: &Decision, slot: usize) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mark = taken.mark();
        self.update_key(key, n, Some(slot), move |s, w, k, n| {
            state::undo(s, w, k, n, mark)
        })
    }

    /// SPEC's exact peek at `key` (as `try_acquire_key(key, 0)`) ahead of a request for `n`
    /// tokens: counted in the stats only as the denial it foretells, if it does (a grant is
    /// counted by the take that follows).
    pub(crate) fn peek_for<Q>(&self, key: &Q, n: u64) -> Result<Decision, InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (d, _) = self.decide(key, 0)?;
        if let Some(c) = &self.counters {
            if d.remaining() < n && n <= d.limit() {
                c.decided(false);
            }
        }
        Ok(d)
    }

    /// One call on `key`: the decision, and the slot of the bucket that made it (`usize::MAX`
    /// when the key cap answered).
    #[inline(always)]
    fn decide<Q>(&self, key: &Q, n: u64) -> Result<(Decision, usize), InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = self.clock.now();
        let (hash, shard) = self.shard_of(key);
        let probe = Probe { hash, key };
        let pinned = shard.map.pin();
        loop {
            let (slot, cell) = match pinned.get(&probe) {
                Some(found) => found,
                None => match self.first_touch(shard, &pinned, &probe, n, now) {
                    Touch::Inserted(d, slot) => return Ok((d, slot)),
                    Touch::Existing => continue,
                    Touch::Full(slot) => return Ok((self.at_capacity(slot, n, now), usize::MAX)),
                    Touch::TooMany(e) => return Err(e),
                },
            };
            // `entry` by hand: through the helper this path measured 8 instructions more per
            // call (callgrind, 1,000,000 hits).
            let tier = self.tier(slot);
            if tier.is_replaced() {
                self.migrate(&pinned, &probe, slot, cell);
                continue;
            }
            if n > tier.steps().cap {
                return Err(InsufficientCapacity {
                    requested: n,
                    capacity: tier.steps().cap,
                });
            }
            if let Some(d) = cell.acquire(tier.steps(), n, now, self.epoch) {
                return Ok((d, slot));
            }
            self.dead(&pinned, &probe, cell);
        }
    }

    /// The key's entry under the limit in force: its slot, the slot's limit and its cell (an
    /// entry under a replaced slot is moved over first). `None` when the key has no entry.
    /// (`decide` does the same inline.)
    #[inline]
    fn entry<'p, Q>(
        &'p self,
        pinned: &'p Pinned<'_, K>,
        probe: &Probe<'_, Q>,
    ) -> Option<(usize, &'p Tier, &'p Cell)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        loop {
            let (slot, cell) = pinned.get(probe)?;
            let tier = self.tier(slot);
            if !tier.is_replaced() {
                return Some((slot, tier, cell));
            }
            self.migrate(pinned, probe, slot, cell);
        }
    }

    /// The tier of a key seen for the first time.
    fn tier_of(&self, key: &K) -> usize {
        match &self.tier_of {
            Some(f) => Some(f(key))
                .filter(|&t| t < self.current.len())
                .unwrap_or(0),
            None => 0,
        }
    }

    /// A call met a dead cell: a tombstone (the bucket is being evicted: help remove it) or a
    /// seal (another call is moving the bucket to a new limit: let it finish). The caller then
    /// looks the key up again.
    #[cold]
    #[inline(never)]
    fn dead<Q>(&self, pinned: &Pinned<'_, K>, probe: &Probe<'_, Q>, cell: &Cell)
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if cell.load() == TOMBSTONE {
            if pinned.remove_tombstoned(probe) {
                self.removed(1);
            }
        } else {
            crate::sync::yield_now();
        }
    }

    /// The key's entry is under a replaced slot: seal its cell (so no call changes it, and
    /// nobody removes it), convert the word through every change since, and put an entry under
    /// the slot in force in its place. Calls on the key meanwhile wait for the replacement.
    #[cold]
    #[inline(never)]
    fn migrate<Q>(&self, pinned: &Pinned<'_, K>, probe: &Probe<'_, Q>, slot: usize, cell: &Cell)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        loop {
            let word = cell.load();
            if state::is_dead(word) {
                return self.dead(pinned, probe, cell);
            }
            if cell.seal(word) {
                // The key's `Clone` (`to_owned`) and `Eq` (in the map) are user code and may
                // panic: until the replacement is in, a panic puts the word back, so the key is
                // not left sealed for good (every later call on it would wait forever).
                let unseal = Unseal { cell, word };
                let (slot, word) = self.follow(slot, word);
                let key = Hashed::new(probe.hash, probe.key.to_owned(), slot as u8);
                pinned.replace(key, Cell::new(word));
                std::mem::forget(unseal);
                return;
            }
        }
    }

    /// A word under slot `slot`, converted through every change since: (slot in force, word).
    /// Pure arithmetic: cannot panic.
    fn follow(&self, mut slot: usize, mut word: u64) -> (usize, u64) {
        loop {
            let old = self.tier(slot);
            // Acquire: as in `Tier::is_replaced`.
            let next = old.replaced_by.load(Ordering::Acquire);
            let Some(&(t, inherit)) = old.change.get().filter(|_| next != 0) else {
                return (slot, word);
            };
            let new = self.tier(next - 1);
            word = state::convert_word(old.steps(), word, t, new.steps(), inherit);
            slot = next - 1;
        }
    }

    /// A miss: maybe sweep the shard, then insert the key's bucket: its slot's untouched bucket
    /// at the step of `now`, already charged with this call's `n` tokens (inserting it
    /// publishes the acquisition, so no CAS follows).
    #[cold]
    fn first_touch<Q>(
        &self,
        shard: &Shard<K>,
        pinned: &Pinned<'_, K>,
        probe: &Probe<'_, Q>,
        n: u64,
        now: u64,
    ) -> Touch
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        // A reading taken now, after the miss (SPEC §3, stale readings). The caller's `now` may
        // be from before a sweep that evicted this key's bucket (the call was preempted between
        // its clock read and its lookup); a fresh bucket at that old step would refill again
        // steps the evicted one had already refilled. The sweep read its clock before its
        // removal, which this miss observed (papaya's removal stores with Release, its lookups
        // load with Acquire; the stand-in map locks), so this reading is at least the sweep's:
        // the new bucket starts at or after the step from which the evicted one was full, where
        // the two are the same. The call is then decided at this later reading, as a
        // never-evicting limiter would decide a call that read the clock now.
        let now = now.max(self.clock.now());
        // The owned key is needed early only to pick a tier; otherwise only to insert.
        let (slot, key) = match self.tier_of {
            None => (self.current_slot(0), None),
            Some(_) => {
                let key = probe.key.to_owned();
                (self.current_slot(self.tier_of(&key)), Some(key))
            }
        };
        let tier = self.tier(slot);
        if n > tier.steps().cap {
            return Touch::TooMany(InsufficientCapacity {
                requested: n,
                capacity: tier.steps().cap,
            });
        }
        // Relaxed (all counters here): they pace sweeps and bound the key count; they publish
        // no memory, and the count's bound is kept by the read-modify-writes themselves.
        let len = pinned.len();
        let due = shard.next_sweep.load(Ordering::Relaxed);
        // Claimed by one caller (the others see `usize::MAX` until the sweep sets the next
        // mark), so a flood of new keys does not sweep one shard many times at once.
        if len >= due
            && !self.swept_in_background(now)
            && shard
                .next_sweep
                .compare_exchange(due, usize::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(shard, pinned, now);
        }
        let capped = self.max_keys != usize::MAX;
        if capped && !self.reserve(shard, pinned, now) {
            // The key may have been inserted meanwhile by another thread.
            return pinned
                .get(probe)
                .map_or(Touch::Full(slot), |_| Touch::Existing);
        }
        let k = tier.steps().step_index(now.saturating_sub(self.epoch));
        let fresh = tier.fresh_word(k);
        let out = state::step(tier.steps(), fresh, k, n);
        // A slot index is below `MAX_SLOTS`: it fits the 8 tier bits.
        let key = key.unwrap_or_else(|| probe.key.to_owned());
        let stored = Hashed::new(probe.hash, key, slot as u8);
        match pinned.try_insert_with(stored, || Cell::new(out.write.unwrap_or(fresh))) {
            Ok(_) => {
                if (len + 1).is_multiple_of(FLUSH_EVERY) {
                    // Growing: let old tables from finished resizes be freed promptly.
                    pinned.flush();
                }
                Touch::Inserted(Decision::new(tier.steps(), &out, n, now, self.epoch), slot)
            }
            Err(_) => {
                if capped {
                    self.keys.fetch_sub(1, Ordering::Relaxed);
                }
                Touch::Existing
            }
        }
    }

    /// Reserves room for one more key under the cap. At the cap the key's shard is swept first
    /// when an eighth of its size in refused keys, or a quarter of `idle_ttl`, has gone by since
    /// its last sweep (amortized O(1) per attempt under a flood).
    fn reserve(&self, shard: &Shard<K>, pinned: &Pinned<'_, K>, now: u64) -> bool {
        if self.count_key() {
            return true;
        }
        let misses = shard.misses.fetch_add(1, Ordering::Relaxed) + 1;
        let every = (pinned.len() / 8).max(MIN_SWEEP_EVERY);
        let since = shard.swept_at.load(Ordering::Relaxed);
        let k = self.step_now(now);
        if misses < every && k < since.saturating_add(self.first[0].idle_steps / 4 + 1) {
            return false;
        }
        self.sweep(shard, pinned, now);
        self.count_key()
    }

    /// Counts one more key if the cap allows it.
    fn count_key(&self) -> bool {
        // Relaxed: as in `first_touch`.
        if self.keys.fetch_add(1, Ordering::Relaxed) < self.max_keys {
            return true;
        }
        self.keys.fetch_sub(1, Ordering::Relaxed);
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

    /// The step of clock reading `now` in tier 0's first limit (sweep pacing's).
    fn step_now(&self, now: u64) -> u64 {
        self.first[0]
            .steps()
            .step_index(now.saturating_sub(self.epoch))
    }

    /// The answer for a new key under slot `slot` at the key cap.
    #[cold]
    fn at_capacity(&self, slot: usize, n: u64, now: u64) -> Decision {
        if self.at_capacity == AtCapacity::Overflow {
            if let Ok(d) = self.overflow.take_at(n, now) {
                return d;
            }
        }
        // Deny (or more than the overflow bucket holds): as from an empty bucket of the key's
        // own limit.
        let steps = self.tier(slot).steps();
        let k = steps.step_index(now.saturating_sub(self.epoch));
        let out = state::step(steps, steps.empty(k), k, n.min(steps.cap));
        Decision::new(steps, &out, n, now, self.epoch)
    }

    /// Sweeps one shard at clock reading `now`; returns how many buckets it evicted.
    #[cold]
    fn sweep(&self, shard: &Shard<K>, pinned: &Pinned<'_, K>, now: u64) -> usize {
        let t = now.saturating_sub(self.epoch);
        // The step of `now` under the last slot seen (entries of one slot are the common case).
        let mut step_of = (usize::MAX, 0);
        let removed = pinned.sweep(|slot, cell| {
            let word = cell.load();
            if state::is_dead(word) {
                return false;
            }
            // Judged under the limit in force (an entry under a replaced slot is converted).
            let (slot, now_word) = self.follow(slot, word);
            let tier = self.tier(slot);
            if step_of.0 != slot {
                step_of = (slot, tier.steps().step_index(t));
            }
            tier.is_evictable(now_word, step_of.1) && cell.tombstone(word)
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
        self.update_key(key, 0, None, state::add)
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
        self.update_key(key, n, None, state::add)
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
        self.update_key(key, n, None, state::add)
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
        self.update_key(key, 0, None, |s, w, k, _| state::reset(s, w, k))
    }

    /// Applies `op` to `key`'s bucket. `op` never empties a bucket (it adds or fills), so a key
    /// without a bucket (or one being evicted) whose untouched bucket is full is full before
    /// and after: the answer is computed on a full word and nothing is inserted. (Only after a
    /// change that raised the capacity with [`Inherit::Keep`] is an untouched bucket not full
    /// for a while; then the key's bucket is created first, by an exact peek.) With `only`,
    /// `op` gets `n` only for an entry under that slot, and 0 otherwise.
    fn update_key<Q>(
        &self,
        key: &Q,
        n: u64,
        only: Option<usize>,
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
        let mut inserted = false;
        loop {
            if let Some((slot, tier, cell)) = self.entry(&pinned, &probe) {
                let n = if only.is_none_or(|s| s == slot) { n } else { 0 };
                if let Some(d) = cell.update(tier.steps(), now, self.epoch, n, op) {
                    return d;
                }
                self.dead(&pinned, &probe, cell);
                continue;
            }
            let tier = self.tier(self.current_slot(self.tier_of(&key.to_owned())));
            let k = tier.steps().step_index(now.saturating_sub(self.epoch));
            let (tokens, _) = tier.fresh(k);
            if tokens == tier.steps().cap || inserted {
                let out = op(tier.steps(), tier.fresh_word(k), k, n);
                return Decision::new(tier.steps(), &out, 0, now, self.epoch);
            }
            // Not full: the change must be recorded, so create the bucket (an exact peek) and
            // go again. At the key cap nothing is created and the answer is computed as above.
            inserted = true;
            let _ = self.first_touch(shard, &pinned, &probe, 0, now);
        }
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
        let removed = self
            .shards
            .iter()
            .map(|shard| self.sweep(shard, &shard.map.pin(), now))
            .sum();
        // Relaxed: pacing only (see `swept_in_background`).
        self.evicted_at
            .store(self.clock.now().saturating_add(1), Ordering::Relaxed);
        removed
    }

    /// [`evict_idle`](KeyedLimiter::evict_idle) unless a full pass ended less than half an
    /// [`eviction_period`](KeyedLimiter::eviction_period) ago (several layers, or a layer and
    /// [`spawn_evictor`](KeyedLimiter::spawn_evictor), sharing one limiter then make one pass
    /// per period between them, not one each). Returns how many buckets it evicted.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn evict_idle_if_due(&self) -> usize {
        // Relaxed: pacing only.
        let at = self.evicted_at.load(Ordering::Relaxed);
        let half = u64::try_from(self.eviction_period().as_nanos() / 2).unwrap_or(u64::MAX);
        if at != 0 && self.clock.now().saturating_add(1).saturating_sub(at) < half {
            return 0;
        }
        self.evict_idle()
    }

    /// How often a background evictor should call [`evict_idle`](KeyedLimiter::evict_idle):
    /// half the `idle_ttl`, between 10 ms and 10 s. The HTTP layer runs one at this period.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_second(5)?)
    ///     .idle_ttl(Duration::from_secs(4))
    ///     .build();
    /// assert_eq!(limiter.eviction_period(), Duration::from_secs(2));
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn eviction_period(&self) -> Duration {
        (self.idle_ttl / 2).clamp(Duration::from_millis(10), Duration::from_secs(10))
    }

    /// Whether full passes ([`evict_idle`](KeyedLimiter::evict_idle)) have come recently enough
    /// (within two periods) that a new key need not sweep its shard on the request path: a
    /// background evictor is keeping memory bounded. When the passes stop, sweeps on new keys
    /// resume.
    fn swept_in_background(&self, now: u64) -> bool {
        // Relaxed: pacing only.
        let at = self.evicted_at.load(Ordering::Relaxed);
        let window = u64::try_from(self.eviction_period().as_nanos() * 2).unwrap_or(u64::MAX);
        at != 0 && now.saturating_add(1).saturating_sub(at) <= window
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

    /// The idle time after which a full bucket may be evicted.
    pub fn idle_ttl(&self) -> Duration {
        self.idle_ttl
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }
}

/// Size.
impl<K: Hash + Eq, S> KeyedLimiter<K, S> {
    /// The number of keys held (buckets in the maps).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.map.pin().len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Limits, and their live changes.
impl<K, S> KeyedLimiter<K, S> {
    /// Slot `i` (a tier's limit, or one a change gave it).
    #[inline(always)]
    fn tier(&self, i: usize) -> &Tier {
        match self.first.get(i) {
            Some(tier) => tier,
            None => self.later_tier(i),
        }
    }

    /// Slot `i` beyond the tiers (added by a change): after a change, every call on a key of
    /// that tier comes here, so it is not cold; kept out of line so the path of a limiter
    /// never changed stays small.
    #[inline(never)]
    fn later_tier(&self, i: usize) -> &Tier {
        self.later
            .get()
            .and_then(|later| later.get(i - self.first.len()))
            .and_then(OnceLock::get)
            .expect("a slot is published before an entry or a tier names it")
    }

    /// The slot in force for tier `tier`.
    #[inline]
    fn current_slot(&self, tier: usize) -> usize {
        // Acquire: pairs with the Release in `set_tier_limit`, so the slot is seen.
        self.current[tier].load(Ordering::Acquire)
    }

    /// The limit of tier 0 (every key's, without tiers) now.
    pub fn limit(&self) -> &Limit {
        &self.tier(self.current_slot(0)).limit
    }

    /// The limit of tier `tier` now; `None` when there is no such tier.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u32> = KeyedLimiter::builder(Limit::per_second(1)?)
    ///     .tiers([Limit::per_second(100)?], |id: &u32| usize::from(*id >= 1_000))
    ///     .build();
    /// assert_eq!(limiter.tier_limit(1).unwrap().capacity(), 100);
    /// assert!(limiter.tier_limit(2).is_none());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn tier_limit(&self, tier: usize) -> Option<&Limit> {
        (tier < self.current.len()).then(|| &self.tier(self.current_slot(tier)).limit)
    }

    /// Replaces tier 0's limit (every key's, without tiers) while calls go on; see
    /// [`set_tier_limit`](KeyedLimiter::set_tier_limit).
    ///
    /// ```
    /// use tollgate::{Inherit, KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_minute(10)?);
    /// limiter.try_acquire_key("alice", 4).unwrap(); // 6 left of 10
    /// limiter.set_limit(Limit::per_minute(100)?, Inherit::Proportional).unwrap();
    /// assert_eq!(limiter.snapshot_key("alice").remaining(), 60);
    /// assert_eq!(limiter.snapshot_key("bob").remaining(), 100); // untouched: full
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`TooManyReconfigurations`] when the limiter already holds its 256 limits (its tiers
    /// plus every change so far); nothing changes.
    pub fn set_limit(&self, limit: Limit, inherit: Inherit) -> Result<(), TooManyReconfigurations> {
        self.set_tier_limit(0, limit, inherit)
            .map_err(|_| TooManyReconfigurations)
    }

    /// Replaces tier `tier`'s limit while calls go on, atomically per key: every call on a key
    /// is decided wholly under the old limit or wholly under the new one, and each bucket's
    /// tokens carry over as `inherit` says, as if [`TokenBucket::set_limit`] had been called on
    /// every bucket of the tier at once. Refills under the new limit count from the step of
    /// this call.
    ///
    /// The work is lazy and O(1) here: each key's bucket moves to the new limit the next time
    /// a call touches it (or a sweep looks at it), converted as of the change's time; calls on
    /// that one key wait while it moves (a copy of the key and one map insert). The hot path
    /// pays one extra load of a read-mostly flag. Eviction stays invisible: a key
    /// seen for the first time after the change gets what the change made of an untouched
    /// bucket. That is a full bucket, except after raising the capacity with
    /// [`Inherit::Keep`]: then an untouched bucket keeps the old capacity's tokens and refills
    /// from there, exactly like a bucket that was full at the change.
    ///
    /// Setting the limit already in force with [`Inherit::Keep`] or [`Inherit::Proportional`]
    /// changes nothing and does not count. Otherwise each change takes one of the limiter's 256
    /// limit slots (its tiers take the first ones) for the limiter's life: replaced limits are
    /// kept (at most 256 bytes each) because entries may still name them. The HTTP layer's
    /// `RateLimit-Policy` follows: each response describes the limit its decision was made
    /// under.
    ///
    /// ```
    /// use tollgate::{Inherit, KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u32> = KeyedLimiter::builder(Limit::per_minute(10)?)
    ///     .tiers([Limit::per_minute(100)?], |id: &u32| usize::from(*id >= 1_000))
    ///     .build();
    /// limiter.try_acquire_key(&1_001, 30).unwrap(); // a pro key: 70 left of 100
    /// limiter.set_tier_limit(1, Limit::per_minute(50)?, Inherit::Keep).unwrap();
    /// assert_eq!(limiter.snapshot_key(&1_001).remaining(), 50); // capped at the new capacity
    /// assert_eq!(limiter.snapshot_key(&1).remaining(), 10); // tier 0 unchanged
    /// assert!(limiter.set_tier_limit(2, Limit::per_minute(1)?, Inherit::Keep).is_err());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`SetLimitError::UnknownTier`] for a tier the limiter does not have;
    /// [`SetLimitError::TooManyReconfigurations`] when it already holds its 256 limits. Nothing
    /// changes either way.
    pub fn set_tier_limit(
        &self,
        tier: usize,
        limit: Limit,
        inherit: Inherit,
    ) -> Result<(), SetLimitError> {
        if tier >= self.current.len() {
            return Err(SetLimitError::UnknownTier {
                tier,
                tiers: self.current.len(),
            });
        }
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let (used, last) = *changes;
        let slot = self.current_slot(tier);
        let old = self.tier(slot);
        if limit == old.limit && inherit != Inherit::Reset {
            return Ok(());
        }
        if used >= MAX_SLOTS {
            return Err(SetLimitError::TooManyReconfigurations);
        }
        // Changes are ordered in time even if the clock steps back between them.
        let t = self.clock.now().saturating_sub(self.epoch).max(last);
        let (tokens, mark) = old.fresh(old.steps().step_index(t));
        let fresh = state::convert(old.steps(), tokens, mark, t, limit.steps(), inherit);
        let later = self.later.get_or_init(|| {
            (self.first.len()..MAX_SLOTS)
                .map(|_| OnceLock::new())
                .collect()
        });
        let _ = later[used - self.first.len()].set(Box::new(Tier::new(
            limit,
            u64::try_from(self.idle_ttl.as_nanos()).unwrap_or(u64::MAX),
            Some(fresh),
        )));
        let _ = old.change.set((t, inherit));
        // Release: publishes the new slot and the change with the mark; a call that sees the
        // mark moves its key's bucket over.
        old.replaced_by.store(used + 1, Ordering::Release);
        // Release: new keys of this tier go to the new slot; pairs with `current_slot`.
        self.current[tier].store(used, Ordering::Release);
        *changes = (used + 1, t);
        if tier == 0 {
            // At most 255 changes reach tier 0: the overflow bucket's own bound holds.
            let _ = self.overflow.set_limit(limit, inherit);
        }
        Ok(())
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
            .field("limit", self.limit())
            .field("tiers", &self.current.len())
            .field("keys", &self.len())
            .field("shards", &self.shards.len())
            .field("idle_ttl", &self.idle_ttl)
            .field("clock", &self.clock)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    /// The size `set_tier_limit`'s docs give for a replaced limit.
    #[test]
    fn a_replaced_limit_costs_at_most_256_bytes() {
        assert!(std::mem::size_of::<super::Tier>() <= 256);
    }
}
