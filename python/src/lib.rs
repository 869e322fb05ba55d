//! Python bindings of tollgate: `tollgate._tollgate`, wrapped by the `tollgate` package
//! (`python/tollgate/`). Every decision is made by the Rust crate; this file only converts.
//!
//! The GIL is held for in-memory calls: a check takes tens of nanoseconds, less than releasing
//! and taking back the GIL costs. Redis calls are awaitable: the GIL is free while they wait.
//!
//! In-memory limiters read the precise monotonic clock, not the crate's default coarse clock:
//! a call from Python costs far more than a precise read, and the coarse clock's upkeep thread
//! (a tick every millisecond while calls come) would take CPU from the server's own core.

mod http;
mod limit;
mod memory;
mod redis;

use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyValueError};
use pyo3::prelude::*;

use http::{PyClientIp, PyHeaders};
use limit::{PyDecision, PyLimit};
use memory::{PyKeyedLimiter, PyReservation, PyTokenBucket};
use redis::PyRedisLimiter;

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
