"""FHIR date, dateTime and instant values: parsing, Safe Harbor age test, whole-day shifts.

Values are read with the FHIR R4 syntax (``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD``,
``YYYY-MM-DDThh:mm:ss[.f+][zone]``); a value that does not match, or names an impossible day, does not
parse (``None``) and methods treat it as unmaskable (they remove it).
"""

from __future__ import annotations

import re
from datetime import date, timedelta
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
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?",
    re.ASCII,
)
_ZERO_DIGITS: Final = str.maketrans("0123456789", "0000000000")


class FhirDate(NamedTuple):
    """A parsed value: ``year``, optional ``month`` and ``day``, the time text and the zone text."""

    year: int
    month: int | None
    day: int | None
    time: str
    zone: str

    @property
    def year_text(self) -> str:
        """The year as FHIR writes it (four digits)."""
        return f"{self.year:04d}"


def parse_fhir_date(value: object) -> FhirDate | None:
    """Parse a date/dateTime/instant string; ``None`` when malformed or not a real calendar day."""
    if not isinstance(value, str):
        return None
    match = _DATE.fullmatch(value)
    if match is None:
        return None
    year, month, day = match["y"], match["m"], match["d"]
    parsed = FhirDate(
        int(year),
        int(month) if month else None,
        int(day) if day else None,
        match["time"] or "",
        match["zone"] or "",
    )
    return parsed if _plausible(parsed) else None


def _plausible(value: FhirDate) -> bool:
    if value.year == 0 or (value.month is not None and not 1 <= value.month <= 12):
        return False
    if value.day is None:
        return True
    try:
        date(value.year, value.month or 1, value.day)
    except ValueError:
        return False
    return True


def age_over_threshold(value: FhirDate, today: date) -> bool:
    """True when the value implies an age over 89 on ``today`` (the MS anonymizer's computation).

    Missing month/day count as January/the 1st (the earliest possible day, so the oldest age).
    """
    month = value.month or 1
    day = value.day or 1
    age = today.year - value.year - (1 if (today.month, today.day) < (month, day) else 0)
    return age > AGE_THRESHOLD


def shift_day(value: FhirDate, days: int) -> str | None:
    """``YYYY-MM-DD`` of the value's day moved by ``days``; ``None`` when out of the calendar's range."""
    if value.month is None or value.day is None:
        return None
    try:
        shifted = date(value.year, value.month, value.day) + timedelta(days=days)
    except OverflowError:
        return None
    return shifted.isoformat()


def zero_time(time: str) -> str:
    """The time text with every digit zeroed, length kept (``13:28:17.12`` -> ``00:00:00.00``)."""
    return time.translate(_ZERO_DIGITS)
