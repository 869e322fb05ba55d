//! Python bindings of tollgate: `tollgate._tollgate`, wrapped by the `tollgate` package
//! (`python/tollgate/`). Every decision is made by the Rust crate; this file only converts.
//!
//! The GIL is held for in-memory calls: a check takes tens of nanoseconds, less than releasing
//! and taking back the GIL costs. Redis calls are awaitable: the GIL is free while they wait.
//!
//! In-memory limiters read the precise monotonic clock, not the crate's default coarse clock:
//! a call from Python costs far more than a precise read, and the coarse clock's upkeep thread
//! (a tick every millisecond while calls come) would take CPU from the server's own core.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use tollgate::http::{
    ForwardedHeader, HeaderStyle, HeaderWriter, Key, KeyExtractor, PeerAddr, RequestInfo,
    TrustedProxies,
};
use tollgate::redis::{OnFailure, RedisLimitError, RedisLimiter};

create_exception!(
    _tollgate,
    InsufficientCapacity,
    PyValueError,
    "More tokens asked for than the bucket's capacity: such a request can never succeed."
);
create_exception!(
    _tollgate,
    RedisUnavailable,
    PyConnectionError,
    "Redis did not answer within the timeout, or the connection failed."
);

/// A duration from seconds (int or float) or a `datetime.timedelta`, exactly: a timedelta is
/// read from its days, seconds and microseconds.
fn duration(field: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    if let (Ok(days), Ok(secs), Ok(micros)) = (
        value.getattr("days").and_then(|d| d.extract::<i64>()),
        value.getattr("seconds").and_then(|d| d.extract::<i64>()),
        value
            .getattr("microseconds")
            .and_then(|d| d.extract::<i64>()),
    ) {
        let total = (i128::from(days) * 86_400 + i128::from(secs)) * 1_000_000 + i128::from(micros);
        return u64::try_from(total)
            .map(Duration::from_micros)
            .map_err(|_| PyValueError::new_err(format!("{field}: must not be negative")));
    }
    if let Ok(secs) = value.extract::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let secs: f64 = value.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "{field}: seconds (int or float) or a datetime.timedelta"
        ))
    })?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!(
            "{field}: {secs} is not a duration (a finite number of seconds, at least 0)"
        ))
    })
}

/// A count that must not be negative (a clear error, not an overflow).
fn count(field: &str, value: i64) -> PyResult<u64> {
    u64::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{field}: must not be negative, got {value}")))
}

