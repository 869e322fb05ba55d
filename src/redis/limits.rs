//! The limits a [`RedisLimiter`](super::RedisLimiter) sends with each call: each checked once
//! for what the script can run exactly, and the table of tiers (plus the limits every key also
//! has) that `set_limit` replaces as a whole.

use crate::limit::{Inherit, Limit};
use crate::steps::{self, Steps};

use super::error::UnsupportedLimit;

/// Every number the script handles stays below this (Lua numbers are doubles).
pub(super) const LUA_EXACT: u64 = 1 << 52;

/// A limit as the script runs it: its steps in microseconds, reduced, and the change it came
/// from (when and how the buckets written under the earlier limit convert).
#[derive(Clone, Debug)]
pub(super) struct ScriptLimit {
    pub(super) limit: Limit,
    pub(super) steps: Steps,
    /// The step rate: `a / b_us` steps per microsecond, reduced.
    pub(super) a: u64,
    pub(super) b_us: u64,
    /// When this limit replaced an earlier one (microseconds since the Unix epoch, server
    /// time); `None`: a bucket written under another limit converts as of its next call.
    pub(super) since_us: Option<u64>,
    /// At that change, buckets are reset to full (else they keep their tokens, capped).
    pub(super) reset: bool,
}

impl ScriptLimit {
    /// `limit`, when the script can run it exactly.
    pub(super) fn new(limit: Limit) -> Result<ScriptLimit, UnsupportedLimit> {
        let steps = *limit.steps();
        if !steps.b.is_multiple_of(1000) {
            return Err(UnsupportedLimit::SubMicrosecondStep {
                interval: limit.refill_interval(),
                amount: limit.refill_amount(),
            });
        }
        let (a, b_us) = (steps.a, steps.b / 1000);
        let g = steps::gcd(a, b_us);
        let (a, b_us) = (a / g, b_us / g);
        if a > b_us {
            return Err(UnsupportedLimit::FasterThanOnePerMicrosecond);
        }
        if a.checked_mul(b_us).is_none_or(|ab| ab >= LUA_EXACT) {
            return Err(UnsupportedLimit::RateTooFine { a, b_us });
        }
        Ok(ScriptLimit {
            limit,
            steps,
            a,
            b_us,
            since_us: None,
            reset: false,
        })
    }

    /// This limit replacing another at `since_us`, its buckets following `inherit`.
    pub(super) fn replacing(
        limit: Limit,
        inherit: Inherit,
        since_us: Option<u64>,
    ) -> Result<ScriptLimit, UnsupportedLimit> {
        let reset = match inherit {
            Inherit::Keep => false,
            Inherit::Reset => true,
            // floor(tokens * C' / C) needs 64-bit products; the script's numbers are doubles.
            _ => return Err(UnsupportedLimit::ProportionalInherit),
        };
        Ok(ScriptLimit {
            since_us,
            reset,
            ..ScriptLimit::new(limit)?
        })
    }

    /// The script's seven values for this limit; `taken` is the mark an undone take left.
    pub(super) fn push_args(&self, inv: &mut redis::ScriptInvocation<'_>, taken: Option<u64>) {
        inv.arg(self.steps.cap)
            .arg(self.steps.q)
            .arg(self.a)
            .arg(self.b_us);
        match self.since_us {
            Some(t) => inv.arg(t),
            None => inv.arg(""),
        };
        inv.arg(if self.reset { "r" } else { "k" });
        match taken {
            Some(m) => inv.arg(m),
            None => inv.arg(""),
        };
    }
}

/// The limits in force: one per tier, and the limits every key has besides its tier's (all
/// checked together, all or nothing).
#[derive(Clone, Debug)]
pub(super) struct Table {
    pub(super) tiers: Vec<ScriptLimit>,
    pub(super) also: Vec<ScriptLimit>,
    /// Counts replacements: a cached denial records the table it was made under.
    pub(super) generation: u64,
}

impl Table {
    /// The limits of a key of `tier` (out of range: tier 0), its tier's first.
    pub(super) fn limits(&self, tier: usize) -> impl Iterator<Item = &ScriptLimit> + Clone {
        let first = self.tiers.get(tier).unwrap_or(&self.tiers[0]);
        std::iter::once(first).chain(self.also.iter())
    }

    /// How many limits every key has.
    pub(super) fn count(&self) -> usize {
        1 + self.also.len()
    }

    /// The largest capacity a call of `tier` can ask for: the smallest of its limits'.
    pub(super) fn capacity(&self, tier: usize) -> u64 {
        self.limits(tier).map(|l| l.steps.cap).min().unwrap_or(0)
    }
}
