//! What a clock costs a process that is not limiting anything (issue 18): each variant runs in
//! a child process that builds one `TokenBucket`, makes one `check()`, waits a second (the
//! default clock's upkeep parks after about a second without reads), then sleeps; the CPU time
//! the whole process used during the sleep (every thread, from `/proc/self/task/*/schedstat`,
//! in nanoseconds) is its idle cost.
//!
//! `cargo run --release --example idle_clock` (10 s per variant; `-- --seconds N`). Linux only.

use std::time::{Duration, Instant};

use tollgate::{Clock, Limit, MonotonicClock, TokenBucket};

#[path = "support/cpu.rs"]
mod cpu;

/// CPU nanoseconds used so far by every thread of this process.
fn cpu_ns() -> u64 {
    cpu::thread_cpu_ns("")
}

/// The never-parking upkeep thread (tollgate's coarse clock before this change), as a clock.
#[derive(Clone)]
struct AlwaysOn(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl AlwaysOn {
    fn start() -> AlwaysOn {
        let clock = MonotonicClock::new();
        let word = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(clock.now()));
        let w = word.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(1));
            w.fetch_max(clock.now(), std::sync::atomic::Ordering::Relaxed);
        });
        AlwaysOn(word)
    }
}

impl Clock for AlwaysOn {
    fn now(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The OS coarse monotonic clock, read through the vDSO.
#[cfg(target_os = "linux")]
struct OsCoarse;

#[cfg(target_os = "linux")]
impl Clock for OsCoarse {
    fn now(&self) -> u64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }
}

fn child(variant: &str, seconds: u64) {
    let limit = Limit::per_second(10).expect("a valid limit");
    let allowed = match variant {
        "default" => TokenBucket::new(limit).check().is_allowed(),
        "always-on" => TokenBucket::with_clock(limit, AlwaysOn::start())
            .check()
            .is_allowed(),
        #[cfg(target_os = "linux")]
        "os-coarse" => TokenBucket::with_clock(limit, OsCoarse)
            .check()
            .is_allowed(),
        "precise" => TokenBucket::with_clock(limit, MonotonicClock::new())
            .check()
            .is_allowed(),
        other => panic!("unknown variant {other}"),
    };
    assert!(allowed);
    std::thread::sleep(Duration::from_millis(1_500));
    let (cpu0, t0) = (cpu_ns(), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (cpu, wall) = (cpu_ns() - cpu0, t0.elapsed());
    println!(
        "{variant:<10} {:>10.3} ms CPU in {:.1} s = {:.4}% of a core",
        cpu as f64 / 1e6,
        wall.as_secs_f64(),
        100.0 * cpu as f64 / wall.as_nanos() as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1], seconds);
    }
    println!("idle cost of each clock: one check(), 1.5 s, then {seconds} s of sleep measured");
    let me = std::env::current_exe().expect("own path");
    for variant in ["default", "always-on", "os-coarse", "precise"] {
        let status = std::process::Command::new(&me)
            .args(["--child", variant, "--seconds", &seconds.to_string()])
            .status()
            .expect("run the child");
        assert!(status.success(), "variant {variant} failed");
    }
}
