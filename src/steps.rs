//! The arithmetic of a limit: time cut into refill steps, and the layout of the packed bucket
//! word. Pure numbers, below everything else: [`Limit`](crate::Limit) holds its [`Steps`], and
//! the step function ([`crate::state`]) works on the words laid out here.
//!
//! # Time as steps
//!
//! Time `t` is nanoseconds since the limiter's epoch. It is cut into steps:
//! `k(t) = floor(t * a / b)`, with `q` tokens per step. Interval mode: `a = 1, b = I, q = R`;
//! greedy mode: `a = R, b = I, q = 1` (I in nanoseconds). `a / b` is reduced by its gcd when
//! the limit is built, so most limits run with `a = 1` (and the division by `b` is a multiply,
//! see [`Divisor`]; most calls skip it, see [`Steps::step_index_near`]).
//! The first instant of step `j` is `T(j) = ceil(j * b / a)`.
//!
//! # Layout of the word
//!
//! ```text
//!  63                         token_bits   token_bits-1        0
//! +-------------------------------------+----------------------+
//! |  mark m mod 2^(64 - token_bits)     |  tokens τ (0..=C)    |
//! +-------------------------------------+----------------------+
//! ```
//!
//! `token_bits` is the smallest width in which `C + 1` fits, so the all-ones token field
//! never holds a valid count: the word `u64::MAX` is the tombstone that eviction uses.
//! With the largest capacity, 2^32, tokens take 33 bits and the mark 31.
//!
//! # Wrap
//!
//! The mark is kept modulo `2^M` (`M = 64 - token_bits`). The distance `d = (k - m) mod 2^M`
//! is read as a refill of `d` steps when `0 < d < 2^(M-1)`, and as "no progress" (a stale
//! reading or a clock that went back) otherwise. A distance at or beyond the *horizon*
//! `2^(M-1)` steps is therefore never read as more elapsed time than really passed: a wrap can
//! only under-refill, never over-admit. Limits are rejected when their horizon is shorter than
//! [`MIN_HORIZON`](crate::limit::MIN_HORIZON); typical limits have horizons of centuries
//! (e.g. 2^56 steps of 1 ms for capacity 100 in interval mode).

/// The word of a removed (evicted) bucket. Never a valid state: its token field exceeds any
/// capacity.
pub(crate) const TOMBSTONE: u64 = u64::MAX;

/// The word of a keyed bucket whose limit changed and whose entry is being replaced by one
/// under the new limit (see `keyed/migrate.rs`). Never a valid state (its token field is all ones, like
/// the tombstone's), and distinct from the tombstone, so nobody removes the entry meanwhile.
pub(crate) const SEALED: u64 = u64::MAX >> 1;

/// Whether `word` is the tombstone or the seal: no call may use it.
#[inline(always)]
pub(crate) fn is_dead(word: u64) -> bool {
    // The two words differ only in bit 63.
    word | (1 << 63) == u64::MAX
}

/// The numbers of a limit that decisions need: capacity, tokens per step, and the step rate
/// `a / b` (reduced; `b` in nanoseconds, `b >= a`: a step is at least 1 ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Rate {
    /// Capacity C.
    pub(crate) cap: u64,
    /// Tokens per step.
    pub(crate) q: u64,
    /// Step rate numerator.
    pub(crate) a: u64,
    /// Step rate denominator, in nanoseconds.
    pub(crate) b: u64,
}

impl Rate {
    /// The time an empty bucket takes to fill: the start of step `ceil(C / q)`.
    pub(crate) fn time_to_fill(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.step_start(self.cap.div_ceil(self.q)))
    }

    /// `T(j) = ceil(j * b / a)`: the first nanosecond (since the epoch) of step `j`,
    /// saturating at `u64::MAX`. Off the hot path: decisions compute their waits when asked.
    pub(crate) fn step_start(&self, j: u64) -> u64 {
        if self.a == 1 {
            j.saturating_mul(self.b)
        } else if self.a.checked_mul(self.b).is_some() {
            let (x, r) = (j / self.a, j % self.a);
            // r*b < a*b fits.
            let part = (r * self.b).div_ceil(self.a);
            x.checked_mul(self.b)
                .and_then(|v| v.checked_add(part))
                .unwrap_or(u64::MAX)
        } else {
            let v = (j as u128 * self.b as u128).div_ceil(self.a as u128);
            u64::try_from(v).unwrap_or(u64::MAX)
        }
    }
}

/// The step arithmetic of one limit, precomputed when the limit is built, so the hot path has
/// no division instruction (and no `u128` arithmetic for ordinary limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Steps {
    rate: Rate,
    /// Width of the token field.
    token_bits: u32,
    token_mask: u64,
    mark_mask: u64,
    /// `2^(M-1)`: distances below it are progress.
    horizon: u64,
    /// `ceil(C / q)`: the steps that fill an empty bucket; more add nothing.
    fill_steps: u64,
    /// `a * b` fits in a `u64`: the split `u64` formula for `k(t)` is exact.
    narrow: bool,
    /// Division by `b`, precomputed.
    by_b: Divisor,
    /// Marks below this take the fast path of [`Steps::step_index_near`]: `u64::MAX / b` when
    /// `a == 1` (so `(m + 1) * b` cannot overflow), 0 otherwise (never).
    near_limit: u64,
}

