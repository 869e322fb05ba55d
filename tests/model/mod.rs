//! The plain reference model of SPEC §2: one bucket, simple integer code, no atomics, no
//! packing, no wrap, no precomputation. Shared by the tests and the fuzz targets (included with
//! `#[path]`), so there is one model.

#![allow(dead_code)]

pub mod keyed;

/// One decision, with every field of SPEC §2 (waits in nanoseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDecision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub retry_after: u64,
    pub reset_after: u64,
    pub next_refill_after: u64,
}

/// One bucket by the letter of SPEC §2.
#[derive(Clone, Debug)]
pub struct Model {
    cap: u64,
    q: u64,
    a: u128,
    b: u128,
    epoch: u64,
    tokens: u64,
    mark: u64,
}

impl Model {
    /// A full bucket created at clock reading `epoch`. Interval mode: `R` tokens at the end of
    /// every `interval_ns`; greedy: one token every `interval_ns / R`.
    pub fn new(cap: u64, refill_amount: u64, interval_ns: u64, greedy: bool, epoch: u64) -> Model {
        let (a, b, q) = if greedy {
            (refill_amount as u128, interval_ns as u128, 1)
        } else {
            (1, interval_ns as u128, refill_amount)
        };
        Model {
            cap,
            q,
            a,
            b,
            epoch,
            tokens: cap,
            mark: 0,
        }
    }

    /// Step index of clock reading `t`: `floor((t - epoch) * a / b)`, 0 before the epoch.
    pub fn k(&self, t: u64) -> u64 {
        if t < self.epoch {
            return 0;
        }
        ((t - self.epoch) as u128 * self.a / self.b) as u64
    }

    /// First instant of step `j`: `epoch + ceil(j * b / a)`.
    fn start(&self, j: u128) -> u128 {
        self.epoch as u128 + (j * self.b).div_ceil(self.a)
    }

    fn wait(&self, j: u128, t: u64) -> u64 {
        (self.start(j).min(u64::MAX as u128) as u64).saturating_sub(t)
    }

    /// `acquire(n)` at clock reading `t`. `Err(())` for `n > C`, and nothing changes.
    pub fn acquire(&mut self, t: u64, n: u64) -> Result<ModelDecision, ()> {
        if n > self.cap {
            return Err(());
        }
        let k = self.k(t);
        if k > self.mark {
            let add = (k - self.mark) as u128 * self.q as u128;
            self.tokens = (self.tokens as u128 + add).min(self.cap as u128) as u64;
            self.mark = k;
        }
        let allowed = self.tokens >= n;
        if allowed {
            self.tokens -= n;
        }
        let (m, tau) = (self.mark as u128, self.tokens);
        let steps_for = |want: u64| ((want - tau) as u128).div_ceil(self.q as u128);
        Ok(ModelDecision {
            allowed,
            limit: self.cap,
            remaining: tau,
            retry_after: if allowed {
                0
            } else {
                self.wait(m + steps_for(n), t)
            },
            reset_after: if tau == self.cap {
                0
            } else {
                self.wait(m + steps_for(self.cap), t)
            },
            next_refill_after: if tau == self.cap {
                0
            } else {
                self.wait(m + 1, t)
            },
        })
    }

    /// Tokens now (after the last call).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// The model's view of a tollgate decision, for comparison.
pub fn observe(d: &tollgate::Decision) -> ModelDecision {
    ModelDecision {
        allowed: d.is_allowed(),
        limit: d.limit(),
        remaining: d.remaining(),
        retry_after: d.retry_after().as_nanos() as u64,
        reset_after: d.reset_after().as_nanos() as u64,
        next_refill_after: d.next_refill_after().as_nanos() as u64,
    }
}

/// One step of a trace.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Move the clock forward (nanoseconds).
    Advance(u64),
    /// Move the clock back (nanoseconds).
    Rewind(u64),
    /// `try_acquire(n)`.
    Acquire(u64),
}

/// Where traces start: far enough from 0 that rewinds can reach before the epoch.
pub const TRACE_START: u64 = 1 << 40;

/// Runs `ops` through a tollgate bucket on a `ManualClock` and through the model, and panics
/// on the first decision that differs. Limits that tollgate rejects are skipped. The clock is
/// kept within half the limit's wrap horizon of the epoch (beyond it tollgate may under-refill
/// by design; `tests/bucket.rs` checks that case). Returns the number of decisions compared.
pub fn check_trace(cap: u64, amount: u64, interval_ns: u64, greedy: bool, ops: &[Op]) -> usize {
    use std::time::Duration;
    let interval = Duration::from_nanos(interval_ns);
    let limit = if greedy {
        tollgate::Limit::greedy(cap, amount, interval)
    } else {
        tollgate::Limit::new(cap, amount, interval)
    };
    let Ok(limit) = limit else { return 0 };
    let clock = tollgate::ManualClock::new();
    clock.set(TRACE_START);
    let bucket = tollgate::TokenBucket::with_clock(limit, clock.clone());
    let mut model = Model::new(cap, amount, interval_ns, greedy, TRACE_START);
    let horizon = u64::try_from(limit.horizon().as_nanos()).unwrap_or(u64::MAX);
    let latest = TRACE_START.saturating_add(horizon / 2);
    let mut compared = 0;
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Advance(ns) => clock.set(clock_now(&clock).saturating_add(ns).min(latest)),
            Op::Rewind(ns) => clock.set(clock_now(&clock).saturating_sub(ns)),
            Op::Acquire(n) => {
                let t = clock_now(&clock);
                let got = bucket.try_acquire(n);
                let want = model.acquire(t, n);
                match (got, want) {
                    (Err(e), Err(())) => {
                        assert_eq!((e.requested, e.capacity), (n, cap), "op {i}");
                    }
                    (Ok(d), Ok(m)) => assert_eq!(
                        observe(&d),
                        m,
                        "op {i} ({op:?}) at t={t}, limit {limit:?}, ops {ops:?}"
                    ),
                    (got, want) => panic!("op {i}: bucket {got:?}, model {want:?}"),
                }
                compared += 1;
            }
        }
    }
    compared
}

fn clock_now(clock: &tollgate::ManualClock) -> u64 {
    use tollgate::Clock;
    clock.now()
}
