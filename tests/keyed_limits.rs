//! The keyed limiter's limits: tiers, live limit changes across every key, and the key cap.
#![cfg(not(loom))]

use std::time::Duration;

use tollgate::{KeyedLimiter, Limit, ManualClock};

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
    assert_eq!(take("bob", 1).capacity(), 2);
    assert_eq!(take("pro-ann", 1).capacity(), 100);
    assert_eq!(take("int-svc", 1).capacity(), 1_000);
    assert_eq!(take("bogus-x", 1).capacity(), 2);
    assert!(take("bob", 1).is_allowed());
    assert!(take("bob", 1).is_denied());
    assert_eq!(take("pro-ann", 50).remaining(), 49);
    assert!(
        limiter.try_acquire_key("bob", 3).is_err(),
        "above the free capacity"
    );
    let d = limiter.try_acquire_key("pro-new", 3).unwrap();
    assert_eq!(
        (d.is_allowed(), d.capacity(), d.remaining()),
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
    let _ = limiter.try_acquire_key("a", 6).unwrap(); // 4 left
    let _ = limiter.try_acquire_key("pro-1", 30).unwrap(); // 70 left
    limiter.set_limit(Limit::new(20, 2, s).unwrap(), Inherit::Proportional);
    assert_eq!(limiter.limit().capacity(), 20);
    assert_eq!(
        limiter.tier_limit(1).unwrap().capacity(),
        100,
        "tier 1 untouched"
    );
    let d = limiter.snapshot_key("a");
    assert_eq!((d.capacity(), d.remaining()), (20, 8), "4/10 of 20");
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
    let _ = limiter.check_key("idle");
    clock.advance(10 * s); // "idle" is full again, and evictable
    let _ = limiter.try_acquire_key("busy", 10).unwrap();
    assert_eq!(limiter.evict_idle(), 1);
    // Keep raises the capacity to 20: a full bucket keeps its 10 tokens, so an untouched key
    // (and the evicted one) starts with 10 as well, and refills to 20 at 1 per second.
    limiter.set_limit(Limit::new(20, 1, s).unwrap(), Inherit::Keep);
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
    use tollgate::Inherit;
    let s = Duration::from_secs(1);
    let (limiter, _clock) = keyed(10, s);
    let same = limiter.limit();
    let _ = limiter.try_acquire_key("a", 3).unwrap();
    for _ in 0..1_000 {
        limiter.set_limit(same, Inherit::Proportional); // a reload: changes nothing
    }
    assert_eq!(limiter.snapshot_key("a").remaining(), 7);
    // Changes never run out (there used to be 254 of them).
    let other = Limit::new(5, 1, s).unwrap();
    for i in 0..1_000 {
        let limit = if i % 2 == 0 { other } else { same };
        limiter.set_limit(limit, Inherit::Keep);
        limiter.set_tier_limit(1, limit, Inherit::Keep).unwrap();
    }
    assert_eq!(limiter.limit(), same);
    assert_eq!(
        limiter.snapshot_key("a").remaining(),
        5,
        "capped once at 5, kept since"
    );
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
                limiter.set_limit(Limit::new(cap, 1, hour).unwrap(), Inherit::Keep);
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
    assert_eq!(d.capacity(), 100);
    assert_eq!(
        d.retry_after(),
        Duration::from_millis(600),
        "one token of 100 per minute"
    );
    assert_eq!(limiter.check_key("free").capacity(), 10);
}

/// A charge after the fact on a new key at the key cap lands on the shared overflow bucket that
/// answers such keys.
#[test]
fn a_charge_at_the_key_cap_goes_to_the_overflow_bucket() {
    use tollgate::AtCapacity;
    let clock = ManualClock::new();
    let limiter: KeyedLimiter<String> =
        KeyedLimiter::builder(Limit::new(10, 1, Duration::from_secs(60)).unwrap())
            .clock(clock.clone())
            .max_keys(1, AtCapacity::Overflow)
            .build();
    assert!(limiter.check_key("a").is_allowed());
    // "b" is beyond the cap: its charge takes 7 from the overflow bucket.
    assert_eq!(limiter.charge_key("b", 7).remaining(), 3);
    let d = limiter.try_acquire_key("c", 3).unwrap();
    assert!(d.is_allowed());
    assert!(
        limiter.check_key("d").is_denied(),
        "the overflow bucket is empty"
    );
    assert_eq!(limiter.len(), 1);
}
