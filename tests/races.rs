//! Interleavings found in review (issue 13), replayed deterministically: a test clock that
//! never goes back but pauses one chosen thread right after one of its readings (what
//! preemption does), while the test moves time on and runs other calls.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use tollgate::{Clock, Inherit, KeyedLimiter, Limit, MultiBucket, MultiKeyedLimiter, TokenBucket};

/// A manual clock that pauses one thread after its `nth` reading, until released.
#[derive(Clone)]
struct PausingClock {
    nanos: Arc<AtomicU64>,
    pause: Arc<Pause>,
}

struct Pause {
    /// The thread to pause, and how many more of its readings to let through first.
    target: Mutex<Option<(ThreadId, usize)>>,
    read: Mutex<Sender<u64>>,
    go: Mutex<Receiver<()>>,
}

/// The test's side: learns when the paused thread has read the clock, and releases it.
struct Control {
    read: Receiver<u64>,
    go: Sender<()>,
}

impl PausingClock {
    fn new(start: Duration) -> (PausingClock, Control) {
        let (read_tx, read_rx) = channel();
        let (go_tx, go_rx) = channel();
        (
            PausingClock {
                nanos: Arc::new(AtomicU64::new(start.as_nanos() as u64)),
                pause: Arc::new(Pause {
                    target: Mutex::new(None),
                    read: Mutex::new(read_tx),
                    go: Mutex::new(go_rx),
                }),
            },
            Control {
                read: read_rx,
                go: go_tx,
            },
        )
    }

    /// Pause the calling thread right after its `nth` reading from now (1: the next one).
    fn pause_me_after(&self, nth: usize) {
        *self.pause.target.lock().unwrap() = Some((thread::current().id(), nth));
    }

