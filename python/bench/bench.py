"""tollgate beside slowapi / `limits` and fastapi-limiter / pyrate-limiter, in one run.

    python python/bench/bench.py            # both parts (needs wrk for the HTTP part)
    python python/bench/bench.py --quick    # shorter runs

Part 1, in process: checks per second over 1,000 hot keys, one thread, each library's
in-memory limiter at a limit the run never reaches (the allowed path).
Part 2, over HTTP: the same FastAPI app (bench/apps.py) under uvicorn (one worker), plain and
behind each limiter, loaded by wrk over loopback with 1,000 API keys, each app in turn for
several rounds; the median req/s, the share of the plain app's it keeps, and the server's CPU
time per request (from /proc: steadier than req/s on a shared machine).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = [f"key-{i}" for i in range(1_000)]


def per_second(fn, n: int) -> float:
    keys = KEYS
    start = time.perf_counter()
    for i in range(n):
        fn(keys[i % 1000])
    return n / (time.perf_counter() - start)


def in_process(n: int) -> dict:
    from limits import RateLimitItemPerSecond, storage, strategies
    from pyrate_limiter import Duration, Limiter, Rate

    from tollgate import KeyedLimiter, Limit

    rows = {}
    tg = KeyedLimiter(Limit(capacity=1_000_000, refill=1_000_000, interval=1.0))
    rows["tollgate KeyedLimiter.check"] = per_second(tg.check, n)
    item = RateLimitItemPerSecond(1_000_000)
    for name, strategy in [
        ("limits FixedWindow.hit (slowapi's default)", strategies.FixedWindowRateLimiter),
        ("limits MovingWindow.hit", strategies.MovingWindowRateLimiter),
    ]:
        lim = strategy(storage.MemoryStorage())
        rows[name] = per_second(lambda k, lim=lim: lim.hit(item, k), n // 4)
    # One in-memory bucket for all keys (pyrate-limiter's default): it does less per call than
    # a bucket per key would.
    pyrate = Limiter(Rate(1_000_000, Duration.SECOND))
    rows["pyrate-limiter try_acquire (fastapi-limiter's)"] = per_second(
        lambda k: pyrate.try_acquire(k, blocking=False), n // 4
    )
    return rows


def middleware_overhead(n: int) -> tuple[float, float]:
    """The middleware alone: µs per request through it around a bare ASGI app, and the bare
    app's own, on one event loop (no server, no socket)."""
    import asyncio

    from tollgate import Limit
    from tollgate.asgi import RateLimitMiddleware, header

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message):
        pass

    async def receive():
        return {"type": "http.request"}

    limited = RateLimitMiddleware(
        app, limit=Limit(capacity=10**6, refill=10**6, interval=1.0), key=header("x-api-key")
    )
    scopes = [
        {"type": "http", "path": "/", "method": "GET",
         "headers": [(b"host", b"bench"), (b"x-api-key", k.encode())]}
        for k in KEYS
    ]

    async def time_it(target) -> float:
        start = time.perf_counter()
        for i in range(n):
            await target(scopes[i % 1000], receive, send)
        return (time.perf_counter() - start) * 1e6 / n

    async def both():
        return await time_it(app), await time_it(limited)

    return asyncio.run(both())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(app: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"apps:{app}", "--port", str(port), "--log-level",
         "warning", "--no-access-log", "--workers", "1"],
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{app} did not start")
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, seconds: int) -> tuple[float, int]:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(HERE / "keys.lua"),
         f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"the load met errors or limits:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return rate, total


APPS = ["plain", "tollgate_app", "slowapi_app", "slowapi_asgi_app", "fastapi_limiter_app"]


def over_http(seconds: int, rounds: int) -> dict:
    """Each app in turn, `rounds` times (so a drift of the shared machine hits all alike);
    per app the median req/s and the median server CPU time per request."""
    servers = {app: serve(app) for app in APPS}
    samples = {app: [] for app in APPS}
    try:
        for proc, port in servers.values():
            wrk(port, 1)  # warm-up
        for _ in range(rounds):
            for app, (proc, port) in servers.items():
                before = cpu_seconds(proc.pid)
                rate, total = wrk(port, seconds)
                cpu_us = (cpu_seconds(proc.pid) - before) * 1e6 / total
                samples[app].append((rate, cpu_us))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {
        app: (median([r for r, _ in xs]), median([c for _, c in xs]))
        for app, xs in samples.items()
    }


def main() -> None:
    quick = "--quick" in sys.argv
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print("\nin process, 1,000 hot keys, one thread:")
    rows = in_process(50_000 if quick else 400_000)
    base = rows["tollgate KeyedLimiter.check"]
    for name, rate in rows.items():
        print(f"  {name:<50} {rate:>12,.0f} checks/s  {1e6 / rate:6.2f} us/check"
              f"  tollgate x{base / rate:.1f}")
    bare, limited = middleware_overhead(20_000 if quick else 200_000)
    print(f"\nthe ASGI middleware alone (no server): {limited - bare:.2f} us per request"
          f" ({limited:.2f} through it, {bare:.2f} for the bare app)")
    if shutil.which("wrk") is None:
        print("\nno wrk on PATH: HTTP part skipped (apt-get install wrk)")
        return
    rounds = 3 if quick else 5
    seconds = 2 if quick else 5
    print(f"\nover HTTP, uvicorn (1 worker each), wrk -t1 -c32 over loopback, 1,000 API keys,"
          f" {rounds} rounds of {seconds} s per app, medians:")
    http = over_http(seconds, rounds)
    plain_rate, plain_cpu = http["plain"]
    for app, (rate, cpu) in http.items():
        print(f"  {app:<22} {rate:>8,.0f} req/s  {100 * rate / plain_rate:5.1f}% of plain"
              f"   server CPU {cpu:7.1f} us/req  (+{cpu - plain_cpu:5.1f} us over plain)")

if __name__ == "__main__":
    main()
