//! The async `RedisLimiter`.

use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use tollgate::redis::{OnFailure, RedisLimitError, RedisLimiter};

use crate::limit::{capacity_error, count, PyDecision, PyLimit};
use crate::RedisUnavailable;

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

/// The key's bytes for Redis: a `str` in UTF-8 (so Rust's `b"name"` and Python's `"name"` are
/// one key), `bytes` as they are, an `int` in decimal.
pub(crate) fn redis_key(key: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
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
pub(crate) struct PyRedisLimiter(pub(crate) RedisLimiter);

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
        n: i128,
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
        PyLimit(self.0.limit())
    }
}
