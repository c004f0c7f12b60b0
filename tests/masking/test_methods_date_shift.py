"""dateShift: the MS anonymizer's offsets (compatibility) and per-patient offsets (native).

Spec (masking.md, "dateShift"): MS offset ``o = 0; for b in utf8(prefix + key): o = (o*131 + b) % 101;
o -= 50`` days, prefix = the top-level resource id (scope ``resource``); the date stays ``yyyy-MM-dd``; time
digits are zeroed keeping length and zone (``...T13:28:17.12345-05:00`` -> ``...T00:00:00.00000-05:00``);
values without day precision or implying age > 89 fall back to redact. Native: the offset is consistent per
patient so intervals survive. Vectors with key ``dummy`` are the MS anonymizer's own (empty prefix: -21 days).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from masking.methods import KEEP, REMOVE, Leaf, MaskContext, MethodConfigError, ProfileParameters, Relabelled
from masking.methods.date_shift import build, ms_offset, native_offset

TODAY = date(2024, 6, 1)
COMPAT = "compatibility"
KEY = b"0123456789abcdef0123456789abcdef"


def ctx(resource_id: str | None = None, patient: str | None = None, kind: str = "Observation") -> MaskContext:
    return MaskContext(kind, resource_id, patient, scope_key="file.ndjson", today=TODAY)


def leaf(value: Any, type_name: str = "dateTime") -> Leaf:
    return Leaf(value, type_name, "effectiveDateTime", "Observation", "Observation")


def compat(**options: Any) -> ProfileParameters:
    return ProfileParameters(mode=COMPAT, date_shift_key=b"dummy", date_shift_scope="resource", **options)


def native(**options: Any) -> ProfileParameters:
    return ProfileParameters(date_shift_key=KEY, **options)


def fold(data: bytes) -> int:
    offset = 0
    for byte in data:
        offset = (offset * 131 + byte) % 101
    return offset - 50


# Compatibility mode.


@pytest.mark.parametrize(
    ("value", "type_name", "expected"),
    [
        ("2015-02-07", "date", "2015-01-17"),
        ("2015-02-07", "dateTime", "2015-01-17"),
        ("2015-02-07T13:28:17-05:00", "dateTime", "2015-01-17T00:00:00-05:00"),
        ("2015-02-07T13:28:17+05:00", "dateTime", "2015-01-17T00:00:00+05:00"),
        ("2015-02-07T13:28:17Z", "dateTime", "2015-01-17T00:00:00Z"),
        ("2015-02-07T13:28:17.12345-05:00", "dateTime", "2015-01-17T00:00:00.00000-05:00"),
        ("2015-02-07T13:28:17.123Z", "instant", "2015-01-17T00:00:00.000Z"),
        ("2015-02-07T13:28:17", "dateTime", "2015-01-17"),
    ],
)
def test_ms_vectors(value: str, type_name: str, expected: str) -> None:
    method = build({}, compat())
    assert ms_offset("", b"dummy") == -21
    assert method.apply(leaf(value, type_name), ctx()) == expected
    assert method.label == "PERTURBED"


@given(prefix=st.text(max_size=40), key=st.binary(max_size=40))
def test_ms_offset_is_the_ms_fold(prefix: str, key: bytes) -> None:
    assert ms_offset(prefix, key) == fold(prefix.encode() + key)


@given(resource_id=st.text(max_size=30))
def test_precomputed_key_fold_matches(resource_id: str) -> None:
    method = build({}, ProfileParameters(mode=COMPAT, date_shift_key=b"secret", date_shift_scope="resource"))
    shifted = method.apply(leaf("2015-06-15", "date"), ctx(resource_id))
    days = (date.fromisoformat(shifted) - date(2015, 6, 15)).days
    assert days == fold(resource_id.encode() + b"secret")


def test_ms_prefix_is_the_resource_id_or_the_file_name() -> None:
    by_resource = build({}, compat())
    by_file = build({}, compat_with_scope("file"))
    assert by_resource.apply(leaf("2015-06-15", "date"), ctx("obs-1")) == shift(
        "2015-06-15", fold(b"obs-1dummy")
    )
    assert by_file.apply(leaf("2015-06-15", "date"), ctx("obs-1")) == shift(
        "2015-06-15", fold(b"file.ndjsondummy")
    )
    defaulted = build({}, compat_with_scope("patient"))
    assert defaulted.apply(leaf("2015-06-15", "date"), ctx("obs-1", "pat-1")) == shift(
        "2015-06-15", fold(b"obs-1dummy")
    )


def compat_with_scope(scope: str) -> ProfileParameters:
    return ProfileParameters(mode=COMPAT, date_shift_key=b"dummy", date_shift_scope=scope)


def shift(day: str, days: int) -> str:
    return date.fromordinal(date.fromisoformat(day).toordinal() + days).isoformat()


@pytest.mark.parametrize(
    ("value", "type_name", "plain", "partial"),
    [
        ("2015-02", "date", REMOVE, "2015"),
        ("2015", "dateTime", REMOVE, "2015"),
        ("1925-02-07", "date", REMOVE, REMOVE),
        ("1925-02-07T13:28:17-05:00", "instant", REMOVE, REMOVE),
        ("1915-03-07T13:28:17-05:00", "instant", REMOVE, REMOVE),
        ("2015-13-01", "date", REMOVE, REMOVE),
    ],
)
def test_ms_fallback_to_redact(value: str, type_name: str, plain: Any, partial: Any) -> None:
    assert build({}, compat()).apply(leaf(value, type_name), ctx()) == Relabelled(plain, "REDACTED")
    method = build({}, compat(partial_dates=True))
    assert method.apply(leaf(value, type_name), ctx()) == Relabelled(partial, "REDACTED")


@pytest.mark.parametrize("mode", ["native", COMPAT])
def test_fixed_offset_overrides_the_key(mode: str) -> None:
    params = ProfileParameters(mode=mode, date_shift_fixed_offset_days=1)
    method = build({}, params)
    assert method.apply(leaf("2016-02-28", "date"), ctx("a")) == "2016-02-29"
    assert method.apply(leaf("2015-12-31", "date"), ctx("b", "p")) == "2016-01-01"
    zero = build({}, ProfileParameters(mode=mode, date_shift_fixed_offset_days=0))
    assert zero.apply(leaf("2015-12-31", "date"), ctx("b")) == "2015-12-31"


@pytest.mark.parametrize("mode", ["native", COMPAT])
def test_values_that_are_not_dates_are_kept(mode: str) -> None:
    method = build({}, ProfileParameters(mode=mode, date_shift_fixed_offset_days=3))
    assert method.apply(leaf("13:28:17", "time"), ctx()) is KEEP
    assert method.apply(leaf("Peter", "string"), ctx()) is KEEP
    assert method.apply(leaf("", "date"), ctx()) is KEEP


def test_shifts_out_of_the_calendar_are_removed() -> None:
    method = build({}, ProfileParameters(date_shift_fixed_offset_days=1))
    assert method.apply(leaf("9999-12-31", "date"), ctx()) == Relabelled(REMOVE, "REDACTED")


# Native mode.


def test_native_offset_range_excludes_zero() -> None:
    offsets = {native_offset(KEY, f"patient:{i}", 5) for i in range(500)}
    assert offsets == {-5, -4, -3, -2, -1, 1, 2, 3, 4, 5}


def test_native_shift_keeps_time_zone_and_precision() -> None:
    method = build({}, native())
    offset = native_offset(KEY, "patient:p1", 50)
    day = shift("2015-02-07", offset)
    assert (
        method.apply(leaf("2015-02-07T13:28:17.12345-05:00"), ctx("o1", "p1"))
        == f"{day}T13:28:17.12345-05:00"
    )
    assert method.apply(leaf("2015-02-07", "date"), ctx("o1", "p1")) == day
    assert method.apply(leaf("2015-02-07T13:28:17Z", "instant"), ctx("o1", "p1")) == f"{day}T13:28:17Z"
    assert method.label == "MASKED"


def test_native_offsets_are_per_patient() -> None:
    method = build({}, native())
    first = method.apply(leaf("2015-02-07", "date"), ctx("obs-1", "p1"))
    assert method.apply(leaf("2015-02-07", "date"), ctx("obs-2", "p1")) == first
    assert method.apply(leaf("2015-02-07", "date"), ctx("p1", None, "Patient")) == first
    other = [method.apply(leaf("2015-02-07", "date"), ctx("obs-1", f"p{i}")) for i in range(2, 12)]
    assert len(set(other)) > 1
    later = method.apply(leaf("2015-03-09", "date"), ctx("enc-7", "p1"))
    assert (date.fromisoformat(later) - date.fromisoformat(first)).days == 30


def test_native_without_patient_uses_the_resource() -> None:
    method = build({}, native())
    expected = shift("2015-02-07", native_offset(KEY, "resource:dev-1", 50))
    assert method.apply(leaf("2015-02-07", "date"), ctx("dev-1", None, "Device")) == expected


def test_native_scopes() -> None:
    by_resource = build({}, native(date_shift_scope="resource"))
    by_file = build({}, native(date_shift_scope="folder"))
    assert by_resource.apply(leaf("2015-02-07", "date"), ctx("o1", "p1")) == shift(
        "2015-02-07", native_offset(KEY, "resource:o1", 50)
    )
    assert by_file.apply(leaf("2015-02-07", "date"), ctx("o1", "p1")) == shift(
        "2015-02-07", native_offset(KEY, "scope:file.ndjson", 50)
    )


@pytest.mark.parametrize(
    ("value", "plain", "partial"),
    [
        ("2015-02", Relabelled(REMOVE, "REDACTED"), Relabelled("2015", "ABSTRED")),
        ("2015", Relabelled(REMOVE, "REDACTED"), KEEP),
        ("1925-02-07T10:00:00Z", Relabelled(REMOVE, "REDACTED"), Relabelled(REMOVE, "REDACTED")),
        ("1934-06-01", Relabelled(REMOVE, "REDACTED"), Relabelled(REMOVE, "REDACTED")),
    ],
)
def test_native_fallback_to_redact(value: str, plain: Any, partial: Any) -> None:
    assert build({}, native()).apply(leaf(value), ctx("o", "p")) == plain
    assert build({}, native(partial_dates=True)).apply(leaf(value), ctx("o", "p")) == partial


def test_native_age_boundary_uses_the_pinned_clock() -> None:
    method = build({}, native(date_shift_fixed_offset_days=1))
    assert method.apply(leaf("1934-06-02", "date"), ctx()) == "1934-06-03"
    assert method.apply(leaf("1934-06-01", "date"), ctx()) == Relabelled(REMOVE, "REDACTED")


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        (ProfileParameters(), "dateShift: no key (set the dateShiftKey parameter or a fixed offset)"),
        (
            ProfileParameters(mode=COMPAT),
            "dateShift: no key (set the dateShiftKey parameter or a fixed offset)",
        ),
        (
            native(date_shift_scope="ward"),
            "dateShift: scope 'ward' is not one of patient, resource, file, folder",
        ),
        (
            ProfileParameters(date_shift_fixed_offset_days="5"),  # type: ignore[arg-type]
            "dateShift: fixed offset '5' is not a whole number of days",
        ),
        (
            ProfileParameters(date_shift_fixed_offset_days=True),
            "dateShift: fixed offset True is not a whole number of days",
        ),
        (native(date_shift_max_days=0), "dateShift: maximum shift 0 must be a whole number of days >= 1"),
    ],
)
def test_config_errors(params: ProfileParameters, problem: str) -> None:
    with pytest.raises(MethodConfigError) as caught:
        build({}, params)
    assert caught.value.problems == [problem]


def test_unknown_settings_are_problems() -> None:
    with pytest.raises(MethodConfigError, match="dateShift: unknown setting 'days'"):
        build({"days": 3}, native())
