//! The demo API with labelled metrics served as Prometheus text on `/metrics`: per-IP and
//! per-API-key policies in one layer, decisions counted by policy, tier, route and outcome.
//!
//! ```sh
//! cargo run --release --features metrics,axum --example prometheus              # 127.0.0.1:9100
//! cargo run --release --features metrics,axum --example prometheus -- --check   # self-test
//! ```
//!
//! Try it: `curl -H 'x-api-key: alice' http://127.0.0.1:9100/api/items/7` a few times, then
//! `curl http://127.0.0.1:9100/metrics`. Keys starting with `pro-` get the larger tier.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tollgate::http::{Key, KeyExtractor, Policy, RateLimitLayer};
use tollgate::{KeyedLimiter, Limit};

fn app(metrics: PrometheusHandle) -> Router {
    let limit = |capacity, per_secs| {
        Limit::new(capacity, 1, Duration::from_secs(per_secs)).expect("a valid limit")
    };
    // Per IP: 30 a minute. Per API key: 10 a minute, `pro-` keys 100.
    let per_ip: KeyedLimiter<Key> = KeyedLimiter::new(Limit::per_minute(30).expect("valid"));
    let per_key: KeyedLimiter<Key> = KeyedLimiter::builder(limit(10, 6))
        .tiers([Limit::per_minute(100).expect("valid")], |k: &Key| {
            usize::from(matches!(k, Key::Header(v) if v.as_bytes().starts_with(b"pro-")))
        })
        .build();
    let layer = RateLimitLayer::builder(Arc::new(per_ip))
        .key(KeyExtractor::peer_ip())
        .policy_name("ip")
        .policy(Policy::new("key", Arc::new(per_key)).key(KeyExtractor::api_key()))
        .build()
        .expect("valid policies");
    let api = Router::new()
        .route("/api/hello", get(|| async { "{\"hello\":\"world\"}\n" }))
        .route(
            "/api/items/{id}",
            get(|Path(id): Path<u64>| async move { format!("{{\"item\":{id}}}\n") }),
        )
        .layer(layer);
    Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .merge(api)
}

#[tokio::main]
async fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        eprintln!("a metrics recorder is already installed");
        return ExitCode::FAILURE;
    }
    let port = if check { 0 } else { 9100 };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().expect("a bound socket");
    let server = axum::serve(
        listener,
        app(handle).into_make_service_with_connect_info::<SocketAddr>(),
    );
    if !check {
        println!("serving on http://{addr}: /api/hello, /api/items/{{id}}, /metrics");
        return match server.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("server error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tokio::spawn(async move { server.await });
    match self_check(addr).await {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("check failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends a burst, scrapes `/metrics`, and checks the counters it must show.
async fn self_check(addr: SocketAddr) -> Result<String, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let get = |path: String, key: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut req = http::Request::get(format!("http://{addr}{path}"));
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            let res = client
                .request(req.body(Empty::new()).map_err(|e| e.to_string())?)
                .await
                .map_err(|e| e.to_string())?;
            let status = res.status();
            let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        }
    };
    for i in 0..12 {
        get(format!("/api/items/{i}"), Some("alice")).await?;
    }
    for _ in 0..3 {
        get("/api/hello".into(), Some("pro-bob")).await?;
    }
    get("/api/hello".into(), None).await?;
    let (status, body) = get("/metrics".into(), None).await?;
    let text = String::from_utf8(body.to_vec()).map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("/metrics answered {status}"));
    }
    let route = "route=\"/api/items/{id}\"";
    for want in [
        format!("tollgate_http_decisions_total{{policy=\"key\",tier=\"0\",{route},outcome=\"allowed\"}} 8"),
        format!("tollgate_http_decisions_total{{policy=\"key\",tier=\"0\",{route},outcome=\"near_limit\"}} 2"),
        format!("tollgate_http_decisions_total{{policy=\"key\",tier=\"0\",{route},outcome=\"denied\"}} 2"),
        "tollgate_http_decisions_total{policy=\"key\",tier=\"1\",route=\"/api/hello\",outcome=\"allowed\"} 3".to_string(),
        "tollgate_http_decisions_total{policy=\"key\",tier=\"\",route=\"/api/hello\",outcome=\"no_key\"} 1".to_string(),
        // The 2 requests the key policy refused took nothing from the ip policy: not counted.
        format!("tollgate_http_decisions_total{{policy=\"ip\",tier=\"0\",{route},outcome=\"allowed\"}} 10"),
    ] {
        if !text.lines().any(|l| l == want) {
            return Err(format!("no line {want:?} in:\n{text}"));
        }
    }
    Ok(text)
}
