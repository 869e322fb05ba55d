//! Who a request counts against, over real sockets (contract §5): missing and duplicate keys,
//! odd header bytes, peer and client IPs behind proxies, forged forwarding headers.
#![cfg(all(feature = "http", not(loom)))]

#[path = "support/http.rs"]
mod support;

use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;
use tollgate::http::{
    ForwardedHeader, Key, KeyExtractor, MissingKey, RateLimitLayer, TrustedProxies,
};
use tollgate::{KeyedLimiter, Limit, ManualClock};

#[tokio::test]
async fn missing_key_gets_the_configured_answer() {
    let clock = ManualClock::new();
    let reject = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::bearer())
        .build()
        .unwrap();
    let addr = serve(api(reject)).await;
    let c = client();
    let got = send(&c, get_with(addr, "/api", &[])).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(got.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        got.header("www-authenticate"),
        Some("Bearer"),
        "RFC 9110: a challenge"
    );
    let got = send(&c, get_with(addr, "/api", &[("authorization", "Basic x")])).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    let got = send(
        &c,
        get_with(addr, "/api", &[("authorization", "Bearer t1")]),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);

    let fallback = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::api_key())
        .missing_key(MissingKey::Fallback(Key::Text("anonymous".into())))
        .build()
        .unwrap();
    let addr = serve(api(fallback)).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(send(&c, get_with(addr, "/api", &[])).await.status.as_u16());
        }
        v
    };
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "anonymous requests share one bucket"
    );
}

#[tokio::test]
async fn odd_header_bytes_never_panic() {
    let clock = ManualClock::new();
    let trusted = TrustedProxies::from_cidrs(["127.0.0.0/8"]).unwrap();
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::client_ip(
            trusted,
            ForwardedHeader::XForwardedFor,
        ))
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let huge = "9".repeat(60_000);
    let values: Vec<&[u8]> = vec![
        b"\xff\xfe\xfd",
        b"",
        b",,,",
        b"[::1",
        huge.as_bytes(),
        b"1.2.3.4:99999",
    ];
    for value in values {
        // A raw request over TCP, so any bytes reach the server.
        let mut raw = b"GET /api HTTP/1.1\r\nhost: x\r\nx-forwarded-for: ".to_vec();
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\nforwarded: for=");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\nx-api-key: ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(&raw).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let head = String::from_utf8_lossy(&response[..response.len().min(12)]).to_string();
        // 401: a hop that is not an address, from the trusted peer, means no key.
        assert!(
            head.starts_with("HTTP/1.1 200")
                || head.starts_with("HTTP/1.1 401")
                || head.starts_with("HTTP/1.1 429")
                || head.starts_with("HTTP/1.1 431"),
            "{head}"
        );
    }
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn forged_forwarded_for_from_an_untrusted_peer_does_not_change_the_key() {
    let clock = ManualClock::new();
    // Only 10.0.0.0/8 is trusted; the test client connects from 127.0.0.1.
    let trusted = TrustedProxies::from_cidrs(["10.0.0.0/8"]).unwrap();
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::client_ip(
            trusted,
            ForwardedHeader::XForwardedFor,
        ))
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let forged = format!("198.51.100.{i}");
        let got = send(&c, get_with(addr, "/api", &[("x-forwarded-for", &forged)])).await;
        statuses.push(got.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "all four count against 127.0.0.1"
    );
}

