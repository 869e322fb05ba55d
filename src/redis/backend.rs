//! A [`RedisLimiter`] behind the HTTP layer: takes, looks (a snapshot), undoes and charges, so
//! several policies and response charging work over Redis as in memory.

use std::future::Future;
use std::pin::Pin;

use crate::decision::Decision;
use crate::http::{Backend, Key, Verdict};
use crate::limit::Limit;

use super::{RedisLimitError, RedisLimiter};

/// The bytes of an HTTP key: a tag per kind of key, so keys of different kinds never share a
/// bucket (as they do not in a `KeyedLimiter<Key>`): the global key is not the API key `*`.
fn key_bytes(key: &Key) -> Vec<u8> {
    let tagged = |tag: &[u8], body: &[u8]| [tag, body].concat();
    match key {
        Key::Global => b"g".to_vec(),
        Key::Ip(ip) => tagged(b"i:", ip.to_string().as_bytes()),
        Key::Header(v) => tagged(b"h:", v.as_bytes()),
        // The token only: `Bearer t` and `bearer t` are one key. Tagged `b:` as bearer
        // tokens were (as `Key::Bytes`) before `Key::Bearer`, so their buckets carry over;
        // a closure's `Key::Bytes` equal to a token shares that bucket, as it did.
        Key::Bearer(v) => tagged(b"b:", key.bearer_token().unwrap_or(v.as_bytes())),
        Key::Bytes(b) => tagged(b"b:", b),
        Key::Text(t) => tagged(b"t:", t.as_bytes()),
    }
}

/// A call's answer as the layer takes it: a cost above the capacity is a verdict (a `429`
/// without `Retry-After`), any other error the backend's.
fn verdict(answer: Result<Decision, RedisLimitError>) -> Result<Verdict, RedisLimitError> {
    match answer {
        Ok(d) => Ok(Ok(d)),
        Err(RedisLimitError::InsufficientCapacity(e)) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

/// Runs `work` on the current Tokio runtime, if there is one (an undo or a charge is sent
/// after the answer; without a runtime it cannot be, and is logged).
fn spawn(work: impl Future<Output = Result<Decision, RedisLimitError>> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                if let Err(e) = work.await {
                    tracing::debug!(error = %e, "tollgate: an undo or charge on redis failed");
                }
            });
        }
        Err(_) => tracing::warn!("tollgate: no tokio runtime: an undo or charge was not sent"),
    }
}

impl Backend for RedisLimiter {
    type Error = RedisLimitError;
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, RedisLimitError>> + Send>>;

    fn acquire(&self, key: &Key, cost: u64) -> Self::Future {
        let bytes = key_bytes(key);
        let this = self.clone();
        Box::pin(async move {
            // The limits table before the take goes with the decision, for an undo (read
            // before: a change during the call makes the undo give nothing, never too much).
            let generation = this.table.with(|t| t.generation);
            let d = verdict(this.try_acquire(&bytes, cost).await)?;
            Ok(d.map(|d| d.with_slot((generation as u32, u16::MAX))))
        })
    }

    fn peek(&self, key: &Key, cost: u64) -> Self::Future {
        let bytes = key_bytes(key);
        let this = self.clone();
        Box::pin(async move {
            let table = this.table.load();
            let tier = this.tier(&bytes);
            let capacity = table.capacity(tier);
            if cost > capacity {
                return Ok(Err(crate::decision::InsufficientCapacity {
                    requested: cost,
                    capacity,
                }));
            }
            match this.run(&bytes, super::Call::new("a", 0, None)).await? {
                super::Answer::Redis(reply) => Ok(Ok(reply.peek(cost).decision)),
                super::Answer::Degraded(d) => Ok(Ok(d)),
            }
        })
    }

    fn limit(&self) -> Limit {
        RedisLimiter::limit(self)
    }

    fn can_undo(&self) -> bool {
        true
    }

    /// The marks the take left are those of its time's steps (a mark can only be at or past
    /// them, so this gives back at most what the exact undo would); the limits table of the
    /// take came with the decision.
    fn undo(&self, key: &Key, cost: u64, taken: &Decision) {
        if taken.is_degraded() || cost == 0 {
            return;
        }
        let bytes = key_bytes(key);
        let this = self.clone();
        let (at_ns, taken_generation) = (taken.now_ns(), taken.slot());
        spawn(async move {
            let (marks, generation): (Vec<u64>, u64) = this.table.with(|table| {
                let marks = table.limits(this.tier(&bytes));
                let marks = marks.map(|l| l.steps.step_index(at_ns)).collect();
                // Only the low 32 bits travel with the decision; another table's are
                // dropped by `run` (nothing given back).
                let same = table.generation as u32 == taken_generation;
                (marks, if same { table.generation } else { u64::MAX })
            });
            this.undo_at(&bytes, cost, &marks, generation, None).await
        });
    }

    fn charge(&self, key: &Key, n: u64) {
        let bytes = key_bytes(key);
        let this = self.clone();
        spawn(async move { this.charge(&bytes, n).await });
    }
}

/// A leased limiter behind the HTTP layer: grants from the lease, denials from Redis. It cannot
/// give tokens back one request at a time (its grants are local), so a layer of several
/// policies, or charging by response, refuses to build over it
/// ([`LayerError::CannotUndo`](crate::http::LayerError::CannotUndo)).
impl Backend for super::LeasedLimiter {
    type Error = RedisLimitError;
    type Future = Pin<Box<dyn Future<Output = Result<Verdict, RedisLimitError>> + Send>>;

    fn acquire(&self, key: &Key, cost: u64) -> Self::Future {
        let bytes = key_bytes(key);
        let this = self.clone();
        Box::pin(async move { verdict(this.try_acquire(&bytes, cost).await) })
    }

    fn limit(&self) -> Limit {
        self.redis().limit()
    }
}
