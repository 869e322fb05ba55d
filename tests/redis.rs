//! The Redis backend against a real `redis-server` that the tests start themselves (SPEC §4).
//! Without the binary the tests print one skip line and pass; `.ci/run` installs it.
#![cfg(all(feature = "redis", not(loom)))]

mod model;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::observe;
use tollgate::redis::{OnFailure, RedisLimitError, RedisLimiter};
use tollgate::{Limit, ManualClock, TokenBucket};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A private redis-server on a unix socket in a temp dir, stopped on drop.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
}

impl Server {
    fn start() -> Option<Server> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!("skipping: redis-server not found (apt-get install -y redis-server)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "tollgate-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Server { child: None, dir };
        s.spawn();
        Some(s)
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("unix://{}", self.sock().display())
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.sock());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(self.sock())
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.sock()).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `SIGSTOP` / `SIGCONT`: a frozen server keeps its socket open but never answers.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn raw(server: &Server) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Pseudo-random numbers for traces (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test]
async fn same_decisions_as_the_in_memory_bucket() {
    let Some(server) = Server::start() else {
        return;
    };
    let limits = [
        Limit::new(10, 2, Duration::from_secs(1)).unwrap(),
        Limit::new(1, 1, Duration::from_millis(7)).unwrap(),
        Limit::per_second(3).unwrap(),
        Limit::greedy(50, 7, Duration::from_millis(13)).unwrap(),
        Limit::per_minute(100).unwrap().burst(20).unwrap(),
        Limit::new(1 << 20, 1 << 10, Duration::from_micros(3)).unwrap(),
    ];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut compared = 0;
    for (i, limit) in limits.into_iter().enumerate() {
        let redis = RedisLimiter::builder(&server.url(), limit, "diff:")
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        for trace in 0..8 {
            let key = format!("limit{i}-trace{trace}");
            let clock = ManualClock::new();
            let bucket = TokenBucket::with_clock(limit, clock.clone());
            // Microseconds since the Unix epoch, moving forward by 0, a little, a step or a lot.
            let mut now_us: u64 = 1_700_000_000_000_000 + rng.next() % 1_000_000_000;
            let step_us =
                (limit.refill_interval().as_micros() as u64 / limit.refill_amount()).max(1);
            for _ in 0..60 {
                now_us += match rng.next() % 5 {
                    0 => 0,
                    1 => rng.next() % 1_000,
                    2 => step_us * (rng.next() % 3),
                    3 => rng.next() % (step_us * 10 + 1),
                    _ => rng.next() % 10_000_000,
                };
                let n = match rng.next() % 4 {
                    0 => 0,
                    1 => limit.capacity(),
                    _ => 1 + rng.next() % limit.capacity().min(5),
                };
                clock.set(now_us * 1000);
                let want = observe(&bucket.try_acquire(n).unwrap());
                let got = observe(
                    &redis
                        .try_acquire_at(key.as_bytes(), n, now_us)
                        .await
                        .unwrap(),
                );
                assert_eq!(got, want, "{limit:?} key {key} n {n} at {now_us} us");
                compared += 1;
            }
        }
    }
    eprintln!("redis vs in-memory: {compared} decisions identical");
}

