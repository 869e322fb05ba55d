//! The fuzz targets' bodies: plain functions of the input bytes. `fuzz/` runs them under
//! libFuzzer; `tests/fuzz_corpus.rs` runs them over the checked-in corpus in `cargo test`.
//! Each panics on a violated property (a decision that differs from the model, a header that
//! does not parse), so any crash is a finding.

#![allow(dead_code)]

use std::time::Duration;

use arbitrary::{Result, Unstructured};

use crate::model::keyed::{check_keyed, KOp};
use crate::model::{check_trace, Op};

/// An arbitrary limit (both modes, any sizes, biased to the edges) and trace, through the
/// bucket and the model: every decision equal. Returns the number of decisions compared (0
/// when the input runs out before a trace, or the limit is rejected).
pub fn bucket_vs_model(data: &[u8]) -> usize {
    try_bucket_vs_model(&mut Unstructured::new(data)).unwrap_or(0)
}

fn edgy(u: &mut Unstructured<'_>, max: u64) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => 1,
        1 => max,
        2 => u.int_in_range(1..=16.min(max))?,
        3 => u.int_in_range(1..=1_000.min(max))?,
        _ => u.int_in_range(1..=max)?,
    })
}

fn try_bucket_vs_model(u: &mut Unstructured<'_>) -> Result<usize> {
    let cap = edgy(u, tollgate::MAX_CAPACITY)?;
    let amount = edgy(u, cap)?;
    let interval = edgy(u, tollgate::MAX_INTERVAL.as_nanos() as u64)?;
    let greedy = u.arbitrary()?;
    let step = if greedy {
        (interval / amount).max(1)
    } else {
        interval
    };
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < 512 {
        let x: u64 = u.arbitrary()?;
        ops.push(match u.int_in_range(0u8..=10)? {
            9 => Op::Reserve(x % (cap + 2)),
            10 => Op::Cancel,
            0 => Op::Advance(x % 1_000),
            1 => Op::Advance(step.saturating_mul(x % 8)),
            2 => Op::Advance(x),
            3 => Op::Rewind(x % step.saturating_mul(4).max(1)),
            4 => Op::Rewind(x),
            5 => Op::Acquire(x % (cap + 3)),
            6 => Op::Acquire(0),
            7 => Op::Acquire(1),
            _ => Op::SetLimit {
                cap: edgy(u, tollgate::MAX_CAPACITY)?,
                amount: x % cap + 1,
                interval_ns: edgy(u, tollgate::MAX_INTERVAL.as_nanos() as u64)?,
                greedy: u.arbitrary()?,
                inherit: u.arbitrary()?,
            },
        });
    }
    Ok(check_trace(cap, amount, interval, greedy, &ops))
}

/// Multi-key traces with evictions, limit changes and a tiny `idle_ttl`: identical to models
/// that never evict. Returns the number of decisions compared.
pub fn keyed_vs_model(data: &[u8]) -> usize {
    try_keyed_vs_model(&mut Unstructured::new(data)).unwrap_or(0)
}

fn try_keyed_vs_model(u: &mut Unstructured<'_>) -> Result<usize> {
    let cap = u.int_in_range(1..=8u64)?;
    let amount = u.int_in_range(1..=cap)?;
    let step_ns = u.int_in_range(1..=1_000_000u64)?;
    let greedy = u.arbitrary()?;
    let ttl_steps = u.int_in_range(0..=4u64)?;
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < 512 {
        ops.push(match u.int_in_range(0u8..=7)? {
            7 => KOp::Stale(
                u.int_in_range(0..=5)?,
                u.int_in_range(0..=cap + 1)?,
                u.arbitrary()?,
            ),
            0 => KOp::Advance(u.int_in_range(0..=3)?),
            1 => KOp::Advance(u.arbitrary()?),
            2 => KOp::Rewind(u.arbitrary()?),
            3 => KOp::Evict,
            4 => KOp::SetLimit {
                tier: u.arbitrary()?,
                cap: u.arbitrary()?,
                amount: u.arbitrary()?,
                stretch: u.arbitrary()?,
                greedy: u.arbitrary()?,
                inherit: u.arbitrary()?,
            },
            _ => KOp::Acquire(u.int_in_range(0..=5)?, u.int_in_range(0..=cap + 1)?),
        });
    }
    Ok(check_keyed(cap, amount, step_ns, greedy, ttl_steps, &ops).0)
}

