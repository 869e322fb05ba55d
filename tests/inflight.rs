//! The in-flight limiter on real threads: the count never exceeds the limit while permits come
//! and go and sweeps retire idle counters; memory returns after a flood of keys.
#![cfg(not(loom))]

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tollgate::InFlightLimiter;

#[test]
fn never_more_than_max_across_threads_and_sweeps() {
    const MAX: u64 = 3;
    let limiter: Arc<InFlightLimiter<u64>> =
        Arc::new(InFlightLimiter::new(NonZeroU64::new(MAX).unwrap()));
    let holders: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (limiter, holders) = (limiter.clone(), holders.clone());
            std::thread::spawn(move || {
                let mut granted = 0;
                for i in 0..50_000u64 {
                    let key = (i + t) % 4;
                    if let Ok(permit) = limiter.try_acquire(&key) {
                        granted += 1;
                        let now = holders[key as usize].fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= MAX, "{now} holders of key {key}");
                        assert!(permit.in_flight() <= MAX);
                        holders[key as usize].fetch_sub(1, Ordering::SeqCst);
                    }
                    if i % 97 == 0 {
                        limiter.sweep();
                    }
                }
                granted
            })
        })
        .collect();
    let granted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(granted > 0);
    for key in 0..4 {
        assert_eq!(limiter.in_flight(&key), 0, "a release was lost");
    }
    // Every counter is idle now: a sweep removes them all.
    limiter.sweep();
    assert!(limiter.is_empty());
}

#[test]
fn a_flood_of_keys_is_swept_by_new_keys() {
    let limiter: InFlightLimiter<u64> = InFlightLimiter::new(NonZeroU64::new(1).unwrap());
    for key in 0..100_000u64 {
        drop(limiter.try_acquire(&key).unwrap());
    }
    // New keys sweep when the map doubles: it never holds much more than twice the keys in
    // flight (here none) plus the sweep threshold.
    assert!(limiter.len() <= 2048, "{} entries", limiter.len());
    let held = limiter.try_acquire(&1).unwrap();
    assert!(limiter.try_acquire(&1).is_err());
    drop(held);
}
