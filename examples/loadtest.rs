//! The HTTP load harness (issue 12): the same axum app with no layer, with tollgate's
//! `RateLimitLayer`, and with tower_governor configured the same way, each on loopback, each
//! driven by its own HTTP/1.1 client over keep-alive connections, in one run.
//!
//! ```sh
//! cargo run --release --example loadtest                 # every scenario (about 4 minutes)
//! cargo run --release --example loadtest -- --quick      # a short spray, tollgate only (CI)
//! cargo run --release --example loadtest -- --quick --max-bytes-per-key 400   # fail above
//! ```
//!
//! Scenarios: (a) one key, mostly denied; (b) 1,000 hot keys, all allowed; (c) a key spray
//! (every request a new `x-api-key`; 2,000,000 keys by default, `--spray N`); (d) the spray,
//! then silence for 2 x (idle_ttl + time to fill): keys and memory held after; (e) a spoofed
//! `X-Forwarded-For` spray from a peer that is not a trusted proxy: it must collapse to the
//! peer's one bucket. Each (scenario, variant) runs in a child process of its own, so memory
//! figures do not mix. Server CPU is the CPU time of the server runtime's one worker thread
//! (`/proc/self/task/*/schedstat`); memory is the process's RSS (`/proc/self/statm`). The
//! client runs on its own runtime thread in the same process. Loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tollgate::http::{ForwardedHeader, Key, KeyExtractor, RateLimitLayer, TrustedProxies};
use tollgate::{KeyedLimiter, Limit};

/// What one child measured.
#[derive(Debug, Default)]
struct Report {
    requests: u64,
    ok: u64,
    denied: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    server_cpu_ns: u64,
    rss_before: u64,
    rss_after: u64,
    keys: u64,
    keys_after_silence: Option<u64>,
    rss_after_silence: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    None,
    Tollgate,
    Governor,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    OneKey,
    Hot,
    Spray,
    Spoof,
}

/// RSS of this process in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[path = "support/cpu.rs"]
mod cpu;
use cpu::thread_cpu_ns;

/// The limit each scenario runs under, as (tollgate limit, governor period, governor burst).
fn limits(scenario: Scenario) -> (Limit, Duration, u32) {
    match scenario {
        // 10 per second, burst 10: a single key is mostly denied; a sprayed key is allowed once.
        Scenario::OneKey | Scenario::Spray | Scenario::Spoof => (
            Limit::per_second(10).expect("valid"),
            Duration::from_millis(100),
            10,
        ),
        // 1,000 per second per key, burst 1,000: 1,000 hot keys at this machine's rate are
        // never denied.
        Scenario::Hot => (
            Limit::per_second(1_000).expect("valid"),
            Duration::from_millis(1),
            1_000,
        ),
    }
}

/// The key extractor tower_governor is given: the `x-api-key` header, as a `String`.
#[derive(Clone)]
struct ApiKey;

impl tower_governor::key_extractor::KeyExtractor for ApiKey {
    type Key = String;
    fn extract<T>(
        &self,
        req: &http::Request<T>,
    ) -> Result<Self::Key, tower_governor::GovernorError> {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// The app, and a function that counts the keys its limiter holds.
fn app(variant: Variant, scenario: Scenario) -> (Router, Box<dyn Fn() -> u64 + Send + Sync>) {
    let router = Router::new().route("/api/hello", get(|| async { "{\"hello\":\"world\"}\n" }));
    let (limit, period, burst) = limits(scenario);
    match variant {
        Variant::None => (router, Box::new(|| 0)),
        Variant::Tollgate => {
            let limiter: Arc<KeyedLimiter<Key>> = Arc::new(KeyedLimiter::new(limit));
            let key = match scenario {
                // The peer (loopback) is not a trusted proxy: forwarding headers are ignored.
                Scenario::Spoof => KeyExtractor::client_ip(
                    TrustedProxies::from_cidrs(["10.0.0.0/8"]).expect("valid"),
                    ForwardedHeader::XForwardedFor,
                ),
                _ => KeyExtractor::api_key(),
            };
            let layer = RateLimitLayer::builder(limiter.clone())
                .key(key)
                .build()
                .expect("valid policy name");
            (router.layer(layer), Box::new(move || limiter.len() as u64))
        }
        Variant::Governor => {
            let config = Arc::new(
                tower_governor::governor::GovernorConfigBuilder::default()
                    .period(period)
                    .burst_size(burst)
                    .key_extractor(ApiKey)
                    .use_headers()
                    .finish()
                    .expect("valid"),
            );
            let limiter = config.limiter().clone();
            // As tower_governor's docs advise: drop keys that are full again, every second.
            let sweeper = limiter.clone();
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                sweeper.retain_recent();
            });
            (
                router.layer(tower_governor::GovernorLayer::new(config)),
                Box::new(move || limiter.len() as u64),
            )
        }
    }
}

