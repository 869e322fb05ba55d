"""tollgate beside slowapi / `limits` and fastapi-limiter / pyrate-limiter, in one run.

    python python/bench/bench.py            # both parts (needs wrk for the HTTP part)
    python python/bench/bench.py --quick    # shorter runs

Part 1, in process: checks per second over 1,000 hot keys, one thread, each library's
in-memory limiter at a limit the run never reaches (the allowed path).
Part 2, over HTTP: the same FastAPI app (bench/apps.py) under uvicorn (one worker), plain and
behind each limiter, loaded by wrk over loopback with 1,000 API keys; req/s, and the share of
the plain app's req/s each keeps. Prints one line per row, then the ratios.
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
    tg = KeyedLimiter(Limit.per_second(10**9))
    rows["tollgate KeyedLimiter.check"] = per_second(tg.check, n)
    item = RateLimitItemPerSecond(10**9)
    for name, strategy in [
        ("limits FixedWindow.hit (slowapi's default)", strategies.FixedWindowRateLimiter),
        ("limits MovingWindow.hit", strategies.MovingWindowRateLimiter),
    ]:
        lim = strategy(storage.MemoryStorage())
        rows[name] = per_second(lambda k, lim=lim: lim.hit(item, k), n // 4)
    pyrate = Limiter(Rate(10**9, Duration.SECOND))
    rows["pyrate-limiter try_acquire (fastapi-limiter's)"] = per_second(
        lambda k: pyrate.try_acquire(k, blocking=False), n // 4
    )
    return rows


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


def wrk(port: int, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(HERE / "keys.lua"),
         f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"the load met errors or limits:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def over_http(seconds: int) -> dict:
    rows = {}
    for app in ["plain", "tollgate_app", "slowapi_app", "fastapi_limiter_app"]:
        proc, port = serve(app)
        try:
            wrk(port, 1)  # warm-up
            rows[app] = wrk(port, seconds)
        finally:
            proc.terminate()
            proc.wait()
    return rows


def main() -> None:
    quick = "--quick" in sys.argv
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print("\nin process, 1,000 hot keys, one thread:")
    rows = in_process(50_000 if quick else 400_000)
    base = rows["tollgate KeyedLimiter.check"]
    for name, rate in rows.items():
        print(f"  {name:<50} {rate:>12,.0f} checks/s  {1e6 / rate:6.2f} us/check"
              f"  tollgate x{base / rate:.1f}")
    if shutil.which("wrk") is None:
        print("\nno wrk on PATH: HTTP part skipped (apt-get install wrk)")
        return
    print("\nover HTTP, uvicorn (1 worker), wrk -t1 -c32 over loopback, 1,000 API keys:")
    http = over_http(3 if quick else 10)
    plain = http["plain"]
    for app, rate in http.items():
        print(f"  {app:<22} {rate:>10,.0f} req/s  {100 * rate / plain:5.1f}% of plain")


if __name__ == "__main__":
    main()
