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
    let (mut max_len, mut max_live) = (0usize, 0usize);
    let mut live_at_warm = 0;
    for i in 0..STREAM {
        clock.advance(Duration::from_micros(1));
        assert!(limiter.check_key(&i).is_allowed());
        if i >= ACTIVE / 2 {
            assert!(limiter.check_key(&(i - ACTIVE / 2)).is_allowed());
        }
        if i % 1_000 == 0 {
            max_len = max_len.max(limiter.len());
            let live = counting::live().saturating_sub(base);
            if i == 100_000 {
                live_at_warm = live;
            }
            if i >= 100_000 {
                max_live = max_live.max(live);
            }
        }
    }
    let peak = counting::peak().saturating_sub(base);
    eprintln!(
        "keyed memory: {STREAM} keys streamed, {ACTIVE} active: max len {max_len}, live bytes \
         at 100k keys {live_at_warm}, max live bytes after {max_live}, peak {peak} \
         ({} B per active key)",
        peak / ACTIVE as usize
    );
    let active_set = ACTIVE as usize;
    assert!(
        max_len <= 3 * active_set,
        "len {max_len} > 3 x {active_set}"
    );
    // Allocated memory: no growth with the stream (after 100k keys, 1,900,000 more keys
    // leave it within 1.5x), and at most 512 bytes per active key at the peak.
    assert!(
        max_live <= live_at_warm * 3 / 2,
        "{max_live} vs {live_at_warm}"
    );
    assert!(
        peak <= 512 * active_set,
        "peak {peak} B for {active_set} active keys"
    );
}
