//! Clocks: where a limiter reads the time.
//!
//! A [`Clock`] gives nanoseconds on a monotonic scale with an arbitrary origin. A limiter reads
//! it once per call and takes its own creation reading as the epoch. Three clocks ship:
//!
//! - [`MonotonicClock`]: precise, quanta's TSC-backed clock (falls back to the OS monotonic
//!   clock when the TSC is not usable).
//! - [`CoarseClock`]: the quanta time as stored every millisecond by one process-wide upkeep
//!   thread. Cheaper to read; it lags by up to the upkeep interval, which only makes
//!   decisions stricter (less refill seen, longer waits reported).
//! - [`ManualClock`]: moved by hand, for tests and simulations.
//!
//! A clock that goes backwards (quanta's TSC can, across cores on some hosts; or
//! [`ManualClock::rewind`]) never panics and never refills: the bucket treats the reading as
//! stale and changes nothing.

use std::any::Any;
use std::sync::Arc;
#[cfg(not(loom))]
use std::sync::OnceLock;
use std::time::Duration;

use crate::sync::{AtomicU64, Ordering};

/// A source of time for limiters.
///
/// `now` returns nanoseconds since an arbitrary, fixed origin. Readings should not decrease,
/// but may (a limiter copes: an earlier reading never refills).
///
/// ```
/// use tollgate::Clock;
///
/// /// A clock that is always at 5 s.
/// struct Frozen;
/// impl Clock for Frozen {
///     fn now(&self) -> u64 {
///         5_000_000_000
///     }
/// }
/// assert_eq!(Frozen.now(), 5_000_000_000);
/// ```
pub trait Clock: Send + Sync {
    /// Nanoseconds since this clock's origin.
    fn now(&self) -> u64;
}

/// The clock used when none is given: [`CoarseClock`].
///
/// Chosen from `cargo bench --bench core` and `cargo bench --bench compare` (measured numbers in
/// the repository's BENCHMARKS.md). A precise read costs several times a load and, because it
/// orders the instructions around it, it also exposes the latency of everything that follows:
/// an allowed call, and a keyed hit, cost about twice as much on the precise clock as on the
/// coarse one. The coarse clock lags real time by
/// up to about a millisecond, which only makes decisions stricter; waits are exact to that
/// resolution (a client that sleeps `retry_after` may need one more millisecond). Use
/// [`MonotonicClock`] for nanosecond-exact waits.
pub type DefaultClock = CoarseClock;

/// The precise clock: quanta's calibrated TSC (or the OS monotonic clock when the TSC cannot be
/// trusted), read on every call.
///
/// ```
/// use tollgate::{Clock, MonotonicClock};
/// let clock = MonotonicClock::new();
/// let a = clock.now();
/// let b = clock.now();
/// assert!(b >= a);
/// ```
#[derive(Clone, Debug)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    origin: u64,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        MonotonicClock { clock, origin }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> u64 {
        // A raw reading below the origin (TSC skew across cores) gives 0: an earlier time.
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// The upkeep interval of the [`CoarseClock`]'s process-wide thread.
pub const COARSE_UPKEEP_INTERVAL: Duration = Duration::from_millis(1);

/// The coarse time and the upkeep handshake (`upkeep.rs`). A std atomic even under loom, where
/// the coarse clock reads the precise time instead (the models drive the handshake by hand).
/// On a cache line of its own, so that writes to neighbouring statics do not slow its readers.
#[cfg(not(loom))]
static COARSE: crossbeam_utils::CachePadded<crate::upkeep::Upkeep> =
    crossbeam_utils::CachePadded::new(crate::upkeep::Upkeep::new(0));

/// The upkeep thread (to unpark it) and its precise clock (whose scale the coarse time is on),
/// once it runs in this process; `None`: it could not be spawned.
#[cfg(not(loom))]
static UPKEEP: OnceLock<Option<(std::thread::Thread, MonotonicClock)>> = OnceLock::new();

