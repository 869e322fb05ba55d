//! Several policies in one layer (all-or-nothing), charging by response, custom denials: over
//! real sockets on loopback, with a real HTTP client.
#![cfg(all(feature = "http", not(loom)))]

#[path = "support/http.rs"]
mod support;

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use support::*;
use tollgate::http::{
    Backend, Charge, Key, KeyExtractor, LayerError, MissingKey, Policy, RateLimitLayer, Verdict,
};
use tollgate::{KeyedLimiter, Limit, ManualClock};

/// `capacity` tokens, 1 back every `secs` seconds, on `clock`.
fn keyed(clock: &ManualClock, capacity: u64, secs: u64) -> Arc<KeyedLimiter<Key>> {
    Arc::new(
        KeyedLimiter::builder(Limit::new(capacity, 1, Duration::from_secs(secs)).unwrap())
            .clock(clock.clone())
            .build(),
    )
}

fn key(k: &str) -> Key {
    Key::Header(http::HeaderValue::from_str(k).unwrap())
}

/// The members of a Structured Fields list header (every field line), as (name, params).
fn members(got: &Got, name: &str) -> Vec<(String, String)> {
    let combined: Vec<&str> = got
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let combined = combined.join(", ");
    let list = sfv::Parser::parse_list(combined.as_bytes())
        .unwrap_or_else(|e| panic!("{name}: {combined:?}: {e}"));
    list.iter()
        .map(|m| match m {
            sfv::ListEntry::Item(item) => (
                item.bare_item.as_str().unwrap().to_string(),
                item.params
                    .iter()
                    .map(|(k, v)| format!("{}={}", k.as_str(), v.as_int().unwrap()))
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
            other => panic!("{name}: {other:?}"),
        })
        .collect()
}

/// Per API key 3 (1/s), global 5 (1 per 10 s): a request passes only if both grant it, a
/// refusal by either consumes from neither, each policy is a member of the header lists, and
/// the 429 carries the longest wait.
#[tokio::test]
async fn several_policies_are_all_or_nothing() {
    let clock = ManualClock::new();
    let (per_key, global) = (keyed(&clock, 3, 1), keyed(&clock, 5, 10));
    let layer = RateLimitLayer::builder(per_key.clone())
        .key(KeyExtractor::api_key())
        .policy_name("key")
        .policy(Policy::new("global", global.clone()))
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    let get = |k: &'static str| get_with(addr, "/api", &[("x-api-key", k)]);

    for left in (0..3).rev() {
        let got = send(&c, get("a")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            members(&got, "ratelimit"),
            [
                ("key".into(), format!("r={left};t=1")),
                ("global".into(), format!("r={};t=10", 2 + left)),
            ]
        );
        assert_eq!(
            members(&got, "ratelimit-policy"),
            [
                ("key".to_string(), "q=3;w=3".to_string()),
                ("global".to_string(), "q=5;w=50".to_string()),
            ]
        );
    }
    // Refused by the per-key policy: the global one gives its token back.
    let got = send(&c, get("a")).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert_eq!(global.snapshot_key(&Key::Global).remaining(), 2);
    // Two more for b empty the global bucket; the next is refused by it, and b's own
    // bucket gets its token back.
    for _ in 0..2 {
        assert_eq!(send(&c, get("b")).await.status, StatusCode::OK);
    }
    let got = send(&c, get("b")).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("10"));
    assert_eq!(per_key.snapshot_key(&key("b")).remaining(), 1);
    // Both refuse a: the longest wait wins (global's 10 s, not the per-key 1 s).
    let got = send(&c, get("a")).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("10"));
    assert_eq!(members(&got, "ratelimit").len(), 2);
    // Nothing was taken by any refusal: a refill step later, a is back to one token.
    clock.advance(Duration::from_secs(1));
    assert_eq!(per_key.snapshot_key(&key("a")).remaining(), 1);
    assert_eq!(global.snapshot_key(&Key::Global).remaining(), 0);
}

