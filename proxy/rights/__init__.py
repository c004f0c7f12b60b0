"""The access policy for people and clients: roles and operations with FHIRPath conditions, department
isolation from care relationships, revocation, two-person review of sensitive requests, and access reviews.

    model.py        the policy file (pydantic; JSON Schema; every problem reported at start-up)
    grants.py       the policy compiled for lookups; FHIRPath conditions compiled once
    attributes.py   the caller's roles, organisations, locations (token, assignments, PractitionerRoles)
    care.py         care relationships per patient (Encounter, EpisodeOfCare, CareTeam), cached
    gate.py         RightsGate / RightsView: what one caller may do and see during one request
    enforcement.py  the checks around the upstream call (operation, written and stored resources, answers)
    operations.py   FHIR interactions as policy operations
    sensitive.py    rules that need approvals, and using presented approvals
    approvals.py    two-person approvals (memory or Redis; used exactly once)
    revocation.py   revoked users, clients and tokens (Redis or a file; a local copy checked per request)
    admin.py        the /admin API (revocations, approvals); admin_audit.py audits its actions
    review.py       the access review over the audit log
"""

from proxy.rights.approvals import Approval, ApprovalStore, MemoryApprovalStore, RedisApprovalStore
from proxy.rights.errors import ApprovalRequiredError, PolicyDeniedError, RevokedError, RightsLookupError
from proxy.rights.gate import RightsGate, RightsView
from proxy.rights.model import AccessPolicy, AccessPolicyError, load_access_policy, parse_access_policy
from proxy.rights.revocation import RevocationList, RevocationStore

__all__ = [
    "AccessPolicy",
    "AccessPolicyError",
    "Approval",
    "ApprovalRequiredError",
    "ApprovalStore",
    "MemoryApprovalStore",
    "PolicyDeniedError",
    "RedisApprovalStore",
    "RevocationList",
    "RevocationStore",
    "RevokedError",
    "RightsGate",
    "RightsLookupError",
    "RightsView",
    "load_access_policy",
    "parse_access_policy",
]
