//! [`RateLimitLayerBuilder`]: the settings of a [`RateLimitLayer`], and building it.

use std::sync::Arc;

use super::headers::Headers;
use super::{
    start_maintenance, Backend, Config, HeaderStyle, InfoFn, KeyExtractor, MissingKey,
    OnBackendError, PolicyNameError, RateLimitLayer, RequestInfo,
};

impl<B: Backend> RateLimitLayer<B> {
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
}

impl<B: Backend> RateLimitLayerBuilder<B> {
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

    /// Builds the layer.
    ///
    /// # Errors
    /// [`PolicyNameError`] when the policy name is not printable ASCII.
    pub fn build(self) -> Result<RateLimitLayer<B>, PolicyNameError> {
        let headers = Headers::new(self.style, &self.policy, self.backend.limit())?;
        let config = Arc::new(Config {
            backend: self.backend,
            key: self.key,
            cost: self.cost,
            exempt: self.exempt,
            missing: self.missing,
            on_error: self.on_error,
            headers,
            shadow: std::sync::atomic::AtomicBool::new(self.shadow),
            shadow_headers: self.shadow_headers,
            would_deny: crossbeam_utils::CachePadded::new(std::sync::atomic::AtomicU64::new(0)),
            policy: self.policy.clone(),
            no_peer_logged: std::sync::atomic::AtomicU64::new(0),
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
            .finish()
    }
}
