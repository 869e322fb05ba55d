//! The HTTP layer's housekeeping (issue 12): memory returns after a flood of keys with no
//! request after it and no call from the user, off the request path, and the housekeeping
//! thread ends with the layer.
#![cfg(all(feature = "http", not(loom)))]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::http::{Key, KeyExtractor, RateLimitLayer};
use tollgate::{KeyedLimiter, Limit, ManualClock};

/// Polls `cond` until it holds, failing after a generous deadline (an eventual property, not
/// a timing one: it normally holds within one eviction period, 10 ms here).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_go_after_a_flood_with_no_request_after_it() {
    let clock = ManualClock::new();
    let limiter: Arc<KeyedLimiter<Key>> = Arc::new(
        KeyedLimiter::builder(Limit::per_second(10).unwrap())
            .clock(clock.clone())
            .idle_ttl(Duration::from_millis(20))
            .build(),
    );
    assert_eq!(limiter.eviction_period(), Duration::from_millis(10));
    let layer = RateLimitLayer::builder(limiter.clone())
        .key(KeyExtractor::api_key())
        .build()
        .unwrap();
    let router = Router::new()
        .route("/api", get(|| async { "ok" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for i in 0..300 {
        let req = http::Request::get(format!("http://{addr}/api"))
            .header("x-api-key", format!("flood-{i}"))
            .body(Full::default())
            .unwrap();
        assert!(client.request(req).await.unwrap().status().is_success());
    }
    assert_eq!(
        limiter.len(),
        300,
        "nothing is idle yet: the clock has not moved"
    );
    // The flood stops; time passes (each key full again and idle past idle_ttl); no request,
    // no call from the user.
    clock.advance(Duration::from_secs(2));
    let l = limiter.clone();
    tokio::task::spawn_blocking(move || eventually("the idle keys are evicted", || l.is_empty()))
        .await
        .unwrap();
    // The layer goes (server and its services with it): the housekeeping lets go of the
    // limiter, and its thread ends.
    server.abort();
    let _ = server.await;
    drop(client);
    let l = limiter.clone();
    tokio::task::spawn_blocking(move || {
        eventually("the layer's config, and its housekeeping, are gone", || {
            Arc::strong_count(&l) == 2
        })
    })
    .await
    .unwrap();
}
