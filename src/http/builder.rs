//! [`RateLimitLayerBuilder`]: the settings of a [`RateLimitLayer`], and building it.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use super::{
    start_maintenance, Backend, Charge, ChargeFn, Config, Denial, DenyFn, HeaderStyle, InfoFn,
    KeyExtractor, MissingKey, OnBackendError, Policy, PolicyNameError, RateLimitLayer, RequestInfo,
    ResponseInfo, RouteFn,
};

/// Why a [`RateLimitLayerBuilder`] did not build.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerError {
    /// A policy name that cannot be written in the headers.
    PolicyName(PolicyNameError),
    /// Two policies with one name (their header members and metrics would be confused).
    DuplicatePolicy(String),
    /// Several policies (all-or-nothing) or response charging need a backend that can give
    /// tokens back ([`Backend::can_undo`]); this policy's cannot.
    CannotUndo(String),
}

impl std::fmt::Display for LayerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerError::PolicyName(e) => e.fmt(f),
            LayerError::DuplicatePolicy(name) => {
                write!(f, "two policies are named {name:?}: give each its own name")
            }
            LayerError::CannotUndo(name) => write!(
                f,
                "policy {name:?}: its backend cannot give tokens back, which several policies \
                 in one layer (all-or-nothing) and response charging need"
            ),
        }
    }
}

impl std::error::Error for LayerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LayerError::PolicyName(e) => Some(e),
            _ => None,
        }
    }
}

impl From<PolicyNameError> for LayerError {
    fn from(e: PolicyNameError) -> Self {
        LayerError::PolicyName(e)
    }
}

impl<B: Backend> RateLimitLayer<B> {
    /// A builder whose first policy is `policy` (its name, backend, key, cost, missing-key
    /// answer, shadow mode and scope).
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, KeyExtractor, Policy, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(5)?);
    /// let layer = RateLimitLayer::from_policy(Policy::new("ip", limiter).key(KeyExtractor::peer_ip()))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn from_policy(policy: Policy<B>) -> RateLimitLayerBuilder<B> {
        let Policy {
            name,
            backend,
            key,
            cost,
            missing,
            shadow,
            when,
        } = policy;
        let mut builder = RateLimitLayer::builder(backend);
        builder.policy = name;
        builder.key = key;
        builder.cost = cost;
        builder.missing = missing;
        builder.first_shadow = shadow;
        builder.first_when = when;
        builder
    }

    /// A builder over `backend` (a [`KeyedLimiter<Key>`](crate::KeyedLimiter), an `Arc` of one,
    /// or another [`Backend`]).
    pub fn builder(backend: B) -> RateLimitLayerBuilder<B> {
        RateLimitLayerBuilder {
            backend,
            key: KeyExtractor::global(),
            cost: None,
            exempt: None,
            missing: MissingKey::default(),
            on_error: OnBackendError::default(),
            policy: "default".to_string(),
            style: HeaderStyle::default(),
            shadow: false,
            shadow_headers: false,
            more: Vec::new(),
            charge: None,
            on_denied: None,
            grpc: true,
            route: None,
            first_shadow: false,
            first_when: None,
        }
    }
}

/// Builds a [`RateLimitLayer`]. From [`RateLimitLayer::builder`].
pub struct RateLimitLayerBuilder<B> {
    backend: B,
    key: KeyExtractor,
    cost: Option<Arc<InfoFn<u64>>>,
    exempt: Option<Arc<InfoFn<bool>>>,
    missing: MissingKey,
    on_error: OnBackendError,
    policy: String,
    style: HeaderStyle,
    shadow: bool,
    shadow_headers: bool,
    more: Vec<Policy<B>>,
    charge: Option<Arc<ChargeFn>>,
    on_denied: Option<Arc<DenyFn>>,
    grpc: bool,
    route: Option<Arc<RouteFn>>,
    /// The first policy's own shadow mode and scope (from [`RateLimitLayer::from_policy`]).
    first_shadow: bool,
    first_when: Option<Arc<InfoFn<bool>>>,
}

