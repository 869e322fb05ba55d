"""The same FastAPI app (an async endpoint) five ways, for `bench.py`: plain, and behind
tollgate, slowapi (its BaseHTTPMiddleware and its ASGI middleware) and fastapi-limiter, each
limiting per `x-api-key` with a limit the load never reaches (the allowed path is what every
request pays)."""

from fastapi import Depends, FastAPI, Request

PER_KEY = 1_000  # per second


def _app(**kwargs) -> FastAPI:
    app = FastAPI(**kwargs)

    @app.get("/")
    async def root():
        return {"ok": True}

    return app


plain = _app()

# tollgate: the pure ASGI middleware.
from tollgate import Limit  # noqa: E402
from tollgate.asgi import RateLimitMiddleware, header  # noqa: E402

tollgate_app = _app()
tollgate_app.add_middleware(
    RateLimitMiddleware, limit=Limit.per_second(PER_KEY), key=header("x-api-key")
)

# slowapi (on `limits`, in memory), as its docs set it up for a global default limit.
from slowapi import Limiter as SlowLimiter  # noqa: E402
from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware  # noqa: E402


def _api_key(request: Request) -> str:
    return request.headers.get("x-api-key", "")


slowapi_app = _app()
slowapi_app.state.limiter = SlowLimiter(key_func=_api_key, default_limits=[f"{PER_KEY}/second"])
slowapi_app.add_middleware(SlowAPIMiddleware)

# slowapi's pure ASGI middleware (newer, not BaseHTTPMiddleware).
slowapi_asgi_app = _app()
slowapi_asgi_app.state.limiter = SlowLimiter(
    key_func=_api_key, default_limits=[f"{PER_KEY}/second"]
)
slowapi_asgi_app.add_middleware(SlowAPIASGIMiddleware)

# fastapi-limiter (on pyrate-limiter, in memory), as a route dependency.
from fastapi_limiter.depends import RateLimiter  # noqa: E402
from pyrate_limiter import Duration, Limiter, Rate  # noqa: E402


async def _identifier(request: Request) -> str:
    return request.headers.get("x-api-key", "")


fastapi_limiter_app = FastAPI()
# pyrate-limiter's default in-memory bucket is one for all keys (the identifier names items, it
# does not pick buckets): its rate is set for all 1,000 keys at once, so it is never reached
# either.
_dependency = RateLimiter(
    limiter=Limiter(Rate(PER_KEY * 1_000, Duration.SECOND)), identifier=_identifier
)


@fastapi_limiter_app.get("/", dependencies=[Depends(_dependency)])
async def _root():
    return {"ok": True}
