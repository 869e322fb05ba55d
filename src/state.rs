//! The packed bucket word and the pure step function: the single source of truth for the
//! arithmetic of SPEC §1–2. The atomic bucket, the keyed limiter and the tests all call
//! [`step`]; nothing else computes refills.
//!
//! # Time as steps
//!
//! Time `t` is nanoseconds since the limiter's epoch. It is cut into steps:
//! `k(t) = floor(t * a / b)`, with `q` tokens per step. Interval mode: `a = 1, b = I, q = R`;
//! greedy mode: `a = R, b = I, q = 1` (I in nanoseconds). `a / b` is reduced by its gcd when
//! the limit is built, so most limits run with `a = 1` (one `u64` division per call).
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
//! With the largest capacity, 2^24, tokens take 25 bits and the mark 39.
//!
//! # Wrap
//!
//! The mark is kept modulo `2^M` (`M = 64 - token_bits`). The distance `d = (k - m) mod 2^M`
//! is read as a refill of `d` steps when `0 < d < 2^(M-1)`, and as "no progress" (a stale
//! reading or a clock that went back) otherwise. A distance at or beyond the *horizon*
//! `2^(M-1)` steps is therefore never read as more elapsed time than really passed: a wrap can
//! only under-refill, never over-admit. Limits are rejected when their horizon is shorter than
//! [`MIN_HORIZON`](crate::limit::MIN_HORIZON); typical limits have horizons of centuries
//! (e.g. 2^55 steps of 1 ms for capacity 100 in interval mode).

/// The word of a removed (evicted) bucket. Never a valid state: its token field exceeds any
/// capacity.
pub(crate) const TOMBSTONE: u64 = u64::MAX;

/// The step arithmetic of one limit, precomputed when the limit is built so the hot path
/// needs no `u128` division for ordinary limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Steps {
    /// Capacity C.
    pub(crate) cap: u64,
    /// Tokens per step.
    pub(crate) q: u64,
    /// Step rate numerator (reduced).
    pub(crate) a: u64,
    /// Step rate denominator in nanoseconds (reduced). `b >= a`: a step is at least 1 ns.
    pub(crate) b: u64,
    /// Width of the token field.
    pub(crate) token_bits: u32,
    /// `a * b` fits in a `u64`: the split `u64` formulas below are exact.
    pub(crate) narrow: bool,
}

/// What one call does to one bucket word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The request was granted.
    pub(crate) allowed: bool,
    /// Tokens after the call.
    pub(crate) tokens: u64,
    /// Refill mark after the call, as a full (unwrapped) step index.
    pub(crate) mark: u64,
    /// The word to store, when it changed. `None`: nothing to write.
    pub(crate) write: Option<u64>,
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
    /// `1 <= cap < 2^62`, `1 <= q <= cap`, `1 <= a <= b`.
    pub(crate) fn new(cap: u64, q: u64, a: u64, b: u64) -> Steps {
        let g = gcd(a, b);
        let (a, b) = (a / g, b / g);
        Steps {
            cap,
            q,
            a,
            b,
            token_bits: 64 - (cap + 1).leading_zeros(),
            narrow: a.checked_mul(b).is_some(),
        }
    }

    #[inline]
    fn token_mask(&self) -> u64 {
        (1u64 << self.token_bits) - 1
    }

    #[inline]
    fn mark_mask(&self) -> u64 {
        u64::MAX >> self.token_bits
    }

    /// Steps within which a distance is read as forward progress: `2^(M-1)`.
    #[inline]
    pub(crate) fn horizon_steps(&self) -> u64 {
        1u64 << (63 - self.token_bits)
    }

    /// `k(t) = floor(t * a / b)` for `t` nanoseconds since the epoch.
    #[inline]
    pub(crate) fn step_index(&self, t: u64) -> u64 {
        if self.a == 1 {
            t / self.b
        } else if self.narrow {
            // t = x*b + r  =>  t*a/b = x*a + r*a/b, and r*a < a*b fits. x*a <= t: no overflow.
            (t / self.b) * self.a + (t % self.b) * self.a / self.b
        } else {
            // Exotic limits only (a*b beyond u64): exact via u128.
            ((t as u128 * self.a as u128) / self.b as u128) as u64
        }
    }

    /// `T(j) = ceil(j * b / a)`: the first nanosecond (since the epoch) of step `j`,
    /// saturating at `u64::MAX`.
    #[inline]
    pub(crate) fn step_start(&self, j: u64) -> u64 {
        if self.a == 1 {
            j.saturating_mul(self.b)
        } else if self.narrow {
            let (x, r) = (j / self.a, j % self.a);
            // r*b < a*b fits (div_ceil adds nothing that overflows: the quotient is below b).
            let part = (r * self.b).div_ceil(self.a);
            x.checked_mul(self.b)
                .and_then(|v| v.checked_add(part))
                .unwrap_or(u64::MAX)
        } else {
            let v = (j as u128 * self.b as u128).div_ceil(self.a as u128);
            u64::try_from(v).unwrap_or(u64::MAX)
        }
    }

    /// The word of a full bucket whose mark is step `k`.
    #[inline]
    pub(crate) fn full(&self, k: u64) -> u64 {
        self.pack(k, self.cap)
    }

    /// The word of an empty bucket whose mark is step `k`.
    #[inline]
    pub(crate) fn empty(&self, k: u64) -> u64 {
        self.pack(k, 0)
    }

    /// Whether a bucket with this word may be evicted at step `k`: it was already full, with
    /// its mark recorded, `idle_steps` steps ago (at `k0 = k - idle_steps`). Then at every step
    /// from `k0` on it is full with the mark of the call, exactly like a fresh bucket, so
    /// replacing it by one is invisible to any call whose clock reads at least `k0`.
    #[inline]
    pub(crate) fn is_evictable(&self, word: u64, k: u64, idle_steps: u64) -> bool {
        if word == TOMBSTONE || k < idle_steps {
            return false;
        }
        let k0 = k - idle_steps;
        let (tokens, mark) = self.refill(word, k0);
        tokens == self.cap && mark == k0
    }

    #[inline]
    fn pack(&self, mark: u64, tokens: u64) -> u64 {
        ((mark & self.mark_mask()) << self.token_bits) | tokens
    }

    /// Decodes `word` as seen at step `k`: (tokens after the refill, full mark after it).
    #[inline]
    pub(crate) fn refill(&self, word: u64, k: u64) -> (u64, u64) {
        let tokens = word & self.token_mask();
        let stored = word >> self.token_bits;
        let d = k.wrapping_sub(stored) & self.mark_mask();
        if d != 0 && d < self.horizon_steps() {
            // d < 2^62 and q < 2^62: saturate instead of overflowing; min(C, ..) follows.
            let added = tokens.saturating_add(d.saturating_mul(self.q));
            (added.min(self.cap), k)
        } else {
            // No progress: the stored mark is k or ahead of k (stale reading, clock back).
            let ahead = stored.wrapping_sub(k) & self.mark_mask();
            (tokens, k.saturating_add(ahead))
        }
    }
}

