//! What the Redis tests share: a private `redis-server` they start themselves, a raw
//! connection to it, a small deterministic random source.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A private redis-server on a unix socket in a temp dir, stopped on drop.
pub struct Server {
    pub child: Option<Child>,
    pub dir: PathBuf,
}

impl Server {
    pub fn start() -> Option<Server> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("TOLLGATE_REQUIRE_REDIS").is_none(),
                "redis-server is required (TOLLGATE_REQUIRE_REDIS is set)"
            );
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

    pub fn sock(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.sock().display())
    }

    pub fn spawn(&mut self) {
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
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
    }

    pub fn kill(&mut self) {
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

pub async fn raw(server: &Server) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A limiter on `server` with a 2 s timeout (generous: tests must not fail on a slow machine).
#[cfg(feature = "redis")]
pub async fn connect(
    server: &Server,
    limit: tollgate::Limit,
    prefix: &str,
) -> tollgate::redis::RedisLimiter {
    tollgate::redis::RedisLimiter::builder(&server.url(), limit, prefix)
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap()
}

/// Pseudo-random numbers for traces (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