    fn set(&self, at: Duration) {
        self.nanos.store(at.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for PausingClock {
    fn now(&self) -> u64 {
        let t = self.nanos.load(Ordering::SeqCst);
        let mut target = self.pause.target.lock().unwrap();
        if let Some((id, left)) = *target {
            if id == thread::current().id() {
                if left > 1 {
                    *target = Some((id, left - 1));
                } else {
                    *target = None;
                    drop(target);
                    self.pause.read.lock().unwrap().send(t).unwrap();
                    self.pause.go.lock().unwrap().recv().unwrap();
                }
            }
        }
        t
    }
}

impl Control {
    /// Waits until the target thread has read the clock and paused; returns its reading.
    fn paused(&self) -> u64 {
        self.read
            .recv_timeout(Duration::from_secs(30))
            .expect("the target thread never read the clock")
    }

    fn release(&self) {
        self.go.send(()).unwrap();
    }
}

const US: Duration = Duration::from_micros(1);

/// contract §3, a stale reading racing eviction. Capacity 10, one token per µs, one shard. Key 7
/// is drained at 10.5 µs (mark 10). Call A reads the clock at 10.5 µs and is preempted; at
/// 22 µs the bucket, full since step 20, is evicted; A resumes and misses. A never-evicting
/// limiter has at most 10 tokens for A and a call at 22 µs together (A's stale reading sees
/// the drained bucket). Before the fix, A recreated the bucket at step 10, full, and the call
/// at 22 µs refilled 12 steps on top: 20 granted.
fn stale_reading_racing_eviction(idle_ttl: Option<Duration>, evict_at: Duration) {
    let (clock, control) = PausingClock::new(Duration::ZERO);
    let mut builder = KeyedLimiter::<u64>::builder(Limit::new(10, 1, US).unwrap())
        .clock(clock.clone())
        .shards(1);
    if let Some(ttl) = idle_ttl {
        builder = builder.idle_ttl(ttl);
    }
    let limiter = Arc::new(builder.build()); // epoch 0
    clock.set(US * 10 + US / 2);
    assert!(limiter.try_acquire_key(&7, 10).unwrap().is_allowed());

    let a = {
        let (limiter, clock) = (limiter.clone(), clock.clone());
        thread::spawn(move || {
            clock.pause_me_after(1);
            limiter.try_acquire_key(&7, 10).unwrap()
        })
    };
    assert_eq!(control.paused(), (US * 10 + US / 2).as_nanos() as u64);
    clock.set(evict_at);
    assert_eq!(limiter.evict_idle(), 1, "the scenario needs the eviction");
    control.release();
    let a = a.join().unwrap();
    let b = limiter.try_acquire_key(&7, 10).unwrap();
    let granted = 10 * (a.is_allowed() as u64 + b.is_allowed() as u64);
    assert!(
        granted <= 10,
        "granted {granted} after the drain: A {a:?}, then {b:?}"
    );
    // And tokens are not lost: one of the two got the refill.
    assert_eq!(granted, 10);
}

#[test]
fn stale_reading_racing_eviction_zero_ttl() {
    stale_reading_racing_eviction(Some(Duration::ZERO), US * 22);
}

#[test]
fn stale_reading_racing_eviction_default_ttl() {
    // The default idle_ttl is the time to fill, at least 1 s: the stall must outlast it.
    stale_reading_racing_eviction(None, Duration::from_secs(3));
}

/// contract §2, undo versus refund, on `MultiBucket`. Limit 0: 1 per second (C = 1); limit 1: 1 per
/// hour. X peeks both, takes limit 0's token at 0.5 s and pauses before its take on limit 1.
/// Someone takes limit 1's token; at 1.5 s Z takes limit 0's step-1 refill. X's take on limit 1
/// is denied and it rolls limit 0 back. W, at 1.5 s, must be denied: without X's take the
/// bucket was full at step 1 and that refill was capped, so nothing is owed back.
#[test]
fn multi_bucket_rollback_across_a_refill() {
    let (clock, control) = PausingClock::new(Duration::ZERO);
    let limits = Arc::new(MultiBucket::with_clock(
        Limit::per_second(1).unwrap(),
        [Limit::per_hour(1).unwrap()],
        clock.clone(),
    ));
    clock.set(Duration::from_millis(500));
    let x = {
        let (limits, clock) = (limits.clone(), clock.clone());
        thread::spawn(move || {
            // Readings: peek 0, peek 1, take 0, take 1: pause at the take on limit 1.
            clock.pause_me_after(4);
            limits.check()
        })
    };
    control.paused();
    assert_eq!(
        limits.buckets()[0].snapshot().remaining(),
        0,
        "X took limit 0's token before pausing"
    );
    assert!(
        limits.buckets()[1].check().is_allowed(),
        "someone takes limit 1's token"
    );
    clock.set(Duration::from_millis(1500));
    assert!(
        limits.buckets()[0].check().is_allowed(),
        "Z takes the step-1 refill"
    );
    control.release();
    let x = x.join().unwrap();
    assert!(!x.is_allowed());
    assert_eq!(x.index, 1);
    let w = limits.buckets()[0].check();
    assert!(
        w.is_denied(),
        "limit 0 granted two tokens in step 1 while X consumed nothing: {w:?}"
    );
}

/// The same on `MultiKeyedLimiter`.
#[test]
fn multi_keyed_rollback_across_a_refill() {
    let (clock, control) = PausingClock::new(Duration::ZERO);
    let limits: Arc<MultiKeyedLimiter<String>> = Arc::new(MultiKeyedLimiter::from_limiters(
        KeyedLimiter::builder(Limit::per_second(1).unwrap())
            .clock(clock.clone())
            .build(),
        [KeyedLimiter::builder(Limit::per_hour(1).unwrap())
            .clock(clock.clone())
            .build()],
    ));
    clock.set(Duration::from_millis(500));
    // The key's buckets exist (exact peeks), so each call below reads the clock once.
    for l in limits.limiters() {
        let _ = l.try_acquire_key("k", 0).unwrap();
    }
    let x = {
        let (limits, clock) = (limits.clone(), clock.clone());
        thread::spawn(move || {
            clock.pause_me_after(4);
            limits.check_key("k")
        })
    };
    control.paused();
    assert_eq!(limits.limiters()[0].snapshot_key("k").remaining(), 0);
    assert!(limits.limiters()[1].check_key("k").is_allowed());
    clock.set(Duration::from_millis(1500));
    assert!(limits.limiters()[0].check_key("k").is_allowed());
    control.release();
    let x = x.join().unwrap();
    assert!(!x.is_allowed());
    let w = limits.limiters()[0].check_key("k");
    assert!(w.is_denied(), "the capped refill came back: {w:?}");
}

/// A rollback with no refill in between gives everything back (the common case).
#[test]
fn multi_rollback_without_a_refill_gives_everything_back() {
    let (clock, control) = PausingClock::new(Duration::ZERO);
    let limits = Arc::new(MultiBucket::with_clock(
        Limit::per_hour(5).unwrap(),
        [Limit::per_hour(1).unwrap()],
        clock.clone(),
    ));
    let x = {
        let (limits, clock) = (limits.clone(), clock.clone());
        thread::spawn(move || {
            clock.pause_me_after(4);
            limits.try_acquire(1).unwrap()
        })
    };
    control.paused();
    assert!(limits.buckets()[1].check().is_allowed());
    control.release();
    assert!(!x.join().unwrap().is_allowed());
    assert_eq!(limits.buckets()[0].snapshot().remaining(), 5);
}

/// `Reservation::cancel` is an undo too: a refill another call applied meanwhile is not
/// given back twice; with no refill since, everything comes back.
#[test]
fn cancel_is_an_undo() {
    let clock = tollgate::ManualClock::new();
    let bucket = TokenBucket::with_clock(
        Limit::new(4, 1, Duration::from_secs(1)).unwrap(),
        clock.clone(),
    );
    let r = bucket.reserve(2).unwrap();
    assert_eq!(r.cancel().remaining(), 4);
    let r = bucket.reserve(3).unwrap(); // 1 left, mark 0
    clock.advance(Duration::from_secs(1));
    assert_eq!(bucket.check().remaining(), 1); // another call refills step 1 (2), takes 1
                                               // Without the reservation: 4 at step 0, capped at step 1, 3 after the other take. Now 1.
                                               // One step of others' refill: 3 - 1 = 2 come back.
    assert_eq!(r.cancel().remaining(), 3);
    // After a limit change, nothing comes back.
    let r = bucket.reserve(2).unwrap();
    let _ = bucket
        .set_limit(
            Limit::new(8, 1, Duration::from_secs(1)).unwrap(),
            Inherit::Keep,
        )
        .unwrap();
    assert_eq!(r.cancel().remaining(), 1);
}

/// A key type whose `Clone` panics while a flag is set.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Touchy(u64);

static PANIC_ON_CLONE: AtomicBool = AtomicBool::new(false);
static CLONES: AtomicUsize = AtomicUsize::new(0);

impl Clone for Touchy {
    fn clone(&self) -> Self {
        CLONES.fetch_add(1, Ordering::SeqCst);
        if PANIC_ON_CLONE.load(Ordering::SeqCst) {
            panic!("Touchy::clone (on purpose)");
        }
        Touchy(self.0)
    }
}

/// A panic in the key's `Clone` while its bucket moves to a new limit leaves the key usable:
/// before the fix it stayed sealed and every later call on it spun forever.
#[test]
fn a_panic_during_migration_leaves_the_key_usable() {
    let clock = tollgate::ManualClock::new();
    let limiter: Arc<KeyedLimiter<Touchy>> = Arc::new(
        KeyedLimiter::builder(Limit::per_hour(10).unwrap())
            .clock(clock)
            .build(),
    );
    let _ = limiter.try_acquire_key(&Touchy(1), 4).unwrap();
    limiter.set_limit(Limit::per_hour(20).unwrap(), Inherit::Keep);
    PANIC_ON_CLONE.store(true, Ordering::SeqCst);
    let before = CLONES.load(Ordering::SeqCst);
    let l = limiter.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = thread::spawn(move || l.check_key(&Touchy(1))).join();
    std::panic::set_hook(hook);
    assert!(result.is_err(), "the clone panicked");
    assert!(
        CLONES.load(Ordering::SeqCst) > before,
        "the panic came from the migration's clone"
    );
    PANIC_ON_CLONE.store(false, Ordering::SeqCst);
    // Off the test thread, with a deadline, so a key left sealed fails instead of hanging.
    let (done, wait) = channel();
    let l = limiter.clone();
    thread::spawn(move || {
        let _ = done.send(l.check_key(&Touchy(1)));
    });
    let d = wait
        .recv_timeout(Duration::from_secs(30))
        .expect("the key stayed sealed: the call never returned");
    assert!(d.is_allowed());
    assert_eq!(d.capacity(), 20);
    assert_eq!(d.remaining(), 5, "6 carried over (Keep), 1 taken");
}
