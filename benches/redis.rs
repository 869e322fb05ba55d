//! Redis-backed checks vs the server's ceiling, in one run on one private server:
//! `redis-benchmark` sending the same `EVALSHA` (same script, same arguments, random keys) with
//! as many connections as tollgate has tasks, and tollgate's `RedisLimiter` with that many
//! concurrent tasks on one multiplexed connection.
//!
//! `cargo bench --features redis --bench redis` (needs `redis-server` and `redis-benchmark`; about 20 s).
//! `TOLLGATE_BENCH_SECONDS` sets tollgate's measuring time (default 5).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::redis::{RedisLimiter, SCRIPT};
use tollgate::Limit;

const TASKS: usize = 32;
const KEYS: u64 = 100_000;

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
    // A limit that always allows: the measure is the round trip and the script.
    let limit = Limit::new(1_000_000, 1_000_000, Duration::from_secs(1)).unwrap();
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
            "1000000",
            "1000000",
            "1",
            "1000000",
            "1",
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

    // tollgate: TASKS concurrent tasks on one multiplexed connection, random keys.
    let seconds: u64 = std::env::var("TOLLGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let ops = rt.block_on(async {
        let limiter = Arc::new(
            RedisLimiter::builder(&url, limit, "bench:")
                .timeout(Duration::from_secs(1))
                .connect()
                .await
                .unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..TASKS as u64)
            .map(|t| {
                let (limiter, stop, ops) = (limiter.clone(), stop.clone(), ops.clone());
                tokio::spawn(async move {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = (x % KEYS).to_string();
                        let d = limiter.try_acquire(key.as_bytes(), 1).await.unwrap();
                        assert!(d.is_allowed());
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = start.elapsed();
        for t in tasks {
            t.await.unwrap();
        }
        ops.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!("redis-benchmark EVALSHA, {TASKS} connections: {ceiling:>10.0} checks/s");
    println!("tollgate RedisLimiter, {TASKS} tasks:          {ops:>10.0} checks/s");
    println!("ratio tollgate / ceiling: {:.2}", ops / ceiling);
}