/// SPEC §2 for one call: refill `word` to step `k`, then try to take `n` tokens
/// (`n <= C`, checked by the caller).
///
/// The word to store is returned only when it changes: when tokens are taken, or when the call
/// is the first to see a new refill step (the mark must move, or a later stale reading would
/// refill from an older mark than SPEC's). A denial or a peek within an already recorded step
/// writes nothing, so a flood of denials writes at most once per step.
#[inline]
pub(crate) fn step(s: &Steps, word: u64, k: u64, n: u64) -> Outcome {
    let (tokens, mark) = s.refill(word, k);
    let allowed = n <= tokens;
    let tokens = if allowed { tokens - n } else { tokens };
    let new = s.pack(mark, tokens);
    Outcome {
        allowed,
        tokens,
        mark,
        write: (new != word).then_some(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                let t = s.step_start(j);
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
    fn denial_and_peek_write_nothing() {
        let s = Steps::new(3, 1, 1, 10);
        let w = s.pack(5, 1);
        assert_eq!(step(&s, w, 5, 2).write, None);
        assert!(!step(&s, w, 5, 2).allowed);
        assert_eq!(step(&s, w, 5, 0).write, None);
        assert_eq!(step(&s, w, 4, 0).write, None);
        // The first call to see a new step records it, even a peek.
        assert_eq!(step(&s, w, 6, 0).write, Some(s.pack(6, 2)));
        assert_eq!(step(&s, w, 6, 3).write, Some(s.pack(6, 2)));
    }

    #[test]
    fn stale_reading_changes_nothing() {
        let s = Steps::new(3, 1, 1, 10);
        let w = s.pack(100, 1);
        let o = step(&s, w, 90, 1);
        assert!(o.allowed);
        assert_eq!((o.tokens, o.mark), (0, 100));
        assert_eq!(o.write, Some(s.pack(100, 0)));
    }

    #[test]
    fn evictable_only_when_full_and_idle() {
        let s = Steps::new(3, 1, 1, 10);
        // Full at mark 10: evictable once 4 steps have passed.
        assert!(!s.is_evictable(s.full(10), 13, 4));
        assert!(s.is_evictable(s.full(10), 14, 4));
        // One token short at mark 10: full from step 11, so evictable from step 15.
        assert!(!s.is_evictable(s.pack(10, 2), 14, 4));
        assert!(s.is_evictable(s.pack(10, 2), 15, 4));
        // A stale evictor (mark ahead) and a tombstone are never evicted.
        assert!(!s.is_evictable(s.full(20), 15, 4));
        assert!(!s.is_evictable(TOMBSTONE, 100, 4));
    }

    #[test]
    fn tombstone_is_not_a_state() {
        for cap in [1u64, 2, 3, 7, 8, 1 << 24] {
            let s = Steps::new(cap, 1, 1, 1);
            assert!(TOMBSTONE & s.token_mask() > cap);
        }
    }
}
