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
//! More:
//! - several [`Policy`]s over different keys in one layer, all-or-nothing (a refusal by one
//!   gives back what the others took), each a member of the header lists;
//! - charging by response ([`RateLimitLayerBuilder::charge_by_response`], [`Charge`]): count
//!   only failed logins, or charge by the bytes sent;
//! - a custom denial response ([`RateLimitLayerBuilder::on_denied`]), and gRPC calls refused
//!   in gRPC (`RESOURCE_EXHAUSTED`, [`RateLimitLayerBuilder::grpc`]);
//! - [`InFlightLayer`]: at most N requests in flight per key.
//!
//! # Metrics and logs
//!
//! With the `metrics` feature, every decision of a policy counts in
//! `tollgate_http_decisions_total`, labelled
//! - `policy`: the policy's name;
//! - `tier`: the key's tier in a tiered [`KeyedLimiter`](crate::KeyedLimiter) (empty without);
//! - `route`: [`RateLimitLayerBuilder::route_label`]; by default, with the `axum` feature,
//!   axum's matched route (`/items/{id}`); empty otherwise;
//! - `outcome`: `allowed`; `near_limit` (allowed, with less than a fifth of the capacity left,
//!   as Envoy's near-limit counter); `denied`; `shadow_denied` (refused in shadow mode, let
//!   through); `error` (the backend failed); `no_key` (no key, or no peer address).
//!
//! A request counts once per policy that decided it: a policy that would refuse counts when it
//! is looked at, one that grants when it is taken from (so not in a request another refused). `tollgate_http_would_deny_total{policy}` counts
//! shadow-mode passes. Each decision is also a `tracing` event at debug level (policy,
//! outcome, tier, route, remaining, capacity, wait; never the key, which may be a secret). The
//! `prometheus` example serves the counters on `/metrics`.
//!
//! [tower]: https://docs.rs/tower

mod backend;
mod body;
mod builder;
mod charge;
mod future;
mod headers;
mod inflight;
mod key;
mod observe;
#[cfg(feature = "config")]
mod path_pattern;
mod policy;
mod proxies;
mod responses;
#[cfg(feature = "config")]
mod rules;
mod verdicts;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

pub use backend::{Backend, Verdict};
pub use body::ResponseBody;
pub use builder::{LayerError, RateLimitLayerBuilder};
pub use charge::{Charge, ResponseInfo};
pub use future::ResponseFuture;
pub use headers::{HeaderStyle, HeaderWriter, PolicyNameError};
pub use inflight::{InFlight, InFlightFuture, InFlightLayer, InFlightLayerBuilder};
pub use key::{Key, KeyExtractor, PeerAddr, RequestInfo};
pub use policy::Policy;
pub use proxies::{CidrError, ForwardedHeader, TrustedProxies};
pub use responses::Denial;
#[cfg(feature = "config")]
pub use rules::{ConfigError, Reloaded, RuleSet, RuleWatcher};

use policy::Active;

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
type ChargeFn = dyn Fn(&ResponseInfo<'_>) -> Charge + Send + Sync;
type DenyFn = dyn Fn(&Denial<'_>) -> Response<Bytes> + Send + Sync;
type RouteFn = dyn Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync;

struct Config<B> {
    /// The policies, in the order they are asked (at least one).
    policies: Box<[Active<B>]>,
    exempt: Option<Arc<InfoFn<bool>>>,
    on_error: OnBackendError,
    /// Shadow (dry-run) mode for the whole layer: decide and count, refuse nothing.
    /// Switchable at runtime.
    shadow: AtomicBool,
    /// In shadow mode, whether responses carry the rate-limit headers.
    shadow_headers: bool,
    /// What a request costs once its response is known.
    charge: Option<Arc<ChargeFn>>,
    /// The user's denial response.
    on_denied: Option<Arc<DenyFn>>,
    /// Answer gRPC requests in gRPC (status 8 and friends) rather than HTTP statuses.
    grpc: bool,
    /// The route label of a request (metrics, logs).
    route: Option<Arc<RouteFn>>,
    /// When the missing peer address was last logged (seconds since the first such request,
    /// plus one; 0: never).
    no_peer_logged: AtomicU64,
    /// The backends' housekeeping thread, stopped when the config drops.
    maintenance: std::sync::OnceLock<Maintenance>,
}

/// Stops the layer's housekeeping thread when dropped.
struct Maintenance {
    stop: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        // Relaxed: the flag alone is the message; `unpark` wakes the thread to read it.
        self.stop.store(true, Ordering::Relaxed);
        self.thread.unpark();
    }
}

/// Starts the housekeeping thread of `config`'s backends: every period (the shortest any
/// backend asks for) it calls their `maintain` while the config lives. It holds only a weak
/// reference, and ends when the config drops (the last layer or service clone). `None` when
/// no backend needs any, or the thread cannot be spawned (the limiters then sweep on new keys,
/// as without a layer).
fn start_maintenance<B: Backend>(config: &Arc<Config<B>>) -> Option<Maintenance> {
    let period = config
        .policies
        .iter()
        .filter_map(|p| p.backend.maintenance_period())
        .min()?;
    let weak = Arc::downgrade(config);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = std::thread::Builder::new()
        .name("tollgate-evictor".into())
        .spawn(move || loop {
            std::thread::park_timeout(period);
            // Relaxed: see `Maintenance::drop`.
            if stopped.load(Ordering::Relaxed) {
                break;
            }
            match weak.upgrade() {
                Some(config) => config.policies.iter().for_each(|p| p.backend.maintain()),
                None => break,
            }
        })
        .ok()?;
    Some(Maintenance {
        stop,
        thread: handle.thread().clone(),
    })
}

/// The tower layer. Clone it freely (it shares its backends).
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

/// No policy of this name in the layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPolicy {
    /// The name asked for.
    pub name: String,
}

