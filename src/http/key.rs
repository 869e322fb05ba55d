//! Who a request counts against: keys and the extractors that find them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{Extensions, HeaderMap, Method, Uri};

use super::proxies::{canonical, client_ip, mask, ForwardedHeader, TrustedProxies};

/// The key a request is limited by.
///
/// A key taken from a request shares the request's memory (a header value is a view into the
/// connection's read buffer): extracting it copies nothing, and a lookup of a known key
/// allocates nothing. [`Clone`] makes a compact, owned copy instead (just the key's bytes), which
/// is what a limiter stores when it first sees a key, so a stored key never keeps a request's
/// buffer alive.
///
/// ```
/// use tollgate::http::Key;
/// let key = Key::Header("k-123".parse().unwrap());
/// assert_eq!(key.clone(), key);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Key {
    /// One bucket for all requests.
    Global,
    /// A client address (IPv6 possibly grouped by prefix).
    Ip(IpAddr),
    /// A header's value (an API key), shared with the request (no copy).
    Header(HeaderValue),
    /// A bearer token: the whole `Authorization` value, shared with the request; the key is the
    /// token after the scheme (compared and hashed without the scheme and surrounding spaces,
    /// so `Bearer t` and `bearer  t` are one key).
    Bearer(HeaderValue),
    /// Bytes (a key a closure built).
    Bytes(Bytes),
    /// Text a closure built (a user id).
    Text(String),
}

impl Key {
    /// A bearer-token key from an `Authorization` value, if it is `Bearer <token>` with a
    /// non-empty token.
    fn bearer(value: &HeaderValue) -> Option<Key> {
        let (scheme, token) = split_scheme(value.as_bytes())?;
        (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty())
            .then(|| Key::Bearer(value.clone()))
    }

    /// The bytes that identify a `Bearer` key: its token.
    /// (A value not of the form `Bearer <token>`, which only a hand-built key can hold, is its
    /// own token: distinct values stay distinct keys.)
    fn token(value: &HeaderValue) -> &[u8] {
        match split_scheme(value.as_bytes()) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer") => token,
            _ => value.as_bytes(),
        }
    }

    /// A copy that shares the key's memory (no allocation): for a key used for one request.
    pub(crate) fn share(&self) -> Key {
        match self {
            Key::Global => Key::Global,
            Key::Ip(ip) => Key::Ip(*ip),
            Key::Header(v) => Key::Header(v.clone()),
            Key::Bearer(v) => Key::Bearer(v.clone()),
            Key::Bytes(b) => Key::Bytes(b.clone()),
            Key::Text(t) => Key::Text(t.clone()),
        }
    }

    /// The token of a `Bearer` key (what identifies it).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn bearer_token(&self) -> Option<&[u8]> {
        match self {
            Key::Bearer(v) => Some(Key::token(v)),
            _ => None,
        }
    }
}

/// A compact owned copy of a header value (its bytes only, not the buffer it may share).
fn compact(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
        .unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

impl Clone for Key {
    /// A compact, owned copy: header values and bytes are copied out of whatever buffer they
    /// share.
    fn clone(&self) -> Self {
        match self {
            Key::Global => Key::Global,
            Key::Ip(ip) => Key::Ip(*ip),
            Key::Header(v) => Key::Header(compact(v)),
            Key::Bearer(v) => Key::Bearer(compact(v)),
            Key::Bytes(b) => Key::Bytes(Bytes::copy_from_slice(b)),
            Key::Text(t) => Key::Text(t.clone()),
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Global, Key::Global) => true,
            (Key::Ip(a), Key::Ip(b)) => a == b,
            (Key::Header(a), Key::Header(b)) => a.as_bytes() == b.as_bytes(),
            (Key::Bearer(a), Key::Bearer(b)) => Key::token(a) == Key::token(b),
            (Key::Bytes(a), Key::Bytes(b)) => a == b,
            (Key::Text(a), Key::Text(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Key::Global => state.write_u8(0),
            Key::Ip(ip) => {
                state.write_u8(1);
                ip.hash(state);
            }
            Key::Header(v) => {
                state.write_u8(2);
                state.write(v.as_bytes());
            }
            Key::Bearer(v) => {
                state.write_u8(3);
                state.write(Key::token(v));
            }
            Key::Bytes(b) => {
                state.write_u8(4);
                state.write(b);
            }
            Key::Text(t) => {
                state.write_u8(5);
                state.write(t.as_bytes());
            }
        }
    }
}

/// The parts of a request an extractor, a cost function or an exemption can look at.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI (path and query).
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (connection info lives here).
    pub extensions: &'a Extensions,
    /// The body's exact size when known (from the body's size hint, e.g. `Content-Length`).
    pub body_size: Option<u64>,
}

impl<'a> RequestInfo<'a> {
    /// The view of a request.
    ///
    /// ```
    /// use tollgate::http::RequestInfo;
    /// let req = http::Request::post("/upload").body("12345").unwrap();
    /// let info = RequestInfo::new(&req, Some(5));
    /// assert_eq!(info.uri.path(), "/upload");
    /// assert_eq!(info.body_size, Some(5));
    /// ```
    pub fn new<B>(req: &'a http::Request<B>, body_size: Option<u64>) -> RequestInfo<'a> {
        RequestInfo {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
            body_size,
        }
    }

    /// The connection's peer address: a [`PeerAddr`] extension, or (feature `axum`) axum's
    /// `ConnectInfo<SocketAddr>`.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        if let Some(PeerAddr(addr)) = self.extensions.get::<PeerAddr>() {
            return Some(*addr);
        }
        #[cfg(feature = "axum")]
        if let Some(info) = self
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(info.0);
        }
        None
    }
}