/// Starts tollgate's upkeep thread once per process. It stores the precise time every
/// [`COARSE_UPKEEP_INTERVAL`] while the coarse clock is read, parks after about a second
/// without a read (no more wakeups: an idle process pays nothing), and is woken by the next
/// read, which reads the precise time itself meanwhile.
///
/// It does not use quanta's upkeep slot (`quanta::Upkeep::start`, one per process, which answers
/// `UpkeepRunning` to anyone after the first), so another library that needs the slot
/// (governor's `QuantaUpkeepClock`, say) still gets it, and when that library stops its thread,
/// tollgate's coarse time does not freeze.
#[cfg(not(loom))]
fn start_upkeep() -> bool {
    UPKEEP
        .get_or_init(|| {
            let clock = MonotonicClock::new();
            COARSE.tick(clock.now());
            let ticking = clock.clone();
            let handle = std::thread::Builder::new()
                .name("tollgate-upkeep".into())
                .spawn(move || {
                    let mut idle = 0;
                    loop {
                        std::thread::sleep(COARSE_UPKEEP_INTERVAL);
                        if COARSE.tick(ticking.now()) {
                            idle = 0;
                            continue;
                        }
                        idle += 1;
                        if idle >= crate::upkeep::PARK_AFTER && COARSE.try_park() {
                            // Parked until a reader wakes it: the reader that clears PARKED
                            // unparks this thread (its handle is in `UPKEEP` before any
                            // `CoarseClock` exists), and std's park/unpark keep that wakeup even
                            // when it comes first. The long timeout is a safety net only.
                            while COARSE.is_parked() {
                                std::thread::park_timeout(Duration::from_secs(60));
                            }
                            idle = 0;
                        }
                    }
                })
                .ok()?;
            Some((handle.thread().clone(), clock))
        })
        .is_some()
}

#[cfg(loom)]
fn start_upkeep() -> bool {
    false
}

/// A coarse reading: the stored time, or, when the upkeep thread is parked, the precise time
/// (stored for the readers that follow), waking the thread.
#[cfg(not(loom))]
#[inline(always)]
fn coarse_now() -> u64 {
    let (t, woke) = COARSE.read(|| match UPKEEP.get() {
        Some(Some((_, clock))) => clock.now(),
        // Not reached: the coarse path runs only once the upkeep is running.
        _ => 0,
    });
    if woke {
        wake_upkeep();
    }
    t
}

#[cfg(not(loom))]
#[cold]
#[inline(never)]
fn wake_upkeep() {
    if let Some(Some((thread, _))) = UPKEEP.get() {
        thread.unpark();
    }
}

/// The coarse clock: the precise (quanta) time as last stored by one process-wide upkeep thread
/// every [`COARSE_UPKEEP_INTERVAL`]. A read is one relaxed atomic load and a compare; no read
/// writes shared memory, but the first after each tick (one write per millisecond for the whole
/// process, or a few when readers on several cores race to it).
///
/// The first `CoarseClock::new` in a process starts the thread (named `tollgate-upkeep`); later
/// ones share it. After about a second in which nobody reads the clock, the thread parks: an
/// idle process pays nothing for it (measured: `cargo run --release --example idle_clock`). The
/// next read finds it parked, reads the precise clock itself (once), stores
/// that time and wakes the thread; no reading is ever earlier than one handed out before, and
/// no reader waits for the thread. It does not take quanta's one-per-process upkeep slot, so it
/// coexists with another library's quanta upkeep thread (no `UpkeepRunning` conflict either
/// way). When the thread cannot be spawned, the clock reads the precise time instead.
///
/// The coarse time lags real time by at most the upkeep interval (plus scheduling delay): a
/// limiter on this clock sees refills a little late, so its decisions can only be stricter,
/// and its waits are exact to the clock's resolution (about a millisecond).
///
/// | clock | a read | resolution | idle cost |
/// |---|---|---|---|
/// | `CoarseClock` (default) | one load | 1 ms | none after ~1 s (the thread parks) |
/// | the same thread never parking (before 0.1) | one load | 1 ms | 1,000 wakeups a second |
/// | the OS coarse clock (`CLOCK_MONOTONIC_COARSE`, vDSO) | a vDSO call | the kernel tick | none |
/// | [`MonotonicClock`] | a vDSO call and a fence | 1 ns | none |
///
/// Measured costs: `cargo bench --bench clocks` and `cargo run --release --example
/// idle_clock`, with the numbers in BENCHMARKS.md. The default stays a stored time read with one
/// load: it keeps the hot path at its speed and a 1 ms resolution, and parking removes its one
/// cost; the OS coarse clock costs several times more per read at a coarser resolution.
///
/// ```
/// use tollgate::{Clock, CoarseClock};
/// let clock = CoarseClock::new();
/// let a = clock.now();
/// // The upkeep thread moves it about every millisecond.
/// let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
/// while clock.now() == a && std::time::Instant::now() < deadline {
///     std::thread::sleep(std::time::Duration::from_millis(1));
/// }
/// assert!(clock.now() > a);
/// ```
#[derive(Clone, Debug)]
pub struct CoarseClock {
    precise: Option<MonotonicClock>,
}

