//! The HTTP layer over real sockets on loopback, with a real HTTP client (SPEC §5).
#![cfg(all(feature = "http", not(loom)))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tollgate::http::{
    Backend, ForwardedHeader, HeaderStyle, Key, KeyExtractor, MissingKey, OnBackendError, PeerAddr,
    RateLimitLayer, TrustedProxies, Verdict,
};
use tollgate::{KeyedLimiter, Limit, ManualClock};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Serves `router` on a free loopback port (with connect info for peer-IP keys: axum's
/// `ConnectInfo` with the `axum` feature; without it, copied into `PeerAddr` by a middleware,
/// as the `PeerAddr` docs show).
async fn serve(router: Router) -> SocketAddr {
    #[cfg(not(feature = "axum"))]
    let router = router.layer(axum::middleware::map_request(
        |axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<SocketAddr>,
         mut req: axum::extract::Request| async move {
            req.extensions_mut().insert(PeerAddr(remote));
            req
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Got {
    let res = c.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::default()).unwrap()
}

fn api(layer: RateLimitLayer<KeyedLimiter<Key>>) -> Router {
    Router::new()
        .route("/api", get(|| async { "hello" }))
        .route("/upload", post(|| async { "stored" }))
        .route("/health", get(|| async { "ok" }))
        .layer(layer)
}

/// Capacity 3, 1 token every second, on a manual clock.
fn limiter(clock: &ManualClock) -> KeyedLimiter<Key> {
    KeyedLimiter::builder(Limit::new(3, 1, Duration::from_secs(1)).unwrap())
        .clock(clock.clone())
        .build()
}

#[tokio::test]
async fn burst_then_429_with_exact_headers_and_refill() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::api_key())
        .headers(HeaderStyle::IetfAndLegacy)
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    let key = [("x-api-key", "alice")];
    for r in (0..3).rev() {
        let got = send(&c, get_with(addr, "/api", &key)).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, "hello");
        assert_eq!(
            got.header("ratelimit"),
            Some(format!("\"default\";r={r};t=1").as_str())
        );
        assert_eq!(got.header("ratelimit-policy"), Some("\"default\";q=3;w=3"));
        assert_eq!(got.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(
            got.header("x-ratelimit-remaining"),
            Some(r.to_string().as_str())
        );
        assert_eq!(
            got.header("x-ratelimit-reset"),
            Some((3 - r).to_string().as_str())
        );
        assert_eq!(got.header("retry-after"), None);
    }
    let got = send(&c, get_with(addr, "/api", &key)).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert_eq!(got.header("ratelimit"), Some("\"default\";r=0;t=1"));
    assert_eq!(got.header("content-type"), Some("application/problem+json"));
    let problem = std::str::from_utf8(&got.body).unwrap();
    assert!(problem.contains("\"status\":429"), "{problem}");
    // Half a second on: Retry-After is rounded up, never 0.
    clock.advance(Duration::from_millis(500));
    let got = send(&c, get_with(addr, "/api", &key)).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("1"));
    // At 1 s, one token is back.
    clock.advance(Duration::from_millis(500));
    let got = send(&c, get_with(addr, "/api", &key)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("ratelimit"), Some("\"default\";r=0;t=1"));
    // Other keys are isolated.
    let got = send(&c, get_with(addr, "/api", &[("x-api-key", "bob")])).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("ratelimit"), Some("\"default\";r=2;t=1"));
    // t counts from the step of the request: 0.25 s into a step, the next token is 0.75 s
    // away, rounded up to 1.
    clock.advance(Duration::from_millis(250));
    let got = send(&c, get_with(addr, "/api", &[("x-api-key", "carol")])).await;
    assert_eq!(got.header("ratelimit"), Some("\"default\";r=2;t=1"));
}

#[tokio::test]
async fn headers_parse_as_structured_fields() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(limiter(&clock))
        .policy_name("per \"key\" \\ limit")
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    for _ in 0..5 {
        let got = send(&c, get_with(addr, "/api", &[])).await;
        for name in ["ratelimit", "ratelimit-policy"] {
            let value = got.header(name).unwrap();
            let list = sfv::Parser::parse_list(value.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {value:?}: {e}"));
            let sfv::ListEntry::Item(item) = &list[0] else {
                panic!("{name}: not an item")
            };
            assert_eq!(
                item.bare_item,
                sfv::BareItem::String("per \"key\" \\ limit".into())
            );
            let keys: Vec<&str> = item.params.keys().map(|k| k.as_str()).collect();
            match name {
                "ratelimit" => assert_eq!(keys, ["r", "t"]),
                _ => assert_eq!(keys, ["q", "w"]),
            }
            for v in item.params.values() {
                assert!(matches!(v, sfv::BareItem::Integer(i) if *i >= 0));
            }
        }
    }
    assert!(RateLimitLayer::builder(limiter(&clock))
        .policy_name("caf\u{e9}")
        .build()
        .is_err());
}

#[tokio::test]
async fn exempt_routes_and_costs() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(limiter(&clock))
        .exempt(|req| req.uri.path() == "/health")
        .cost(|req| req.body_size.unwrap_or(0).max(1))
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    for _ in 0..10 {
        let got = send(&c, get_with(addr, "/health", &[])).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("ratelimit"), None);
    }
    let upload = |n: usize| {
        Request::post(format!("http://{addr}/upload"))
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    // Cost 2 of 3: allowed; cost 4 > capacity 3: 429, never a panic.
    let got = send(&c, upload(2)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("ratelimit"), Some("\"default\";r=1;t=1"));
    let got = send(&c, upload(4)).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    // No wait makes it pass: no Retry-After, and the body says so (issue 19).
    assert_eq!(got.header("retry-after"), None);
    assert!(String::from_utf8_lossy(&got.body).contains("never"));
    assert_eq!(got.header("ratelimit"), Some("\"default\";r=1;t=1"));
    // Nothing was consumed by the impossible request.
    let got = send(&c, upload(1)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("ratelimit"), Some("\"default\";r=0;t=1"));
}

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

