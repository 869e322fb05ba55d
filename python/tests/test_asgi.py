"""The ASGI middleware over a real uvicorn server and a real HTTP client."""

from __future__ import annotations

import time

import pytest

import http_sfv
import httpx
from fastapi import FastAPI

from tollgate import KeyedLimiter, Limit
from tollgate.asgi import RateLimitMiddleware, bearer, client_ip, header


def api(**options) -> FastAPI:
    app = FastAPI()

    @app.get("/api/hello")
    def hello():
        return {"hello": "world"}

    @app.get("/health")
    def health():
        return {"ok": True}

    app.add_middleware(RateLimitMiddleware, **options)
    return app


def parse_list(value: str):
    field = http_sfv.List()
    field.parse(value.encode())
    return field


def test_the_issue_example_burst_of_15_gives_10_ok_and_5_429(serve):
    app = FastAPI()

    @app.get("/")
    def root():
        return {"ok": True}

    # Exactly as the issue writes it.
    app.add_middleware(
        RateLimitMiddleware,
        limit=Limit(capacity=10, refill=2, interval=1.0),
        key=header("x-api-key"),
    )
    server = serve(app)
    with httpx.Client(base_url=server.url) as client:
        got = [client.get("/", headers={"x-api-key": "k1"}) for _ in range(15)]
    assert [r.status_code for r in got] == [200] * 10 + [429] * 5
    ok, denied = got[0], got[-1]
    assert ok.json() == {"ok": True}
    # Structured Fields, one member per policy.
    policy = parse_list(ok.headers["ratelimit-policy"])
    assert len(policy) == 1 and policy[0].value == "default"
    assert policy[0].params["q"] == 10 and policy[0].params["w"] == 5
    state = parse_list(ok.headers["ratelimit"])
    assert state[0].value == "default" and state[0].params["r"] == 9
    assert state[0].params["t"] in (0, 1)
    last = parse_list(denied.headers["ratelimit"])
    assert last[0].params["r"] == 0 and last[0].params["t"] == 1
    assert denied.headers["retry-after"] == "1"
    assert denied.headers["content-type"] == "application/problem+json"
    body = denied.json()
    assert body["status"] == 429 and body["title"] == "Too Many Requests"


