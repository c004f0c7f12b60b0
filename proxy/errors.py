"""The proxy's exception tree and its rendering as FHIR OperationOutcomes.

Every error a client can see is a ``ProxyError``; each class carries its HTTP status, the FHIR
``IssueType`` code and a severity, and renders itself. Foreign exceptions are translated where they
enter (``raise UpstreamTimeoutError(...) from exc``), never passed through.

    ProxyError                       500 exception
    ├── MaskingFailedError           500 exception  (the answer could not be masked; it is withheld)
    ├── InvalidRequestError          400 invalid
    │   ├── MalformedJsonError       400 structure
    │   ├── InvalidPathError         400 invalid
    │   └── ForbiddenHeaderError     400 security
    ├── AuthenticationError          401 login      (WWW-Authenticate: Bearer ...)
    ├── ForbiddenError               403 forbidden
    │   └── InsufficientScopeError   403 forbidden  (WWW-Authenticate: Bearer error="insufficient_scope")
    ├── NotFoundError                404 not-found
    │   └── UnknownResourceTypeError 404 not-supported
    ├── MethodNotAllowedError        405 not-supported
    ├── NotAcceptableError           406 not-supported
    ├── PayloadTooLargeError         413 too-costly
    ├── UnsupportedMediaTypeError    415 not-supported
    ├── TooManyRequestsError         429 throttled  (Retry-After: seconds; a rate limit or quota is spent)
    ├── NotSupportedError            501 not-supported
    └── UpstreamError                502 exception
        ├── InvalidUpstreamResponseError 502 exception
        ├── UpstreamUnavailableError 503 transient
        │   └── IssuerUnavailableError 503 transient (token keys or introspection unreachable)
        └── UpstreamTimeoutError     504 timeout

Diagnostics never echo request values (ids, search values, bodies): they may carry PHI.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

__all__ = [
    "FHIR_JSON",
    "AuthenticationError",
    "ForbiddenError",
    "ForbiddenHeaderError",
    "InsufficientScopeError",
    "InvalidPathError",
    "InvalidRequestError",
    "InvalidUpstreamResponseError",
    "IssuerUnavailableError",
    "MalformedJsonError",
    "MaskingFailedError",
    "MethodNotAllowedError",
    "NotAcceptableError",
    "NotFoundError",
    "NotSupportedError",
    "PayloadTooLargeError",
    "ProxyError",
    "TooManyRequestsError",
    "UnknownResourceTypeError",
    "UnsupportedMediaTypeError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "outcome_body",
]

FHIR_JSON = "application/fhir+json; charset=utf-8"


class ProxyError(Exception):
    """Base of every error the proxy reports to a client."""

    status_code: ClassVar[int] = 500
    issue_code: ClassVar[str] = "exception"
    severity: ClassVar[str] = "error"
    default_message: ClassVar[str] = "internal proxy error; the request was not completed"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)

    def to_outcome(self) -> dict[str, object]:
        """This error as an OperationOutcome resource (a plain dict)."""
        issue = {"severity": self.severity, "code": self.issue_code, "diagnostics": self.message}
        return {"resourceType": "OperationOutcome", "issue": [issue]}


class MaskingFailedError(ProxyError):
    """The answer could not be masked with the selected profile; it is withheld, never sent unmasked."""

    def __init__(self, profile: str) -> None:
        super().__init__(f"the answer could not be masked with profile {profile!r} and was withheld")


class InvalidRequestError(ProxyError):
    status_code = 400
    issue_code = "invalid"
    default_message = "the request is not a valid FHIR REST request"


class MalformedJsonError(InvalidRequestError):
    issue_code = "structure"
    default_message = "the request body is not well-formed JSON"


class InvalidPathError(InvalidRequestError):
    default_message = "the request path is not a valid FHIR REST path"


class ForbiddenHeaderError(InvalidRequestError):
    issue_code = "security"
    default_message = "the request carries a header this proxy refuses"


class AuthenticationError(ProxyError):
    """No usable access token (RFC 6750): missing, malformed, expired, wrong audience/issuer/signature."""

    status_code = 401
    issue_code = "login"
    default_message = "a valid bearer access token is required"

    def __init__(self, message: str | None = None, *, missing: bool = False) -> None:
        challenge = 'Bearer realm="fhirwall"'
        if not missing:
            description = (message or self.default_message).replace('"', "'")
            challenge += f', error="invalid_token", error_description="{description}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class ForbiddenError(ProxyError):
    status_code = 403
    issue_code = "forbidden"
    default_message = "access to this data is not permitted"


class InsufficientScopeError(ForbiddenError):
    default_message = "the access token's scopes do not permit this request"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message, headers={"WWW-Authenticate": 'Bearer realm="fhirwall", error="insufficient_scope"'}
        )


class NotFoundError(ProxyError):
    status_code = 404
    issue_code = "not-found"
    default_message = "no such endpoint"


class UnknownResourceTypeError(NotFoundError):
    issue_code = "not-supported"
    default_message = "unknown FHIR resource type"


class MethodNotAllowedError(ProxyError):
    status_code = 405
    issue_code = "not-supported"
    default_message = "this HTTP method is not allowed on this FHIR endpoint"


class NotAcceptableError(ProxyError):
    status_code = 406
    issue_code = "not-supported"
    default_message = (
        "only FHIR JSON (application/fhir+json) can be returned: this proxy enforces access rules and "
        "masking on JSON only, so XML and other formats are refused"
    )


class PayloadTooLargeError(ProxyError):
    status_code = 413
    issue_code = "too-costly"
    default_message = "the request body is larger than this proxy accepts"


class UnsupportedMediaTypeError(ProxyError):
    status_code = 415
    issue_code = "not-supported"
    default_message = "unsupported Content-Type: send application/fhir+json"


class TooManyRequestsError(ProxyError):
    """A rate limit or quota is spent (RFC 6585); ``Retry-After`` says how many seconds to wait."""

    status_code = 429
    issue_code = "throttled"
    default_message = "too many requests: a rate limit of this proxy is spent"

    def __init__(
        self, message: str | None = None, *, retry_after: int, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after), **(headers or {})})


class NotSupportedError(ProxyError):
    status_code = 501
    issue_code = "not-supported"
    default_message = "this interaction is not supported by the proxy"


class UpstreamError(ProxyError):
    status_code = 502
    issue_code = "exception"
    default_message = "the upstream FHIR server failed"


class InvalidUpstreamResponseError(UpstreamError):
    default_message = "the upstream FHIR server sent a response the proxy cannot use"


class UpstreamUnavailableError(UpstreamError):
    status_code = 503
    issue_code = "transient"
    default_message = "the upstream FHIR server is unavailable"


class IssuerUnavailableError(UpstreamUnavailableError):
    default_message = "the token issuer could not be reached to verify the access token"


class UpstreamTimeoutError(UpstreamError):
    status_code = 504
    issue_code = "timeout"
    default_message = "the upstream FHIR server did not answer in time"


def outcome_body(error: ProxyError) -> bytes:
    """The serialized OperationOutcome for ``error``."""
    return orjson.dumps(error.to_outcome())
