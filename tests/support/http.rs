//! What the HTTP tests share: a real client, a server on a free loopback port, an API behind
//! a layer.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tollgate::http::{Key, RateLimitLayer};
use tollgate::{KeyedLimiter, Limit, ManualClock};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Serves `router` on a free loopback port (with connect info for peer-IP keys: axum's
/// `ConnectInfo` with the `axum` feature; without it, copied into `PeerAddr` by a middleware,
/// as the `PeerAddr` docs show).
pub async fn serve(router: Router) -> SocketAddr {
    #[cfg(not(feature = "axum"))]
    let router = router.layer(axum::middleware::map_request(
        |axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<SocketAddr>,
         mut req: axum::extract::Request| async move {
            req.extensions_mut()
                .insert(tollgate::http::PeerAddr(remote));
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

pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub async fn send(c: &HttpClient, req: Request<Full<Bytes>>) -> Got {
    let res = c.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::default()).unwrap()
}

pub fn api<B: tollgate::http::Backend>(layer: RateLimitLayer<B>) -> Router {
    Router::new()
        .route("/api", get(|| async { "hello" }))
        .route("/upload", post(|| async { "stored" }))
        .route("/health", get(|| async { "ok" }))
        .layer(layer)
}

/// Capacity 3, 1 token every second, on a manual clock.
pub fn limiter(clock: &ManualClock) -> KeyedLimiter<Key> {
    KeyedLimiter::builder(Limit::new(3, 1, Duration::from_secs(1)).unwrap())
        .clock(clock.clone())
        .build()
}