impl<B: Backend> RateLimitLayerBuilder<B> {
    /// Adds a policy over its own key, asked after the ones before it: the request passes
    /// only if every policy grants it, and a refusal by one gives back what the others took
    /// (see [`Policy`]). The builder's own settings ([`key`](Self::key),
    /// [`cost`](Self::cost), [`missing_key`](Self::missing_key),
    /// [`policy_name`](Self::policy_name)) are the first policy's.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, KeyExtractor, Policy, RateLimitLayer}};
    /// let per_ip: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(100)?);
    /// let global: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(50_000)?);
    /// let layer = RateLimitLayer::builder(per_ip)
    ///     .key(KeyExtractor::peer_ip())
    ///     .policy_name("ip")
    ///     .policy(Policy::new("global", global))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn policy(mut self, policy: Policy<B>) -> Self {
        self.more.push(policy);
        self
    }

    /// What a request costs once its response is known: keep its tokens, give them back, or
    /// charge more (a fixed amount, or by the bytes of the body sent), for every policy that
    /// granted it. E.g. count only failed logins. The backends must be able to give tokens
    /// back ([`Backend::can_undo`]; the in-memory limiter can). The response's rate-limit
    /// headers describe the decision made for the request, before this charge.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Charge, Key, KeyExtractor, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(5)?);
    /// // Five failed logins a minute per IP; successful ones are free.
    /// let layer = RateLimitLayer::builder(limiter)
    ///     .key(KeyExtractor::peer_ip())
    ///     .charge_by_response(|res| if res.status.is_success() { Charge::Undo } else { Charge::Keep })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn charge_by_response(
        mut self,
        f: impl Fn(&ResponseInfo<'_>) -> Charge + Send + Sync + 'static,
    ) -> Self {
        self.charge = Some(Arc::new(f));
        self
    }

    /// The response to a denied request, in place of the layer's `429` with a problem body.
    /// The layer then adds the rate-limit headers and, unless the response has one,
    /// `Retry-After`. For a gRPC call the closure's response is sent as it is (see
    /// [`Denial::grpc`]).
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(5)?);
    /// let layer = RateLimitLayer::builder(limiter)
    ///     .on_denied(|denial| {
    ///         let mut res = http::Response::new(bytes::Bytes::from(format!(
    ///             "<h1>Slow down</h1><p>{} says wait.</p>",
    ///             denial.policy
    ///         )));
    ///         *res.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    ///         res.headers_mut().insert("content-type", "text/html".parse().unwrap());
    ///         res
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn on_denied(
        mut self,
        f: impl Fn(&Denial<'_>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.on_denied = Some(Arc::new(f));
        self
    }

    /// Whether gRPC calls (`content-type: application/grpc…`) get the layer's refusals in gRPC:
    /// HTTP 200 with `grpc-status` 8 (`RESOURCE_EXHAUSTED`) for a denial, 14 (`UNAVAILABLE`)
    /// for a backend failure, 16 (`UNAUTHENTICATED`) for a missing key, with the wait as
    /// `retry-after` and `grpc-retry-pushback-ms` metadata. An HTTP 429 would reach a gRPC
    /// client as a transport error. Default: true.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(5)?);
    /// let layer = RateLimitLayer::builder(limiter).grpc(false).build().unwrap();
    /// # let _ = layer;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn grpc(mut self, on: bool) -> Self {
        self.grpc = on;
        self
    }

    /// How to find a request's key. Default: [`KeyExtractor::global`].
    pub fn key(mut self, key: KeyExtractor) -> Self {
        self.key = key;
        self
    }

    /// Tokens a request costs. Default: 1.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(100)?);
    /// // Writes cost 5, reads 1.
    /// let layer = RateLimitLayer::builder(limiter)
    ///     .cost(|req| if req.method == http::Method::GET { 1 } else { 5 })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn cost(mut self, f: impl Fn(&RequestInfo<'_>) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(f));
        self
    }

    /// Requests for which this returns true skip the limiter entirely (health checks).
    pub fn exempt(mut self, f: impl Fn(&RequestInfo<'_>) -> bool + Send + Sync + 'static) -> Self {
        self.exempt = Some(Arc::new(f));
        self
    }

    /// The answer to a request without a key. Default: [`MissingKey::Reject`] with 401.
    pub fn missing_key(mut self, missing: MissingKey) -> Self {
        self.missing = missing;
        self
    }

    /// The answer when the backend fails. Default: [`OnBackendError::FailOpen`].
    pub fn on_backend_error(mut self, on_error: OnBackendError) -> Self {
        self.on_error = on_error;
        self
    }

    /// The policy name in the headers. Default: `default`.
    pub fn policy_name(mut self, name: impl Into<String>) -> Self {
        self.policy = name.into();
        self
    }

    /// Which headers responses carry. Default: [`HeaderStyle::Ietf`].
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.style = style;
        self
    }

    /// Shadow (dry-run) mode: every request is decided and counted as usual, but none is
    /// refused. A request the layer would have refused (a denial, a cost above the capacity, a
    /// missing key, a missing peer address, a fail-closed backend error) goes to the inner
    /// service, is counted in
    /// [`RateLimitLayer::would_deny`] (and with the `metrics` feature in the
    /// `tollgate_http_would_deny_total` counter, labelled with the policy), and logged at debug
    /// level. Switch it at runtime with [`RateLimitLayer::set_shadow`]. Default: off.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(100)?);
    /// // Try a new limit on production traffic before enforcing it.
    /// let layer = RateLimitLayer::builder(limiter).shadow(true).build().unwrap();
    /// assert!(layer.is_shadow());
    /// layer.set_shadow(false); // enforce from now on
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// In shadow mode, whether responses carry the rate-limit headers (clients would see the
    /// would-be quota). Default: false, so trying a limit changes nothing a client sees.
    pub fn shadow_headers(mut self, on: bool) -> Self {
        self.shadow_headers = on;
        self
    }

    /// The `route` label of the layer's metrics and log events for a request (keep the set of
    /// values small: a route pattern, not a path with ids). Default: with the `axum` feature,
    /// axum's matched route (`/users/{id}`) when the layer is added with `Router::layer` or
    /// `route_layer`; none otherwise. See the [metrics](super#metrics-and-logs).
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, RateLimitLayer}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(5)?);
    /// let layer = RateLimitLayer::builder(limiter)
    ///     .route_label(|req| Some(req.uri.path().split('/').nth(1)?.to_string()))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn route_label(
        mut self,
        f: impl Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.route = Some(Arc::new(f));
        self
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// [`LayerError::PolicyName`] when a policy name is not printable ASCII;
    /// [`LayerError::DuplicatePolicy`] when two policies share a name;
    /// [`LayerError::CannotUndo`] for several policies or a response charge over a backend
    /// that cannot give tokens back.
    pub fn build(self) -> Result<RateLimitLayer<B>, LayerError> {
        let first = Policy {
            name: self.policy,
            backend: self.backend,
            key: self.key,
            cost: self.cost,
            missing: self.missing,
            shadow: self.first_shadow,
            when: self.first_when,
        };
        let several = !self.more.is_empty();
        let mut policies = Vec::with_capacity(1 + self.more.len());
        for p in std::iter::once(first).chain(self.more) {
            if policies.iter().any(|q: &super::Active<B>| q.name == p.name) {
                return Err(LayerError::DuplicatePolicy(p.name));
            }
            if (several || self.charge.is_some()) && !p.backend.can_undo() {
                return Err(LayerError::CannotUndo(p.name));
            }
            policies.push(p.activate(self.style)?);
        }
        let config = Arc::new(Config {
            policies: policies.into_boxed_slice(),
            exempt: self.exempt,
            on_error: self.on_error,
            shadow: AtomicBool::new(self.shadow),
            shadow_headers: self.shadow_headers,
            charge: self.charge,
            on_denied: self.on_denied,
            grpc: self.grpc,
            route: self.route,
            no_peer_logged: AtomicU64::new(0),
            maintenance: std::sync::OnceLock::new(),
        });
        if let Some(m) = start_maintenance(&config) {
            let _ = config.maintenance.set(m);
        }
        Ok(RateLimitLayer { config })
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for RateLimitLayerBuilder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("backend", &self.backend)
            .field("key", &self.key)
            .field("cost", &self.cost.as_ref().map(|_| "fn"))
            .field("exempt", &self.exempt.as_ref().map(|_| "fn"))
            .field("missing", &self.missing)
            .field("on_error", &self.on_error)
            .field("policy", &self.policy)
            .field("style", &self.style)
            .field("shadow", &self.shadow)
            .field("shadow_headers", &self.shadow_headers)
            .field("more", &self.more)
            .field("charge", &self.charge.as_ref().map(|_| "fn"))
            .field("on_denied", &self.on_denied.as_ref().map(|_| "fn"))
            .field("grpc", &self.grpc)
            .field("route", &self.route.as_ref().map(|_| "fn"))
            .field("first_shadow", &self.first_shadow)
            .field("first_when", &self.first_when.as_ref().map(|_| "fn"))
            .finish()
    }
}