/// The client IP is found from the right across several header lines of the named header,
/// through trusted proxies only; the other forwarding header is ignored.
#[test]
fn client_ip_walks_hops_from_the_right_across_header_lines() {
    use tollgate::http::{PeerAddr, RequestInfo};
    let trusted = TrustedProxies::from_cidrs(["10.0.0.0/8"]).unwrap();
    let xff = KeyExtractor::client_ip(trusted.clone(), ForwardedHeader::XForwardedFor);
    let fwd = KeyExtractor::client_ip(trusted, ForwardedHeader::Forwarded);
    let key_with = |extractor: &KeyExtractor, headers: &[(&str, &str)]| {
        let mut req = Request::get("/").body(()).unwrap();
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        req.extensions_mut()
            .insert(PeerAddr("10.0.0.1:443".parse().unwrap()));
        extractor.extract(&RequestInfo::new(&req, None))
    };
    let key_of = |headers: &[(&str, &str)]| key_with(&xff, headers);
    let ip = |s: &str| Some(Key::Ip(s.parse().unwrap()));
    // Last line, last hop first: 10.0.0.3 is trusted, 7.7.7.7 is the client; 1.1.1.1 (forged
    // by the client) is never reached.
    assert_eq!(
        key_of(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "7.7.7.7, 10.0.0.3")
        ]),
        ip("7.7.7.7")
    );
    assert_eq!(
        key_of(&[
            ("x-forwarded-for", "1.1.1.1, 10.0.0.9"),
            ("x-forwarded-for", "10.0.0.3")
        ]),
        ip("1.1.1.1")
    );
    assert_eq!(
        key_of(&[
            ("x-forwarded-for", "9.9.9.9"),
            ("forwarded", "for=8.8.8.8;proto=https")
        ]),
        ip("9.9.9.9"),
        "a client-sent Forwarded is ignored behind a proxy that writes X-Forwarded-For"
    );
    assert_eq!(
        key_with(
            &fwd,
            &[
                ("x-forwarded-for", "9.9.9.9"),
                ("forwarded", "for=8.8.8.8;proto=https")
            ]
        ),
        ip("8.8.8.8"),
        "and the other way round"
    );
    assert_eq!(
        key_with(&fwd, &[("forwarded", "proto=http")]),
        None,
        "a Forwarded element without for= does not pick the proxy's bucket"
    );
    // Only trusted hops: the leftmost one.
    assert_eq!(
        key_of(&[("x-forwarded-for", "10.0.0.5, 10.0.0.3")]),
        ip("10.0.0.5")
    );
}

/// A peer-IP key on a server that does not pass the peer address is a loud set-up error (500,
/// saying what is missing), never a 401 for every client.
#[tokio::test]
async fn peer_ip_without_the_peer_address_is_a_loud_500() {
    let limiter: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_second(5).unwrap());
    let layer = RateLimitLayer::builder(limiter)
        .key(KeyExtractor::peer_ip())
        .build()
        .unwrap();
    let router = Router::new()
        .route("/api", get(|| async { "ok" }))
        .layer(layer);
    // Served without connect info: neither `ConnectInfo` nor `PeerAddr` reaches the layer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let c = client();
    let req = Request::get(format!("http://{addr}/api"))
        .body(Full::default())
        .unwrap();
    let got = send(&c, req).await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&got.body).contains("peer address"));
}

/// Issue 19, item 1, over a real socket: behind a trusted proxy that appends the client to
/// `X-Forwarded-For` (the test client plays it, from 127.0.0.1), a client that sends its own
/// `Forwarded: for=<any address>` cannot pick its key: a fresh address per request does not
/// escape the limit.
#[tokio::test]
async fn a_client_sent_forwarded_header_does_not_choose_the_key() {
    let clock = ManualClock::new();
    let trusted = TrustedProxies::from_cidrs(["127.0.0.0/8"]).unwrap();
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::client_ip(
            trusted,
            ForwardedHeader::XForwardedFor,
        ))
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let forged = format!("for=198.51.100.{i}");
        let got = send(
            &c,
            get_with(
                addr,
                "/api",
                &[("forwarded", &forged), ("x-forwarded-for", "203.0.113.5")],
            ),
        )
        .await;
        statuses.push(got.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "all four count against 203.0.113.5"
    );
}

/// Issue 19, item 10: a key header sent twice is ambiguous (the app may authenticate the other
/// line): no key, a 401 with its challenge, never a bucket of the client's choosing.
#[tokio::test]
async fn a_key_header_sent_twice_is_no_key() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::api_key())
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    let mut req = get_with(addr, "/api", &[("x-api-key", "alice")]);
    req.headers_mut()
        .append("x-api-key", http::HeaderValue::from_static("mallory"));
    let got = send(&c, req).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        got.header("www-authenticate"),
        Some("ApiKey header=\"x-api-key\"")
    );
    let got = send(&c, get_with(addr, "/api", &[("x-api-key", "alice")])).await;
    assert_eq!(got.status, StatusCode::OK);
}
