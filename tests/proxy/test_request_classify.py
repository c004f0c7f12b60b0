"""Request classification: every R4 REST shape, and every malformed path refused."""

from __future__ import annotations

import pytest

from proxy.errors import (
    InvalidPathError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ProxyError,
    UnknownResourceTypeError,
)
from proxy.fhir.request import Compartment, Interaction, classify

IA = Interaction


@pytest.mark.parametrize(
    ("method", "path", "query", "interaction", "resource_type", "rid", "extra"),
    [
        ("GET", "/metadata", "", IA.CAPABILITIES, None, None, {}),
        ("GET", "/Patient/123", "", IA.READ, "Patient", "123", {}),
        ("GET", "/Patient/123/_history/2", "", IA.VREAD, "Patient", "123", {"version_id": "2"}),
        ("PUT", "/Patient/123", "", IA.UPDATE, "Patient", "123", {}),
        ("PATCH", "/Patient/123", "", IA.PATCH, "Patient", "123", {}),
        ("DELETE", "/Patient/123", "", IA.DELETE, "Patient", "123", {}),
        ("PUT", "/Patient", "identifier=x", IA.UPDATE, "Patient", None, {"conditional": True}),
        ("PATCH", "/Patient", "identifier=x", IA.PATCH, "Patient", None, {"conditional": True}),
        ("DELETE", "/Patient", "identifier=x", IA.DELETE, "Patient", None, {"conditional": True}),
        ("POST", "/Patient", "", IA.CREATE, "Patient", None, {}),
        ("GET", "/Patient/123/_history", "", IA.HISTORY_INSTANCE, "Patient", "123", {}),
        ("GET", "/Patient/_history", "", IA.HISTORY_TYPE, "Patient", None, {}),
        ("GET", "/_history", "", IA.HISTORY_SYSTEM, None, None, {}),
        ("GET", "/Observation", "code=1234-5", IA.SEARCH_TYPE, "Observation", None, {}),
        ("POST", "/Observation/_search", "", IA.SEARCH_TYPE, "Observation", None, {}),
        ("GET", "", "_type=Patient", IA.SEARCH_SYSTEM, None, None, {}),
        ("POST", "/_search", "", IA.SEARCH_SYSTEM, None, None, {}),
        ("POST", "", "", IA.BATCH, None, None, {}),
        ("POST", "/", "", IA.BATCH, None, None, {}),
        ("GET", "/$meta", "", IA.OPERATION, None, None, {"operation": "meta"}),
        ("POST", "/Patient/$validate", "", IA.OPERATION, "Patient", None, {"operation": "validate"}),
        ("GET", "/Observation/$lastn", "", IA.OPERATION, "Observation", None, {"operation": "lastn"}),
        ("GET", "/Patient/1/$everything", "", IA.OPERATION, "Patient", "1", {"operation": "everything"}),
        ("GET", "/Patient/1/%24everything", "", IA.OPERATION, "Patient", "1", {"operation": "everything"}),
        (
            "GET",
            "/Patient/a.b-1/Observation",
            "",
            IA.SEARCH_COMPARTMENT,
            "Observation",
            None,
            {"compartment": Compartment("Patient", "a.b-1")},
        ),
    ],
)
def test_valid_shapes(
    method: str,
    path: str,
    query: str,
    interaction: Interaction,
    resource_type: str | None,
    rid: str | None,
    extra: dict[str, object],
) -> None:
    request = classify(method, path, query)
    assert request.interaction is interaction
    assert request.resource_type == resource_type
    assert request.id == rid
    for name, value in extra.items():
        assert getattr(request, name) == value


def test_params_are_decoded_in_order() -> None:
    request = classify("GET", "/Observation", "subject=Patient%2F1&code=a%7Cb&code=c")
    assert request.params == (("subject", "Patient/1"), ("code", "a|b"), ("code", "c"))
    assert request.param_values("code") == ["a|b", "c"]


@pytest.mark.parametrize(
    ("method", "path", "error"),
    [
        ("GET", "/patient/1", InvalidPathError),  # lower-case type
        ("GET", "/Foo/1", UnknownResourceTypeError),
        ("GET", "/Patient/..", InvalidPathError),
        ("GET", "/Patient/../Observation", InvalidPathError),
        ("GET", "/Patient/a..b", InvalidPathError),
        ("GET", "/Patient/%2e%2e", InvalidPathError),
        ("GET", "/Patient/1%2F2", InvalidPathError),
        ("GET", "/Patient//1", InvalidPathError),
        ("GET", "/Patient/1/", InvalidPathError),
        ("GET", "/Patient/" + "a" * 65, InvalidPathError),
        ("GET", "/Patient/1\\2", InvalidPathError),
        ("GET", "/P\u0430tient/1", InvalidPathError),  # Cyrillic a
        ("GET", "/Patient/\uff11", InvalidPathError),  # full-width digit
        ("GET", "/Patient/1_2", InvalidPathError),
        ("GET", "/Patient/1/_history/2/x", NotFoundError),
        ("GET", "/Patient/1/Observation/2", NotFoundError),
        ("GET", "/Patient/$bad name", InvalidPathError),
        ("GET", "/Patient/$everything/x", NotFoundError),
        ("GET", "/metadata/x", NotFoundError),
        ("DELETE", "/metadata", MethodNotAllowedError),
        ("POST", "/Patient/1", MethodNotAllowedError),
        ("PUT", "/_history", MethodNotAllowedError),
        ("GET", "/Patient/_search", MethodNotAllowedError),
        ("DELETE", "/Patient", InvalidRequestError),  # conditional delete needs criteria
        ("HEAD", "/Patient/1", MethodNotAllowedError),
        ("GET", "/Patient/1/_history/..", InvalidPathError),
    ],
)
def test_malformed_requests_are_refused(method: str, path: str, error: type[ProxyError]) -> None:
    with pytest.raises(error) as raised:
        classify(method, path)
    assert type(raised.value) is error


def test_method_not_allowed_names_allowed_methods() -> None:
    with pytest.raises(MethodNotAllowedError) as raised:
        classify("DELETE", "/metadata")
    assert raised.value.headers == {"Allow": "GET"}


def test_invalid_query_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        classify("GET", "/Patient", "name=%ZZ&&=")
