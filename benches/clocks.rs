//! The clocks a limiter could read, side by side in one run (issue 18): tollgate's default
//! `CoarseClock` (a time stored by an upkeep thread that parks when unused), the same stored
//! time kept by a thread that never parks (tollgate before 0.1's change; the same read), the
//! OS coarse monotonic clock (`CLOCK_MONOTONIC_COARSE` through the vDSO: no thread, the
//! kernel tick's resolution) and the precise clock (`MonotonicClock`, quanta's TSC).
//!
//! `cargo bench --bench clocks`; smoke run: `-- --quick`. Idle cost (CPU of a process that made
//! one call and sleeps): `cargo run --release --example idle_clock`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::{Clock, CoarseClock, MonotonicClock};

/// The never-parking upkeep: a thread storing the precise time every millisecond, forever.
static ALWAYS_ON: AtomicU64 = AtomicU64::new(0);

fn start_always_on() {
    let clock = MonotonicClock::new();
    ALWAYS_ON.store(clock.now(), Ordering::Relaxed);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(1));
        ALWAYS_ON.fetch_max(clock.now(), Ordering::Relaxed);
    });
}

#[cfg(target_os = "linux")]
fn os_coarse_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn clocks(c: &mut Criterion) {
    #[cfg(target_os = "linux")]
    {
        let res = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
        eprintln!(
            "CLOCK_MONOTONIC_COARSE resolution here: {} ns",
            res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64
        );
    }
    start_always_on();
    let mut g = c.benchmark_group("clock");
    let coarse = CoarseClock::new();
    g.bench_function("coarse-parking (default)", |b| {
        b.iter(|| black_box(coarse.now()))
    });
    g.bench_function("coarse-always-on", |b| {
        b.iter(|| black_box(ALWAYS_ON.load(Ordering::Relaxed)))
    });
    #[cfg(target_os = "linux")]
    g.bench_function("os-coarse (vDSO)", |b| b.iter(|| black_box(os_coarse_ns())));
    let precise = MonotonicClock::new();
    g.bench_function("precise", |b| b.iter(|| black_box(precise.now())));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = clocks
}
criterion_main!(benches);
