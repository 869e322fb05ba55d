//! Beyond `check`: peek, refunds, reservations, grants, resets, several limits at once and live
//! limit changes on one bucket.
#![cfg(not(loom))]

use std::time::Duration;

use tollgate::{KeyedLimiter, Limit, ManualClock, ReserveError, TokenBucket};

fn bucket(c: u64, r: u64, every: Duration) -> (TokenBucket<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    (
        TokenBucket::with_clock(Limit::new(c, r, every).unwrap(), clock.clone()),
        clock,
    )
}

#[test]
fn snapshot_refund_add_reset() {
    let (b, clock) = bucket(10, 1, Duration::from_secs(1));
    assert_eq!(b.snapshot().remaining(), 10);
    let _ = b.try_acquire(7).unwrap();
    assert_eq!(b.snapshot().remaining(), 3);
    assert_eq!(b.snapshot().remaining(), 3, "a snapshot consumes nothing");
    assert_eq!(b.refund(2).remaining(), 5);
    assert_eq!(b.add_tokens(100).remaining(), 10, "capped at the capacity");
    let _ = b.try_acquire(10).unwrap();
    // Refill counts from the mark: one second on, one token, then the refund on top.
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.refund(1).remaining(), 2);
    let d = b.reset();
    assert_eq!(d.remaining(), 10);
    assert_eq!(d.reset_after(), Duration::ZERO);
    // A refund does not move refills: the next token still comes at 2 s.
    let _ = b.try_acquire(10).unwrap();
    let _ = b.refund(3);
    assert_eq!(b.snapshot().next_refill_after(), Duration::from_secs(1));
}

