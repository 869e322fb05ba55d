//! [`InFlightLayer`]: at most N requests in flight per key, as a tower layer; the slot is held
//! until the response body ends, or the request or its body is dropped (the client went away).

// pin-project-lite generates undocumented projection types.
#![allow(missing_docs)]

use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::charge::OnEnd;
use super::headers::{sf_string, HeaderStyle, RATELIMIT, RATELIMIT_POLICY};
use super::responses::{is_grpc, missing_key, no_peer_address, problem_response, to_grpc};
use super::{Key, KeyExtractor, MissingKey, PolicyNameError, RequestInfo, ResponseBody};
use crate::{InFlightLimiter, InFlightPermit};

/// At most `max` requests in flight per key (a concurrency limit, e.g. per API key in front of
/// an LLM), with the same keys as [`RateLimitLayer`](super::RateLimitLayer). A request that
/// finds its key at the limit gets `429` with `Retry-After: 1` (no wait is known: it depends on
/// when running requests end); gRPC calls get `RESOURCE_EXHAUSTED`. The slot is released when
/// the response body ends, or when the request or its response is dropped (the client went
/// away). Responses carry `RateLimit-Policy: "name";q=<max>;qu="concurrent-requests"` and
/// `RateLimit: "name";r=<free slots>`.
///
/// ```
/// use std::num::NonZeroU64;
/// use tollgate::http::{InFlightLayer, KeyExtractor};
///
/// let layer = InFlightLayer::builder(NonZeroU64::new(4).unwrap())
///     .key(KeyExtractor::api_key())
///     .build()
///     .unwrap();
/// // let app = axum::Router::new().route(..).layer(layer);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct InFlightLayer {
    config: Arc<Config>,
}

struct Config {
    limiter: InFlightLimiter<Key>,
    key: KeyExtractor,
    missing: MissingKey,
    /// The policy name as an sf-string, and `RateLimit-Policy` rendered once (`None`: no
    /// headers).
    name: String,
    policy: Option<HeaderValue>,
    grpc: bool,
    no_peer_logged: AtomicU64,
}

/// Builds an [`InFlightLayer`]. From [`InFlightLayer::builder`].
#[derive(Debug)]
pub struct InFlightLayerBuilder {
    max: NonZeroU64,
    key: KeyExtractor,
    missing: MissingKey,
    name: String,
    style: HeaderStyle,
    grpc: bool,
}

impl InFlightLayer {
    /// A builder for at most `max` requests in flight per key.
    ///
    /// ```
    /// use std::num::NonZeroU64;
    /// use tollgate::http::InFlightLayer;
    /// let layer = InFlightLayer::builder(NonZeroU64::new(100).unwrap()).build().unwrap();
    /// assert_eq!(layer.limiter().max(), 100);
    /// ```
    pub fn builder(max: NonZeroU64) -> InFlightLayerBuilder {
        InFlightLayerBuilder {
            max,
            key: KeyExtractor::global(),
            missing: MissingKey::default(),
            name: "inflight".to_string(),
            style: HeaderStyle::default(),
            grpc: true,
        }
    }

    /// The limiter behind the layer (to read a key's count).
    ///
    /// ```
    /// use std::num::NonZeroU64;
    /// use tollgate::http::{InFlightLayer, Key};
    /// let layer = InFlightLayer::builder(NonZeroU64::new(8).unwrap()).build().unwrap();
    /// assert_eq!(layer.limiter().in_flight(&Key::Global), 0);
    /// ```
    pub fn limiter(&self) -> &InFlightLimiter<Key> {
        &self.config.limiter
    }
}

impl InFlightLayerBuilder {
    /// How to find a request's key. Default: [`KeyExtractor::global`] (one limit for all).
    ///
    /// ```
    /// # use std::num::NonZeroU64;
    /// use tollgate::http::{InFlightLayer, KeyExtractor};
    /// let layer = InFlightLayer::builder(NonZeroU64::new(2).unwrap()).key(KeyExtractor::bearer());
    /// # let _ = layer;
    /// ```
    pub fn key(mut self, key: KeyExtractor) -> Self {
        self.key = key;
        self
    }

    /// The answer to a request without a key. Default: [`MissingKey::Reject`] with 401.
    ///
    /// ```
    /// # use std::num::NonZeroU64;
    /// use tollgate::http::{InFlightLayer, Key, KeyExtractor, MissingKey};
    /// // Anonymous requests share one limit.
    /// let layer = InFlightLayer::builder(NonZeroU64::new(2).unwrap())
    ///     .key(KeyExtractor::api_key())
    ///     .missing_key(MissingKey::Fallback(Key::Global));
    /// # let _ = layer;
    /// ```
    pub fn missing_key(mut self, missing: MissingKey) -> Self {
        self.missing = missing;
        self
    }

