//! loom models of the bucket's compare-and-swap protocol. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --test loom`.
#![cfg(loom)]

use std::sync::Arc;
use std::time::Duration;

use loom::thread;
use tollgate::{Limit, ManualClock, TokenBucket};

fn bucket(capacity: u64) -> (Arc<TokenBucket<ManualClock>>, ManualClock) {
    let clock = ManualClock::new();
    let limit = Limit::new(capacity, 1, Duration::from_secs(1)).unwrap();
    (
        Arc::new(TokenBucket::with_clock(limit, clock.clone())),
        clock,
    )
}

/// (a) Three threads take one token each from a bucket of two; no time passes.
#[test]
fn three_threads_two_tokens() {
    loom::model(|| {
        let (b, _clock) = bucket(2);
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || b.check().is_allowed())
            })
            .collect();
        let allowed = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&a| a)
            .count();
        assert_eq!(allowed, 2);
        assert_eq!(b.try_acquire(0).unwrap().remaining(), 0);
    });
}

/// (b) Two threads acquire while a third moves the clock one step: granted <= C + q.
#[test]
fn acquire_racing_a_refill_step() {
    loom::model(|| {
        let (b, clock) = bucket(1);
        let ticker = thread::spawn(move || clock.advance(Duration::from_secs(1)));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || b.check().is_allowed() as u64)
            })
            .collect();
        let granted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        ticker.join().unwrap();
        assert!((1..=2).contains(&granted), "granted {granted}");
        // Nothing invented: what was granted plus what is left is at most all that arrived
        // (a token that arrived while the bucket was full is not kept).
        let left = b.try_acquire(0).unwrap().remaining();
        assert!(granted + left <= 2, "granted {granted}, left {left}");
    });
}

/// (c) `try_acquire(2)` racing `try_acquire(1)` on a bucket of two never double-spends.
#[test]
fn two_and_one_never_double_spend() {
    loom::model(|| {
        let (b, _clock) = bucket(2);
        let b2 = b.clone();
        let t2 = thread::spawn(move || b2.try_acquire(2).unwrap());
        let b1 = b.clone();
        let t1 = thread::spawn(move || b1.try_acquire(1).unwrap());
        let (d2, d1) = (t2.join().unwrap(), t1.join().unwrap());
        let consumed = 2 * d2.is_allowed() as u64 + d1.is_allowed() as u64;
        assert!(consumed <= 2, "double spend: {d2:?} {d1:?}");
        assert!(consumed >= 1, "one of them must win");
        let left = b.try_acquire(0).unwrap().remaining();
        assert_eq!(consumed + left, 2);
        if d2.is_allowed() {
            assert!(d1.is_denied());
            assert_eq!(d2.remaining(), 0);
        }
    });
}

/// A refund racing an acquire on an empty bucket: the acquire wins only if it follows the
/// refund, and the token is counted once either way.
#[test]
fn refund_racing_acquire() {
    loom::model(|| {
        let (b, _clock) = bucket(1);
        assert!(b.check().is_allowed());
        let b1 = b.clone();
        let refunder = thread::spawn(move || b1.refund(1).remaining());
        let b2 = b.clone();
        let taker = thread::spawn(move || b2.check().is_allowed() as u64);
        let after_refund = refunder.join().unwrap();
        let granted = taker.join().unwrap();
        let left = b.snapshot().remaining();
        assert_eq!(granted + left, 1, "granted {granted}, left {left}");
        assert_eq!(after_refund, 1, "the refund found the bucket empty");
    });
}

/// A limit change (capacity 2 to 3, keeping tokens) racing an acquire: the acquire is decided
/// wholly under one limit, and its token is neither lost nor counted twice.
#[test]
fn set_limit_racing_acquire() {
    loom::model(|| {
        let (b, _clock) = bucket(2);
        let b1 = b.clone();
        let changer = thread::spawn(move || {
            let three = Limit::new(3, 1, Duration::from_secs(1)).unwrap();
            let _ = b1.set_limit(three, tollgate::Inherit::Keep);
        });
        let b2 = b.clone();
        let taker = thread::spawn(move || b2.check());
        changer.join().unwrap();
        let d = taker.join().unwrap();
        assert!(d.is_allowed(), "a token was there under either limit");
        assert!(matches!(d.capacity(), 2 | 3), "decided under one limit");
        // Either order leaves 2 - 1 = 1: the change keeps what the acquire left, or the
        // acquire takes from what the change kept.
        assert_eq!(b.snapshot().remaining(), 1);
        assert_eq!(b.limit().capacity(), 3);
    });
}

