//! The in-memory limiters: `TokenBucket`, `KeyedLimiter`, and their `Reservation`.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::limit::{capacity_error, count, duration, PyDecision, PyLimit};

/// Tokens reserved: `cancel()` gives them back as an undo (never more than the bucket would
/// hold had they not been taken). A denied reservation (`granted` false) holds nothing.
#[pyclass(frozen, name = "Reservation", module = "tollgate")]
pub(crate) struct PyReservation {
    decision: tollgate::Decision,
    tokens: u64,
    held: Mutex<Held>,
}

pub(crate) enum Held {
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

pub(crate) fn reservation(
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
pub(crate) struct PyTokenBucket(pub(crate) Arc<tollgate::TokenBucket<tollgate::MonotonicClock>>);

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
    fn try_acquire(&self, n: i128) -> PyResult<PyDecision> {
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
    fn refund(&self, n: i128) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        Ok(PyDecision(self.0.refund(n)))
    }

    /// Adds `n` tokens, capped at the capacity.
    fn add_tokens(&self, n: i128) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        Ok(PyDecision(self.0.add_tokens(n)))
    }

    /// Fills the bucket.
    fn reset(&self) -> PyDecision {
        PyDecision(self.0.reset())
    }

    /// Takes `n` tokens as a `Reservation` (`granted` false when they are not there).
    #[pyo3(signature = (n = 1))]
    fn reserve(&self, n: i128) -> PyResult<PyReservation> {
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
pub(crate) fn with_key<R>(key: &Bound<'_, PyAny>, f: impl FnOnce(&str) -> R) -> PyResult<R> {
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
pub(crate) struct PyKeyedLimiter(
    pub(crate) Arc<tollgate::KeyedLimiter<String>>,
    /// The background evictor, never joined: dropping an `Evictor` joins its thread, which
    /// would block with the GIL held, and in a forked child (a pre-forking server) that thread
    /// does not exist. The thread ends by itself at its next tick once the limiter is gone (it
    /// holds only a weak reference).
    #[allow(dead_code)]
    std::mem::ManuallyDrop<tollgate::Evictor>,
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
        max_keys: Option<i128>,
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
        // comes back after a flood of keys even if no request follows.
        let evictor = limiter.spawn_evictor(limiter.eviction_period());
        Ok(PyKeyedLimiter(
            limiter,
            std::mem::ManuallyDrop::new(evictor),
        ))
    }

    /// Takes one token from `key`'s bucket.
    fn check(&self, key: &Bound<'_, PyAny>) -> PyResult<PyDecision> {
        with_key(key, |k| PyDecision(self.0.check_key(k)))
    }

    /// Takes `n` tokens from `key`'s bucket if they are there (0: a peek).
    #[pyo3(signature = (key, n = 1))]
    fn try_acquire(&self, key: &Bound<'_, PyAny>, n: i128) -> PyResult<PyDecision> {
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
    fn refund(&self, key: &Bound<'_, PyAny>, n: i128) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        with_key(key, |k| PyDecision(self.0.refund_key(k, n)))
    }

    /// Adds `n` tokens to `key`'s bucket, capped at the capacity.
    fn add_tokens(&self, key: &Bound<'_, PyAny>, n: i128) -> PyResult<PyDecision> {
        let n = count("n", n)?;
        with_key(key, |k| PyDecision(self.0.add_tokens_key(k, n)))
    }

    /// Fills `key`'s bucket.
    fn reset(&self, key: &Bound<'_, PyAny>) -> PyResult<PyDecision> {
        with_key(key, |k| PyDecision(self.0.reset_key(k)))
    }

    /// Takes `n` tokens from `key` as a `Reservation` (`granted` false when they are not there).
    #[pyo3(signature = (key, n = 1))]
    fn reserve(&self, key: &Bound<'_, PyAny>, n: i128) -> PyResult<PyReservation> {
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
        PyLimit(self.0.limit())
    }
}
