//! Per-key limits: one bucket per key in sharded concurrent maps, with invisible idle eviction
//! and bounded memory ([the keyed contract](crate::contract::keyed)).
//!
//! # Protocol
//!
//! - Hit (`hit.rs`): hash the key once, pick the shard from the hash, `get` under a pinned guard,
//!   then the bucket's own CAS loop on the cell in place. No allocation, no map write.
//! - First touch (`first_touch.rs`): `try_insert_with` the slot's untouched bucket (full, but for a
//!   `Keep` raise) at the step of a clock reading taken after the miss (never the caller's earlier,
//!   possibly stale one: its key may have been evicted since, and a bucket recreated at the old
//!   step would refill those steps twice), already charged; racing first touches create one bucket
//!   (the losers look the key up again).
//! - Eviction (`sweep.rs`): a bucket is removed only when it is full and the same as its slot's
//!   untouched bucket as of `idle_steps` ago (`Slot::is_evictable` in `slots.rs`).
//!   The evictor first swaps the word to the tombstone with a CAS from the word it checked (so no
//!   acquire landed in between), then removes the entry. An acquire that meets a tombstone helps
//!   remove it and looks the key up again. Because all buckets share one epoch, a full bucket and a
//!   fresh one decide identically: eviction is invisible as long as the clock never steps back by
//!   more than `idle_ttl`.
//! - Memory (`sweep.rs`, the key cap in `first_touch.rs`): a new key that finds its shard at twice
//!   the size its last sweep left sweeps the shard first. The work is amortized O(1) per new key
//!   and never more than one shard (a `1/shards` slice of the map) at a time. At the key cap a
//!   shard is swept after an eighth of its size in refused keys, or when a quarter of `idle_ttl`
//!   has passed since its last sweep, before the [`AtCapacity`] policy applies.
//! - Limit changes (`slots.rs`, the move of a key in `migrate.rs`): every limit a key can be under
//!   is a *slot*; each entry holds its slot (an `Arc`, beside its cell), each tier points at the
//!   slot in force. A change creates a slot, links it from the old one with its time and policy
//!   (a `OnceLock`: the set is Release, every read Acquire), then points the tier at the new
//!   slot. A replaced slot is freed when the last entry (or call) holding it lets go, so changes
//!   never run out: the slots alive are those of the changes since the oldest bucket not yet
//!   moved, and idle buckets full at a change are evicted by the next sweep. A call that finds its key under a replaced
//!   slot seals the word (CAS to [`SEALED`](crate::steps::SEALED), distinct from the tombstone, so
//!   no helper removes the entry), converts it through every change since
//!   ([`convert`](crate::state::convert)) and replaces the entry; calls meeting the seal wait for
//!   the replacement. A call that raced the change onto the old slot is ordered before it: the
//!   conversion then applies from that call's step. The seal is the one place a call waits for
//!   another: calls on that one key yield until the migrating call has copied the key and replaced
//!   the entry (a clone and one map insert; longer only if that thread is descheduled meanwhile,
//!   until it runs again). A panic in the key's `Clone` or `Eq` during the move puts the word back
//!   (the key is never left sealed). Each slot also holds its untouched bucket (what the changes
//!   made of a bucket no call touched), which is what a first touch gets and what eviction compares
//!   with, so eviction stays invisible across changes.

mod builder;
mod evictor;
mod first_touch;
mod hasher;
mod hit;
mod map;
mod migrate;
mod reserve;
mod slots;
mod sweep;
mod update;

use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use crossbeam_utils::CachePadded;

pub use builder::{KeyedLimiterBuilder, MAX_PRESIZE};
pub use evictor::Evictor;
pub use first_touch::AtCapacity;
pub use hasher::{KeyHashState, KeyHasher};
pub use reserve::KeyedReservation;
pub use slots::SetLimitError;

use crate::bucket::TokenBucket;
use crate::clock::AnyClock;
use crate::steps::Steps;
use crate::sync::{ArcCell, AtomicU64, AtomicUsize, Mutex};
use map::ShardMap;
use slots::Slot;

struct Shard<K> {
    map: ShardMap<K>,
    /// The map's size at which a new key sweeps the shard: twice what the last sweep left.
    next_sweep: AtomicUsize,
    /// New-key attempts refused at the key cap since the last sweep.
    misses: AtomicUsize,
    /// Step of the last sweep.
    swept_at: AtomicU64,
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
    /// The slot in force for each tier (tier 0: the builder's limit, then the tiers'). A
    /// replaced slot lives on while an entry holds it.
    current: Box<[ArcCell<Slot>]>,
    /// Serializes limit changes; holds the next slot id and the time of the last change.
    changes: Mutex<(u32, u64)>,
    /// Tier 0's first limit's steps, and its idle steps: the pace of sweeps (never changes).
    pace: Steps,
    pace_idle_steps: u64,
    tier_of: Option<TierFn<K>>,
    clock: AnyClock,
    epoch: u64,
    max_keys: usize,
    at_capacity: AtCapacity,
    /// The shared bucket of new keys at the key cap; follows tier 0's limit.
    overflow: ArcCell<TokenBucket<AnyClock>>,
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

/// Picks a key's tier (an index into the limits) when the key is first seen.
type TierFn<K> = std::sync::Arc<dyn Fn(&K) -> usize + Send + Sync>;

impl<K: Hash + Eq, S: BuildHasher> KeyedLimiter<K, S> {
    /// The tier of a key seen for the first time.
    fn tier_of(&self, key: &K) -> usize {
        match &self.tier_of {
            Some(f) => Some(f(key))
                .filter(|&t| t < self.current.len())
                .unwrap_or(0),
            None => 0,
        }
    }

    /// The key's hash (computed once per call) and its shard, picked by bits 32.. of the hash
    /// (papaya indexes its table with the low bits and tags with the top 7).
    #[inline(always)]
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> (u64, &Shard<K>) {
        let hash = self.hasher.hash_one(key);
        (
            hash,
            &self.shards[((hash >> 32) & self.shard_mask) as usize],
        )
    }

    /// What this limiter decided so far, when built with
    /// [`stats(true)`](KeyedLimiterBuilder::stats); `None` otherwise.
    ///
    /// ```
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: KeyedLimiter<u32> = KeyedLimiter::builder(Limit::per_hour(1)?).stats(true).build();
    /// let _ = limiter.check_key(&1);
    /// let _ = limiter.check_key(&1);
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

impl<K: Hash + Eq, S> std::fmt::Debug for KeyedLimiter<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("limit", &self.limit())
            .field("tiers", &self.current.len())
            .field("keys", &self.len())
            .field("shards", &self.shards.len())
            .field("idle_ttl", &self.idle_ttl)
            .field("clock", &self.clock)
            .finish()
    }
}
