//! Redis-backed checks vs the server's ceiling, in one run on one private server:
//! `redis-benchmark` sending the same `EVALSHA` (same script, same arguments, random keys) with
//! as many connections as tollgate has tasks, and tollgate's `RedisLimiter` with that many
//! concurrent tasks on one multiplexed connection.
//!
//! `cargo bench --features redis --bench redis` (needs `redis-server` and `redis-benchmark`; about 20 s).
//! `TOLLGATE_BENCH_SECONDS` sets tollgate's measuring time (default 5).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::redis::{LeaseConfig, RedisLimiter, SCRIPT};
use tollgate::Limit;

const TASKS: usize = 32;
const KEYS: u64 = 100_000;
const BATCH: u64 = 64;

/// Runs `check` in TASKS tasks for `seconds` (each call gets a fresh pseudo-random number
/// and says how many checks it made); returns checks per second.
async fn run<F, Fut>(seconds: u64, check: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS as u64)
        .map(|t| {
            let (check, stop) = (check.clone(), stop.clone());
            tokio::spawn(async move {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ops += check(x).await;
                    // Let the other tasks (and the stop) in: a leased check never waits.
                    if ops.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                ops
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let mut ops = 0;
    for t in tasks {
        ops += t.await.unwrap();
    }
    ops as f64 / elapsed.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --no-run / listing
    }
    let have = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("redis-server") || !have("redis-benchmark") {
        eprintln!("skipping: redis-server and redis-benchmark are needed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tollgate-redis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("redis.sock");
    let mut server = Command::new("redis-server")
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(&sock)
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let url = format!("unix://{}", sock.display());
    // A limit that always allows (4 billion of burst, a million a second back): the measure
    // is the round trip and the script, or the lease.
    let limit = Limit::new(4_000_000_000, 1_000_000, Duration::from_secs(1)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sha = rt.block_on(async {
        let mut con = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async::<String>(&mut con)
            .await
            .unwrap()
    });

    // The ceiling: redis-benchmark, same script and arguments (a = 1, b = 1,000,000 us).
    let out = Command::new("redis-benchmark")
        .arg("-s")
        .arg(&sock)
        .args([
            "-n",
            "300000",
            "-c",
            &TASKS.to_string(),
            "-r",
            &KEYS.to_string(),
            "--csv",
        ])
        .args([
            "EVALSHA",
            &sha,
            "1",
            "bench:{__rand_int__}",
            // op, now (the server's), n, lease, undo, one limit: C, q, a, b, since, inherit,
            // taken (the arguments RedisLimiter sends)
            "a",
            "",
            "1",
            "0",
            "0",
            "1",
            "4000000000",
            "1000000",
            "1",
            "1000000",
            "",
            "k",
            "",
        ])
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    let ceiling: f64 = csv
        .lines()
        .filter_map(|l| l.split(',').nth(1))
        .filter_map(|v| v.trim_matches('"').parse().ok())
        .next()
        .unwrap_or_else(|| panic!("redis-benchmark said: {csv}"));

    // tollgate, each mode for `seconds`, TASKS concurrent tasks.
    let seconds: u64 = std::env::var("TOLLGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (per_check_hot, per_check, pipelined, leased) = rt.block_on(async {
        let limiter = RedisLimiter::builder(&url, limit, "bench:")
            .timeout(Duration::from_secs(1))
            .connect()
            .await
            .unwrap();
        let hot = {
            let limiter = limiter.clone();
            run(seconds, move |_| {
                let limiter = limiter.clone();
                async move {
                    let d = limiter.try_acquire(b"hot", 1).await.unwrap();
                    assert!(d.is_allowed());
                    1
                }
            })
            .await
        };
        let random = {
            let limiter = limiter.clone();
            run(seconds, move |x| {
                let limiter = limiter.clone();
                async move {
                    let key = (x % KEYS).to_string();
                    let d = limiter.try_acquire(key.as_bytes(), 1).await.unwrap();
                    assert!(d.is_allowed());
                    1
                }
            })
            .await
        };
        let pipelined = {
            let limiter = limiter.clone();
            run(seconds, move |x| {
                let limiter = limiter.clone();
                async move {
                    let calls: Vec<(String, u64)> = (0..BATCH)
                        .map(|i| (((x.wrapping_mul(i + 1)) % KEYS).to_string(), 1))
                        .collect();
                    let answers = limiter.try_acquire_many(&calls).await;
                    assert!(answers.iter().all(|a| a.as_ref().unwrap().is_allowed()));
                    BATCH
                }
            })
            .await
        };
        let leased = {
            let leased = limiter.clone().leased(LeaseConfig::new());
            let ops = run(seconds, move |_| {
                let leased = leased.clone();
                async move {
                    let d = leased.try_acquire(b"hot-leased", 1).await.unwrap();
                    assert!(d.is_allowed());
                    1
                }
            })
            .await;
            ops
        };
        (hot, random, pipelined, leased)
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("redis-benchmark EVALSHA, {TASKS} connections, random keys: {ceiling:>10.0} checks/s");
    println!("per-check: {per_check_hot:.0} checks/s (RedisLimiter::try_acquire, {TASKS} tasks, one hot key)");
    println!(
        "per-check, random keys: {per_check:.0} checks/s (ratio to redis-benchmark {:.2})",
        per_check / ceiling
    );
    println!(
        "pipelined: {pipelined:.0} checks/s (try_acquire_many, batches of {BATCH}, random keys)"
    );
    println!(
        "leased: {leased:.0} checks/s (LeasedLimiter::try_acquire, {TASKS} tasks, one hot key)"
    );
    println!(
        "leased / per-check on a hot key: {:.1}x",
        leased / per_check_hot
    );
}
