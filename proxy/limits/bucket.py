"""Token-bucket and fixed-window arithmetic (pure; the Redis script does the same sums).

A bucket holds at most ``burst`` tokens, starts full and gains ``rate`` tokens per second; a request takes
``cost`` tokens or, when there are too few, waits ``(cost - tokens) / rate`` seconds. A quota allows
``requests`` per window of ``seconds``; windows are aligned to the Unix epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "BucketState",
    "WindowState",
    "bucket_idle_seconds",
    "bucket_tokens",
    "bucket_wait",
    "retry_after_seconds",
    "window_count",
    "window_end",
    "window_index",
]


@dataclass(frozen=True, slots=True)
class BucketState:
    """Tokens left after the last take, and when that was (seconds)."""

    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class WindowState:
    """Requests counted in one quota window (by its index since the epoch)."""

    index: int
    count: int


def bucket_tokens(state: BucketState | None, now: float, rate: float, burst: int) -> float:
    """Tokens available at ``now``: refilled since the last take, never more than ``burst``."""
    if state is None:
        return float(burst)
    return min(float(burst), state.tokens + max(0.0, now - state.updated) * rate)


def bucket_wait(tokens: float, cost: int, rate: float) -> float:
    """Seconds until ``tokens`` grow to ``cost`` (0 when they suffice now)."""
    return 0.0 if tokens >= cost else (cost - tokens) / rate


def bucket_idle_seconds(rate: float, burst: int) -> float:
    """Longest time an emptied bucket takes to fill up again (after that its state may be forgotten)."""
    return burst / rate


def window_index(now: float, seconds: int) -> int:
    """The epoch-aligned window ``now`` falls in."""
    return math.floor(now / seconds)


def window_end(index: int, seconds: int) -> float:
    """When window ``index`` ends (seconds since the epoch)."""
    return float((index + 1) * seconds)


def window_count(state: WindowState | None, index: int) -> int:
    """Requests already counted in window ``index`` (a state from an earlier window counts nothing)."""
    return state.count if state is not None and state.index == index else 0


def retry_after_seconds(wait: float) -> int:
    """``Retry-After`` for a wait: whole seconds, rounded up, at least 1 (after a refusal, ask to wait)."""
    return max(1, math.ceil(round(wait, 6)))
