//! Who the client is behind proxies: the trusted proxies, the one forwarding header they write,
//! and the walk from the right of that header to the first hop that is not a trusted proxy
//! ([the HTTP contract](crate::contract::http)).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::RequestInfo;

/// A malformed CIDR for [`TrustedProxies`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError {
    /// The rejected text.
    pub cidr: String,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid CIDR {:?}: expected an address, or address/prefix (e.g. 10.0.0.0/8, \
             fd00::/8)",
            self.cidr
        )
    }
}

impl std::error::Error for CidrError {}

/// The proxies whose forwarding headers are believed.
///
/// ```
/// use tollgate::http::TrustedProxies;
/// let trusted = TrustedProxies::from_cidrs(["10.0.0.0/8", "::1"])?;
/// assert!(trusted.contains("10.1.2.3".parse().unwrap()));
/// assert!(!trusted.contains("192.0.2.1".parse().unwrap()));
/// # Ok::<(), tollgate::http::CidrError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// Trusts the given networks (`addr/prefix`, or a bare address).
    ///
    /// # Errors
    /// [`CidrError`] naming the first entry that does not parse.
    pub fn from_cidrs<I, T>(cidrs: I) -> Result<TrustedProxies, CidrError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut nets = Vec::new();
        for cidr in cidrs {
            let text = cidr.as_ref();
            let bad = || CidrError {
                cidr: text.to_string(),
            };
            let (addr, prefix) = match text.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (text, None),
            };
            let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
                None => max,
            };
            if prefix > max {
                return Err(bad());
            }
            // A network written IPv4-mapped (`::ffff:10.0.0.0/104`) is the IPv4 network
            // (10.0.0.0/8), as addresses are compared in their canonical form. A mapped network
            // shorter than /96 also covers non-mapped IPv6: it stays IPv6.
            let (addr, prefix) = match canonical(addr) {
                IpAddr::V4(v4) if addr.is_ipv6() && prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
                _ => (addr, prefix),
            };
            nets.push((mask(addr, prefix), prefix));
        }
        Ok(TrustedProxies { nets })
    }

    /// Whether `addr` is a trusted proxy.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.nets
            .iter()
            .any(|&(net, prefix)| net.is_ipv4() == addr.is_ipv4() && mask(addr, prefix) == net)
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
pub(super) fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `addr` with all but its first `prefix` bits cleared.
pub(super) fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// At most this many forwarding hops are examined (a bound on work for huge headers).
const MAX_HOPS: usize = 32;

/// The one forwarding header a deployment's proxies write, for
/// [`KeyExtractor::client_ip`](super::KeyExtractor::client_ip). Name the header your proxy (nginx, HAProxy, a cloud load
/// balancer, Envoy...) appends the client to; every other forwarding header is ignored, since a
/// client can send any header it likes and most proxies pass the others through untouched.
///
/// ```
/// use tollgate::http::ForwardedHeader;
/// assert_eq!(ForwardedHeader::XForwardedFor.name(), "x-forwarded-for");
/// assert_eq!(ForwardedHeader::Forwarded.name(), "forwarded");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (what nginx, HAProxy, AWS ALB, Envoy and
    /// Cloudflare append to).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1` (its `for=` parameters).
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name, lowercase.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

/// The client address behind trusted proxies (see
/// [`KeyExtractor::client_ip`](super::KeyExtractor::client_ip)).
pub(super) fn client_ip(
    req: &RequestInfo<'_>,
    trusted: &TrustedProxies,
    header: ForwardedHeader,
) -> Option<IpAddr> {
    let mut current = canonical(req.peer_addr()?.ip());
    if !trusted.contains(current) {
        return Some(current);
    }
    let using_forwarded = header == ForwardedHeader::Forwarded;
    let name = http::HeaderName::from_static(header.name());
    // From the right (the hop nearest to us), lazily: at most MAX_HOPS hops are split off,
    // however long the header.
    let hops = req
        .headers
        .get_all(name)
        .iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','))
        // Empty list elements are ignored (RFC 9110 §5.6.1).
        .filter(|hop| !hop.trim_ascii().is_empty());
    for hop in hops.take(MAX_HOPS) {
        let parsed = if using_forwarded {
            forwarded_for(hop).and_then(parse_hop)
        } else {
            parse_hop(hop)
        };
        // Not an address, reached through trusted proxies: the key is missing (never the
        // trusted proxy's own bucket, which a client could otherwise pick by sending garbage).
        let ip = parsed?;
        let ip = canonical(ip);
        if !trusted.contains(ip) {
            return Some(ip);
        }
        current = ip;
    }
    Some(current)
}

/// The `for=` value of one `Forwarded` element (`for=192.0.2.1;proto=https`).
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        name.eq_ignore_ascii_case(b"for").then(|| &value[1..])
    })
}

/// One hop: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`, optionally quoted.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?.trim();
    let hop = hop
        .strip_prefix('"')
        .and_then(|h| h.strip_suffix('"'))
        .unwrap_or(hop);
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = hop.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    // `[v6]` without a port.
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}
