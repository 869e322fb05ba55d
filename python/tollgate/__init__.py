"""tollgate: exact, lock-free token-bucket rate limiting, from Rust.

The same limits and decisions as the Rust crate ``tollgate``: in memory (``TokenBucket``,
``KeyedLimiter``), shared through Redis with Rust or Python processes (``RedisLimiter``), and
ASGI middleware for FastAPI / Starlette (``tollgate.asgi``).

>>> from tollgate import Limit, KeyedLimiter
>>> limiter = KeyedLimiter(Limit(capacity=2, refill=1, interval=1.0))
>>> [limiter.check("alice").allowed for _ in range(3)]
[True, True, False]
"""

from ._tollgate import (
    ClientIp,
    Decision,
    Headers,
    InsufficientCapacity,
    KeyedLimiter,
    Limit,
    RedisLimiter,
    RedisUnavailable,
    Reservation,
    TokenBucket,
)

__all__ = [
    "ClientIp",
    "Decision",
    "Headers",
    "InsufficientCapacity",
    "KeyedLimiter",
    "Limit",
    "RedisLimiter",
    "RedisUnavailable",
    "Reservation",
    "TokenBucket",
]
