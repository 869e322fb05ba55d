//! The per-shard map behind the keyed limiter, and its interface.
//!
//! In builds it is a papaya map; under `--cfg loom` a small mutex-and-vector stand-in whose every
//! step loom can see (loom cannot see inside papaya). Both offer the same five operations, which
//! are all the keyed limiter's protocol uses: `get`, `try_insert_with`, `replace`,
//! `remove_tombstoned` and `sweep`.
//!
//! Keys are stored with their hash ([`Hashed`]) and looked up with a [`Probe`], so a key is
//! hashed once per call, by the limiter, and never again by the map.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

pub(crate) use papaya::Equivalent;

use super::slots::Slot;
use crate::cell::Cell;

/// A stored key and its hash.
#[derive(Debug)]
pub(crate) struct Hashed<K> {
    pub(crate) hash: u64,
    pub(crate) key: K,
}

impl<K> Hashed<K> {
    /// A stored key with hash `hash`.
    pub(crate) fn new(hash: u64, key: K) -> Hashed<K> {
        Hashed { hash, key }
    }
}

/// A key's entry: its bucket's cell, and the slot (limit) the bucket is under, held for as
/// long as the entry is.
pub(crate) struct Entry {
    pub(crate) cell: Cell,
    pub(crate) slot: Arc<Slot>,
}

impl<K: Eq> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Hashed<K> {}

impl<K> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A borrowed key and its hash, for lookups without an owned key.
pub(crate) struct Probe<'a, Q: ?Sized> {
    pub(crate) hash: u64,
    pub(crate) key: &'a Q,
}

impl<Q: ?Sized> Hash for Probe<'_, Q> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<Q, K> Equivalent<Hashed<K>> for Probe<'_, Q>
where
    Q: Eq + ?Sized,
    K: Borrow<Q>,
{
    fn equivalent(&self, stored: &Hashed<K>) -> bool {
        self.hash == stored.hash && self.key == stored.key.borrow()
    }
}

#[cfg(not(loom))]
pub(crate) use self::papaya_map::{Pinned, ShardMap};

#[cfg(not(loom))]
mod papaya_map {
    use super::*;
    use std::hash::BuildHasher;

    /// The map's hasher: the hash was computed by the limiter; pass it through.
    #[derive(Clone, Copy, Debug, Default)]
    pub(crate) struct PassThrough;

    /// See [`PassThrough`].
    #[derive(Default)]
    pub(crate) struct PassThroughHasher(u64);

