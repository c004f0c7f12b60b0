"""The access decision: a value the policy computes and the pipeline carries out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["AccessDecision", "ResponseCheck"]


class ResponseCheck(Enum):
    """What must be checked in the upstream's answer before it reaches the client."""

    NONE = "none"  # nothing to check (no data in the answer, or an unrestricted principal)
    RESOURCE = "resource"  # one resource: must be visible, else hidden (404) or refused
    BUNDLE = "bundle"  # every entry of every (nested) Bundle is re-checked; forbidden ones dropped


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """Allowed, with the changes to make to the request and the checks owed on the response.

    Denials are raised as ``ForbiddenError`` / ``InsufficientScopeError`` / ``NotFoundError`` instead of
    being returned, so a denial can never be mistaken for a decision to forward.
    """

    response: ResponseCheck = ResponseCheck.BUNDLE
    extra_params: tuple[tuple[str, str], ...] = ()
    if_none_exist: str | None = None
    needs_current: bool = (
        False  # fetch the current resource and check it before writing (and pin its version)
    )
    total_is_exact: bool = True  # the upstream query already enforces every restriction
    reason: str = "allowed by scope"
