"""Where buckets live: the backend interface, its verdict, and the in-memory backend (one process).

A backend checks every limit of a request at once: if each has enough tokens (and quota left) it takes from
each, otherwise it takes nothing and reports the limit with the longest wait. The memory backend is exact
within one process; several workers or replicas without Redis each keep their own buckets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.errors import ProxyError
from proxy.limits.bucket import (
    BucketState,
    WindowState,
    bucket_idle_seconds,
    bucket_tokens,
    bucket_wait,
    window_count,
    window_end,
    window_index,
)
from proxy.limits.rules import Limit

__all__ = ["LimitBackend", "LimiterUnavailableError", "MemoryBackend", "Verdict"]


class LimiterUnavailableError(ProxyError):
    """The shared buckets (Redis) cannot be reached: the request is refused rather than served unlimited."""

    status_code = 503
    issue_code = "transient"
    default_message = "the rate limiter's shared state cannot be reached, so the request is refused"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one request: admitted, or the limit that refused it and for how long."""

    allowed: bool
    wait: float = 0.0
    limit: Limit | None = None
    by_quota: bool = False
    remaining: int = 0


ADMITTED = Verdict(True)


class LimitBackend(Protocol):
    """Checks and takes a request's limits atomically."""

    async def take(self, limits: Sequence[Limit]) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class _Check:
    limit: Limit
    key: str
    state: BucketState | WindowState
    expires: float
    wait: float
    remaining: int
    by_quota: bool


class MemoryBackend:
    """Buckets in this process's memory; ``clock`` gives seconds since the epoch (injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.time, purge_at: int = 10_000) -> None:
        self._clock = clock
        self._states: dict[str, tuple[BucketState | WindowState, float]] = {}
        self._purge_at = purge_at
        self._minimum_purge = purge_at

    async def take(self, limits: Sequence[Limit]) -> Verdict:
        now = self._clock()
        checks = [check for limit in limits for check in self._checks(limit, now)]
        worst = max(checks, key=lambda check: check.wait, default=None)
        if worst is not None and worst.wait > 0:
            return Verdict(False, worst.wait, worst.limit, worst.by_quota, worst.remaining)
        for check in checks:
            self._states[check.key] = (check.state, check.expires)
        self._purge(now)
        return ADMITTED

    def __len__(self) -> int:
        return len(self._states)

    def _checks(self, limit: Limit, now: float) -> list[_Check]:
        checks = [self._bucket(limit, now)]
        if limit.quota is not None:
            checks.append(self._window(limit, now))
        return checks

    def _bucket(self, limit: Limit, now: float) -> _Check:
        stored = self._states.get(limit.key)
        state = stored[0] if stored is not None and isinstance(stored[0], BucketState) else None
        tokens = bucket_tokens(state, now, limit.rate, limit.burst)
        wait = bucket_wait(tokens, limit.cost, limit.rate)
        taken = BucketState(tokens - limit.cost, now)
        expires = now + bucket_idle_seconds(limit.rate, limit.burst)
        return _Check(limit, limit.key, taken, expires, wait, int(tokens), by_quota=False)

    def _window(self, limit: Limit, now: float) -> _Check:
        assert limit.quota is not None
        seconds, allowed = limit.quota.per_seconds, limit.quota.requests
        stored = self._states.get(limit.quota_key)
        state = stored[0] if stored is not None and isinstance(stored[0], WindowState) else None
        index = window_index(now, seconds)
        count = window_count(state, index)
        end = window_end(index, seconds)
        wait = end - now if count + 1 > allowed else 0.0
        counted = WindowState(index, count + 1)
        return _Check(limit, limit.quota_key, counted, end, wait, allowed - count, by_quota=True)

    def _purge(self, now: float) -> None:
        """Forget full buckets and past windows once the table has grown (amortised)."""
        if len(self._states) < self._purge_at:
            return
        self._states = {key: entry for key, entry in self._states.items() if entry[1] > now}
        self._purge_at = max(self._minimum_purge, 2 * len(self._states))
