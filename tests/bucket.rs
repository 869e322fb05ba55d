//! The contract, §1–2, rule by rule, and the edges: capacity 1, the largest capacity, R = C, the
//! shortest and longest intervals, the wrap horizon.
#![cfg(not(loom))]

mod model;

use std::time::Duration;

use model::{observe, Model};
use tollgate::{Clock, Limit, ManualClock, TokenBucket, MAX_CAPACITY, MAX_INTERVAL};

const S: Duration = Duration::from_secs(1);

fn bucket(limit: Limit) -> (TokenBucket<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    (TokenBucket::with_clock(limit, clock.clone()), clock)
}

#[test]
fn classic_burst_then_interval_refill() {
    let (b, clock) = bucket(Limit::new(10, 2, S).unwrap());
    for i in 0..10 {
        let d = b.check();
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), 9 - i);
        assert_eq!(d.retry_after(), Duration::ZERO);
    }
    for _ in 0..5 {
        let d = b.check();
        assert!(d.is_denied());
        assert_eq!(d.remaining(), 0);
        assert_eq!(d.retry_after(), S);
        assert_eq!(d.reset_after(), 5 * S);
        assert_eq!(d.next_refill_after(), S);
    }
    clock.advance(S - Duration::from_nanos(1));
    let d = b.check();
    assert!(d.is_denied());
    assert_eq!(d.retry_after(), Duration::from_nanos(1));
    clock.advance(Duration::from_nanos(1));
    assert!(b.check().is_allowed());
    let d = b.check();
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 0);
    assert!(b.check().is_denied());
    // A denial for 3 tokens: two whole intervals away.
    assert_eq!(b.try_acquire(3).unwrap().retry_after(), 2 * S);
}

#[test]
fn greedy_is_exact_without_drift() {
    // 3 per second: tokens at ceil(j * 1e9 / 3) ns.
    let (b, clock) = bucket(Limit::per_second(3).unwrap());
    assert!(b.try_acquire(3).unwrap().is_allowed());
    let d = b.check();
    assert_eq!(d.retry_after(), Duration::from_nanos(333_333_334));
    clock.advance(Duration::from_nanos(333_333_333));
    assert!(b.check().is_denied());
    clock.advance(Duration::from_nanos(1));
    assert!(b.check().is_allowed());
    // After 3000 s, exactly 9000 tokens have arrived: no drift.
    let (b, clock) = bucket(Limit::greedy(9_000, 3, S).unwrap());
    assert!(b.try_acquire(9_000).unwrap().is_allowed());
    clock.advance(3_000 * S);
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 9_000);
}

#[test]
fn peek_consumes_nothing() {
    let (b, _) = bucket(Limit::new(2, 1, S).unwrap());
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 2);
    let _ = b.try_acquire(2).unwrap();
    let d = b.try_acquire(0).unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 0);
    assert_eq!(d.retry_after(), Duration::ZERO);
    assert_eq!(d.reset_after(), 2 * S);
}

#[test]
fn more_than_capacity_is_an_error_and_changes_nothing() {
    let (b, _) = bucket(Limit::new(5, 1, S).unwrap());
    let _ = b.try_acquire(2).unwrap();
    let e = b.try_acquire(6).unwrap_err();
    assert_eq!((e.requested, e.capacity), (6, 5));
    assert!(b.try_acquire(u64::MAX).is_err());
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 3);
}

#[test]
fn denial_consumes_nothing() {
    let (b, _) = bucket(Limit::new(5, 1, S).unwrap());
    let _ = b.try_acquire(3).unwrap();
    assert!(b.try_acquire(3).unwrap().is_denied());
    assert_eq!(b.try_acquire(2).unwrap().remaining(), 0);
}

#[test]
fn clock_going_back_changes_nothing() {
    let (b, clock) = bucket(Limit::new(4, 1, S).unwrap());
    let _ = b.try_acquire(4).unwrap();
    clock.advance(2 * S);
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 2);
    clock.rewind(10 * S); // before the epoch
    let d = b.try_acquire(0).unwrap();
    assert_eq!(d.remaining(), 2);
    // Waits are measured from the (earlier) time of the call: T(3) - t.
    assert_eq!(d.next_refill_after(), 3 * S);
    clock.advance(2 * S + Duration::from_millis(500));
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 2);
    clock.advance(S);
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 3);
}

#[test]
fn capacity_one() {
    let (b, clock) = bucket(Limit::new(1, 1, Duration::from_millis(10)).unwrap());
    assert!(b.check().is_allowed());
    let d = b.check();
    assert!(d.is_denied());
    assert_eq!(d.retry_after(), Duration::from_millis(10));
    clock.advance(Duration::from_secs(100));
    assert!(b.check().is_allowed());
    assert!(b.check().is_denied());
}

#[test]
fn largest_capacity() {
    let (b, clock) = bucket(Limit::new(MAX_CAPACITY, MAX_CAPACITY, S).unwrap());
    assert!(b.try_acquire(MAX_CAPACITY).unwrap().is_allowed());
    let d = b.try_acquire(MAX_CAPACITY).unwrap();
    assert!(d.is_denied());
    assert_eq!(d.retry_after(), S);
    clock.advance(S);
    assert_eq!(b.try_acquire(0).unwrap().remaining(), MAX_CAPACITY);
    assert!(b.try_acquire(MAX_CAPACITY + 1).is_err());
}

