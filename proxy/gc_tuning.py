"""Garbage-collector settings for long-running processes that allocate many short-lived containers.

A request (or an audit record being delivered) allocates thousands of short-lived containers (parsed JSON,
decoded entries, AuditEvents) that die with it: collecting the youngest generation every 20,000 allocations
rather than every 700 measured ~3 % more throughput on the masked search and ~30 % less CPU per delivered
AuditEvent, for a few MB more garbage waiting at most. Everything alive at start-up lives as long as the
process: frozen, it stays out of the collector's scans, so full collections stay short (p99 latency).
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GC_THRESHOLDS", "tune_gc"]

GC_THRESHOLDS: Final = (20_000, 20, 20)
"""Allocations between collections of the youngest generation; collections of each older one per younger."""


def tune_gc() -> None:
    """Collect once, freeze what is alive, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
