//! Two processes share one limit through Redis: capacity 10, 1 token back every 10 s, key
//! `shared`. Each process sends 10 requests; between them, 10 are allowed.
//!
//! ```sh
//! redis-server --port 6379 --save '' --appendonly no &     # if none runs
//! cargo run --release --features redis --example redis_shared
//! cargo run --release --features redis --example redis_shared -- redis://host:6379/
//! ```

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use tollgate::redis::RedisLimiter;
use tollgate::Limit;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let worker = args
        .iter()
        .position(|a| a == "--worker")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let url = args
        .iter()
        .find(|a| a.starts_with("redis://") || a.starts_with("unix://"))
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".to_string());
    let limit = Limit::new(10, 1, Duration::from_secs(10)).expect("a valid limit");
    let prefix = format!("tollgate-example-{}:", std::process::id());
    if let Some(name) = worker {
        let prefix = args
            .iter()
            .position(|a| a == "--prefix")
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or(prefix);
        let limiter = match RedisLimiter::builder(&url, limit, &prefix)
            .timeout(Duration::from_secs(1))
            .connect()
            .await
        {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut allowed = 0;
        for i in 1..=10 {
            match limiter.try_acquire(b"shared", 1).await {
                Ok(d) => {
                    allowed += u32::from(d.is_allowed());
                    println!(
                        "{name} request {i:>2}: {:<7} remaining {}",
                        if d.is_allowed() { "allowed" } else { "denied" },
                        d.remaining()
                    );
                }
                Err(e) => {
                    eprintln!("{name}: {e}");
                    return ExitCode::FAILURE;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("{name}: {allowed} allowed");
        return ExitCode::SUCCESS;
    }
    // Check Redis is there before starting the two workers.
    if let Err(e) = RedisLimiter::builder(&url, limit, &prefix)
        .timeout(Duration::from_secs(1))
        .connect()
        .await
    {
        eprintln!("cannot reach Redis at {url}: {e}");
        eprintln!("start one with: redis-server --port 6379 --save '' --appendonly no");
        return ExitCode::FAILURE;
    }
    println!("two processes, one limit in Redis at {url}: capacity 10, 1 token every 10 s\n");
    let exe = std::env::current_exe().expect("the example's own path");
    let children: Vec<_> = ["process A", "process B"]
        .iter()
        .map(|name| {
            Command::new(&exe)
                .args(["--worker", name, "--prefix", &prefix, &url])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn a worker")
        })
        .collect();
    // Each worker ends with "<name>: <n> allowed"; the sum must be the capacity.
    let mut total = 0;
    for child in children {
        let Ok(out) = child.wait_with_output() else {
            return ExitCode::FAILURE;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        if !out.status.success() {
            return ExitCode::FAILURE;
        }
        total += text
            .lines()
            .filter_map(|l| {
                l.strip_suffix(" allowed")?
                    .rsplit(": ")
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>();
    }
    if total == 10 {
        println!("\nbetween them: {total} allowed, as the shared limit says");
        ExitCode::SUCCESS
    } else {
        eprintln!("\nbetween them: {total} allowed, but the shared limit is 10");
        ExitCode::FAILURE
    }
}
