//! Labelled metrics of the HTTP layer, scraped as Prometheus text: one counter per policy, tier,
//! route and outcome, over real sockets. (One test: the recorder is global to this binary.)
#![cfg(all(feature = "http", feature = "metrics", not(loom)))]

#[path = "support/http.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use metrics_exporter_prometheus::PrometheusBuilder;
use support::*;
use tollgate::http::{Key, KeyExtractor, Policy, RateLimitLayer};
use tollgate::{KeyedLimiter, Limit, ManualClock};

/// The value of the counter line with exactly these labels (in Prometheus' order), or 0.
fn value(text: &str, labels: &str) -> u64 {
    let line = format!("tollgate_http_decisions_total{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn decisions_are_counted_by_policy_tier_route_and_outcome() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    let clock = ManualClock::new();
    // Per key: capacity 10, tier 1 (keys starting with "pro") capacity 100.
    let per_key: KeyedLimiter<Key> =
        KeyedLimiter::builder(Limit::new(10, 1, Duration::from_secs(60)).unwrap())
            .tiers(
                [Limit::new(100, 1, Duration::from_secs(60)).unwrap()],
                |k: &Key| {
                    usize::from(matches!(k, Key::Header(v) if v.as_bytes().starts_with(b"pro")))
                },
            )
            .clock(clock.clone())
            .build();
    // Global: capacity 12, in shadow mode.
    let global: KeyedLimiter<Key> =
        KeyedLimiter::builder(Limit::new(12, 1, Duration::from_secs(60)).unwrap())
            .clock(clock.clone())
            .build();
    let layer = RateLimitLayer::builder(Arc::new(per_key))
        .key(KeyExtractor::api_key())
        .policy_name("key")
        .policy(Policy::new("global", Arc::new(global)).shadow(true))
        .route_label(|req| Some(req.uri.path().to_string()))
        .build()
        .unwrap();
    let addr = serve(api(layer)).await;
    let c = client();
    // 11 for "free": 8 allowed, 2 near the limit (1 and 0 left of 10: less than a fifth),
    // 1 denied.
    for _ in 0..11 {
        let _ = send(&c, get_with(addr, "/api", &[("x-api-key", "free")])).await;
    }
    // 3 for "pro-1": allowed in tier 1. The global policy (12) ran dry on the 13th request
    // the per-key policy granted: in shadow mode, let through and counted.
    for _ in 0..3 {
        assert_eq!(
            send(&c, get_with(addr, "/api", &[("x-api-key", "pro-1")]))
                .await
                .status,
            StatusCode::OK
        );
    }
    // No key: refused with 401.
    assert_eq!(
        send(&c, get_with(addr, "/api", &[])).await.status,
        StatusCode::UNAUTHORIZED
    );
    let text = handle.render();
    let key = |tier: &str, outcome: &str| {
        value(
            &text,
            &format!("policy=\"key\",tier=\"{tier}\",route=\"/api\",outcome=\"{outcome}\""),
        )
    };
    assert_eq!(key("0", "allowed"), 8, "{text}");
    assert_eq!(key("0", "near_limit"), 2, "{text}");
    assert_eq!(key("0", "denied"), 1, "{text}");
    assert_eq!(key("1", "allowed"), 3, "{text}");
    assert_eq!(
        value(
            &text,
            "policy=\"key\",tier=\"\",route=\"/api\",outcome=\"no_key\""
        ),
        1,
        "{text}"
    );
    // The global policy decided the 13 requests the per-key policy granted: 12 granted (2, 1
    // and 0 left are less than a fifth of 12), the 13th refused in shadow mode.
    let global = |outcome: &str| {
        value(
            &text,
            &format!("policy=\"global\",tier=\"0\",route=\"/api\",outcome=\"{outcome}\""),
        )
    };
    assert_eq!(global("allowed") + global("near_limit"), 12, "{text}");
    assert_eq!(global("near_limit"), 3, "{text}");
    assert_eq!(global("shadow_denied"), 1, "{text}");
    assert!(
        text.contains("tollgate_http_would_deny_total{policy=\"global\"} 1"),
        "{text}"
    );
}