#[tokio::test]
async fn many_tasks_never_exceed_capacity_plus_refills() {
    let Some(server) = Server::start() else {
        return;
    };
    // 20 tokens of burst, 1 back every 200 ms.
    let limit = Limit::new(20, 1, Duration::from_millis(200)).unwrap();
    let redis = Arc::new(
        RedisLimiter::builder(&server.url(), limit, "conc:")
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap(),
    );
    let granted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (redis, granted) = (redis.clone(), granted.clone());
            tokio::spawn(async move {
                for _ in 0..40 {
                    if redis.try_acquire(b"shared", 1).await.unwrap().is_allowed() {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // And several OS processes on the same key.
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "redis_worker", "--nocapture", "--test-threads=1"])
                .env("TOLLGATE_REDIS_WORKER", server.url())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let n: u64 = text
            .lines()
            .find_map(|l| l.split_once("granted=").map(|(_, n)| n))
            .unwrap_or_else(|| panic!("worker said: {text}"))
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        granted.fetch_add(n, Ordering::Relaxed);
    }
    let elapsed = start.elapsed();
    let steps = elapsed.as_millis() as u64 / 200 + 1;
    let granted = granted.load(Ordering::Relaxed);
    eprintln!(
        "16 tasks + 3 processes: granted {granted} in {elapsed:?} (bound {})",
        20 + steps
    );
    assert!(granted >= 20, "the burst was granted");
    assert!(granted <= 20 + steps, "granted {granted} > 20 + {steps}");
}

/// Runs as a child process of the test above (and does nothing otherwise).
#[test]
fn redis_worker() {
    let Ok(url) = std::env::var("TOLLGATE_REDIS_WORKER") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let granted = rt.block_on(async {
        let limit = Limit::new(20, 1, Duration::from_millis(200)).unwrap();
        let redis = RedisLimiter::builder(&url, limit, "conc:")
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        let mut granted = 0;
        for _ in 0..100 {
            granted += u64::from(redis.try_acquire(b"shared", 1).await.unwrap().is_allowed());
        }
        granted
    });
    println!("granted={granted}");
}

#[tokio::test]
async fn idle_keys_expire_and_full_ones_vanish() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut con = raw(&server).await;
    // Full again 300 ms after the last token is taken.
    let limit = Limit::new(3, 3, Duration::from_millis(300)).unwrap();
    let redis = RedisLimiter::new(&server.url(), limit, "exp:")
        .await
        .unwrap();
    assert!(redis.try_acquire(b"k", 3).await.unwrap().is_allowed());
    let exists: bool = redis::cmd("EXISTS")
        .arg("exp:{k}")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(exists);
    let pttl: i64 = redis::cmd("PTTL")
        .arg("exp:{k}")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!((1..=300).contains(&pttl), "pttl {pttl}");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("exp:{k}")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        !exists,
        "an idle key disappears when its bucket is full again"
    );
    // A peek on a missing key stores nothing.
    assert_eq!(redis.try_acquire(b"k", 0).await.unwrap().remaining(), 3);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("exp:*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn recovers_from_script_flush() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut con = raw(&server).await;
    let redis = RedisLimiter::new(&server.url(), Limit::per_second(5).unwrap(), "flush:")
        .await
        .unwrap();
    assert!(redis.try_acquire(b"k", 2).await.unwrap().is_allowed());
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .unwrap();
    let d = redis.try_acquire(b"k", 1).await.unwrap();
    assert!(d.is_allowed());
    assert!(d.remaining() <= 2);
}

#[tokio::test]
async fn odd_key_names_are_separate_keys() {
    let Some(server) = Server::start() else {
        return;
    };
    let redis = RedisLimiter::new(&server.url(), Limit::per_hour(1).unwrap(), "odd:")
        .await
        .unwrap();
    let keys: [&[u8]; 6] = [b"a{b}c", b"{", b"}", b"\x00\xff\xfe", b"", b"a b\r\n"];
    for key in keys {
        assert!(
            redis.try_acquire(key, 1).await.unwrap().is_allowed(),
            "{key:?}"
        );
    }
    for key in keys {
        assert!(
            redis.try_acquire(key, 1).await.unwrap().is_denied(),
            "{key:?}"
        );
    }
    assert_eq!(redis.redis_key(b"a{b}"), b"odd:{a{b}}");
}

#[tokio::test]
async fn server_killed_then_restarted() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let limit = Limit::per_second(100).unwrap();
    let timeout = Duration::from_millis(100);
    let open = RedisLimiter::builder(&server.url(), limit, "kill:")
        .timeout(timeout)
        .on_failure(OnFailure::FailOpen)
        .connect()
        .await
        .unwrap();
    let closed = RedisLimiter::builder(&server.url(), limit, "kill:")
        .timeout(timeout)
        .on_failure(OnFailure::FailClosed)
        .connect()
        .await
        .unwrap();
    let error = RedisLimiter::builder(&server.url(), limit, "kill:")
        .timeout(timeout)
        .connect()
        .await
        .unwrap();
    assert!(!open.try_acquire(b"k", 1).await.unwrap().is_degraded());
    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let d = open.try_acquire(b"k", 1).await.unwrap();
        assert!(d.is_allowed() && d.is_degraded());
        let d = closed.try_acquire(b"k", 1).await.unwrap();
        assert!(d.is_denied() && d.is_degraded());
        assert!(matches!(
            error.try_acquire(b"k", 1).await,
            Err(RedisLimitError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no hang: {:?}",
            started.elapsed()
        );
    }
    server.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match error.try_acquire(b"k", 1).await {
            Ok(d) => {
                assert!(!d.is_degraded());
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("did not recover: {e}"),
        }
    }
}

