//! Core benches: the hardware floor (one CAS, each clock read) and one bucket's allow / deny
//! paths on each clock. `cargo bench --bench core`; quick smoke run: `-- --quick`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::{Clock, CoarseClock, Limit, ManualClock, MonotonicClock, TokenBucket};

fn floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    let word = AtomicU64::new(0);
    g.bench_function("cas_uncontended", |b| {
        b.iter(|| {
            let v = word.load(Ordering::Relaxed);
            black_box(word.compare_exchange_weak(v, v + 1, Ordering::Relaxed, Ordering::Relaxed))
        })
    });
    let precise = MonotonicClock::new();
    g.bench_function("clock/monotonic", |b| b.iter(|| black_box(precise.now())));
    let gv_precise = governor::clock::QuantaClock::default();
    g.bench_function("clock/governor-quanta", |b| {
        b.iter(|| black_box(governor::clock::Clock::now(&gv_precise)))
    });
    let coarse = CoarseClock::new();
    g.bench_function("clock/coarse", |b| b.iter(|| black_box(coarse.now())));
    let manual = ManualClock::new();
    g.bench_function("clock/manual", |b| b.iter(|| black_box(manual.now())));
    g.finish();
}

fn direct<C: Clock>(c: &mut Criterion, name: &str, clock: C) {
    let mut g = c.benchmark_group("direct");
    // allow: a limit no benchmark run can exhaust (2^32 tokens, all back every second).
    let max = tollgate::MAX_CAPACITY;
    let limit = Limit::new(max, max, Duration::from_secs(1)).unwrap();
    let b_allow = TokenBucket::with_clock(limit, &clock);
    g.bench_function(format!("allow/tollgate-{name}"), |b| {
        b.iter(|| black_box(b_allow.check()).is_allowed())
    });
    // deny: one token per hour, spent up front.
    let b_deny = TokenBucket::with_clock(Limit::per_hour(1).unwrap(), &clock);
    b_deny.check();
    g.bench_function(format!("deny/tollgate-{name}"), |b| {
        b.iter(|| black_box(b_deny.check()).is_allowed())
    });
    g.finish();
}

fn direct_all(c: &mut Criterion) {
    direct(c, "precise", MonotonicClock::new());
    direct(c, "coarse", CoarseClock::new());
    direct(c, "manual", ManualClock::new());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = floor, direct_all
}
criterion_main!(benches);
