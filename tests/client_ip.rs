//! Contract §5, client IP behind proxies, as a property: over any mix of `Forwarded` and
//! `X-Forwarded-For` lines, peers and trusted sets, the key is the rightmost untrusted hop of
//! the one named header, or the peer when it is not trusted; the other header never matters.
#![cfg(all(feature = "http", not(loom)))]

use std::net::IpAddr;

use proptest::prelude::*;
use tollgate::http::{ForwardedHeader, Key, KeyExtractor, PeerAddr, RequestInfo, TrustedProxies};

/// A hop: a trusted address (10.0.0.x), an untrusted one (198.51.100.x), or not an address.
#[derive(Clone, Debug)]
enum Hop {
    Trusted(u8),
    Untrusted(u8),
    Garbage,
}

impl Hop {
    fn ip(&self) -> Option<IpAddr> {
        match self {
            Hop::Trusted(x) => Some(IpAddr::from([10, 0, 0, *x])),
            Hop::Untrusted(x) => Some(IpAddr::from([198, 51, 100, *x])),
            Hop::Garbage => None,
        }
    }

    fn xff(&self) -> String {
        self.ip().map_or("unknown".into(), |ip| ip.to_string())
    }

    fn forwarded(&self) -> String {
        match self.ip() {
            Some(ip) => format!("for={ip};proto=https"),
            None => "proto=http".into(),
        }
    }
}

fn hop() -> impl Strategy<Value = Hop> {
    prop_oneof![
        (0u8..4).prop_map(Hop::Trusted),
        (0u8..4).prop_map(Hop::Untrusted),
        Just(Hop::Garbage),
    ]
}

/// The oracle: contract §5 by the letter.
fn expected(peer: &Hop, named: &[Vec<Hop>]) -> Option<IpAddr> {
    let peer_ip = peer.ip().expect("peers are addresses");
    if matches!(peer, Hop::Untrusted(_)) {
        return Some(peer_ip);
    }
    let mut last = peer_ip;
    for hop in named.iter().flatten().rev() {
        match hop {
            Hop::Untrusted(_) => return hop.ip(),
            Hop::Trusted(_) => last = hop.ip().expect("an address"),
            Hop::Garbage => return None,
        }
    }
    Some(last)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn the_key_is_the_rightmost_untrusted_hop_of_the_named_header(
        trusted_peer in any::<bool>(),
        peer_x in 0u8..4,
        xff in prop::collection::vec(prop::collection::vec(hop(), 0..4), 0..3),
        fwd in prop::collection::vec(prop::collection::vec(hop(), 0..4), 0..3),
        use_forwarded in any::<bool>(),
    ) {
        let peer = if trusted_peer { Hop::Trusted(peer_x) } else { Hop::Untrusted(peer_x) };
        let mut req = http::Request::new(());
        for line in &xff {
            let text: Vec<String> = line.iter().map(Hop::xff).collect();
            req.headers_mut().append("x-forwarded-for", text.join(", ").parse().unwrap());
        }
        for line in &fwd {
            let text: Vec<String> = line.iter().map(Hop::forwarded).collect();
            req.headers_mut().append("forwarded", text.join(", ").parse().unwrap());
        }
        req.extensions_mut()
            .insert(PeerAddr((peer.ip().unwrap(), 443).into()));
        let header = if use_forwarded {
            ForwardedHeader::Forwarded
        } else {
            ForwardedHeader::XForwardedFor
        };
        let trusted = TrustedProxies::from_cidrs(["10.0.0.0/8"]).unwrap();
        let got = KeyExtractor::client_ip(trusted, header)
            .ipv6_prefix(128)
            .extract(&RequestInfo::new(&req, None));
        // Empty lines (no hop) are empty header values: no hop either way.
        let named = if use_forwarded { &fwd } else { &xff };
        let want = expected(&peer, named).map(Key::Ip);
        prop_assert_eq!(got, want);
    }
}
