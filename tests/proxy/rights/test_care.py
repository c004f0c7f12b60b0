"""Care relationships from Encounters, EpisodesOfCare and CareTeams (pure: tables over resources)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from proxy.rights.care import facts_from_resources

NOW = datetime.now(UTC)
DAY = timedelta(days=1)
ORG = "Organization/cardiology"
WARD = "Location/ward"
DOCTOR = "Practitioner/doc"


def encounter(status: str, start: datetime | None = None, end: datetime | None = None, **extra: Any) -> Any:
    period = {}
    if start:
        period["start"] = start.isoformat()
    if end:
        period["end"] = end.isoformat()
    return {
        "resourceType": "Encounter",
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "serviceProvider": {"reference": ORG},
        "location": [{"location": {"reference": WARD}}],
        "participant": [{"individual": {"reference": DOCTOR}}],
        "period": period,
        **extra,
    }


@pytest.mark.parametrize(
    ("resource", "related"),
    [
        (encounter("in-progress", NOW - 2 * DAY), {ORG, WARD, DOCTOR}),
        (encounter("planned", NOW + DAY), {ORG, WARD, DOCTOR}),
        (encounter("finished", NOW - 9 * DAY, NOW - 5 * DAY), {ORG, WARD, DOCTOR}),
        (encounter("finished", NOW - 40 * DAY, NOW - 31 * DAY), set()),  # outside the 30-day window
        (encounter("finished", NOW - 10 * DAY), {ORG, WARD, DOCTOR}),  # no end: the start counts
        (encounter("cancelled", NOW - DAY), set()),
        (encounter("entered-in-error", NOW - DAY), set()),
        (encounter("in-progress", NOW, subject={"reference": "Patient/other"}), set()),  # not this patient
        (
            {"resourceType": "EpisodeOfCare", "status": "active", "patient": {"reference": "Patient/p1"},
             "managingOrganization": {"reference": ORG}, "careManager": {"reference": DOCTOR}},
            {ORG, DOCTOR},
        ),
        (
            {"resourceType": "EpisodeOfCare", "status": "finished", "patient": {"reference": "Patient/p1"},
             "managingOrganization": {"reference": ORG}, "period": {"end": (NOW - 60 * DAY).isoformat()}},
            set(),
        ),
        (
            {"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Patient/p1"},
             "participant": [{"member": {"reference": DOCTOR}}],
             "managingOrganization": [{"reference": ORG}]},
            {ORG, DOCTOR},
        ),
        (
            {"resourceType": "CareTeam", "status": "inactive", "subject": {"reference": "Patient/p1"},
             "participant": [{"member": {"reference": DOCTOR}}]},
            set(),
        ),
        (
            {"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Patient/p1"},
             "period": {"end": "2001-01-01"}, "participant": [{"member": {"reference": DOCTOR}}]},
            set(),
        ),
    ],
)  # fmt: skip
def test_relationships(resource: dict[str, Any], related: set[str]) -> None:
    facts = facts_from_resources([resource], "p1", recent_days=30)
    now = time.time()
    assert {reference for reference in (ORG, WARD, DOCTOR) if facts.relates([reference], now)} == related


def test_a_recent_relationship_expires_with_the_window() -> None:
    facts = facts_from_resources([encounter("finished", NOW - 9 * DAY, NOW - 5 * DAY)], "p1", recent_days=30)
    assert facts.relates([ORG], time.time() + 24 * 86_400)
    assert not facts.relates([ORG], time.time() + 26 * 86_400)
    assert not facts.relates(["Organization/oncology"], time.time())


def test_partial_dates_count_to_the_end_of_their_span() -> None:
    this_year = str(NOW.year)
    facts = facts_from_resources([encounter("finished", end=None, period={"end": this_year})], "p1", 0)
    assert facts.relates([ORG], time.time())


def test_offsets_and_unreadable_dates() -> None:
    end = (NOW - 10 * DAY).astimezone(timezone(timedelta(hours=8))).isoformat()  # same instant, +08:00
    facts = facts_from_resources([encounter("finished", period={"end": end})], "p1", recent_days=30)
    assert facts.relates([ORG], time.time())
    unreadable = facts_from_resources([encounter("finished", period={"end": "yesterday"})], "p1", 30)
    assert not unreadable.relates([ORG], time.time())