/// The key a request carries.
fn key_of(scenario: Scenario, i: u64) -> String {
    match scenario {
        Scenario::OneKey => "key-0".to_string(),
        Scenario::Hot => format!("hot-{}", i % 1_000),
        // 16-byte keys: what an API key might be.
        Scenario::Spray | Scenario::Spoof => format!("spray-{i:010}"),
    }
}

/// One keep-alive connection sending requests until `total` are claimed or `stop` is set.
async fn connection(
    addr: SocketAddr,
    scenario: Scenario,
    next: Arc<AtomicU64>,
    total: u64,
    stop: Arc<AtomicBool>,
    latencies: Arc<std::sync::Mutex<Vec<u32>>>,
) -> (u64, u64) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let (mut ok, mut denied) = (0, 0);
    let mut mine = Vec::with_capacity(1 << 16);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total || stop.load(Ordering::Relaxed) {
            break;
        }
        let mut req = http::Request::get("/api/hello")
            .header(http::header::HOST, "loadtest")
            .header("x-api-key", key_of(scenario, i));
        if scenario == Scenario::Spoof {
            req = req.header(
                "x-forwarded-for",
                format!("203.0.{}.{}", (i >> 8) & 0xff, i & 0xff),
            );
        }
        let req = req.body(Empty::new()).expect("request");
        let t = Instant::now();
        sender.ready().await.expect("ready");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status();
        resp.into_body().collect().await.expect("body");
        mine.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if status == http::StatusCode::TOO_MANY_REQUESTS {
            denied += 1;
        } else {
            assert!(status.is_success(), "unexpected status {status}");
            ok += 1;
        }
    }
    latencies.lock().expect("not poisoned").extend(mine);
    (ok, denied)
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    u64::from(sorted[i])
}

/// Runs one (variant, scenario) in this process and prints its report as one line.
fn child(
    variant: Variant,
    scenario: Scenario,
    total: u64,
    seconds: u64,
    conns: usize,
    silence: bool,
) {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lt-server")
        .enable_all()
        .build()
        .expect("runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lt-client")
        .enable_all()
        .build()
        .expect("runtime");
    let (router, keys) = app(variant, scenario);
    // The peer address for peer / client IP keys, as the `PeerAddr` docs show (this example
    // builds without tollgate's `axum` feature, which would read `ConnectInfo` itself).
    let router = router.layer(axum::middleware::map_request(
        |axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<SocketAddr>,
         mut req: axum::extract::Request| async move {
            req.extensions_mut()
                .insert(tollgate::http::PeerAddr(remote));
            req
        },
    ));
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    server_rt.spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        total.min(4_000_000) as usize,
    )));
    // Warm up (connections, allocator), then measure.
    let rss_before = rss();
    let cpu_before = thread_cpu_ns("lt-server");
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let (ok, denied) = client_rt.block_on(async {
        let timer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(seconds)).await;
                stop.store(true, Ordering::Relaxed);
            })
        };
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                tokio::spawn(connection(
                    addr,
                    scenario,
                    next.clone(),
                    total,
                    stop.clone(),
                    latencies.clone(),
                ))
            })
            .collect();
        let mut sum = (0, 0);
        for t in tasks {
            let (o, d) = t.await.expect("connection task");
            sum = (sum.0 + o, sum.1 + d);
        }
        timer.abort();
        sum
    });
    let secs = start.elapsed().as_secs_f64();
    let server_cpu_ns = thread_cpu_ns("lt-server") - cpu_before;
    let rss_after = rss();
    let held = keys();
    let (keys_after_silence, rss_after_silence) = if silence {
        // 2 x (idle_ttl + time to fill): both are 1 s for 10 per second.
        std::thread::sleep(Duration::from_secs(4));
        (Some(keys()), Some(rss()))
    } else {
        (None, None)
    };
    let mut lat = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    lat.sort_unstable();
    let r = Report {
        requests: ok + denied,
        ok,
        denied,
        secs,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        p999_us: percentile(&lat, 0.999),
        server_cpu_ns,
        rss_before,
        rss_after,
        keys: held,
        keys_after_silence,
        rss_after_silence,
    };
    println!("{r:?}");
}

