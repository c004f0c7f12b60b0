"""Purpose of use (HL7 ``v3-ActReason``) and which purposes a consent rule's ``purpose`` covers.

The codes form a hierarchy: TREAT has ETREAT under it, and BTG and ERTREAT sit under ETREAT; PATRQT has
FAMRQT and PWATRNY under it. A rule naming a purpose covers that purpose and every purpose under it (a
permit for TREAT covers an emergency BTG request; one for BTG does not cover routine TREAT). Codes outside
the hierarchy match only themselves. Codes are compared exactly (they are case-sensitive).

BTG, ETREAT and ERTREAT are the break-glass purposes: a request made for one of them may override a denial,
but only when the deployment says the requester is eligible (see ``consent.evaluate.BreakGlass``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = [
    "ACT_REASON_SYSTEM",
    "BREAK_GLASS_CODES",
    "TREATMENT",
    "ancestors",
    "break_glass_purposes",
    "is_break_glass",
    "is_treatment",
    "purpose_covers",
]

ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
TREATMENT = "TREAT"
BREAK_GLASS_CODES: frozenset[str] = frozenset({"BTG", "ETREAT", "ERTREAT"})

_PARENT = {
    "ETREAT": "TREAT",
    "BTG": "ETREAT",
    "ERTREAT": "ETREAT",
    "FAMRQT": "PATRQT",
    "PWATRNY": "PATRQT",
}


def ancestors(code: str) -> Iterator[str]:
    """The purposes above ``code``, nearest first (``BTG`` -> ``ETREAT``, ``TREAT``)."""
    parent = _PARENT.get(code)
    while parent is not None:
        yield parent
        parent = _PARENT.get(parent)


def purpose_covers(rule_code: str, request_code: str) -> bool:
    """True when a rule about ``rule_code`` covers a request made for ``request_code``."""
    return rule_code == request_code or rule_code in ancestors(request_code)


def is_treatment(purposes: Iterable[str]) -> bool:
    """True when one of ``purposes`` is treatment (TREAT or a purpose under it)."""
    return any(purpose_covers(TREATMENT, purpose) for purpose in purposes)


def break_glass_purposes(purposes: Iterable[str]) -> frozenset[str]:
    """The break-glass purposes among ``purposes``."""
    return BREAK_GLASS_CODES.intersection(purposes)


def is_break_glass(purposes: Iterable[str]) -> bool:
    """True when one of ``purposes`` is a break-glass purpose."""
    return bool(break_glass_purposes(purposes))