/// A policy in its own shadow mode decides and counts but refuses nothing; the others still
/// enforce; switched at runtime.
#[tokio::test]
async fn one_policy_in_shadow_mode() {
    let clock = ManualClock::new();
    let (per_key, global) = (keyed(&clock, 3, 1), keyed(&clock, 2, 10));
    let layer = RateLimitLayer::builder(per_key)
        .key(KeyExtractor::api_key())
        .policy_name("key")
        .policy(Policy::new("global", global).shadow(true))
        .build()
        .unwrap();
    let addr = serve(api(layer.clone())).await;
    let c = client();
    let get = || get_with(addr, "/api", &[("x-api-key", "a")]);
    for _ in 0..3 {
        let got = send(&c, get()).await;
        assert_eq!(got.status, StatusCode::OK);
        // The shadow policy's member is not shown (no shadow headers).
        assert_eq!(members(&got, "ratelimit").len(), 1);
    }
    assert_eq!(layer.policy_would_deny("global"), Some(1));
    assert_eq!(layer.policy_would_deny("key"), Some(0));
    // The per-key policy is enforced.
    assert_eq!(send(&c, get()).await.status, StatusCode::TOO_MANY_REQUESTS);
    // Enforce the global policy too: b is refused by it.
    layer.set_policy_shadow("global", false).unwrap();
    assert_eq!(layer.is_policy_shadow("global"), Some(false));
    let got = send(&c, get_with(addr, "/api", &[("x-api-key", "b")])).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("10"));
    assert_eq!(layer.would_deny(), 1);
}

/// A policy that cannot find its key under `Fallback` counts on the shared key; under `Reject`
/// it refuses, and the policies before it give back what they took.
#[tokio::test]
async fn a_missing_key_refuses_and_gives_back() {
    let clock = ManualClock::new();
    let (global, per_key) = (keyed(&clock, 5, 10), keyed(&clock, 3, 1));
    let layer = RateLimitLayer::builder(global.clone())
        .policy_name("global")
        .policy(Policy::new("key", per_key).key(KeyExtractor::api_key()))
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    let got = send(&c, get_with(addr, "/api", &[])).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert!(got.header("www-authenticate").is_some());
    assert_eq!(global.snapshot_key(&Key::Global).remaining(), 5);

    let per_key = keyed(&clock, 3, 1);
    let layer = RateLimitLayer::builder(global.clone())
        .policy_name("global")
        .policy(
            Policy::new("key", per_key.clone())
                .key(KeyExtractor::api_key())
                .missing_key(MissingKey::Fallback(Key::Global)),
        )
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    assert_eq!(
        send(&c, get_with(addr, "/api", &[])).await.status,
        StatusCode::OK
    );
    assert_eq!(per_key.snapshot_key(&Key::Global).remaining(), 2);
}

/// Count only failed logins: a success gives its token back (an undo), a failure keeps it.
#[tokio::test]
async fn charge_only_failed_logins() {
    let clock = ManualClock::new();
    let limiter = keyed(&clock, 2, 60);
    let layer = RateLimitLayer::builder(limiter.clone())
        .key(KeyExtractor::peer_ip())
        .charge_by_response(|res| {
            if res.status.is_success() {
                Charge::Undo
            } else {
                Charge::Keep
            }
        })
        .build()
        .unwrap();
    let login = Router::new()
        .route(
            "/login",
            post(|body: Bytes| async move {
                if &body[..] == b"right" {
                    (StatusCode::OK, "welcome")
                } else {
                    (StatusCode::UNAUTHORIZED, "no")
                }
            }),
        )
        .layer(layer);
    let addr = serve(login).await;
    let c = client();
    let post_login = |password: &'static str| {
        http::Request::post(format!("http://{addr}/login"))
            .body(http_body_util::Full::new(Bytes::from_static(
                password.as_bytes(),
            )))
            .unwrap()
    };
    for _ in 0..5 {
        assert_eq!(send(&c, post_login("right")).await.status, StatusCode::OK);
    }
    let ip = Key::Ip("127.0.0.1".parse().unwrap());
    assert_eq!(
        limiter.snapshot_key(&ip).remaining(),
        2,
        "successes are free"
    );
    for _ in 0..2 {
        assert_eq!(
            send(&c, post_login("wrong")).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        send(&c, post_login("right")).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "two failures use the limit up, even for the right password"
    );
}

