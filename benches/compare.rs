//! tollgate vs governor, side by side in the same criterion groups and the same run.
//!
//! `cargo bench --bench compare` (about 3 minutes on 2 cores); smoke run: `-- --quick`.
//! `python3 benches/table.py` prints BENCHMARKS.md's table (with ratios) from the results.
//!
//! Clock classes: tollgate's `MonotonicClock` vs governor's `QuantaClock` (both quanta, read on
//! every call; governor's default), and tollgate's `CoarseClock` vs governor's
//! `QuantaUpkeepClock` (a time kept by an upkeep thread; each library's fastest real clock, and
//! tollgate's default). "default" rows use each library as it comes.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use governor::clock::{QuantaClock, QuantaUpkeepClock};
use governor::{Quota, RateLimiter};
use tollgate::{Clock, CoarseClock, KeyedLimiter, Limit, ManualClock, MonotonicClock, TokenBucket};

/// Governor's upkeep clock takes quanta's one upkeep slot, so it is made first and kept for the
/// whole run (tollgate's coarse clock does not need the slot).
fn governor_upkeep() -> QuantaUpkeepClock {
    static CLOCK: OnceLock<QuantaUpkeepClock> = OnceLock::new();
    CLOCK
        .get_or_init(|| QuantaUpkeepClock::from_interval(Duration::from_millis(1)).unwrap())
        .clone()
}

/// A limit that a benchmark never exhausts: 2^32 tokens, all back every second.
fn tg_open() -> Limit {
    let max = tollgate::MAX_CAPACITY;
    Limit::new(max, max, Duration::from_secs(1)).unwrap()
}

fn gv_open() -> Quota {
    Quota::per_second(NonZeroU32::MAX)
}

/// A limit a benchmark never exhausts either, with a 1 ns step (one token per nanosecond, burst
/// 1,000; a call takes far longer than a nanosecond): on a precise clock every call lands in a
/// new step and runs the whole refill, as a bucket whose calls are further apart than its step
/// does. (`tg_open`'s 1 s step lets most calls skip the refill.)
fn tg_refilling() -> Limit {
    Limit::greedy(1_000, 1_000, Duration::from_micros(1)).unwrap()
}

fn gv_refilling() -> Quota {
    Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
        .allow_burst(NonZeroU32::new(1_000).unwrap())
}

/// One token per hour, spent up front: every call is a denial.
fn tg_closed() -> Limit {
    Limit::per_hour(1).unwrap()
}

fn gv_closed() -> Quota {
    Quota::per_hour(NonZeroU32::MIN)
}

/// `n` keys 0..n in a fixed pseudo-random order (xorshift Fisher-Yates).
fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

fn direct(c: &mut Criterion) {
    let upkeep = governor_upkeep();
    let coarse = CoarseClock::new();
    let mut g = c.benchmark_group("direct");

    let tg_precise = TokenBucket::with_clock(tg_open(), MonotonicClock::new());
    let gv_precise = RateLimiter::direct_with_clock(gv_open(), QuantaClock::default());
    let tg_coarse = TokenBucket::with_clock(tg_open(), coarse.clone());
    let gv_upkeep = RateLimiter::direct_with_clock(gv_open(), upkeep.clone());
    let tg_manual = TokenBucket::with_clock(tg_open(), ManualClock::new());
    g.bench_function("allow/tollgate-precise", |b| {
        b.iter(|| black_box(tg_precise.check().is_allowed()))
    });
    g.bench_function("allow/governor-precise", |b| {
        b.iter(|| black_box(gv_precise.check().is_ok()))
    });
    g.bench_function("allow/tollgate-coarse", |b| {
        b.iter(|| black_box(tg_coarse.check().is_allowed()))
    });
    g.bench_function("allow/governor-upkeep", |b| {
        b.iter(|| black_box(gv_upkeep.check().is_ok()))
    });
    g.bench_function("allow/tollgate-manual", |b| {
        b.iter(|| black_box(tg_manual.check().is_allowed()))
    });

    let tg_precise = TokenBucket::with_clock(tg_refilling(), MonotonicClock::new());
    let gv_precise = RateLimiter::direct_with_clock(gv_refilling(), QuantaClock::default());
    g.bench_function("allow-refilling/tollgate-precise", |b| {
        b.iter(|| black_box(tg_precise.check().is_allowed()))
    });
    g.bench_function("allow-refilling/governor-precise", |b| {
        b.iter(|| black_box(gv_precise.check().is_ok()))
    });

    let tg_precise = TokenBucket::with_clock(tg_closed(), MonotonicClock::new());
    let gv_precise = RateLimiter::direct_with_clock(gv_closed(), QuantaClock::default());
    let tg_coarse = TokenBucket::with_clock(tg_closed(), coarse.clone());
    let gv_upkeep = RateLimiter::direct_with_clock(gv_closed(), upkeep.clone());
    let tg_manual = TokenBucket::with_clock(tg_closed(), ManualClock::new());
    assert!(tg_precise.check().is_allowed() && gv_precise.check().is_ok());
    assert!(tg_coarse.check().is_allowed() && gv_upkeep.check().is_ok());
    assert!(tg_manual.check().is_allowed());
    g.bench_function("deny/tollgate-precise", |b| {
        b.iter(|| black_box(tg_precise.check().is_allowed()))
    });
    g.bench_function("deny/governor-precise", |b| {
        b.iter(|| black_box(gv_precise.check().is_ok()))
    });
    g.bench_function("deny/tollgate-coarse", |b| {
        b.iter(|| black_box(tg_coarse.check().is_allowed()))
    });
    g.bench_function("deny/governor-upkeep", |b| {
        b.iter(|| black_box(gv_upkeep.check().is_ok()))
    });
    g.bench_function("deny/tollgate-manual", |b| {
        b.iter(|| black_box(tg_manual.check().is_allowed()))
    });
    g.finish();
}