mod keyed {
    use super::*;
    use tollgate::KeyedLimiter;

    /// A limiter (capacity 1, idle_ttl 1 s) whose key 1 was drained at time 0 and has since
    /// been idle long enough to be full and evictable.
    fn idle_limiter() -> Arc<KeyedLimiter<u64>> {
        let clock = ManualClock::new();
        let limiter = KeyedLimiter::builder(Limit::new(1, 1, Duration::from_secs(1)).unwrap())
            .clock(clock.clone())
            .idle_ttl(Duration::from_secs(1))
            .shards(1)
            .build();
        assert!(limiter.check_key(&1).is_allowed());
        clock.advance(Duration::from_secs(10));
        Arc::new(limiter)
    }

    /// An acquire racing the eviction of its key: granted <= C, and the token it took is in
    /// the bucket the map holds afterwards (it did not land on a removed bucket).
    #[test]
    fn acquire_racing_eviction() {
        loom::model(|| {
            let limiter = idle_limiter();
            let l = limiter.clone();
            let acquirer = thread::spawn(move || l.check_key(&1).is_allowed());
            let l = limiter.clone();
            let evictor = thread::spawn(move || l.evict_idle());
            let allowed = acquirer.join().unwrap();
            let evicted = evictor.join().unwrap();
            assert!(allowed, "the bucket was full");
            assert!(evicted <= 1);
            assert_eq!(limiter.len(), 1);
            let d = limiter.try_acquire_key(&1, 0).unwrap();
            assert_eq!(
                d.remaining(),
                0,
                "the granted token must show in the live bucket"
            );
        });
    }

