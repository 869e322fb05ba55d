//! The keyed limiter against contract §3: decisions identical to a per-key model that never
//! evicts, one bucket per first touch under races, and the key cap under a flood.
#![cfg(not(loom))]

mod model;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use model::keyed::{check_keyed, KOp};
use proptest::prelude::*;
use tollgate::{AtCapacity, KeyedLimiter, Limit, ManualClock};

fn kop() -> impl Strategy<Value = KOp> {
    prop_oneof![
        (0u64..4).prop_map(KOp::Advance), // scaled to steps below
        any::<u64>().prop_map(KOp::Advance),
        any::<u64>().prop_map(KOp::Rewind),
        (0u8..6, 0u64..10).prop_map(|(k, n)| KOp::Acquire(k, n)),
        (0u8..6, 0u64..10).prop_map(|(k, n)| KOp::Acquire(k, n)),
        (0u8..6, 0u64..10, any::<u64>()).prop_map(|(k, n, b)| KOp::Stale(k, n, b)),
        Just(KOp::Evict),
        (
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<bool>(),
            any::<u8>()
        )
            .prop_map(
                |(tier, cap, amount, stretch, greedy, inherit)| KOp::SetLimit {
                    tier,
                    cap,
                    amount,
                    stretch,
                    greedy,
                    inherit
                }
            ),
    ]
}

static COMPARED: AtomicU64 = AtomicU64::new(0);
static EVICTED: AtomicU64 = AtomicU64::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_500, ..ProptestConfig::default() })]

    #[test]
    fn evicting_limiter_equals_models_that_never_evict(
        cap in 1u64..6, amount_raw in 1u64..6, step_ns in 1u64..5_000, greedy in any::<bool>(),
        ttl_steps in 0u64..4, ops in prop::collection::vec(kop(), 1..300)
    ) {
        let amount = 1 + amount_raw % cap;
        let (c, e) = check_keyed(cap, amount, step_ns, greedy, ttl_steps, &ops);
        COMPARED.fetch_add(c as u64, Ordering::Relaxed);
        EVICTED.fetch_add(e as u64, Ordering::Relaxed);
    }
}

#[test]
fn zz_report() {
    eprintln!(
        "keyed: decisions compared {}, buckets evicted {}, limit changes {}",
        COMPARED.load(Ordering::Relaxed),
        EVICTED.load(Ordering::Relaxed),
        model::keyed::CHANGES.load(Ordering::Relaxed)
    );
}

#[test]
fn eviction_happens_and_is_invisible() {
    // A hand trace that surely evicts, then re-creates the bucket.
    let ops: Vec<KOp> = [KOp::Acquire(1, 3), KOp::Acquire(2, 1), KOp::Advance(3)]
        .into_iter()
        .chain(std::iter::repeat_n(KOp::Advance(3), 10))
        .chain([
            KOp::Evict,
            KOp::Acquire(1, 2),
            KOp::Acquire(1, 2),
            KOp::Acquire(2, 0),
        ])
        .collect();
    let (compared, evicted) = check_keyed(3, 1, 1_000, false, 2, &ops);
    assert_eq!(compared, 5);
    assert_eq!(evicted, 2);
}

#[test]
fn racing_first_touches_create_one_bucket() {
    let threads = 8;
    for round in 0..50u64 {
        let limiter: KeyedLimiter<u64> =
            KeyedLimiter::builder(Limit::new(5, 1, Duration::from_secs(3600)).unwrap())
                .clock(ManualClock::new())
                .build();
        let granted = AtomicU64::new(0);
        let start = Barrier::new(threads);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..3 {
                        if limiter.check_key(&round).is_allowed() {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(limiter.len(), 1);
        assert_eq!(
            granted.load(Ordering::Relaxed),
            5,
            "exactly C granted, no second bucket"
        );
    }
}

#[test]
fn key_cap_holds_under_a_flood() {
    for policy in [AtCapacity::Overflow, AtCapacity::Deny] {
        let clock = ManualClock::new();
        let limiter: KeyedLimiter<u64> =
            KeyedLimiter::builder(Limit::new(3, 1, Duration::from_secs(1)).unwrap())
                .clock(clock.clone())
                .idle_ttl(Duration::from_secs(60))
                .max_keys(1_000, policy)
                .shards(4)
                .build();
        // Existing users.
        for user in 0..10u64 {
            assert!(limiter.check_key(&user).is_allowed());
        }
        // A flood of 50,000 new keys, none ever idle long enough to evict.
        let mut flood_allowed = 0;
        for key in 1_000_000..1_050_000u64 {
            if limiter.check_key(&key).is_allowed() {
                flood_allowed += 1;
            }
            assert!(limiter.len() <= 1_000);
        }
        assert_eq!(limiter.len(), 1_000);
        match policy {
            // 990 keys got their own bucket; the rest shared one bucket of 3.
            AtCapacity::Overflow => assert_eq!(flood_allowed, 990 + 3),
            AtCapacity::Deny => assert_eq!(flood_allowed, 990),
            other => panic!("no expectation for {other:?}"),
        }
        // Existing users are unaffected: each still has 2 of its 3 tokens.
        for user in 0..10u64 {
            assert_eq!(limiter.try_acquire_key(&user, 0).unwrap().remaining(), 2);
        }
        // Once the flood's buckets are idle and full, new keys get room again.
        clock.advance(Duration::from_secs(120));
        assert!(limiter.check_key(&7_000_000).is_allowed());
        assert!(limiter.len() < 1_000);
    }
}

#[test]
fn string_keys_are_queried_with_str() {
    let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_minute(2).unwrap());
    assert!(limiter.check_key("k").is_allowed());
    assert!(limiter.check_key("k").is_allowed());
    assert!(limiter.check_key("k").is_denied());
    assert!(limiter.try_acquire_key("other", 3).is_err());
    assert_eq!(limiter.len(), 1, "an oversize request creates no bucket");
}

#[test]
fn background_evictor_evicts_and_stops() {
    let clock = ManualClock::new();
    let limiter = std::sync::Arc::new(
        KeyedLimiter::<u64>::builder(Limit::per_second(10).unwrap())
            .clock(clock.clone())
            .idle_ttl(Duration::from_millis(1))
            .build(),
    );
    for k in 0..100 {
        let _ = limiter.check_key(&k);
    }
    clock.advance(Duration::from_secs(5));
    let evictor = limiter.spawn_evictor(Duration::from_millis(1));
    assert!(evictor.is_running());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !limiter.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(limiter.is_empty());
    drop(evictor);
}