fn limit_error(e: tollgate::LimitError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn capacity_error(e: tollgate::InsufficientCapacity) -> PyErr {
    InsufficientCapacity::new_err(e.to_string())
}

fn redis_error(e: RedisLimitError) -> PyErr {
    match e {
        RedisLimitError::InsufficientCapacity(e) => capacity_error(e),
        RedisLimitError::Unavailable(_) => RedisUnavailable::new_err(e.to_string()),
        RedisLimitError::UnsupportedLimit(_)
        | RedisLimitError::InvalidLimit(_)
        | RedisLimitError::InvalidUrl(_) => PyValueError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

fn timedelta<'py>(py: Python<'py>, d: Duration) -> PyResult<Bound<'py, PyAny>> {
    // timedelta(days, seconds, microseconds): microseconds rounded up (never a wait shorter
    // than the real one).
    // Beyond `timedelta.max` (999,999,999 days), `timedelta.max`.
    const MAX_SECS: u128 = 999_999_999 * 86_400 + 86_399;
    let micros = d.as_nanos().div_ceil(1_000);
    let (secs, micros) = match (micros / 1_000_000, micros % 1_000_000) {
        (secs, _) if secs > MAX_SECS => (MAX_SECS, 999_999),
        other => other,
    };
    py.import("datetime")?
        .getattr("timedelta")?
        .call1((0, secs as u64, micros as u32))
}

/// A rate limit: a bucket of `capacity` tokens getting `refill` tokens back every `interval`
/// (seconds or a `timedelta`), all at the end of each interval, or with `greedy=True` one at a
/// time, evenly spread. Invalid numbers raise `ValueError` naming the field.
#[pyclass(frozen, name = "Limit", module = "tollgate")]
struct PyLimit(tollgate::Limit);

#[pymethods]
impl PyLimit {
    #[new]
    #[pyo3(signature = (capacity, refill, interval, *, greedy = false))]
    fn new(
        capacity: i64,
        refill: i64,
        interval: &Bound<'_, PyAny>,
        greedy: bool,
    ) -> PyResult<Self> {
        let (c, r) = (count("capacity", capacity)?, count("refill", refill)?);
        let i = duration("interval", interval)?;
        let limit = if greedy {
            tollgate::Limit::greedy(c, r, i)
        } else {
            tollgate::Limit::new(c, r, i)
        };
        limit.map(PyLimit).map_err(limit_error)
    }

    /// `n` per second, one token every `1/n` s, bursts of `n`.
    #[staticmethod]
    fn per_second(n: i64) -> PyResult<Self> {
        tollgate::Limit::per_second(count("n", n)?)
            .map(PyLimit)
            .map_err(limit_error)
    }

    /// `n` per minute, evenly spread, bursts of `n`.
    #[staticmethod]
    fn per_minute(n: i64) -> PyResult<Self> {
        tollgate::Limit::per_minute(count("n", n)?)
            .map(PyLimit)
            .map_err(limit_error)
    }

    /// `n` per hour, evenly spread, bursts of `n`.
    #[staticmethod]
    fn per_hour(n: i64) -> PyResult<Self> {
        tollgate::Limit::per_hour(count("n", n)?)
            .map(PyLimit)
            .map_err(limit_error)
    }

    /// The same rate with another capacity.
    fn burst(&self, capacity: i64) -> PyResult<Self> {
        self.0
            .burst(count("capacity", capacity)?)
            .map(PyLimit)
            .map_err(limit_error)
    }

    #[getter]
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }

    #[getter]
    fn refill(&self) -> u64 {
        self.0.refill_amount()
    }

    /// The refill interval in seconds.
    #[getter]
    fn interval(&self) -> f64 {
        self.0.refill_interval().as_secs_f64()
    }

    #[getter]
    fn greedy(&self) -> bool {
        matches!(self.0.mode(), tollgate::Refill::Greedy)
    }

    /// Seconds an empty bucket takes to fill.
    #[getter]
    fn time_to_fill(&self) -> f64 {
        self.0.time_to_fill().as_secs_f64()
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.0 == other.0
    }

    fn __repr__(&self) -> String {
        format!(
            "Limit(capacity={}, refill={}, interval={:?}, greedy={})",
            self.0.capacity(),
            self.0.refill_amount(),
            self.0.refill_interval().as_secs_f64(),
            if self.greedy() { "True" } else { "False" }
        )
    }
}

/// The answer to a call: allowed or not, the tokens left, and the exact waits (seconds as
/// floats; `*_ns` as integers; `*_timedelta` as timedeltas).
#[pyclass(frozen, name = "Decision", module = "tollgate")]
struct PyDecision(tollgate::Decision);

#[pymethods]
impl PyDecision {
    #[getter]
    fn allowed(&self) -> bool {
        self.0.is_allowed()
    }

    fn __bool__(&self) -> bool {
        self.0.is_allowed()
    }

    #[getter]
    fn capacity(&self) -> u64 {
        self.0.capacity()
    }

    #[getter]
    fn remaining(&self) -> u64 {
        self.0.remaining()
    }

    /// Made by a Redis failure policy, not by the bucket: its numbers describe no bucket.
    #[getter]
    fn degraded(&self) -> bool {
        self.0.is_degraded()
    }

    #[getter]
    fn retry_after(&self) -> f64 {
        self.0.retry_after().as_secs_f64()
    }

    #[getter]
    fn reset_after(&self) -> f64 {
        self.0.reset_after().as_secs_f64()
    }

    #[getter]
    fn next_refill_after(&self) -> f64 {
        self.0.next_refill_after().as_secs_f64()
    }

    #[getter]
    fn retry_after_ns(&self) -> u128 {
        self.0.retry_after().as_nanos()
    }

    #[getter]
    fn reset_after_ns(&self) -> u128 {
        self.0.reset_after().as_nanos()
    }

    #[getter]
    fn next_refill_after_ns(&self) -> u128 {
        self.0.next_refill_after().as_nanos()
    }