    /// Two first touches of one key: one bucket, one token granted.
    #[test]
    fn racing_first_touches() {
        loom::model(|| {
            let limiter = idle_limiter();
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let l = limiter.clone();
                    thread::spawn(move || l.check_key(&2).is_allowed() as u64)
                })
                .collect();
            let granted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(granted, 1);
            assert_eq!(limiter.len(), 2);
        });
    }

    /// A limiter (capacity 2, nothing refills within the model) whose key 1 holds 1 token.
    fn half_used() -> Arc<KeyedLimiter<u64>> {
        let limiter = KeyedLimiter::builder(Limit::new(2, 1, Duration::from_secs(3600)).unwrap())
            .clock(ManualClock::new())
            .shards(1)
            .build();
        assert!(limiter.check_key(&1).is_allowed());
        Arc::new(limiter)
    }

    fn four() -> Limit {
        Limit::new(4, 1, Duration::from_secs(3600)).unwrap()
    }

    /// A tier's limit change (capacity 2 to 4, proportional) racing an acquire on a key: the
    /// acquire is decided wholly under one limit, and the key's bucket moves over once, with
    /// the acquire's token neither lost nor counted twice.
    #[test]
    fn keyed_set_limit_racing_acquire() {
        loom::model(|| {
            let limiter = half_used();
            let l = limiter.clone();
            let changer =
                thread::spawn(move || l.set_limit(four(), tollgate::Inherit::Proportional));
            let l = limiter.clone();
            let taker = thread::spawn(move || l.check_key(&1));
            changer.join().unwrap();
            let d = taker.join().unwrap();
            assert!(d.is_allowed(), "a token was there under either limit");
            let left = limiter.try_acquire_key(&1, 0).unwrap();
            assert_eq!(left.capacity(), 4);
            // Before the change: 1 - 1 = 0, then 0 of 4. After: 1 of 2 is 2 of 4, minus 1.
            match d.capacity() {
                2 => assert_eq!(left.remaining(), 0),
                4 => assert_eq!(left.remaining(), 1),
                other => panic!("decided under limit {other}"),
            }
            assert_eq!(limiter.len(), 1);
        });
    }

    /// Two calls meet a key whose limit changed: one seals and moves the bucket, the other
    /// waits for it; both tokens come from the moved bucket.
    #[test]
    fn keyed_racing_migrations() {
        loom::model(|| {
            let limiter = half_used();
            limiter.set_limit(four(), tollgate::Inherit::Proportional); // key 1: 2 of 4, still under the old limit's entry
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let l = limiter.clone();
                    thread::spawn(move || l.check_key(&1))
                })
                .collect();
            for h in handles {
                let d = h.join().unwrap();
                assert!(d.is_allowed());
                assert_eq!(d.capacity(), 4);
            }
            assert_eq!(limiter.try_acquire_key(&1, 0).unwrap().remaining(), 0);
            assert_eq!(limiter.len(), 1);
        });
    }

    /// A key idle and full under a replaced limit: a sweep (judging it under the new limit)
    /// races a call that moves it. Whoever wins, the call's token shows in the live bucket.
    #[test]
    fn keyed_migration_racing_eviction() {
        loom::model(|| {
            let limiter = idle_limiter();
            let two = Limit::new(2, 1, Duration::from_secs(1)).unwrap();
            limiter.set_limit(two, tollgate::Inherit::Proportional);
            let l = limiter.clone();
            let acquirer = thread::spawn(move || l.check_key(&1));
            let l = limiter.clone();
            let evictor = thread::spawn(move || l.evict_idle());
            let d = acquirer.join().unwrap();
            assert!(evictor.join().unwrap() <= 1);
            assert!(d.is_allowed());
            assert_eq!(d.capacity(), 2, "decided under the limit in force");
            assert_eq!(limiter.len(), 1);
            assert_eq!(limiter.try_acquire_key(&1, 0).unwrap().remaining(), 1);
        });
    }

    /// Two evictors racing on one idle bucket: it is removed once.
    #[test]
    fn racing_evictors() {
        loom::model(|| {
            let limiter = idle_limiter();
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let l = limiter.clone();
                    thread::spawn(move || l.evict_idle())
                })
                .collect();
            let removed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(removed, 1);
            assert!(limiter.is_empty());
        });
    }

    /// contract §3, a stale reading racing eviction: a call reads the clock at 0, when key 1 was
    /// just drained (capacity 1), and may be preempted while the clock moves 10 s on and the
    /// key's full, idle bucket is evicted. A never-evicting limiter has one token for that call
    /// and a call at 10 s together; a bucket recreated at the stale step would give two.
    #[test]
    fn stale_reading_racing_eviction() {
        loom::model(|| {
            let clock = ManualClock::new();
            let limiter = Arc::new(
                KeyedLimiter::<u64>::builder(Limit::new(1, 1, Duration::from_secs(1)).unwrap())
                    .clock(clock.clone())
                    .idle_ttl(Duration::ZERO)
                    .shards(1)
                    .build(),
            );
            assert!(limiter.check_key(&1).is_allowed());
            let l = limiter.clone();
            let stale = thread::spawn(move || l.check_key(&1).is_allowed() as u64);
            let l = limiter.clone();
            let c = clock.clone();
            let evictor = thread::spawn(move || {
                c.advance(Duration::from_secs(10));
                l.evict_idle()
            });
            let a = stale.join().unwrap();
            assert!(evictor.join().unwrap() <= 1);
            let b = limiter.check_key(&1).is_allowed() as u64;
            assert_eq!(a + b, 1, "granted {a} + {b} after the drain");
        });
    }

    /// Two limit changes at once: they apply one after the other, and the key's bucket is
    /// converted through both in that order.
    #[test]
    fn concurrent_set_limits() {
        loom::model(|| {
            let limiter = half_used(); // key 1: 1 of 2
            let changers: Vec<_> = [4, 8]
                .into_iter()
                .map(|c| {
                    let l = limiter.clone();
                    thread::spawn(move || {
                        let limit = Limit::new(c, 1, Duration::from_secs(3600)).unwrap();
                        l.set_limit(limit, tollgate::Inherit::Proportional);
                    })
                })
                .collect();
            for c in changers {
                c.join().unwrap();
            }
            let d = limiter.try_acquire_key(&1, 0).unwrap();
            // 2 -> 4 -> 8: 1 of 2 is 2 of 4 is 4 of 8; 2 -> 8 -> 4: 4 of 8 is 2 of 4.
            match d.capacity() {
                8 => assert_eq!(d.remaining(), 4),
                4 => assert_eq!(d.remaining(), 2),
                other => panic!("limit {other}"),
            }
            assert_eq!(limiter.limit().capacity(), d.capacity());
        });
    }

    /// A tier's limit change racing a key's first touch: the new key is decided under one
    /// limit and its bucket ends where that order leads.
    #[test]
    fn set_limit_racing_first_touch() {
        loom::model(|| {
            let limiter = half_used();
            let l = limiter.clone();
            let changer =
                thread::spawn(move || l.set_limit(four(), tollgate::Inherit::Proportional));
            let l = limiter.clone();
            let toucher = thread::spawn(move || l.check_key(&5));
            changer.join().unwrap();
            let d = toucher.join().unwrap();
            assert!(d.is_allowed());
            let left = limiter.try_acquire_key(&5, 0).unwrap();
            assert_eq!(left.capacity(), 4);
            match d.capacity() {
                // Full 2, one taken: 1 of 2, then 2 of 4.
                2 => assert_eq!(left.remaining(), 2),
                // An untouched bucket under the new limit: 4, one taken.
                4 => assert_eq!(left.remaining(), 3),
                other => panic!("decided under limit {other}"),
            }
        });
    }

    /// The key cap (1 key, overflow) under two racing new keys: one bucket is created, the
    /// other key draws from the overflow bucket, and the count of keys stays right: once the
    /// bucket is evicted, a new key gets a bucket again.
    #[test]
    fn key_cap_accounting_with_overflow() {
        loom::model(|| {
            let clock = ManualClock::new();
            let limiter = Arc::new(
                KeyedLimiter::<u64>::builder(Limit::new(1, 1, Duration::from_secs(1)).unwrap())
                    .clock(clock.clone())
                    .idle_ttl(Duration::ZERO)
                    .max_keys(1, tollgate::AtCapacity::Overflow)
                    .shards(1)
                    .build(),
            );
            let handles: Vec<_> = [2u64, 3]
                .into_iter()
                .map(|k| {
                    let l = limiter.clone();
                    thread::spawn(move || l.check_key(&k).is_allowed())
                })
                .collect();
            for h in handles {
                assert!(h.join().unwrap(), "a bucket or the full overflow bucket");
            }
            assert_eq!(limiter.len(), 1, "the cap holds");
            clock.advance(Duration::from_secs(10));
            assert_eq!(limiter.evict_idle(), 1);
            assert!(limiter.check_key(&4).is_allowed());
            assert_eq!(limiter.len(), 1, "the evicted key's place was given back");
        });
    }
}

