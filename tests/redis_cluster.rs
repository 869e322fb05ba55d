//! A real local Redis Cluster (3 masters + 3 replicas on loopback ports, made by
//! `redis-cli --cluster create`): the limiter follows the slot map, decides as in memory on
//! keys across many slots, answers by its failure policy within the timeout while a master is
//! down, and goes on after the failover. Needs `redis-server` and `redis-cli`; skips without
//! them, but `.ci/run` sets `TOLLGATE_REQUIRE_REDIS=1`, under which a missing binary fails.
#![cfg(all(feature = "redis", not(loom)))]

mod model;
#[path = "support/redis_server.rs"]
mod support;

#[path = "support/redis_nodes.rs"]
mod nodes;

use std::process::Command;
use std::time::{Duration, Instant};

use model::observe;
use nodes::{cli, port_free, wait_for, Nodes};
use support::Rng;
use tollgate::redis::{OnFailure, RedisLimitError, RedisLimiter};
use tollgate::{Limit, ManualClock, TokenBucket};

/// Six nodes made a cluster, stopped and removed on drop.
struct Cluster {
    nodes: Nodes,
}

/// Six free ports whose cluster bus ports (+10000) are free too, all below Linux's ephemeral
/// ports (32768 and up).
fn free_ports() -> Vec<u16> {
    let mut ports = Vec::new();
    let mut candidate = 10_000 + (std::process::id() % 1_500) as u16 * 4;
    while ports.len() < 6 {
        candidate = if candidate >= 16_990 {
            10_000
        } else {
            candidate + 1
        };
        if port_free(candidate) && port_free(candidate + 10_000) {
            ports.push(candidate);
        }
    }
    ports
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let mut nodes = Nodes::new("cluster")?;
        let ports = free_ports();
        for &port in &ports {
            let cluster_args = [
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "1000",
                // The other masters serve their slots while one is down.
                "--cluster-require-full-coverage",
                "no",
            ];
            nodes.spawn(port, &cluster_args.map(String::from));
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes };
        cluster.wait_ok();
        Some(cluster)
    }

    /// Until every live node says the cluster is ok and all slots are served, and every
    /// replica has synced with its master (one that never synced cannot take over).
    fn wait_ok(&self) {
        wait_for("the cluster to be ok", || {
            self.nodes.live().all(|p| {
                let info = cli(p, &["CLUSTER", "INFO"]);
                let repl = cli(p, &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            })
        });
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .live()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The port of the master serving `key`'s slot.
    fn master_of(&self, key: &str) -> u16 {
        let port = self.nodes.live().next().unwrap();
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let nodes = cli(port, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let owns = f[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).contains(&slot),
                None => range.parse::<u16>().is_ok_and(|s| s == slot),
            });
            if owns {
                let addr = f[1].split('@').next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        }
        panic!("no master serves slot {slot}");
    }
}

/// Explicit-time traces on `keys` (each its own slot, mostly): the cluster decides as the
/// in-memory bucket. Returns the decisions compared.
async fn differential(redis: &RedisLimiter, limit: Limit, keys: &[String], rng: &mut Rng) -> usize {
    let mut compared = 0;
    for key in keys {
        let clock = ManualClock::new();
        let bucket = TokenBucket::with_clock(limit, clock.clone());
        let mut now_us: u64 = 1_700_000_000_000_000 + rng.next() % 1_000_000_000;
        for _ in 0..12 {
            now_us += match rng.next() % 3 {
                0 => 0,
                1 => rng.next() % 300_000,
                _ => rng.next() % 3_000_000,
            };
            clock.set(now_us * 1000);
            let n = rng.next() % 4;
            let want = observe(&bucket.try_acquire(n).unwrap());
            let got = observe(
                &redis
                    .try_acquire_at(key.as_bytes(), n, now_us)
                    .await
                    .unwrap(),
            );
            assert_eq!(got, want, "key {key} n {n} at {now_us} us");
            compared += 1;
        }
    }
    compared
}

#[tokio::test]
async fn a_cluster_follows_slots_and_survives_a_master_failover() {
    let Some(mut cluster) = Cluster::start() else {
        return;
    };
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let limit = Limit::new(3, 1, Duration::from_secs(1)).unwrap();
    let timeout = Duration::from_millis(200);
    let redis = RedisLimiter::cluster(&urls[..1], limit, "c:")
        .timeout(timeout)
        .on_failure(OnFailure::FailClosed)
        .connect()
        .await
        .unwrap();
    let mut rng = Rng(0xC1A5_7E55_0000_0001);

    // Keys across many slots (each key is its own hash tag).
    let keys: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let masters: std::collections::HashSet<u16> = keys
        .iter()
        .map(|k| cluster.master_of(&format!("c:{{{k}}}")))
        .collect();
    assert_eq!(masters.len(), 3, "the keys span the three masters");
    let compared = differential(&redis, limit, &keys, &mut rng).await;

    // Many keys in one call, across slots and nodes.
    let calls: Vec<(String, u64)> = (0..30).map(|i| (format!("many-{i}"), 2)).collect();
    for answer in redis.try_acquire_many(&calls).await {
        assert_eq!(answer.unwrap().remaining(), 1);
    }

    // Kill the master of one key; keys on the other masters go on, and the dead master's keys
    // answer by the policy (fail closed) within the timeout, never hang.
    let victim_key = "user-0";
    let victim = cluster.master_of(&format!("c:{{{victim_key}}}"));
    let other_key = keys
        .iter()
        .find(|k| cluster.master_of(&format!("c:{{{k}}}")) != victim)
        .unwrap()
        .clone();
    cluster.nodes.kill(victim);
    let mut degraded = 0;
    let mut served_elsewhere = 0;
    let mut recovered = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let started = Instant::now();
        let d = redis.try_acquire(victim_key.as_bytes(), 0).await;
        let took = started.elapsed();
        // Generous against a loaded machine: the point is that nothing waits for the failover.
        assert!(
            took < timeout + Duration::from_secs(1),
            "a call took {took:?} (timeout {timeout:?})"
        );
        match d {
            Ok(d) if d.is_degraded() => {
                assert!(d.is_denied(), "fail closed");
                degraded += 1;
            }
            Ok(_) => {
                recovered = true;
                break;
            }
            Err(e) => panic!("the policy answers, not an error: {e}"),
        }
        if let Ok(d) = redis.try_acquire(other_key.as_bytes(), 0).await {
            served_elsewhere += u32::from(!d.is_degraded());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "failover: {degraded} degraded answers on the dead master's key, {served_elsewhere} \
         exact answers from the other masters meanwhile; {compared} decisions compared before"
    );
    if !recovered {
        let live = cluster.nodes.live().next().unwrap();
        panic!(
            "the limiter did not go on after the failover; last answer {:?}; nodes:\n{}",
            redis.try_acquire(victim_key.as_bytes(), 0).await,
            cli(live, &["CLUSTER", "NODES"])
        );
    }
    assert!(degraded > 0, "the master's death was not seen");
    assert!(
        served_elsewhere > 0,
        "the other masters did not serve meanwhile"
    );

    // After the failover: the same decisions as in memory again, on every slot.
    cluster.wait_ok();
    let fresh: Vec<String> = (0..30).map(|i| format!("after-{i}")).collect();
    let compared = differential(&redis, limit, &fresh, &mut rng).await;
    assert!(compared >= 300);
    // An unsupported use is still refused with a typed error, not a panic.
    assert!(matches!(
        redis.try_acquire(b"x", 4).await,
        Err(RedisLimitError::InsufficientCapacity(_))
    ));
}
