//! The pure step function: what one call does to one bucket word. The single source of truth
//! for the arithmetic of the [bucket contract](crate::contract::bucket): the atomic bucket, the
//! keyed limiter, the models and the fuzz oracle all call [`step`]; nothing else computes
//! refills. Time steps and the word's layout are in [`crate::steps`].

use crate::limit::Inherit;
use crate::steps::Steps;

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

/// [contract §2](crate::contract::bucket) for one call: refill `word` to step `k`, then try to take `n` tokens
/// (`n <= C`, checked by the caller).
///
/// The word to store is returned only when it changes: when tokens are taken, or when the call
/// is the first to see a new refill step (the mark must move, or a later stale reading would
/// refill from an older mark than the contract's). A denial or a peek within an already recorded step
/// writes nothing, so a flood of denials writes at most once per step.
#[inline(always)]
pub(crate) fn step(s: &Steps, word: u64, k: u64, n: u64) -> Outcome {
    let (tokens, mark, moved) = s.refill(word, k);
    if n <= tokens {
        let left = tokens - n;
        // Without a refill the mark bits stay as stored and the token field (>= n) drops by n:
        // the new word is `word - n`, which keeps the CAS's inputs off the clock's path.
        let write = if moved {
            Some(s.pack(mark, left))
        } else {
            (n > 0).then_some(word - n)
        };
        Outcome {
            allowed: true,
            tokens: left,
            mark,
            write,
        }
    } else {
        Outcome {
            allowed: false,
            tokens,
            mark,
            write: moved.then(|| s.pack(mark, tokens)),
        }
    }
}

/// Refill `word` to step `k`, then give `n` tokens back (capped at C): a refund or a grant.
/// Always "allowed"; writes only a change.
#[inline]
pub(crate) fn add(s: &Steps, word: u64, k: u64, n: u64) -> Outcome {
    let (tokens, mark, _) = s.refill(word, k);
    let tokens = tokens.saturating_add(n).min(s.cap);
    let new = s.pack(mark, tokens);
    Outcome {
        allowed: true,
        tokens,
        mark,
        write: (new != word).then_some(new),
    }
}

/// Refill `word` to step `k`, then *undo* a take of `n` tokens whose call left the mark at
/// `taken_mark` ([contract §2](crate::contract::bucket), undo versus refund): afterwards the bucket holds at most what it
/// would hold had the take never happened.
///
/// Had the take not happened, the bucket would hold `δ <= n` more tokens, and every refill
/// since can only shrink `δ` (a refill that brought the bucket to C would have been capped
/// earlier by up to the tokens it added) while takes and denials leave it as it is. Refills
/// this call applies itself are capped exactly by adding after refilling (as [`add`] does).
/// Refills that other calls applied (the stored mark moved past `taken_mark`) happened when
/// the bucket held an unknown number of tokens, so they are charged in full: `q` tokens per
/// step. The undo gives back `n - q * (steps others refilled)`, at least 0: exactly `n` when
/// no other call saw a new step since the take (the usual case for a rollback, which follows
/// its take at once), never more than the history without the take would hold.
#[inline]
pub(crate) fn undo(s: &Steps, word: u64, k: u64, n: u64, taken_mark: u64) -> Outcome {
    // Steps other calls refilled since the take.
    let others = s.steps_after(word, taken_mark);
    let give = n.saturating_sub(others.saturating_mul(s.q));
    add(s, word, k, give)
}

/// Refill `word` to step `k`, then take up to `n` tokens, as many as there are: a cost known
/// only after the work (bytes sent, tokens a model generated), charged whatever is left.
/// Always "allowed" (nothing is refused: the work is done); the decision's `remaining` shows
/// what is left, 0 when the charge took more than there was. Writes only a change.
#[inline]
pub(crate) fn drain(s: &Steps, word: u64, k: u64, n: u64) -> Outcome {
    let (tokens, mark, _) = s.refill(word, k);
    let tokens = tokens - n.min(tokens);
    let new = s.pack(mark, tokens);
    Outcome {
        allowed: true,
        tokens,
        mark,
        write: (new != word).then_some(new),
    }
}

/// A full bucket marked at step `k`, whatever `word` held (a reset). Refilling first keeps
/// the mark from moving back.
#[inline]
pub(crate) fn reset(s: &Steps, word: u64, k: u64) -> Outcome {
    let (_, mark, _) = s.refill(word, k);
    let new = s.pack(mark, s.cap);
    Outcome {
        allowed: true,
        tokens: s.cap,
        mark,
        write: (new != word).then_some(new),
    }
}

