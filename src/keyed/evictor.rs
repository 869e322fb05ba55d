//! An optional background thread that makes full eviction passes on a timer
//! ([`KeyedLimiter::spawn_evictor`]); the HTTP layer runs its own.

#[cfg(not(loom))]
use std::hash::{BuildHasher, Hash};
#[cfg(not(loom))]
use std::time::Duration;

#[cfg(not(loom))]
use super::KeyedLimiter;

#[cfg(not(loom))]
impl<K, S> KeyedLimiter<K, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Starts a background thread that calls [`evict_idle`](KeyedLimiter::evict_idle) every
    /// `period`. It stops when the returned handle drops (or when the limiter is dropped).
    /// Optional: sweeps also run automatically on new keys.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tollgate::{KeyedLimiter, Limit};
    /// let limiter: Arc<KeyedLimiter<u64>> = Arc::new(KeyedLimiter::new(Limit::per_second(5)?));
    /// let evictor = limiter.spawn_evictor(Duration::from_secs(30));
    /// drop(evictor); // stops and joins the thread
    /// # Ok::<(), tollgate::LimitError>(())
    /// ```
    pub fn spawn_evictor(self: &std::sync::Arc<Self>, period: Duration) -> Evictor {
        let weak = std::sync::Arc::downgrade(self);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tollgate-evictor".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    match weak.upgrade() {
                        Some(limiter) => {
                            limiter.evict_idle();
                        }
                        None => break,
                    }
                }
            })
            .ok();
        Evictor {
            stop: Some(stop),
            thread,
        }
    }
}

/// A running background evictor; dropping it stops the thread.
#[derive(Debug)]
pub struct Evictor {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Evictor {
    /// Whether the thread was started (spawning can fail; eviction then stays automatic only).
    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for Evictor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