    /// The policy name in the headers. Default: `inflight`.
    ///
    /// ```
    /// # use std::num::NonZeroU64;
    /// use tollgate::http::InFlightLayer;
    /// let layer = InFlightLayer::builder(NonZeroU64::new(2).unwrap()).policy_name("llm").build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn policy_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Which headers responses carry: [`HeaderStyle::None`] for none; otherwise the IETF
    /// fields (this limit has no legacy `X-RateLimit-*` form). Default: [`HeaderStyle::Ietf`].
    ///
    /// ```
    /// # use std::num::NonZeroU64;
    /// use tollgate::http::{HeaderStyle, InFlightLayer};
    /// let layer = InFlightLayer::builder(NonZeroU64::new(2).unwrap()).headers(HeaderStyle::None);
    /// # let _ = layer;
    /// ```
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.style = style;
        self
    }

    /// Whether gRPC calls get their refusals in gRPC (see
    /// [`RateLimitLayerBuilder::grpc`](super::RateLimitLayerBuilder::grpc)). Default: true.
    ///
    /// ```
    /// # use std::num::NonZeroU64;
    /// use tollgate::http::InFlightLayer;
    /// let layer = InFlightLayer::builder(NonZeroU64::new(2).unwrap()).grpc(false);
    /// # let _ = layer;
    /// ```
    pub fn grpc(mut self, on: bool) -> Self {
        self.grpc = on;
        self
    }

    /// Builds the layer.
    ///
    /// ```
    /// # use std::num::NonZeroU64;
    /// use tollgate::http::InFlightLayer;
    /// assert!(InFlightLayer::builder(NonZeroU64::new(2).unwrap()).policy_name("bad\n").build().is_err());
    /// ```
    ///
    /// # Errors
    /// [`PolicyNameError`] when the policy name is not printable ASCII.
    pub fn build(self) -> Result<InFlightLayer, PolicyNameError> {
        let name = sf_string(&self.name)?;
        let policy = (self.style != HeaderStyle::None).then(|| {
            HeaderValue::try_from(format!("{name};q={};qu=\"concurrent-requests\"", self.max))
                .expect("ASCII by construction")
        });
        Ok(InFlightLayer {
            config: Arc::new(Config {
                limiter: InFlightLimiter::new(self.max),
                key: self.key,
                missing: self.missing,
                name,
                policy,
                grpc: self.grpc,
                no_peer_logged: AtomicU64::new(0),
            }),
        })
    }
}

impl Config {
    /// Adds the headers for `free` slots.
    fn describe(&self, free: u64, headers: &mut http::HeaderMap) {
        if let Some(policy) = &self.policy {
            headers.append(RATELIMIT_POLICY, policy.clone());
            headers.append(
                RATELIMIT,
                HeaderValue::try_from(format!("{};r={free}", self.name))
                    .expect("ASCII by construction"),
            );
        }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            config: self.config.clone(),
        }
    }
}

impl std::fmt::Debug for InFlightLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightLayer")
            .field("limiter", &self.config.limiter)
            .field("key", &self.config.key)
            .finish_non_exhaustive()
    }
}

/// The in-flight limiting service (see [`InFlightLayer`]).
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for InFlight<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for InFlight<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        let grpc = config.grpc && is_grpc(&req);
        let refuse = |response: Response<Bytes>| {
            let response = if grpc {
                to_grpc(response, None)
            } else {
                response
            };
            InFlightFuture::Done {
                response: Some(response),
            }
        };
        let info = RequestInfo::new(&req, req.body().size_hint().exact());
        let key = match config.key.extract(&info) {
            Some(key) => key,
            None if config.key.lacks_peer(&info) => {
                return refuse(no_peer_address(&config.no_peer_logged))
            }
            None => match &config.missing {
                MissingKey::Reject(status) => return refuse(missing_key(*status, &config.key)),
                MissingKey::Fallback(key) => key.share(),
            },
        };
        match config.limiter.try_acquire(&key) {
            Ok(permit) => InFlightFuture::Calling {
                call: self.inner.call(req),
                permit: Some(permit),
                config: config.clone(),
            },
            Err(_busy) => {
                let mut response = problem_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests in flight for this key; retry when one ends",
                );
                config.describe(0, response.headers_mut());
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
                let response = if grpc {
                    to_grpc(response, Some(std::time::Duration::from_secs(1)))
                } else {
                    response
                };
                InFlightFuture::Done {
                    response: Some(response),
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`InFlight`]: holds the request's slot until the response body
    /// takes it over.
    #[project = InFlightProj]
    pub enum InFlightFuture<F> {
        Calling {
            #[pin]
            call: F,
            permit: Option<InFlightPermit>,
            config: Arc<Config>,
        },
        Done {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F> std::fmt::Debug for InFlightFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for InFlightFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            InFlightProj::Calling {
                call,
                permit,
                config,
            } => {
                // An error drops the permit with the future.
                let response = ready!(call.poll(cx))?;
                let (mut parts, body) = response.into_parts();
                let permit = permit.take().expect("polled after completion");
                config.describe(permit.remaining(), &mut parts.headers);
                let on_end = OnEnd::new(move |_| drop(permit));
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    ResponseBody::inner_then(body, Some(Box::new(on_end))),
                )))
            }
            InFlightProj::Done { response } => {
                let response = response.take().expect("polled after completion");
                let (parts, body) = response.into_parts();
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    ResponseBody::Full { data: Some(body) },
                )))
            }
        }
    }
}
