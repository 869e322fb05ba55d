//! HTTP rate limiting as a [tower] layer (feature `http`): for axum, hyper, tonic and anything
//! else built on `tower::Service<http::Request<B>>` ([contract §5](crate::contract::http)).
//!
//! ```
//! use tollgate::http::{Key, KeyExtractor, RateLimitLayer};
//! use tollgate::{KeyedLimiter, Limit};
//!
//! // Per API key: capacity 10, 2 tokens back every second.
//! let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::new(10, 2, std::time::Duration::from_secs(1))?);
//! let layer = RateLimitLayer::builder(limiter)
//!     .key(KeyExtractor::api_key())
//!     .exempt(|req| req.uri.path() == "/health")
//!     .build()
//!     .expect("valid policy name");
//! // let app = axum::Router::new().route(..).layer(layer);
//! # let _ = layer;
//! # Ok::<(), tollgate::LimitError>(())
//! ```
//!
//! For each request that is not exempt, the layer finds its key (missing: [`MissingKey`]), asks
//! the [`Backend`] for `cost` tokens, and then:
//! - allowed: calls the inner service and adds `RateLimit` and `RateLimit-Policy` (and the legacy
//!   `X-RateLimit-*` with [`HeaderStyle::IetfAndLegacy`]) to its response;
//! - denied: answers `429 Too Many Requests` itself, with the same headers, `Retry-After` (whole
//!   seconds, rounded up, at least 1) and an `application/problem+json` body; the inner service
//!   is not called. A cost above the capacity is denied the same way (it can never succeed);
//! - backend failure: [`OnBackendError`]: fail open (the request passes; a `tracing` warning) or
//!   fail closed (`503`).
//!
//! In shadow mode ([`RateLimitLayerBuilder::shadow`]) the layer decides and counts as above but
//! refuses nothing.
//!
//! [tower]: https://docs.rs/tower

mod backend;
mod body;
mod builder;
mod headers;
mod key;
mod proxies;
mod responses;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

pub use backend::{Backend, Verdict};
pub use body::ResponseBody;
pub use builder::RateLimitLayerBuilder;
pub use headers::{HeaderStyle, HeaderWriter, PolicyNameError};
pub use key::{Key, KeyExtractor, PeerAddr, RequestInfo};
pub use proxies::{CidrError, ForwardedHeader, TrustedProxies};

use headers::Headers;
use responses::{degraded_denial, denied, no_peer_address, problem_response};

use crate::Decision;

/// What to do with a request whose key is missing or unreadable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Answer with this status (and a problem body); the inner service is not called.
    Reject(StatusCode),
    /// Count the request against this shared key.
    Fallback(Key),
}

impl Default for MissingKey {
    /// `Reject(401 Unauthorized)`: a request without the key the limit is keyed on (an API key,
    /// a token) is refused.
    fn default() -> Self {
        MissingKey::Reject(StatusCode::UNAUTHORIZED)
    }
}

/// What to do when the backend cannot decide (e.g. Redis is down).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnBackendError {
    /// Let the request through without rate-limit headers, and log a `tracing` warning.
    #[default]
    FailOpen,
    /// Answer `503 Service Unavailable` (and a problem body).
    FailClosed,
}

type InfoFn<T> = dyn Fn(&RequestInfo<'_>) -> T + Send + Sync;

struct Config<B> {
    backend: B,
    key: KeyExtractor,
    cost: Option<Arc<InfoFn<u64>>>,
    exempt: Option<Arc<InfoFn<bool>>>,
    missing: MissingKey,
    on_error: OnBackendError,
    headers: Headers,
    /// Shadow (dry-run) mode: decide and count, refuse nothing. Switchable at runtime.
    shadow: std::sync::atomic::AtomicBool,
    /// In shadow mode, whether responses carry the rate-limit headers.
    shadow_headers: bool,
    /// Requests shadow mode let through that would have been refused (on a line of its own:
    /// written under overload, while `shadow` beside it is read by every request).
    would_deny: crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64>,
    /// The policy name, as given (a metrics label).
    policy: String,
    /// When the missing peer address was last logged (seconds since the first such request,
    /// plus one; 0: never).
    no_peer_logged: std::sync::atomic::AtomicU64,
    /// The backend's housekeeping thread, stopped when the config drops.
    maintenance: std::sync::OnceLock<Maintenance>,
}

/// Stops the layer's housekeeping thread when dropped.
struct Maintenance {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::Thread,
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        // Relaxed: the flag alone is the message; `unpark` wakes the thread to read it.
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.unpark();
    }
}

