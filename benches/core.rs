//! The floor: one uncontended CAS on an `AtomicU64` and each clock read, so BENCHMARKS.md can say
//! how close to the hardware the limiter runs. `cargo bench --bench core`; smoke run:
//! `-- --quick`. The limiter itself is measured in `benches/compare.rs`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::{Clock, CoarseClock, ManualClock, MonotonicClock};

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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = floor
}
criterion_main!(benches);