/// The peer address of a connection, as a request extension. Insert it in a bare hyper server
/// (`req.extensions_mut().insert(PeerAddr(remote))`); axum's `ConnectInfo<SocketAddr>` (from
/// `into_make_service_with_connect_info::<SocketAddr>()`) is read too with the `axum` feature.
///
/// Peer and client IP keys need one of the two. A request without either is a server set-up
/// error, not a client's: the layer answers it `500 Internal Server Error` (problem+json saying
/// what is missing) and logs an error (at most once a minute), instead of treating every client
/// as keyless. An axum app without the `axum` feature can insert the address itself:
///
/// ```
/// use std::net::SocketAddr;
/// use tollgate::http::PeerAddr;
/// // In an axum app: `.layer(axum::middleware::from_fn(peer))`, served with
/// // `into_make_service_with_connect_info::<SocketAddr>()`.
/// fn peer(mut req: http::Request<()>, remote: SocketAddr) -> http::Request<()> {
///     req.extensions_mut().insert(PeerAddr(remote));
///     req
/// }
/// let req = peer(http::Request::new(()), "192.0.2.7:4000".parse().unwrap());
/// assert!(req.extensions().get::<PeerAddr>().is_some());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The IPv6 prefix peer and client IP keys use by default: one bucket per /64.
const DEFAULT_V6_PREFIX: u8 = 64;

type KeyFn = dyn Fn(&RequestInfo<'_>) -> Option<Key> + Send + Sync;

#[derive(Clone)]
enum Kind {
    Global,
    Peer,
    Client(Arc<TrustedProxies>, ForwardedHeader),
    Header(HeaderName),
    Bearer,
    Fn(Arc<KeyFn>),
}

/// Finds a request's [`Key`]. `None` means the key is missing (see
/// [`MissingKey`](crate::http::MissingKey)).
///
/// ```
/// use tollgate::http::{Key, KeyExtractor, RequestInfo};
/// let req = http::Request::get("/").header("x-api-key", "k-123").body(()).unwrap();
/// let key = KeyExtractor::api_key().extract(&RequestInfo::new(&req, None));
/// assert_eq!(key, Some(Key::Header("k-123".parse().unwrap())));
/// ```
#[derive(Clone)]
pub struct KeyExtractor {
    kind: Kind,
    v6_prefix: u8,
}

impl fmt::Debug for KeyExtractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Global => "global".to_string(),
            Kind::Peer => "peer ip".to_string(),
            Kind::Client(t, h) => format!("client ip from {} behind {t:?}", h.name()),
            Kind::Header(h) => format!("header {h}"),
            Kind::Bearer => "bearer token".to_string(),
            Kind::Fn(_) => "closure".to_string(),
        };
        f.debug_struct("KeyExtractor")
            .field("kind", &kind)
            .field("v6_prefix", &self.v6_prefix)
            .finish()
    }
}