fn parse_report(line: &str) -> Report {
    let num = |name: &str| -> Option<f64> {
        let at = line.find(&format!("{name}: "))? + name.len() + 2;
        let rest = &line[at..];
        let rest = rest.strip_prefix("Some(").unwrap_or(rest);
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        rest[..end].parse().ok()
    };
    let n = |name: &str| num(name).unwrap_or(0.0) as u64;
    Report {
        requests: n("requests"),
        ok: n("ok"),
        denied: n("denied"),
        secs: num("secs").unwrap_or(0.0),
        p50_us: n("p50_us"),
        p99_us: n("p99_us"),
        p999_us: n("p999_us"),
        server_cpu_ns: n("server_cpu_ns"),
        rss_before: n("rss_before"),
        rss_after: n("rss_after"),
        keys: n("keys"),
        keys_after_silence: num("keys_after_silence").map(|x| x as u64),
        rss_after_silence: num("rss_after_silence").map(|x| x as u64),
    }
}

fn run(
    variant: Variant,
    scenario: Scenario,
    total: u64,
    seconds: u64,
    conns: usize,
    silence: bool,
) -> Report {
    let me = std::env::current_exe().expect("own path");
    let out = std::process::Command::new(me)
        .env("RUST_BACKTRACE", "0")
        .args([
            "--child",
            &format!("{variant:?}"),
            &format!("{scenario:?}"),
            &total.to_string(),
            &seconds.to_string(),
            &conns.to_string(),
            &silence.to_string(),
        ])
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{variant:?} {scenario:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_report(stdout.lines().last().unwrap_or(""))
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn print_row(name: &str, r: &Report) {
    let per_req = r.server_cpu_ns as f64 / r.requests.max(1) as f64 / 1e3;
    let grown = r.rss_after.saturating_sub(r.rss_before);
    let per_key = if r.keys > 0 {
        format!("{:.0}", grown as f64 / r.keys as f64)
    } else {
        "-".into()
    };
    println!(
        "  {name:<14} {:>9.0} {:>6} {:>6} {:>7} {:>8.2} {:>9} {:>9.1} {:>9}  ({} ok, {} denied)",
        r.requests as f64 / r.secs,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        per_req,
        r.keys,
        grown as f64 / 1e6,
        per_key,
        r.ok,
        r.denied,
    );
}

fn header() {
    println!(
        "  {:<14} {:>9} {:>6} {:>6} {:>7} {:>8} {:>9} {:>9} {:>9}",
        "variant", "req/s", "p50us", "p99us", "p99.9us", "cpu us/r", "keys", "RSS+ MB", "B/key"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let variant = match args[i + 1].as_str() {
            "None" => Variant::None,
            "Tollgate" => Variant::Tollgate,
            _ => Variant::Governor,
        };
        let scenario = match args[i + 2].as_str() {
            "OneKey" => Scenario::OneKey,
            "Hot" => Scenario::Hot,
            "Spray" => Scenario::Spray,
            _ => Scenario::Spoof,
        };
        let n = |j: usize| args[i + j].parse::<u64>().expect("number");
        return child(
            variant,
            scenario,
            n(3),
            n(4),
            n(5) as usize,
            args[i + 6] == "true",
        );
    }
    let quick = args.iter().any(|a| a == "--quick");
    let conns: usize = arg(&args, "--conns").unwrap_or(32);
    let spray: u64 = arg(&args, "--spray").unwrap_or(if quick { 10_000_000 } else { 2_000_000 });
    let seconds: u64 = arg(&args, "--seconds").unwrap_or(if quick { 10 } else { 8 });
    let max_per_key: Option<f64> = arg(&args, "--max-bytes-per-key");
    let rounds: usize = arg(&args, "--rounds").unwrap_or(3).max(1);
    println!(
        "tollgate load harness: {conns} keep-alive connections on loopback, 1 server worker \
         thread, 1 client thread"
    );
    let mut failed = false;
    if !quick {
        println!("(a) one key, mostly denied ({seconds} s)");
        header();
        let mut one_key_p99 = Vec::new();
        for v in [Variant::None, Variant::Tollgate, Variant::Governor] {
            let r = run(v, Scenario::OneKey, u64::MAX, seconds, conns, false);
            print_row(&format!("{v:?}"), &r);
            one_key_p99.push((v, r.p99_us));
        }
        println!(
            "(b) 1,000 hot keys, all allowed ({seconds} s; {rounds} rounds, variants interleaved, \
             the median round by CPU per request shown)"
        );
        header();
        let variants = [Variant::None, Variant::Tollgate, Variant::Governor];
        let mut runs: Vec<Vec<Report>> = variants.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, v) in variants.iter().enumerate() {
                runs[i].push(run(*v, Scenario::Hot, u64::MAX, seconds, conns, false));
            }
        }
        let per_req = |r: &Report| r.server_cpu_ns as f64 / r.requests.max(1) as f64 / 1e3;
        let mut cpu = Vec::new();
        for (v, mut rs) in variants.iter().zip(runs) {
            rs.sort_by(|a, b| per_req(a).total_cmp(&per_req(b)));
            let all: Vec<String> = rs.iter().map(|r| format!("{:.2}", per_req(r))).collect();
            let median = &rs[rs.len() / 2];
            print_row(&format!("{v:?}"), median);
            println!("  {:<14} cpu us/r of every round: {}", "", all.join(", "));
            cpu.push(per_req(median));
        }
        println!(
            "  layer overhead, server CPU per allowed request over no layer (medians): tollgate \
             {:+.2} us, tower_governor {:+.2} us",
            cpu[1] - cpu[0],
            cpu[2] - cpu[0]
        );
        println!(
            "(c, d) key spray: {spray} new keys (at most {} s), then 4 s of silence",
            seconds * 4
        );
        header();
        for v in [Variant::Tollgate, Variant::Governor] {
            let r = run(v, Scenario::Spray, spray, seconds * 4, conns, true);
            print_row(&format!("{v:?}"), &r);
            let one = one_key_p99.iter().find(|(w, _)| *w == v).map_or(0, |x| x.1);
            println!(
                "  {:<14} p99 {:.1}x the one-key p99; after the silence: {} keys held, RSS {:+.1} MB over the start",
                "",
                r.p99_us as f64 / one.max(1) as f64,
                r.keys_after_silence.unwrap_or(0),
                (r.rss_after_silence.unwrap_or(0) as f64 - r.rss_before as f64) / 1e6
            );
        }
        println!("(e) spoofed X-Forwarded-For spray from an untrusted peer ({seconds} s)");
        header();
        let r = run(
            Variant::Tollgate,
            Scenario::Spoof,
            u64::MAX,
            seconds,
            conns,
            false,
        );
        print_row("Tollgate", &r);
        if r.keys != 1 {
            println!(
                "  FAILED: {} keys held; the spray must collapse to the peer's one bucket",
                r.keys
            );
            failed = true;
        }
    } else {
        println!("key spray, tollgate only ({seconds} s)");
        header();
        let r = run(
            Variant::Tollgate,
            Scenario::Spray,
            spray,
            seconds,
            conns,
            false,
        );
        print_row("Tollgate", &r);
        if let Some(max) = max_per_key {
            let per_key = r.rss_after.saturating_sub(r.rss_before) as f64 / r.keys.max(1) as f64;
            if per_key > max {
                println!("  FAILED: {per_key:.0} B of RSS per key held, above {max:.0}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