impl std::ops::Deref for Steps {
    type Target = Rate;
    #[inline(always)]
    fn deref(&self) -> &Rate {
        &self.rate
    }
}

/// Division by a constant fixed when the limit is built, as a multiply and shifts (Granlund and
/// Montgomery, "Division by invariant integers using multiplication", 1994, figure 4.1): exact
/// for every `u64` numerator and divisor, and several times cheaper than a `div` instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Divisor {
    d: u64,
    m: u64,
    sh1: u32,
    sh2: u32,
}

impl Divisor {
    /// `d >= 1`.
    pub(crate) fn new(d: u64) -> Divisor {
        // l = ceil(log2 d); m = floor(2^64 * (2^l - d) / d) + 1, which fits in 64 bits.
        let l = 64 - (d - 1).leading_zeros();
        let m = ((((1u128 << l) - d as u128) << 64) / d as u128) as u64 + 1;
        Divisor {
            d,
            m,
            sh1: l.min(1),
            sh2: l.saturating_sub(1),
        }
    }

    /// `n / d`.
    #[inline(always)]
    pub(crate) fn div(&self, n: u64) -> u64 {
        let t1 = ((self.m as u128 * n as u128) >> 64) as u64;
        // t1 <= n, so the sum does not overflow.
        (t1 + ((n - t1) >> self.sh1)) >> self.sh2
    }

    /// (`n / d`, `n % d`).
    #[inline(always)]
    pub(crate) fn div_rem(&self, n: u64) -> (u64, u64) {
        let q = self.div(n);
        (q, n - q * self.d)
    }
}

pub(crate) const fn gcd(mut x: u64, mut y: u64) -> u64 {
    while y != 0 {
        let r = x % y;
        x = y;
        y = r;
    }
    x
}

impl Steps {
    /// Builds the arithmetic for `q` tokens every `b / a` nanoseconds. Callers validate:
    /// `1 <= cap <= 2^32`, `1 <= q <= cap`, `1 <= a <= b`.
    pub(crate) fn new(cap: u64, q: u64, a: u64, b: u64) -> Steps {
        let g = gcd(a, b);
        let (a, b) = (a / g, b / g);
        let token_bits = 64 - (cap + 1).leading_zeros();
        Steps {
            rate: Rate { cap, q, a, b },
            token_bits,
            token_mask: (1u64 << token_bits) - 1,
            mark_mask: u64::MAX >> token_bits,
            horizon: 1u64 << (63 - token_bits),
            fill_steps: cap.div_ceil(q),
            narrow: a.checked_mul(b).is_some(),
            by_b: Divisor::new(b),
            near_limit: if a == 1 { u64::MAX / b } else { 0 },
        }
    }

    /// The numbers decisions need.
    #[inline(always)]
    pub(crate) fn rate(&self) -> &Rate {
        &self.rate
    }

    /// Steps within which a distance is read as forward progress: `2^(M-1)`.
    pub(crate) fn horizon_steps(&self) -> u64 {
        self.horizon
    }

    /// `k(t) = floor(t * a / b)` for `t` nanoseconds since the epoch.
    #[inline(always)]
    pub(crate) fn step_index(&self, t: u64) -> u64 {
        if self.a == 1 {
            self.by_b.div(t)
        } else if self.narrow {
            // t = x*b + r  =>  t*a/b = x*a + r*a/b, and r*a < a*b fits. x*a <= t: no overflow.
            let (x, r) = self.by_b.div_rem(t);
            x * self.a + self.by_b.div(r * self.a)
        } else {
            // Exotic limits only (a*b beyond u64): exact via u128.
            ((t as u128 * self.a as u128) / self.b as u128) as u64
        }
    }

    /// `k(t)`, using the mark stored in `word` as a guess: when `t` lies in step `m` (the
    /// stored mark read as a plain number), `k(t) = m` by the definition of `T`, with a multiply
    /// and a compare that do not wait on the clock (both come from the word). Otherwise, and
    /// for `a != 1`, [`step_index`](Steps::step_index). Same result either way; most calls of a
    /// busy bucket land in the step of the previous call.
    #[inline(always)]
    pub(crate) fn step_index_near(&self, t: u64, word: u64) -> u64 {
        let m = word >> self.token_bits;
        // m < near_limit: a == 1 and m*b + b fits. T(m) = m*b <= t < T(m+1) = m*b + b.
        if m < self.near_limit && t.wrapping_sub(m * self.b) < self.b {
            m
        } else {
            self.step_index(t)
        }
    }

    /// The word of a full bucket whose mark is step `k`.
    #[inline]
    pub(crate) fn full(&self, k: u64) -> u64 {
        self.pack(k, self.cap)
    }

    /// The word of a bucket holding `tokens` (<= C) marked at step `mark`.
    pub(crate) fn word(&self, tokens: u64, mark: u64) -> u64 {
        self.pack(mark, tokens.min(self.cap))
    }

