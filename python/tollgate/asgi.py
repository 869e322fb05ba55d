"""A rate limit in front of any ASGI app (FastAPI, Starlette, ...), as a pure ASGI middleware.

>>> from fastapi import FastAPI
>>> from tollgate import Limit
>>> from tollgate.asgi import RateLimitMiddleware, header
>>> app = FastAPI()
>>> app.add_middleware(RateLimitMiddleware, limit=Limit(capacity=10, refill=2, interval=1.0),
...                    key=header("x-api-key"))

For each HTTP request that is not exempt, the middleware finds the request's key, asks the limiter
for ``cost`` tokens, and then, as the Rust ``RateLimitLayer`` does:

- allowed: calls the app and adds ``RateLimit`` and ``RateLimit-Policy`` (IETF
  draft-ietf-httpapi-ratelimit-headers), written by the Rust layer's own code;
- denied: answers ``429 Too Many Requests`` itself, with those headers, ``Retry-After`` (whole
  seconds, at least 1) and an ``application/problem+json`` body; the app is not called. A cost
  above the capacity is a 429 without ``Retry-After`` (waiting cannot help);
- no key: ``401`` with ``WWW-Authenticate`` (or the ``missing_key`` fallback key); a peer or
  client IP key on a server that passes no peer address: ``500`` and an error log (a set-up
  error, not the client's);
- the limiter fails: a ``RedisLimiter``'s ``on_failure`` decides (a degraded denial is a ``503``
  with ``Retry-After: 1``, never a 429); when it raises, ``on_error``: ``"open"`` lets the
  request through (and logs), ``"closed"`` answers 503.

Keys are tagged by kind exactly as the Rust layer tags them on Redis (``g``, ``i:<ip>``,
``h:<header value>``, ``b:<token or bytes>``, ``t:<text>``), so a FastAPI service and a Rust
service with the same key kind, limit and Redis prefix count against one bucket, and keys of
different kinds never share one (but for bearer tokens and bytes keys, both ``b:``, as in Rust).
WebSocket and lifespan scopes pass through unlimited.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any, Awaitable, Callable, Iterable, MutableMapping, Optional, Union

from ._tollgate import (
    ClientIp,
    Decision,
    Headers,
    InsufficientCapacity,
    KeyedLimiter,
    Limit,
    RedisLimiter,
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

MAX_COST = 2**64 - 1


class _NoPeer:
    """What an IP key function returns when the server passed no peer address."""


NO_PEER = _NoPeer()


def _tagged(key_fn: Callable, challenge: str) -> Callable:
    key_fn.tagged = True  # type: ignore[attr-defined]
    key_fn.challenge = challenge  # type: ignore[attr-defined]
    return key_fn


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
        return b"h:" + found if found else None

    return _tagged(key, f'ApiKey header="{name.lower()}"')


def bearer() -> KeyFn:
    """The token of ``Authorization: Bearer <token>`` as the key (one header line only; the
    scheme in any case)."""
    auth = header("authorization")

    def key(scope: Scope) -> Optional[bytes]:
        value = auth(scope)
        if value is None:
            return None
        scheme, _, token = value[2:].partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        return b"b:" + token

    return _tagged(key, "Bearer")


def client_ip(
    trusted: Iterable[str], header: str = "x-forwarded-for", ipv6_prefix: int = 64
) -> KeyFn:
    """The client IP behind the ``trusted`` proxies (CIDRs), read from the one forwarding
    ``header`` they write (``"x-forwarded-for"`` or ``"forwarded"``): the rightmost hop that is
    not a trusted proxy, or the peer when the peer is not trusted, by the Rust layer's own code.
    Other forwarding headers are ignored, so no header a client sends chooses its key. IPv6
    clients are keyed per /``ipv6_prefix``. Run uvicorn with ``proxy_headers=False`` (or
    ``--no-proxy-headers``): otherwise it rewrites the peer from X-Forwarded-For itself."""
    extractor = ClientIp(list(trusted), header, ipv6_prefix)

    def key(scope: Scope) -> Union[bytes, None, _NoPeer]:
        client = scope.get("client")
        peer = _ip(client[0]) if client else None
        if peer is None:
            return NO_PEER
        found = extractor.key(peer, [(k, v) for k, v in scope.get("headers", ())])
        return b"i:" + found.encode() if found is not None else None

    return _tagged(key, "RateLimitKey")


def peer_ip(ipv6_prefix: int = 64) -> KeyFn:
    """The connection's peer address as the key (IPv6 per /``ipv6_prefix``)."""
    return client_ip((), ipv6_prefix=ipv6_prefix)


def _ip(text: str) -> Optional[str]:
    """The peer address without an IPv6 zone (`fe80::1%eth0`); None when it is no address."""
    text = text.split("%", 1)[0]
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        return None


def _global(scope: Scope) -> bytes:
    return b"g"


_tagged(_global, "RateLimitKey")


def _tag(key: Union[str, bytes, int]) -> bytes:
    """A key from a user's function, tagged as the Rust layer tags `Key::Text` / `Key::Bytes`."""
    if isinstance(key, bytes):
        return b"b:" + key
    if isinstance(key, str):
        return b"t:" + key.encode("utf-8")  # lone surrogates raise: a bad key
    if isinstance(key, int) and not isinstance(key, bool):
        return b"t:" + str(key).encode()
    raise TypeError(f"a rate-limit key is str, bytes or int, not {type(key).__name__}")


