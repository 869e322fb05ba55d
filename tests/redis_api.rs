//! The whole API over Redis against the in-memory limiter on explicit-time traces (contract
//! §2 and §4): snapshots, refunds, charges, reservations and their cancel (an undo), several
//! limits all-or-nothing, tiers, live limit changes, many keys in one round trip; and the
//! HTTP layer's several policies over Redis. Needs `redis-server` (skips without it; CI has it).
#![cfg(all(feature = "redis", not(loom)))]

mod model;
#[path = "support/redis_server.rs"]
mod support;

use std::time::Duration;

use model::observe;
use support::*;
use tollgate::redis::{RedisLimitError, RedisLimiter, UnsupportedLimit};
use tollgate::{Inherit, KeyedLimiter, Limit, ManualClock, MultiBucket, TokenBucket};

/// `n` tokens that come back only in 2038 (one step of 2^30 s from the Unix epoch): for tests
/// on the server's clock that count tokens exactly, no refill can land mid-test.
fn frozen(n: u64) -> Limit {
    Limit::new(n, n, Duration::from_secs(1 << 30)).unwrap()
}

fn limits() -> Vec<Limit> {
    vec![
        Limit::new(10, 2, Duration::from_secs(1)).unwrap(),
        Limit::new(1, 1, Duration::from_millis(7)).unwrap(),
        Limit::greedy(50, 7, Duration::from_millis(13)).unwrap(),
        Limit::per_minute(100).unwrap().burst(20).unwrap(),
        Limit::new(1 << 20, 1 << 10, Duration::from_micros(3)).unwrap(),
    ]
}

/// Microseconds since the Unix epoch, moving forward by 0, a little, a step or a lot.
fn advance(rng: &mut Rng, now_us: &mut u64, limit: &Limit) {
    let step_us = (limit.refill_interval().as_micros() as u64 / limit.refill_amount()).max(1);
    *now_us += match rng.next() % 5 {
        0 => 0,
        1 => rng.next() % 1_000,
        2 => step_us * (rng.next() % 3),
        3 => rng.next() % (step_us * 10 + 1),
        _ => rng.next() % 10_000_000,
    };
}

fn tokens(rng: &mut Rng, limit: &Limit) -> u64 {
    match rng.next() % 4 {
        0 => 0,
        1 => limit.capacity(),
        _ => 1 + rng.next() % limit.capacity().min(5),
    }
}

#[tokio::test]
async fn every_operation_decides_as_the_in_memory_bucket() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut compared = [0usize; 5];
    for (i, limit) in limits().into_iter().enumerate() {
        let redis = connect(&server, limit, "ops:").await;
        for trace in 0..10 {
            let key = format!("limit{i}-trace{trace}");
            let clock = ManualClock::new();
            let bucket = TokenBucket::with_clock(limit, clock.clone());
            let mut now_us: u64 = 1_700_000_000_000_000 + rng.next() % 1_000_000_000;
            // Reservations held: (in memory, over Redis), cancelled later, after other calls.
            let mut held = Vec::new();
            for _ in 0..80 {
                advance(&mut rng, &mut now_us, &limit);
                clock.set(now_us * 1000);
                let n = tokens(&mut rng, &limit);
                let k = key.as_bytes();
                let (op, want, got) = match rng.next() % 6 {
                    0 => (
                        0,
                        bucket.snapshot(),
                        redis.snapshot_at(k, now_us).await.unwrap(),
                    ),
                    1 => (
                        1,
                        bucket.refund(n),
                        redis.refund_at(k, n, now_us).await.unwrap(),
                    ),
                    2 => (
                        2,
                        bucket.charge(n),
                        redis.charge_at(k, n, now_us).await.unwrap(),
                    ),
                    3 => {
                        let mem = bucket.reserve(n);
                        let red = redis.reserve_at(k, n, now_us).await.unwrap();
                        let (want, got) = match (mem, red) {
                            (Ok(m), Ok(r)) => {
                                let pair = (*m.decision(), *r.decision());
                                held.push((m, r));
                                pair
                            }
                            (Err(tollgate::ReserveError::Denied(m)), Err(r)) => (m, r),
                            (m, r) => panic!("reserve differs: {m:?} vs {r:?}"),
                        };
                        (3, want, got)
                    }
                    4 if !held.is_empty() => {
                        let (m, r) = held.remove(rng.next() as usize % held.len());
                        (4, m.cancel(), r.cancel_at(now_us).await.unwrap())
                    }
                    _ => (
                        5,
                        bucket.try_acquire(n).unwrap(),
                        redis.try_acquire_at(k, n, now_us).await.unwrap(),
                    ),
                };
                assert_eq!(
                    observe(&got),
                    observe(&want),
                    "{limit:?} key {key} op {op} n {n} at {now_us} us"
                );
                compared[op.min(4)] += 1;
            }
        }
    }
    eprintln!("snapshot/refund/charge/reserve/cancel compared: {compared:?}");
    assert!(compared.iter().all(|&c| c > 30), "{compared:?}");
}

