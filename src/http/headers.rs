//! The response headers of [contract §5](crate::contract::http): `RateLimit-Policy`, `RateLimit` (IETF
//! draft-ietf-httpapi-ratelimit-headers-10, Structured Fields per RFC 9651), the legacy
//! `X-RateLimit-*` trio, `Retry-After`, and the RFC 9457 problem body.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::steps::Rate;
use crate::{Decision, Limit};

/// Which rate-limit headers a response carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `RateLimit` and `RateLimit-Policy` (IETF draft 10). The default.
    #[default]
    Ietf,
    /// The IETF headers and the legacy `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
    /// `X-RateLimit-Reset` (delta seconds).
    IetfAndLegacy,
    /// No rate-limit headers (denials still carry `Retry-After`).
    None,
}

/// A policy name that cannot be written as a Structured Fields string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyNameError {
    /// The rejected name.
    pub name: String,
}

impl std::fmt::Display for PolicyNameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid policy name {:?}: a Structured Fields string holds printable ASCII only \
             (0x20..=0x7E)",
            self.name
        )
    }
}

impl std::error::Error for PolicyNameError {}

pub(crate) const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub(crate) const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub(crate) const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The policy name as a Structured Fields string: `"name"`, with `\` and `"` escaped.
pub(crate) fn sf_string(name: &str) -> Result<String, PolicyNameError> {
    if !name.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
        return Err(PolicyNameError {
            name: name.to_string(),
        });
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// Everything about the headers that does not change per request.
#[derive(Clone, Debug)]
pub(crate) struct Headers {
    style: HeaderStyle,
    /// The policy name as an sf-string.
    name: String,
    /// The backend's limit, and its `RateLimit-Policy` rendered once.
    rate: Rate,
    policy: HeaderValue,
}

impl Headers {
    pub(crate) fn new(
        style: HeaderStyle,
        name: &str,
        limit: &Limit,
    ) -> Result<Headers, PolicyNameError> {
        let name = sf_string(name)?;
        let rate = *limit.steps().rate();
        Ok(Headers {
            style,
            policy: policy_value(&name, &rate),
            rate,
            name,
        })
    }

    /// Adds the rate-limit headers for `decision` to `headers`.
    /// A degraded decision (made by a backend's failure policy, not from the store) gets none:
    /// its numbers describe no bucket.
    ///
    /// `RateLimit` and `RateLimit-Policy` are Structured Fields lists, one member per policy:
    /// this layer's member is appended (as a field line of its own, which recipients combine
    /// into one list), so layers stacked by the user keep each other's members, the innermost
    /// first ([contract §5](crate::contract::http); give stacked layers distinct policy names). The legacy `X-RateLimit-*`
    /// fields hold one value: the innermost layer's stays.
    pub(crate) fn apply(&self, decision: &Decision, headers: &mut HeaderMap) {
        if self.style == HeaderStyle::None || decision.is_degraded() {
            return;
        }
        let mut value = String::with_capacity(self.name.len() + 32);
        let t = ceil_secs(decision.next_refill_after());
        let _ = write!(value, "{};r={};t={t}", self.name, decision.remaining());
        headers.append(
            RATELIMIT,
            HeaderValue::try_from(value).expect("ASCII by construction"),
        );
        // The decision's own limit: a key's tier, or a limit changed since the layer was built.
        let rate = decision.rate();
        headers.append(
            RATELIMIT_POLICY,
            if *rate == self.rate {
                self.policy.clone()
            } else {
                policy_value(&self.name, rate)
            },
        );
        if self.style == HeaderStyle::IetfAndLegacy && !headers.contains_key(X_LIMIT) {
            headers.insert(X_LIMIT, HeaderValue::from(decision.capacity()));
            headers.insert(X_REMAINING, HeaderValue::from(decision.remaining()));
            headers.insert(
                X_RESET,
                HeaderValue::from(ceil_secs(decision.reset_after())),
            );
        }
    }
}

/// The layer's rate-limit headers for servers that are not tower services (another framework, a
/// binding to another language): the same fields, computed by the same code as
/// [`RateLimitLayer`](super::RateLimitLayer)'s.
///
/// ```
/// use tollgate::http::{HeaderStyle, HeaderWriter};
/// use tollgate::{Limit, TokenBucket};
/// let limit = Limit::per_minute(60)?;
/// let writer = HeaderWriter::new("default", &limit, HeaderStyle::Ietf).unwrap();
/// let bucket = TokenBucket::new(limit);
/// let mut headers = http::HeaderMap::new();
/// writer.apply(&bucket.check(), &mut headers);
/// assert_eq!(headers["ratelimit-policy"], "\"default\";q=60;w=60");
/// assert_eq!(headers["ratelimit"], "\"default\";r=59;t=1");
/// # Ok::<(), tollgate::LimitError>(())
/// ```
#[derive(Clone, Debug)]
pub struct HeaderWriter(Headers);

impl HeaderWriter {
    /// Headers for the policy named `policy` whose usual limit is `limit` (a decision under
    /// another limit, such as a key's tier, describes its own).
    ///
    /// # Errors
    /// [`PolicyNameError`] when `policy` cannot be written as a Structured Fields string.
    pub fn new(
        policy: &str,
        limit: &Limit,
        style: HeaderStyle,
    ) -> Result<HeaderWriter, PolicyNameError> {
        Headers::new(style, policy, limit).map(HeaderWriter)
    }

    /// Appends `RateLimit` and `RateLimit-Policy` (and with [`HeaderStyle::IetfAndLegacy`] the
    /// legacy fields) for `decision`; nothing for a degraded decision.
    pub fn apply(&self, decision: &Decision, headers: &mut HeaderMap) {
        self.0.apply(decision, headers);
    }

    /// `Retry-After` for a denial: whole seconds, rounded up, at least 1.
    pub fn retry_after(decision: &Decision) -> HeaderValue {
        retry_after(decision.retry_after())
    }

    /// An RFC 9457 problem body (`application/problem+json`) for `status` with `detail`: the
    /// content type and the body.
    pub fn problem(status: StatusCode, detail: &str) -> (HeaderValue, bytes::Bytes) {
        problem(status, detail)
    }
}

/// `RateLimit-Policy`: `name;q=<capacity>;w=<seconds to refill from empty, at least 1>`.
fn policy_value(name: &str, rate: &Rate) -> HeaderValue {
    let (q, w) = (rate.cap, ceil_secs(rate.time_to_fill()).max(1));
    HeaderValue::try_from(format!("{name};q={q};w={w}")).expect("ASCII by construction")
}

/// `Retry-After` for a denial: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after(wait: Duration) -> HeaderValue {
    HeaderValue::from(ceil_secs(wait).max(1))
}

