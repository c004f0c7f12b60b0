"""Consent errors, rendered like every other proxy error."""

from __future__ import annotations

from proxy.errors import ForbiddenError, ProxyError

__all__ = ["ConsentDeniedError", "ConsentLookupError"]


class ConsentLookupError(ProxyError):
    """The patient's Consents could not be read (store or cache down): access is denied, never assumed."""

    status_code = 503
    issue_code = "transient"
    default_message = "the patient's consent records could not be checked, so access is denied"


class ConsentDeniedError(ForbiddenError):
    default_message = "the patient's consent does not permit this access"
