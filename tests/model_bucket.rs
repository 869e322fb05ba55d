//! Differential test: random limits and random traces through the bucket and the reference
//! model (contract §2), every decision field equal, call for call.
#![cfg(not(loom))]

mod model;

use std::sync::atomic::{AtomicUsize, Ordering};

use model::{check_trace, Op};
use proptest::prelude::*;

static COMPARED: AtomicUsize = AtomicUsize::new(0);

fn capacity() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(1u64),
        Just(2),
        1..=16u64,
        1..=1_000u64,
        Just(1 << 24),
        1..=tollgate::MAX_CAPACITY,
        Just(tollgate::MAX_CAPACITY),
    ]
}

fn interval_ns() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(1u64),
        1..1_000u64,
        1..2_000_000_000u64,
        Just(1_000_000_000),
        Just(60_000_000_000),
        1..=tollgate::MAX_INTERVAL.as_nanos() as u64,
    ]
}

/// (capacity, refill amount, interval ns, greedy)
fn limit() -> impl Strategy<Value = (u64, u64, u64, bool)> {
    (capacity(), interval_ns(), any::<bool>(), any::<u64>()).prop_map(|(cap, ns, greedy, r)| {
        let amount = match r % 4 {
            0 => 1,
            1 => cap,
            _ => 1 + r % cap,
        };
        // Greedy needs a step of at least 1 ns.
        let ns = if greedy && ns < amount {
            amount + ns
        } else {
            ns
        };
        (cap, amount, ns, greedy)
    })
}

/// Raw ops; sizes are scaled to the limit's step in `scale`.
fn raw_op() -> impl Strategy<Value = (u8, u64)> {
    (0u8..15, any::<u64>())
}

fn scale(op: (u8, u64), cap: u64, step_ns: u64) -> Op {
    let (kind, x) = op;
    match kind {
        0 => Op::Advance(0),
        1 => Op::Advance(x % 1_000),
        2 => Op::Advance(step_ns.saturating_mul(x % 8)),
        3 => Op::Advance(step_ns.saturating_mul(x % 8).saturating_sub(1)),
        4 => Op::Advance(x), // huge: clamped to the horizon by the runner
        5 => Op::Rewind(x % (step_ns.saturating_mul(4).max(1))),
        6 => Op::Rewind(x),
        7 => Op::Acquire(0),
        8 => Op::Acquire(cap),
        9 => Op::Acquire(cap + 1 + x % 3),
        10 => Op::Acquire(1 + x % cap),
        11 => Op::Acquire(1),
        12 => Op::Reserve(1 + x % cap),
        13 => Op::Cancel,
        _ => {
            let cap = (1 + x % cap.saturating_mul(2)).min(tollgate::MAX_CAPACITY);
            let amount = 1 + (x >> 33) % cap;
            let greedy = (x >> 62) & 1 == 1;
            let ns = step_ns.saturating_mul(1 + (x >> 58) % 3);
            Op::SetLimit {
                cap,
                amount,
                interval_ns: if greedy {
                    ns.saturating_mul(amount)
                } else {
                    ns
                },
                greedy,
                inherit: (x >> 50) as u8,
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn bucket_equals_model((cap, amount, ns, greedy) in limit(),
                           ops in prop::collection::vec(raw_op(), 1..300)) {
        let step_ns = if greedy { (ns / amount).max(1) } else { ns };
        let ops: Vec<Op> = ops.into_iter().map(|o| scale(o, cap, step_ns)).collect();
        let n = check_trace(cap, amount, ns, greedy, &ops);
        COMPARED.fetch_add(n, Ordering::Relaxed);
    }
}

#[test]
fn zz_report_comparisons() {
    // Runs after the property test when tests run on one thread; a report, not an assertion.
    eprintln!(
        "decisions compared so far: {}",
        COMPARED.load(Ordering::Relaxed)
    );
}

#[test]
fn handpicked_traces() {
    use Op::*;
    let s = 1_000_000_000;
    // Classic: C=10, R=2, I=1s; burst of 15, then refills, a rewind, a peek, an oversize ask.
    let mut ops = vec![Acquire(1); 15];
    ops.extend([
        Advance(s - 1),
        Acquire(1),
        Advance(1),
        Acquire(1),
        Acquire(1),
        Acquire(1),
    ]);
    ops.extend([
        Rewind(3 * s),
        Acquire(0),
        Acquire(1),
        Advance(10 * s),
        Acquire(0),
        Acquire(11),
    ]);
    assert_eq!(check_trace(10, 2, s, false, &ops), 23);
    // Greedy 3 per second: T(1) = ceil(1e9 / 3).
    assert_eq!(check_trace(3, 3, s, true, &ops), 23);
    // Before the epoch: k = 0, waits measured from the real (earlier) time.
    let ops = [
        Acquire(1),
        Rewind(5 * s),
        Acquire(1),
        Acquire(0),
        Advance(6 * s),
        Acquire(1),
    ];
    assert_eq!(check_trace(1, 1, s, false, &ops), 4);
}
