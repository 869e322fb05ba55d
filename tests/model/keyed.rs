//! The keyed trace runner: an evicting keyed limiter against per-key models that never evict
//! (contract §3), with live limit changes on its two tiers. Shared by `tests/model_keyed.rs` and the
//! `keyed_vs_model` fuzz target.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tollgate::{Clock, Inherit, KeyedLimiter, Limit, ManualClock};

use super::{observe, Model};

/// One step of a multi-key trace.
#[derive(Clone, Copy, Debug)]
pub enum KOp {
    Advance(u64),
    Rewind(u64),
    Acquire(u8, u64),
    /// `try_acquire_key(key, n)` whose first clock reading is stale by `behind % (64 steps)`,
    /// at least 1 ns (a call preempted after it read the clock, contract §3): it must decide as the
    /// never-evicting model does at that reading, or at a later one (a first touch reads the
    /// clock again after its miss).
    Stale(u8, u64, u64),
    Evict,
    /// `set_tier_limit(tier % 2, ..)`: capacity `1 + cap % 8`, amount `1 + amount % cap`, the
    /// step `1 + stretch % 4` times the trace's, greedy or not; the policy `inherit % 3`.
    SetLimit {
        tier: u8,
        cap: u8,
        amount: u8,
        stretch: u8,
        greedy: bool,
        inherit: u8,
    },
}

/// A manual clock whose next reading can be made stale once; counts its readings.
#[derive(Clone)]
struct StaleOnce {
    clock: ManualClock,
    behind: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reads: std::sync::Arc<AtomicUsize>,
}

impl Clock for StaleOnce {
    fn now(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let behind = self.behind.swap(0, Ordering::Relaxed);
        self.clock.now().saturating_sub(behind)
    }
}

/// Limit changes applied by `check_keyed` so far (for reports).
pub static CHANGES: AtomicUsize = AtomicUsize::new(0);

/// A limit from its parameters (capacity, amount, step in ns, greedy), as the model takes them:
/// (the limit, the model's parameters).
fn limit_of(
    cap: u64,
    amount: u64,
    step_ns: u64,
    greedy: bool,
) -> Option<(Limit, (u64, u64, u64, bool))> {
    let interval = if greedy { step_ns * amount } else { step_ns };
    let limit = super::make_limit(cap, amount, interval, greedy)?;
    Some((limit, (cap, amount, interval, greedy)))
}

/// Runs a multi-key trace through an evicting keyed limiter and per-key models that never
/// evict; every decision must be identical. Keys are in tier `key % 2` (both tiers start with
/// the same limit); a key first seen is a copy of its tier's untouched model, which sees every
/// limit change. The clock never steps back more than `idle_ttl` below the latest time seen
/// (the documented condition for invisible eviction). Returns (decisions compared, buckets
/// evicted). Limits tollgate rejects are skipped. Callers keep the numbers small
/// (`step_ns * 64` and `step_ns * amount * 4` must fit in a `u64`).
pub fn check_keyed(
    cap: u64,
    amount: u64,
    step_ns: u64,
    greedy: bool,
    ttl_steps: u64,
    ops: &[KOp],
) -> (usize, usize) {
    let Some((limit, params)) = limit_of(cap, amount, step_ns, greedy) else {
        return (0, 0);
    };
    let clock = ManualClock::new();
    clock.set(1 << 40);
    let ttl = Duration::from_nanos(step_ns * ttl_steps);
    let stale = StaleOnce {
        clock: clock.clone(),
        behind: Default::default(),
        reads: Default::default(),
    };
    let limiter: KeyedLimiter<u8> = KeyedLimiter::builder(limit)
        .tiers([limit], |key: &u8| usize::from(key % 2))
        .clock(stale.clone())
        .idle_ttl(ttl)
        .shards(2)
        .build();
    let epoch = clock.now();
    let (cap0, amount0, interval0, greedy0) = params;
    let untouched = Model::new(cap0, amount0, interval0, greedy0, epoch);
    let mut fresh = [untouched.clone(), untouched];
    let mut models: HashMap<u8, Model> = HashMap::new();
    let (mut compared, mut evicted) = (0, 0);
    let mut latest = epoch;
    // Limit changes are ordered in time even when the clock steps back (as tollgate orders
    // them).
    let mut last_change = epoch;
    for op in ops {
        match *op {
            KOp::Advance(x) if x < 4 => clock.advance(Duration::from_nanos(x * step_ns)),
            KOp::Advance(x) => clock.advance(Duration::from_nanos(x % (step_ns * 64))),
            KOp::Rewind(x) => {
                let floor = latest.saturating_sub(ttl.as_nanos() as u64);
                clock.set(clock.now().saturating_sub(x % (step_ns * 8)).max(floor));
            }
            KOp::Acquire(key, n) => {
                let n = n % (cap.max(8) + 2);
                let t = clock.now();
                let model = models
                    .entry(key)
                    .or_insert_with(|| fresh[usize::from(key % 2)].clone());
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
            KOp::Stale(key, n, behind) => {
                let n = n % (cap.max(8) + 2);
                let t = clock.now();
                let behind = 1 + behind % (step_ns * 64);
                let t_stale = t.saturating_sub(behind);
                let model = models
                    .entry(key)
                    .or_insert_with(|| fresh[usize::from(key % 2)].clone());
                stale.behind.store(behind, Ordering::Relaxed);
                stale.reads.store(0, Ordering::Relaxed);
                let got = limiter.try_acquire_key(&key, n);
                // The call decides at its stale reading, or (a first touch, which reads the
                // clock again after its miss) at the second, current one.
                let at = if stale.reads.load(Ordering::Relaxed) >= 2 {
                    t
                } else {
                    t_stale
                };
                stale.behind.store(0, Ordering::Relaxed);
                let want = model.acquire(at, n);
                match got {
                    Ok(d) => assert_eq!(
                        observe(&d),
                        want.unwrap(),
                        "stale key {key} n {n} at {at} (stale {t_stale}, now {t}) ops {ops:?}"
                    ),
                    Err(_) => assert!(want.is_err()),
                }
                compared += 1;
            }
            KOp::Evict => evicted += limiter.evict_idle(),
            KOp::SetLimit {
                tier,
                cap,
                amount,
                stretch,
                greedy,
                inherit,
            } => {
                let tier = tier % 2;
                let cap = 1 + u64::from(cap % 8);
                let amount = 1 + u64::from(amount) % cap;
                let step = step_ns * (1 + u64::from(stretch % 4));
                let Some((limit, params)) = limit_of(cap, amount, step, greedy) else {
                    continue;
                };
                let inherit = [Inherit::Keep, Inherit::Proportional, Inherit::Reset]
                    [usize::from(inherit % 3)];
                if limiter
                    .set_tier_limit(usize::from(tier), limit, inherit)
                    .is_err()
                {
                    continue; // out of limit slots: nothing changed
                }
                if fresh[usize::from(tier)].params() == params && inherit != Inherit::Reset {
                    continue; // the limit in force: nothing changes, not even the time order
                }
                last_change = last_change.max(clock.now());
                CHANGES.fetch_add(1, Ordering::Relaxed);
                fresh[usize::from(tier)].set_limit(last_change, params, inherit);
                for (_, model) in models.iter_mut().filter(|(k, _)| *k % 2 == tier) {
                    model.set_limit(last_change, params, inherit);
                }
            }
        }
        latest = latest.max(clock.now());
    }
    (compared, evicted)
}
