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
        let d = bucket.check();
        let verdict = if d.is_allowed() { "allowed" } else { "denied" };
        println!(
            "{i:>4}  {verdict:<8} {:>9}  {:>9.3} ms",
            d.remaining(),
            d.retry_after().as_secs_f64() * 1e3
        );
        wait = wait.max(d.retry_after());
    }
    println!("\nwaiting {wait:.3?} for the next refill...\n");
    std::thread::sleep(wait);
    for i in 16..=18 {
        let d = bucket.check();
        let verdict = if d.is_allowed() { "allowed" } else { "denied" };
        println!(
            "{i:>4}  {verdict:<8} {:>9}  {:>9.3} ms",
            d.remaining(),
            d.retry_after().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