/// A limit change at `t` nanoseconds since the epoch, for a bucket holding `tokens` (already
/// refilled to the old limit's step of `t`) with its mark at old step `mark`: returns the
/// tokens and mark under the new limit. The tokens follow `inherit`; the new mark is the new
/// limit's step of `t`, or, when the bucket's mark is ahead of `t` (a call whose clock read
/// later than the change's got there first), of the first instant of that mark's step: the
/// change then takes effect from there. The one conversion used by `TokenBucket::set_limit`,
/// by the keyed limiter's migrations and its fresh-bucket states.
pub(crate) fn convert(
    old: &Steps,
    tokens: u64,
    mark: u64,
    t: u64,
    new: &Steps,
    inherit: Inherit,
) -> (u64, u64) {
    let t = if mark > old.step_index(t) {
        t.max(old.step_start(mark))
    } else {
        t
    };
    let tokens = match inherit {
        Inherit::Keep => tokens.min(new.cap),
        Inherit::Proportional => {
            (u128::from(tokens) * u128::from(new.cap) / u128::from(old.cap)) as u64
        }
        Inherit::Reset => new.cap,
    };
    (tokens, new.step_index(t))
}

/// [`convert`] for a packed word: refill it to the old step of `t`, convert, pack.
pub(crate) fn convert_word(old: &Steps, word: u64, t: u64, new: &Steps, inherit: Inherit) -> u64 {
    let (tokens, mark, _) = old.refill(word, old.step_index(t));
    let (tokens, mark) = convert(old, tokens, mark, t, new, inherit);
    new.word(tokens, mark)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn add_and_reset_cap_at_capacity() {
        let s = Steps::new(5, 1, 1, 10);
        let w = s.pack(3, 1);
        let o = add(&s, w, 3, 2);
        assert_eq!((o.tokens, o.mark, o.write), (3, 3, Some(s.pack(3, 3))));
        assert_eq!(add(&s, w, 3, 100).tokens, 5);
        // Refill first: two steps later, 1 + 2 + 2 = 5.
        assert_eq!(add(&s, w, 5, 2).tokens, 5);
        assert_eq!(add(&s, s.full(3), 3, 1).write, None);
        let o = reset(&s, w, 2);
        assert_eq!((o.tokens, o.mark), (5, 3), "a stale reset keeps the mark");
    }

    #[test]
    fn drain_takes_what_is_there_and_never_refuses() {
        let s = Steps::new(5, 1, 1, 10);
        let w = s.pack(3, 2);
        let o = drain(&s, w, 3, 1);
        assert_eq!(
            (o.allowed, o.tokens, o.write),
            (true, 1, Some(s.pack(3, 1)))
        );
        let o = drain(&s, w, 3, 100);
        assert_eq!(
            (o.allowed, o.tokens, o.write),
            (true, 0, Some(s.pack(3, 0)))
        );
        // Refill first: one step later, 2 + 1 - 2 = 1.
        assert_eq!(drain(&s, w, 4, 2).tokens, 1);
        assert_eq!(drain(&s, w, 3, 0).write, None);
        assert_eq!(drain(&s, s.pack(3, 0), 3, 7).write, None, "nothing to take");
    }

    #[test]
    fn undo_never_resurrects_a_capped_refill() {
        // The case of contract §2: C = 1, q = 1. A take at step 0 empties the bucket (mark 0).
        let s = Steps::new(1, 1, 1, 10);
        let taken = step(&s, s.full(0), 0, 1);
        let after_take = taken.write.unwrap();
        // Another call refills step 1 and takes that token: the stored mark moved on.
        let other = step(&s, after_take, 1, 1).write.unwrap();
        let o = undo(&s, other, 1, 1, taken.mark);
        assert_eq!(
            o.tokens, 0,
            "the step-1 token was capped in the history without the take"
        );
        // The undo sees the new step itself: it refills, then gives back, capped at C.
        let o = undo(&s, after_take, 1, 1, taken.mark);
        assert_eq!(o.tokens, 1);
        // No step since the take: all of it comes back.
        let s = Steps::new(5, 1, 1, 10);
        let taken = step(&s, s.full(0), 0, 2);
        let o = undo(&s, taken.write.unwrap(), 0, 2, taken.mark);
        assert_eq!(o.tokens, 5);
        // Two steps refilled by others: 2 - 2 * q = 0 comes back, though the bucket has room.
        let w = s.pack(2, 1);
        assert_eq!(undo(&s, w, 2, 2, taken.mark).tokens, 1);
        // One step refilled by others: 2 - 1 = 1 comes back.
        let w = s.pack(1, 1);
        assert_eq!(undo(&s, w, 1, 2, taken.mark).tokens, 2);
        // A stale undo (its step behind the mark) still counts the mark's steps.
        assert_eq!(undo(&s, w, 0, 2, taken.mark).tokens, 2);
    }
}