impl KeyExtractor {
    fn of(kind: Kind) -> KeyExtractor {
        KeyExtractor {
            kind,
            v6_prefix: DEFAULT_V6_PREFIX,
        }
    }

    /// One key for every request: a global limit.
    pub fn global() -> KeyExtractor {
        KeyExtractor::of(Kind::Global)
    }

    /// The connection's peer IP ([`RequestInfo::peer_addr`]).
    pub fn peer_ip() -> KeyExtractor {
        KeyExtractor::of(Kind::Peer)
    }

    /// The client IP behind trusted proxies, from the one forwarding `header` they write
    /// ([contract §5](crate::contract::http)). A peer that is not a trusted proxy is the client, whatever its headers say. When the
    /// peer is trusted, `header` (every line of it) is walked from the right, skipping trusted
    /// proxies; the first untrusted address is the client. The leftmost values, which a client
    /// can forge, are never believed over a trusted proxy's report, and no other forwarding
    /// header is read: a client-sent `Forwarded` does nothing behind a proxy that appends to
    /// `X-Forwarded-For`. With the header absent, or every hop trusted, the key is the last
    /// trusted hop (the proxy itself sent the request). A hop that is not an address (garbage,
    /// an obfuscated or `unknown` node, a `Forwarded` element without `for=`) reached through
    /// trusted proxies means the key is missing ([`MissingKey`](crate::http::MissingKey)):
    /// never a bucket the client chose, and never the proxy's bucket, which header-less
    /// requests share.
    ///
    /// ```
    /// use tollgate::http::{ForwardedHeader, Key, KeyExtractor, PeerAddr, RequestInfo, TrustedProxies};
    /// let trusted = TrustedProxies::from_cidrs(["10.0.0.0/8"])?;
    /// let extractor = KeyExtractor::client_ip(trusted, ForwardedHeader::XForwardedFor);
    /// let mut req = http::Request::get("/")
    ///     .header("x-forwarded-for", "198.51.100.7, 10.0.0.2")
    ///     .header("forwarded", "for=192.0.2.66") // sent by the client: ignored
    ///     .body(())
    ///     .unwrap();
    /// req.extensions_mut().insert(PeerAddr("10.0.0.1:443".parse().unwrap()));
    /// let key = extractor.extract(&RequestInfo::new(&req, None));
    /// assert_eq!(key, Some(Key::Ip("198.51.100.7".parse().unwrap())));
    /// # Ok::<(), tollgate::http::CidrError>(())
    /// ```
    pub fn client_ip(trusted: TrustedProxies, header: ForwardedHeader) -> KeyExtractor {
        KeyExtractor::of(Kind::Client(Arc::new(trusted), header))
    }

    /// Group IPv6 clients by their first `prefix` bits. Default: 64, one bucket per /64 (what
    /// one customer usually holds, and what any host on it can rotate through: a client with a
    /// /64 would otherwise get a fresh bucket per address). 128 keys each address alone. IPv4
    /// is unaffected.
    pub fn ipv6_prefix(mut self, prefix: u8) -> KeyExtractor {
        self.v6_prefix = prefix.min(128);
        self
    }

    /// A header's value, e.g. `x-api-key`. Missing, empty, or sent more than once (which line
    /// would the app authenticate?): no key.
    ///
    /// Keys taken before authentication let a client rotate made-up keys to get fresh buckets:
    /// put the layer after authentication, or stack a per-IP policy in front of it.
    pub fn header(name: HeaderName) -> KeyExtractor {
        KeyExtractor::of(Kind::Header(name))
    }

    /// The `x-api-key` header.
    pub fn api_key() -> KeyExtractor {
        KeyExtractor::header(HeaderName::from_static("x-api-key"))
    }

    /// The token of `Authorization: Bearer <token>`.
    pub fn bearer() -> KeyExtractor {
        KeyExtractor::of(Kind::Bearer)
    }

