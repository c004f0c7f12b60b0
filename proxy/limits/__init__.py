"""Rate limits and quotas per client, user or address: token buckets (and fixed-window quotas) charged once
the caller is known, in memory per process or shared by every replica through Redis.

    rules.py          which rules a request matches, whose bucket each charges (hashed keys)
    bucket.py         token-bucket and fixed-window arithmetic
    backend.py        the backend interface and the in-memory backend
    redis_backend.py  the shared backend: one atomic Lua script per request
    limiter.py        RateLimiter.admit -> 429 with Retry-After, or 503 when Redis is down (fail closed)
"""

from proxy.limits.backend import LimitBackend, LimiterUnavailableError, MemoryBackend, Verdict
from proxy.limits.limiter import RateLimiter, build_limiter
from proxy.limits.redis_backend import RedisBackend
from proxy.limits.rules import Limit, client_address, limits_for

__all__ = [
    "Limit",
    "LimitBackend",
    "LimiterUnavailableError",
    "MemoryBackend",
    "RateLimiter",
    "RedisBackend",
    "Verdict",
    "build_limiter",
    "client_address",
    "limits_for",
]