def test_tokens_come_back_after_the_interval(serve):
    server = serve(api(limit=Limit(capacity=3, refill=2, interval=1.0), key=header("x-api-key")))
    with httpx.Client(base_url=server.url) as client:
        codes = [client.get("/api/hello", headers={"x-api-key": "r"}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        wait = int(client.get("/api/hello", headers={"x-api-key": "r"}).headers["retry-after"])
        # Waiting what Retry-After said (never less) always brings tokens back.
        time.sleep(wait + 0.05)
        codes = [client.get("/api/hello", headers={"x-api-key": "r"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_keys_exemptions_costs_and_missing_keys(serve):
    limiter = KeyedLimiter(Limit(capacity=5, refill=1, interval=60.0))
    server = serve(
        api(
            limiter=limiter,
            key=header("x-api-key"),
            exempt={"/health"},
            cost=lambda scope: 9 if scope["method"] == "POST" else 1,
        )
    )
    with httpx.Client(base_url=server.url) as client:
        for _ in range(5):
            assert client.get("/api/hello", headers={"x-api-key": "a"}).status_code == 200
        assert client.get("/api/hello", headers={"x-api-key": "a"}).status_code == 429
        # Another key is unaffected.
        assert client.get("/api/hello", headers={"x-api-key": "b"}).status_code == 200
        # Exempt: no limit, no headers.
        h = client.get("/health", headers={"x-api-key": "a"})
        assert h.status_code == 200 and "ratelimit" not in h.headers
        # No key: 401 with a challenge naming the header.
        r = client.get("/api/hello")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'ApiKey header="x-api-key"'
        # The same header twice is no key.
        r = client.get("/api/hello", headers=[("x-api-key", "a"), ("x-api-key", "c")])
        assert r.status_code == 401
        # A cost above the capacity can never pass: 429 without Retry-After.
        r = client.post("/api/hello", headers={"x-api-key": "c"})
        assert r.status_code == 429 and "retry-after" not in r.headers
        assert "capacity of 5" in r.json()["detail"]
    # Header keys are tagged by kind, as the Rust layer tags them.
    assert limiter.snapshot(b"h:b").remaining == 4
    assert limiter.snapshot("b").remaining == 5, "an untagged key is another bucket"


def test_a_fallback_key_instead_of_401(serve):
    server = serve(
        api(limit=Limit(capacity=2, refill=1, interval=60.0), key=bearer(), missing_key="anon")
    )
    with httpx.Client(base_url=server.url) as client:
        assert [client.get("/api/hello").status_code for _ in range(3)] == [200, 200, 429]
        auth = {"authorization": "Bearer t-1"}
        assert client.get("/api/hello", headers=auth).status_code == 200


def test_client_ip_behind_a_trusted_proxy_ignores_forged_headers(serve):
    # The test client connects from 127.0.0.1, the trusted proxy.
    server = serve(
        api(
            limit=Limit(capacity=2, refill=1, interval=60.0),
            key=client_ip(["127.0.0.1/32"], header="x-forwarded-for"),
        )
    )
    with httpx.Client(base_url=server.url) as client:
        def get(xff, extra=None):
            headers = {"x-forwarded-for": xff}
            headers.update(extra or {})
            return client.get("/api/hello", headers=headers).status_code

        assert [get("203.0.113.5"), get("203.0.113.5"), get("203.0.113.5")] == [200, 200, 429]
        # A client can prepend anything: the rightmost untrusted hop is still 203.0.113.5.
        assert get("1.2.3.4, 203.0.113.5") == 429
        # A Forwarded header a client sends is ignored (the proxy writes X-Forwarded-For).
        assert get("203.0.113.5", {"forwarded": "for=198.51.100.9"}) == 429
        # Another client has its own bucket; IPv6 clients are grouped per /64.
        assert get("198.51.100.7") == 200
        assert [get("2001:db8::1"), get("2001:db8::2"), get("2001:db8::3")] == [200, 200, 429]


def call(middleware, scope):
    """One request straight through the middleware (no server): (status, headers, body)."""
    import asyncio

    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    base = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": None}
    asyncio.run(middleware({**base, **scope}, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-ratelimit-limit", b"7")] if scope["path"] == "/inner" else []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_set_up_errors_are_500s_not_a_shared_bucket():
    from tollgate.asgi import peer_ip

    limit = Limit(capacity=5, refill=1, interval=60.0)
    # An IP key on a server that passes no peer address (a unix socket, a test client).
    mw = RateLimitMiddleware(ok_app, limit=limit, key=peer_ip(), missing_key="anon")
    status, _, body = call(mw, {"client": None})
    assert status == 500 and b"peer address" in body
    status, _, _ = call(mw, {"client": ("testclient", 50000)})
    assert status == 500
    assert call(mw, {"client": ("192.0.2.1", 50000)})[0] == 200
    # A key function returning something that is not a key, a cost that is not a count.
    assert call(RateLimitMiddleware(ok_app, limit=limit, key=lambda s: 1.5), {})[0] == 500
    assert call(RateLimitMiddleware(ok_app, limit=limit, cost=lambda s: -1), {})[0] == 500
    assert call(RateLimitMiddleware(ok_app, limit=limit, cost=lambda s: 2), {})[0] == 200
    assert call(RateLimitMiddleware(ok_app, limit=limit, cost=lambda s: 2**63), {})[0] == 429
    assert call(RateLimitMiddleware(ok_app, limit=limit, cost=lambda s: 1 / 0), {})[0] == 500
    assert call(RateLimitMiddleware(ok_app, limit=limit, key=lambda s: {}["x"]), {})[0] == 500
    # A link-local peer with its zone is still an address.
    assert call(mw, {"client": ("fe80::1%eth0", 50000)})[0] == 200
    for bad in [-1, 2**64, 1.5, True]:
        with pytest.raises(ValueError, match="cost"):
            RateLimitMiddleware(ok_app, limit=limit, cost=bad)
    with pytest.raises(TypeError, match="not both"):
        RateLimitMiddleware(ok_app, limit=limit, limiter=KeyedLimiter(limit))
    with pytest.raises(TypeError, match="limiter"):
        RateLimitMiddleware(ok_app, limiter=object())
    with pytest.raises(ValueError, match="policy"):
        RateLimitMiddleware(ok_app, limit=limit, policy="naïve")


def test_exempt_paths_legacy_headers_and_the_innermost_legacy_values():
    limit = Limit(capacity=5, refill=1, interval=60.0)
    mw = RateLimitMiddleware(ok_app, limit=limit, exempt="/health", legacy_headers=True,
                             policy="api")
    status, headers, _ = call(mw, {"path": "/health"})
    assert status == 200 and b"ratelimit" not in headers
    # "/health" as a str is one path, not its characters: "/" is limited.
    status, headers, _ = call(mw, {"path": "/"})
    assert status == 200 and headers[b"ratelimit"].startswith(b'"api";r=4;t=')
    assert headers[b"ratelimit-policy"] == b'"api";q=5;w=300'
    assert headers[b"x-ratelimit-limit"] == b"5" and headers[b"x-ratelimit-remaining"] == b"4"
    # An inner limiter's legacy value stays (one value per field), as in the Rust layer.
    status, headers, _ = call(mw, {"path": "/inner"})
    assert headers[b"x-ratelimit-limit"] == b"7"
    assert b"ratelimit" in headers


def test_keys_of_different_kinds_never_share_a_bucket():
    limiter = KeyedLimiter(Limit(capacity=1, refill=1, interval=60.0))
    by_fn = RateLimitMiddleware(ok_app, limiter=limiter, key=lambda s: "anon")
    by_header = RateLimitMiddleware(ok_app, limiter=limiter, key=header("x-api-key"))
    fallback = RateLimitMiddleware(ok_app, limiter=limiter, key=header("x-api-key"),
                                   missing_key=b"anon")
    assert call(by_fn, {})[0] == 200
    assert call(by_header, {"headers": [(b"x-api-key", b"anon")]})[0] == 200
    assert call(fallback, {})[0] == 200  # bytes "anon": a third bucket
    assert call(by_fn, {})[0] == 429
    assert len(limiter) == 3


def test_counts_must_not_be_negative():
    from tollgate import TokenBucket

    bucket = TokenBucket(Limit.per_second(5))
    for f in [bucket.try_acquire, bucket.refund, bucket.add_tokens, bucket.reserve]:
        with pytest.raises(ValueError, match="n: must not be negative"):
            f(-1)
        with pytest.raises(ValueError, match="n: .* more than 2\\*\\*64"):
            f(2**64)
    with pytest.raises(ValueError, match="max_keys"):
        KeyedLimiter(Limit.per_second(5), max_keys=-1)