    #[getter]
    fn retry_after_timedelta<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        timedelta(py, self.0.retry_after())
    }

    #[getter]
    fn reset_after_timedelta<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        timedelta(py, self.0.reset_after())
    }

    #[getter]
    fn next_refill_after_timedelta<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        timedelta(py, self.0.next_refill_after())
    }

    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, capacity={}, remaining={}, retry_after={:?}, reset_after={:?}, \
             next_refill_after={:?})",
            if self.0.is_allowed() { "True" } else { "False" },
            self.0.capacity(),
            self.0.remaining(),
            self.retry_after(),
            self.reset_after(),
            self.next_refill_after()
        )
    }
}

/// Tokens reserved: `cancel()` gives them back as an undo (never more than the bucket would
/// hold had they not been taken). A denied reservation (`granted` false) holds nothing.
#[pyclass(frozen, name = "Reservation", module = "tollgate")]
struct PyReservation {
    decision: tollgate::Decision,
    tokens: u64,
    held: Mutex<Held>,
}

enum Held {
    Bucket(tollgate::Reservation<'static, tollgate::MonotonicClock>),
    Key(tollgate::KeyedReservation<'static, String, tollgate::KeyHasher>),
    Nothing,
}

#[pymethods]
impl PyReservation {
    #[getter]
    fn granted(&self) -> bool {
        self.decision.is_allowed()
    }

    #[getter]
    fn decision(&self) -> PyDecision {
        PyDecision(self.decision)
    }

    #[getter]
    fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Gives the tokens back (an undo) and returns the bucket after it. A second call, or a
    /// call on a denied reservation, changes nothing and returns the reservation's decision.
    fn cancel(&self) -> PyDecision {
        let held = std::mem::replace(
            &mut *self.held.lock().unwrap_or_else(|p| p.into_inner()),
            Held::Nothing,
        );
        PyDecision(match held {
            Held::Bucket(r) => r.cancel(),
            Held::Key(r) => r.cancel(),
            Held::Nothing => self.decision,
        })
    }
}

fn reservation(
    result: Result<(tollgate::Decision, Held), tollgate::ReserveError>,
    tokens: u64,
) -> PyResult<PyReservation> {
    let (decision, held) = match result {
        Ok(ok) => ok,
        Err(tollgate::ReserveError::Denied(d)) => (d, Held::Nothing),
        Err(tollgate::ReserveError::InsufficientCapacity(e)) => return Err(capacity_error(e)),
        Err(e) => return Err(PyRuntimeError::new_err(e.to_string())),
    };
    Ok(PyReservation {
        decision,
        tokens,
        held: Mutex::new(held),
    })
}

/// One token bucket (thread-safe, lock-free).
#[pyclass(frozen, name = "TokenBucket", module = "tollgate")]
struct PyTokenBucket(Arc<tollgate::TokenBucket<tollgate::MonotonicClock>>);

#[pymethods]
impl PyTokenBucket {
    #[new]
    fn new(limit: &PyLimit) -> Self {
        PyTokenBucket(Arc::new(tollgate::TokenBucket::with_clock(
            limit.0,
            tollgate::MonotonicClock::new(),
        )))
    }

    /// Takes one token if it is there.
    fn check(&self) -> PyDecision {
        PyDecision(self.0.check())
    }

    /// Takes `n` tokens if they are there (0: a peek). Raises `InsufficientCapacity` when `n`
    /// exceeds the capacity.
    #[pyo3(signature = (n = 1))]
    fn try_acquire(&self, n: i64) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        self.0
            .try_acquire(n)
            .map(PyDecision)
            .map_err(capacity_error)
    }

    /// The bucket now, taking nothing.
    fn snapshot(&self) -> PyDecision {
        PyDecision(self.0.snapshot())
    }

    /// Gives `n` tokens back, capped at the capacity.
    fn refund(&self, n: i64) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        Ok(PyDecision(self.0.refund(n)))
    }

    /// Adds `n` tokens, capped at the capacity.
    fn add_tokens(&self, n: i64) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        Ok(PyDecision(self.0.add_tokens(n)))
    }

    /// Fills the bucket.
    fn reset(&self) -> PyDecision {
        PyDecision(self.0.reset())
    }

    /// Takes `n` tokens as a `Reservation` (`granted` false when they are not there).
    #[pyo3(signature = (n = 1))]
    fn reserve(&self, n: i64) -> PyResult<PyReservation> {
        let n = count("n", n)?;
        let result = self
            .0
            .reserve_owned(n)
            .map(|r| (*r.decision(), Held::Bucket(r)));
        reservation(result, n)
    }

    #[getter]
    fn limit(&self) -> PyLimit {
        PyLimit(*self.0.limit())
    }
}