/// An RFC 9457 problem body for `status` with a human `detail`.
pub(crate) fn problem(status: StatusCode, detail: &str) -> (HeaderValue, bytes::Bytes) {
    let title = status.canonical_reason().unwrap_or("Error");
    let mut body = String::with_capacity(96 + detail.len());
    let _ = write!(
        body,
        "{{\"type\":\"about:blank\",\"title\":\"{title}\",\"status\":{},\"detail\":\"",
        status.as_u16()
    );
    for c in detail.chars() {
        match c {
            '"' => body.push_str("\\\""),
            '\\' => body.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(body, "\\u{:04x}", c as u32);
            }
            c => body.push(c),
        }
    }
    body.push_str("\"}");
    (
        HeaderValue::from_static("application/problem+json"),
        bytes::Bytes::from(body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stacked layers: each appends its own member; the legacy fields keep the innermost's.
    #[test]
    fn stacked_policies_append_their_members() {
        let limit = Limit::new(4, 1, Duration::from_secs(1)).unwrap();
        let wide = Limit::new(100, 10, Duration::from_secs(1)).unwrap();
        let (inner, outer) = (
            crate::TokenBucket::with_clock(limit, crate::ManualClock::new()),
            crate::TokenBucket::with_clock(wide, crate::ManualClock::new()),
        );
        let mut map = HeaderMap::new();
        Headers::new(HeaderStyle::IetfAndLegacy, "per-key", &limit)
            .unwrap()
            .apply(&inner.check(), &mut map);
        Headers::new(HeaderStyle::IetfAndLegacy, "global", &wide)
            .unwrap()
            .apply(&outer.check(), &mut map);
        let all = |name| {
            map.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert_eq!(all(RATELIMIT), "\"per-key\";r=3;t=1, \"global\";r=99;t=1");
        assert_eq!(
            all(RATELIMIT_POLICY),
            "\"per-key\";q=4;w=4, \"global\";q=100;w=10"
        );
        assert_eq!(
            all(X_LIMIT),
            "4",
            "the innermost layer's legacy fields stay"
        );
    }

    #[test]
    fn sf_strings_escape_and_reject() {
        assert_eq!(sf_string("default").unwrap(), "\"default\"");
        assert_eq!(sf_string("a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"");
        assert!(sf_string("caf\u{e9}").is_err());
        assert!(sf_string("tab\t").is_err());
    }

    #[test]
    fn t_is_zero_when_full_and_legacy_reset_counts_to_full() {
        let limit = Limit::new(4, 1, Duration::from_millis(1500)).unwrap();
        let bucket = crate::TokenBucket::with_clock(limit, crate::ManualClock::new());
        let h = Headers::new(HeaderStyle::IetfAndLegacy, "p", &limit).unwrap();
        let mut map = HeaderMap::new();
        h.apply(&bucket.try_acquire(0).unwrap(), &mut map);
        assert_eq!(map[RATELIMIT], "\"p\";r=4;t=0");
        assert_eq!(map[RATELIMIT_POLICY], "\"p\";q=4;w=6");
        assert_eq!(map[X_RESET], "0");
        let mut map = HeaderMap::new();
        h.apply(&bucket.try_acquire(3).unwrap(), &mut map);
        assert_eq!(map[RATELIMIT], "\"p\";r=1;t=2");
        assert_eq!(map[X_REMAINING], "1");
        assert_eq!(map[X_RESET], "5");
        let mut none = HeaderMap::new();
        Headers::new(HeaderStyle::None, "p", &limit)
            .unwrap()
            .apply(&bucket.check(), &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after(Duration::ZERO), HeaderValue::from(1u64));
    }
}
