//! One script call's arguments and its reply: what a [`RedisLimiter`](super::RedisLimiter)
//! sends and how the answer becomes decisions.

use std::sync::Arc;

use crate::decision::Decision;
use crate::multi::MultiDecision;
use crate::state::Outcome;

use super::limits::Table;
use super::RedisLimitError;

/// One script call: the op, its tokens, and an undo to run first.
#[derive(Clone, Copy, Debug)]
pub(super) struct Call<'a> {
    /// `"a"` acquire, `"r"` refund, `"c"` charge, `"l"` lease, `"u"` only the undo.
    pub(super) op: &'static str,
    pub(super) n: u64,
    pub(super) now_us: Option<u64>,
    /// Lease size (op `"l"`).
    pub(super) lease: u64,
    /// Tokens to undo first, taken at `taken` (one mark per limit) under the limits table
    /// `taken_generation`: after a limit change the marks count another limit's steps (or a
    /// reset came between), and [`RedisLimiter::run`](super::RedisLimiter) gives nothing back.
    pub(super) undo: u64,
    pub(super) taken: &'a [u64],
    pub(super) taken_generation: u64,
}

impl Call<'_> {
    pub(super) fn new(op: &'static str, n: u64, now_us: Option<u64>) -> Call<'static> {
        Call {
            op,
            n,
            now_us,
            lease: 0,
            undo: 0,
            taken: &[],
            taken_generation: 0,
        }
    }
}

/// What the script answered, with the limits it ran under.
#[derive(Clone, Debug)]
pub(super) struct Reply {
    pub(super) allowed: bool,
    pub(super) now_us: u64,
    /// Tokens leased (op `"l"`).
    pub(super) taken: u64,
    /// Tokens the undo gave back (the least over the limits).
    pub(super) given: u64,
    /// Tokens and mark after the call, per limit.
    pub(super) buckets: Vec<(u64, u64)>,
    pub(super) table: Arc<Table>,
    pub(super) tier: usize,
}

impl Reply {
    /// Every limit's decision for `n` tokens, and which one speaks for the call: a denial's
    /// first denying limit, else the limit with the fewest tokens left.
    pub(super) fn decide(&self, n: u64) -> MultiDecision {
        let now_ns = self.now_us.saturating_mul(1000);
        let mut best: Option<MultiDecision> = None;
        for (index, (limit, &(tokens, mark))) in
            self.table.limits(self.tier).zip(&self.buckets).enumerate()
        {
            let allowed = self.allowed || tokens >= n;
            let out = Outcome {
                allowed,
                tokens,
                mark,
                write: None,
            };
            let decision = Decision::new(&limit.steps, &out, n, now_ns, 0);
            if !allowed {
                return MultiDecision { decision, index };
            }
            if best.is_none_or(|b| tokens < b.decision.remaining()) {
                best = Some(MultiDecision { decision, index });
            }
        }
        best.unwrap_or_else(|| unreachable!("a key has at least one limit"))
    }

    /// A snapshot's answer to "would `n` tokens be granted": the first limit with fewer than
    /// `n` tokens, else the one with the fewest (the decisions are the snapshot's).
    pub(super) fn peek(&self, n: u64) -> MultiDecision {
        let all = self.decide(0);
        let now_ns = self.now_us.saturating_mul(1000);
        for (index, (limit, &(tokens, mark))) in
            self.table.limits(self.tier).zip(&self.buckets).enumerate()
        {
            if tokens < n {
                let out = Outcome {
                    allowed: true,
                    tokens,
                    mark,
                    write: None,
                };
                let decision = Decision::new(&limit.steps, &out, 0, now_ns, 0);
                return MultiDecision { decision, index };
            }
        }
        all
    }

    /// The marks after the call, one per limit (what an undo of this call's take needs).
    pub(super) fn marks(&self) -> Vec<u64> {
        self.buckets.iter().map(|&(_, m)| m).collect()
    }
}

/// A script call's result: Redis's answer, or a decision made without it.
pub(super) enum Answer {
    Redis(Reply),
    Degraded(Decision),
}

/// The script's reply: `{allowed, now, taken, given, tokens and mark per limit}`.
pub(super) fn parse(
    reply: Vec<i64>,
    table: Arc<Table>,
    tier: usize,
) -> Result<Reply, RedisLimitError> {
    let well_formed = reply.len() == 4 + 2 * table.count() && reply.iter().all(|&v| v >= 0);
    let [allowed, now_us, taken, given, ref rest @ ..] = reply[..] else {
        return Err(RedisLimitError::Protocol(reply));
    };
    if !well_formed {
        return Err(RedisLimitError::Protocol(reply));
    }
    Ok(Reply {
        allowed: allowed == 1,
        now_us: now_us as u64,
        taken: taken as u64,
        given: given as u64,
        buckets: rest
            .chunks_exact(2)
            .map(|p| (p[0] as u64, p[1] as u64))
            .collect(),
        table,
        tier,
    })
}