/// Starts the housekeeping thread of `config`'s backend: every period it calls `maintain`
/// while the config lives. It holds only a weak reference, and ends when the config drops
/// (the last layer or service clone). `None` when the backend needs none, or the thread
/// cannot be spawned (the limiter then sweeps on new keys, as without a layer).
fn start_maintenance<B: Backend>(config: &Arc<Config<B>>) -> Option<Maintenance> {
    let period = config.backend.maintenance_period()?;
    let weak = Arc::downgrade(config);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = std::thread::Builder::new()
        .name("tollgate-evictor".into())
        .spawn(move || loop {
            std::thread::park_timeout(period);
            // Relaxed: see `Maintenance::drop`.
            if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            match weak.upgrade() {
                Some(config) => config.backend.maintain(),
                None => break,
            }
        })
        .ok()?;
    Some(Maintenance {
        stop,
        thread: handle.thread().clone(),
    })
}

/// The tower layer. Clone it freely (it shares one backend).
pub struct RateLimitLayer<B> {
    config: Arc<Config<B>>,
}

impl<B> Clone for RateLimitLayer<B> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            config: self.config.clone(),
        }
    }
}

impl<B> RateLimitLayer<B> {
    /// Switches shadow (dry-run) mode on or off while requests go on, for this layer and every
    /// clone of it (see [`RateLimitLayerBuilder::shadow`]).
    pub fn set_shadow(&self, on: bool) {
        // Relaxed: a setting; no other memory is published with it.
        self.config.shadow.store(on, Ordering::Relaxed);
    }

    /// Whether shadow mode is on.
    pub fn is_shadow(&self) -> bool {
        // Relaxed: as in `set_shadow`.
        self.config.shadow.load(Ordering::Relaxed)
    }

    /// How many requests shadow mode let through that the layer would have refused.
    pub fn would_deny(&self) -> u64 {
        // Relaxed: a counter.
        self.config.would_deny.load(Ordering::Relaxed)
    }
}

impl<B> Config<B> {
    /// Whether shadow mode is on (read once per request).
    fn in_shadow(&self) -> bool {
        // Relaxed: as in `RateLimitLayer::set_shadow`.
        self.shadow.load(Ordering::Relaxed)
    }

    /// A refusal shadow mode turned into a pass: counted, and logged at debug level.
    fn let_through(&self, why: &'static str) {
        // Relaxed: a counter.
        self.would_deny.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tollgate_http_would_deny_total", "policy" => self.policy.clone())
            .increment(1);
        tracing::debug!(policy = %self.policy, why, "shadow mode: request let through");
    }

    /// The decision whose headers a passing response carries: none in shadow mode unless
    /// asked for.
    fn shown(&self, decision: Decision, shadow: bool) -> Option<Decision> {
        (!shadow || self.shadow_headers).then_some(decision)
    }
}

impl<S, B> Layer<S> for RateLimitLayer<B> {
    type Service = RateLimit<S, B>;

    fn layer(&self, inner: S) -> RateLimit<S, B> {
        RateLimit {
            inner,
            config: self.config.clone(),
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for RateLimitLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("backend", &self.config.backend)
            .field("key", &self.config.key)
            .field("shadow", &self.is_shadow())
            .finish_non_exhaustive()
    }
}

/// The rate-limiting service (see the [module docs](self)).
pub struct RateLimit<S, B> {
    inner: S,
    config: Arc<Config<B>>,
}

impl<S: std::fmt::Debug, B: std::fmt::Debug> std::fmt::Debug for RateLimit<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("backend", &self.config.backend)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, B> Clone for RateLimit<S, B> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S, B, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, B>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    B: Backend,
    ReqBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        let info = RequestInfo::new(&req, req.body().size_hint().exact());
        if config.exempt.as_ref().is_some_and(|f| f(&info)) {
            return ResponseFuture::passthrough(self.inner.call(req));
        }
        let key = match config.key.extract(&info) {
            Some(key) => key,
            None if config.key.lacks_peer(&info) => {
                let response = no_peer_address(&config.no_peer_logged);
                if config.in_shadow() {
                    // Logged as a set-up error all the same; nothing refused.
                    config.let_through("no peer address");
                    return ResponseFuture::passthrough(self.inner.call(req));
                }
                return ResponseFuture::done(response);
            }
            None => match &config.missing {
                MissingKey::Reject(_) if config.in_shadow() => {
                    config.let_through("no key");
                    return ResponseFuture::passthrough(self.inner.call(req));
                }
                MissingKey::Reject(status) => {
                    let mut response =
                        problem_response(*status, "the request carries no usable rate-limit key");
                    if *status == StatusCode::UNAUTHORIZED {
                        // RFC 9110 §15.5.2: a 401 carries a challenge.
                        response
                            .headers_mut()
                            .insert(http::header::WWW_AUTHENTICATE, config.key.challenge());
                    }
                    return ResponseFuture::done(response);
                }
                MissingKey::Fallback(key) => key.share(),
            },
        };
        let cost = config.cost.as_ref().map_or(1, |f| f(&info));
        let check = config.backend.acquire(&key, cost);
        // Take the service that was polled ready; leave a clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Checking {
                check,
                req: Some(req),
                inner: Some(inner),
                key: Some(key),
            },
            config: Some(self.config.clone()),
        }
    }
}