/// contract §2, a multi-limit rollback across a refill. Limit 0: 1 per second (C = 1); limit 1:
/// 1 per hour. X takes from both or neither; T takes limit 1's token; Z moves the clock one
/// step on and takes from limit 0. Z and W (after all) both run in step 1, in which limit 0
/// has at most one token whatever X did: they are never both granted.
#[test]
fn multi_rollback_across_a_refill() {
    loom::model(|| {
        let clock = ManualClock::new();
        let limits = Arc::new(tollgate::MultiBucket::with_clock(
            Limit::new(1, 1, Duration::from_secs(1)).unwrap(),
            [Limit::new(1, 1, Duration::from_secs(3600)).unwrap()],
            clock.clone(),
        ));
        let l = limits.clone();
        let x = thread::spawn(move || l.check().is_allowed());
        let l = limits.clone();
        let t = thread::spawn(move || l.buckets()[1].check().is_allowed());
        let l = limits.clone();
        let z = thread::spawn(move || {
            clock.advance(Duration::from_secs(1));
            l.buckets()[0].check().is_allowed()
        });
        let (_, _, z) = (x.join().unwrap(), t.join().unwrap(), z.join().unwrap());
        let w = limits.buckets()[0].check().is_allowed();
        assert!(!(z && w), "limit 0 granted two tokens in step 1");
    });
}