/// `Extra` charges a fixed amount more once the response is known; `BodyBytes` charges by the
/// bytes the body sent, once it ends.
#[tokio::test]
async fn charge_more_by_response_and_by_body_bytes() {
    let clock = ManualClock::new();
    let limiter = keyed(&clock, 100, 60);
    let layer = RateLimitLayer::builder(limiter.clone())
        .key(KeyExtractor::api_key())
        .cost(|_| 0)
        .charge_by_response(|res| match res.headers.get("x-work") {
            Some(v) => Charge::Extra(v.to_str().unwrap().parse().unwrap()),
            None => Charge::BodyBytes {
                per_token: NonZeroU64::new(100).unwrap(),
            },
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/work", get(|| async { ([("x-work", "30")], "done") }))
        .route("/file", get(|| async { vec![b'x'; 1_050] }))
        .layer(layer);
    let addr = serve(app).await;
    let c = client();
    let got = send(&c, get_with(addr, "/work", &[("x-api-key", "a")])).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(limiter.snapshot_key(&key("a")).remaining(), 70);
    let got = send(&c, get_with(addr, "/file", &[("x-api-key", "b")])).await;
    assert_eq!(got.body.len(), 1_050);
    // The charge runs when the server's body ends, which the client may see first: wait for
    // it (an event, not a time), then check the amount exactly: 1,050 bytes, 11 tokens.
    let b = key("b");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while limiter.snapshot_key(&b).remaining() == 100 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(limiter.snapshot_key(&b).remaining(), 89);
    // A charge above what is left takes what is there and refuses nothing.
    for _ in 0..3 {
        let got = send(&c, get_with(addr, "/work", &[("x-api-key", "a")])).await;
        assert_eq!(got.status, StatusCode::OK, "the cost up front is 0");
    }
    assert_eq!(limiter.snapshot_key(&key("a")).remaining(), 0);
}

/// A custom denial response: the closure's body and status, with the rate-limit headers and
/// `Retry-After` added.
#[tokio::test]
async fn a_custom_denial_response() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(keyed(&clock, 1, 7))
        .key(KeyExtractor::api_key())
        .policy_name("key")
        .on_denied(|denial| {
            let mut res = http::Response::new(Bytes::from(format!(
                "<p>{} says wait {} s</p>",
                denial.policy,
                denial.retry_after.unwrap().as_secs()
            )));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res
        })
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    let get = || get_with(addr, "/api", &[("x-api-key", "a")]);
    assert_eq!(send(&c, get()).await.status, StatusCode::OK);
    let got = send(&c, get()).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&got.body[..], b"<p>key says wait 7 s</p>");
    assert_eq!(got.header("retry-after"), Some("7"));
    assert_eq!(
        members(&got, "ratelimit"),
        [("key".into(), "r=0;t=7".into())]
    );
}

/// A backend that cannot give tokens back.
#[derive(Debug)]
struct NoUndo(Limit);

impl Backend for NoUndo {
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Verdict, Self::Error>>;
    fn acquire(&self, _key: &Key, _cost: u64) -> Self::Future {
        unreachable!("never built")
    }
    fn limit(&self) -> Limit {
        self.0
    }
}

