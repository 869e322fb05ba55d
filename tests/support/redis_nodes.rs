//! Redis nodes on loopback TCP ports that a test starts itself (a cluster, a Sentinel set-up):
//! starting them each in its own directory, `redis-cli`, waiting, killing, cleaning up.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Nodes by port, killed and their directory removed on drop.
pub struct Nodes {
    pub children: Vec<(u16, Option<Child>)>,
    pub dir: PathBuf,
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Nodes {
    /// An empty set in a fresh temp directory named after `name`; `None` (the test skips)
    /// without `redis-server` and `redis-cli`, but under `TOLLGATE_REQUIRE_REDIS` (CI) a
    /// missing binary fails the test.
    pub fn new(name: &str) -> Option<Nodes> {
        if !have("redis-server") || !have("redis-cli") {
            assert!(
                std::env::var_os("TOLLGATE_REQUIRE_REDIS").is_none(),
                "redis-server and redis-cli are required"
            );
            eprintln!("skipping: redis-server and redis-cli are needed");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("tollgate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Some(Nodes {
            children: Vec::new(),
            dir,
        })
    }

    /// Starts a `redis-server` on `port` with `extra` arguments, in a directory of its own
    /// (a replica writes its copy of the data there), persistence off, and replicas synced at
    /// once (the default waits 5 s for more replicas: a replica that never synced cannot take
    /// over); waits until it answers.
    pub fn spawn(&mut self, port: u16, extra: &[String]) {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.children.push((port, Some(child)));
        wait_for("the node to answer", || {
            cli(port, &["PING"]).contains("PONG")
        });
    }

    /// Starts `redis-server` with exactly `args` (a sentinel's configuration file).
    pub fn spawn_raw(&mut self, port: u16, args: &[&std::ffi::OsStr]) {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.children.push((port, Some(child)));
    }

    /// The ports of the nodes still running.
    pub fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.children
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
    }

    pub fn kill(&mut self, port: u16) {
        let node = self.children.iter_mut().find(|(p, _)| *p == port).unwrap();
        let mut child = node.1.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
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

/// What `redis-cli` prints for `args` sent to the node on `port`.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `port` (on loopback) is free now.
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Until `ok`, for at most 30 s.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
