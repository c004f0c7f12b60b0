"""A clock tests move by hand (injected where code takes ``clock: Callable[[], float]``)."""

from __future__ import annotations

__all__ = ["Clock"]


class Clock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
