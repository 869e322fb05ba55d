//! Waiting for tokens: `acquire(n).await` (feature `tokio`).
#![cfg(all(feature = "tokio", not(loom)))]

use std::time::Duration;

use tollgate::{KeyedLimiter, Limit, TokenBucket};

use std::sync::Arc;
use std::time::Instant;

#[tokio::test]
async fn waits_for_the_refill_and_consumes() {
    // Read before the bucket's epoch: the refill comes 40 ms after the epoch, so at least
    // 40 ms after this.
    let start = Instant::now();
    let b = TokenBucket::with_clock(
        Limit::new(2, 2, Duration::from_millis(40)).unwrap(),
        tollgate::MonotonicClock::new(),
    );
    assert!(b.acquire(2).await.unwrap().is_allowed());
    let d = b.acquire(2).await.unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 0, "the grant consumed the tokens");
    assert!(
        start.elapsed() >= Duration::from_millis(40),
        "{:?}",
        start.elapsed()
    );
    assert!(
        b.acquire(3).await.is_err(),
        "more than the capacity: an error, not a wait"
    );
}

#[tokio::test]
async fn a_dropped_wait_consumes_nothing() {
    let b = Arc::new(TokenBucket::with_clock(
        Limit::new(3, 3, Duration::from_secs(3600)).unwrap(),
        tollgate::MonotonicClock::new(),
    ));
    let _ = b.try_acquire(2).unwrap();
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire(2).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    waiting.abort();
    assert!(waiting.await.is_err(), "aborted");
    assert_eq!(b.snapshot().remaining(), 1);
}

#[tokio::test]
async fn many_waiters_get_one_refill_each() {
    // Read before the limiter's epoch, so token `i` (arriving at epoch + 5 ms * i) is
    // granted at least 5 ms * i after this.
    let start = Instant::now();
    let limiter = Arc::new(
        KeyedLimiter::<u32>::builder(Limit::new(1, 1, Duration::from_millis(5)).unwrap())
            .clock(tollgate::MonotonicClock::new())
            .build(),
    );
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let l = limiter.clone();
            tokio::spawn(async move {
                let d = l.acquire_key(&7, 1).await.unwrap();
                (d.is_allowed(), start.elapsed())
            })
        })
        .collect();
    let mut granted_at = Vec::new();
    for t in tasks {
        let (allowed, at) = t.await.unwrap();
        assert!(allowed, "acquire returns grants only");
        granted_at.push(at);
    }
    granted_at.sort();
    for (i, at) in granted_at.iter().enumerate() {
        assert!(
            *at >= Duration::from_millis(5) * i as u32,
            "grant {i} at {at:?}: before its token"
        );
    }
}

#[tokio::test]
async fn jitter_never_makes_a_wait_early() {
    let start = Instant::now();
    let b = TokenBucket::with_clock(
        Limit::new(1, 1, Duration::from_millis(30)).unwrap(),
        tollgate::MonotonicClock::new(),
    );
    let _ = b.try_acquire(1).unwrap();
    let d = b
        .acquire_with_jitter(1, Duration::from_millis(20))
        .await
        .unwrap();
    assert!(d.is_allowed());
    assert!(
        start.elapsed() >= Duration::from_millis(30),
        "{:?}",
        start.elapsed()
    );
}