impl std::fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the layer has no policy named {:?}", self.name)
    }
}

impl std::error::Error for UnknownPolicy {}

impl<B> RateLimitLayer<B> {
    /// Switches shadow (dry-run) mode on or off for the whole layer while requests go on, for
    /// this layer and every clone of it (see [`RateLimitLayerBuilder::shadow`]).
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(100)?);
    /// let layer = RateLimitLayer::builder(limiter).shadow(true).build().unwrap();
    /// layer.set_shadow(false); // enforce from now on
    /// assert!(!layer.is_shadow());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn set_shadow(&self, on: bool) {
        // Relaxed: a setting; no other memory is published with it.
        self.config.shadow.store(on, Ordering::Relaxed);
    }

    /// Whether the layer's shadow mode is on.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(100)?);
    /// let layer = RateLimitLayer::builder(limiter).build().unwrap();
    /// assert!(!layer.is_shadow());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn is_shadow(&self) -> bool {
        self.config.in_shadow()
    }

    /// Switches one policy's own shadow mode (see [`Policy::shadow`]) while requests go on.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(100)?);
    /// let layer = RateLimitLayer::builder(limiter).policy_name("ip").build().unwrap();
    /// layer.set_policy_shadow("ip", true).unwrap();
    /// assert_eq!(layer.is_policy_shadow("ip"), Some(true));
    /// assert!(layer.set_policy_shadow("nope", true).is_err());
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`UnknownPolicy`] when the layer has no policy named `name` (nothing changes).
    pub fn set_policy_shadow(&self, name: &str, on: bool) -> Result<(), UnknownPolicy> {
        let policy = self.policy(name)?;
        // Relaxed: as in `set_shadow`.
        policy.shadow.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// Whether policy `name`'s own shadow mode is on; `None` when there is no such policy.
    pub fn is_policy_shadow(&self, name: &str) -> Option<bool> {
        self.policy(name).ok().map(Active::in_shadow)
    }

    /// How many requests shadow mode let through that the layer would have refused (a
    /// request several policies would have refused counts once per policy).
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(100)?);
    /// let layer = RateLimitLayer::builder(limiter).shadow(true).build().unwrap();
    /// assert_eq!(layer.would_deny(), 0);
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn would_deny(&self) -> u64 {
        self.config
            .policies
            .iter()
            // Relaxed: counters.
            .map(|p| p.would_deny.load(Ordering::Relaxed))
            .sum()
    }

    /// How many requests shadow mode let through that policy `name` would have refused;
    /// `None` when there is no such policy.
    pub fn policy_would_deny(&self, name: &str) -> Option<u64> {
        // Relaxed: a counter.
        self.policy(name)
            .ok()
            .map(|p| p.would_deny.load(Ordering::Relaxed))
    }

    /// The names of the layer's policies, in the order they are asked.
    pub fn policies(&self) -> impl Iterator<Item = &str> + '_ {
        self.config.policies.iter().map(|p| p.name.as_str())
    }

    fn policy(&self, name: &str) -> Result<&Active<B>, UnknownPolicy> {
        self.config
            .policies
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| UnknownPolicy {
                name: name.to_string(),
            })
    }
}

impl<B> Config<B> {
    /// Whether the layer's shadow mode is on (read once per request).
    fn in_shadow(&self) -> bool {
        // Relaxed: as in `RateLimitLayer::set_shadow`.
        self.shadow.load(Ordering::Relaxed)
    }

    /// A refusal of policy `i` that shadow mode turned into a pass: counted, and logged at
    /// debug level.
    fn let_through(&self, i: usize, why: &'static str) {
        let policy = &self.policies[i];
        // Relaxed: a counter.
        policy.would_deny.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("tollgate_http_would_deny_total", "policy" => policy.label.clone())
            .increment(1);
        tracing::debug!(policy = %policy.name, why, "shadow mode: request let through");
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
            .field("policies", &self.policies().collect::<Vec<_>>())
            .field("backend", &self.config.policies[0].backend)
            .field("key", &self.config.policies[0].key)
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
            .field("backend", &self.config.policies[0].backend)
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
        let info = RequestInfo::new(&req, req.body().size_hint().exact());
        if self.config.exempt.as_ref().is_some_and(|f| f(&info)) {
            return ResponseFuture::passthrough(self.inner.call(req));
        }
        // Take the service that was polled ready; leave a clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::start(self.config.clone(), req, inner)
    }
}
