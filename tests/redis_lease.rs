//! Leasing (contract §4) against a real `redis-server`: four OS processes leasing one key
//! never grant more than the shared bucket gave, and fall short of an exact limiter by no more
//! than the documented bound; a quiet process holds little; unspent tokens come back. Needs
//! `redis-server` (skips without it; CI has it).
#![cfg(all(feature = "redis", not(loom)))]

#[path = "support/redis_server.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tollgate::redis::{LeaseConfig, RedisLimiter};
use tollgate::Limit;

/// A million tokens of burst (never reached: the test starts the bucket empty, and it would
/// take 50 s to fill), 20 back every millisecond.
fn limit() -> Limit {
    Limit::new(1_000_000, 20, Duration::from_millis(1)).unwrap()
}

const PROCESSES: u64 = 4;
const MAX_LEASE: u64 = 200;
const KEY: &[u8] = b"hot";

async fn hash_field(server: &Server, field: &str) -> u64 {
    let mut con = raw(server).await;
    let v: Option<u64> = redis::cmd("HGET")
        .arg("lease:{hot}")
        .arg(field)
        .query_async(&mut con)
        .await
        .unwrap();
    v.expect("the bucket is not full (a full one is no key)")
}

/// Four processes, each with eight tasks asking for a token at a time for two seconds. The
/// bucket starts empty at mark `m0`; it never fills (it would take 5 s), so the shared bucket
/// gave exactly `q * (steps since m0)` minus what it still holds.
#[tokio::test]
async fn four_processes_never_over_admit_and_under_admit_within_the_bound() {
    let Some(server) = Server::start() else {
        return;
    };
    let redis = connect(&server, limit(), "lease:").await;
    // Empty the bucket: its mark is then the step of this call.
    let d = redis.charge(KEY, 1_000_000).await.unwrap();
    assert_eq!(d.remaining(), 0);
    let m0 = hash_field(&server, "m").await;

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "lease_worker", "--nocapture", "--test-threads=1"])
                .env("TOLLGATE_LEASE_WORKER", server.url())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut granted = 0;
    let mut first_stop = u64::MAX;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> u64 {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("worker said: {text}"))
                .parse()
                .unwrap()
        };
        granted += field("granted=");
        first_stop = first_stop.min(field("stop_us="));
        eprintln!("{}", text.lines().find(|l| l.contains("granted=")).unwrap());
    }
    // Every lease returned; the bucket now, at the step of one more call.
    let _ = redis.snapshot(KEY).await.unwrap();
    let (m_end, left) = (
        hash_field(&server, "m").await,
        hash_field(&server, "t").await,
    );
    let q = 20;
    let given = q * (m_end - m0);
    let by_first_stop = q * (first_stop / 1000 - m0);
    // The documented bound: P * (L + n - 1), n = 1.
    let bound = PROCESSES * MAX_LEASE;
    let taken = given - left;
    eprintln!(
        "granted {granted}; the bucket gave {taken} (refilled {given}, {left} left): {} lost to \
         leasing (bound {bound}); refilled by the first process's stop {by_first_stop}",
        taken.saturating_sub(granted)
    );
    assert!(granted <= taken, "over-admitted: {granted} > {taken}");
    assert!(
        taken - granted <= bound,
        "under-admitted past the bound: {taken} taken, {granted} granted, bound {bound}"
    );
    // And the demand was served while all four asked: what the bucket gave covers its refills
    // up to the first stop, but for what a starved machine may not have asked for in its last
    // 100 ms.
    assert!(
        taken + q * 100 >= by_first_stop,
        "the bucket kept tokens while four processes asked: {taken} < {by_first_stop}"
    );
}

/// Runs as a child process of the test above (and does nothing otherwise).
#[test]
fn lease_worker() {
    let Ok(url) = std::env::var("TOLLGATE_LEASE_WORKER") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = RedisLimiter::builder(&url, limit(), "lease:")
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        // Leases held longer than the run: none ends while its process is starved of CPU
        // (an ended lease's return may lose tokens to the undo formula); all come back at
        // `release_all`.
        let leased = redis.leased(
            LeaseConfig::new()
                .max_tokens(MAX_LEASE)
                .hold(Duration::from_secs(30)),
        );
        let until = Instant::now() + Duration::from_secs(2);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let leased = leased.clone();
                tokio::spawn(async move {
                    let mut granted = 0u64;
                    while Instant::now() < until {
                        if leased.try_acquire(KEY, 1).await.unwrap().is_allowed() {
                            granted += 1;
                        }
                        tokio::task::yield_now().await;
                    }
                    granted
                })
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            granted += t.await.unwrap();
        }
        // The server's time when this process stopped asking (microseconds).
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
        let returned = leased.release_all().await;
        let stats = leased.stats();
        assert_eq!(stats.granted, granted);
        println!(
            "granted={granted} stop_us={} leases={} leased={} returned={returned}",
            s * 1_000_000 + us,
            stats.leases,
            stats.leased,
        );
    });
}

/// A process asking once every 20 ms never holds more than a handful of tokens, though it
/// may lease up to 1,000.
#[tokio::test]
async fn a_quiet_process_holds_little() {
    let Some(server) = Server::start() else {
        return;
    };
    let redis = connect(&server, limit(), "quiet:").await;
    let leased = redis.leased(
        LeaseConfig::new()
            .max_tokens(1_000)
            .hold(Duration::from_millis(250)),
    );
    let mut most_held = 0;
    for _ in 0..50 {
        assert!(leased.try_acquire(b"k", 1).await.unwrap().is_allowed());
        let s = leased.stats();
        most_held = most_held.max(s.leased - s.granted - s.returned);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = leased.stats();
    eprintln!("quiet: {s:?}, most held {most_held}");
    assert!(most_held <= 16, "a quiet process held {most_held} tokens");
    assert!(
        s.leases < 25,
        "most grants came without a round trip: {s:?}"
    );
}

/// Unspent tokens go back as an undo: at `release_all`, and when a lease ends (the sweep);
/// all of them when no other process refilled the bucket meanwhile. The limit's one step lasts
/// 34 years (the next boundary is in 2038), so no refill moves the numbers.
#[tokio::test]
async fn unspent_tokens_come_back() {
    let Some(server) = Server::start() else {
        return;
    };
    let slow = Limit::new(1_000, 1_000, Duration::from_secs(1 << 30)).unwrap();
    let redis = connect(&server, slow, "back:").await;
    // A lease held far longer than the test: only `release_all` returns it.
    let leased = redis.clone().leased(
        LeaseConfig::new()
            .max_tokens(100)
            .hold(Duration::from_secs(3_600)),
    );
    // Grow the lease: each renewal may double it.
    for _ in 0..40 {
        assert!(leased.try_acquire(b"a", 1).await.unwrap().is_allowed());
    }
    let s = leased.stats();
    assert!(s.leased > 40, "the lease grew: {s:?}");
    let held = s.leased - s.granted;
    assert_eq!(
        redis.snapshot(b"a").await.unwrap().remaining(),
        1_000 - s.leased
    );
    assert_eq!(leased.release_all().await, held);
    assert_eq!(redis.snapshot(b"a").await.unwrap().remaining(), 1_000 - 40);

    // A lease that ends (after 50 ms) is returned by the sweep.
    let short = redis.leased(
        LeaseConfig::new()
            .max_tokens(100)
            .hold(Duration::from_millis(50)),
    );
    for _ in 0..10 {
        assert!(short.try_acquire(b"b", 1).await.unwrap().is_allowed());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = short.redis().snapshot(b"b").await.unwrap().remaining();
        if left == 1_000 - 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ended lease was not returned: {left}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