#[tokio::test]
async fn denial_cache_answers_without_a_round_trip() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let redis = RedisLimiter::builder(&server.url(), Limit::per_hour(2).unwrap(), "deny:")
        .denial_cache(Some(100))
        .timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    assert!(redis.try_acquire(b"k", 2).await.unwrap().is_allowed());
    let first = redis.try_acquire(b"k", 1).await.unwrap();
    assert!(first.is_denied());
    // With the server gone, the cached denial still answers, exactly and not degraded.
    server.kill();
    let d = redis.try_acquire(b"k", 1).await.unwrap();
    assert!(d.is_denied() && !d.is_degraded());
    assert!(d.retry_after() <= first.retry_after());
    assert!(d.retry_after() + Duration::from_secs(5) > first.retry_after());
    // Another key has no cached denial: the outage shows.
    assert!(redis.try_acquire(b"other", 1).await.is_err());
}

#[tokio::test]
async fn limits_the_script_cannot_run_exactly_are_rejected() {
    let Some(server) = Server::start() else {
        return;
    };
    let too_fine = Limit::new(5, 1, Duration::from_nanos(1500)).unwrap();
    assert!(matches!(
        RedisLimiter::new(&server.url(), too_fine, "x:").await,
        Err(RedisLimitError::Limit(_))
    ));
    // Three tokens every 2 us: more than one per microsecond.
    let too_fast = Limit::greedy(100, 3, Duration::from_micros(2)).unwrap();
    assert!(matches!(
        RedisLimiter::new(&server.url(), too_fast, "x:").await,
        Err(RedisLimitError::Limit(_))
    ));
    let redis = RedisLimiter::new(&server.url(), Limit::per_second(5).unwrap(), "x:")
        .await
        .unwrap();
    assert!(matches!(
        redis.try_acquire(b"k", 6).await,
        Err(RedisLimitError::InsufficientCapacity(_))
    ));
}

/// A server that stops answering (frozen, its socket still open): every call is answered by
/// the failure policy once the timeout has passed, not later; through the HTTP layer such a
/// made-up decision carries no rate-limit headers.
#[tokio::test]
async fn a_frozen_server_is_answered_by_the_policy_at_the_timeout() {
    let Some(server) = Server::start() else {
        return;
    };
    let timeout = Duration::from_millis(100);
    let open = RedisLimiter::builder(&server.url(), Limit::per_second(100).unwrap(), "frozen:")
        .timeout(timeout)
        .on_failure(OnFailure::FailOpen)
        .connect()
        .await
        .unwrap();
    assert!(!open.try_acquire(b"k", 1).await.unwrap().is_degraded());
    server.signal("STOP");
    for _ in 0..3 {
        let started = Instant::now();
        let d = open.try_acquire(b"k", 1).await.unwrap();
        let took = started.elapsed();
        assert!(d.is_allowed() && d.is_degraded());
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(400),
            "answered after {took:?}"
        );
    }
    #[cfg(feature = "http")]
    {
        use tower::{Layer, ServiceExt};
        let layer = tollgate::http::RateLimitLayer::builder(open)
            .build()
            .unwrap();
        type Empty = http_body_util::Empty<bytes::Bytes>;
        let service = layer.layer(tower::service_fn(|_: http::Request<Empty>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        }));
        let response = service
            .oneshot(http::Request::new(Empty::new()))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert!(response.headers().get("ratelimit").is_none());
        assert!(response.headers().get("ratelimit-policy").is_none());
    }
    server.signal("CONT");
}

/// Through the HTTP backend, keys of different kinds never share a bucket (as in a
/// `KeyedLimiter<Key>`): the global key is not the API key `*`, nor the text `1.2.3.4` the IP.
#[cfg(feature = "http")]
#[tokio::test]
async fn http_keys_of_different_kinds_are_different_buckets() {
    use tollgate::http::{Backend, Key};
    let Some(server) = Server::start() else {
        return;
    };
    let hour = Limit::per_hour(1).unwrap();
    let limiter = RedisLimiter::new(&server.url(), hour, "kinds:")
        .await
        .unwrap();
    let ip: std::net::IpAddr = "1.2.3.4".parse().unwrap();
    let keys = [
        Key::Global,
        Key::Header(http::HeaderValue::from_static("*")),
        Key::Ip(ip),
        Key::Text("1.2.3.4".into()),
        Key::Bytes(bytes::Bytes::from_static(b"1.2.3.4")),
    ];
    for key in &keys {
        let d = limiter.acquire(key, 1).await.unwrap().unwrap();
        assert!(d.is_allowed(), "{key:?} has a bucket of its own");
    }
    for key in &keys {
        let d = limiter.acquire(key, 1).await.unwrap().unwrap();
        assert!(d.is_denied(), "{key:?} spent its one token");
    }
}

