//! What the ASGI middleware borrows from the Rust HTTP layer: its headers and its client-IP rule.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tollgate::http::{
    ForwardedHeader, HeaderStyle, HeaderWriter, Key, KeyExtractor, PeerAddr, RequestInfo,
    TrustedProxies,
};

use crate::limit::{PyDecision, PyLimit};

/// The rate-limit headers of the Rust HTTP layer for one policy: `RateLimit` and
/// `RateLimit-Policy` (and with `legacy=True` the `X-RateLimit-*` trio), as ASGI header pairs.
#[pyclass(frozen, name = "Headers", module = "tollgate")]
pub(crate) struct PyHeaders(pub(crate) HeaderWriter);

#[pymethods]
impl PyHeaders {
    #[new]
    #[pyo3(signature = (limit, policy = "default", legacy = false))]
    fn new(limit: &PyLimit, policy: &str, legacy: bool) -> PyResult<Self> {
        let style = if legacy {
            HeaderStyle::IetfAndLegacy
        } else {
            HeaderStyle::Ietf
        };
        HeaderWriter::new(policy, &limit.0, style)
            .map(PyHeaders)
            .map_err(|e| PyValueError::new_err(format!("policy: {e}")))
    }

    /// The headers for `decision` (none for a degraded one), lower-case names.
    fn for_decision<'py>(
        &self,
        py: Python<'py>,
        decision: &PyDecision,
    ) -> Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let mut map = http::HeaderMap::new();
        self.0.apply(&decision.0, &mut map);
        map.iter()
            .map(|(name, value)| {
                (
                    PyBytes::new(py, name.as_str().as_bytes()),
                    PyBytes::new(py, value.as_bytes()),
                )
            })
            .collect()
    }

    /// `Retry-After` for a denial: whole seconds, rounded up, at least 1.
    #[staticmethod]
    fn retry_after(decision: &PyDecision) -> u64 {
        HeaderWriter::retry_after(&decision.0)
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// An RFC 9457 problem body: (content type, body bytes).
    #[staticmethod]
    fn problem<'py>(
        py: Python<'py>,
        status: u16,
        detail: &str,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let status = http::StatusCode::from_u16(status)
            .map_err(|_| PyValueError::new_err(format!("status: {status} is not a status")))?;
        let (content_type, body) = HeaderWriter::problem(status, detail);
        Ok((
            PyBytes::new(py, content_type.as_bytes()),
            PyBytes::new(py, &body),
        ))
    }
}

/// The client IP behind trusted proxies, by the Rust layer's rule: the rightmost hop of the
/// one named forwarding header that is not a trusted proxy (or the peer, when the peer is not
/// trusted). IPv6 clients are keyed per /`ipv6_prefix` (default 64).
#[pyclass(frozen, name = "ClientIp", module = "tollgate")]
pub(crate) struct PyClientIp(pub(crate) KeyExtractor);

#[pymethods]
impl PyClientIp {
    #[new]
    #[pyo3(signature = (trusted, header = "x-forwarded-for", ipv6_prefix = 64))]
    fn new(trusted: Vec<String>, header: &str, ipv6_prefix: u8) -> PyResult<Self> {
        let trusted = TrustedProxies::from_cidrs(&trusted)
            .map_err(|e| PyValueError::new_err(format!("trusted: {e}")))?;
        let header = match header.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            other => {
                return Err(PyValueError::new_err(format!(
                    "header: \"x-forwarded-for\" or \"forwarded\", got {other:?}"
                )))
            }
        };
        Ok(PyClientIp(
            KeyExtractor::client_ip(trusted, header).ipv6_prefix(ipv6_prefix),
        ))
    }

    /// The client's key (an address, or an IPv6 prefix) for a peer address and the request's
    /// headers (ASGI pairs of bytes); None when it cannot be found.
    fn key(&self, peer: Option<&str>, headers: Vec<(Vec<u8>, Vec<u8>)>) -> Option<String> {
        let mut req = http::Request::new(());
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(&name),
                http::HeaderValue::from_bytes(&value),
            ) {
                req.headers_mut().append(name, value);
            }
        }
        if let Some(addr) = peer.and_then(|p| {
            p.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| std::net::SocketAddr::new(ip, 0))
        }) {
            req.extensions_mut().insert(PeerAddr(addr));
        }
        match self.0.extract(&RequestInfo::new(&req, None))? {
            Key::Ip(ip) => Some(ip.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}
