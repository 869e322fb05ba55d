//! The coarse clock's upkeep word: the time as last stored by an upkeep thread, and the
//! handshake that lets that thread park when nobody reads the clock and wake on the next read.
//!
//! # The word
//!
//! ```text
//!  63                                   2      1        0
//! +--------------------------------------+--------+------+
//! |  time (nanoseconds, < 2^62)          | PARKED | SEEN |
//! +--------------------------------------+--------+------+
//! ```
//!
//! - The upkeep thread stores the precise time every tick (never backwards) and clears `SEEN`.
//! - A reader loads the word. With `SEEN` set and `PARKED` clear (the common case: someone
//!   already read since the last tick) it returns the time: one relaxed load, no write. The
//!   first reader after a tick sets `SEEN` (per tick, one write, or a few when readers on
//!   several cores race to it: never one per call).
//! - A tick that finds `SEEN` clear counts an idle tick. After [`PARK_AFTER`] of them in a row
//!   the thread sets `PARKED` with a compare-and-swap from a word with `SEEN` clear (so a reader
//!   that set `SEEN` meanwhile keeps it awake) and parks: no more wakeups.
//! - A reader that finds `PARKED` (the stored time may be old) reads the precise clock, stores
//!   the later of the two times with `SEEN` set and `PARKED` clear, and, if it was the one to
//!   clear `PARKED`, unparks the thread. It returns the time it stored: never earlier than any
//!   time the word held, so readings never go back. Readers never wait for the thread.
//!
//! Every transition is one read-modify-write of the word, so the time in the word only grows
//! and every reader's answer is a time the word held (or the precise time it stored).

use crate::sync::{AtomicU64, Ordering};

/// Set by the first reader after a tick.
pub(crate) const SEEN: u64 = 1;
/// Set by the upkeep thread when it parks; cleared by the reader that wakes it.
pub(crate) const PARKED: u64 = 2;
const FLAGS: u64 = SEEN | PARKED;
const SHIFT: u32 = 2;
/// The largest time the word holds (2^62 - 1 ns: 146 years after the clock's origin).
const MAX_TIME: u64 = u64::MAX >> SHIFT;

/// Ticks in a row without a reader after which the upkeep thread parks (about one second at
/// the 1 ms tick).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) const PARK_AFTER: u32 = 1_000;

/// The upkeep word (see the module docs).
#[derive(Debug)]
pub(crate) struct Upkeep {
    word: AtomicU64,
}

#[inline(always)]
fn pack(time: u64, flags: u64) -> u64 {
    (time.min(MAX_TIME) << SHIFT) | flags
}

impl Upkeep {
    /// A word holding time `t`, read since (so the thread does not park before a first tick).
    #[cfg(not(loom))]
    pub(crate) const fn new(t: u64) -> Upkeep {
        Upkeep {
            word: AtomicU64::new(((if t < MAX_TIME { t } else { MAX_TIME }) << SHIFT) | SEEN),
        }
    }

    /// A word holding time `t`, read since.
    #[cfg(loom)]
    pub(crate) fn new(t: u64) -> Upkeep {
        Upkeep {
            word: AtomicU64::new(pack(t, SEEN)),
        }
    }

    /// The time, for a reader; `precise` reads the precise clock (on the upkeep's scale) when the
    /// stored time may be old. Returns the time and whether this call woke the parked upkeep
    /// (the caller then unparks the thread).
    #[inline(always)]
    pub(crate) fn read(&self, precise: impl FnOnce() -> u64) -> (u64, bool) {
        // Relaxed: the word is a lone value; no other memory is published through it.
        let w = self.word.load(Ordering::Relaxed);
        if w & FLAGS == SEEN {
            return (w >> SHIFT, false);
        }
        self.read_cold(w, precise)
    }

    #[cold]
    #[inline(never)]
    fn read_cold(&self, w: u64, precise: impl FnOnce() -> u64) -> (u64, bool) {
        if w & PARKED == 0 {
            // Relaxed: as in `read`; the RMW orders this with the thread's park attempt.
            let prev = self.word.fetch_or(SEEN, Ordering::Relaxed);
            if prev & PARKED == 0 {
                return (prev >> SHIFT, false);
            }
        }
        // Parked: the stored time may be old. Store the precise time (never backwards).
        let now = precise();
        let mut prev = self.word.load(Ordering::Relaxed);
        loop {
            let t = (prev >> SHIFT).max(now.min(MAX_TIME));
            // Relaxed: as in `read`.
            match self.word.compare_exchange_weak(
                prev,
                pack(t, SEEN),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (t, prev & PARKED != 0),
                Err(seen) => prev = seen,
            }
        }
    }

    /// One tick of the upkeep thread at precise time `now`: stores it (never backwards) and
    /// clears `SEEN`. Returns whether a reader came since the last tick.
    pub(crate) fn tick(&self, now: u64) -> bool {
        let mut prev = self.word.load(Ordering::Relaxed);
        loop {
            let t = (prev >> SHIFT).max(now.min(MAX_TIME));
            // Relaxed: as in `read`. PARKED is kept as it is (a tick runs only unparked).
            match self.word.compare_exchange_weak(
                prev,
                pack(t, prev & PARKED),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return prev & SEEN != 0,
                Err(seen) => prev = seen,
            }
        }
    }

