//! What the layer reports per decision: labelled metrics (feature `metrics`) and a `tracing`
//! event at debug level.
//!
//! The labels and outcomes are documented in [the module docs](super#metrics-and-logs).

use std::sync::Arc;

use super::{Backend, Config, RequestInfo};
use crate::Decision;

/// How a policy decided a request (the `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Allowed,
    NearLimit,
    Denied,
    ShadowDenied,
    Error,
    NoKey,
}

impl Outcome {
    /// The outcome of an allowed decision: near the limit with less than a fifth left.
    pub(super) fn of_grant(d: &Decision) -> Outcome {
        if d.remaining().saturating_mul(5) < d.capacity() {
            Outcome::NearLimit
        } else {
            Outcome::Allowed
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::NearLimit => "near_limit",
            Outcome::Denied => "denied",
            Outcome::ShadowDenied => "shadow_denied",
            Outcome::Error => "error",
            Outcome::NoKey => "no_key",
        }
    }
}

/// The route label of a request: the layer's function, or axum's matched route.
pub(super) fn route_of(f: Option<&super::RouteFn>, info: &RequestInfo<'_>) -> Option<Arc<str>> {
    if let Some(f) = f {
        return f(info).map(Arc::from);
    }
    #[cfg(feature = "axum")]
    if let Some(path) = info.extensions.get::<axum::extract::MatchedPath>() {
        return Some(Arc::from(path.as_str()));
    }
    None
}

/// Whether anything listens for decisions (the `metrics` feature is on, or the debug event
/// is enabled): only then is the route label computed.
pub(super) fn wanted() -> bool {
    cfg!(feature = "metrics") || tracing::enabled!(tracing::Level::DEBUG)
}

impl<B: Backend> Config<B> {
    /// Reports policy `i`'s decision of a request.
    pub(super) fn observe(
        &self,
        i: usize,
        outcome: Outcome,
        decision: Option<&Decision>,
        route: Option<&Arc<str>>,
    ) {
        let policy = &self.policies[i];
        let tier = decision.and_then(|d| policy.backend.tier(d));
        #[cfg(feature = "metrics")]
        {
            let tier: metrics::SharedString = match tier {
                Some(t) => t.to_string().into(),
                None => metrics::SharedString::const_str(""),
            };
            let route: metrics::SharedString = match route {
                Some(r) => metrics::SharedString::from(r.clone()),
                None => metrics::SharedString::const_str(""),
            };
            metrics::counter!(
                "tollgate_http_decisions_total",
                "policy" => policy.label.clone(),
                "tier" => tier,
                "route" => route,
                "outcome" => outcome.as_str()
            )
            .increment(1);
        }
        tracing::debug!(
            policy = %policy.name,
            outcome = outcome.as_str(),
            tier,
            route = route.map(|r| &**r),
            remaining = decision.map(Decision::remaining),
            capacity = decision.map(Decision::capacity),
            retry_after_ms = decision
                .filter(|d| d.is_denied())
                .map(|d| d.retry_after().as_millis() as u64),
            "rate-limit decision"
        );
    }
}