#[tokio::test]
async fn several_limits_are_all_or_nothing_as_in_memory() {
    let Some(server) = Server::start() else {
        return;
    };
    let sets = [
        (
            Limit::per_second(5).unwrap(),
            vec![Limit::per_minute(12).unwrap()],
        ),
        (
            Limit::new(10, 2, Duration::from_millis(100)).unwrap(),
            vec![
                Limit::greedy(30, 3, Duration::from_secs(1)).unwrap(),
                Limit::new(4, 1, Duration::from_millis(40)).unwrap(),
            ],
        ),
    ];
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut denied_by = [0usize; 3];
    for (s, (first, more)) in sets.into_iter().enumerate() {
        let redis = RedisLimiter::builder(&server.url(), first, "multi:")
            .also(more.clone())
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        for trace in 0..10 {
            let key = format!("set{s}-trace{trace}");
            let clock = ManualClock::new();
            let mem = MultiBucket::with_clock(first, more.clone(), clock.clone());
            let mut now_us: u64 = 1_700_000_000_000_000 + rng.next() % 1_000_000_000;
            for _ in 0..80 {
                now_us += match rng.next() % 3 {
                    0 => 0,
                    1 => rng.next() % 50_000,
                    _ => rng.next() % 2_000_000,
                };
                clock.set(now_us * 1000);
                let n = 1 + rng.next() % 3;
                let want = mem.try_acquire(n).unwrap();
                let got = redis
                    .try_acquire_all_at(key.as_bytes(), n, now_us)
                    .await
                    .unwrap();
                assert_eq!(
                    (observe(&got.decision), got.index),
                    (observe(&want.decision), want.index),
                    "set {s} key {key} n {n} at {now_us} us"
                );
                if !got.is_allowed() {
                    denied_by[got.index] += 1;
                }
            }
        }
    }
    eprintln!("denials by limit: {denied_by:?}");
    assert!(denied_by[0] > 0 && denied_by[1] > 0, "{denied_by:?}");
}

