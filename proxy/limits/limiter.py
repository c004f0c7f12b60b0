"""The rate limiter the pipeline calls for a known caller: 429 with Retry-After when a bucket is empty."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from proxy.audit.context import current_record
from proxy.auth.principal import Principal
from proxy.errors import TooManyRequestsError
from proxy.fhir.request import FhirRequest
from proxy.limits.backend import ADMITTED, LimitBackend, LimiterUnavailableError, MemoryBackend, Verdict
from proxy.limits.bucket import retry_after_seconds
from proxy.limits.redis_backend import RedisBackend
from proxy.limits.rules import Limit, limits_for
from proxy.settings import RateLimitSettings, Settings

__all__ = ["RateLimiter", "build_limiter", "refusal"]

logger = logging.getLogger("fhirwall.ratelimit")
WARN_EVERY_SECONDS = 10.0


class RateLimiter:
    """Charges each request to the bucket of every rule it matches (all or nothing)."""

    def __init__(self, settings: RateLimitSettings, backend: LimitBackend) -> None:
        self.settings = settings
        self.backend = backend
        self._warned_at = float("-inf")

    async def admit(self, request: FhirRequest, principal: Principal | None, address: str) -> None:
        """Take this request's tokens, or raise ``TooManyRequestsError`` (nothing taken); with the shared
        state unreachable, raise ``LimiterUnavailableError`` unless ``on_backend_failure`` is ``allow``."""
        limits = limits_for(self.settings.rules, request, principal, address)
        if not limits:
            return
        verdict = await self._take(limits)
        if not verdict.allowed:
            _note_refusal(verdict)
            raise refusal(verdict)

    async def _take(self, limits: Sequence[Limit]) -> Verdict:
        try:
            return await self.backend.take(limits)
        except LimiterUnavailableError:
            if self.settings.on_backend_failure == "refuse":
                raise
            self._warn_unlimited()
            return ADMITTED

    def _warn_unlimited(self) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            logger.warning("rate limits cannot be checked (Redis unreachable): serving requests unlimited")


def refusal(verdict: Verdict) -> TooManyRequestsError:
    """The 429 for a refused request: Retry-After and RateLimit-* headers for the limit that refused it."""
    limit = verdict.limit
    assert limit is not None
    retry_after = retry_after_seconds(verdict.wait)
    quota = limit.quota if verdict.by_quota else None
    headers = {
        "RateLimit-Limit": str(quota.requests if quota is not None else limit.burst),
        "RateLimit-Remaining": str(max(0, verdict.remaining)),
        "RateLimit-Reset": str(retry_after),
    }
    what = "quota" if quota is not None else "rate limit"
    message = f"{what} {limit.rule!r} is spent for this caller: retry after {retry_after} s"
    return TooManyRequestsError(message, retry_after=retry_after, headers=headers)


def build_limiter(settings: Settings, redis: aioredis.Redis | None) -> RateLimiter:
    """The limiter for ``settings.rate_limits``: shared through Redis when configured, else per process."""
    if redis is not None:
        return RateLimiter(settings.rate_limits, RedisBackend(redis))
    if settings.server.workers > 1:
        logger.warning(
            "rate limits without redis.url are kept per worker: each of the %d workers has its own buckets",
            settings.server.workers,
        )
    return RateLimiter(settings.rate_limits, MemoryBackend())


def _note_refusal(verdict: Verdict) -> None:
    """Name the rule that refused in the request's audit record (rule names are configuration, not PHI)."""
    record = current_record.get()
    if record is not None and verdict.limit is not None:
        kind = "quota" if verdict.by_quota else "rate-limit"
        record.reasons.append(f"{kind}:{verdict.limit.rule}")
