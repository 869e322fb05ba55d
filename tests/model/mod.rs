//! The plain reference model of contract §2: one bucket, simple integer code, no atomics, no
//! packing, no wrap, no precomputation. Shared by the tests and the fuzz targets (included with
//! `#[path]`), so there is one model.

#![allow(dead_code)]

pub mod keyed;

/// One decision, with every field of contract §2 (waits in nanoseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDecision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub retry_after: u64,
    pub reset_after: u64,
    pub next_refill_after: u64,
}

/// One bucket by the letter of contract §2.
#[derive(Clone, Debug)]
pub struct Model {
    cap: u64,
    q: u64,
    a: u128,
    b: u128,
    epoch: u64,
    tokens: u64,
    mark: u64,
    /// The limit as given: (capacity, refill amount, interval, greedy).
    params: (u64, u64, u64, bool),
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
            params: (cap, refill_amount, interval_ns, greedy),
        }
    }

    /// `set_limit` at clock reading `t`: nothing when the limit is the one in force and the
    /// policy is not `Reset`. Otherwise refill to `t` under the old limit; the tokens follow the
    /// policy (keep, capped; the same fraction, rounded down; full); the new limit's refills
    /// count from the step of `t`, or from the start of the bucket's recorded step when that
    /// is later (a call with a later clock reading came first).
    pub fn set_limit(
        &mut self,
        t: u64,
        (cap, amount, interval_ns, greedy): (u64, u64, u64, bool),
        inherit: tollgate::Inherit,
    ) {
        use tollgate::Inherit;
        if (cap, amount, interval_ns, greedy) == self.params && inherit != Inherit::Reset {
            return;
        }
        let k = self.k(t);
        if k > self.mark {
            let add = (k - self.mark) as u128 * self.q as u128;
            self.tokens = (self.tokens as u128 + add).min(self.cap as u128) as u64;
            self.mark = k;
        }
        let from = if self.mark > k {
            (self.start(self.mark as u128).min(u64::MAX as u128) as u64).max(t)
        } else {
            t
        };
        let mut new = Model::new(cap, amount, interval_ns, greedy, self.epoch);
        new.tokens = match inherit {
            Inherit::Keep => self.tokens.min(cap),
            Inherit::Proportional => (self.tokens as u128 * cap as u128 / self.cap as u128) as u64,
            Inherit::Reset => cap,
            other => panic!("the model does not know {other:?}"),
        };
        new.mark = new.k(from);
        *self = new;
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

    /// The limit as given: (capacity, refill amount, interval, greedy).
    pub fn params(&self) -> (u64, u64, u64, bool) {
        self.params
    }

    /// Tokens now (after the last call).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Applies, at `t`, a call that was decided elsewhere: refill, then take `n` if it was
    /// granted (for the history without an undone take, where the other calls keep their
    /// outcomes).
    pub fn replay(&mut self, t: u64, n: u64, granted: bool) {
        let _ = self.acquire(t, 0);
        if granted {
            self.tokens = self.tokens.saturating_sub(n);
        }
    }

    /// Sets the tokens (after an undo, whose exact amount contract §2 bounds but does not fix).
    pub fn set_tokens(&mut self, tokens: u64) {
        self.tokens = tokens;
    }
}