impl CoarseClock {
    /// A coarse clock; starts the upkeep thread if none runs.
    pub fn new() -> CoarseClock {
        CoarseClock {
            precise: (!start_upkeep()).then(MonotonicClock::new),
        }
    }
}

impl Default for CoarseClock {
    fn default() -> Self {
        CoarseClock::new()
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> u64 {
        match &self.precise {
            #[cfg(not(loom))]
            None => coarse_now(),
            #[cfg(loom)]
            None => unreachable!("under loom the coarse clock reads the precise time"),
            Some(clock) => clock.now(),
        }
    }
}

/// A clock moved by hand. Clones share one time. Starts at 0.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let shared = clock.clone();
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(shared.now(), 2_000_000_000);
/// shared.rewind(Duration::from_secs(5)); // saturates at 0
/// assert_eq!(clock.now(), 0);
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at 0.
    pub fn new() -> ManualClock {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the time forward by `by` (saturating at `u64::MAX` ns).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: the time is a lone value; readers need no other memory ordered with it.
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Moves the time backward by `by` (saturating at 0).
    pub fn rewind(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: as in `advance`.
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(by))
            });
    }

    /// Sets the time to `nanos` since the origin.
    pub fn set(&self, nanos: u64) {
        // Relaxed: as in `advance`.
        self.nanos.store(nanos, Ordering::Relaxed);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> u64 {
        // Relaxed: as in `advance`.
        self.nanos.load(Ordering::Relaxed)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    #[inline]
    fn now(&self) -> u64 {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    #[inline]
    fn now(&self) -> u64 {
        (**self).now()
    }
}

/// Any clock, as one type: the shipped clocks without dynamic dispatch, others boxed. Keeps the
/// keyed limiter's type free of a clock parameter.
#[derive(Clone)]
pub(crate) enum AnyClock {
    Monotonic(MonotonicClock),
    Coarse(CoarseClock),
    Manual(ManualClock),
    Other(Arc<dyn Clock>),
}

impl AnyClock {
    pub(crate) fn new<C: Clock + 'static>(clock: C) -> AnyClock {
        let mut slot = Some(clock);
        let any = &mut slot as &mut dyn Any;
        if let Some(Some(c)) = any
            .downcast_mut::<Option<MonotonicClock>>()
            .map(Option::take)
        {
            return AnyClock::Monotonic(c);
        }
        if let Some(Some(c)) = any.downcast_mut::<Option<CoarseClock>>().map(Option::take) {
            return AnyClock::Coarse(c);
        }
        if let Some(Some(c)) = any.downcast_mut::<Option<ManualClock>>().map(Option::take) {
            return AnyClock::Manual(c);
        }
        match slot {
            Some(c) => AnyClock::Other(Arc::new(c)),
            None => AnyClock::Monotonic(MonotonicClock::new()),
        }
    }
}

impl Clock for AnyClock {
    #[inline]
    fn now(&self) -> u64 {
        match self {
            AnyClock::Monotonic(c) => c.now(),
            AnyClock::Coarse(c) => c.now(),
            AnyClock::Manual(c) => c.now(),
            AnyClock::Other(c) => c.now(),
        }
    }
}

impl std::fmt::Debug for AnyClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnyClock::Monotonic(_) => "MonotonicClock",
            AnyClock::Coarse(_) => "CoarseClock",
            AnyClock::Manual(_) => "ManualClock",
            AnyClock::Other(_) => "custom clock",
        })
    }
}