    /// Any closure.
    ///
    /// ```
    /// use tollgate::http::{Key, KeyExtractor};
    /// // One bucket per tenant, from the path: /t/<tenant>/...
    /// let by_tenant = KeyExtractor::from_fn(|req| {
    ///     let tenant = req.uri.path().strip_prefix("/t/")?.split('/').next()?;
    ///     Some(Key::Text(tenant.to_string()))
    /// });
    /// # let _ = by_tenant;
    /// ```
    pub fn from_fn<F>(f: F) -> KeyExtractor
    where
        F: Fn(&RequestInfo<'_>) -> Option<Key> + Send + Sync + 'static,
    {
        KeyExtractor::of(Kind::Fn(Arc::new(f)))
    }

    /// The `WWW-Authenticate` challenge of a 401 for a request without this key (RFC 9110
    /// §15.5.2): `Bearer` for bearer tokens, `ApiKey header="<name>"` for header keys, and
    /// `RateLimitKey` otherwise.
    pub(crate) fn challenge(&self) -> HeaderValue {
        match &self.kind {
            Kind::Bearer => HeaderValue::from_static("Bearer"),
            Kind::Header(name) => HeaderValue::from_str(&format!("ApiKey header=\"{name}\""))
                .unwrap_or(HeaderValue::from_static("ApiKey")),
            _ => HeaderValue::from_static("RateLimitKey"),
        }
    }

    /// Whether this extractor needs the connection's peer address (peer and client IP keys),
    /// and `req` does not carry it: a server set-up error (see [`RequestInfo::peer_addr`]),
    /// which the layer reports loudly instead of treating every request as keyless.
    pub(crate) fn lacks_peer(&self, req: &RequestInfo<'_>) -> bool {
        matches!(self.kind, Kind::Peer | Kind::Client(..)) && req.peer_addr().is_none()
    }

    /// The key of `req`, or `None` when it has none.
    pub fn extract(&self, req: &RequestInfo<'_>) -> Option<Key> {
        match &self.kind {
            Kind::Global => Some(Key::Global),
            Kind::Peer => Some(self.ip_key(req.peer_addr()?.ip())),
            Kind::Client(trusted, header) => Some(self.ip_key(client_ip(req, trusted, *header)?)),
            Kind::Header(name) => {
                let value = only(req.headers, name)?;
                (!value.is_empty()).then(|| Key::Header(value.clone()))
            }
            Kind::Bearer => Key::bearer(only(req.headers, &AUTHORIZATION)?),
            Kind::Fn(f) => f(req),
        }
    }

    fn ip_key(&self, ip: IpAddr) -> Key {
        match canonical(ip) {
            IpAddr::V6(v6) if self.v6_prefix < 128 => Key::Ip(mask(IpAddr::V6(v6), self.v6_prefix)),
            ip => Key::Ip(ip),
        }
    }
}

/// The one value of header `name`; `None` when it is missing or sent more than once (an app may
/// authenticate a different line than the limiter would key on: ambiguity is no key).
fn only<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// `scheme SP+ token`, trimmed.
fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(at);
    let token = rest.trim_ascii();
    Some((scheme, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req_from(peer: &str, headers: &[(&str, &[u8])]) -> http::Request<()> {
        let mut req = http::Request::new(());
        req.extensions_mut()
            .insert(PeerAddr(format!("{peer}:5000").parse().unwrap()));
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        req
    }

    /// The key behind 10.0.0.0/8, from `X-Forwarded-For` (or `Forwarded` when a header
    /// named so is given first).
    fn client(peer: &str, headers: &[(&str, &[u8])]) -> Option<Key> {
        let trusted = TrustedProxies::from_cidrs(["10.0.0.0/8"]).unwrap();
        let req = req_from(peer, headers);
        let header = match headers.first() {
            Some(("forwarded", _)) => ForwardedHeader::Forwarded,
            _ => ForwardedHeader::XForwardedFor,
        };
        KeyExtractor::client_ip(trusted, header).extract(&RequestInfo::new(&req, None))
    }

    fn ip(s: &str) -> Option<Key> {
        Some(Key::Ip(s.parse().unwrap()))
    }

    #[test]
    fn forged_forwarding_from_untrusted_peer_is_ignored() {
        assert_eq!(
            client("198.51.100.7", &[("x-forwarded-for", b"1.1.1.1")]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn walks_from_the_right_skipping_trusted_proxies() {
        let h: &[(&str, &[u8])] = &[("x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.0.0.2")];
        assert_eq!(client("10.0.0.1", h), ip("203.0.113.9"));
        let h: &[(&str, &[u8])] = &[(
            "forwarded",
            b"for=6.6.6.6, for=\"[2001:db8::1]:443\";proto=https",
        )];
        assert_eq!(
            client("10.0.0.1", h),
            ip("2001:db8::"),
            "its /64 (the default)"
        );
        // Garbage reached through trusted proxies: the key is missing (not the proxy's).
        let h: &[(&str, &[u8])] = &[("x-forwarded-for", b"6.6.6.6, not-an-ip")];
        assert_eq!(client("10.0.0.1", h), None);
        let h: &[(&str, &[u8])] = &[("forwarded", b"proto=http")];
        assert_eq!(
            client("10.0.0.1", h),
            None,
            "no for=: missing, not the proxy"
        );
        // All trusted: the leftmost.
        let h: &[(&str, &[u8])] = &[("x-forwarded-for", b"10.9.9.9, 10.0.0.2")];
        assert_eq!(client("10.0.0.1", h), ip("10.9.9.9"));
        // No header from a trusted peer: the peer.
        assert_eq!(client("10.0.0.1", &[]), ip("10.0.0.1"));
    }

    #[test]
    fn odd_bytes_never_panic() {
        let huge = vec![b'1'; 100_000];
        for value in [&b"\xff\xfe"[..], b",,,,", b"[", b"[::1", b"for=", &huge] {
            let _ = client("10.0.0.1", &[("x-forwarded-for", value)]);
            let _ = client("10.0.0.1", &[("forwarded", value)]);
            let req = req_from(
                "10.0.0.1",
                &[("authorization", value), ("x-api-key", value)],
            );
            let info = RequestInfo::new(&req, None);
            let _ = KeyExtractor::bearer().extract(&info);
            let _ = KeyExtractor::api_key().extract(&info);
        }
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        let req = req_from("[2001:db8:1:2:3:4:5:6]", &[]);
        let info = RequestInfo::new(&req, None);
        // Default: one bucket per /64.
        assert_eq!(KeyExtractor::peer_ip().extract(&info), ip("2001:db8:1:2::"));
        assert_eq!(
            KeyExtractor::peer_ip().ipv6_prefix(48).extract(&info),
            ip("2001:db8:1::")
        );
        assert_eq!(
            KeyExtractor::peer_ip().ipv6_prefix(128).extract(&info),
            ip("2001:db8:1:2:3:4:5:6")
        );
    }

    #[test]
    fn bearer_tokens() {
        let req = req_from("1.2.3.4", &[("authorization", b"Bearer  abc.def ")]);
        let key = KeyExtractor::bearer().extract(&RequestInfo::new(&req, None));
        assert_eq!(key, Some(Key::Bearer("bearer abc.def".parse().unwrap())));
        let req = req_from("1.2.3.4", &[("authorization", b"Basic abc")]);
        assert_eq!(
            KeyExtractor::bearer().extract(&RequestInfo::new(&req, None)),
            None
        );
    }

    #[test]
    fn hand_built_bearer_keys_stay_distinct() {
        let k = |v: &'static str| Key::Bearer(HeaderValue::from_static(v));
        assert_ne!(
            k("tok1"),
            k("tok2"),
            "no scheme: the whole value is the token"
        );
        assert_ne!(
            k("Basic x"),
            k("Bearer x"),
            "only the bearer scheme is stripped"
        );
        assert_eq!(k("Bearer x"), k("bearer  x"));
    }

    #[test]
    fn cidrs_parse_or_name_the_bad_one() {
        assert!(TrustedProxies::from_cidrs(["10.0.0.0/33"]).is_err());
        assert_eq!(
            TrustedProxies::from_cidrs(["nope"]).unwrap_err().cidr,
            "nope"
        );
        let t = TrustedProxies::from_cidrs(["::ffff:10.0.0.0/104", "10.0.0.0/8"]).unwrap();
        assert!(t.contains("::ffff:10.1.1.1".parse().unwrap()));
        // A network written IPv4-mapped matches IPv4 peers, and only its own addresses.
        let mapped = TrustedProxies::from_cidrs(["::ffff:10.0.0.0/104"]).unwrap();
        assert!(mapped.contains("10.1.1.1".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        let all_v4 = TrustedProxies::from_cidrs(["::ffff:0.0.0.0/96"]).unwrap();
        assert!(all_v4.contains("192.0.2.1".parse().unwrap()));
        assert!(!all_v4.contains("2001:db8::1".parse().unwrap()));
    }
}
