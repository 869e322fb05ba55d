//! `Limit` and `Decision`, and the conversions every class uses: durations, counts, errors.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::InsufficientCapacity;

/// A duration from seconds (int or float) or a `datetime.timedelta`, exactly: a timedelta is
/// read from its days, seconds and microseconds.
pub(crate) fn duration(field: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
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
pub(crate) fn count(field: &str, value: i128) -> PyResult<u64> {
    u64::try_from(value).map_err(|_| {
        PyValueError::new_err(if value < 0 {
            format!("{field}: must not be negative, got {value}")
        } else {
            format!("{field}: {value} is more than 2**64 - 1")
        })
    })
}

pub(crate) fn limit_error(e: tollgate::LimitError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

pub(crate) fn capacity_error(e: tollgate::InsufficientCapacity) -> PyErr {
    InsufficientCapacity::new_err(e.to_string())
}

pub(crate) fn timedelta<'py>(py: Python<'py>, d: Duration) -> PyResult<Bound<'py, PyAny>> {
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
pub(crate) struct PyLimit(pub(crate) tollgate::Limit);

#[pymethods]
impl PyLimit {
    #[new]
    #[pyo3(signature = (capacity, refill, interval, *, greedy = false))]
    fn new(
        capacity: i128,
        refill: i128,
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
    fn per_second(n: i128) -> PyResult<Self> {
        tollgate::Limit::per_second(count("n", n)?)
            .map(PyLimit)
            .map_err(limit_error)
    }

    /// `n` per minute, evenly spread, bursts of `n`.
    #[staticmethod]
    fn per_minute(n: i128) -> PyResult<Self> {
        tollgate::Limit::per_minute(count("n", n)?)
            .map(PyLimit)
            .map_err(limit_error)
    }

    /// `n` per hour, evenly spread, bursts of `n`.
    #[staticmethod]
    fn per_hour(n: i128) -> PyResult<Self> {
        tollgate::Limit::per_hour(count("n", n)?)
            .map(PyLimit)
            .map_err(limit_error)
    }

    /// The same rate with another capacity.
    fn burst(&self, capacity: i128) -> PyResult<Self> {
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
pub(crate) struct PyDecision(pub(crate) tollgate::Decision);

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
