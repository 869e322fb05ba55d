//! The local denial cache of a [`RedisLimiter`](super::RedisLimiter): after Redis denies a key
//! until some time, deny it here without a round trip until then. The wait counts refills; a
//! refund, cancel or returned lease from another call is not seen, so a cached denial may
//! outlast the real one (it only ever denies).
//!
//! Time is the server's, advanced by this process's monotonic clock, so it is exact to the
//! reply's transit time (the estimate lags the server by it: a cached denial may outlast the
//! server's by that much), whatever the client's wall clock says.
//!
//! Bounded in entries and bytes, and cheap under a flood of fresh keys: 16 shards by key hash,
//! each its own lock; an entry is a 64-bit hash of the key (foldhash, seeded per limiter, so
//! nobody can make two keys collide on purpose; an accidental collision across 2^64 is a
//! wrong local denial that ends at its `until`) and a fixed-size record; each shard keeps its
//! entries in expiry order too, so making room is O(log n): expired entries first, then the
//! one that expires soonest.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

/// A denial Redis made: the state it reported, until when it holds, for how many tokens. Times
/// are the server's ([contract §4](crate::contract::redis): client clocks do not matter): the server's time of the denial,
/// advanced by this process's monotonic clock since.
#[derive(Clone, Copy, Debug)]
pub(super) struct Denied {
    pub(super) tokens: u64,
    pub(super) mark: u64,
    /// Server time (Unix ns) of the denial, and when this process received it.
    pub(super) server_ns: u64,
    pub(super) seen: Instant,
    /// Server time (Unix ns) at which the requested tokens are there.
    pub(super) until: u64,
    pub(super) n: u64,
    /// Which of the key's limits denied (0: its tier's), under which table of limits (a
    /// denial made under limits since replaced is not answered from here).
    pub(super) which: usize,
    pub(super) generation: u64,
}

impl Denied {
    /// The server's time now, as this process can tell without asking it.
    pub(super) fn server_now_ns(&self) -> u64 {
        let elapsed = u64::try_from(self.seen.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.server_ns.saturating_add(elapsed)
    }
}

const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Denied>,
    /// (until, key hash) of every entry, soonest first; an entry replaced since leaves a stale
    /// pair here, skipped when met and dropped when the heap is rebuilt.
    by_expiry: BinaryHeap<Reverse<(u64, u64)>>,
}

impl Shard {
    /// Removes expired entries, then, while the shard is at `cap`, the one that expires
    /// soonest. Returns how many heap entries it looked at (for the cost test).
    fn make_room(&mut self, now: u64, cap: usize) -> usize {
        let mut visited = 0;
        while let Some(&Reverse((until, hash))) = self.by_expiry.peek() {
            let live = self.map.get(&hash).is_some_and(|d| d.until == until);
            if live && until > now && self.map.len() < cap {
                break;
            }
            visited += 1;
            self.by_expiry.pop();
            if live {
                self.map.remove(&hash);
            }
        }
        visited
    }

    /// Stale pairs from replaced entries: rebuilds the heap when they outnumber the live
    /// ones, so it stays within twice the map plus a little (amortized O(1) per insert).
    /// Returns the entries looked at.
    fn compact(&mut self) -> usize {
        if self.by_expiry.len() <= 2 * self.map.len() + 16 {
            return 0;
        }
        let visited = self.by_expiry.len();
        self.by_expiry = self
            .map
            .iter()
            .map(|(&h, d)| Reverse((d.until, h)))
            .collect();
        visited
    }
}

/// See the module docs.
pub(super) struct DenialCache {
    cap_per_shard: usize,
    hasher: foldhash::fast::RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl DenialCache {
    /// A cache of at most `cap` keys (at least one per shard).
    pub(super) fn new(cap: usize) -> DenialCache {
        DenialCache {
            cap_per_shard: cap.div_ceil(SHARDS).max(1),
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: &[u8]) -> (u64, &Mutex<Shard>) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[(hash >> 60) as usize % SHARDS])
    }

    /// The denial held for `key`, if it has not expired (an expired one is dropped).
    pub(super) fn get(&self, key: &[u8]) -> Option<Denied> {
        let (hash, shard) = self.shard(key);
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let denied = *shard.map.get(&hash)?;
        if denied.server_now_ns() >= denied.until {
            shard.map.remove(&hash);
            return None;
        }
        Some(denied)
    }

    /// Holds `denied` for `key` (server time now: `now`). Returns the heap entries looked at.
    pub(super) fn insert(&self, key: &[u8], denied: Denied, now: u64) -> usize {
        let (hash, shard) = self.shard(key);
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let visited = if shard.map.contains_key(&hash) {
            0
        } else {
            shard.make_room(now, self.cap_per_shard)
        };
        shard.map.insert(hash, denied);
        shard.by_expiry.push(Reverse((denied.until, hash)));
        visited + shard.compact()
    }

    /// Keys held now (all shards).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(until: u64) -> Denied {
        Denied {
            tokens: 0,
            mark: 0,
            server_ns: 0,
            seen: Instant::now(),
            until,
            n: 1,
            which: 0,
            generation: 0,
        }
    }

    /// Issue 19, item 3: at the cap, with every entry live, a flood of fresh denials does a
    /// bounded amount of work per insert (before: a `retain` over the whole map under the one
    /// lock, per insert), and the cache stays at its cap.
    #[test]
    fn a_flood_at_the_cap_does_bounded_work_per_insert() {
        let cache = DenialCache::new(1_000);
        let forever = u64::MAX / 2;
        let mut visited = 0;
        for i in 0..10_000u64 {
            visited += cache.insert(&i.to_le_bytes(), denial(forever - i), 0);
        }
        assert!(cache.len() <= 1_000 + SHARDS, "len {}", cache.len());
        // One eviction per insert at the cap, plus heap rebuilds amortized: a few per insert.
        assert!(
            visited <= 4 * 10_000,
            "{visited} entries visited for 10,000 inserts"
        );
    }

    #[test]
    fn expired_entries_go_first_and_replacements_stay_bounded() {
        let cache = DenialCache::new(SHARDS * 4);
        // The same key denied again and again: one entry, and the heap does not grow for ever.
        for until in 0..10_000u64 {
            cache.insert(b"hot", denial(1_000_000 + until), 0);
        }
        assert_eq!(cache.len(), 1);
        let heap: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap().by_expiry.len())
            .sum();
        assert!(heap <= 2 + 16 + 1, "heap {heap}");
        // A live entry is answered; an expired one is not, and goes.
        cache.insert(b"live", denial(u64::MAX), 0);
        assert!(cache.get(b"live").is_some());
        cache.insert(b"gone", denial(1), 0);
        assert!(cache.get(b"gone").is_none());
    }
}
