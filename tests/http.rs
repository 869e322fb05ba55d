//! The HTTP layer over real sockets on loopback, with a real HTTP client (contract §5): headers,
//! denials, costs, exemptions, backend failures, stacked layers.
#![cfg(all(feature = "http", not(loom)))]

#[path = "support/http.rs"]
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tollgate::http::{
    Backend, HeaderStyle, Key, KeyExtractor, OnBackendError, PeerAddr, RateLimitLayer, Verdict,
};
use tollgate::{KeyedLimiter, Limit, ManualClock};

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
    fn limit(&self) -> Limit {
        self.0
    }
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
    limiter.set_limit(Limit::new(6, 2, s).unwrap(), tollgate::Inherit::Keep);
    assert_eq!(policy("free").await, pair("\"default\";q=6;w=3", "6"));
    assert_eq!(policy("pro-a").await, pair("\"default\";q=100;w=10", "100"));
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

/// Shadow mode: every request reaches the service, what the layer would have refused is
/// counted, headers only when asked for, and switching it off at runtime (through any clone of
/// the layer) enforces the limit at once.
#[tokio::test]
async fn shadow_mode_refuses_nothing_counts_and_switches_at_runtime() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::api_key())
        .shadow(true)
        .build()
        .unwrap();
    let handle = layer.clone();
    let addr = serve(api(layer)).await;
    let c = client();
    let key = [("x-api-key", "alice")];
    for _ in 0..5 {
        let got = send(&c, get_with(addr, "/api", &key)).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, "hello");
        assert_eq!(got.header("ratelimit"), None, "no headers unless asked for");
        assert_eq!(got.header("retry-after"), None);
    }
    // No key would be a 401: it passes too.
    assert_eq!(
        send(&c, get_with(addr, "/api", &[])).await.status,
        StatusCode::OK
    );
    // Capacity 3: two denials and the missing key.
    assert_eq!(handle.would_deny(), 3);
    handle.set_shadow(false);
    assert!(!handle.is_shadow());
    let got = send(&c, get_with(addr, "/api", &key)).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert_eq!(
        handle.would_deny(),
        3,
        "enforced: counted as refused, not as let through"
    );

    // With headers: clients see the would-be quota, never a Retry-After.
    let layer = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::api_key())
        .shadow(true)
        .shadow_headers(true)
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let got = send(&c, get_with(addr, "/api", &key)).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.header("retry-after"), None);
        seen.push(got.header("ratelimit").map(str::to_owned));
    }
    let r = |n: u64| Some(format!("\"default\";r={n};t=1"));
    assert_eq!(seen, [r(2), r(1), r(0), r(0)]);
}

/// Shadow mode on the other refusals: a cost above the capacity, a fail-closed backend error,
/// and an IP key on a server that passes no peer address all reach the service, and count.
#[tokio::test]
async fn shadow_mode_lets_every_kind_of_refusal_through() {
    use tower::{Layer, ServiceExt};

    let clock = ManualClock::new();
    let costly = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::api_key())
        .cost(|_| 100)
        .shadow(true)
        .build()
        .unwrap();
    let broken = RateLimitLayer::builder(Broken(Limit::per_second(1).unwrap()))
        .on_backend_error(OnBackendError::FailClosed)
        .shadow(true)
        .build()
        .unwrap();
    let no_peer = RateLimitLayer::builder(limiter(&clock))
        .key(KeyExtractor::peer_ip())
        .shadow(true)
        .build()
        .unwrap();
    for layer_count in [
        {
            let addr = serve(api(costly.clone())).await;
            let got = send(&client(), get_with(addr, "/api", &[("x-api-key", "a")])).await;
            assert_eq!(got.status, StatusCode::OK, "cost above the capacity");
            costly.would_deny()
        },
        {
            let router = Router::new()
                .route("/api", get(|| async { "hello" }))
                .layer(broken.clone());
            let addr = serve(router).await;
            let got = send(&client(), get_with(addr, "/api", &[])).await;
            assert_eq!(got.status, StatusCode::OK, "fail-closed backend error");
            assert_eq!(got.header("ratelimit"), None);
            broken.would_deny()
        },
        {
            // In process, with no peer address at all (as a server that passes none).
            let service = no_peer.layer(tower::service_fn(|_req: http::Request<String>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
            }));
            let response = service
                .oneshot(http::Request::new(String::new()))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "no peer address");
            no_peer.would_deny()
        },
    ] {
        assert_eq!(layer_count, 1);
    }
}
