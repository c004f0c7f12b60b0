"""Anomaly alert rules over audit records (pure, pinned clock)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.audit.alerts import AlertEngine, AlertSettings
from proxy.audit.record import AuditRecord, Decision


def record(
    *patients: str, subject: str = "u1", decision: str = Decision.PERMIT, **extra: object
) -> AuditRecord:
    made = AuditRecord(
        request_id="r", method="GET", route="/Patient", interaction="search-type", subject=subject
    )
    made.patients = set(patients)
    made.decision = decision
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_distinct_patients_in_the_window() -> None:
    engine = AlertEngine(AlertSettings(distinct_patients=3, window_minutes=10))
    assert engine.observe(record("a", "b"), now=0) == []
    assert engine.observe(record("b", "c"), now=60) == []  # 3 distinct: not more than 3
    [alert] = engine.observe(record("d"), now=120)
    assert (alert.rule, alert.count) == ("distinct-patients", 4)
    assert "d" not in alert.to_json().values()
    assert engine.observe(record("e"), now=120 + 11 * 60) == []  # the window moved on


def test_a_patient_touched_again_stays_in_the_window() -> None:
    engine = AlertEngine(AlertSettings(distinct_patients=2, window_minutes=10))
    assert engine.observe(record("a", "b"), now=0) == []
    assert engine.observe(record("a"), now=500) == []  # "a" last touched at 500, "b" at 0
    assert engine.observe(record("c"), now=650) == []  # "b" left the window: a, c
    [alert] = engine.observe(record("d"), now=700)
    assert alert.count == 3


def test_a_rule_alerts_once_per_actor_and_window() -> None:
    engine = AlertEngine(AlertSettings(distinct_patients=1, window_minutes=1))
    assert engine.observe(record("a"), now=0) == []
    assert len(engine.observe(record("b"), now=1)) == 1
    assert [engine.observe(record(p), now=2) for p in "cdefg"] == [[]] * 5  # quiet: one alert, not six
    assert engine.observe(record("h", subject="u2"), now=2) == []  # another user has their own count
    [again] = engine.observe(record("i", "j"), now=63)  # a window later: c-g have left it, i and j count
    assert (again.rule, again.count) == ("distinct-patients", 2)


def test_users_are_counted_apart() -> None:
    engine = AlertEngine(AlertSettings(distinct_patients=1))
    assert engine.observe(record("a", subject="u1"), now=0) == []
    assert engine.observe(record("b", subject="u2"), now=0) == []


def test_repeated_denials() -> None:
    engine = AlertEngine(AlertSettings(repeated_denials=2, window_minutes=1))
    denied = [engine.observe(record(decision=Decision.DENY), now=t) for t in (0, 1, 2)]
    assert [len(alerts) for alerts in denied] == [0, 0, 1]
    assert engine.observe(record(decision=Decision.DENY), now=3) == []  # quiet for this window
    assert engine.observe(record(decision=Decision.DENY), now=200) == []
    burst = [engine.observe(record(decision=Decision.DENY), now=300 + t / 1000) for t in range(5000)]
    assert [alert.count for alerts in burst for alert in alerts] == [3]  # a flood raises one alert


def test_break_glass_always_alerts_unless_turned_off() -> None:
    assert [a.rule for a in AlertEngine(AlertSettings()).observe(record(break_glass=True), now=0)] == [
        "break-glass"
    ]
    assert AlertEngine(AlertSettings(break_glass=False)).observe(record(break_glass=True), now=0) == []


@pytest.mark.parametrize(("hour", "alerts"), [(3, 1), (12, 0), (22, 1)])
def test_export_outside_hours(hour: int, alerts: int) -> None:
    engine = AlertEngine(AlertSettings(export_hours="07:00-19:00"))
    at = datetime(2026, 11, 30, hour, 30, tzinfo=UTC).timestamp()
    assert len(engine.observe(record(operation="export"), now=at)) == alerts


def test_bad_hours_are_a_settings_error() -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        AlertSettings(export_hours="seven to nine")
