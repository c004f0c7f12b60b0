"""FHIR ``date`` / ``dateTime`` / ``instant`` values and ``Period``s as ranges of instants (pure; no I/O).

A FHIR date-time has a precision, and a value stands for every instant within it: ``2024`` is the whole of
2024, ``2024-03`` all of March, ``2024-03-05T10:00:00Z`` that whole second. So each value parses to a
half-open range ``[start, end)``: a ``Period`` starting at ``2024`` starts at 2024-01-01T00:00:00, and one
ending at ``2024`` runs up to (not including) 2025-01-01T00:00:00 — FHIR's rule that the end "includes any
matching date/time".

Values without a time zone (dates, and date-times sent without one although FHIR requires it) are read as
UTC. Anything that is not a well-formed FHIR value raises ``FhirDateError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

__all__ = ["FhirDateError", "Period", "instant_range", "parse_period"]

_VALUE = re.compile(
    r"(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2})"
    r"(?:T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]{1,9}))?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
_LATEST = datetime.max.replace(tzinfo=UTC)


class FhirDateError(ValueError):
    """A value that is not a FHIR date, dateTime or instant (or a Period whose start is after its end)."""


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open range of instants: ``start`` included, ``end`` excluded; None is unbounded."""

    start: datetime | None = None
    end: datetime | None = None

    def contains(self, when: datetime) -> bool:
        """True when the instant ``when`` (time-zone aware) lies in the period."""
        return (self.start is None or self.start <= when) and (self.end is None or when < self.end)

    def encloses(self, other: Period) -> bool:
        """True when every instant of ``other`` lies in this period (an open-ended ``other`` only in an
        equally open-ended period)."""
        if self.start is not None and (other.start is None or other.start < self.start):
            return False
        return self.end is None or (other.end is not None and other.end <= self.end)


def instant_range(text: str) -> Period:
    """The instants a FHIR date/dateTime/instant stands for, as ``Period(start, end)`` (both set)."""
    match = _VALUE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise FhirDateError("not a FHIR date, dateTime or instant")
    parts = match.groupdict()
    try:
        start = _start_of(parts)
    except (ValueError, OverflowError) as exc:
        raise FhirDateError("not a valid calendar date or time") from exc
    return Period(start, _end_of(start, parts))


def parse_period(value: object) -> Period:
    """A FHIR ``Period`` object as a ``Period`` (missing bounds stay open)."""
    if not isinstance(value, dict):
        raise FhirDateError("a Period must be an object")
    start, end = value.get("start"), value.get("end")
    period = Period(
        None if start is None else instant_range(_text(start)).start,
        None if end is None else instant_range(_text(end)).end,
    )
    if period.start is not None and period.end is not None and period.start >= period.end:
        raise FhirDateError("the Period starts after it ends")
    return period


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise FhirDateError("a date-time must be a string")
    return value


def _start_of(parts: dict[str, str | None]) -> datetime:
    fraction = (parts["fraction"] or "").ljust(6, "0")[:6]
    return datetime(
        int(parts["year"] or 0),
        int(parts["month"] or 1),
        int(parts["day"] or 1),
        int(parts["hour"] or 0),
        int(parts["minute"] or 0),
        int(parts["second"] or 0),
        int(fraction),
        tzinfo=_zone(parts["zone"]),
    )


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("time-zone offset out of range")
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if text[0] == "-" else offset)


def _end_of(start: datetime, parts: dict[str, str | None]) -> datetime:
    """The first instant after the value, at the value's own precision."""
    try:
        if parts["month"] is None:
            return start.replace(year=start.year + 1)
        if parts["day"] is None:
            return _next_month(start)
        if parts["hour"] is None:
            return start + timedelta(days=1)
        digits = min(len(parts["fraction"] or ""), 6)
        return start + timedelta(microseconds=10 ** (6 - digits))
    except (ValueError, OverflowError):
        return _LATEST


def _next_month(start: datetime) -> datetime:
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)
