"""keep: leave the value (and, through first-match-wins, its whole subtree) as it is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from masking.methods.base import (
    KEEP,
    Leaf,
    MaskContext,
    MethodConfigError,
    ProfileParameters,
    common_problems,
)

__all__ = ["Keep", "build"]


class Keep:
    """Returns ``KEEP`` for every value; carries no label."""

    name: ClassVar[str] = "keep"
    label: str | None = None

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """Keep the value."""
        return KEEP


def build(settings: Mapping[str, Any], params: ProfileParameters) -> Keep:
    """``keep`` takes no settings."""
    problems = common_problems("keep", settings, (), params)
    if problems:
        raise MethodConfigError(problems)
    return Keep()