/// Calls `f` with the key as text: a `str` as it is (no copy), `bytes` decoded as Latin-1 (one
/// character per byte, so distinct bytes stay distinct), an `int` in decimal.
fn with_key<R>(key: &Bound<'_, PyAny>, f: impl FnOnce(&str) -> R) -> PyResult<R> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(f(s.to_str()?));
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        let text: String = b.as_bytes().iter().map(|&c| char::from(c)).collect();
        return Ok(f(&text));
    }
    if let Ok(i) = key.extract::<i128>() {
        return Ok(f(&i.to_string()));
    }
    Err(PyTypeError::new_err("a key is a str, bytes or int"))
}

/// One bucket per key (str, bytes or int), in sharded concurrent maps; idle keys are evicted
/// without changing any decision, so memory follows the active keys.
#[pyclass(frozen, name = "KeyedLimiter", module = "tollgate")]
struct PyKeyedLimiter(
    Arc<tollgate::KeyedLimiter<String>>,
    /// Held for its `Drop`, which stops the background evictor.
    #[allow(dead_code)]
    tollgate::Evictor,
);

#[pymethods]
impl PyKeyedLimiter {
    /// `idle_ttl`: seconds (or a timedelta) a full bucket stays before eviction (default: the
    /// limit's time to fill, at least 1 s). `max_keys`: a hard bound on keys; at it new keys
    /// share one overflow bucket (`at_capacity="overflow"`) or are denied (`"deny"`).
    #[new]
    #[pyo3(signature = (limit, *, idle_ttl = None, max_keys = None, at_capacity = "overflow"))]
    fn new(
        limit: &PyLimit,
        idle_ttl: Option<&Bound<'_, PyAny>>,
        max_keys: Option<i64>,
        at_capacity: &str,
    ) -> PyResult<Self> {
        let mut builder =
            tollgate::KeyedLimiter::builder(limit.0).clock(tollgate::MonotonicClock::new());
        if let Some(ttl) = idle_ttl {
            builder = builder.idle_ttl(duration("idle_ttl", ttl)?);
        }
        let policy = match at_capacity {
            "overflow" => tollgate::AtCapacity::Overflow,
            "deny" => tollgate::AtCapacity::Deny,
            other => {
                return Err(PyValueError::new_err(format!(
                    "at_capacity: \"overflow\" or \"deny\", got {other:?}"
                )))
            }
        };
        if let Some(max) = max_keys {
            let max = usize::try_from(count("max_keys", max)?).unwrap_or(usize::MAX);
            builder = builder.max_keys(max, policy);
        }
        let limiter = Arc::new(builder.build());
        // As the Rust HTTP layer does: a background pass every `eviction_period`, so memory
        // comes back after a flood of keys even if no request follows (stops on drop).
        let evictor = limiter.spawn_evictor(limiter.eviction_period());
        Ok(PyKeyedLimiter(limiter, evictor))
    }

    /// Takes one token from `key`'s bucket.
    fn check(&self, key: &Bound<'_, PyAny>) -> PyResult<PyDecision> {
        with_key(key, |k| PyDecision(self.0.check_key(k)))
    }

    /// Takes `n` tokens from `key`'s bucket if they are there (0: a peek).
    #[pyo3(signature = (key, n = 1))]
    fn try_acquire(&self, key: &Bound<'_, PyAny>, n: i64) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        with_key(key, |k| self.0.try_acquire_key(k, n))?
            .map(PyDecision)
            .map_err(capacity_error)
    }

    /// `key`'s bucket now, taking nothing and creating nothing.
    fn snapshot(&self, key: &Bound<'_, PyAny>) -> PyResult<PyDecision> {
        with_key(key, |k| PyDecision(self.0.snapshot_key(k)))
    }

    /// Gives `n` tokens back to `key`'s bucket, capped at the capacity.
    fn refund(&self, key: &Bound<'_, PyAny>, n: i64) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        with_key(key, |k| PyDecision(self.0.refund_key(k, n)))
    }

    /// Adds `n` tokens to `key`'s bucket, capped at the capacity.
    fn add_tokens(&self, key: &Bound<'_, PyAny>, n: i64) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        with_key(key, |k| PyDecision(self.0.add_tokens_key(k, n)))
    }