class RateLimitMiddleware:
    """Rate-limits the HTTP requests of an ASGI app.

    ``limit`` builds an in-memory ``KeyedLimiter``; or pass ``limiter`` (a ``KeyedLimiter``, or a
    ``RedisLimiter`` for a limit shared between processes), not both. ``key``: ``header(..)``,
    ``bearer()``, ``client_ip(..)``, ``peer_ip()``, or a function of the ASGI scope returning
    a str, bytes or int (None: no key); default: one global key. ``cost``: tokens per request
    (0 ..= 2**64 - 1), or a function of the scope. ``exempt``: a path, paths (exact), or a
    function of the scope. ``missing_key``: the key of requests without one (default: answer
    401). ``policy``: the policy name in the headers. ``legacy_headers``: add
    ``X-RateLimit-*`` too. ``on_error``: when the limiter raises, ``"open"`` or ``"closed"``.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: Optional[Limit] = None,
        *,
        limiter: Union[KeyedLimiter, RedisLimiter, None] = None,
        key: Optional[KeyFn] = None,
        cost: Union[int, Callable[[Scope], int]] = 1,
        exempt: Union[str, Iterable[str], Callable[[Scope], bool]] = (),
        missing_key: Union[str, bytes, int, None] = None,
        policy: str = "default",
        legacy_headers: bool = False,
        on_error: str = "open",
    ) -> None:
        if (limit is None) == (limiter is None):
            raise TypeError("RateLimitMiddleware needs limit= or limiter=, not both")
        if limiter is None:
            limiter = KeyedLimiter(limit)
        if not isinstance(limiter, (KeyedLimiter, RedisLimiter)):
            raise TypeError(
                f"limiter: a KeyedLimiter or a RedisLimiter, not {type(limiter).__name__}"
            )
        if on_error not in ("open", "closed"):
            raise ValueError(f'on_error: "open" or "closed", got {on_error!r}')
        if not callable(cost) and not _valid_cost(cost):
            raise ValueError(f"cost: a whole number of tokens in 0..=2**64-1, or a function, "
                             f"got {cost!r}")
        self.app = app
        self.limiter = limiter
        self._async = isinstance(limiter, RedisLimiter)
        self.key = key or _global
        self._tagged = getattr(self.key, "tagged", False)
        self.cost = cost
        if callable(exempt):
            self._exempt = exempt
        else:
            paths = frozenset((exempt,) if isinstance(exempt, str) else exempt)
            self._exempt = lambda scope: scope.get("path") in paths
        self.missing_key = None if missing_key is None else _tag(missing_key)
        self.on_error = on_error
        self.headers = Headers(limiter.limit, policy, legacy_headers)
        self._challenge = getattr(self.key, "challenge", "RateLimitKey").encode()
        self._logged = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            exempt = self._exempt(scope)
            key = None if exempt else self.key(scope)
            if key is not None and not self._tagged:
                key = _tag(key)
        except Exception as e:  # the server's key or exempt function, not the client
            self._error(f"the key or exempt function failed: {e!r}")
            await _reply(send, 500, "the server's rate-limit key could not be found", [])
            return
        if exempt:
            await self.app(scope, receive, send)
            return
        if key is NO_PEER:
            self._error(
                "a peer-IP or client-IP key needs the connection's peer address, and the "
                "request carries none (a unix socket, or a test client); answering 500"
            )
            await _reply(
                send, 500, "the server's rate limiter cannot see the peer address it keys on", []
            )
            return
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
        try:
            cost = self.cost(scope) if callable(self.cost) else self.cost
        except Exception as e:
            cost = e
        if not _valid_cost(cost):
            self._error(f"the cost function returned {cost!r}, not a number of tokens")
            await _reply(send, 500, "the server's rate-limit cost is not a number of tokens", [])
            return
        failure = None
        try:
            decision = await self._acquire(key, cost)
        except InsufficientCapacity:
            await self._too_costly(send, key, cost)
            return
        except Exception as e:  # the backend failed (Redis down, ...)
            failure = e
        if failure is not None:
            # Outside the `except`: the app's own exceptions are not chained to this one.
            if self.on_error == "open":
                log.warning("tollgate: the limiter failed (%s); request let through", failure)
                await self.app(scope, receive, send)
            else:
                log.warning("tollgate: the limiter failed (%s); request refused", failure)
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
                own = list(message.get("headers", ()))
                # The legacy fields hold one value: an inner limiter's stay (as in Rust).
                if any(k.lower() == b"x-ratelimit-limit" for k, _ in own):
                    message["headers"] = own + [
                        (k, v) for k, v in extra if not k.startswith(b"x-ratelimit-")
                    ]
                else:
                    message["headers"] = own + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _acquire(self, key: bytes, cost: int) -> Decision:
        if self._async:
            return await self.limiter.try_acquire(key, cost)
        return self.limiter.try_acquire(key, cost)

    async def _too_costly(self, send: Send, key: bytes, cost: int) -> None:
        """A cost above the capacity: a 429 without Retry-After (no wait helps), describing the
        key's bucket when the limiter can be asked."""
        try:
            peek = await self._acquire(key, 0)
            headers = [] if peek.degraded else self.headers.for_decision(peek)
            capacity = f" of {peek.capacity}"
        except Exception:
            headers, capacity = [], ""
        await _reply(
            send,
            429,
            f"the request costs {cost} tokens, more than the limit's capacity{capacity}",
            headers,
        )

    def _error(self, message: str) -> None:
        """A set-up error, logged at most once a minute."""
        now = time.monotonic()
        if now - self._logged >= 60 or self._logged == 0:
            self._logged = now
            log.error("tollgate: %s", message)


def _valid_cost(cost: Any) -> bool:
    return isinstance(cost, int) and not isinstance(cost, bool) and 0 <= cost <= MAX_COST


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
