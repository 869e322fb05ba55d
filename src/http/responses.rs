//! The answers the layer writes itself: a `429` for a denial, a `503` for a refusal made
//! without the backend, a `500` for a server that hides the peer address, each with a problem
//! body (RFC 9457).

use bytes::Bytes;
use http::{Response, StatusCode};

use super::headers::{self, Headers};
use crate::Decision;

/// A denial the backend's failure policy made (Redis unreachable, `FailClosed`), or a backend
/// error under [`OnBackendError::FailClosed`](super::OnBackendError::FailClosed): not a quota verdict ([contract §4](crate::contract::redis)), so not a 429 with
/// a wait derived from an imagined empty bucket, but a 503 with a short `Retry-After` of 1 s,
/// and no rate-limit headers.
pub(super) fn degraded_denial() -> Response<Bytes> {
    let mut r = problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "the rate limiter is unavailable",
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(1));
    r
}

/// A `429` for a denial: headers, `Retry-After`, problem body.
pub(super) fn denied(headers: &Headers, d: &Decision) -> Response<Bytes> {
    let wait = headers::retry_after(d.retry_after());
    let mut r = problem_response(
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "rate limit exceeded; retry after {} s",
            wait.to_str().unwrap_or("1")
        ),
    );
    headers.apply(d, r.headers_mut());
    r.headers_mut().insert(http::header::RETRY_AFTER, wait);
    r
}

/// A request whose peer or client IP key cannot be found because the server does not pass the
/// peer address: a set-up error, answered 500 and logged (at most once a minute).
#[cold]
pub(super) fn no_peer_address(last_logged: &std::sync::atomic::AtomicU64) -> Response<Bytes> {
    use std::sync::atomic::Ordering;
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + 1;
    // Relaxed: a log throttle; a rare duplicate line is harmless.
    let last = last_logged.load(Ordering::Relaxed);
    if (last == 0 || now >= last + 60)
        && last_logged
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!(
            "tollgate: a peer-IP or client-IP key needs the connection's peer address, and the \
             request carries none; answering 500. With axum, serve with \
             `into_make_service_with_connect_info::<SocketAddr>()` and enable tollgate's `axum` \
             feature (or insert `tollgate::http::PeerAddr` yourself); with hyper, insert \
             `PeerAddr` per connection"
        );
    }
    problem_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server's rate limiter cannot see the peer address it keys on",
    )
}

pub(super) fn problem_response(status: StatusCode, detail: &str) -> Response<Bytes> {
    let (content_type, body) = headers::problem(status, detail);
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, content_type);
    r
}