    /// Fills `key`'s bucket.
    fn reset(&self, key: &Bound<'_, PyAny>) -> PyResult<PyDecision> {
        with_key(key, |k| PyDecision(self.0.reset_key(k)))
    }

    /// Takes `n` tokens from `key` as a `Reservation` (`granted` false when they are not there).
    #[pyo3(signature = (key, n = 1))]
    fn reserve(&self, key: &Bound<'_, PyAny>, n: i64) -> PyResult<PyReservation> {
        let n = count("n", n)?;
        let result = with_key(key, |k| {
            self.0
                .reserve_key_owned(k, n)
                .map(|r| (*r.decision(), Held::Key(r)))
        })?;
        reservation(result, n)
    }

    /// Evicts every idle full bucket now; returns how many (never needed for bounded memory:
    /// a background thread does it every `eviction_period`). Runs without the GIL.
    fn evict_idle(&self, py: Python<'_>) -> usize {
        let limiter = &self.0;
        py.detach(|| limiter.evict_idle())
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    #[getter]
    fn limit(&self) -> PyLimit {
        PyLimit(*self.0.limit())
    }
}

/// The key's bytes for Redis: a `str` in UTF-8 (so Rust's `b"name"` and Python's `"name"` are
/// one key), `bytes` as they are, an `int` in decimal.
fn redis_key(key: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes().to_vec());
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(i) = key.extract::<i128>() {
        return Ok(i.to_string().into_bytes());
    }
    Err(PyTypeError::new_err("a key is a str, bytes or int"))
}

/// One limit shared by every process (Rust or Python) that uses the same Redis, limit and key
/// prefix: one atomic script per call, the server's clock. Awaitable; create it with
/// `await RedisLimiter.connect(...)`.
#[pyclass(frozen, name = "RedisLimiter", module = "tollgate")]
struct PyRedisLimiter(RedisLimiter);

#[pymethods]
impl PyRedisLimiter {
    /// Connects. `timeout`: seconds per call (default 0.05); past it, `on_failure` decides:
    /// `"error"` raises `RedisUnavailable`, `"open"` allows, `"closed"` denies (both marked
    /// `degraded`). `denial_cache`: deny keys locally until Redis said they may retry (about
    /// that many keys held; None: off).
    #[staticmethod]
    #[pyo3(signature = (url, limit, prefix, *, timeout = 0.05, on_failure = "error", denial_cache = None))]
    fn connect<'py>(
        py: Python<'py>,
        url: &str,
        limit: &PyLimit,
        prefix: &str,
        timeout: f64,
        on_failure: &str,
        denial_cache: Option<usize>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let on_failure = match on_failure {
            "error" => OnFailure::ReturnError,
            "open" => OnFailure::FailOpen,
            "closed" => OnFailure::FailClosed,
            other => {
                return Err(PyValueError::new_err(format!(
                    "on_failure: \"error\", \"open\" or \"closed\", got {other:?}"
                )))
            }
        };
        let timeout = Duration::try_from_secs_f64(timeout).map_err(|_| {
            PyValueError::new_err(format!("timeout: {timeout} is not a number of seconds"))
        })?;
        let builder = RedisLimiter::builder(url, limit.0, prefix)
            .timeout(timeout)
            .on_failure(on_failure)
            .denial_cache(denial_cache);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            builder
                .connect()
                .await
                .map(PyRedisLimiter)
                .map_err(redis_error)
        })
    }

    /// Takes `n` tokens from `key`'s shared bucket if they are there.
    #[pyo3(signature = (key, n = 1))]
    fn try_acquire<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        n: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = count("n", n)?;
        let key = redis_key(key)?;
        let limiter = self.0.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            limiter
                .try_acquire(&key, n)
                .await
                .map(PyDecision)
                .map_err(redis_error)
        })
    }

    /// Takes one token from `key`'s shared bucket.
    fn check<'py>(&self, py: Python<'py>, key: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.try_acquire(py, key, 1)
    }

    #[getter]
    fn limit(&self) -> PyLimit {
        PyLimit(*self.0.limit())
    }
}

/// The rate-limit headers of the Rust HTTP layer for one policy: `RateLimit` and
/// `RateLimit-Policy` (and with `legacy=True` the `X-RateLimit-*` trio), as ASGI header pairs.
#[pyclass(frozen, name = "Headers", module = "tollgate")]
struct PyHeaders(HeaderWriter);

