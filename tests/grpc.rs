//! gRPC calls through the layer, with a real tonic client and server on loopback: a denial is
//! `RESOURCE_EXHAUSTED` (grpc-status 8) with retry metadata, not an HTTP 429 (which a gRPC
//! client sees as a transport failure).
#![cfg(all(feature = "http", not(loom)))]

use std::time::Duration;

use tollgate::http::{Key, KeyExtractor, RateLimitLayer};
use tollgate::{KeyedLimiter, Limit, ManualClock};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Serves the health service behind `layer` on a free loopback port; a client for it.
async fn serve(layer: RateLimitLayer<KeyedLimiter<Key>>) -> HealthClient<Channel> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(async move {
        // The reporter lives as long as the server.
        let _reporter = reporter;
        Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

fn check(client_id: &str) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.metadata_mut()
        .insert("x-client", client_id.parse().unwrap());
    req
}

#[tokio::test]
async fn a_denied_grpc_call_is_resource_exhausted_with_retry_metadata() {
    let clock = ManualClock::new();
    let limiter = KeyedLimiter::builder(Limit::new(2, 1, Duration::from_secs(5)).unwrap())
        .clock(clock.clone())
        .build();
    let layer = RateLimitLayer::builder(limiter)
        .key(KeyExtractor::header(http::HeaderName::from_static(
            "x-client",
        )))
        .policy_name("client")
        .build()
        .unwrap();
    let mut client = serve(layer).await;
    for left in [1, 0] {
        let res = client.check(check("a")).await.unwrap();
        assert_eq!(res.get_ref().status, 1, "SERVING");
        assert_eq!(
            res.metadata().get("ratelimit").unwrap(),
            &format!("\"client\";r={left};t=5")
        );
    }
    let status = client.check(check("a")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "rate limit exceeded");
    let meta = status.metadata();
    assert_eq!(meta.get("retry-after").unwrap(), "5");
    assert_eq!(meta.get("grpc-retry-pushback-ms").unwrap(), "5000");
    assert_eq!(meta.get("ratelimit-policy").unwrap(), "\"client\";q=2;w=10");
    // Another client is not limited; a missing key is UNAUTHENTICATED.
    assert!(client.check(check("b")).await.is_ok());
    let status = client
        .check(tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // After the refill, the call passes again.
    clock.advance(Duration::from_secs(5));
    assert!(client.check(check("a")).await.is_ok());
}

/// With gRPC answers off, the refusal is the HTTP 429, which tonic reports as a transport-level
/// failure: what the gRPC mode is for.
#[tokio::test]
async fn without_grpc_answers_the_client_sees_an_http_429() {
    let limiter = KeyedLimiter::new(Limit::per_hour(1).unwrap());
    let layer = RateLimitLayer::builder(limiter)
        .grpc(false)
        .build()
        .unwrap();
    let mut client = serve(layer).await;
    assert!(client.check(check("a")).await.is_ok());
    let status = client.check(check("a")).await.unwrap_err();
    assert_ne!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("429"), "{status:?}");
}
