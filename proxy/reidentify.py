"""``POST [base]/$reidentify``: reverse native reversible pseudonyms, for explicitly authorised callers only.

The caller must present a token with one of ``masking.reidentification.roles`` (and, when
``masking.reidentification.clients`` is set, one of those client_ids); everyone else gets 403, and nothing is
ever forwarded upstream. Input: a Parameters resource with ``pseudonym`` parameters (``valueString``: a bare
pseudonym ``k1.abc...`` or a reference ``Patient/k1.abc...``). Output: one ``result`` per pseudonym, with its
``original`` or an ``error``. Keys are the pseudonym keys of every configured profile, by key id, so
pseudonyms made under an older key keep reversing after rotation. Every call is written to the audit log
(who, how many, which key ids); the values themselves never are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from masking.pseudonyms import PseudonymError, decode
from proxy.auth.principal import Principal
from proxy.errors import ForbiddenError, InvalidRequestError
from proxy.fhir.request import FhirRequest, Interaction
from proxy.settings import ReidentificationSettings

__all__ = ["REIDENTIFY_OPERATION", "Reidentifier", "is_reidentify"]

REIDENTIFY_OPERATION = "reidentify"
MAX_PSEUDONYMS = 1000
audit_log = logging.getLogger("fhirwall.audit")


def is_reidentify(request: FhirRequest) -> bool:
    """Whether ``request`` is the system-level ``$reidentify`` operation."""
    return (
        request.interaction is Interaction.OPERATION
        and request.operation == REIDENTIFY_OPERATION
        and request.level == "system"
    )


class Reidentifier:
    """Checks who may re-identify and reverses pseudonyms with the configured keys."""

    def __init__(self, settings: ReidentificationSettings, keys: Mapping[str, bytes]) -> None:
        self._roles = frozenset(settings.roles)
        self._clients = frozenset(settings.clients)
        self._keys = dict(keys)

    def authorize(self, principal: Principal | None, method: str) -> Principal:
        """The caller, if allowed to re-identify; ``ForbiddenError`` otherwise (also audited)."""
        allowed = (
            principal is not None
            and bool(self._roles)
            and not self._roles.isdisjoint(principal.roles)
            and (not self._clients or principal.client_id in self._clients)
        )
        if not allowed or principal is None:
            _audit("denied", principal, 0, ())
            raise ForbiddenError("re-identification is not permitted for this caller")
        if method != "POST":
            raise InvalidRequestError("$reidentify takes a Parameters resource by POST")
        return principal

    def reidentify(self, principal: Principal, document: dict[str, Any] | None) -> dict[str, Any]:
        """The Parameters answer for a Parameters request."""
        pseudonyms = _pseudonyms(document)
        results = [self._one(value) for value in pseudonyms]
        key_ids = sorted({value.rpartition("/")[2].partition(".")[0] for value in pseudonyms})
        _audit("permitted", principal, len(pseudonyms), key_ids)
        return {"resourceType": "Parameters", "parameter": results}

    def _one(self, value: str) -> dict[str, Any]:
        prefix, slash, token = value.rpartition("/")
        part: list[dict[str, Any]] = [{"name": "pseudonym", "valueString": value}]
        try:
            original = decode(token, self._keys)
        except PseudonymError as exc:
            part.append({"name": "error", "valueString": str(exc)})
        else:
            part.append({"name": "original", "valueString": f"{prefix}{slash}{original}"})
        return {"name": "result", "part": part}


def _pseudonyms(document: dict[str, Any] | None) -> list[str]:
    if document is None or document.get("resourceType") != "Parameters":
        raise InvalidRequestError("$reidentify takes a Parameters resource")
    values = [
        parameter.get("valueString")
        for parameter in document.get("parameter") or ()
        if isinstance(parameter, dict) and parameter.get("name") == "pseudonym"
    ]
    if not values or not all(isinstance(value, str) and value for value in values):
        raise InvalidRequestError("$reidentify needs pseudonym parameters with a valueString each")
    if len(values) > MAX_PSEUDONYMS:
        raise InvalidRequestError(f"$reidentify takes at most {MAX_PSEUDONYMS} pseudonyms per call")
    return [str(value) for value in values]


def _audit(outcome: str, principal: Principal | None, count: int, key_ids: Any) -> None:
    audit_log.warning(
        "re-identification %s",
        outcome,
        extra={
            "fhirwall_event": "reidentify",
            "outcome": outcome,
            "client_id": principal.client_id if principal else None,
            "subject": principal.subject if principal else None,
            "pseudonyms": count,
            "key_ids": list(key_ids),
        },
    )
