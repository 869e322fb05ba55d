"""The ASGI middleware over a real uvicorn server and a real HTTP client."""

from __future__ import annotations

import time

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
    assert limiter.snapshot("b").remaining == 4


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