#[test]
fn refill_amount_equal_to_capacity() {
    let (b, clock) = bucket(Limit::new(7, 7, S).unwrap());
    let _ = b.try_acquire(7).unwrap();
    let d = b.check();
    assert_eq!((d.retry_after(), d.reset_after()), (S, S));
    clock.advance(S);
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 7);
}

#[test]
fn shortest_interval() {
    let (b, clock) = bucket(Limit::new(3, 1, Duration::from_nanos(1)).unwrap());
    let _ = b.try_acquire(3).unwrap();
    assert_eq!(b.check().retry_after(), Duration::from_nanos(1));
    clock.advance(Duration::from_nanos(2));
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 2);
    // Greedy at the fastest: one token per nanosecond.
    let (b, clock) = bucket(Limit::greedy(1000, 1000, Duration::from_micros(1)).unwrap());
    let _ = b.try_acquire(1000).unwrap();
    clock.advance(Duration::from_nanos(17));
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 17);
}

#[test]
fn longest_interval() {
    let (b, clock) = bucket(Limit::new(2, 1, MAX_INTERVAL).unwrap());
    let _ = b.try_acquire(2).unwrap();
    let d = b.check();
    assert_eq!(d.retry_after(), MAX_INTERVAL);
    assert_eq!(d.reset_after(), 2 * MAX_INTERVAL);
    clock.advance(MAX_INTERVAL);
    assert_eq!(b.try_acquire(0).unwrap().remaining(), 1);
}

/// A limit with a short horizon (the shortest accepted is 30 days): capacity 2^24, one token
/// every 10 µs: the mark has 39 bits, the horizon is 2^38 steps of 10 µs (31.8 days).
#[test]
fn wrap_horizon_only_under_refills() {
    let step = Duration::from_micros(10);
    let limit = Limit::new(1 << 24, 1, step).unwrap();
    let horizon_steps = 1u64 << 38;
    let horizon = Duration::from_nanos(10_000 * horizon_steps);
    assert_eq!(limit.horizon(), horizon);
    let (b, clock) = bucket(limit);
    let mut model = Model::new(1 << 24, 1, 10_000, false, 0);
    let mut check = |n: u64| {
        let got = observe(&b.try_acquire(n).unwrap());
        let want = model.acquire(clock.now(), n).unwrap();
        assert!(got.remaining <= want.remaining, "{got:?} vs {want:?}");
        assert!(!got.allowed || want.allowed, "{got:?} vs {want:?}");
        got
    };
    assert!(check(1 << 24).allowed);
    // Just inside the horizon: exact.
    clock.advance(step * 5);
    assert_eq!(check(0).remaining, 5);
    clock.set(10_000 * (horizon_steps + 4)); // 2^38 - 1 steps after the last call
    assert_eq!(check(0).remaining, 1 << 24);
    assert!(check(1 << 24).allowed);
    // Past the horizon: read as no progress, so the bucket stays empty (the model is full).
    clock.advance(horizon + step * 3);
    let d = check(1);
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    // Another horizon on, the distance wraps to 2^39 + 3 = 3 steps: 3 tokens (model: full).
    clock.advance(horizon);
    assert_eq!(check(0).remaining, 3);
}

#[test]
fn rejects_bad_limits_without_panicking() {
    for (c, r, i) in [
        (0, 1, S),
        (1, 0, S),
        (2, 3, S),
        (1, 1, Duration::ZERO),
        (u64::MAX, 1, S),
        (1, 1, Duration::MAX),
    ] {
        assert!(Limit::new(c, r, i).is_err());
        assert!(Limit::greedy(c, r, i).is_err());
    }
    assert!(Limit::per_second(0).is_err());
    assert!(Limit::per_minute(u64::MAX).is_err());
    assert!(Limit::per_hour(1).unwrap().burst(0).is_err());
}

/// The horizons docs/ARCHITECTURE.md gives as examples.
#[test]
fn documented_horizon_examples() {
    let ms = Duration::from_millis(1);
    // Capacity 100: 7 token bits, a 57-bit mark, a horizon of 2^56 steps of 1 ms, beyond what
    // a horizon in nanoseconds can say (it saturates at u64::MAX ns).
    let h = Limit::new(100, 1, ms).unwrap().horizon();
    assert_eq!(h, Duration::from_nanos(u64::MAX));
    // Capacity 2^24: 25 token bits, 2^38 steps of 1 ms: 8.7 years.
    let h = Limit::new(1 << 24, 1, ms).unwrap().horizon();
    assert_eq!(h, Duration::from_millis(1 << 38));
    let years = h.as_secs_f64() / (365.25 * 86_400.0);
    assert!((8.7..8.8).contains(&years), "{years} years");
    // per_second(1_000_000): 1 µs steps, 20 token bits, 2^43 µs: 101 days.
    let h = Limit::per_second(1_000_000).unwrap().horizon();
    assert_eq!(h, Duration::from_micros(1 << 43));
    assert_eq!(h.as_secs() / 86_400, 101);
}