/// Issue 19, item 8: a limit whose bucket takes centuries to fill (2^32 tokens, one a day) runs:
/// taking every token is allowed, answered without a script error (before: `PEXPIRE` of ~3.7e17
/// ms failed after `HSET`, tokens spent and an error returned), the key keeps no expiry, and the
/// next call is a denial.
#[tokio::test]
async fn a_bucket_that_takes_centuries_to_fill_has_no_expiry_and_no_error() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut con = raw(&server).await;
    let limit = Limit::new(1 << 32, 1, Duration::from_secs(86_400)).unwrap();
    let redis = RedisLimiter::new(&server.url(), limit, "huge:")
        .await
        .unwrap();
    let d = redis.try_acquire(b"k", 1 << 32).await.unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 0);
    let pttl: i64 = redis::cmd("PTTL")
        .arg("huge:{k}")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(pttl, -1, "the key exists with no expiry");
    assert!(redis.try_acquire(b"k", 1).await.unwrap().is_denied());
    // A bucket that fills within the bound still expires when it is full again.
    let day = Limit::new(1 << 20, 1 << 20, Duration::from_secs(86_400)).unwrap();
    let redis = RedisLimiter::new(&server.url(), day, "day:").await.unwrap();
    assert!(redis.try_acquire(b"k", 5).await.unwrap().is_allowed());
    let pttl: i64 = redis::cmd("PTTL")
        .arg("day:{k}")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!((1..=86_400_000).contains(&pttl), "pttl {pttl}");
}

/// Issue 19, item 5: through the HTTP layer, a Redis outage under `OnFailure::FailClosed` is a
/// 503 with a short retry, never a 429 whose `Retry-After` comes from an imagined empty bucket
/// (`per_hour(1)` sent clients away for an hour), and carries no quota headers.
#[tokio::test]
async fn a_fail_closed_outage_is_a_503_not_a_quota_verdict() {
    use tollgate::http::{KeyExtractor, RateLimitLayer};
    use tower::{Service, ServiceExt};
    let Some(server) = Server::start() else {
        return;
    };
    let redis = RedisLimiter::builder(&server.url(), Limit::per_hour(1).unwrap(), "down:")
        .timeout(Duration::from_millis(50))
        .on_failure(OnFailure::FailClosed)
        .connect()
        .await
        .unwrap();
    let layer = RateLimitLayer::builder(redis)
        .key(KeyExtractor::api_key())
        .build()
        .unwrap();
    let mut svc = tower::Layer::layer(
        &layer,
        tower::service_fn(|_req: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        }),
    );
    let request = || {
        http::Request::get("/api")
            .header("x-api-key", "k")
            .body(String::new())
            .unwrap()
    };
    let ok = svc.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(ok.status(), http::StatusCode::OK);
    server.signal("STOP");
    let down = svc.ready().await.unwrap().call(request()).await.unwrap();
    server.signal("CONT");
    assert_eq!(down.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.headers()["retry-after"], "1");
    assert!(down.headers().get("ratelimit").is_none());
}

/// Issue 19, item 2: a server in cluster mode is refused at `connect` with a clear error
/// (the client follows no MOVED redirect: keys on other nodes would fail, and under
/// `FailOpen` go silently unlimited).
#[tokio::test]
async fn a_cluster_mode_server_is_refused_at_connect() {
    let Some(single) = Server::start() else {
        return;
    };
    drop(single);
    /// Kills the cluster-mode server however the test ends.
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dir = std::env::temp_dir().join(format!("tollgate-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A free TCP port below 55535 (the cluster bus takes port + 10000). Another process may
    // take it between our probe and the server's bind: then the server exits, and we try again.
    let mut started = None;
    for _ in 0..5 {
        let port = (0..50)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .find(|p| *p < 55_000)
            .expect("a low free port");
        let _ = std::fs::remove_file(dir.join("nodes.conf"));
        let mut child = Kill(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--cluster-config-file")
                .arg(dir.join("nodes.conf"))
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let up = loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break true;
            }
            if child.0.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if up {
            started = Some((port, child));
            break;
        }
    }
    let (port, server) = started.expect("redis-server (cluster) came up");
    let got = RedisLimiter::builder(
        &format!("redis://127.0.0.1:{port}/"),
        Limit::per_second(5).unwrap(),
        "c:",
    )
    .timeout(Duration::from_millis(500))
    .connect()
    .await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    match got {
        Err(RedisLimitError::ClusterUnsupported) => {}
        other => panic!("expected ClusterUnsupported, got {other:?}"),
    }
}
