//! The append-only list of the limits a [`TokenBucket`](crate::TokenBucket) has been under: the
//! one it was built with, then one per live limit change. (A keyed limiter frees the limits no
//! key uses any more; see `keyed/slots.rs`.) An entry, once published, lives as long as its
//! owner, because a call (or a stored key) may still name it; so a change never frees anything,
//! and the list holds at most [`MAX_LIMITS`] entries.

use crate::sync::OnceLock;

/// How many limits one bucket can ever hold: the one it was built with plus every change.
pub(crate) const MAX_LIMITS: usize = 256;

/// The list: `first` inline (an array of one for a bucket, the tiers for a keyed limiter), the
/// later entries in a table allocated at the first change.
pub(crate) struct Limits<T, F = Box<[T]>> {
    first: F,
    later: OnceLock<Box<[OnceLock<Box<T>>]>>,
}

impl<T, F: AsRef<[T]>> Limits<T, F> {
    /// A list of the `first` entries (at least one, at most [`MAX_LIMITS`]).
    pub(crate) fn new(first: F) -> Self {
        debug_assert!((1..=MAX_LIMITS).contains(&first.as_ref().len()));
        Limits {
            first,
            later: OnceLock::new(),
        }
    }

    /// How many entries the list was built with.
    pub(crate) fn first_len(&self) -> usize {
        self.first.as_ref().len()
    }

    /// Entry `i`, which the caller saw published (through its own Acquire load of an index
    /// stored with Release after [`set`](Limits::set)).
    #[inline(always)]
    pub(crate) fn get(&self, i: usize) -> &T {
        match self.first.as_ref().get(i) {
            Some(entry) => entry,
            None => self.later(i),
        }
    }

    /// Entry `i` beyond the first ones: after a change every call comes here, so it is not
    /// cold; kept out of line so the path of an owner never changed stays small.
    #[inline(never)]
    fn later(&self, i: usize) -> &T {
        self.later
            .get()
            .and_then(|later| later.get(i - self.first_len()))
            .and_then(OnceLock::get)
            .expect("an entry is published before an index names it")
    }

    /// Allocates the table of later entries, if not yet done (a change calls this before it
    /// stops calls, so they wait for less).
    pub(crate) fn grow(&self) {
        self.later.get_or_init(|| {
            (self.first_len()..MAX_LIMITS)
                .map(|_| OnceLock::new())
                .collect()
        });
    }

    /// Stores entry `i` (the next one: callers serialize their changes and count them), or
    /// gives `entry` back when the list is full. Readers learn of it only through the index
    /// the caller publishes afterwards.
    pub(crate) fn set(&self, i: usize, entry: Box<T>) -> Result<(), Box<T>> {
        let Some(at) = i.checked_sub(self.first_len()).filter(|_| i < MAX_LIMITS) else {
            return Err(entry);
        };
        self.grow();
        self.later.get().expect("grown above")[at].set(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_and_the_list_stops_at_its_bound() {
        let list: Limits<usize, [usize; 1]> = Limits::new([7]);
        assert_eq!(*list.get(0), 7);
        for i in 1..MAX_LIMITS {
            assert_eq!(list.set(i, Box::new(i * 10)), Ok(()));
            assert_eq!(*list.get(i), i * 10);
        }
        assert_eq!(list.set(MAX_LIMITS, Box::new(1)), Err(Box::new(1)), "full");
        assert_eq!(list.set(3, Box::new(1)), Err(Box::new(1)), "set once");
        assert_eq!(list.set(0, Box::new(1)), Err(Box::new(1)), "fixed");
        let tiers: Limits<u8> = Limits::new(vec![1, 2, 3].into_boxed_slice());
        assert_eq!((tiers.first_len(), *tiers.get(2)), (3, 3));
        assert_eq!(tiers.set(3, Box::new(4)), Ok(()));
        assert_eq!(*tiers.get(3), 4);
    }
}