#[tokio::test]
async fn tiers_and_limit_changes_decide_as_the_keyed_limiter() {
    let Some(server) = Server::start() else {
        return;
    };
    let free = Limit::new(10, 2, Duration::from_secs(1)).unwrap();
    let pro = Limit::greedy(40, 8, Duration::from_secs(1)).unwrap();
    // Changes that never raise a capacity above a full bucket's (see the docs of
    // `set_tier_limit`: over Redis a full bucket is no key, and comes back full).
    let changes = [
        (
            0,
            Limit::new(6, 3, Duration::from_millis(500)).unwrap(),
            Inherit::Keep,
        ),
        (
            1,
            Limit::greedy(40, 20, Duration::from_secs(1)).unwrap(),
            Inherit::Keep,
        ),
        (
            0,
            Limit::new(6, 1, Duration::from_millis(300)).unwrap(),
            Inherit::Reset,
        ),
        (1, Limit::per_second(25).unwrap(), Inherit::Keep),
    ];
    let tier_of = |k: &[u8]| usize::from(k.starts_with(b"pro"));
    let redis = RedisLimiter::builder(&server.url(), free, "tiers:")
        .tiers([pro], tier_of)
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let clock = ManualClock::new();
    let mem: KeyedLimiter<String> = KeyedLimiter::builder(free)
        .tiers([pro], move |k: &String| tier_of(k.as_bytes()))
        .clock(clock.clone())
        .build();
    let keys = ["pro-a", "pro-b", "free-a", "free-b", "free-c"];
    let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
    let mut now_us: u64 = 1_700_000_000_000_000;
    let mut compared = 0;
    for round in 0..=changes.len() {
        if round > 0 {
            let (tier, limit, inherit) = changes[round - 1];
            now_us += rng.next() % 100_000;
            clock.set(now_us * 1000);
            mem.set_tier_limit(tier, limit, inherit).unwrap();
            redis
                .set_tier_limit_at(tier, limit, inherit, Some(now_us))
                .unwrap();
        }
        for i in 0..60 {
            // Each key drained first (so a change meets buckets that are not full), then
            // calls a little apart.
            now_us += match rng.next() % 4 {
                0 => 0,
                1 | 2 => rng.next() % 150_000,
                _ => rng.next() % 900_000,
            };
            clock.set(now_us * 1000);
            let key = keys[if i < 10 {
                i / 2
            } else {
                rng.next() as usize % keys.len()
            }];
            let n = if i < 10 { 6 } else { 1 + rng.next() % 4 };
            let want = mem.try_acquire_key(key, n);
            let got = redis.try_acquire_at(key.as_bytes(), n, now_us).await;
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(
                    observe(&g),
                    observe(&w),
                    "round {round} key {key} n {n} at {now_us} us"
                ),
                (Err(_), Err(RedisLimitError::InsufficientCapacity(_))) => {}
                (w, g) => panic!("round {round} key {key} n {n}: {w:?} vs {g:?}"),
            }
            compared += 1;
        }
    }
    eprintln!("tiers and changes: {compared} decisions identical");
    assert_eq!(redis.tier_limit(1), Some(Limit::per_second(25).unwrap()));
    // Proportional cannot be run by the script: refused, nothing changes.
    let refused = redis.set_limit(free, Inherit::Proportional).await;
    assert!(matches!(
        refused,
        Err(RedisLimitError::UnsupportedLimit(
            UnsupportedLimit::ProportionalInherit
        ))
    ));
    assert!(matches!(
        redis.set_tier_limit(7, free, Inherit::Keep).await,
        Err(RedisLimitError::UnknownTier { tier: 7 })
    ));
    assert_eq!(redis.limit(), changes[2].1);
}

#[tokio::test]
async fn many_keys_in_one_round_trip_decide_as_one_by_one() {
    let Some(server) = Server::start() else {
        return;
    };
    let limit = Limit::new(5, 1, Duration::from_millis(100)).unwrap();
    let batch = connect(&server, limit, "many:").await;
    let single = connect(&server, limit, "one:").await;
    let mut rng = Rng(0xFEED_FACE_CAFE_BEEF);
    let mut now_us: u64 = 1_700_000_000_000_000;
    for _ in 0..40 {
        now_us += rng.next() % 300_000;
        let calls: Vec<(String, u64)> = (0..20)
            .map(|_| (format!("k{}", rng.next() % 8), rng.next() % 7))
            .collect();
        let got = batch.try_acquire_many_at(&calls, now_us).await;
        assert_eq!(got.len(), calls.len());
        for ((key, n), got) in calls.iter().zip(got) {
            let want = single.try_acquire_at(key.as_bytes(), *n, now_us).await;
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(observe(&g), observe(&w), "{key} n {n}"),
                (Err(RedisLimitError::InsufficientCapacity(_)), Err(_)) => assert!(*n > 5),
                (g, w) => panic!("{key} n {n}: {g:?} vs {w:?}"),
            }
        }
    }
}

/// Several policies in one HTTP layer over Redis: the layer builds (Redis can undo), a refused
/// request takes nothing from the other policy, and charges reach Redis.
#[cfg(feature = "http")]
#[tokio::test]
async fn an_http_layer_of_two_redis_policies_is_all_or_nothing() {
    use tollgate::http::{KeyExtractor, Policy, RateLimitLayer};
    use tower::{Layer, Service, ServiceExt};
    let Some(server) = Server::start() else {
        return;
    };
    let per_user = connect(&server, frozen(3), "user:").await;
    let global = connect(&server, frozen(100), "global:").await;
    let layer = RateLimitLayer::from_policy(Policy::new("user", per_user.clone()).key(
        KeyExtractor::header(http::HeaderName::from_static("x-user")),
    ))
    .policy(Policy::new("global", global.clone()).key(KeyExtractor::global()))
    .build()
    .expect("two redis policies build: redis can undo");
    type Body = http_body_util::Full<bytes::Bytes>;
    let mut svc = layer.layer(tower::service_fn(|_req: http::Request<Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::default()))
    }));
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let req = http::Request::builder()
            .header("x-user", "ann")
            .body(Body::default())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
    // Seven refused requests took nothing from the global policy: 100 - 3 left.
    let left = global.snapshot(b"g").await.unwrap().remaining();
    assert_eq!(left, 97, "refused requests drained the global policy");
}