    /// The word of an empty bucket whose mark is step `k`.
    #[inline]
    pub(crate) fn empty(&self, k: u64) -> u64 {
        self.pack(k, 0)
    }

    #[inline(always)]
    pub(crate) fn pack(&self, mark: u64, tokens: u64) -> u64 {
        ((mark & self.mark_mask) << self.token_bits) | tokens
    }

    /// Decodes `word` as seen at step `k`: (tokens after the refill, full mark after it,
    /// whether the mark moved forward).
    #[inline(always)]
    pub(crate) fn refill(&self, word: u64, k: u64) -> (u64, u64, bool) {
        let tokens = word & self.token_mask;
        let stored = word >> self.token_bits;
        let d = k.wrapping_sub(stored) & self.mark_mask;
        if d.wrapping_sub(1) < self.horizon - 1 {
            // 0 < d < horizon. Steps beyond `fill_steps` add nothing, so clamp first: then
            // tokens + d*q <= C + C + q < 2^34, no overflow.
            let added = tokens + d.min(self.fill_steps) * self.q;
            (added.min(self.cap), k, true)
        } else {
            // No progress: the stored mark is k or ahead of k (stale reading, clock back).
            let ahead = stored.wrapping_sub(k) & self.mark_mask;
            (tokens, k.saturating_add(ahead), false)
        }
    }

    /// How many steps the mark stored in `word` is past step `mark` (modulo the wrap).
    /// `u64::MAX` when it reads as behind `mark`, which, as marks never move back, is a wrap
    /// after centuries.
    #[inline]
    pub(crate) fn steps_after(&self, word: u64, mark: u64) -> u64 {
        let d = (word >> self.token_bits).wrapping_sub(mark) & self.mark_mask;
        if d < self.horizon {
            d
        } else {
            u64::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisor_is_exact() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut ds = vec![
            1u64,
            2,
            3,
            7,
            10,
            1_000_000_000,
            3_600_000_000_000,
            1 << 63,
            u64::MAX,
        ];
        ds.extend((0..200).map(|i| next() >> (i % 64)).filter(|&d| d > 0));
        for d in ds {
            let div = Divisor::new(d);
            let mut ns = vec![0u64, 1, d - 1, d, d.wrapping_add(1), u64::MAX, u64::MAX - 1];
            ns.extend((0..200).map(|i| next() >> (i % 64)));
            for n in ns {
                assert_eq!(div.div(n), n / d, "{n} / {d}");
                assert_eq!(div.div_rem(n), (n / d, n % d), "{n} % {d}");
            }
        }
    }

    #[test]
    fn step_index_near_equals_step_index() {
        for s in [
            Steps::new(5, 1, 1, 7),
            Steps::new(5, 1, 3, 7),
            Steps::new(5, 5, 1, 1_000_000_000),
            Steps::new(1, 1, 1, u64::MAX / 3),
        ] {
            for m in [0u64, 1, 2, 5, 1000, 1 << 40, s.mark_mask] {
                let word = s.pack(m, 1);
                for t in [0u64, 1, 6, 7, 8, 13, 14, 7_000, 6_999, u64::MAX, 1 << 62] {
                    for t in [t, s.rate().step_start(m).saturating_add(t % 3)] {
                        assert_eq!(s.step_index_near(t, word), s.step_index(t), "{s:?} {m} {t}");
                    }
                }
            }
        }
    }

    #[test]
    fn reduces_rate_and_sizes_token_field() {
        let s = Steps::new(10, 1, 100, 1_000_000_000);
        assert_eq!((s.a, s.b), (1, 10_000_000));
        assert_eq!(s.token_bits, 4);
        assert_eq!(Steps::new(1, 1, 1, 1).token_bits, 2);
        assert_eq!(Steps::new(1 << 24, 1, 1, 1).token_bits, 25);
        assert_eq!(Steps::new(1 << 24, 1, 1, 1).horizon_steps(), 1 << 38);
    }

    #[test]
    fn step_index_and_start_are_inverse() {
        for s in [
            Steps::new(5, 1, 3, 7),
            Steps::new(5, 5, 1, 7),
            Steps::new(5, 1, 3, u64::MAX / 2),
            Steps::new(9, 1, u64::MAX / 3, u64::MAX / 2),
        ] {
            for j in [0u64, 1, 2, 3, 4, 5, 100, 12345, 1 << 20] {
                let t = s.rate().step_start(j);
                if t == u64::MAX {
                    continue;
                }
                assert_eq!(s.step_index(t), j, "{s:?} j={j}");
                if t > 0 {
                    assert_eq!(s.step_index(t - 1), j - 1, "{s:?} j={j}");
                }
            }
        }
    }

    #[test]
    fn tombstone_is_not_a_state() {
        for cap in [1u64, 2, 3, 7, 8, 1 << 24] {
            let s = Steps::new(cap, 1, 1, 1);
            assert!(TOMBSTONE & s.token_mask > cap);
        }
    }
}
