//! Sentinel: a master, its replica and one sentinel on loopback ports. The limiter finds the
//! master through the sentinel, answers by its failure policy within the timeout when the
//! master dies, and follows the failover to the promoted replica. Needs `redis-server` and
//! `redis-cli`; skips without them, but fails under `TOLLGATE_REQUIRE_REDIS=1` (`.ci/run`).
#![cfg(all(feature = "redis", not(loom)))]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate::redis::{OnFailure, RedisLimiter};
use tollgate::Limit;

struct Nodes {
    children: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port(after: u16) -> u16 {
    (after + 1..32_000)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port")
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Nodes {
    fn start() -> Option<(Nodes, u16, u16, u16)> {
        let have = |bin: &str| {
            Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !have("redis-server") || !have("redis-cli") {
            assert!(
                std::env::var_os("TOLLGATE_REQUIRE_REDIS").is_none(),
                "redis-server and redis-cli are required"
            );
            eprintln!("skipping: redis-server and redis-cli are needed");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("tollgate-sentinel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Nodes {
            children: Vec::new(),
            dir,
        };
        // Below Linux's ephemeral ports (32768 and up), away from the cluster test's.
        let base = 17_000 + (std::process::id() % 2_000) as u16;
        let master = free_port(base);
        let replica = free_port(master);
        let sentinel = free_port(replica);
        let root = nodes.dir.clone();
        let server = |port: u16, extra: &[String]| {
            // Each node its own directory: a replica writes its copy of the data there.
            let dir = root.join(port.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&dir)
                .args(["--save", "", "--appendonly", "no"])
                .args(["--repl-diskless-sync-delay", "0"])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts")
        };
        let m = server(master, &[]);
        nodes.children.push((master, Some(m)));
        let r = server(
            replica,
            &["--replicaof".into(), "127.0.0.1".into(), master.to_string()],
        );
        nodes.children.push((replica, Some(r)));
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
        let s = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel starts");
        nodes.children.push((sentinel, Some(s)));
        wait_for("the sentinel to see the replica", || {
            cli(sentinel, &["SENTINEL", "REPLICAS", "mymaster"]).contains(&replica.to_string())
        });
        Some((nodes, master, replica, sentinel))
    }

    fn kill(&mut self, port: u16) {
        let node = self.children.iter_mut().find(|(p, _)| *p == port).unwrap();
        let mut child = node.1.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[tokio::test]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let Some((mut nodes, master, replica, sentinel)) = Nodes::start() else {
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
