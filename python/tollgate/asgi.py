"""A rate limit in front of any ASGI app (FastAPI, Starlette, ...), as a pure ASGI middleware.

>>> from fastapi import FastAPI
>>> from tollgate import Limit
>>> from tollgate.asgi import RateLimitMiddleware, header
>>> app = FastAPI()
>>> app.add_middleware(RateLimitMiddleware, limit=Limit(capacity=10, refill=2, interval=1.0),
...                    key=header("x-api-key"))

For each HTTP request that is not exempt, the middleware finds the request's key, asks the limiter
for ``cost`` tokens, and then:

- allowed: calls the app and adds ``RateLimit`` and ``RateLimit-Policy`` (IETF
  draft-ietf-httpapi-ratelimit-headers) to its response, the same fields the Rust layer writes;
- denied: answers ``429 Too Many Requests`` itself, with those headers, ``Retry-After`` (whole
  seconds, at least 1) and an ``application/problem+json`` body; the app is not called. A cost
  above the capacity is a 429 without ``Retry-After`` (waiting cannot help);
- no key: ``401`` with ``WWW-Authenticate`` (or the ``missing_key`` fallback key);
- Redis down: the ``RedisLimiter``'s ``on_failure`` policy (a degraded denial is a ``503`` with
  ``Retry-After: 1``, never a 429), or, when it raises, ``on_error``: ``"open"`` lets the request
  through (and logs), ``"closed"`` answers 503.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Iterable, MutableMapping, Optional, Union

from ._tollgate import (
    ClientIp,
    Decision,
    Headers,
    InsufficientCapacity,
    KeyedLimiter,
    Limit,
    RedisLimiter,
    RedisUnavailable,
)

__all__ = [
    "RateLimitMiddleware",
    "header",
    "bearer",
    "peer_ip",
    "client_ip",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyFn = Callable[[Scope], Union[str, bytes, int, None]]

log = logging.getLogger("tollgate")


def header(name: str) -> KeyFn:
    """The request's ``name`` header as the key. A header sent twice is no key (an app might
    read another line than the limiter would)."""
    wanted = name.lower().encode("latin-1")

    def key(scope: Scope) -> Optional[bytes]:
        found = None
        for k, v in scope.get("headers", ()):
            if k.lower() == wanted:
                if found is not None:
                    return None
                found = v
        return found or None

    key.challenge = f'ApiKey header="{name.lower()}"'  # type: ignore[attr-defined]
    return key


def bearer() -> KeyFn:
    """The token of ``Authorization: Bearer <token>`` as the key (one header line only)."""
    auth = header("authorization")

    def key(scope: Scope) -> Optional[bytes]:
        value = auth(scope)
        if value is None:
            return None
        scheme, _, token = value.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        return token

    key.challenge = "Bearer"  # type: ignore[attr-defined]
    return key


def client_ip(
    trusted: Iterable[str], header: str = "x-forwarded-for", ipv6_prefix: int = 64
) -> KeyFn:
    """The client IP behind the ``trusted`` proxies (CIDRs), read from the one forwarding
    ``header`` they write (``"x-forwarded-for"`` or ``"forwarded"``): the rightmost hop that is
    not a trusted proxy, or the peer when the peer is not trusted, by the Rust layer's own code.
    Other forwarding headers are ignored, so no header a client sends chooses its key. IPv6
    clients are keyed per /``ipv6_prefix``."""
    extractor = ClientIp(list(trusted), header, ipv6_prefix)

    def key(scope: Scope) -> Optional[str]:
        client = scope.get("client")
        return extractor.key(client[0] if client else None, list(scope.get("headers", ())))

    key.challenge = 'ClientIp realm="tollgate"'  # type: ignore[attr-defined]
    return key


def peer_ip(ipv6_prefix: int = 64) -> KeyFn:
    """The connection's peer address as the key (IPv6 per /``ipv6_prefix``)."""
    return client_ip((), ipv6_prefix=ipv6_prefix)


def _global(scope: Scope) -> str:
    return "global"