fn tg_keyed<C: Clock + 'static>(n: u64, clock: C) -> KeyedLimiter<u64> {
    let limiter = KeyedLimiter::builder(tg_open()).clock(clock).build();
    for k in 0..n {
        let _ = limiter.check_key(&k);
    }
    limiter
}

fn keyed_hit(c: &mut Criterion) {
    let upkeep = governor_upkeep();
    let mut g = c.benchmark_group("keyed/hit");
    for n in [1_000u64, 100_000, 1_000_000] {
        let order = shuffled(n, 0x9E37_79B9_7F4A_7C15);
        // Each library's default set-up (tollgate's default clock is its fastest, the coarse
        // clock), tollgate on the precise clock (governor's default clock class), and governor
        // on its fastest clock.
        let tg_default = tg_keyed(n, tollgate::DefaultClock::new());
        let tg_precise = tg_keyed(n, MonotonicClock::new());
        let gv_default = RateLimiter::keyed(gv_open());
        let gv_best = RateLimiter::dashmap_with_clock(gv_open(), upkeep.clone());
        for k in 0..n {
            let _ = gv_default.check_key(&k);
            let _ = gv_best.check_key(&k);
        }
        let mut i = 0usize;
        let mut next = || {
            i = if i + 1 == order.len() { 0 } else { i + 1 };
            order[i]
        };
        g.bench_with_input(BenchmarkId::new("tollgate-default", n), &n, |b, _| {
            b.iter(|| black_box(tg_default.check_key(&next()).is_allowed()))
        });
        g.bench_with_input(BenchmarkId::new("governor-default", n), &n, |b, _| {
            b.iter(|| black_box(gv_default.check_key(&next()).is_ok()))
        });
        g.bench_with_input(BenchmarkId::new("tollgate-precise", n), &n, |b, _| {
            b.iter(|| black_box(tg_precise.check_key(&next()).is_allowed()))
        });
        g.bench_with_input(BenchmarkId::new("governor-best", n), &n, |b, _| {
            b.iter(|| black_box(gv_best.check_key(&next()).is_ok()))
        });
    }
    g.finish();
}

fn keyed_new_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("keyed/new_key");
    // A fresh limiter per sample (not timed); `iters` first touches of distinct keys (timed).
    g.bench_function("tollgate-default", |b| {
        b.iter_custom(|iters| {
            let limiter: KeyedLimiter<u64> = KeyedLimiter::new(tg_open());
            let start = Instant::now();
            for k in 0..iters {
                let _ = black_box(limiter.check_key(&k));
            }
            let t = start.elapsed();
            drop(limiter);
            t
        })
    });
    g.bench_function("governor-default", |b| {
        b.iter_custom(|iters| {
            let limiter = RateLimiter::keyed(gv_open());
            let start = Instant::now();
            for k in 0..iters {
                let _ = black_box(limiter.check_key(&k));
            }
            let t = start.elapsed();
            drop(limiter);
            t
        })
    });
    g.finish();
}

/// Runs `op(thread, i)` `iters` times split over two threads started together; returns the
/// slower thread's time (the wall time of the pair).
fn two_threads(iters: u64, op: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = Barrier::new(2);
    let per = iters.div_ceil(2);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|t| {
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..per {
                        op(t, i);
                    }
                    start.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("contended");
    let tg = TokenBucket::new(tg_open());
    let gv = RateLimiter::direct(gv_open());
    g.bench_function("direct/tollgate-default", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |_, _| {
                let _ = black_box(tg.check());
            })
        })
    });
    g.bench_function("direct/governor-default", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |_, _| {
                let _ = black_box(gv.check());
            })
        })
    });
    let n = 100_000u64;
    let orders = [shuffled(n, 1), shuffled(n, 2)];
    let tg = tg_keyed(n, tollgate::DefaultClock::new());
    let gv = RateLimiter::keyed(gv_open());
    for k in 0..n {
        let _ = gv.check_key(&k);
    }
    g.bench_function("keyed-100000/tollgate-default", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |t, i| {
                let _ = black_box(tg.check_key(&orders[t][(i % n) as usize]));
            })
        })
    });
    g.bench_function("keyed-100000/governor-default", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, |t, i| {
                let _ = black_box(gv.check_key(&orders[t][(i % n) as usize]));
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = direct, keyed_hit, keyed_new_key, contended
}
criterion_main!(benches);
