//! [`Policy`]: one limit of a layer (a backend, the key it counts, the cost), and the layer's
//! runtime copy of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::headers::Headers;
use super::{Backend, HeaderStyle, InfoFn, KeyExtractor, MissingKey, PolicyNameError, RequestInfo};

/// One more limit for a [`RateLimitLayer`](super::RateLimitLayer), counted on its own key:
/// e.g. per IP 100/min **and** per API key 1000/min **and** a global 50 k/s, in one layer.
///
/// A request passes only if every policy that applies grants it (all or nothing): the layer
/// first looks at each (nothing taken), and refuses with nothing taken anywhere if any would
/// refuse; then it takes from each in order, and a take that lost a race since its look gives
/// back what the others took, as an undo ([contract §2](crate::contract::bucket)). Each
/// policy is a member of the `RateLimit` and `RateLimit-Policy` lists, and a 429 carries the
/// longest `Retry-After` of the policies that refuse.
///
/// ```
/// use tollgate::http::{Key, KeyExtractor, Policy, RateLimitLayer};
/// use tollgate::{KeyedLimiter, Limit};
///
/// let per_ip: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(100)?);
/// let per_key: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(1000)?);
/// let global: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(50_000)?);
/// let layer = RateLimitLayer::builder(per_ip)
///     .key(KeyExtractor::peer_ip())
///     .policy_name("ip")
///     .policy(Policy::new("api-key", per_key).key(KeyExtractor::api_key()))
///     .policy(Policy::new("global", global))
///     .build()
///     .expect("valid policies");
/// assert_eq!(layer.policies().collect::<Vec<_>>(), ["ip", "api-key", "global"]);
/// # Ok::<(), tollgate::LimitError>(())
/// ```
pub struct Policy<B> {
    pub(super) name: String,
    pub(super) backend: B,
    pub(super) key: KeyExtractor,
    pub(super) cost: Option<Arc<InfoFn<u64>>>,
    pub(super) missing: MissingKey,
    pub(super) shadow: bool,
    pub(super) when: Option<Arc<InfoFn<bool>>>,
}

impl<B: Backend> Policy<B> {
    /// A policy named `name` (in the headers, metrics and logs) deciding with `backend`, keyed
    /// globally until [`key`](Policy::key) says otherwise.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, Policy}};
    /// let global: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(50_000)?);
    /// let policy = Policy::new("global", global);
    /// # let _ = policy;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn new(name: impl Into<String>, backend: B) -> Policy<B> {
        Policy {
            name: name.into(),
            backend,
            key: KeyExtractor::global(),
            cost: None,
            missing: MissingKey::default(),
            shadow: false,
            when: None,
        }
    }

    /// The requests this policy applies to (others pass it by: not counted, no header
    /// member). Default: every request.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, KeyExtractor, Policy}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(5)?);
    /// // Five login attempts a minute per IP, on top of the layer's other policies.
    /// let policy = Policy::new("login", limiter)
    ///     .key(KeyExtractor::peer_ip())
    ///     .when(|req| req.method == http::Method::POST && req.uri.path() == "/login");
    /// # let _ = policy;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn when(mut self, f: impl Fn(&RequestInfo<'_>) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(f));
        self
    }

    /// How to find a request's key for this policy. Default: [`KeyExtractor::global`].
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, KeyExtractor, Policy}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(1000)?);
    /// let policy = Policy::new("api-key", limiter).key(KeyExtractor::api_key());
    /// # let _ = policy;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn key(mut self, key: KeyExtractor) -> Self {
        self.key = key;
        self
    }

    /// Tokens a request costs under this policy. Default: 1.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, Policy}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(1000)?);
    /// let policy = Policy::new("writes", limiter)
    ///     .cost(|req| if req.method == http::Method::GET { 0 } else { 1 });
    /// # let _ = policy;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn cost(mut self, f: impl Fn(&RequestInfo<'_>) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(f));
        self
    }

    /// The answer to a request without this policy's key. Default: [`MissingKey::Reject`] with
    /// 401.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, KeyExtractor, MissingKey, Policy}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(1000)?);
    /// // Anonymous requests share one bucket.
    /// let policy = Policy::new("api-key", limiter)
    ///     .key(KeyExtractor::api_key())
    ///     .missing_key(MissingKey::Fallback(Key::Global));
    /// # let _ = policy;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn missing_key(mut self, missing: MissingKey) -> Self {
        self.missing = missing;
        self
    }

    /// Shadow mode for this policy alone: it decides and counts, but refuses nothing (see
    /// [`RateLimitLayerBuilder::shadow`](super::RateLimitLayerBuilder::shadow)); switch it at
    /// runtime with [`RateLimitLayer::set_policy_shadow`](super::RateLimitLayer::set_policy_shadow).
    /// Default: off.
    ///
    /// ```
    /// # use tollgate::{KeyedLimiter, Limit, http::{Key, Policy}};
    /// # let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(50_000)?);
    /// // Try a global limit on live traffic before enforcing it.
    /// let policy = Policy::new("global", limiter).shadow(true);
    /// # let _ = policy;
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// The policy as the layer runs it.
    pub(super) fn activate(self, style: HeaderStyle) -> Result<Active<B>, PolicyNameError> {
        Ok(Active {
            headers: Headers::new(style, &self.name, &self.backend.limit())?,
            #[cfg(feature = "metrics")]
            label: metrics::SharedString::from(Arc::<str>::from(self.name.as_str())),
            name: self.name,
            backend: self.backend,
            key: self.key,
            cost: self.cost,
            missing: self.missing,
            when: self.when,
            shadow: AtomicBool::new(self.shadow),
            would_deny: CachePadded::new(AtomicU64::new(0)),
        })
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for Policy<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("key", &self.key)
            .field("cost", &self.cost.as_ref().map(|_| "fn"))
            .field("missing", &self.missing)
            .field("shadow", &self.shadow)
            .field("when", &self.when.as_ref().map(|_| "fn"))
            .finish()
    }
}

/// A policy in a built layer.
pub(super) struct Active<B> {
    pub(super) name: String,
    /// The name as a metrics label (shared, not copied per decision).
    #[cfg(feature = "metrics")]
    pub(super) label: metrics::SharedString,
    pub(super) backend: B,
    pub(super) key: KeyExtractor,
    pub(super) cost: Option<Arc<InfoFn<u64>>>,
    pub(super) missing: MissingKey,
    pub(super) when: Option<Arc<InfoFn<bool>>>,
    pub(super) headers: Headers,
    /// This policy's own shadow mode (the layer's applies to every policy).
    pub(super) shadow: AtomicBool,
    /// Requests this policy would have refused, let through by shadow mode (on a line of its
    /// own: written under overload, while `shadow` beside it is read by every request).
    pub(super) would_deny: CachePadded<AtomicU64>,
}

impl<B> Active<B> {
    /// Whether this policy's own shadow mode is on.
    pub(super) fn in_shadow(&self) -> bool {
        // Relaxed: a setting; no other memory is published with it.
        self.shadow.load(Ordering::Relaxed)
    }

    /// Whether this policy applies to the request.
    pub(super) fn applies(&self, info: &RequestInfo<'_>) -> bool {
        self.when.as_ref().is_none_or(|f| f(info))
    }

    /// The request's cost under this policy.
    pub(super) fn cost(&self, info: &RequestInfo<'_>) -> u64 {
        self.cost.as_ref().map_or(1, |f| f(info))
    }
}
