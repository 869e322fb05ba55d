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
use std::sync::{Arc, OnceLock};
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
/// Chosen from `cargo bench --bench core` and `cargo bench --bench compare` (README, "Choosing
/// the clock"). On the 2-core reference VM a precise read costs about 19 ns and, because it
/// orders the instructions around it, it also exposes the latency of everything that follows:
/// an allowed call costs about 40 ns on the precise clock and 15 ns on the coarse one, and a
/// keyed hit among 100,000 keys about 150 ns against 65 ns. The coarse clock lags real time by
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

/// The coarse time: quanta nanoseconds since [`UPKEEP`]'s origin, stored by the upkeep thread.
/// A std atomic even under loom: no model reads the coarse clock. On a cache line of its own, so
/// that writes to neighbouring statics do not slow its readers.
static COARSE_NOW: crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64> =
    crossbeam_utils::CachePadded::new(std::sync::atomic::AtomicU64::new(0));

/// Whether tollgate's upkeep thread runs in this process (`false`: it could not be spawned).
static UPKEEP: OnceLock<bool> = OnceLock::new();

/// Starts tollgate's upkeep thread once per process; it runs for the life of the process,
/// storing the precise time in [`COARSE_NOW`] every [`COARSE_UPKEEP_INTERVAL`].
///
/// It does not use quanta's upkeep slot (`quanta::Upkeep::start`, one per process, which answers
/// `UpkeepRunning` to anyone after the first), so another library that needs the slot
/// (governor's `QuantaUpkeepClock`, say) still gets it, and when that library stops its thread,
/// tollgate's coarse time does not freeze.
fn start_upkeep() -> bool {
    *UPKEEP.get_or_init(|| {
        let clock = MonotonicClock::new();
        // Relaxed: a lone value; readers need no other memory ordered with it.
        COARSE_NOW.store(clock.now(), std::sync::atomic::Ordering::Relaxed);
        std::thread::Builder::new()
            .name("tollgate-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(COARSE_UPKEEP_INTERVAL);
                // Relaxed: as above. `fetch_max`: never backwards, even across cores.
                COARSE_NOW.fetch_max(clock.now(), std::sync::atomic::Ordering::Relaxed);
            })
            .is_ok()
    })
}

/// The coarse clock: the precise (quanta) time as last stored by one process-wide upkeep thread
/// every [`COARSE_UPKEEP_INTERVAL`]. A read is one relaxed atomic load.
///
/// The first `CoarseClock::new` in a process starts the thread (named `tollgate-upkeep`); later
/// ones share it. It does not take quanta's one-per-process upkeep slot, so it coexists with
/// another library's quanta upkeep thread (no `UpkeepRunning` conflict either way). When the
/// thread cannot be spawned, the clock reads the precise time instead.
///
/// The coarse time lags real time by at most the upkeep interval (plus scheduling delay): a
/// limiter on this clock sees refills a little late, so its decisions can only be stricter,
/// and its waits are exact to the clock's resolution (about a millisecond).
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
            // Relaxed: a lone value (see `start_upkeep`).
            None => COARSE_NOW.load(std::sync::atomic::Ordering::Relaxed),
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
