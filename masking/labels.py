"""Security labels on masked output (``meta.security``).

Native mode records HL7 v3-ObservationValue codes (REDACTED, MASKED, PSEUDED, ABSTRED, ANONYED); compatibility
mode records the codes the Microsoft anonymizer writes, under the same system, so existing consumers keep
working. Labels are added once each, after those already on the resource.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from masking.methods.base import MS_SECURITY_LABELS

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
        coding = _coding(code, native=native)
        if (coding.get("system"), code) not in present:
            security.append(coding)


def _coding(code: str, *, native: bool) -> dict[str, str]:
    if not native and code in MS_SECURITY_LABELS:
        system, display = MS_SECURITY_LABELS[code]
        return (
            {"system": system, "code": code, "display": display}
            if system
            else {"code": code, "display": display}
        )
    coding = {"system": OBSERVATION_VALUE_SYSTEM, "code": code}
    display = _DISPLAY.get(code, "")
    if display:
        coding["display"] = display
    return coding
