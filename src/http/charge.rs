//! Charging by response: once the response is known, keep a request's tokens, give them back,
//! or charge more (a fixed amount, or by the bytes of the body sent).

use std::num::NonZeroU64;

use http::{HeaderMap, StatusCode};

/// What a request costs once its response is known: the answer of the layer's
/// [`charge_by_response`](super::RateLimitLayerBuilder::charge_by_response) hook, applied to
/// every policy that granted the request.
///
/// ```
/// use tollgate::http::{Charge, ResponseInfo};
/// // Count only failed logins: a success gives its token back.
/// let hook = |res: &ResponseInfo<'_>| {
///     if res.status.is_success() { Charge::Undo } else { Charge::Keep }
/// };
/// # let _ = hook;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Charge {
    /// Keep what the request took (the cost charged up front).
    Keep,
    /// Give back what the request took, as an *undo* ([contract §2](crate::contract::bucket)):
    /// the bucket ends with at most what it would hold had the request never been counted.
    Undo,
    /// Charge this many more tokens, taking as many as there are and refusing nothing (the
    /// response is already made; see [`KeyedLimiter::charge_key`](crate::KeyedLimiter::charge_key)).
    Extra(u64),
    /// Once the response body ends (or is dropped: the client went away), charge one token per
    /// `per_token` bytes of it sent (rounded up), as [`Extra`](Charge::Extra) does: e.g. a
    /// limit of 10 MB a minute with `per_token` 1024 and a capacity of 10,240.
    BodyBytes {
        /// Bytes per token.
        per_token: NonZeroU64,
    },
}

/// The response a [`Charge`] is decided from.
#[derive(Debug)]
#[non_exhaustive]
pub struct ResponseInfo<'a> {
    /// The response's status.
    pub status: StatusCode,
    /// The response's headers (the inner service's, before the layer adds its own).
    pub headers: &'a HeaderMap,
}

impl<'a> ResponseInfo<'a> {
    /// The response with `status` and `headers` (for testing a hook).
    ///
    /// ```
    /// use tollgate::http::ResponseInfo;
    /// let headers = http::HeaderMap::new();
    /// let res = ResponseInfo::new(http::StatusCode::OK, &headers);
    /// assert!(res.status.is_success());
    /// ```
    pub fn new(status: StatusCode, headers: &'a HeaderMap) -> ResponseInfo<'a> {
        ResponseInfo { status, headers }
    }
}

/// Work to do when a response body ends or is dropped, with the bytes it sent: a charge by
/// bytes, an in-flight slot to release. Runs once.
pub(crate) struct OnEnd {
    sent: u64,
    run: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl OnEnd {
    pub(crate) fn new(run: impl FnOnce(u64) + Send + Sync + 'static) -> OnEnd {
        OnEnd {
            sent: 0,
            run: Some(Box::new(run)),
        }
    }

    /// Counts `n` bytes sent.
    pub(crate) fn sent(&mut self, n: usize) {
        self.sent = self.sent.saturating_add(n as u64);
    }

    /// Runs the work now (the body ended).
    pub(crate) fn finish(&mut self) {
        if let Some(run) = self.run.take() {
            run(self.sent);
        }
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        self.finish();
    }
}

impl std::fmt::Debug for OnEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnEnd")
            .field("sent", &self.sent)
            .field("done", &self.run.is_none())
            .finish()
    }
}
