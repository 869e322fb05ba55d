//! Threads acquire while another thread moves a `ManualClock` one step at a time: the tokens
//! granted never exceed `C + q * steps` (SPEC §2), counted exactly.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use tollgate::{Limit, ManualClock, TokenBucket};

fn run(limit: Limit, step: Duration, q: u64, steps: u64, threads: usize, n: u64) {
    let clock = ManualClock::new();
    let bucket = TokenBucket::with_clock(limit, clock.clone());
    let granted = AtomicU64::new(0);
    let denied = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                start.wait();
                let (mut g, mut d) = (0, 0);
                // Until the clock stops and this thread has seen the bucket exhausted (time no
                // longer moves then, so that always comes).
                while !(done.load(Ordering::Acquire) && d > 0) {
                    if bucket.try_acquire(n).unwrap().is_allowed() {
                        g += n;
                    } else {
                        d += 1;
                    }
                }
                granted.fetch_add(g, Ordering::Relaxed);
                denied.fetch_add(d, Ordering::Relaxed);
            });
        }
        start.wait();
        for _ in 0..steps {
            clock.advance(step);
            for _ in 0..50 {
                std::hint::spin_loop();
            }
        }
        thread::sleep(Duration::from_millis(5));
        done.store(true, Ordering::Release);
    });
    let cap = limit.capacity();
    let granted = granted.into_inner();
    let left = bucket.try_acquire(0).unwrap().remaining();
    assert!(
        granted <= cap + q * steps,
        "granted {granted} > {cap} + {q} * {steps}"
    );
    // Nothing invented, nothing lost beyond the cap: what was granted plus what is left is
    // at most everything that ever arrived.
    assert!(granted + left <= cap + q * steps);
    // And nothing lost: the first C tokens were never subject to the cap, so they were all
    // granted or are still there.
    assert!(
        granted + left >= cap,
        "granted {granted} + left {left} < {cap}"
    );
}

#[test]
fn granted_never_exceeds_capacity_plus_refills() {
    let threads = 4;
    run(
        Limit::new(8, 1, Duration::from_micros(1)).unwrap(),
        Duration::from_micros(1),
        1,
        20_000,
        threads,
        1,
    );
    run(
        Limit::new(16, 4, Duration::from_millis(1)).unwrap(),
        Duration::from_millis(1),
        4,
        5_000,
        threads,
        3,
    );
    run(
        Limit::greedy(10, 10, Duration::from_millis(10)).unwrap(),
        Duration::from_millis(1),
        1,
        5_000,
        threads,
        2,
    );
}
