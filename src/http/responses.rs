//! The answers the layer writes itself: a `429` for a denial, a `503` for a refusal made
//! without the backend, a `500` for a server that hides the peer address, each with a problem
//! body (RFC 9457).

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::headers;
use super::KeyExtractor;
use crate::Decision;

/// A refused request, as the layer's [`on_denied`](super::RateLimitLayerBuilder::on_denied)
/// closure sees it: which policy refused, its decision and the wait.
#[derive(Debug)]
#[non_exhaustive]
pub struct Denial<'a> {
    /// The name of the (first) policy that refused the request.
    pub policy: &'a str,
    /// Its decision; `None` for a cost above the capacity when the backend could not be read.
    pub decision: Option<&'a Decision>,
    /// The longest wait of the policies that refuse (what `Retry-After` says); `None` when no
    /// wait helps (the cost is above a capacity).
    pub retry_after: Option<Duration>,
    /// Whether the request is a gRPC call (`content-type: application/grpc…`).
    pub grpc: bool,
}

impl<'a> Denial<'a> {
    /// A denial by `policy` (for testing a closure).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::http::Denial;
    /// let d = Denial::new("ip", None, Some(Duration::from_secs(3)), false);
    /// assert_eq!(d.policy, "ip");
    /// ```
    pub fn new(
        policy: &'a str,
        decision: Option<&'a Decision>,
        retry_after: Option<Duration>,
        grpc: bool,
    ) -> Denial<'a> {
        Denial {
            policy,
            decision,
            retry_after,
            grpc,
        }
    }
}

/// The layer's own `429` for a denial: problem body; the caller adds the rate-limit headers
/// and `Retry-After`.
pub(super) fn too_many(retry_after: Option<Duration>) -> Response<Bytes> {
    match retry_after {
        Some(wait) => problem_response(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "rate limit exceeded; retry after {} s",
                headers::ceil_secs(wait).max(1)
            ),
        ),
        None => problem_response(
            StatusCode::TOO_MANY_REQUESTS,
            "the request costs more than the limit's capacity: it can never be granted, and \
             retrying will not help",
        ),
    }
}

/// The answer to a request without a key, under [`MissingKey::Reject`](super::MissingKey::Reject).
pub(super) fn missing_key(status: StatusCode, key: &KeyExtractor) -> Response<Bytes> {
    let mut response = problem_response(status, "the request carries no usable rate-limit key");
    if status == StatusCode::UNAUTHORIZED {
        // RFC 9110 §15.5.2: a 401 carries a challenge.
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, key.challenge());
    }
    response
}

/// Whether `req` is a gRPC call.
pub(super) fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The layer's answer `response` as a gRPC client expects it: a Trailers-Only response (HTTP
/// 200, no body) whose `grpc-status` says what the HTTP status said: 429 →
/// `RESOURCE_EXHAUSTED` (8), 503 → `UNAVAILABLE` (14), 401 → `UNAUTHENTICATED` (16), else
/// `INTERNAL` (13). A wait goes along as `retry-after` (seconds) and as
/// `grpc-retry-pushback-ms` (the gRPC retry policy's server pushback). Other headers stay
/// (the rate-limit fields become metadata).
pub(super) fn to_grpc(response: Response<Bytes>, wait: Option<Duration>) -> Response<Bytes> {
    let (mut parts, _) = response.into_parts();
    let (code, message) = match parts.status {
        StatusCode::TOO_MANY_REQUESTS => (8, "rate limit exceeded"),
        StatusCode::SERVICE_UNAVAILABLE => (14, "the rate limiter is unavailable"),
        StatusCode::UNAUTHORIZED => (16, "the request carries no usable rate-limit key"),
        _ => (13, "the server's rate limiter is misconfigured"),
    };
    parts.status = StatusCode::OK;
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    parts.headers.insert("grpc-status", HeaderValue::from(code));
    parts
        .headers
        .insert("grpc-message", HeaderValue::from_static(message));
    parts.headers.remove(http::header::WWW_AUTHENTICATE);
    if let Some(wait) = wait {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        parts
            .headers
            .insert("grpc-retry-pushback-ms", HeaderValue::from(ms));
    }
    Response::from_parts(parts, Bytes::new())
}

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

/// Adds `Retry-After` for `wait` to a denial, unless it has one.
pub(super) fn add_retry_after(response: &mut Response<Bytes>, wait: Option<Duration>) {
    if let Some(wait) = wait {
        if !response.headers().contains_key(RETRY_AFTER) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, headers::retry_after(wait));
        }
    }
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
