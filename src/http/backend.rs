//! The one interface the HTTP layer calls: a backend that decides for a key.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::http::Key;
use crate::{Decision, InsufficientCapacity, KeyedLimiter, Limit};

/// What a backend answers: a decision, or `InsufficientCapacity` when the cost can never be
/// granted.
pub type Verdict = Result<Decision, InsufficientCapacity>;

/// Where the HTTP layer gets its decisions: the in-memory [`KeyedLimiter`] (answers at once,
/// no allocation) or a distributed backend (asynchronous).
///
/// ```
/// use tollgate::http::{Backend, Key};
/// use tollgate::{KeyedLimiter, Limit};
///
/// let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(1)?);
/// let verdict = futures_lite_block_on(limiter.acquire(&Key::Global, 1)).unwrap();
/// assert!(verdict.unwrap().is_allowed());
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let waker = std::task::Waker::noop();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
/// # }
/// # Ok::<(), tollgate::LimitError>(())
/// ```
pub trait Backend: Send + Sync + 'static {
    /// A failure to decide (e.g. the store is unreachable).
    type Error: std::error::Error + Send + Sync + 'static;
    /// The pending decision.
    type Future: Future<Output = Result<Verdict, Self::Error>> + Send + 'static;

    /// Takes `cost` tokens from `key`'s bucket if they are there (`cost == 0`: a peek).
    fn acquire(&self, key: &Key, cost: u64) -> Self::Future;

    /// Looks at `key`'s bucket ahead of a request for `cost` tokens, taking nothing (a layer of
    /// several policies looks at all before taking from any). The answer is the bucket as it
    /// is (the layer compares `remaining` and `capacity` with `cost` itself), so it should not
    /// refuse a cost above the capacity. Default: `acquire(key, 0)`.
    fn peek(&self, key: &Key, cost: u64) -> Self::Future {
        let _ = cost;
        self.acquire(key, 0)
    }

    /// The limit most keys get: the layer renders its `RateLimit-Policy` once, at build; a
    /// decision made under another limit (a key's tier, a limit changed since) gets its own.
    fn limit(&self) -> Limit;

    /// How often the layer should call [`maintain`](Backend::maintain), off the request path,
    /// on a thread it owns (which ends when the last clone of the layer and its services
    /// drops); `None` (the default): no housekeeping.
    fn maintenance_period(&self) -> Option<std::time::Duration> {
        None
    }

    /// Housekeeping off the request path: for the in-memory limiter, evicting idle keys, so
    /// that memory returns after a flood of keys even when no request follows it, and no
    /// request pays for a sweep. Called every [`maintenance_period`](Backend::maintenance_period).
    fn maintain(&self) {}

    /// Whether this backend can give a grant back ([`undo`](Backend::undo)) and charge after
    /// the fact ([`charge`](Backend::charge)). A layer with several policies (all-or-nothing)
    /// or with response charging needs both, and refuses to build without them. Default:
    /// false. The in-memory [`KeyedLimiter`] can.
    fn can_undo(&self) -> bool {
        false
    }

    /// Gives back the `cost` tokens that `taken`, this backend's grant for `key`, took, as an
    /// *undo* ([contract §2](crate::contract::bucket), undo versus refund): the bucket ends with at most
    /// what it would hold had the grant never been made. The layer calls it when another
    /// policy refuses the request, or when a response is charged nothing. Default: nothing.
    fn undo(&self, key: &Key, cost: u64, taken: &Decision) {
        let _ = (key, cost, taken);
    }

    /// The tier a decision of this backend was made under (a metrics label); `None` (the
    /// default) when the backend has no tiers or cannot tell.
    fn tier(&self, decision: &Decision) -> Option<usize> {
        let _ = decision;
        None
    }

    /// Charges `n` more tokens to `key` once a response is known, taking as many as there are
    /// (up to `n`) and refusing nothing (see [`KeyedLimiter::charge_key`]). Default: nothing.
    fn charge(&self, key: &Key, n: u64) {
        let _ = (key, n);
    }
}

impl<S> Backend for KeyedLimiter<Key, S>
where
    S: BuildHasher + Send + Sync + 'static,
{
    type Error = Infallible;
    type Future = Ready<Result<Verdict, Infallible>>;

    #[inline]
    fn acquire(&self, key: &Key, cost: u64) -> Self::Future {
        // The slot goes with the decision, for an undo.
        ready(Ok(self
            .take_key_tracked(key, cost)
            .map(|(d, tag)| d.with_slot(tag))))
    }

    #[inline]
    fn peek(&self, key: &Key, cost: u64) -> Self::Future {
        // Counted in the stats only as the denial it foretells, if it does.
        ready(Ok(self
            .peek_for(key, cost)
            .map(|(d, tag)| d.with_slot(tag))))
    }

    fn limit(&self) -> Limit {
        KeyedLimiter::limit(self)
    }

    fn can_undo(&self) -> bool {
        true
    }

    fn undo(&self, key: &Key, cost: u64, taken: &Decision) {
        let _ = self.undo_key(key, cost, taken, taken.slot());
    }

    fn charge(&self, key: &Key, n: u64) {
        let _ = self.charge_key(key, n);
    }

    fn tier(&self, decision: &Decision) -> Option<usize> {
        KeyedLimiter::<Key, S>::tier_of_tag(decision.tier())
    }

    fn maintenance_period(&self) -> Option<std::time::Duration> {
        Some(self.eviction_period())
    }

    fn maintain(&self) {
        self.evict_idle_if_due();
    }
}

impl<B: Backend + ?Sized> Backend for Arc<B> {
    type Error = B::Error;
    type Future = B::Future;

    #[inline]
    fn acquire(&self, key: &Key, cost: u64) -> Self::Future {
        (**self).acquire(key, cost)
    }

    #[inline]
    fn peek(&self, key: &Key, cost: u64) -> Self::Future {
        (**self).peek(key, cost)
    }

    fn limit(&self) -> Limit {
        (**self).limit()
    }

    fn maintenance_period(&self) -> Option<std::time::Duration> {
        (**self).maintenance_period()
    }

    fn maintain(&self) {
        (**self).maintain()
    }

    fn can_undo(&self) -> bool {
        (**self).can_undo()
    }

    fn undo(&self, key: &Key, cost: u64, taken: &Decision) {
        (**self).undo(key, cost, taken)
    }

    fn charge(&self, key: &Key, n: u64) {
        (**self).charge(key, n)
    }

    fn tier(&self, decision: &Decision) -> Option<usize> {
        (**self).tier(decision)
    }
}
