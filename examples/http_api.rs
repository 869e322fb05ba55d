//! An axum API with per-API-key limits: capacity 10, 2 tokens back every second.
//!
//! ```sh
//! cargo run --release --example http_api                  # serve on 127.0.0.1:8080
//! cargo run --release --example http_api -- --port 3000   # another port
//! cargo run --release --example http_api -- --demo        # serve on a free port, send a burst
//! ```
//!
//! Try it: `curl -i -H 'x-api-key: alice' http://127.0.0.1:8080/api/hello`. `/health` is exempt.
//! A request without `x-api-key` gets `401`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::http::{Key, KeyExtractor, RateLimitLayer};
use tollgate::{KeyedLimiter, Limit};

fn app() -> Router {
    let limit = Limit::new(10, 2, Duration::from_secs(1)).expect("a valid limit");
    let limiter: KeyedLimiter<Key> = KeyedLimiter::new(limit);
    let layer = RateLimitLayer::builder(limiter)
        .key(KeyExtractor::api_key())
        .exempt(|req| req.uri.path() == "/health")
        .build()
        .expect("a valid policy name");
    Router::new()
        .route("/api/hello", get(|| async { "{\"hello\":\"world\"}\n" }))
        .route("/health", get(|| async { "ok\n" }))
        .layer(layer)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let demo = args.iter().any(|a| a == "--demo");
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(i) => match args.get(i + 1).and_then(|p| p.parse().ok()) {
            Some(p) => p,
            None => {
                eprintln!("--port needs a number (0..=65535)");
                return ExitCode::FAILURE;
            }
        },
        None if demo => 0,
        None => 8080,
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound socket has an address");
    let server = tokio::spawn(async move { axum::serve(listener, app()).await });
    if !demo {
        println!("serving on http://{addr} (limit per x-api-key: capacity 10, 2 per second)");
        println!("try: curl -i -H 'x-api-key: alice' http://{addr}/api/hello");
        return match server.await {
            Ok(Ok(())) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        };
    }
    run_demo(addr).await
}

struct Row {
    status: u16,
    ratelimit: String,
    policy: String,
    retry_after: String,
}

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>,
    addr: SocketAddr,
    key: &str,
) -> Result<Row, String> {
    let req = http::Request::get(format!("http://{addr}/api/hello"))
        .header("x-api-key", key)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let row = Row {
        status: res.status().as_u16(),
        ratelimit: header("ratelimit"),
        policy: header("ratelimit-policy"),
        retry_after: header("retry-after"),
    };
    res.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(row)
}

fn print_row(i: usize, row: &Row) {
    println!(
        "{i:>3}  {:>6}  {:<28} {:<24} {:>11}",
        row.status, row.ratelimit, row.policy, row.retry_after
    );
}

async fn run_demo(addr: SocketAddr) -> ExitCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    println!("server on http://{addr}; limit per x-api-key: capacity 10, 2 tokens every second\n");
    println!("a burst of 15 requests with x-api-key: demo");
    println!(
        "{:>3}  {:>6}  {:<28} {:<24} {:>11}",
        "#", "status", "RateLimit", "RateLimit-Policy", "Retry-After"
    );
    let (mut ok, mut limited, mut wait) = (0, 0, 0u64);
    for i in 1..=15 {
        let row = match send(&client, addr, "demo").await {
            Ok(row) => row,
            Err(e) => {
                eprintln!("request {i} failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        match row.status {
            200 => ok += 1,
            429 => limited += 1,
            _ => {}
        }
        wait = wait.max(row.retry_after.parse().unwrap_or(0));
        print_row(i, &row);
    }
    println!("\n{ok} x 200, {limited} x 429; waiting {wait} s (Retry-After) for the refill...\n");
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(5)).await;
    let mut after = 0;
    for i in 16..=18 {
        match send(&client, addr, "demo").await {
            Ok(row) => {
                after += usize::from(row.status == 200);
                print_row(i, &row);
            }
            Err(e) => {
                eprintln!("request {i} failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let other = send(&client, addr, "another-key").await;
    if let Ok(row) = &other {
        println!("\nanother key is unaffected:");
        print_row(19, row);
    }
    let health = client
        .get(
            format!("http://{addr}/health")
                .parse()
                .expect("a valid uri"),
        )
        .await;
    let health_ok =
        matches!(&health, Ok(r) if r.status() == 200 && r.headers().get("ratelimit").is_none());
    println!(
        "/health (exempt): {}",
        if health_ok {
            "200, no rate-limit headers"
        } else {
            "unexpected"
        }
    );
    let expected = ok == 10
        && limited == 5
        && after == 2
        && matches!(other, Ok(Row { status: 200, .. }))
        && health_ok;
    if expected {
        println!("\nas expected: 10 allowed, 5 limited, 2 more after the refill");
        ExitCode::SUCCESS
    } else {
        eprintln!("\nunexpected outcome");
        ExitCode::FAILURE
    }
}
