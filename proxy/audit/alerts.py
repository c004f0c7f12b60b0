"""Anomaly alerts over the stream of audit records: the patterns an access reviewer wants to hear about.

Rules (each optional, see ``AlertSettings``): one user touching more than N distinct patients within T
minutes, repeated denials for one user or client, any break-glass access, bulk export (``$export``) outside
allowed hours.
An alert names its rule and a pseudonymous actor, never patient identifiers; the trail logs it on
``fhirwall.alert``, adds it to the record (a span event in telemetry) and, when configured, posts it to a
webhook. State is kept per process in bounded sliding windows; a counting rule alerts once per actor and
window.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from proxy.audit.record import AuditRecord, Decision

__all__ = ["Alert", "AlertEngine", "AlertSettings"]

_MAX_ACTORS = 50_000
_MAX_PATIENTS_PER_ACTOR = 100_000


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
    """Evaluates the configured rules on each record.

    Each counting rule alerts once when an actor's count goes over its limit, then stays quiet for that
    actor for one window (a user denied 10,000 times raises one alert per window, not 10,000 alerts and
    webhook posts). Work per record is constant: windows are pruned from their oldest end."""

    def __init__(self, settings: AlertSettings) -> None:
        self._settings = settings
        self._window = settings.window_minutes * 60
        self._patients: dict[str, dict[str, float]] = {}
        """Per actor: patient digest -> when last touched, oldest first."""
        self._denials: dict[str, deque[float]] = {}
        """Per actor: the times of its latest denials (at most the limit + 1 are needed)."""
        self._quiet_until: dict[tuple[str, str], float] = {}
        """(rule, actor) -> until when that rule stays quiet for the actor after alerting."""
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
            count = self._distinct_patients(record, actor, at)
            alerts += self._over("distinct-patients", settings.distinct_patients, count, actor, at, record)
        if count_denial:
            count = self._repeated_denials(actor, at)
            alerts += self._over("repeated-denials", settings.repeated_denials, count, actor, at, record)
        if export and self._hours is not None and not _within(self._hours, at):
            alerts.append(Alert("export-outside-hours", actor, 1, at, record.request_id))
        return alerts

    def _over(
        self, rule: str, limit: int | None, count: int, actor: str, at: float, record: AuditRecord
    ) -> list[Alert]:
        """An alert when ``count`` is over ``limit`` and the rule is not quiet for this actor."""
        if count <= (limit or 0) or self._quiet_until.get((rule, actor), -1.0) > at:
            return []
        _bound(self._quiet_until)
        self._quiet_until[(rule, actor)] = at + self._window
        return [Alert(rule, actor, count, at, record.request_id)]

    def _distinct_patients(self, record: AuditRecord, actor: str, at: float) -> int:
        """How many distinct patients the actor touched within the window, this record included."""
        seen = self._patients.get(actor)
        if seen is None:
            _bound(self._patients)
            seen = self._patients[actor] = {}
        for patient in record.patients:
            digest = _digest(patient)
            seen.pop(digest, None)  # re-inserted last: the dict stays ordered by last touch
            seen[digest] = at
        horizon = at - self._window
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] >= horizon:
                break
            del seen[oldest]
        while len(seen) > _MAX_PATIENTS_PER_ACTOR:  # memory stays bounded; the count stays over any limit
            del seen[next(iter(seen))]
        return len(seen)

    def _repeated_denials(self, actor: str, at: float) -> int:
        """How many times the actor was denied within the window (capped at the limit + 1)."""
        denials = self._denials.get(actor)
        if denials is None:
            _bound(self._denials)
            denials = self._denials[actor] = deque(maxlen=(self._settings.repeated_denials or 0) + 1)
        denials.append(at)
        while denials and denials[0] < at - self._window:
            denials.popleft()
        return len(denials)


def _bound(table: dict[Any, Any]) -> None:
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
