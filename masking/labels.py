"""Security labels on masked output (``meta.security``).

Native mode records HL7 v3-ObservationValue codes (REDACTED, MASKED, PSEUDED, ABSTRED, ANONYED); compatibility
mode records the codes the Microsoft anonymizer writes, under the same system, so existing consumers keep
working. Labels are added once each, after those already on the resource.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["OBSERVATION_VALUE_SYSTEM", "add_security_labels"]

OBSERVATION_VALUE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
_DISPLAY = {
    "REDACTED": "redacted",
    "MASKED": "masked",
    "PSEUDED": "pseudonymized",
    "ABSTRED": "abstracted",
    "ANONYED": "anonymized",
    "AGGRED": "aggregated",
    "SUBSETTED": "subsetted",
}


def add_security_labels(
    resource: dict[str, Any], labels: Iterable[str], extra: Iterable[str], *, native: bool
) -> None:
    """Add each label (method labels, then the profile's ``extra`` ones) to ``resource.meta.security``."""
    method_labels = set(labels)
    wanted = sorted(method_labels) + [label for label in extra if label not in method_labels]
    if not wanted:
        return
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = resource["meta"] = {}
    security = meta.get("security")
    if not isinstance(security, list):
        security = meta["security"] = []
    present = {(c.get("system"), c.get("code")) for c in security if isinstance(c, dict)}
    for code in wanted:
        if (OBSERVATION_VALUE_SYSTEM, code) not in present:
            security.append(_coding(code, native=native))


def _coding(code: str, *, native: bool) -> dict[str, str]:
    coding = {"system": OBSERVATION_VALUE_SYSTEM, "code": code}
    display = _DISPLAY.get(code)
    if native and display:
        coding["display"] = display
    return coding