/// Arbitrary numbers into every constructor: `Ok` or a typed error, never a panic or an
/// overflow; what is accepted keeps the documented ranges and runs.
pub fn limit_config(data: &[u8]) {
    // The same bytes as text: the parser never panics, and what it accepts is a valid limit.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(limit) = text.parse::<tollgate::Limit>() {
            assert!(limit.capacity() >= 1 && limit.refill_amount() <= limit.capacity());
        }
    }
    let _ = try_limit_config(&mut Unstructured::new(data));
}

fn try_limit_config(u: &mut Unstructured<'_>) -> Result<()> {
    use tollgate::{Limit, ManualClock, TokenBucket};
    let n: u64 = u.arbitrary()?;
    let c: u64 = u.arbitrary()?;
    let r: u64 = u.arbitrary()?;
    let interval = Duration::new(u.arbitrary()?, u.int_in_range(0..=999_999_999)?);
    let burst: u64 = u.arbitrary()?;
    let small = |x: u64| x % 5_000;
    for limit in [
        Limit::new(c, r, interval),
        Limit::greedy(c, r, interval),
        Limit::new(small(c), small(r), interval),
        Limit::greedy(small(c), small(r), Duration::from_nanos(small(n))),
        Limit::per_second(n),
        Limit::per_minute(small(n)),
        Limit::per_hour(n),
        Limit::per_second(small(n)).and_then(|l| l.burst(burst)),
        Limit::per_minute(small(n)).and_then(|l| l.burst(small(burst))),
        Limit::new(small(c), small(r), interval).and_then(|l| l.burst(small(burst))),
    ] {
        match limit {
            Ok(l) => {
                assert!((1..=tollgate::MAX_CAPACITY).contains(&l.capacity()));
                assert!((1..=l.capacity()).contains(&l.refill_amount()));
                assert!(l.refill_interval() <= tollgate::MAX_INTERVAL);
                assert!(l.horizon() >= tollgate::MIN_HORIZON);
                let _ = l.time_to_fill();
                let clock = ManualClock::new();
                let bucket = TokenBucket::with_clock(l, clock.clone());
                for k in 0..4 {
                    clock.advance(interval / 3);
                    let want = (n >> (k * 16)) % (l.capacity() + 2);
                    if let Ok(d) = bucket.try_acquire(want) {
                        let _ = (d.retry_after(), d.reset_after(), d.next_refill_after());
                    }
                }
            }
            Err(e) => {
                let _ = (e.field(), e.to_string());
            }
        }
    }
    Ok(())
}

/// Arbitrary requests (header bytes, peer addresses, costs) through the layer with every key
/// extractor: never a panic, and every rendered `RateLimit` / `RateLimit-Policy` value parses
/// as a Structured Fields list.
#[cfg(feature = "http")]
pub fn http_input(data: &[u8]) {
    let _ = try_http_input(&mut Unstructured::new(data));
}