/// A backend that always fails, for the failure policies.
struct Broken(Limit);

#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backend down")
    }
}

impl std::error::Error for Down {}

impl Backend for Broken {
    type Error = Down;
    type Future = std::future::Ready<Result<Verdict, Down>>;
    fn acquire(&self, _key: &Key, _cost: u64) -> Self::Future {
        std::future::ready(Err(Down))
    }
    fn limit(&self) -> &Limit {
        &self.0
    }
}

#[tokio::test]
async fn backend_failure_follows_the_policy() {
    let limit = Limit::per_second(1).unwrap();
    for (policy, status) in [
        (OnBackendError::FailOpen, StatusCode::OK),
        (OnBackendError::FailClosed, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let layer = RateLimitLayer::builder(Broken(limit))
            .on_backend_error(policy)
            .build()
            .unwrap();
        let router = Router::new()
            .route("/api", get(|| async { "hello" }))
            .layer(layer);
        let addr = serve(router).await;
        let got = send(&client(), get_with(addr, "/api", &[])).await;
        assert_eq!(got.status, status);
        assert_eq!(got.header("ratelimit"), None);
    }
}

#[tokio::test]
async fn bare_hyper_service_with_peer_addr() {
    use hyper::body::Incoming;
    use tower::ServiceBuilder;

    let clock = ManualClock::new();
    let limiter = Arc::new(limiter(&clock));
    let layer = RateLimitLayer::builder(limiter.clone())
        .key(KeyExtractor::peer_ip())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, remote) = listener.accept().await.unwrap();
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(remote));
                    req
                })
                .layer(layer.clone())
                .service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"bare"))))
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
            });
        }
    });
    let c: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = c
            .get(format!("http://{addr}/").parse().unwrap())
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(body == "bare" || statuses.last() == Some(&429));
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(limiter.len(), 1, "one bucket, for 127.0.0.1");
}

#[tokio::test]
async fn policy_header_follows_the_keys_tier_and_live_limit_changes() {
    let s = Duration::from_secs(1);
    let limiter = Arc::new(
        KeyedLimiter::builder(Limit::new(3, 1, s).unwrap())
            .tiers([Limit::new(100, 10, s).unwrap()], |k: &Key| {
                usize::from(matches!(k, Key::Header(h) if h.as_bytes().starts_with(b"pro")))
            })
            .clock(ManualClock::new())
            .build(),
    );
    let layer = RateLimitLayer::builder(limiter.clone())
        .key(KeyExtractor::api_key())
        .headers(HeaderStyle::IetfAndLegacy)
        .build()
        .unwrap();
    let router = Router::new()
        .route("/api", get(|| async { "hello" }))
        .layer(layer);
    let addr = serve(router).await;
    let c = client();
    let policy = |key: &'static str| {
        let c = c.clone();
        async move {
            let got = send(&c, get_with(addr, "/api", &[("x-api-key", key)])).await;
            (
                got.header("ratelimit-policy").map(str::to_owned),
                got.header("x-ratelimit-limit").map(str::to_owned),
            )
        }
    };
    let pair = |p: &str, l: &str| (Some(p.to_owned()), Some(l.to_owned()));
    assert_eq!(policy("free").await, pair("\"default\";q=3;w=3", "3"));
    assert_eq!(policy("pro-a").await, pair("\"default\";q=100;w=10", "100"));
    limiter
        .set_limit(Limit::new(6, 2, s).unwrap(), tollgate::Inherit::Keep)
        .unwrap();
    assert_eq!(policy("free").await, pair("\"default\";q=6;w=3", "6"));
    assert_eq!(policy("pro-a").await, pair("\"default\";q=100;w=10", "100"));
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

/// Issue 19, item 6: layers stacked by the user (a per-key layer inside a global one) append
/// their members; the inner layer's 429 carries both policies, as one Structured Fields list.
#[tokio::test]
async fn stacked_layers_keep_each_others_members() {
    let clock = ManualClock::new();
    let per_key = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::api_key())
        .policy_name("per-key")
        .build()
        .unwrap();
    let global: KeyedLimiter<Key> = KeyedLimiter::builder(Limit::per_second(100).unwrap())
        .clock(clock.clone())
        .build();
    let global = RateLimitLayer::builder(global)
        .policy_name("global")
        .build()
        .unwrap();
    // `api` puts the per-key layer on the routes; the global one wraps the whole router.
    let addr = serve(api(per_key).layer(global)).await;
    let c = client();
    let mut last = None;
    for _ in 0..4 {
        last = Some(send(&c, get_with(addr, "/api", &[("x-api-key", "k")])).await);
    }
    let got = last.unwrap();
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    for name in ["ratelimit", "ratelimit-policy"] {
        let lines: Vec<&str> = got
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        let combined = lines.join(", ");
        let list = sfv::Parser::parse_list(combined.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {combined:?}: {e}"));
        let names: Vec<String> = list
            .iter()
            .map(|m| match m {
                sfv::ListEntry::Item(item) => format!("{:?}", item.bare_item),
                other => panic!("{name}: {other:?}"),
            })
            .collect();
        assert_eq!(names.len(), 2, "{name}: {combined}");
        assert!(
            names[0].contains("per-key") && names[1].contains("global"),
            "{names:?}"
        );
    }
    assert!(got.header("retry-after").is_some());
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
