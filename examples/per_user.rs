//! Per-user limits: five users share a `KeyedLimiter` (capacity 5, 5 per second, greedy).
//! One of them hammers the API; the others are unaffected.
//!
//! `cargo run --release --example per_user`

use std::time::Duration;

use tollgate::{KeyedLimiter, Limit, LimitError};

fn main() -> Result<(), LimitError> {
    let limiter: KeyedLimiter<String> = KeyedLimiter::new(Limit::per_second(5)?);
    let users = ["alice", "bob", "carol", "dave", "mallory"];
    println!("limit per user: 5 per second (one token every 200 ms), burst 5");
    println!("mallory sends 50 requests every 100 ms; the others one every 200 ms\n");
    println!(
        "{:>6}  {}",
        "time",
        users.map(|u| format!("{u:>16}")).join("")
    );
    for tick in 0..10u32 {
        let mut row = String::new();
        for user in users {
            let tries = match user {
                "mallory" => 50,
                _ if tick % 2 == 0 => 1,
                _ => 0,
            };
            let allowed = (0..tries)
                .filter(|_| limiter.check_key(user).is_allowed())
                .count();
            let cell = if tries == 0 {
                "-".to_string()
            } else {
                format!("{allowed}/{tries} allowed")
            };
            row.push_str(&format!("{cell:>16}"));
        }
        println!("{:>4}ms  {row}", tick * 100);
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\nkeys held: {}", limiter.len());
    Ok(())
}