#[test]
fn building_checks_names_and_undo() {
    let limit = Limit::per_second(1).unwrap();
    let mk = || KeyedLimiter::<Key>::new(limit);
    let err = RateLimitLayer::builder(mk())
        .policy_name("a")
        .policy(Policy::new("a", mk()))
        .build()
        .unwrap_err();
    assert_eq!(err, LayerError::DuplicatePolicy("a".into()));
    let err = RateLimitLayer::builder(mk())
        .policy(Policy::new("bad\n", mk()))
        .build()
        .unwrap_err();
    assert!(matches!(err, LayerError::PolicyName(_)), "{err}");
    let err = RateLimitLayer::builder(NoUndo(limit))
        .policy(Policy::new("b", NoUndo(limit)))
        .build()
        .unwrap_err();
    assert_eq!(err, LayerError::CannotUndo("default".into()));
    let err = RateLimitLayer::builder(NoUndo(limit))
        .charge_by_response(|_| Charge::Keep)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("cannot give tokens back"), "{err}");
    // One policy without charging needs no undo.
    assert!(RateLimitLayer::builder(NoUndo(limit)).build().is_ok());
}

/// Counts the takes (`acquire` with a cost) that reach a backend.
#[derive(Debug)]
struct Counted(Arc<KeyedLimiter<Key>>, Arc<std::sync::atomic::AtomicU64>);

impl Backend for Counted {
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Verdict, Self::Error>>;
    fn acquire(&self, key: &Key, cost: u64) -> Self::Future {
        if cost > 0 {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.0.acquire(key, cost)
    }
    fn peek(&self, key: &Key, cost: u64) -> Self::Future {
        self.0.peek(key, cost)
    }
    fn limit(&self) -> Limit {
        self.0.limit()
    }
    fn can_undo(&self) -> bool {
        true
    }
    fn undo(&self, key: &Key, cost: u64, taken: &tollgate::Decision) {
        self.0.undo(key, cost, taken)
    }
}

/// A layer of several policies looks at all before taking from any: a request one refuses
/// takes nothing anywhere (no undo needed, so a busy shared bucket loses nothing to refused
/// floods), and a cost above a later policy's capacity gives no `Retry-After`.
#[tokio::test]
async fn a_refused_request_takes_nothing() {
    let clock = ManualClock::new();
    let takes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let global = Counted(keyed(&clock, 100, 1), takes.clone());
    let per_key = Counted(keyed(&clock, 2, 60), takes.clone());
    let layer = RateLimitLayer::builder(global)
        .policy_name("global")
        .policy(
            Policy::new("key", per_key)
                .key(KeyExtractor::api_key())
                .cost(|req| if req.uri.path() == "/upload" { 5 } else { 1 }),
        )
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    for _ in 0..2 {
        let got = send(&c, get_with(addr, "/api", &[("x-api-key", "a")])).await;
        assert_eq!(got.status, StatusCode::OK);
    }
    assert_eq!(takes.load(std::sync::atomic::Ordering::SeqCst), 4);
    for _ in 0..50 {
        let got = send(&c, get_with(addr, "/api", &[("x-api-key", "a")])).await;
        assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(got.header("retry-after"), Some("60"));
    }
    assert_eq!(
        takes.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "refused requests took nothing"
    );
    // A cost above the per-key capacity (5 > 2): refused without Retry-After.
    let upload = http::Request::post(format!("http://{addr}/upload"))
        .header("x-api-key", "b")
        .body(http_body_util::Full::default())
        .unwrap();
    let got = send(&c, upload).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), None);
    assert_eq!(members(&got, "ratelimit").len(), 2);
}

/// A request whose response future is dropped before it answers (a timeout, a client gone)
/// gives back what it took; one that completes keeps it.
#[tokio::test]
async fn a_request_dropped_before_its_answer_gives_back() {
    use tower::{Layer, Service};
    let clock = ManualClock::new();
    let limiter = keyed(&clock, 3, 60);
    let layer = RateLimitLayer::builder(limiter.clone())
        .key(KeyExtractor::api_key())
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(
        |_req: http::Request<http_body_util::Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(
                http_body_util::Full::<Bytes>::default(),
            ))
        },
    ));
    let req = || {
        http::Request::get("/")
            .header("x-api-key", "a")
            .body(http_body_util::Full::default())
            .unwrap()
    };
    drop(svc.call(req()));
    assert_eq!(limiter.snapshot_key(&key("a")).remaining(), 3, "given back");
    let res = svc.call(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(limiter.snapshot_key(&key("a")).remaining(), 2, "kept");
}
