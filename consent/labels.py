"""HL7 DS4P security labels on resources (``meta.security``) and how a consent rule's label covers them.

Two kinds of label carry consent meaning:

* **Confidentiality** (``v3-Confidentiality``), ordered U < L < M < N < R < V. A rule about a level is a
  high-water mark: it covers data whose confidentiality is that level or lower. Data with no confidentiality
  label are read as N (normal), the level of ordinary clinical data; data carrying several are read at the
  highest.
* **Sensitivity** (``v3-ActCode``): ETH, GDIS, HIV, MST, SCA, SDV, SEX, STD, TBOO, PREGNANT and SPI, with
  BH, MH, PSY, PSYTHPN and SUD under SPI, and ETHUD and OPIOIDUD under SUD. A rule about a code covers data
  labelled with that code or any code under it (a rule about SPI covers OPIOIDUD data; one about ETHUD does
  not cover SUD data).

Labels in any other system match only the same system and code. The OID and the older
``http://hl7.org/fhir/v3/...`` spellings of the two systems are read as the canonical URLs, and a label
without a system whose code is one of the codes above is read as that DS4P code: a sloppily labelled
resource stays sensitive rather than becoming ordinary.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from consent.coding import Coding, codings_in

__all__ = [
    "ACT_CODE_SYSTEM",
    "CONFIDENTIALITY_ORDER",
    "CONFIDENTIALITY_SYSTEM",
    "DEFAULT_CONFIDENTIALITY",
    "SENSITIVE_CODES",
    "Labels",
    "confidentiality",
    "covered_sensitivity",
    "effective_confidentiality",
    "is_sensitive",
    "label_matches",
    "normalise_label",
    "resource_labels",
    "sensitivity_codes",
    "subsumed_codes",
]

CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY_ORDER: tuple[str, ...] = ("U", "L", "M", "N", "R", "V")
DEFAULT_CONFIDENTIALITY = "N"

_RANK = {code: rank for rank, code in enumerate(CONFIDENTIALITY_ORDER)}
_PARENT = {
    "BH": "SPI",
    "MH": "SPI",
    "PSY": "SPI",
    "PSYTHPN": "SPI",
    "SUD": "SPI",
    "ETHUD": "SUD",
    "OPIOIDUD": "SUD",
}
_FLAT = ("ETH", "GDIS", "HIV", "MST", "SCA", "SDV", "SEX", "STD", "TBOO", "PREGNANT", "SPI")
SENSITIVE_CODES: frozenset[str] = frozenset(_FLAT) | frozenset(_PARENT)
"""Every DS4P sensitivity code the proxy knows (``v3-ActCode``)."""

_SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.5.25": CONFIDENTIALITY_SYSTEM,
    "http://hl7.org/fhir/v3/Confidentiality": CONFIDENTIALITY_SYSTEM,
    "urn:oid:2.16.840.1.113883.5.4": ACT_CODE_SYSTEM,
    "http://hl7.org/fhir/v3/ActCode": ACT_CODE_SYSTEM,
}

Labels = frozenset[Coding]
"""The security labels of one resource, normalised with :func:`normalise_label`."""


def _ancestors(code: str) -> Iterable[str]:
    parent = _PARENT.get(code)
    while parent is not None:
        yield parent
        parent = _PARENT.get(parent)


_SUBSUMED = {
    code: frozenset(child for child in SENSITIVE_CODES if child == code or code in _ancestors(child))
    for code in SENSITIVE_CODES
}


def subsumed_codes(code: str) -> frozenset[str]:
    """The sensitivity codes a rule about ``code`` covers: itself and every code under it (none when
    ``code`` is not a sensitivity code)."""
    return _SUBSUMED.get(code, frozenset())


def normalise_label(label: Coding) -> Coding:
    """``label`` with its system spelt canonically (and a system-less DS4P code given its system)."""
    system = _SYSTEM_ALIASES.get(label.system, label.system)
    if not system:
        if label.code in _RANK:
            system = CONFIDENTIALITY_SYSTEM
        elif label.code in SENSITIVE_CODES:
            system = ACT_CODE_SYSTEM
    return label if system == label.system else Coding(system, label.code)


def resource_labels(resource: dict[str, Any]) -> Labels:
    """The security labels in ``resource["meta"]["security"]`` (normalised; malformed entries skipped)."""
    meta = resource.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    return frozenset(normalise_label(coding) for coding in codings_in(security))


def confidentiality(labels: Labels) -> str | None:
    """The highest confidentiality code among ``labels``, or None when there is none."""
    codes = [label.code for label in labels if label.system == CONFIDENTIALITY_SYSTEM and label.code in _RANK]
    return max(codes, key=_RANK.__getitem__, default=None)


def effective_confidentiality(labels: Labels) -> str:
    """The confidentiality the data are treated at: the highest labelled, else N."""
    return confidentiality(labels) or DEFAULT_CONFIDENTIALITY


def sensitivity_codes(labels: Labels) -> frozenset[str]:
    """The sensitivity codes among ``labels``."""
    return frozenset(
        label.code for label in labels if label.system == ACT_CODE_SYSTEM and label.code in SENSITIVE_CODES
    )


def is_sensitive(labels: Labels) -> bool:
    """True when ``labels`` hold a sensitivity code (the data need an explicit permit)."""
    return bool(sensitivity_codes(labels))


def label_matches(rule_label: Coding, labels: Labels) -> bool:
    """True when a consent rule's ``securityLabel`` covers data labelled ``labels`` (see the module doc)."""
    rule = normalise_label(rule_label)
    if rule.system == CONFIDENTIALITY_SYSTEM and rule.code in _RANK:
        return _RANK[effective_confidentiality(labels)] <= _RANK[rule.code]
    if rule.system == ACT_CODE_SYSTEM and rule.code in SENSITIVE_CODES:
        return bool(sensitivity_codes(labels) & subsumed_codes(rule.code))
    return rule in labels


def covered_sensitivity(rule_labels: Iterable[Coding]) -> frozenset[str]:
    """The sensitivity codes that rule labels ``rule_labels`` cover between them (with subsumption)."""
    covered: set[str] = set()
    for label in map(normalise_label, rule_labels):
        if label.system == ACT_CODE_SYSTEM and label.code in SENSITIVE_CODES:
            covered |= subsumed_codes(label.code)
    return frozenset(covered)
