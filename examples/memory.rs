//! Memory per key, tollgate vs governor, measured with a counting global allocator (requested
//! bytes; the allocator's own per-block overhead is not included, for either library).
//!
//! `cargo run --release --example memory`
//!
//! 1. Bytes per key with 1,000,000 `u64` keys.
//! 2. Churn: 2,000,000 distinct keys streamed with about 10,000 active (each key touched when
//!    it arrives and again 5 ms later, one arrival per µs of manual time, idle_ttl 5 ms). Peak
//!    live bytes for each; governor as its users run it by default (no `retain_recent` calls).

#[path = "../tests/support/counting.rs"]
mod counting;

use std::num::NonZeroU32;
use std::time::Duration;

use counting::{live, reset_peak};
use governor::clock::FakeRelativeClock;
use governor::{Quota, RateLimiter};
use tollgate::{KeyedLimiter, Limit, ManualClock};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const KEYS: u64 = 1_000_000;
const STREAM: u64 = 2_000_000;
const ACTIVE: u64 = 10_000;

fn main() {
    println!("memory per key ({KEYS} u64 keys, requested heap bytes):");
    let before = live();
    // A manual clock that never moves: no bucket becomes idle, so every key is still held
    // when the bytes are counted (on a real clock, sweeps could evict early keys meanwhile).
    let tg: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_second(1_000).unwrap())
        .clock(ManualClock::new())
        .build();
    for k in 0..KEYS {
        let _ = tg.check_key(&k);
    }
    let tg_bytes = live() - before;
    assert_eq!(tg.len() as u64, KEYS, "every key held");
    println!(
        "  tollgate KeyedLimiter : {:>6.1} B/key ({} keys)",
        tg_bytes as f64 / KEYS as f64,
        tg.len()
    );
    drop(tg);

    let before = live();
    let gv = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(1_000).unwrap()));
    for k in 0..KEYS {
        let _ = gv.check_key(&k);
    }
    let gv_bytes = live() - before;
    println!(
        "  governor keyed        : {:>6.1} B/key ({} keys)",
        gv_bytes as f64 / KEYS as f64,
        gv.len()
    );
    drop(gv);

    println!("\nchurn: {STREAM} distinct keys streamed, {ACTIVE} active (peak live bytes):");
    let base = reset_peak();
    let clock = ManualClock::new();
    let tg: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_second(1_000).unwrap())
        .clock(clock.clone())
        .idle_ttl(Duration::from_millis(5))
        .build();
    for i in 0..STREAM {
        clock.advance(Duration::from_micros(1));
        let _ = tg.check_key(&i);
        if i >= ACTIVE / 2 {
            let _ = tg.check_key(&(i - ACTIVE / 2));
        }
    }
    let tg_peak = counting::peak() - base;
    println!(
        "  tollgate KeyedLimiter : peak {:>11} B, {} keys held at the end",
        tg_peak,
        tg.len()
    );
    drop(tg);

    let base = reset_peak();
    let fake = FakeRelativeClock::default();
    let gv = RateLimiter::dashmap_with_clock(
        Quota::per_second(NonZeroU32::new(1_000).unwrap()),
        fake.clone(),
    );
    for i in 0..STREAM {
        fake.advance(Duration::from_micros(1));
        let _ = gv.check_key(&i);
        if i >= ACTIVE / 2 {
            let _ = gv.check_key(&(i - ACTIVE / 2));
        }
    }
    let gv_peak = counting::peak() - base;
    println!(
        "  governor keyed        : peak {:>11} B, {} keys held at the end",
        gv_peak,
        gv.len()
    );
    println!(
        "\nchurn peak ratio tollgate/governor: {:.4}",
        tg_peak as f64 / gv_peak as f64
    );
}
