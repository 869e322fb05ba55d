//! The keyed trace runner: an evicting keyed limiter against per-key models that never evict
//! (SPEC §3). Shared by `tests/keyed.rs` and the `keyed_vs_model` fuzz target.

use std::collections::HashMap;
use std::time::Duration;

use tollgate::{Clock, KeyedLimiter, Limit, ManualClock};

use super::{observe, Model};

/// One step of a multi-key trace.
#[derive(Clone, Copy, Debug)]
pub enum KOp {
    Advance(u64),
    Rewind(u64),
    Acquire(u8, u64),
    Evict,
}

/// Runs a multi-key trace through an evicting keyed limiter and per-key models that never
/// evict; every decision must be identical. The clock never steps back more than `idle_ttl`
/// below the latest time seen (the documented condition for invisible eviction). Returns
/// (decisions compared, buckets evicted). Limits tollgate rejects are skipped. Callers keep the
/// numbers small (`step_ns * 64` and `step_ns * amount` must fit in a `u64`).
pub fn check_keyed(
    cap: u64,
    amount: u64,
    step_ns: u64,
    greedy: bool,
    ttl_steps: u64,
    ops: &[KOp],
) -> (usize, usize) {
    let interval = if greedy { step_ns * amount } else { step_ns };
    let limit = if greedy {
        Limit::greedy(cap, amount, Duration::from_nanos(interval))
    } else {
        Limit::new(cap, amount, Duration::from_nanos(interval))
    };
    let Ok(limit) = limit else {
        return (0, 0);
    };
    let clock = ManualClock::new();
    clock.set(1 << 40);
    let ttl = Duration::from_nanos(step_ns * ttl_steps);
    let limiter: KeyedLimiter<u8> = KeyedLimiter::builder(limit)
        .clock(clock.clone())
        .idle_ttl(ttl)
        .shards(2)
        .build();
    let epoch = clock.now();
    let mut models: HashMap<u8, Model> = HashMap::new();
    let (mut compared, mut evicted) = (0, 0);
    let mut latest = epoch;
    for op in ops {
        match *op {
            KOp::Advance(x) if x < 4 => clock.advance(Duration::from_nanos(x * step_ns)),
            KOp::Advance(x) => clock.advance(Duration::from_nanos(x % (step_ns * 64))),
            KOp::Rewind(x) => {
                let floor = latest.saturating_sub(ttl.as_nanos() as u64);
                clock.set(clock.now().saturating_sub(x % (step_ns * 8)).max(floor));
            }
            KOp::Acquire(key, n) => {
                let n = n % (cap + 2);
                let t = clock.now();
                let model = models
                    .entry(key)
                    .or_insert_with(|| Model::new(cap, amount, interval, greedy, epoch));
                let want = model.acquire(t, n);
                match limiter.try_acquire_key(&key, n) {
                    Ok(d) => assert_eq!(
                        observe(&d),
                        want.unwrap(),
                        "key {key} n {n} t {t} ops {ops:?}"
                    ),
                    Err(_) => assert!(want.is_err()),
                }
                compared += 1;
            }
            KOp::Evict => evicted += limiter.evict_idle(),
        }
        latest = latest.max(clock.now());
    }
    (compared, evicted)
}
