"""Requests as policy operations, and the one-patient searches the fast path may decide at once."""

from __future__ import annotations

import pytest

from proxy.fhir.request import classify, searched_patient
from proxy.rights.operations import operation_of, response_operations


@pytest.mark.parametrize(
    ("method", "path", "query", "operation"),
    [
        ("GET", "/Patient/1", "", "read"),
        ("GET", "/Patient/1/_history/2", "", "history"),
        ("GET", "/Patient/1/_history", "", "history"),
        ("GET", "/Observation", "code=x", "search"),
        ("POST", "/Observation/_search", "", "search"),
        ("GET", "/Patient/1/Observation", "", "search"),
        ("POST", "/Observation", "", "create"),
        ("PUT", "/Observation/1", "", "update"),
        ("PATCH", "/Observation/1", "", "update"),
        ("DELETE", "/Observation/1", "", "delete"),
        ("GET", "/Binary/1", "", "download"),
        ("GET", "/Binary/1/_history/1", "", "download"),
        ("GET", "/Patient/$export", "", "export"),
        ("POST", "/$reidentify", "", "reidentify"),
        ("GET", "/Patient/1/$everything", "", "$everything"),
        ("GET", "/metadata", "", None),
    ],
)
def test_operation_of(method: str, path: str, query: str, operation: str | None) -> None:
    assert operation_of(classify(method, path, query)) == operation


def test_answers_are_seen_under_read_search_or_history() -> None:
    assert response_operations("history") == {"history"}
    assert response_operations("create") == {"read", "search", "create"}
    assert response_operations("$everything") == {"read", "search"}


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/Observation", "patient=1", ("Observation", "1")),
        ("/Observation", "subject=Patient/1", ("Observation", "1")),
        ("/Observation", "patient=Patient/1&code=x", ("Observation", "1")),
        ("/Patient/1/Condition", "", ("Condition", "1")),
        ("/Observation", "subject=1", None),  # subject=<id> may name a Group
        ("/Observation", "patient=1,2", None),
        ("/Observation", "patient=1&subject=Patient/2", None),
        ("/Observation", "patient=1&_include=Observation:performer", None),
        ("/Observation", "code=x", None),
        ("/Observation/1", "", None),
    ],
)
def test_searched_patient(path: str, query: str, expected: tuple[str, str] | None) -> None:
    assert searched_patient(classify("GET", path, query)) == expected
