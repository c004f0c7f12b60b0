"""dateShift: move date, dateTime and instant values by a whole number of days.

* Compatibility mode (MS anonymizer): the offset comes from the scope prefix (top-level resource id, or
  the file/folder name; scope ``patient``, not an MS scope, means MS's default ``resource``) then the
  key: ``o = 0; for b in utf8(prefix + key): o = (o*131 + b) % 101``, minus 50, so -50..+50 days. The
  result keeps only the day (``YYYY-MM-DD``); a time has its digits zeroed, length and zone kept.
  Label PERTURBED.
* Native mode: the offset is derived per patient, HMAC-SHA256(key, ``patient:<id>``) mapped uniformly onto
  ``[-max, +max]`` without 0, so all of a patient's dates move together and intervals survive; time of
  day, precision and zone are kept (the instant moves by exactly whole days). Label MASKED.

Either way ``date_shift_fixed_offset_days`` overrides the derived offset, and a value without day precision,
implying an age over 89, or not parsing falls back to redact (with the profile's partial-date option:
year kept unless over 89), labelled as redact labels it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any, ClassVar, Final

from masking.methods.base import (
    KEEP,
    REMOVE,
    Leaf,
    MaskContext,
    MethodConfigError,
    ProfileParameters,
    Relabelled,
    common_problems,
)
from masking.methods.dates import (
    DATE_TYPES,
    FhirDate,
    age_over_threshold,
    parse_fhir_date,
    shift_day,
    zero_time,
)
from masking.methods.redact import REDACTED, redact_date

__all__ = ["DateShift", "build", "ms_offset", "native_offset"]

_CACHE_SIZE: Final = 4096
_MS_SEED: Final = 131
_MS_MODULUS: Final = 101
_MS_RANGE: Final = 50
_SCOPES: Final = ("patient", "resource", "file", "folder")


def _fold(data: bytes) -> int:
    offset = 0
    for byte in data:
        offset = (offset * _MS_SEED + byte) % _MS_MODULUS
    return offset


def ms_offset(prefix: str, key: bytes) -> int:
    """The MS anonymizer's offset in days for ``prefix`` (scope) and ``key``."""
    return _fold(prefix.encode() + key) - _MS_RANGE


def native_offset(key: bytes, subject: str, max_days: int) -> int:
    """A keyed, uniform offset in ``[-max_days, max_days]`` other than 0 for ``subject``."""
    draw = int.from_bytes(hmac.digest(key, subject.encode(), hashlib.sha256)[:8], "big") % (2 * max_days)
    return draw - max_days if draw < max_days else draw - max_days + 1


class DateShift:
    """Shifts dates by an offset per scope (compatibility) or per patient (native)."""

    name: ClassVar[str] = "dateShift"
    label: str | None

    def __init__(self, params: ProfileParameters, offset_of: Callable[[MaskContext], int]) -> None:
        self._compat = params.mode == "compatibility"
        self.label = "PERTURBED" if self._compat else "MASKED"
        self._partial = params.partial_dates
        self._offset_of = offset_of

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """The shifted value, or the redact fallback (see the module docstring)."""
        value = leaf.value
        if leaf.type_name not in DATE_TYPES or value == "":
            return KEEP
        parsed = parse_fhir_date(value)
        if parsed is None or parsed.day is None or age_over_threshold(parsed, context.today):
            return self._fallback(value, context.today)
        day = shift_day(parsed, self._offset_of(context))
        if day is None:
            return Relabelled(REMOVE, REDACTED)
        return self._compat_text(day, parsed) if self._compat else day + value[10:]

    @staticmethod
    def _compat_text(day: str, parsed: FhirDate) -> str:
        """MS keeps a time only when it has seconds and a zone, digits zeroed."""
        if parsed.time and parsed.zone:
            return f"{day}T{zero_time(parsed.time)}{parsed.zone}"
        return day

    def _fallback(self, value: Any, today: date) -> Any:
        result = redact_date(value, today, partial=self._partial, compat=self._compat)
        if result is REMOVE or isinstance(result, str):
            return Relabelled(result, REDACTED)
        return result


class _Offsets:
    """Per-subject offsets, computed once per subject (bounded cache)."""

    def __init__(self, compute: Callable[[str], int], subject: Callable[[MaskContext], str]) -> None:
        self._compute = compute
        self._subject = subject
        self._cache: dict[str, int] = {}

    def __call__(self, context: MaskContext) -> int:
        subject = self._subject(context)
        offset = self._cache.get(subject)
        if offset is None:
            offset = self._compute(subject)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[subject] = offset
        return offset


def _ms_prefix(scope: str) -> Callable[[MaskContext], str]:
    """MS prefixes: the file/folder name, else the resource id ('patient' is not an MS scope: its default)."""
    if scope in ("file", "folder"):
        return lambda context: context.scope_key or ""
    return lambda context: context.resource_id or ""


def _native_subject(scope: str) -> Callable[[MaskContext], str]:
    if scope == "patient":
        return _patient_subject
    if scope == "resource":
        return lambda context: "resource:" + (context.resource_id or "")
    return lambda context: "scope:" + (context.scope_key or "")


def _patient_subject(context: MaskContext) -> str:
    """``patient:<id>``; a Patient is its own patient; a resource without one is keyed by its id."""
    if context.patient_id is not None:
        return "patient:" + context.patient_id
    if context.resource_type == "Patient" and context.resource_id is not None:
        return "patient:" + context.resource_id
    return "resource:" + (context.resource_id or "")


def _offset_source(params: ProfileParameters) -> Callable[[MaskContext], int]:
    fixed = params.date_shift_fixed_offset_days
    if fixed is not None:
        return lambda context: fixed
    key = params.date_shift_key or b""
    if params.mode == "compatibility":
        # Folding is affine, so the key's part is precomputed: fold(p + k) = fold(p) * 131^len(k) + fold(k).
        scale, tail = pow(_MS_SEED, len(key), _MS_MODULUS), _fold(key)
        return _Offsets(
            lambda prefix: (_fold(prefix.encode()) * scale + tail) % _MS_MODULUS - _MS_RANGE,
            _ms_prefix(params.date_shift_scope),
        )
    max_days = params.date_shift_max_days
    return _Offsets(
        lambda subject: native_offset(key, subject, max_days), _native_subject(params.date_shift_scope)
    )


def _problems(settings: Mapping[str, Any], params: ProfileParameters) -> list[str]:
    problems = common_problems("dateShift", settings, (), params)
    compat = params.mode == "compatibility"
    if params.date_shift_scope not in _SCOPES:
        problems.append(f"dateShift: scope {params.date_shift_scope!r} is not one of {', '.join(_SCOPES)}")
    fixed = params.date_shift_fixed_offset_days
    if fixed is not None and (isinstance(fixed, bool) or not isinstance(fixed, int)):
        problems.append(f"dateShift: fixed offset {fixed!r} is not a whole number of days")
    elif fixed is None and not params.date_shift_key:
        problems.append("dateShift: no key (set the dateShiftKey parameter or a fixed offset)")
    max_days = params.date_shift_max_days
    if not compat and (isinstance(max_days, bool) or not isinstance(max_days, int) or max_days < 1):
        problems.append(f"dateShift: maximum shift {max_days!r} must be a whole number of days >= 1")
    return problems


def build(settings: Mapping[str, Any], params: ProfileParameters) -> DateShift:
    """``dateShift`` takes no settings; key, scope and offsets are profile parameters."""
    problems = _problems(settings, params)
    if problems:
        raise MethodConfigError(problems)
    return DateShift(params, _offset_source(params))
