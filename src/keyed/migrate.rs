//! Moving a key's bucket to the limit in force after a live change: seal the cell, convert the
//! word through every change since, replace the entry. The one place a call waits for another.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use std::sync::Arc;

use super::map::{Entry, Hashed, Pinned, Probe};
use super::slots::Slot;
use super::KeyedLimiter;
use crate::cell::Cell;
use crate::state;
use crate::steps;

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

impl<K: Hash + Eq, S: BuildHasher> KeyedLimiter<K, S> {
    /// The key's entry is under a replaced slot: seal its cell (so no call changes it, and
    /// nobody removes it), convert the word through every change since, and put an entry under
    /// the slot in force in its place. Calls on the key meanwhile wait for the replacement.
    #[cold]
    #[inline(never)]
    pub(super) fn migrate<Q>(&self, pinned: &Pinned<'_, K>, probe: &Probe<'_, Q>, entry: &Entry)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let cell = &entry.cell;
        loop {
            let word = cell.load();
            if steps::is_dead(word) {
                return self.dead(pinned, probe, cell);
            }
            if cell.seal(word) {
                // The key's `Clone` (`to_owned`) and `Eq` (in the map) are user code and may
                // panic: until the replacement is in, a panic puts the word back, so the key is
                // not left sealed for good (every later call on it would wait forever).
                let unseal = Unseal { cell, word };
                let (slot, word) = follow(&entry.slot, word);
                let key = Hashed::new(probe.hash, probe.key.to_owned());
                pinned.replace(
                    key,
                    Entry {
                        cell: Cell::new(word),
                        slot: slot.clone(),
                    },
                );
                std::mem::forget(unseal);
                // The old entry holds its slot, and through it every slot since: hand it to the
                // collector now rather than when a batch fills, so replaced limits are freed
                // promptly (a cold path: once per key per change).
                pinned.flush();
                return;
            }
        }
    }
}

/// A word under `slot`, converted through every change since: (slot in force, word). Pure
/// arithmetic: cannot panic.
pub(super) fn follow(mut slot: &Arc<Slot>, mut word: u64) -> (&Arc<Slot>, u64) {
    while let Some(change) = slot.next.get() {
        word = state::convert_word(
            slot.steps(),
            word,
            change.t,
            change.to.steps(),
            change.inherit,
        );
        slot = &change.to;
    }
    (slot, word)
}