/// The coarse clock's upkeep handshake (`src/upkeep.rs`): the upkeep ticks twice and parks if
/// the second tick saw no reader, while a reader reads twice (the second time with a precise
/// clock behind the stored time); then the main thread reads. No reader waits, no reading goes
/// back, and the upkeep never stays parked past a read: each park is woken exactly once, by the
/// first read that finds it.
#[test]
fn upkeep_park_racing_readers() {
    loom::model(|| {
        let u = Arc::new(tollgate::LoomUpkeep::new(0));
        let upkeep = {
            let u = u.clone();
            thread::spawn(move || {
                u.tick(10);
                !u.tick(20) && u.try_park()
            })
        };
        let reader = {
            let u = u.clone();
            thread::spawn(move || {
                let (a, woke_a) = u.read(30);
                let (b, woke_b) = u.read(5);
                assert!(b >= a, "time went back: {b} after {a}");
                (b, woke_a as usize + woke_b as usize)
            })
        };
        let (last, woken) = reader.join().unwrap();
        let parked = upkeep.join().unwrap();
        let (t, woke) = u.read(40);
        assert!(t >= last, "time went back: {t} after {last}");
        assert!(!u.is_parked(), "a read left the upkeep parked");
        assert_eq!(
            woken + woke as usize,
            parked as usize,
            "each park, one wake"
        );
    });
}

/// In-flight limits: two threads ask for the one slot of a key while a sweep retires idle
/// counters; at most one holds a permit at a time, a release is never lost, and the key admits
/// again afterwards (no permit is taken from a retired counter).
#[test]
fn in_flight_never_exceeds_max_across_a_sweep() {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use std::num::NonZeroU64;
    use tollgate::InFlightLimiter;
    loom::model(|| {
        let limiter: Arc<InFlightLimiter<u64>> =
            Arc::new(InFlightLimiter::new(NonZeroU64::new(1).unwrap()));
        let holders = Arc::new(AtomicUsize::new(0));
        // The key's entry exists and is idle: the sweep may retire it mid-way.
        drop(limiter.try_acquire(&1).unwrap());
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (limiter, holders) = (limiter.clone(), holders.clone());
                thread::spawn(move || {
                    if let Ok(permit) = limiter.try_acquire(&1) {
                        assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        holders.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                })
            })
            .collect();
        let sweeper = {
            let limiter = limiter.clone();
            thread::spawn(move || {
                limiter.sweep();
            })
        };
        for w in workers {
            w.join().unwrap();
        }
        sweeper.join().unwrap();
        assert_eq!(limiter.in_flight(&1), 0);
        let permit = limiter.try_acquire(&1).expect("released");
        assert!(limiter.try_acquire(&1).is_err());
        drop(permit);
    });
}

/// In-flight limits: a permit held across a sweep keeps its entry (a counter above zero is
/// never retired), so a second ask is refused until the release.
#[test]
fn a_held_permit_survives_a_sweep() {
    use std::num::NonZeroU64;
    use tollgate::InFlightLimiter;
    loom::model(|| {
        let limiter: Arc<InFlightLimiter<u64>> =
            Arc::new(InFlightLimiter::new(NonZeroU64::new(1).unwrap()));
        let permit = limiter.try_acquire(&1).unwrap();
        let sweeper = {
            let limiter = limiter.clone();
            thread::spawn(move || limiter.sweep())
        };
        let other = {
            let limiter = limiter.clone();
            thread::spawn(move || limiter.try_acquire(&1).is_ok())
        };
        assert!(!other.join().unwrap(), "the slot is held");
        assert_eq!(sweeper.join().unwrap(), 0);
        drop(permit);
        assert!(limiter.try_acquire(&1).is_ok());
    });
}
