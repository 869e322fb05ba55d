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
        // Read before the bucket's epoch: the refill comes 40 ms after the epoch, so at least
        // 40 ms after this.
        let start = Instant::now();
        let b = TokenBucket::with_clock(
            Limit::new(2, 2, Duration::from_millis(40)).unwrap(),
            tollgate::MonotonicClock::new(),
        );
        assert!(b.acquire(2).await.unwrap().is_allowed());
        let d = b.acquire(2).await.unwrap();
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), 0, "the grant consumed the tokens");
        assert!(
            start.elapsed() >= Duration::from_millis(40),
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
    async fn many_waiters_get_one_refill_each() {
        // Read before the limiter's epoch, so token `i` (arriving at epoch + 5 ms * i) is
        // granted at least 5 ms * i after this.
        let start = Instant::now();
        let limiter = Arc::new(
            KeyedLimiter::<u32>::builder(Limit::new(1, 1, Duration::from_millis(5)).unwrap())
                .clock(tollgate::MonotonicClock::new())
                .build(),
        );
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    let d = l.acquire_key(&7, 1).await.unwrap();
                    (d.is_allowed(), start.elapsed())
                })
            })
            .collect();
        let mut granted_at = Vec::new();
        for t in tasks {
            let (allowed, at) = t.await.unwrap();
            assert!(allowed, "acquire returns grants only");
            granted_at.push(at);
        }
        granted_at.sort();
        for (i, at) in granted_at.iter().enumerate() {
            assert!(
                *at >= Duration::from_millis(5) * i as u32,
                "grant {i} at {at:?}: before its token"
            );
        }
    }

    #[tokio::test]
    async fn jitter_never_makes_a_wait_early() {
        let start = Instant::now();
        let b = TokenBucket::with_clock(
            Limit::new(1, 1, Duration::from_millis(30)).unwrap(),
            tollgate::MonotonicClock::new(),
        );
        b.try_acquire(1).unwrap();
        let d = b
            .acquire_with_jitter(1, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(d.is_allowed());
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
    let d = limiter.try_acquire_key("pro-new", 3).unwrap();
    assert_eq!(
        (d.is_allowed(), d.limit(), d.remaining()),
        (true, 100, 97),
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

#[test]
fn stats_count_exactly_under_threads() {
    let clock = ManualClock::new();
    let limiter: KeyedLimiter<u64> =
        KeyedLimiter::builder(Limit::new(100, 1, Duration::from_secs(1)).unwrap())
            .clock(clock.clone())
            .idle_ttl(Duration::from_secs(1))
            .stats(true)
            .build();
    let allowed = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (limiter, allowed) = (&limiter, &allowed);
            s.spawn(move || {
                for i in 0..1_000u64 {
                    if limiter.check_key(&(i % 7 + t)).is_allowed() {
                        allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let stats = limiter.stats().unwrap();
    assert_eq!(stats.allowed, allowed.into_inner());
    assert_eq!(stats.allowed + stats.denied, 4_000);
    assert_eq!(stats.allowed, 10 * 100, "ten keys, 100 tokens each");
    clock.advance(Duration::from_secs(1_000));
    let evicted = limiter.evict_idle() as u64;
    assert_eq!(limiter.stats().unwrap().evicted, evicted);
    assert_eq!(evicted, 10);
    let plain: KeyedLimiter<u64> = KeyedLimiter::new(Limit::per_second(1).unwrap());
    assert!(plain.stats().is_none());
}

#[cfg(feature = "metrics")]
#[test]
fn stats_publish_to_the_metrics_facade() {
    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, String, u64)>>);
    struct One(Arc<Seen>, String, String);
    impl CounterFn for One {
        fn increment(&self, _: u64) {}
        fn absolute(&self, v: u64) {
            self.0
                 .0
                .lock()
                .unwrap()
                .push((self.1.clone(), self.2.clone(), v));
        }
    }
    struct Rec(Arc<Seen>);
    impl Recorder for Rec {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let label = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            Counter::from_arc(Arc::new(One(self.0.clone(), key.name().to_string(), label)))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
    let seen = Arc::new(Seen::default());
    let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_hour(1).unwrap())
        .stats(true)
        .build();
    limiter.check_key(&1);
    limiter.check_key(&1);
    limiter.check_key(&1);
    metrics::with_local_recorder(&Rec(seen.clone()), || {
        limiter.stats().unwrap().publish("api")
    });
    let got = seen.0.lock().unwrap().clone();
    assert!(
        got.contains(&("tollgate_allowed_total".into(), "limiter=api".into(), 1)),
        "{got:?}"
    );
    assert!(
        got.contains(&("tollgate_denied_total".into(), "limiter=api".into(), 2)),
        "{got:?}"
    );
    assert!(
        got.contains(&("tollgate_evicted_total".into(), "limiter=api".into(), 0)),
        "{got:?}"
    );
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
    assert_eq!(d.limit, 1, "the second limit denied");
    assert_eq!(d.decision.retry_after(), hour);
    assert_eq!(
        multi.buckets()[0].snapshot().remaining(),
        3,
        "the first gave nothing"
    );
    assert!(multi.try_acquire(6).is_err(), "above a capacity: an error");
    let ok = multi.try_acquire(1).unwrap();
    assert_eq!(
        (ok.limit, ok.decision.remaining()),
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
    assert_eq!((d.is_allowed(), d.limit), (false, 0));
    assert_eq!(keyed.limiters()[1].snapshot_key("a").remaining(), 8);
    assert!(keyed.check_key("b").is_allowed(), "keys are independent");
}

#[test]
fn set_limit_carries_tokens_over_by_policy() {
    use tollgate::{Inherit, MAX_RECONFIGURATIONS};
    let (b, clock) = bucket(10, 1, Duration::from_secs(1));
    b.try_acquire(6).unwrap(); // 4 left
    let d = b
        .set_limit(
            Limit::new(20, 2, Duration::from_secs(1)).unwrap(),
            Inherit::Keep,
        )
        .unwrap();
    assert_eq!((d.limit(), d.remaining()), (20, 4));
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
    b.try_acquire(3).unwrap();
    assert_eq!(
        b.set_limit(*b.limit(), Inherit::Reset).unwrap().remaining(),
        3
    );
    let same = *b.limit();
    for _ in 0..1_000 {
        b.set_limit(same, Inherit::Keep).unwrap(); // the limit in force: changes nothing
    }
    let other = Limit::new(3, 3, Duration::from_secs(4)).unwrap();
    // Three changes so far (a reset to the same limit is a plain reset, and does not count).
    for i in 3..MAX_RECONFIGURATIONS {
        b.set_limit(if i % 2 == 1 { other } else { same }, Inherit::Keep)
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
                b.set_limit(
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

fn keyed(c: u64, every: Duration) -> (KeyedLimiter<String>, ManualClock) {
    let clock = ManualClock::new();
    let limiter = KeyedLimiter::builder(Limit::new(c, 1, every).unwrap())
        .tiers([Limit::new(100, 10, every).unwrap()], |k: &String| {
            usize::from(k.starts_with("pro"))
        })
        .clock(clock.clone())
        .idle_ttl(Duration::from_secs(1))
        .build();
    (limiter, clock)
}

#[test]
fn keyed_set_limit_moves_every_key_by_policy() {
    use tollgate::{Inherit, SetLimitError};
    let s = Duration::from_secs(1);
    let (limiter, clock) = keyed(10, s);
    limiter.try_acquire_key("a", 6).unwrap(); // 4 left
    limiter.try_acquire_key("pro-1", 30).unwrap(); // 70 left
    limiter
        .set_limit(Limit::new(20, 2, s).unwrap(), Inherit::Proportional)
        .unwrap();
    assert_eq!(limiter.limit().capacity(), 20);
    assert_eq!(
        limiter.tier_limit(1).unwrap().capacity(),
        100,
        "tier 1 untouched"
    );
    let d = limiter.snapshot_key("a");
    assert_eq!((d.limit(), d.remaining()), (20, 8), "4/10 of 20");
    assert_eq!(
        limiter.snapshot_key("b").remaining(),
        20,
        "an untouched key is full"
    );
    assert_eq!(limiter.snapshot_key("pro-1").remaining(), 70);
    // Refills follow the new limit from the change: 2 per second.
    clock.advance(s);
    assert_eq!(limiter.snapshot_key("a").remaining(), 10);
    limiter
        .set_tier_limit(1, Limit::new(50, 5, s).unwrap(), Inherit::Keep)
        .unwrap();
    assert_eq!(
        limiter.snapshot_key("pro-1").remaining(),
        50,
        "kept, capped"
    );
    limiter
        .set_tier_limit(1, Limit::new(50, 5, s).unwrap(), Inherit::Reset)
        .unwrap();
    assert_eq!(limiter.try_acquire_key("pro-1", 50).unwrap().remaining(), 0);
    assert!(
        limiter.try_acquire_key("pro-1", 51).is_err(),
        "above the new capacity"
    );
    assert_eq!(
        limiter.set_tier_limit(2, Limit::new(1, 1, s).unwrap(), Inherit::Keep),
        Err(SetLimitError::UnknownTier { tier: 2, tiers: 2 })
    );
    assert_eq!(limiter.len(), 2, "moving buckets adds no keys");
}

#[test]
fn keyed_keep_raise_treats_untouched_and_evicted_keys_alike() {
    use tollgate::Inherit;
    let s = Duration::from_secs(1);
    let (limiter, clock) = keyed(10, s);
    limiter.check_key("idle");
    clock.advance(10 * s); // "idle" is full again, and evictable
    limiter.try_acquire_key("busy", 10).unwrap();
    assert_eq!(limiter.evict_idle(), 1);
    // Keep raises the capacity to 20: a full bucket keeps its 10 tokens, so an untouched key
    // (and the evicted one) starts with 10 as well, and refills to 20 at 1 per second.
    limiter
        .set_limit(Limit::new(20, 1, s).unwrap(), Inherit::Keep)
        .unwrap();
    assert_eq!(limiter.snapshot_key("idle").remaining(), 10);
    assert_eq!(limiter.snapshot_key("never-seen").remaining(), 10);
    assert_eq!(limiter.snapshot_key("busy").remaining(), 0);
    // A refund to an untouched key is kept (its bucket is created, as it is not full).
    assert_eq!(limiter.refund_key("refunded", 3).remaining(), 13);
    assert_eq!(limiter.snapshot_key("refunded").remaining(), 13);
    clock.advance(4 * s);
    assert_eq!(limiter.snapshot_key("idle").remaining(), 14);
    assert_eq!(limiter.snapshot_key("never-seen").remaining(), 14);
    assert_eq!(limiter.snapshot_key("busy").remaining(), 4);
    // Until an untouched bucket is full, nothing is evicted that a fresh key would not equal.
    assert_eq!(limiter.evict_idle(), 0);
    clock.advance(20 * s);
    assert_eq!(limiter.snapshot_key("never-seen").remaining(), 20);
    assert_eq!(limiter.evict_idle(), 3, "all full and idle now");
}

#[test]
fn keyed_set_limit_counts_changes_not_reloads() {
    use tollgate::{Inherit, SetLimitError};
    let s = Duration::from_secs(1);
    let (limiter, _clock) = keyed(10, s);
    let same = *limiter.limit();
    for _ in 0..1_000 {
        limiter.set_limit(same, Inherit::Keep).unwrap(); // a reload: changes nothing
    }
    let other = Limit::new(5, 1, s).unwrap();
    // 256 slots, 2 taken by the tiers.
    for i in 0..254 {
        let limit = if i % 2 == 0 { other } else { same };
        limiter.set_limit(limit, Inherit::Keep).unwrap();
    }
    assert_eq!(
        limiter.set_tier_limit(1, same, Inherit::Keep),
        Err(SetLimitError::TooManyReconfigurations)
    );
    assert!(limiter.set_limit(other, Inherit::Keep).is_err());
    assert!(limiter.check_key("a").is_allowed(), "still deciding");
}

#[test]
fn keyed_set_limit_under_load_never_invents_tokens() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tollgate::Inherit;
    let hour = Duration::from_secs(3600);
    let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::new(100, 1, hour).unwrap())
        .clock(ManualClock::new())
        .shards(2)
        .build();
    let keys = 8u64;
    let granted = AtomicU64::new(0);
    let changing = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        for t in 0..2 {
            let (limiter, granted, changing) = (&limiter, &granted, &changing);
            s.spawn(move || {
                let mut i = t;
                while changing.load(Ordering::Relaxed) {
                    if limiter.check_key(&(i % keys)).is_allowed() {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
        s.spawn(|| {
            for i in 0..200 {
                let cap = if i % 2 == 0 { 200 } else { 100 };
                limiter
                    .set_limit(Limit::new(cap, 1, hour).unwrap(), Inherit::Keep)
                    .unwrap();
                std::thread::sleep(Duration::from_micros(100));
            }
            changing.store(false, Ordering::Relaxed);
        });
    });
    // Keep never adds tokens (a raise keeps even an untouched key at 100) and no time
    // passes: exactly the 100 per key there were, granted or left.
    let left: u64 = (0..keys)
        .map(|k| limiter.snapshot_key(&k).remaining())
        .sum();
    assert_eq!(granted.into_inner() + left, 100 * keys);
}

#[test]
fn multi_limit_stats_count_each_call_once() {
    use tollgate::MultiKeyedLimiter;
    let build = |c| {
        KeyedLimiter::builder(Limit::new(c, 1, Duration::from_secs(3600)).unwrap())
            .clock(ManualClock::new())
            .stats(true)
            .build()
    };
    let limits: MultiKeyedLimiter<String> = MultiKeyedLimiter::from_limiters(build(2), [build(5)]);
    assert!(limits.check_key("a").is_allowed());
    assert!(limits.check_key("a").is_allowed());
    let d = limits.check_key("a");
    assert_eq!((d.is_allowed(), d.limit), (false, 0));
    let first = limits.limiters()[0].stats().unwrap();
    let second = limits.limiters()[1].stats().unwrap();
    assert_eq!(
        (first.allowed, first.denied),
        (2, 1),
        "peeks are not decisions"
    );
    assert_eq!((second.allowed, second.denied), (2, 0));
}

#[test]
fn at_the_key_cap_a_denial_is_under_the_keys_own_tier() {
    use tollgate::AtCapacity;
    let limiter: KeyedLimiter<String> = KeyedLimiter::builder(Limit::per_minute(10).unwrap())
        .tiers([Limit::per_minute(100).unwrap()], |k: &String| {
            usize::from(k.starts_with("pro"))
        })
        .clock(ManualClock::new())
        .max_keys(0, AtCapacity::Deny)
        .build();
    let d = limiter.check_key("pro-a");
    assert!(d.is_denied());
    assert_eq!(d.limit(), 100);
    assert_eq!(
        d.retry_after(),
        Duration::from_millis(600),
        "one token of 100 per minute"
    );
    assert_eq!(limiter.check_key("free").limit(), 10);
}
