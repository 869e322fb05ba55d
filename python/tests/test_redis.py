"""RedisLimiter against a real redis-server: the limit, a limit shared with a Rust process,
the failure policies when the server dies, and the middleware on top. Redis time is the
server's, and its refill steps count from the Unix epoch: the limits here refill hourly, so a
burst of milliseconds meets no step boundary."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tollgate import Limit, RedisLimiter, RedisUnavailable
from tollgate.asgi import RateLimitMiddleware, header

from conftest import REPO


def run(coro):
    return asyncio.run(coro)


def test_capacity_then_denials(redis_server):
    async def main():
        limiter = await RedisLimiter.connect(
            redis_server.url, Limit(capacity=5, refill=1, interval=3600.0), "t1:"
        )
        got = [await limiter.check("k") for _ in range(7)]
        return limiter, got

    limiter, got = run(main())
    assert [d.allowed for d in got] == [True] * 5 + [False] * 2
    assert got[-1].remaining == 0 and 0 < got[-1].retry_after <= 3600.0
    assert not got[-1].degraded
    assert limiter.limit.capacity == 5


def test_bad_input_is_a_clear_error(redis_server):
    async def connect(url, limit, **kwargs):
        return await RedisLimiter.connect(url, limit, "x:", **kwargs)

    with pytest.raises(ValueError, match="on_failure"):
        run(connect(redis_server.url, Limit.per_second(5), on_failure="maybe"))
    with pytest.raises(ValueError, match="redis URL"):
        run(connect("http://nope", Limit.per_second(5)))
    # Steps finer than a microsecond cannot run exactly on Redis time.
    with pytest.raises(ValueError, match="microsecond"):
        run(connect(redis_server.url, Limit(capacity=5, refill=1, interval=0.0000015)))


def rust_example() -> Path:
    """The Rust `redis_shared` example (built by `cargo test --all-features`, or here)."""
    for profile in ("debug", "release"):
        exe = REPO / "target" / profile / "examples" / "redis_shared"
        if exe.exists():
            return exe
    subprocess.run(
        ["cargo", "build", "--features", "redis", "--example", "redis_shared"],
        cwd=REPO,
        check=True,
    )
    return REPO / "target" / "debug" / "examples" / "redis_shared"


def test_one_limit_across_rust_and_python(redis_server):
    # The example's worker: capacity 10, 1 token every 10 s, key b"shared", 10 tries.
    prefix = f"cross-{os.getpid()}:"
    limit = Limit(capacity=10, refill=1, interval=10.0)
    started = time.monotonic()
    rust = subprocess.Popen(
        [str(rust_example()), "--worker", "rust", "--prefix", prefix, redis_server.url],
        stdout=subprocess.PIPE,
        text=True,
    )

    async def python_side():
        limiter = await RedisLimiter.connect(redis_server.url, limit, prefix, timeout=1.0)
        allowed = 0
        for _ in range(10):
            allowed += (await limiter.check("shared")).allowed
            await asyncio.sleep(0.005)
        return allowed

    py_allowed = run(python_side())
    out, _ = rust.communicate(timeout=60)
    assert rust.returncode == 0, out
    rust_allowed = int(out.strip().splitlines()[-1].split(": ")[1].split()[0])
    # Redis steps count from the Unix epoch: a step may end at any moment of the run.
    refills = int((time.monotonic() - started) // 10) + 1
    total = py_allowed + rust_allowed
    assert 10 <= total <= 10 + refills, f"python {py_allowed} + rust {rust_allowed}"
    assert py_allowed > 0 or rust_allowed == 10


def test_server_killed_mid_run_follows_each_policy(redis_server):
    limit = Limit(capacity=100, refill=1, interval=1.0)

    async def main():
        closed = await RedisLimiter.connect(redis_server.url, limit, "k:", on_failure="closed")
        opened = await RedisLimiter.connect(redis_server.url, limit, "k:", on_failure="open")
        error = await RedisLimiter.connect(redis_server.url, limit, "k:", on_failure="error")
        assert (await closed.check("a")).allowed
        redis_server.kill()
        t0 = time.monotonic()
        d_closed = await closed.check("a")
        d_open = await opened.check("a")
        with pytest.raises(RedisUnavailable):
            await error.check("a")
        return d_closed, d_open, time.monotonic() - t0

    d_closed, d_open, took = run(main())
    assert d_closed.degraded and not d_closed.allowed
    assert d_open.degraded and d_open.allowed
    assert took < 5.0, "answered by the policy, no hang"


def test_middleware_on_redis_and_a_503_when_it_dies(redis_server, serve):
    async def connect():
        return await RedisLimiter.connect(
            redis_server.url, Limit(capacity=10, refill=2, interval=3600.0), "mw:",
            on_failure="closed",
        )

    limiter = run(connect())
    app = FastAPI()

    @app.get("/")
    def root():
        return {"ok": True}

    app.add_middleware(RateLimitMiddleware, limiter=limiter, key=header("x-api-key"))
    server = serve(app)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        codes = [client.get("/", headers={"x-api-key": "k"}).status_code for _ in range(15)]
        assert codes == [200] * 10 + [429] * 5
        redis_server.kill()
        r = client.get("/", headers={"x-api-key": "k"})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1" and "ratelimit" not in r.headers


def test_middleware_keys_are_the_rust_layers_keys(redis_server, serve):
    # The Rust layer over Redis stores a header key as `<prefix>{h:<value>}`, the global key
    # as `{g}`, a closure's text as `{t:<text>}` (src/redis/mod.rs, `Backend for
    # RedisLimiter`): the middleware must write the very same keys to share the buckets.
    import redis as redis_py

    async def connect():
        return await RedisLimiter.connect(
            redis_server.url, Limit(capacity=10, refill=2, interval=3600.0), "kk:"
        )

    limiter = run(connect())
    app = FastAPI()

    @app.get("/")
    def root():
        return {"ok": True}

    layered = RateLimitMiddleware(app, limiter=limiter, key=header("x-api-key"))
    server = serve(layered)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/", headers={"x-api-key": "alice"}).status_code == 200
    for key in [lambda s: "bob", None]:
        server = serve(RateLimitMiddleware(app, limiter=limiter, key=key))
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/").status_code == 200
    names = sorted(redis_py.Redis(port=redis_server.port).keys("kk:*"))
    assert names == [b"kk:{g}", b"kk:{h:alice}", b"kk:{t:bob}"]


def test_middleware_when_the_limiter_raises_or_degrades(redis_server, serve):
    limit = Limit(capacity=10, refill=2, interval=3600.0)

    async def connect(on_failure):
        return await RedisLimiter.connect(
            redis_server.url, limit, "oe:", on_failure=on_failure, timeout=0.2
        )

    app = FastAPI()

    @app.get("/")
    def root():
        return {"ok": True}

    servers = {
        name: serve(RateLimitMiddleware(app, limiter=run(connect(policy)), on_error=on_error))
        for name, policy, on_error in [
            ("raise-open", "error", "open"),
            ("raise-closed", "error", "closed"),
            ("degraded-open", "open", "open"),
        ]
    }
    redis_server.kill()
    got = {}
    for name, server in servers.items():
        with httpx.Client(base_url=server.url, timeout=10) as client:
            got[name] = client.get("/")
    assert got["raise-open"].status_code == 200
    assert got["raise-closed"].status_code == 503
    assert got["raise-closed"].headers["retry-after"] == "1"
    assert got["degraded-open"].status_code == 200
    assert "ratelimit" not in got["degraded-open"].headers