#[pymethods]
impl PyHeaders {
    #[new]
    #[pyo3(signature = (limit, policy = "default", legacy = false))]
    fn new(limit: &PyLimit, policy: &str, legacy: bool) -> PyResult<Self> {
        let style = if legacy {
            HeaderStyle::IetfAndLegacy
        } else {
            HeaderStyle::Ietf
        };
        HeaderWriter::new(policy, &limit.0, style)
            .map(PyHeaders)
            .map_err(|e| PyValueError::new_err(format!("policy: {e}")))
    }

    /// The headers for `decision` (none for a degraded one), lower-case names.
    fn for_decision<'py>(
        &self,
        py: Python<'py>,
        decision: &PyDecision,
    ) -> Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let mut map = http::HeaderMap::new();
        self.0.apply(&decision.0, &mut map);
        map.iter()
            .map(|(name, value)| {
                (
                    PyBytes::new(py, name.as_str().as_bytes()),
                    PyBytes::new(py, value.as_bytes()),
                )
            })
            .collect()
    }

    /// `Retry-After` for a denial: whole seconds, rounded up, at least 1.
    #[staticmethod]
    fn retry_after(decision: &PyDecision) -> u64 {
        HeaderWriter::retry_after(&decision.0)
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// An RFC 9457 problem body: (content type, body bytes).
    #[staticmethod]
    fn problem<'py>(
        py: Python<'py>,
        status: u16,
        detail: &str,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let status = http::StatusCode::from_u16(status)
            .map_err(|_| PyValueError::new_err(format!("status: {status} is not a status")))?;
        let (content_type, body) = HeaderWriter::problem(status, detail);
        Ok((
            PyBytes::new(py, content_type.as_bytes()),
            PyBytes::new(py, &body),
        ))
    }
}

/// The client IP behind trusted proxies, by the Rust layer's rule: the rightmost hop of the
/// one named forwarding header that is not a trusted proxy (or the peer, when the peer is not
/// trusted). IPv6 clients are keyed per /`ipv6_prefix` (default 64).
#[pyclass(frozen, name = "ClientIp", module = "tollgate")]
struct PyClientIp(KeyExtractor);

#[pymethods]
impl PyClientIp {
    #[new]
    #[pyo3(signature = (trusted, header = "x-forwarded-for", ipv6_prefix = 64))]
    fn new(trusted: Vec<String>, header: &str, ipv6_prefix: u8) -> PyResult<Self> {
        let trusted = TrustedProxies::from_cidrs(&trusted)
            .map_err(|e| PyValueError::new_err(format!("trusted: {e}")))?;
        let header = match header.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            other => {
                return Err(PyValueError::new_err(format!(
                    "header: \"x-forwarded-for\" or \"forwarded\", got {other:?}"
                )))
            }
        };
        Ok(PyClientIp(
            KeyExtractor::client_ip(trusted, header).ipv6_prefix(ipv6_prefix),
        ))
    }

    /// The client's key (an address, or an IPv6 prefix) for a peer address and the request's
    /// headers (ASGI pairs of bytes); None when it cannot be found.
    fn key(&self, peer: Option<&str>, headers: Vec<(Vec<u8>, Vec<u8>)>) -> Option<String> {
        let mut req = http::Request::new(());
        for (name, value) in headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(&name),
                http::HeaderValue::from_bytes(&value),
            ) {
                req.headers_mut().append(name, value);
            }
        }
        if let Some(addr) = peer.and_then(|p| {
            p.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| std::net::SocketAddr::new(ip, 0))
        }) {
            req.extensions_mut().insert(PeerAddr(addr));
        }
        match self.0.extract(&RequestInfo::new(&req, None))? {
            Key::Ip(ip) => Some(ip.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

#[pymodule]
fn _tollgate(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyLimit>()?;
    m.add_class::<PyDecision>()?;
    m.add_class::<PyReservation>()?;
    m.add_class::<PyTokenBucket>()?;
    m.add_class::<PyKeyedLimiter>()?;
    m.add_class::<PyRedisLimiter>()?;
    m.add_class::<PyHeaders>()?;
    m.add_class::<PyClientIp>()?;
    m.add(
        "InsufficientCapacity",
        py.get_type::<InsufficientCapacity>(),
    )?;
    m.add("RedisUnavailable", py.get_type::<RedisUnavailable>())?;
    Ok(())
}
