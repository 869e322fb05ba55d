//! Sentinel: a master, its replica and one sentinel on loopback ports. The limiter finds the
//! master through the sentinel, answers by its failure policy within the timeout when the
//! master dies, and follows the failover to the promoted replica. Needs `redis-server` and
//! `redis-cli`; skips without them, but fails under `TOLLGATE_REQUIRE_REDIS=1` (`.ci/run`).
#![cfg(all(feature = "redis", not(loom)))]

#[path = "support/redis_nodes.rs"]
mod nodes;

use std::time::{Duration, Instant};

use nodes::{cli, port_free, wait_for, Nodes};
use tollgate::redis::{OnFailure, RedisLimiter};
use tollgate::Limit;

fn free_port(after: u16) -> u16 {
    (after + 1..32_000)
        .find(|&p| port_free(p))
        .expect("a free port")
}

/// A master, its replica (synced) and a sentinel that sees it: (nodes, master, replica,
/// sentinel) ports.
fn start() -> Option<(Nodes, u16, u16, u16)> {
    let mut nodes = Nodes::new("sentinel")?;
    // Below Linux's ephemeral ports (32768 and up), away from the cluster test's.
    let base = 17_000 + (std::process::id() % 2_000) as u16;
    let master = free_port(base);
    let replica = free_port(master);
    let sentinel = free_port(replica);
    nodes.spawn(master, &[]);
    nodes.spawn(
        replica,
        &["--replicaof".into(), "127.0.0.1".into(), master.to_string()],
    );
    wait_for("the replica to sync", || {
        cli(replica, &["INFO", "replication"]).contains("master_link_status:up")
    });
    let conf = nodes.dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel}\nbind 127.0.0.1\n\
             sentinel monitor mymaster 127.0.0.1 {master} 1\n\
             sentinel down-after-milliseconds mymaster 500\n\
             sentinel failover-timeout mymaster 3000\n"
        ),
    )
    .unwrap();
    nodes.spawn_raw(sentinel, &[conf.as_os_str(), "--sentinel".as_ref()]);
    wait_for("the sentinel to see the replica", || {
        cli(sentinel, &["SENTINEL", "REPLICAS", "mymaster"]).contains(&replica.to_string())
    });
    Some((nodes, master, replica, sentinel))
}

#[tokio::test]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let Some((mut nodes, master, replica, sentinel)) = start() else {
        return;
    };
    // Five tokens that come back only in 2038 (one step of 2^30 s): no refill mid-test.
    let limit = Limit::new(5, 5, Duration::from_secs(1 << 30)).unwrap();
    let timeout = Duration::from_millis(200);
    let url = format!("redis://127.0.0.1:{sentinel}");
    let redis = RedisLimiter::sentinel(&[url.as_str()], "mymaster", limit, "s:")
        .timeout(timeout)
        .on_failure(OnFailure::FailOpen)
        .connect()
        .await
        .unwrap();
    for left in (0..5).rev() {
        let d = redis.try_acquire(b"ann", 1).await.unwrap();
        assert!(d.is_allowed() && !d.is_degraded());
        assert_eq!(d.remaining(), left);
    }
    assert!(redis.try_acquire(b"ann", 1).await.unwrap().is_denied());
    // The key is on the master (and replicated).
    assert!(cli(master, &["EXISTS", "s:{ann}"]).contains('1'));
    // Replication is asynchronous: wait until the replica has the last write (what a lost
    // master costs otherwise is documented on the module). `WAIT` from another connection
    // would not: it waits for that connection's writes.
    wait_for("the replica to have the drained bucket", || {
        cli(replica, &["HGET", "s:{ann}", "t"]).trim() == "0"
    });

    nodes.kill(master);
    let mut degraded = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        assert!(Instant::now() < deadline, "the failover was not followed");
        let started = Instant::now();
        let d = redis.try_acquire(b"bob", 1).await.unwrap();
        let took = started.elapsed();
        assert!(
            took < timeout + Duration::from_secs(1),
            "a call took {took:?} (timeout {timeout:?})"
        );
        if !d.is_degraded() {
            break d;
        }
        assert!(d.is_allowed(), "fail open");
        degraded += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("sentinel failover: {degraded} degraded answers, then the new master");
    assert!(degraded > 0, "the master's death was not seen");
    assert!(answer.is_allowed());
    assert!(cli(replica, &["INFO", "replication"]).contains("role:master"));
    // What the old master had replicated is still there: ann is still out of tokens.
    let d = redis.try_acquire(b"ann", 1).await.unwrap();
    assert!(!d.is_degraded());
    assert!(d.is_denied(), "the replicated bucket survived the failover");
}