pin_project! {
    /// The response future of [`RateLimit`].
    pub struct ResponseFuture<S, B, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        B: Backend,
    {
        #[pin]
        state: State<S, B, ReqBody>,
        config: Option<Arc<Config<B>>>,
    }
}

impl<S, B, ReqBody> std::fmt::Debug for ResponseFuture<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: Backend,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        B: Backend,
    {
        Checking {
            #[pin]
            check: B::Future,
            req: Option<Request<ReqBody>>,
            inner: Option<S>,
            key: Option<Key>,
        },
        // A cost above capacity: peek for the headers, then deny.
        Peeking {
            #[pin]
            check: B::Future,
        },
        Calling {
            #[pin]
            call: S::Future,
            decision: Option<Decision>,
        },
        Done {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, B, ReqBody> ResponseFuture<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: Backend,
{
    fn passthrough(call: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling {
                call,
                decision: None,
            },
            config: None,
        }
    }

    fn done(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Done {
                response: Some(response),
            },
            config: None,
        }
    }
}

impl<S, B, ReqBody, ResBody> Future for ResponseFuture<S, B, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    B: Backend,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking {
                    check,
                    req,
                    inner,
                    key,
                } => {
                    let verdict = ready!(check.poll(cx));
                    let config = this.config.as_ref().expect("set while checking");
                    let (Some(req), Some(mut inner)) = (req.take(), inner.take()) else {
                        unreachable!("taken once")
                    };
                    let shadow = config.in_shadow();
                    let next = match verdict {
                        Ok(Ok(d)) if d.is_allowed() => State::Calling {
                            call: inner.call(req),
                            decision: config.shown(d, shadow),
                        },
                        Ok(Ok(d)) if shadow => {
                            config.let_through(if d.is_degraded() {
                                "backend failure policy"
                            } else {
                                "denied"
                            });
                            State::Calling {
                                call: inner.call(req),
                                decision: config.shown(d, shadow).filter(|d| !d.is_degraded()),
                            }
                        }
                        Ok(Ok(d)) if d.is_degraded() => State::Done {
                            response: Some(degraded_denial()),
                        },
                        Ok(Ok(d)) => State::Done {
                            response: Some(denied(&config.headers, &d)),
                        },
                        Ok(Err(_too_costly)) if shadow => {
                            config.let_through("cost above the capacity");
                            State::Calling {
                                call: inner.call(req),
                                decision: None,
                            }
                        }
                        Ok(Err(_too_costly)) => match key.take() {
                            Some(key) => State::Peeking {
                                check: config.backend.acquire(&key, 0),
                            },
                            None => unreachable!("taken once"),
                        },
                        Err(error) => match config.on_error {
                            OnBackendError::FailOpen => {
                                tracing::warn!(%error, "rate-limit backend failed; request let through (fail open)");
                                State::Calling {
                                    call: inner.call(req),
                                    decision: None,
                                }
                            }
                            OnBackendError::FailClosed if shadow => {
                                tracing::warn!(%error, "rate-limit backend failed; request let through (shadow mode)");
                                config.let_through("backend error");
                                State::Calling {
                                    call: inner.call(req),
                                    decision: None,
                                }
                            }
                            OnBackendError::FailClosed => {
                                // The error (hosts, server messages) goes to the log, not to
                                // the client.
                                tracing::warn!(%error, "rate-limit backend failed; request refused (fail closed)");
                                State::Done {
                                    response: Some(degraded_denial()),
                                }
                            }
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Peeking { check } => {
                    let verdict = ready!(check.poll(cx));
                    let config = this.config.as_ref().expect("set while peeking");
                    let mut response = problem_response(
                        StatusCode::TOO_MANY_REQUESTS,
                        "the request costs more than the limit's capacity: it can never be \
                         granted, and retrying will not help",
                    );
                    // No Retry-After: no wait makes this request pass (issue 19). The key's
                    // bucket is described as for any decision.
                    if let Ok(Ok(d)) = verdict {
                        config.headers.apply(&d, response.headers_mut());
                    }
                    this.state.set(State::Done {
                        response: Some(response),
                    });
                }
                StateProj::Calling { call, decision } => {
                    let response = ready!(call.poll(cx))?;
                    let (mut parts, body) = response.into_parts();
                    if let (Some(d), Some(config)) = (decision.as_ref(), this.config.as_ref()) {
                        config.headers.apply(d, &mut parts.headers);
                    }
                    return Poll::Ready(Ok(Response::from_parts(
                        parts,
                        ResponseBody::Inner { body },
                    )));
                }
                StateProj::Done { response } => {
                    let response = response.take().expect("polled after completion");
                    let (parts, body) = response.into_parts();
                    return Poll::Ready(Ok(Response::from_parts(
                        parts,
                        ResponseBody::Full { data: Some(body) },
                    )));
                }
            }
        }
    }
}
