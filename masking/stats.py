"""What a masking call did: resources seen, changed and dropped, and values changed per method."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["MaskStats"]


@dataclass(slots=True)
class MaskStats:
    """What a masking call did: resources seen/changed/dropped and values changed per method."""

    resources: int = 0
    changed: int = 0
    dropped: int = 0
    by_method: Counter[str] = field(default_factory=Counter)

    def merge(self, other: MaskStats) -> None:
        """Add ``other``'s counts to these."""
        self.resources += other.resources
        self.changed += other.changed
        self.dropped += other.dropped
        self.by_method.update(other.by_method)
