"""Anomaly alerts over the stream of audit records: the patterns an access reviewer wants to hear about.

Rules (each optional, see ``AlertSettings``): one user touching more than N distinct patients within T
minutes, repeated denials for one user or client, any break-glass access, bulk export (``$export``) outside
allowed hours.
An alert names its rule and a pseudonymous actor, never patient identifiers; the trail logs it on
``fhirwall.alert``, adds it to the record (a span event in telemetry) and, when configured, posts it to a
webhook. State is kept per process in bounded sliding windows.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from proxy.audit.record import AuditRecord, Decision

__all__ = ["Alert", "AlertEngine", "AlertSettings"]

_MAX_ACTORS = 50_000


class AlertSettings(BaseModel):
    """Which anomaly rules run (an unset rule is off)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    distinct_patients: int | None = Field(
        None, ge=1, description="Alert when one user touches more than this many patients in the window."
    )
    repeated_denials: int | None = Field(
        None,
        ge=1,
        description="Alert when one user/client is denied more than this many times in the window.",
    )
    window_minutes: float = Field(
        10.0, gt=0, le=1440, description="The sliding window of the counting rules."
    )
    break_glass: bool = Field(True, description="Alert on every break-glass access.")
    export_hours: str | None = Field(
        None, description="Hours (UTC, HH:MM-HH:MM) when bulk $export is expected; outside them it alerts."
    )
    webhook_url: str | None = Field(None, description="POST each alert as JSON to this URL.")

    @field_validator("export_hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None:
            _parse_hours(value)
        return value


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert: the rule, who set it off (pseudonymous), what was counted, when, and the request id."""

    rule: str
    actor: str
    count: int
    at: float
    request_id: str

    def to_json(self) -> dict[str, Any]:
        """The alert as a JSON object (no PHI)."""
        instant = datetime.fromtimestamp(self.at, tz=UTC).isoformat(timespec="milliseconds")
        return {
            "rule": self.rule,
            "actor": self.actor,
            "count": self.count,
            "at": instant.replace("+00:00", "Z"),
            "request_id": self.request_id,
        }


class AlertEngine:
    """Evaluates the configured rules on each record."""

    def __init__(self, settings: AlertSettings) -> None:
        self._settings = settings
        self._window = settings.window_minutes * 60
        self._patients: dict[str, deque[tuple[float, str]]] = defaultdict(deque)
        self._denials: dict[str, deque[float]] = defaultdict(deque)
        self._hours = _parse_hours(settings.export_hours) if settings.export_hours else None

    def observe(self, record: AuditRecord, now: float | None = None) -> list[Alert]:
        """The alerts this record sets off (and remembers what the counting rules need)."""
        settings = self._settings
        break_glass = settings.break_glass and record.break_glass
        count_patients = settings.distinct_patients is not None and bool(record.patients)
        count_denial = settings.repeated_denials is not None and record.decision == Decision.DENY
        export = self._hours is not None and record.operation == "export"
        if not (break_glass or count_patients or count_denial or export):
            return []  # no rule concerns this record (most requests): nothing to work out
        at = time.time() if now is None else now
        actor = _actor(record)
        alerts: list[Alert] = []
        if break_glass:
            alerts.append(Alert("break-glass", actor, 1, at, record.request_id))
        if count_patients:
            alerts += self._distinct_patients(record, actor, at)
        if count_denial:
            alerts += self._repeated_denials(record, actor, at)
        if export and self._hours is not None and not _within(self._hours, at):
            alerts.append(Alert("export-outside-hours", actor, 1, at, record.request_id))
        return alerts

    def _distinct_patients(self, record: AuditRecord, actor: str, at: float) -> list[Alert]:
        seen = self._recent(self._patients, actor, at)
        seen.extend((at, _digest(patient)) for patient in record.patients)
        distinct = len({patient for _, patient in seen})
        limit = self._settings.distinct_patients or 0
        return (
            [Alert("distinct-patients", actor, distinct, at, record.request_id)] if distinct > limit else []
        )

    def _repeated_denials(self, record: AuditRecord, actor: str, at: float) -> list[Alert]:
        denials = self._recent_times(self._denials, actor, at)
        denials.append(at)
        limit = self._settings.repeated_denials or 0
        return (
            [Alert("repeated-denials", actor, len(denials), at, record.request_id)]
            if len(denials) > limit
            else []
        )

    def _recent(
        self, table: dict[str, deque[tuple[float, str]]], actor: str, at: float
    ) -> deque[tuple[float, str]]:
        self._bound(table)
        entries = table[actor]
        while entries and entries[0][0] < at - self._window:
            entries.popleft()
        return entries

    def _recent_times(self, table: dict[str, deque[float]], actor: str, at: float) -> deque[float]:
        self._bound(table)
        entries = table[actor]
        while entries and entries[0] < at - self._window:
            entries.popleft()
        return entries

    @staticmethod
    def _bound(table: dict[str, Any]) -> None:
        if len(table) > _MAX_ACTORS:  # a flood of distinct actors must not grow memory without bound
            table.clear()


def _actor(record: AuditRecord) -> str:
    """A stable pseudonym of who acted: the user (subject/fhirUser) and the client."""
    who = f"{record.issuer}|{record.subject or record.fhir_user or '-'}|{record.client_id or '-'}"
    return "actor-" + hashlib.sha256(who.encode()).hexdigest()[:16]


def _digest(patient: str) -> str:
    return hashlib.sha256(patient.encode()).hexdigest()[:20]  # windows hold no patient ids in clear


def _parse_hours(text: str) -> tuple[int, int]:
    try:
        start, end = text.split("-")
        return _minutes(start), _minutes(end)
    except ValueError:
        raise ValueError("expected HH:MM-HH:MM (UTC)") from None


def _minutes(text: str) -> int:
    hours, minutes = text.strip().split(":")
    value = int(hours) * 60 + int(minutes)
    if not 0 <= value <= 24 * 60:
        raise ValueError(text)
    return value


def _within(hours: tuple[int, int], at: float) -> bool:
    moment = datetime.fromtimestamp(at, tz=UTC)
    minute = moment.hour * 60 + moment.minute
    start, end = hours
    return start <= minute < end if start <= end else minute >= start or minute < end
