//! Moving a key's bucket to the limit in force after a live change: seal the cell, convert the
//! word through every change since, replace the entry. The one place a call waits for another.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use super::map::{Hashed, Pinned, Probe};
use super::KeyedLimiter;
use crate::cell::Cell;
use crate::state;
use crate::steps;
use crate::sync::Ordering;

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
    pub(super) fn migrate<Q>(
        &self,
        pinned: &Pinned<'_, K>,
        probe: &Probe<'_, Q>,
        slot: usize,
        cell: &Cell,
    ) where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
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
    pub(super) fn follow(&self, mut slot: usize, mut word: u64) -> (usize, u64) {
        loop {
            let old = self.slot(slot);
            // Acquire: as in `Slot::is_replaced`.
            let next = old.replaced_by.load(Ordering::Acquire);
            let Some(&(t, inherit)) = old.change.get().filter(|_| next != 0) else {
                return (slot, word);
            };
            let new = self.slot(next - 1);
            word = state::convert_word(old.steps(), word, t, new.steps(), inherit);
            slot = next - 1;
        }
    }
}