    /// Sets `PARKED` if no reader came since the last tick; false (stay awake) otherwise.
    pub(crate) fn try_park(&self) -> bool {
        let w = self.word.load(Ordering::Relaxed);
        // Relaxed: as in `read`. From a word with SEEN clear only: a reader's `fetch_or` either
        // comes first (the CAS fails) or sees PARKED and wakes the thread.
        w & FLAGS == 0
            && self
                .word
                .compare_exchange(w, w | PARKED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether the thread is (still) to stay parked.
    pub(crate) fn is_parked(&self) -> bool {
        // Relaxed: as in `read`. After `park` returns because of an `unpark`, the waker's
        // clearing of PARKED is visible (std's park/unpark synchronize).
        self.word.load(Ordering::Relaxed) & PARKED != 0
    }
}

/// The upkeep word for the loom models (`tests/loom.rs`), which drive ticks, parks and reads
/// by hand. Not part of the API.
#[cfg(loom)]
#[doc(hidden)]
#[derive(Debug)]
pub struct LoomUpkeep(Upkeep);

#[cfg(loom)]
impl LoomUpkeep {
    /// A word at time `t`.
    pub fn new(t: u64) -> Self {
        LoomUpkeep(Upkeep::new(t))
    }
    /// A reader's call: (time, whether it woke the parked thread).
    pub fn read(&self, precise: u64) -> (u64, bool) {
        self.0.read(|| precise)
    }
    /// A tick at `now`: whether a reader came since the last one.
    pub fn tick(&self, now: u64) -> bool {
        self.0.tick(now)
    }
    /// The thread's attempt to park.
    pub fn try_park(&self) -> bool {
        self.0.try_park()
    }
    /// Whether the thread is parked.
    pub fn is_parked(&self) -> bool {
        self.0.is_parked()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn readers_see_ticks_without_writing() {
        let u = Upkeep::new(10);
        assert_eq!(u.read(|| unreachable!()), (10, false));
        assert!(u.tick(20), "a reader came since the start");
        let before = u.word.load(Ordering::Relaxed);
        assert_eq!(before & SEEN, 0);
        assert_eq!(u.read(|| unreachable!()), (20, false));
        let after = u.word.load(Ordering::Relaxed);
        assert_eq!(after, before | SEEN, "the first reader sets SEEN");
        assert_eq!(u.read(|| unreachable!()), (20, false));
        assert_eq!(
            u.word.load(Ordering::Relaxed),
            after,
            "later readers write nothing"
        );
        assert!(u.tick(15), "a tick never moves the time back");
        assert_eq!(u.read(|| unreachable!()).0, 20);
    }

    #[test]
    fn parks_only_when_idle_and_wakes_on_a_read() {
        let u = Upkeep::new(0);
        assert!(!u.try_park(), "read since the start");
        assert!(u.tick(5));
        assert!(!u.tick(6), "no reader in this tick");
        assert!(u.try_park());
        assert!(u.is_parked());
        // A reader while parked gets the precise time, never earlier than stored, and wakes.
        assert_eq!(u.read(|| 1_000), (1_000, true));
        assert!(!u.is_parked());
        // A precise clock behind the stored time: the stored time (readings never go back).
        assert!(u.tick(7), "the waking reader counts as a reader");
        assert!(!u.tick(8));
        assert!(u.try_park());
        assert_eq!(u.read(|| 3), (1_000, true));
        // Only the reader that cleared PARKED wakes the thread.
        assert_eq!(u.read(|| unreachable!()), (1_000, false));
    }

    #[test]
    fn a_reader_between_the_idle_tick_and_the_park_keeps_it_awake() {
        let u = Upkeep::new(0);
        assert!(u.tick(1));
        assert!(!u.tick(2)); // idle tick: the thread decides to park...
        assert_eq!(u.read(|| unreachable!()), (2, false)); // ...a reader comes first
        assert!(!u.try_park(), "the reader's SEEN keeps the thread awake");
        assert!(!u.is_parked());
    }

    /// Threads reading while the upkeep ticks, parks and is woken: no reading goes back, and
    /// every park is followed by a wake while readers keep coming.
    #[test]
    fn racing_readers_never_see_time_go_back() {
        use std::sync::atomic::{AtomicBool, AtomicU64 as StdU64};
        use std::sync::Arc;
        let u = Arc::new(Upkeep::new(0));
        let precise = Arc::new(StdU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upkeep = {
            let (u, precise, stop) = (u.clone(), precise.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut parks = 0;
                while !stop.load(Ordering::Relaxed) {
                    let now = precise.fetch_add(3, Ordering::Relaxed);
                    if !u.tick(now) && u.try_park() {
                        parks += 1;
                        while u.is_parked() && !stop.load(Ordering::Relaxed) {
                            std::thread::yield_now();
                        }
                    }
                }
                parks
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (u, precise) = (u.clone(), precise.clone());
                std::thread::spawn(move || {
                    let mut last = 0;
                    for i in 0..100_000u32 {
                        let (t, _) = u.read(|| precise.fetch_add(1, Ordering::Relaxed));
                        assert!(t >= last, "time went back: {t} after {last}");
                        last = t;
                        if i % 1_000 == 0 {
                            // Quiet spells, so the upkeep parks and readers wake it.
                            std::thread::sleep(std::time::Duration::from_micros(200));
                        }
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let parks = upkeep.join().unwrap();
        eprintln!("the upkeep parked {parks} times");
    }
}
