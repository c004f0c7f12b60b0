"""Errors of the access-policy layer (each renders itself as an OperationOutcome).

ForbiddenError                    403 forbidden
├── PolicyDeniedError             403 forbidden  (no role grants the operation, or a condition fails)
└── ApprovalRequiredError         403 forbidden  (a sensitive request without a usable approval)
AuthenticationError               401 login
└── RevokedError                  401 login      (the user, client or token was revoked)
UpstreamUnavailableError          503 transient
└── RightsLookupError             503 transient  (attributes or care relationships could not be read)
"""

from __future__ import annotations

from proxy.errors import AuthenticationError, ForbiddenError, UpstreamUnavailableError

__all__ = ["ApprovalRequiredError", "PolicyDeniedError", "RevokedError", "RightsLookupError"]


class PolicyDeniedError(ForbiddenError):
    """The access policy does not give the caller's roles this right."""

    default_message = "the access policy does not permit this request"


class ApprovalRequiredError(ForbiddenError):
    """A sensitive request needs a second person's approval (sent as ``approval_header``)."""

    def __init__(self, rule: str, problem: str, approval_header: str) -> None:
        super().__init__(
            f"this request needs an approval ({rule}): {problem}; ask an approver to approve an approval "
            f"request and send its id in the {approval_header} header"
        )
        self.rule = rule
        self.problem = problem


class RevokedError(AuthenticationError):
    """The caller's access was revoked by an operator."""

    default_message = "access for this user or client has been revoked"


class RightsLookupError(UpstreamUnavailableError):
    """The caller's roles or a patient's care relationships could not be read: no rights are granted."""

    default_message = "the access policy could not be evaluated (a lookup failed); try again later"
