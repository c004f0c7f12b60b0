"""FHIR date, dateTime and instant values: parsing, Safe Harbor age test, whole-day shifts.

Values are read with the FHIR R4 syntax (``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD``,
``YYYY-MM-DDThh:mm:ss[.f+][zone]``); a value that does not match, or names an impossible day, does not
parse (``None``) and methods treat it as unmaskable (they remove it).
"""

from __future__ import annotations

import functools
import re
from datetime import date
from typing import Final, NamedTuple

__all__ = [
    "AGE_THRESHOLD",
    "DATE_TYPES",
    "FhirDate",
    "age_over_threshold",
    "parse_fhir_date",
    "shift_day",
    "zero_time",
]

DATE_TYPES: Final = frozenset({"date", "dateTime", "instant"})
AGE_THRESHOLD: Final = 89
"""Safe Harbor: ages over 89 (and dates implying them) are identifying."""

_DATE = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})"
    r"(?:T([0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?",
    re.ASCII,
)
_ZERO_DIGITS: Final = str.maketrans("0123456789", "0000000000")


class FhirDate(NamedTuple):
    """A parsed value: ``year``, optional ``month`` and ``day``, the time and zone texts, and (with a day)
    the day's proleptic Gregorian ordinal."""

    year: int
    month: int | None
    day: int | None
    time: str
    zone: str
    ordinal: int | None

    @property
    def year_text(self) -> str:
        """The year as FHIR writes it (four digits)."""
        return f"{self.year:04d}"


def parse_fhir_date(value: object) -> FhirDate | None:
    """Parse a date/dateTime/instant string; ``None`` when malformed or not a real calendar day."""
    return _parse(value) if isinstance(value, str) else None


@functools.lru_cache(maxsize=8192)
def _parse(value: str) -> FhirDate | None:
    match = _DATE.fullmatch(value)
    if match is None:
        return None
    year_text, month_text, day_text, time, zone = match.groups()
    year = int(year_text)
    month = int(month_text) if month_text else None
    if year == 0 or (month is not None and not 1 <= month <= 12):
        return None
    day = ordinal = None
    if day_text:
        day = int(day_text)
        try:
            ordinal = date(year, month or 1, day).toordinal()
        except ValueError:
            return None
    return FhirDate(year, month, day, time or "", zone or "", ordinal)


def age_over_threshold(value: FhirDate, today: date) -> bool:
    """True when the value implies an age over 89 on ``today`` (the MS anonymizer's computation).

    Missing month/day count as January/the 1st (the earliest possible day, so the oldest age).
    """
    month = value.month or 1
    day = value.day or 1
    age = today.year - value.year - (1 if (today.month, today.day) < (month, day) else 0)
    return age > AGE_THRESHOLD


def shift_day(value: FhirDate, days: int) -> str | None:
    """``YYYY-MM-DD`` of the value's day moved by ``days``; ``None`` without a day or out of range."""
    if value.ordinal is None:
        return None
    try:
        return date.fromordinal(value.ordinal + days).isoformat()
    except (ValueError, OverflowError):
        return None


def zero_time(time: str) -> str:
    """The time text with every digit zeroed, length kept (``13:28:17.12`` -> ``00:00:00.00``)."""
    return time.translate(_ZERO_DIGITS)