/// The model's view of a tollgate decision, for comparison.
pub fn observe(d: &tollgate::Decision) -> ModelDecision {
    ModelDecision {
        allowed: d.is_allowed(),
        limit: d.capacity(),
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
    /// `reserve(n)` (a reservation still held is dropped first: its tokens stay spent).
    Reserve(u64),
    /// `cancel()` the reservation held, if any: an undo (contract §2).
    Cancel,
    /// `set_limit` to these numbers (skipped when `Limit` rejects them) with policy
    /// `inherit % 3` (keep, proportional, reset).
    SetLimit {
        cap: u64,
        amount: u64,
        interval_ns: u64,
        greedy: bool,
        inherit: u8,
    },
}

/// A limit from the model's parameters.
pub fn make_limit(
    cap: u64,
    amount: u64,
    interval_ns: u64,
    greedy: bool,
) -> Option<tollgate::Limit> {
    let interval = std::time::Duration::from_nanos(interval_ns);
    if greedy {
        tollgate::Limit::greedy(cap, amount, interval).ok()
    } else {
        tollgate::Limit::new(cap, amount, interval).ok()
    }
}

/// Where traces start: far enough from 0 that rewinds can reach before the epoch.
pub const TRACE_START: u64 = 1 << 40;

/// Runs `ops` through a tollgate bucket on a `ManualClock` and through the model, and panics
/// on the first decision that differs. Limits that tollgate rejects are skipped. The clock is
/// kept within half the limit's wrap horizon of the epoch (beyond it tollgate may under-refill
/// by design; `tests/bucket.rs` checks that case). Returns the number of decisions compared.
pub fn check_trace(cap: u64, amount: u64, interval_ns: u64, greedy: bool, ops: &[Op]) -> usize {
    let Some(limit) = make_limit(cap, amount, interval_ns, greedy) else {
        return 0;
    };
    let clock = tollgate::ManualClock::new();
    clock.set(TRACE_START);
    let bucket = tollgate::TokenBucket::with_clock(limit, clock.clone());
    let mut model = Model::new(cap, amount, interval_ns, greedy, TRACE_START);
    let horizon = u64::try_from(limit.horizon().as_nanos()).unwrap_or(u64::MAX);
    let mut latest = TRACE_START.saturating_add(horizon / 2);
    let mut seen = TRACE_START;
    let mut compared = 0;
    // The reservation held, and a model of the history without its take: every other call
    // replayed with the outcome it had. contract §2 bounds an undo by that history as long as no
    // explicit grant (here: a same-limit `Reset`, which is a `reset()`) came in between; after
    // one, the undo may return tokens the grant already covered (both are explicit), and only
    // the capacity bounds it.
    let mut held: Option<(tollgate::Reservation<'_, tollgate::ManualClock>, Model)> = None;
    let mut granted_since = false;
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Advance(ns) => {
                clock.set(clock_now(&clock).saturating_add(ns).min(latest));
                seen = seen.max(clock_now(&clock));
            }
            Op::Rewind(ns) => clock.set(clock_now(&clock).saturating_sub(ns)),
            Op::Acquire(n) => {
                let t = clock_now(&clock);
                let got = bucket.try_acquire(n);
                let want = model.acquire(t, n);
                if let (Some((_, without)), Ok(m)) = (&mut held, &want) {
                    without.replay(t, n, m.allowed);
                }
                match (got, want) {
                    (Err(e), Err(())) => {
                        assert_eq!((e.requested, e.capacity), (n, model.cap), "op {i}");
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
            Op::Reserve(n) => {
                held = None;
                let t = clock_now(&clock);
                let without = model.clone();
                let want = model.acquire(t, n);
                match (bucket.reserve(n), want) {
                    (Ok(r), Ok(m)) => {
                        assert_eq!(observe(r.decision()), m, "op {i} at t={t}, ops {ops:?}");
                        let mut without = without;
                        without.replay(t, 0, false);
                        held = Some((r, without));
                        granted_since = false;
                    }
                    (Err(tollgate::ReserveError::Denied(d)), Ok(m)) => {
                        assert_eq!(observe(&d), m, "op {i} at t={t}, ops {ops:?}");
                    }
                    (Err(tollgate::ReserveError::InsufficientCapacity(_)), Err(())) => {}
                    (got, want) => panic!("op {i}: reserve {got:?}, model {want:?}"),
                }
                compared += 1;
            }
            Op::Cancel => {
                let Some((r, mut without)) = held.take() else {
                    continue;
                };
                let t = clock_now(&clock);
                let d = r.cancel();
                let _ = model.acquire(t, 0);
                without.replay(t, 0, false);
                // Contract §2: an undo gives back at most what the history without the take holds,
                // and takes nothing.
                let most = if granted_since {
                    without.params().0
                } else {
                    without.tokens()
                };
                assert!(
                    model.tokens() <= d.remaining() && d.remaining() <= most,
                    "op {i}: undo left {}, the bucket held {}, without the take {}; ops {ops:?}",
                    d.remaining(),
                    model.tokens(),
                    without.tokens()
                );
                model.set_tokens(d.remaining());
                assert_eq!(
                    observe(&d),
                    model.acquire(t, 0).unwrap(),
                    "op {i}, ops {ops:?}"
                );
                compared += 1;
            }
            Op::SetLimit {
                cap,
                amount,
                interval_ns,
                greedy,
                inherit,
            } => {
                let Some(new) = make_limit(cap, amount, interval_ns, greedy) else {
                    continue;
                };
                let t = clock_now(&clock);
                // Keep every time the bucket saw within half of every limit's horizon.
                let horizon = u64::try_from(new.horizon().as_nanos()).unwrap_or(u64::MAX);
                let bound = TRACE_START.saturating_add(horizon / 2);
                if seen > bound {
                    continue;
                }
                let policy = [
                    tollgate::Inherit::Keep,
                    tollgate::Inherit::Proportional,
                    tollgate::Inherit::Reset,
                ][usize::from(inherit % 3)];
                let Ok(got) = bucket.set_limit(new, policy) else {
                    continue; // too many changes: nothing changed
                };
                latest = latest.min(bound);
                granted_since |= model.params() == (cap, amount, interval_ns, greedy)
                    && policy == tollgate::Inherit::Reset;
                model.set_limit(t, (cap, amount, interval_ns, greedy), policy);
                if let Some((_, without)) = &mut held {
                    without.set_limit(t, (cap, amount, interval_ns, greedy), policy);
                }
                let want = model.acquire(t, 0).unwrap();
                // The change's answer is a peek, which records the step: the history without the
                // reservation's take sees it too.
                if let Some((_, without)) = &mut held {
                    without.replay(t, 0, false);
                }
                assert_eq!(
                    observe(&got),
                    want,
                    "op {i} ({op:?}) at t={t}, limit {limit:?}, ops {ops:?}"
                );
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
