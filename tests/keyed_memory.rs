//! Memory stays proportional to the active keys without any call from the user: 2,000,000
//! distinct keys stream through `check_key` with about 10,000 active at a time.
#![cfg(not(loom))]

#[path = "support/counting.rs"]
mod counting;

use std::time::Duration;

use tollgate::{KeyedLimiter, Limit, ManualClock};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const ACTIVE: u64 = 10_000;
const STREAM: u64 = 2_000_000;

#[test]
fn memory_follows_the_active_set() {
    let clock = ManualClock::new();
    // One new key arrives every µs (manual time) and is touched again 5 ms later; idle_ttl is
    // 5 ms. The active set, the keys touched within the last idle_ttl, is then ACTIVE keys.
    let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(Limit::per_second(1_000).unwrap())
        .clock(clock.clone())
        .idle_ttl(Duration::from_millis(5))
        .build();
    let base = counting::live();
    // The largest live size over a warm window (100k..500k keys) and over the rest of the
    // stream: maxima, not one sample, which could fall at a trough right after a sweep.
    let (mut max_len, mut max_live, mut warm_max) = (0usize, 0usize, 0usize);
    for i in 0..STREAM {
        clock.advance(Duration::from_micros(1));
        assert!(limiter.check_key(&i).is_allowed());
        if i >= ACTIVE / 2 {
            assert!(limiter.check_key(&(i - ACTIVE / 2)).is_allowed());
        }
        if i % 1_000 == 0 {
            max_len = max_len.max(limiter.len());
            let live = counting::live().saturating_sub(base);
            if (100_000..500_000).contains(&i) {
                warm_max = warm_max.max(live);
            }
            if i >= 500_000 {
                max_live = max_live.max(live);
            }
        }
    }
    let peak = counting::peak().saturating_sub(base);
    eprintln!(
        "keyed memory: {STREAM} keys streamed, {ACTIVE} active: max len {max_len}, max live bytes \
         over 100k..500k keys {warm_max}, after {max_live}, peak {peak} \
         ({} B per active key)",
        peak / ACTIVE as usize
    );
    let active_set = ACTIVE as usize;
    assert!(
        max_len <= 3 * active_set,
        "len {max_len} > 3 x {active_set}"
    );
    // Allocated memory: no growth with the stream (the last 1,500,000 keys never take it
    // above 1.5x the most it held over the 400,000 before), and at most 512 bytes per active
    // key at the peak.
    assert!(max_live <= warm_max * 3 / 2, "{max_live} vs {warm_max}");
    assert!(
        peak <= 512 * active_set,
        "peak {peak} B for {active_set} active keys"
    );
}
