"""redact: remove the value, with the Safe Harbor partial options of the profile.

* ``partial_dates``: date/dateTime/instant keep only the year, unless the value implies an age over 89.
* ``partial_ages``: ``Age.value`` over 89 is removed, other ages are kept.
* ``partial_zip_codes``: ``postalCode`` keeps its first 3 characters and zeroes the remaining digits;
  every digit is zeroed when the code starts with a restricted 3-digit area.

Labels: REDACTED for removals. Natively a value cut down to its year or a truncated zip is ABSTRED;
compatibility mode labels as the MS anonymizer does (year REDACTED, zip ABSTRED). Kept values are
unlabelled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date
from decimal import Decimal, InvalidOperation
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
from masking.methods.dates import AGE_THRESHOLD, DATE_TYPES, age_over_threshold, parse_fhir_date

__all__ = ["ABSTRED", "REDACTED", "Redact", "build", "redact_date"]

REDACTED: Final = "REDACTED"
ABSTRED: Final = "ABSTRED"
_DIGIT = re.compile(r"\d")
_ASCII_ZEROS: Final = str.maketrans("0123456789", "0" * 10)


def redact_date(value: Any, today: date, *, partial: bool, compat: bool) -> Any:
    """Redact a date value; results are relative to the REDACTED label (``REMOVE`` means REDACTED).

    With ``partial`` only the year survives, unless the value implies an age over 89 or does not parse.
    """
    if not partial:
        return REMOVE
    parsed = parse_fhir_date(value)
    if parsed is None or age_over_threshold(parsed, today):
        return REMOVE
    year = parsed.year_text
    if compat:
        return year
    year_start = parse_fhir_date(year)
    if year_start is None or age_over_threshold(year_start, today):
        return REMOVE  # natively the kept year must not itself indicate an age over 89 (idempotent too)
    return KEEP if year == value else Relabelled(year, ABSTRED)


def _number(value: Any) -> float | Decimal | None:
    """A finite numeric reading of a JSON value (numbers or numeric strings), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        number: float | Decimal = value
    elif isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


class Redact:
    """Removes values; partial options keep the Safe Harbor-permitted part."""

    name: ClassVar[str] = "redact"
    label: str | None

    def __init__(self, params: ProfileParameters) -> None:
        self.label = REDACTED
        self._compat = params.mode == "compatibility"
        self._dates = params.partial_dates
        self._ages = params.partial_ages
        self._zips = params.partial_zip_codes
        self._restricted = tuple(params.restricted_zip_codes)

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """Remove the value, or keep its permitted part (see the module docstring)."""
        if leaf.type_name in DATE_TYPES:
            # a year alone is no valid instant: natively an instant is removed whole (MS keeps the year)
            partial = self._dates and (self._compat or leaf.type_name != "instant")
            return redact_date(leaf.value, context.today, partial=partial, compat=self._compat)
        if self._ages and leaf.parent_type == "Age" and leaf.name == "value":
            return self._age(leaf.value)
        if self._zips and leaf.name.lower() == "postalcode":
            return self._zip(leaf.value)
        return REMOVE

    def _age(self, value: Any) -> Any:
        number = _number(value)
        if number is None or number > AGE_THRESHOLD:
            return REMOVE
        return Relabelled(KEEP, REDACTED) if self._compat else KEEP  # MS labels the age it keeps

    def _zip(self, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return REMOVE
        if value.startswith(self._restricted):
            masked = _zero_digits(value)
        elif len(value) >= 3:
            masked = value[:3] + _zero_digits(value[3:])
        else:
            masked = value if self._compat else _zero_digits(value)
        return Relabelled(masked, ABSTRED)


def _zero_digits(text: str) -> str:
    """Every (Unicode) digit replaced by 0, as the MS anonymizer's ``\\d`` replacement does."""
    return text.translate(_ASCII_ZEROS) if text.isascii() else _DIGIT.sub("0", text)


def build(settings: Mapping[str, Any], params: ProfileParameters) -> Redact:
    """``redact`` takes no settings; its options are profile parameters."""
    problems = common_problems("redact", settings, (), params)
    problems += [
        f"redact: restricted zip code area {area!r} is not a string"
        for area in params.restricted_zip_codes
        if not isinstance(area, str)
    ]
    if problems:
        raise MethodConfigError(problems)
    return Redact(params)
