//! The classic bucket: capacity 10, 2 tokens back every second. A burst of 15 requests gets
//! 10 through; then we wait for the refill and try again.
//!
//! `cargo run --release --example quickstart`

use std::time::Duration;

use tollgate::{Limit, LimitError, TokenBucket};

fn main() -> Result<(), LimitError> {
    let limit = Limit::new(10, 2, Duration::from_secs(1))?;
    let bucket = TokenBucket::new(limit);
    println!("limit: capacity 10, 2 tokens every second (interval refill)\n");
    println!("burst of 15 requests:");
    println!(
        "{:>4}  {:<8} {:>9}  {:>12}",
        "req", "decision", "remaining", "retry after"
    );
    let mut wait = Duration::ZERO;
    for i in 1..=15 {
        wait = wait.max(request(&bucket, i));
    }
    // The default clock is coarse (it lags real time by up to ~1 ms, see `CoarseClock`), so
    // wait one upkeep interval more than the exact wait it reported.
    let wait = wait + tollgate::COARSE_UPKEEP_INTERVAL;
    println!(
        "\nwaiting {:.1} ms for the next refill...\n",
        wait.as_secs_f64() * 1e3
    );
    std::thread::sleep(wait);
    for i in 16..=18 {
        request(&bucket, i);
    }
    Ok(())
}

/// One request: prints its decision, returns its retry-after.
fn request(bucket: &TokenBucket, i: u32) -> Duration {
    let d = bucket.check();
    let verdict = if d.is_allowed() { "allowed" } else { "denied" };
    println!(
        "{i:>4}  {verdict:<8} {:>9}  {:>9.3} ms",
        d.remaining(),
        d.retry_after().as_secs_f64() * 1e3
    );
    d.retry_after()
}