#[cfg(feature = "http")]
fn try_http_input(u: &mut Unstructured<'_>) -> Result<()> {
    use std::future::Future as _;
    use std::net::{IpAddr, SocketAddr};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use http::header::{HeaderName, HeaderValue};
    use tollgate::http::{
        ForwardedHeader, HeaderStyle, Key, KeyExtractor, PeerAddr, RateLimitLayer, TrustedProxies,
    };
    use tollgate::{KeyedLimiter, Limit, ManualClock};
    use tower::{Layer, Service, ServiceExt};

    let names = [
        "x-forwarded-for",
        "forwarded",
        "x-api-key",
        "authorization",
        "x-user",
    ];
    let mut req = http::Request::new(());
    for _ in 0..u.int_in_range(0..=6)? {
        let name = HeaderName::from_static(names[u.int_in_range(0..=names.len() - 1)?]);
        let bytes: &[u8] = u.arbitrary()?;
        if let Ok(value) = HeaderValue::from_bytes(bytes) {
            req.headers_mut().append(name, value);
        }
    }
    if u.arbitrary()? {
        let ip: IpAddr = if u.arbitrary()? {
            IpAddr::from(u.arbitrary::<[u8; 4]>()?)
        } else {
            IpAddr::from(u.arbitrary::<[u8; 16]>()?)
        };
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::new(ip, u.arbitrary()?)));
    }
    let trusted =
        TrustedProxies::from_cidrs(["10.0.0.0/8", "127.0.0.1", "fd00::/8"]).expect("valid CIDRs");
    let extractors = [
        KeyExtractor::global(),
        KeyExtractor::peer_ip(),
        KeyExtractor::peer_ip().ipv6_prefix(u.arbitrary()?),
        KeyExtractor::client_ip(trusted.clone(), ForwardedHeader::XForwardedFor),
        KeyExtractor::client_ip(trusted, ForwardedHeader::Forwarded).ipv6_prefix(128),
        KeyExtractor::api_key(),
        KeyExtractor::bearer(),
        KeyExtractor::header(HeaderName::from_static("x-user")),
    ];
    let extractor = extractors[u.int_in_range(0..=extractors.len() - 1)?].clone();
    let cap = u.int_in_range(1..=20u64)?;
    let limit = Limit::new(
        cap,
        u.int_in_range(1..=cap)?,
        Duration::from_millis(u.int_in_range(1..=5_000)?),
    )
    .expect("valid by construction");
    let name: String = u.arbitrary()?;
    let style = [
        HeaderStyle::Ietf,
        HeaderStyle::IetfAndLegacy,
        HeaderStyle::None,
    ][u.int_in_range(0..=2)?];
    let cost = u.int_in_range(0..=cap + 2)?;
    let limiter: KeyedLimiter<Key> = KeyedLimiter::builder(limit)
        .clock(ManualClock::new())
        .build();
    let Ok(layer) = RateLimitLayer::builder(limiter)
        .key(extractor)
        .headers(style)
        .policy_name(name)
        .cost(move |_| cost)
        .build()
    else {
        return Ok(());
    };
    let inner = tower::service_fn(
        |_req: http::Request<http_body_util::Empty<bytes::Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                bytes::Bytes,
            >::new()))
        },
    );
    let mut svc = layer.layer(inner);
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    for _ in 0..u.int_in_range(1..=4)? {
        let (parts, ()) = req.clone().into_parts();
        let request = http::Request::from_parts(parts, http_body_util::Empty::new());
        let Poll::Ready(Ok(svc)) = pin!(svc.ready()).poll(&mut cx) else {
            panic!("the service is always ready");
        };
        let Poll::Ready(Ok(response)) = pin!(svc.call(request)).poll(&mut cx) else {
            panic!("the in-memory backend answers at once");
        };
        for header in ["ratelimit", "ratelimit-policy"] {
            if let Some(value) = response.headers().get(header) {
                let list = sfv::Parser::parse_list(value.as_bytes());
                assert!(list.is_ok(), "{header}: {value:?} does not parse: {list:?}");
            }
        }
        if response.status() == http::StatusCode::TOO_MANY_REQUESTS {
            // A 429 that waiting cures says how long (at least 1 s); one for a cost above the
            // capacity, which no wait cures, does not.
            match response.headers().get("retry-after") {
                Some(retry) => {
                    assert!(cost <= cap, "Retry-After on a request that can never pass");
                    assert_ne!(retry.to_str().unwrap(), "0");
                }
                None => assert!(cost > cap, "a 429 without Retry-After"),
            }
        }
    }
    Ok(())
}
