//! The in-flight (concurrency) layer over real sockets: at most N requests at once per key, the
//! slot released when the response body ends or is dropped (the client went away).
#![cfg(all(feature = "http", not(loom)))]

#[path = "support/http.rs"]
mod support;

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use support::*;
use tokio::sync::Semaphore;
use tollgate::http::{InFlightLayer, Key, KeyExtractor};

fn key(k: &str) -> Key {
    Key::Header(http::HeaderValue::from_str(k).unwrap())
}

/// Waits (for an event, with a generous deadline) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `/slow` waits for a permit of `gate` before answering; `/stream` sends chunks forever;
/// `/fast` answers at once.
fn app(layer: InFlightLayer, gate: Arc<Semaphore>) -> Router {
    Router::new()
        .route(
            "/slow",
            get(move || {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.unwrap().forget();
                    "done"
                }
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let chunks = futures_stream();
                Body::from_stream(chunks)
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .layer(layer)
}

/// An endless stream of 1 KiB chunks.
fn futures_stream() -> impl tokio_stream_like::Stream<Item = Result<Bytes, std::convert::Infallible>>
{
    tokio_stream_like::repeat(Bytes::from(vec![b'x'; 1024]))
}

/// A minimal endless stream (the test needs no stream crate).
mod tokio_stream_like {
    pub use futures_core::Stream;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct Repeat(bytes::Bytes);

    pub fn repeat(b: bytes::Bytes) -> Repeat {
        Repeat(b)
    }

    impl Stream for Repeat {
        type Item = Result<bytes::Bytes, std::convert::Infallible>;
        fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(Some(Ok(self.0.clone())))
        }
    }
}

#[tokio::test]
async fn at_most_n_in_flight_per_key_released_when_the_body_ends() {
    let layer = InFlightLayer::builder(NonZeroU64::new(2).unwrap())
        .key(KeyExtractor::api_key())
        .build()
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let addr = serve(app(layer.clone(), gate.clone())).await;
    let c = client();
    let running: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(
                async move { send(&c, get_with(addr, "/slow", &[("x-api-key", "a")])).await },
            )
        })
        .collect();
    until("two in flight", || {
        layer.limiter().in_flight(&key("a")) == 2
    })
    .await;
    let got = send(&c, get_with(addr, "/fast", &[("x-api-key", "a")])).await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert_eq!(got.header("ratelimit"), Some("\"inflight\";r=0"));
    assert_eq!(
        got.header("ratelimit-policy"),
        Some("\"inflight\";q=2;qu=\"concurrent-requests\"")
    );
    // Another key is not held up.
    let got = send(&c, get_with(addr, "/fast", &[("x-api-key", "b")])).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.header("ratelimit"), Some("\"inflight\";r=1"));
    // The two end; their slots come back.
    gate.add_permits(2);
    for r in running {
        let got = r.await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(&got.body[..], b"done");
    }
    until("slots released", || {
        layer.limiter().in_flight(&key("a")) == 0
    })
    .await;
    assert_eq!(
        send(&c, get_with(addr, "/fast", &[("x-api-key", "a")]))
            .await
            .status,
        StatusCode::OK
    );
    // A missing key is refused as by the rate-limit layer.
    let got = send(&c, get_with(addr, "/fast", &[])).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
}

/// A client that goes away mid-body: the server drops the body, and the slot comes back.
#[tokio::test]
async fn a_client_gone_mid_body_releases_the_slot() {
    let layer = InFlightLayer::builder(NonZeroU64::new(1).unwrap())
        .key(KeyExtractor::api_key())
        .build()
        .unwrap();
    let addr = serve(app(layer.clone(), Arc::new(Semaphore::new(0)))).await;
    let c = client();
    let res = c
        .request(get_with(addr, "/stream", &[("x-api-key", "a")]))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(layer.limiter().in_flight(&key("a")), 1);
    let got = send(&client(), get_with(addr, "/fast", &[("x-api-key", "a")])).await;
    assert_eq!(
        got.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the stream holds the slot"
    );
    // The client drops the response mid-body and its connection closes.
    drop(res);
    drop(c);
    until("slot released after the client left", || {
        layer.limiter().in_flight(&key("a")) == 0
    })
    .await;
    assert_eq!(
        send(&client(), get_with(addr, "/fast", &[("x-api-key", "a")]))
            .await
            .status,
        StatusCode::OK
    );
}
