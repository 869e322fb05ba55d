//! Memory stays proportional to the active keys without any call from the user: 2,000,000
//! distinct keys stream through `check_key` with about 10,000 active at a time.
#![cfg(not(loom))]

#[path = "support/counting.rs"]
mod counting;

use std::time::Duration;

use tollgate::{KeyedLimiter, Limit, ManualClock};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// The tests measure one process-wide allocator: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const ACTIVE: u64 = 10_000;
const STREAM: u64 = 2_000_000;

#[test]
fn memory_follows_the_active_set() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
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

/// Live limit changes never run out, and the limits they replace are freed once no key's
/// bucket holds them: a reload every second for a day (86,400 changes between two limits)
/// while one key is used all the time, one only now and then, and new keys come and go.
#[test]
fn a_change_every_second_for_a_day() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    use tollgate::Inherit;
    let clock = ManualClock::new();
    let (ten, twenty) = (
        Limit::new(10, 1, Duration::from_secs(1)).unwrap(),
        Limit::new(20, 1, Duration::from_secs(1)).unwrap(),
    );
    let limiter: KeyedLimiter<u64> = KeyedLimiter::builder(ten)
        .clock(clock.clone())
        .idle_ttl(Duration::from_secs(30))
        .build();
    let _ = limiter.check_key(&0);
    let base = counting::live();
    let mut max_live = 0;
    for s in 1..=86_400u64 {
        clock.advance(Duration::from_secs(1));
        let limit = if s % 2 == 0 { ten } else { twenty };
        limiter.set_limit(limit, Inherit::Keep);
        // Key 0 every second: under the limit in force, one token used each time.
        let d = limiter.check_key(&0);
        assert!(d.is_allowed(), "second {s}");
        assert_eq!(d.capacity(), limit.capacity());
        // Key 1 every hour; new keys every 10 s.
        if s % 3_600 == 0 {
            assert!(limiter.check_key(&1).is_allowed());
        }
        if s % 10 == 0 {
            assert!(limiter.check_key(&(1_000 + s)).is_allowed());
        }
        if s % 60 == 0 {
            limiter.evict_idle();
            max_live = max_live.max(counting::live().saturating_sub(base));
        }
    }
    assert_eq!(limiter.limit(), ten);
    // A replaced limit is a few hundred bytes; 86,400 kept would be over 20 MB.
    assert!(max_live < 1 << 20, "{max_live} bytes live above the start");
    assert!(limiter.len() <= 5, "{} keys held", limiter.len());
}