class RateLimitMiddleware:
    """Rate-limits the HTTP requests of an ASGI app.

    ``limit`` builds an in-memory ``KeyedLimiter``; or pass ``limiter`` (a ``KeyedLimiter``, or a
    ``RedisLimiter`` for a limit shared between processes). ``key``: a function of the ASGI
    scope returning the key (str, bytes or int; None: no key); default: one global key.
    ``cost``: tokens per request, or a function of the scope. ``exempt``: paths (exact) or a
    function of the scope. ``missing_key``: the key of requests without one (default: answer 401).
    ``policy``: the policy name in the headers. ``legacy_headers``: add ``X-RateLimit-*`` too.
    ``on_error``: when the limiter raises (Redis down under ``on_failure="error"``): ``"open"``
    or ``"closed"``.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: Optional[Limit] = None,
        *,
        limiter: Union[KeyedLimiter, RedisLimiter, None] = None,
        key: Optional[KeyFn] = None,
        cost: Union[int, Callable[[Scope], int]] = 1,
        exempt: Union[Iterable[str], Callable[[Scope], bool]] = (),
        missing_key: Union[str, bytes, int, None] = None,
        policy: str = "default",
        legacy_headers: bool = False,
        on_error: str = "open",
    ) -> None:
        if limiter is None:
            if limit is None:
                raise TypeError("RateLimitMiddleware needs limit= or limiter=")
            limiter = KeyedLimiter(limit)
        if on_error not in ("open", "closed"):
            raise ValueError(f'on_error: "open" or "closed", got {on_error!r}')
        if not callable(cost) and (not isinstance(cost, int) or cost < 0):
            raise ValueError(f"cost: a number of tokens (at least 0) or a function, got {cost!r}")
        self.app = app
        self.limiter = limiter
        self._async = isinstance(limiter, RedisLimiter)
        self.key = key or _global
        self.cost = cost
        if callable(exempt):
            self._exempt = exempt
        else:
            paths = frozenset(exempt)
            self._exempt = lambda scope: scope.get("path") in paths
        self.missing_key = missing_key
        self.on_error = on_error
        self.headers = Headers(limiter.limit, policy, legacy_headers)
        self._challenge = getattr(self.key, "challenge", 'ApiKey realm="tollgate"').encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope):
            await self.app(scope, receive, send)
            return
        key = self.key(scope)
        if key is None:
            if self.missing_key is None:
                await _reply(
                    send,
                    401,
                    "the request carries no usable rate-limit key",
                    [(b"www-authenticate", self._challenge)],
                )
                return
            key = self.missing_key
        cost = self.cost(scope) if callable(self.cost) else self.cost
        try:
            decision = await self._acquire(key, cost)
        except InsufficientCapacity:
            peek = await self._acquire(key, 0)
            await _reply(
                send,
                429,
                f"the request costs {cost} tokens, more than the limit's capacity of "
                f"{peek.capacity}",
                self.headers.for_decision(peek),
            )
            return
        except RedisUnavailable as e:
            if self.on_error == "open":
                log.warning("tollgate: the limiter failed (%s); request let through", e)
                await self.app(scope, receive, send)
            else:
                await _unavailable(send)
            return
        if decision.degraded:
            # Decided by the Redis failure policy, not by a bucket: no quota headers.
            if decision.allowed:
                await self.app(scope, receive, send)
            else:
                await _unavailable(send)
            return
        extra = self.headers.for_decision(decision)
        if not decision.allowed:
            wait = Headers.retry_after(decision)
            extra.append((b"retry-after", str(wait).encode()))
            await _reply(send, 429, f"rate limit exceeded; retry after {wait} s", extra)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", ())) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _acquire(self, key: Union[str, bytes, int], cost: int) -> Decision:
        if self._async:
            return await self.limiter.try_acquire(key, cost)
        return self.limiter.try_acquire(key, cost)


async def _unavailable(send: Send) -> None:
    await _reply(send, 503, "the rate limiter is unavailable", [(b"retry-after", b"1")])


async def _reply(send: Send, status: int, detail: str, headers: list) -> None:
    content_type, body = Headers.problem(status, detail)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