/// Charging by response over Redis: successes given back (an undo), failures charged extra;
/// both are sent after the response, so the test waits for them to land.
#[cfg(feature = "http")]
#[tokio::test]
async fn charging_by_response_reaches_redis() {
    use tollgate::http::{Charge, KeyExtractor, RateLimitLayer};
    use tower::{Layer, Service, ServiceExt};
    let Some(server) = Server::start() else {
        return;
    };
    let logins = connect(&server, frozen(10), "login:").await;
    let layer = RateLimitLayer::builder(logins.clone())
        .key(KeyExtractor::header(http::HeaderName::from_static(
            "x-user",
        )))
        .charge_by_response(|res| {
            if res.status.is_success() {
                Charge::Undo
            } else {
                Charge::Extra(2)
            }
        })
        .build()
        .expect("charging over redis builds: redis can undo");
    type Body = http_body_util::Full<bytes::Bytes>;
    let mut svc = layer.layer(tower::service_fn(|req: http::Request<Body>| async move {
        let mut res = http::Response::new(Body::default());
        if req.uri().path() == "/bad" {
            *res.status_mut() = http::StatusCode::UNAUTHORIZED;
        }
        Ok::<_, std::convert::Infallible>(res)
    }));
    for (path, status) in [("/ok", 200), ("/ok", 200), ("/bad", 401)] {
        let req = http::Request::get(path)
            .header("x-user", "ann")
            .body(Body::default())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status().as_u16(), status);
    }
    // Two successes given back, one failure: 1 + 2 extra = 3 tokens gone.
    let want = 10 - 3;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = logins.snapshot(b"h:ann").await.unwrap().remaining();
        if left == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} left, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `Reset` change resets a bucket once: a process still on the earlier limit that writes the
/// bucket after the change does not earn it another reset. Setting the same limit again with
/// `Reset` is a change too. An undo across a change gives nothing back.
#[tokio::test]
async fn a_reset_applies_once_and_an_undo_across_a_change_gives_nothing() {
    let Some(server) = Server::start() else {
        return;
    };
    let limit = Limit::per_hour(10).unwrap();
    let old = connect(&server, limit, "reset:").await;
    let new = connect(&server, limit, "reset:").await;
    let t0: u64 = 1_700_000_000_000_000;
    let k = b"ann";
    assert_eq!(old.try_acquire_at(k, 8, t0).await.unwrap().remaining(), 2);
    new.set_tier_limit_at(0, limit, Inherit::Reset, Some(t0 + 1_000))
        .unwrap();
    // The bucket was written before the change: reset.
    assert_eq!(
        new.try_acquire_at(k, 1, t0 + 2_000)
            .await
            .unwrap()
            .remaining(),
        9
    );
    // A process on the earlier limit writes it after the change...
    assert_eq!(
        old.try_acquire_at(k, 9, t0 + 3_000)
            .await
            .unwrap()
            .remaining(),
        0
    );
    // ... and it keeps its tokens: no second reset.
    assert_eq!(new.snapshot_at(k, t0 + 4_000).await.unwrap().remaining(), 0);

    // A reset needs the time of its change.
    assert!(matches!(
        new.set_tier_limit_at(0, limit, Inherit::Reset, None),
        Err(RedisLimitError::ResetWithoutTime)
    ));

    // An undo across a change: the take's marks were another limit's; nothing comes back.
    // (The same steps with a larger burst: the undo formula alone would give all 5 back.)
    let b = b"bob";
    let r = new.reserve_at(b, 5, t0).await.unwrap().unwrap();
    let wider = limit.burst(20).unwrap();
    new.set_tier_limit_at(0, wider, Inherit::Keep, Some(t0 + 1))
        .unwrap();
    assert_eq!(r.cancel_at(t0 + 2).await.unwrap().remaining(), 5);
}