#[test]
fn reservations_keep_or_give_back() {
    let (b, _) = bucket(5, 1, Duration::from_secs(1));
    let kept = b.reserve(2).unwrap();
    assert_eq!(kept.tokens(), 2);
    assert_eq!(kept.decision().remaining(), 3);
    drop(kept);
    assert_eq!(
        b.snapshot().remaining(),
        3,
        "a dropped reservation stays spent"
    );
    let r = b.reserve(3).unwrap();
    match b.reserve(1) {
        Err(ReserveError::Denied(d)) => assert_eq!(d.retry_after(), Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.cancel().remaining(), 3);
    assert!(matches!(
        b.reserve(6),
        Err(ReserveError::InsufficientCapacity(_))
    ));
}

#[test]
fn keyed_forms_create_nothing_for_unknown_keys() {
    let clock = ManualClock::new();
    let limiter: KeyedLimiter<String> =
        KeyedLimiter::builder(Limit::new(4, 1, Duration::from_secs(1)).unwrap())
            .clock(clock)
            .build();
    assert_eq!(limiter.snapshot_key("a").remaining(), 4);
    assert_eq!(limiter.refund_key("a", 2).remaining(), 4);
    assert_eq!(limiter.reset_key("a").remaining(), 4);
    assert!(limiter.is_empty());
    let _ = limiter.try_acquire_key("a", 4).unwrap();
    assert_eq!(limiter.snapshot_key("a").remaining(), 0);
    assert_eq!(limiter.refund_key("a", 1).remaining(), 1);
    assert_eq!(limiter.add_tokens_key("a", 1).remaining(), 2);
    assert_eq!(limiter.reset_key("a").remaining(), 4);
    assert_eq!(limiter.len(), 1);
}

#[test]
fn multi_limits_are_all_or_nothing() {
    use tollgate::{MultiBucket, MultiKeyedLimiter};
    let clock = ManualClock::new();
    let hour = Duration::from_secs(3600);
    let multi = MultiBucket::with_clock(
        Limit::new(5, 5, hour).unwrap(),
        [Limit::new(3, 3, hour).unwrap()],
        clock.clone(),
    );
    assert!(multi.try_acquire(2).unwrap().is_allowed());
    let d = multi.try_acquire(2).unwrap();
    assert!(!d.is_allowed());
    assert_eq!(d.index, 1, "the second limit denied");
    assert_eq!(d.decision.retry_after(), hour);
    assert_eq!(
        multi.buckets()[0].snapshot().remaining(),
        3,
        "the first gave nothing"
    );
    assert!(multi.try_acquire(6).is_err(), "above a capacity: an error");
    let ok = multi.try_acquire(1).unwrap();
    assert_eq!(
        (ok.index, ok.decision.remaining()),
        (1, 0),
        "reports the tightest limit"
    );

    // Under threads: the tighter limit bounds the grants, and no token leaks from the other.
    let multi = MultiBucket::with_clock(
        Limit::new(50, 50, hour).unwrap(),
        [Limit::new(20, 20, hour).unwrap()],
        clock.clone(),
    );
    let granted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..100 {
                    if multi.check().is_allowed() {
                        granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(granted.into_inner(), 20);
    assert_eq!(multi.buckets()[0].snapshot().remaining(), 30);

    let keyed: MultiKeyedLimiter<String> = MultiKeyedLimiter::from_limiters(
        KeyedLimiter::builder(Limit::new(2, 2, hour).unwrap())
            .clock(clock.clone())
            .build(),
        [KeyedLimiter::builder(Limit::new(10, 10, hour).unwrap())
            .clock(clock)
            .build()],
    );
    assert!(keyed.check_key("a").is_allowed());
    assert!(keyed.check_key("a").is_allowed());
    let d = keyed.check_key("a");
    assert_eq!((d.is_allowed(), d.index), (false, 0));
    assert_eq!(keyed.limiters()[1].snapshot_key("a").remaining(), 8);
    assert!(keyed.check_key("b").is_allowed(), "keys are independent");
}

#[test]
fn set_limit_carries_tokens_over_by_policy() {
    use tollgate::{Inherit, MAX_RECONFIGURATIONS};
    let (b, clock) = bucket(10, 1, Duration::from_secs(1));
    let _ = b.try_acquire(6).unwrap(); // 4 left
    let d = b
        .set_limit(
            Limit::new(20, 2, Duration::from_secs(1)).unwrap(),
            Inherit::Keep,
        )
        .unwrap();
    assert_eq!((d.capacity(), d.remaining()), (20, 4));
    assert_eq!(b.limit().capacity(), 20);
    let d = b
        .set_limit(
            Limit::new(5, 1, Duration::from_secs(1)).unwrap(),
            Inherit::Proportional,
        )
        .unwrap();
    assert_eq!(d.remaining(), 1, "4/20 of 5 is 1 (rounded down)");
    assert!(b.try_acquire(6).is_err(), "above the new capacity");
    let d = b
        .set_limit(
            Limit::new(3, 3, Duration::from_secs(2)).unwrap(),
            Inherit::Keep,
        )
        .unwrap();
    assert_eq!(d.remaining(), 1);
    // Refills follow the new limit from the step of the change: 3 per 2 s.
    clock.advance(Duration::from_secs(2));
    assert_eq!(b.snapshot().remaining(), 3);
    let _ = b.try_acquire(3).unwrap();
    assert_eq!(
        b.set_limit(*b.limit(), Inherit::Reset).unwrap().remaining(),
        3
    );
    let same = *b.limit();
    for _ in 0..1_000 {
        let _ = b.set_limit(same, Inherit::Keep).unwrap(); // the limit in force: changes nothing
    }
    let other = Limit::new(3, 3, Duration::from_secs(4)).unwrap();
    // Three changes so far (a reset to the same limit is a plain reset, and does not count).
    for i in 3..MAX_RECONFIGURATIONS {
        let _ = b
            .set_limit(if i % 2 == 1 { other } else { same }, Inherit::Keep)
            .unwrap();
    }
    assert!(b.set_limit(other, Inherit::Keep).is_err());
    assert_eq!(
        b.snapshot().remaining(),
        3,
        "a refused change changes nothing"
    );
}

#[test]
fn set_limit_under_load_never_invents_tokens() {
    use tollgate::Inherit;
    let (b, _clock) = bucket(1_000, 1, Duration::from_secs(3600));
    let granted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..2_000 {
                    if b.check().is_allowed() {
                        granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        s.spawn(|| {
            for i in 0..200 {
                let cap = if i % 2 == 0 { 2_000 } else { 1_000 };
                let _ = b
                    .set_limit(
                        Limit::new(cap, 1, Duration::from_secs(3600)).unwrap(),
                        Inherit::Keep,
                    )
                    .unwrap();
            }
        });
    });
    // Keep never adds tokens and no time passes: at most the 1,000 there were.
    let granted = granted.into_inner();
    let left = b.snapshot().remaining();
    assert_eq!(granted + left, 1_000, "granted {granted}, left {left}");
}