    impl Hasher for PassThroughHasher {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            // Only `write_u64` is ever called (by `Hashed` and `Probe`); fold anything else in so
            // the hasher stays total.
            for &b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(b);
            }
        }
        fn write_u64(&mut self, hash: u64) {
            self.0 = hash;
        }
    }

    impl BuildHasher for PassThrough {
        type Hasher = PassThroughHasher;
        fn build_hasher(&self) -> PassThroughHasher {
            PassThroughHasher(0)
        }
    }
    use crate::steps::TOMBSTONE;

    /// One shard: a papaya map from keys to bucket cells.
    pub(crate) struct ShardMap<K> {
        map: papaya::HashMap<Hashed<K>, Entry, PassThrough>,
    }

    /// A shard pinned for one call: references it returns stay valid until it drops.
    pub(crate) struct Pinned<'m, K> {
        map: &'m papaya::HashMap<Hashed<K>, Entry, PassThrough>,
        guard: papaya::LocalGuard<'m>,
    }

    impl<K: Hash + Eq> ShardMap<K> {
        pub(crate) fn with_capacity(capacity: usize) -> Self {
            ShardMap {
                map: papaya::HashMap::builder()
                    .capacity(capacity)
                    .hasher(PassThrough)
                    .build(),
            }
        }

        #[inline]
        pub(crate) fn pin(&self) -> Pinned<'_, K> {
            Pinned {
                map: &self.map,
                guard: self.map.guard(),
            }
        }
    }

    impl<K: Hash + Eq> Pinned<'_, K> {
        /// The key's entry.
        #[inline]
        pub(crate) fn get<Q>(&self, probe: &Probe<'_, Q>) -> Option<&Entry>
        where
            Q: Eq + ?Sized,
            K: Borrow<Q>,
        {
            self.map.get(probe, &self.guard)
        }

        /// `Ok(new entry)` when this call inserted, `Err(existing)` when the key was there.
        #[inline]
        pub(crate) fn try_insert_with(
            &self,
            key: Hashed<K>,
            make: impl FnOnce() -> Entry,
        ) -> Result<&Entry, &Entry> {
            self.map.try_insert_with(key, make, &self.guard)
        }

        /// Puts `key`'s entry in place of the one there (whose cell the caller sealed, so no
        /// other call replaces or removes it meanwhile).
        pub(crate) fn replace(&self, key: Hashed<K>, entry: Entry) {
            self.map.insert(key, entry, &self.guard);
        }

        /// Removes the key's entry if its cell is a tombstone. True when this call removed it.
        pub(crate) fn remove_tombstoned<Q>(&self, probe: &Probe<'_, Q>) -> bool
        where
            Q: Eq + ?Sized,
            K: Borrow<Q>,
        {
            matches!(
                self.map
                    .remove_if(probe, |_, e| e.cell.load() == TOMBSTONE, &self.guard),
                Ok(Some(_))
            )
        }

        /// Entries in the map.
        #[inline]
        pub(crate) fn len(&self) -> usize {
            self.map.len()
        }

        /// Hands this thread's retired memory (old tables after a resize, removed entries) to
        /// the collector now instead of when a batch fills.
        pub(crate) fn flush(&self) {
            papaya::Guard::flush(&self.guard);
        }

        /// Visits every entry; where `kill` tombstones the cell (returns true), removes the
        /// entry. `kill` gets the entry's key too. Returns how many entries this call removed.
        pub(crate) fn sweep(&self, mut kill: impl FnMut(&Probe<'_, K>, &Entry) -> bool) -> usize {
            let mut removed = 0;
            for (key, entry) in self.map.iter(&self.guard) {
                let probe = Probe {
                    hash: key.hash,
                    key: &key.key,
                };
                if kill(&probe, entry) {
                    removed += usize::from(self.remove_tombstoned(&probe));
                }
            }
            removed
        }
    }
}

#[cfg(loom)]
pub(crate) use self::loom_map::{Pinned, ShardMap};

#[cfg(loom)]
mod loom_map {
    use super::*;
    use crate::steps::TOMBSTONE;
    use loom::sync::Mutex;

    /// The loom stand-in: a linearizable map (one mutex) whose cells outlive their removal, as
    /// papaya's do under a guard (here by leaking them: models are small).
    ///
    /// What it cannot expose. Every operation here takes one lock, so all of them are ordered
    /// with each other, on every key. papaya orders less: an operation synchronizes only with
    /// the operation whose write to the same table slot it reads (inserts, replacements and
    /// removals store with Release, lookups load with Acquire), and operations on different
    /// keys do not synchronize at all. The protocol relies on the map only for that per-slot
    /// order: a lookup that finds an entry sees its cell's initial word; a lookup that misses
    /// a removed entry is ordered after the removal (and so after the clock reading of the
    /// sweep that removed it, which is why a first touch reads the clock again after its
    /// miss). Everything shared across keys (the slot in force, replaced slots, the key count,
    /// sweep pacing) is published through the limiter's own atomics from `crate::sync`, which
    /// loom does see. A model in which the map itself is weaker than this lock would need a
    /// model of papaya's slots; it is not here.
    /// A key (shared, so a sweep can hold it while others change the map) and its entry.
    type Stored<K> = (std::sync::Arc<Hashed<K>>, &'static Entry);

    pub(crate) struct ShardMap<K> {
        entries: Mutex<Vec<Stored<K>>>,
    }

    pub(crate) struct Pinned<'m, K> {
        map: &'m ShardMap<K>,
    }

    impl<K: Hash + Eq> ShardMap<K> {
        pub(crate) fn with_capacity(_capacity: usize) -> Self {
            ShardMap {
                entries: Mutex::new(Vec::new()),
            }
        }

        pub(crate) fn pin(&self) -> Pinned<'_, K> {
            Pinned { map: self }
        }
    }

    impl<K: Hash + Eq> Pinned<'_, K> {
        pub(crate) fn get<Q>(&self, probe: &Probe<'_, Q>) -> Option<&Entry>
        where
            Q: Eq + ?Sized,
            K: Borrow<Q>,
        {
            let entries = self.map.entries.lock().unwrap();
            entries
                .iter()
                .find(|(k, _)| probe.equivalent(k))
                .map(|(_, e)| *e)
        }

        pub(crate) fn try_insert_with(
            &self,
            key: Hashed<K>,
            make: impl FnOnce() -> Entry,
        ) -> Result<&Entry, &Entry> {
            let mut entries = self.map.entries.lock().unwrap();
            if let Some((_, e)) = entries.iter().find(|(k, _)| **k == key) {
                return Err(*e);
            }
            let entry: &'static Entry = Box::leak(Box::new(make()));
            entries.push((std::sync::Arc::new(key), entry));
            Ok(entry)
        }

        pub(crate) fn replace(&self, key: Hashed<K>, entry: Entry) {
            let mut entries = self.map.entries.lock().unwrap();
            let cell: &'static Entry = Box::leak(Box::new(entry));
            match entries.iter().position(|(k, _)| **k == key) {
                Some(i) => entries[i].1 = cell,
                None => entries.push((std::sync::Arc::new(key), cell)),
            }
        }

        pub(crate) fn remove_tombstoned<Q>(&self, probe: &Probe<'_, Q>) -> bool
        where
            Q: Eq + ?Sized,
            K: Borrow<Q>,
        {
            let mut entries = self.map.entries.lock().unwrap();
            let at = entries
                .iter()
                .position(|(k, e)| probe.equivalent(k) && e.cell.load() == TOMBSTONE);
            at.map(|i| entries.swap_remove(i)).is_some()
        }

        pub(crate) fn flush(&self) {}

        pub(crate) fn len(&self) -> usize {
            self.map.entries.lock().unwrap().len()
        }

        pub(crate) fn sweep(&self, mut kill: impl FnMut(&Probe<'_, K>, &Entry) -> bool) -> usize {
            // Snapshot, then tombstone and remove one entry at a time, as papaya's iteration
            // lets other calls run in between.
            let cells: Vec<Stored<K>> = {
                let entries = self.map.entries.lock().unwrap();
                entries.iter().map(|(k, e)| (k.clone(), *e)).collect()
            };
            let mut removed = 0;
            for (key, cell) in cells {
                let probe = Probe {
                    hash: key.hash,
                    key: &key.key,
                };
                if kill(&probe, cell) {
                    let mut entries = self.map.entries.lock().unwrap();
                    if let Some(i) = entries
                        .iter()
                        .position(|(_, c)| std::ptr::eq(*c, cell) && c.cell.load() == TOMBSTONE)
                    {
                        entries.swap_remove(i);
                        removed += 1;
                    }
                }
            }
            removed
        }
    }
}
