//! The connection a [`RedisLimiter`](super::RedisLimiter) talks through: one server (a
//! multiplexed connection that reconnects by itself), a Redis Cluster (follows `MOVED` / `ASK`
//! and refreshes its slot map after a failover), or a master found through Sentinel (found
//! again after a failure: the master may have moved).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{RedisResult, ScriptInvocation};

use super::Outage;

/// One call's answer in a batch: Redis's, or no answer within the timeout.
pub(super) type CallResult = Result<RedisResult<Vec<i64>>, Duration>;

/// Where the limiter's buckets live.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<Sentinel>),
}

/// A master found through Sentinel, and the means to find it again.
pub(super) struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    current: arc_swap::ArcSwap<ConnectionManager>,
    /// A search for the master is under way (one at a time).
    searching: AtomicBool,
    config: ConnectionManagerConfig,
    wait: Duration,
}

impl Sentinel {
    /// Asks the sentinels for the master and connects to it, within `wait`.
    pub(super) async fn connect(
        mut client: SentinelClient,
        config: ConnectionManagerConfig,
        wait: Duration,
    ) -> RedisResult<Sentinel> {
        let con = master(&mut client, &config, wait).await?;
        Ok(Sentinel {
            client: tokio::sync::Mutex::new(client),
            current: arc_swap::ArcSwap::from_pointee(con),
            searching: AtomicBool::new(false),
            config,
            wait,
        })
    }

    /// After a failed call: ask the sentinels again, in the background (one search at a time;
    /// calls meanwhile use the connection they have, and fail by the limiter's policy).
    fn search(self: &Arc<Self>) {
        // Relaxed: a flag for "one search at a time"; the connection itself is published by
        // the ArcSwap.
        if self.searching.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.searching.store(false, Ordering::Relaxed);
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            let found = {
                let mut client = this.client.lock().await;
                master(&mut client, &this.config, this.wait).await
            };
            match found {
                Ok(con) => this.current.store(Arc::new(con)),
                Err(e) => tracing::debug!(error = %e, "tollgate: sentinel: master not found yet"),
            }
            // Not too often: a failing search waits before the next may start.
            tokio::time::sleep(Duration::from_millis(100)).await;
            this.searching.store(false, Ordering::Relaxed);
        });
    }
}

async fn master(
    client: &mut SentinelClient,
    config: &ConnectionManagerConfig,
    wait: Duration,
) -> RedisResult<ConnectionManager> {
    let timed_out = || redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
    let found = tokio::time::timeout(wait, client.async_get_client())
        .await
        .map_err(|_| timed_out())??;
    tokio::time::timeout(
        wait,
        ConnectionManager::new_with_config(found, config.clone()),
    )
    .await
    .map_err(|_| timed_out())?
}

impl Conn {
    /// Runs one script call.
    pub(super) async fn invoke(&self, inv: &ScriptInvocation<'_>) -> RedisResult<Vec<i64>> {
        match self {
            Conn::Single(c) => inv.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => inv.invoke_async(&mut c.clone()).await,
            Conn::Sentinel(s) => {
                let mut c = (**s.current.load()).clone();
                inv.invoke_async(&mut c).await
            }
        }
    }

    /// Runs many script calls in one round trip (a pipeline; on a cluster, concurrently: one
    /// pipeline cannot span slots), within `timeout`: the whole pipeline, or on a cluster each
    /// call (a dead master fails only its own keys' calls). The script is loaded first when a
    /// call says `NOSCRIPT` (such a call did nothing), and those calls are sent again.
    pub(super) async fn invoke_many(
        &self,
        invs: &[ScriptInvocation<'_>],
        timeout: Duration,
    ) -> Result<Vec<CallResult>, Outage> {
        let whole = |r: Result<RedisResult<Vec<RedisResult<Vec<i64>>>>, _>| match r {
            Ok(Ok(all)) => Ok(all.into_iter().map(Ok).collect()),
            Ok(Err(e)) => Err(Outage::Redis(e)),
            Err(_) => Err(Outage::Timeout(timeout)),
        };
        match self {
            Conn::Single(c) => {
                whole(tokio::time::timeout(timeout, pipeline(&mut c.clone(), invs)).await)
            }
            Conn::Sentinel(s) => {
                let mut c = (**s.current.load()).clone();
                whole(tokio::time::timeout(timeout, pipeline(&mut c, invs)).await)
            }
            Conn::Cluster(c) => {
                let calls = invs.iter().map(|inv| {
                    let mut c = c.clone();
                    async move {
                        match tokio::time::timeout(timeout, inv.invoke_async(&mut c)).await {
                            Ok(r) => Ok(r),
                            Err(_) => Err(timeout),
                        }
                    }
                });
                Ok(futures_util::future::join_all(calls).await)
            }
        }
    }

    /// Runs a plain command (on a cluster: on a node of its choosing).
    pub(super) async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Sentinel(s) => cmd.query_async(&mut (**s.current.load()).clone()).await,
        }
    }

    /// A call failed or timed out: under Sentinel, the master may have moved.
    pub(super) fn failed(&self) {
        if let Conn::Sentinel(s) = self {
            s.search();
        }
    }
}

async fn pipeline<C: redis::aio::ConnectionLike>(
    con: &mut C,
    invs: &[ScriptInvocation<'_>],
) -> RedisResult<Vec<RedisResult<Vec<i64>>>> {
    let send = |which: &[usize]| {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for &i in which {
            pipe.invoke_script(&invs[i]);
        }
        pipe
    };
    let all: Vec<usize> = (0..invs.len()).collect();
    let mut out: Vec<RedisResult<Vec<i64>>> = send(&all).query_async(con).await?;
    let missing: Vec<usize> = (0..out.len())
        .filter(|&i| {
            matches!(&out[i], Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        })
        .collect();
    if let Some(&first) = missing.first() {
        invs[first].load_async(con).await?;
        let again: Vec<RedisResult<Vec<i64>>> = send(&missing).query_async(con).await?;
        for (i, r) in missing.into_iter().zip(again) {
            out[i] = r;
        }
    }
    Ok(out)
}
