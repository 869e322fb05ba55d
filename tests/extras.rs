//! Peek, refunds, reservations, grants, resets and waiting for tokens.
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
    b.try_acquire(7).unwrap();
    assert_eq!(b.snapshot().remaining(), 3);
    assert_eq!(b.snapshot().remaining(), 3, "a snapshot consumes nothing");
    assert_eq!(b.refund(2).remaining(), 5);
    assert_eq!(b.add_tokens(100).remaining(), 10, "capped at the capacity");
    b.try_acquire(10).unwrap();
    // Refill counts from the mark: one second on, one token, then the refund on top.
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.refund(1).remaining(), 2);
    let d = b.reset();
    assert_eq!(d.remaining(), 10);
    assert_eq!(d.reset_after(), Duration::ZERO);
    // A refund does not move refills: the next token still comes at 2 s.
    b.try_acquire(10).unwrap();
    b.refund(3);
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
    limiter.try_acquire_key("a", 4).unwrap();
    assert_eq!(limiter.snapshot_key("a").remaining(), 0);
    assert_eq!(limiter.refund_key("a", 1).remaining(), 1);
    assert_eq!(limiter.add_tokens_key("a", 1).remaining(), 2);
    assert_eq!(limiter.reset_key("a").remaining(), 4);
    assert_eq!(limiter.len(), 1);
}

#[cfg(feature = "tokio")]
mod waiting {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[tokio::test]
    async fn waits_for_the_refill_and_consumes() {
        let b = TokenBucket::with_clock(
            Limit::new(2, 2, Duration::from_millis(40)).unwrap(),
            tollgate::MonotonicClock::new(),
        );
        let start = Instant::now();
        assert!(b.acquire(2).await.unwrap().is_allowed());
        let d = b.acquire(2).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), 0, "the grant consumed the tokens");
        assert!(
            start.elapsed() >= Duration::from_millis(35),
            "{:?}",
            start.elapsed()
        );
        assert!(
            b.acquire(3).await.is_err(),
            "more than the capacity: an error, not a wait"
        );
    }

    #[tokio::test]
    async fn a_dropped_wait_consumes_nothing() {
        let b = Arc::new(TokenBucket::with_clock(
            Limit::new(3, 3, Duration::from_secs(3600)).unwrap(),
            tollgate::MonotonicClock::new(),
        ));
        b.try_acquire(2).unwrap();
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire(2).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        assert!(waiting.await.is_err(), "aborted");
        assert_eq!(b.snapshot().remaining(), 1);
    }

    #[tokio::test]
    async fn many_waiters_share_the_refills_fairly_enough() {
        let limiter = Arc::new(
            KeyedLimiter::<u32>::builder(Limit::new(1, 1, Duration::from_millis(5)).unwrap())
                .clock(tollgate::MonotonicClock::new())
                .build(),
        );
        let start = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    let b = TokenBucket::new(Limit::per_second(1).unwrap());
                    let _ = b.acquire_with_jitter(1, Duration::from_millis(2)).await;
                    l.acquire_key(&7, 1).await.unwrap().is_allowed()
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        // 8 grants from a bucket of 1 refilled every 5 ms: at least 35 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(30),
            "{:?}",
            start.elapsed()
        );
    }
}

#[test]
fn tiers_give_each_key_its_limit_with_one_lookup() {
    let clock = ManualClock::new();
    let free = Limit::new(2, 1, Duration::from_secs(10)).unwrap();
    let pro = Limit::new(100, 10, Duration::from_secs(1)).unwrap();
    let internal = Limit::greedy(1_000, 1_000, Duration::from_secs(1)).unwrap();
    let limiter: KeyedLimiter<String> = KeyedLimiter::builder(free)
        .tiers([pro, internal], |user: &String| {
            if user.starts_with("pro-") {
                1
            } else if user.starts_with("int-") {
                2
            } else if user.starts_with("bogus-") {
                99 // out of range: tier 0
            } else {
                0
            }
        })
        .clock(clock.clone())
        .idle_ttl(Duration::from_secs(1))
        .build();
    let take = |key: &str, n: u64| limiter.try_acquire_key(key, n).unwrap();
    assert_eq!(take("bob", 1).limit(), 2);
    assert_eq!(take("pro-ann", 1).limit(), 100);
    assert_eq!(take("int-svc", 1).limit(), 1_000);
    assert_eq!(take("bogus-x", 1).limit(), 2);
    assert!(take("bob", 1).is_allowed());
    assert!(take("bob", 1).is_denied());
    assert_eq!(take("pro-ann", 50).remaining(), 49);
    assert!(
        limiter.try_acquire_key("bob", 3).is_err(),
        "above the free capacity"
    );
    assert!(
        limiter.try_acquire_key("pro-new", 3).is_ok(),
        "within the pro capacity"
    );
    // Each tier refills on its own schedule: after 1 s, pro got 10 back, free nothing.
    clock.advance(Duration::from_secs(1));
    assert_eq!(limiter.snapshot_key("pro-ann").remaining(), 59);
    assert_eq!(limiter.snapshot_key("bob").remaining(), 0);
    assert_eq!(limiter.snapshot_key("int-unknown").remaining(), 1_000);
    // Eviction judges each bucket by its own tier: idle full buckets go, others stay.
    // (A free bucket must have been full for two of its 10 s steps: idle is judged in steps.)
    clock.advance(Duration::from_secs(60));
    let before = limiter.len();
    let evicted = limiter.evict_idle();
    assert_eq!(evicted, before, "all are full and idle after 61 s");
    assert!(limiter.is_empty());
    assert_eq!(
        limiter.check_key("pro-ann").remaining(),
        99,
        "a fresh bucket, same tier"
    );
}
