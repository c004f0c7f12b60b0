"""The access-policy file: roles and what each may do, where roles and attributes come from, department
isolation, sensitive operations that need a second person's approval, and revocation.

The file is YAML validated by ``AccessPolicy`` (``extra="forbid"``: a misspelt key is an error); every
``when`` condition is checked as FHIRPath at load time. ``load_access_policy`` reports every problem at
once with its key path, like the settings loader. ``access_policy_schema_text`` is the published JSON Schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from masking.fhirpath import check_expression
from proxy.fhir.resource_types import R4_RESOURCE_TYPES

__all__ = [
    "OPERATIONS",
    "AccessPolicy",
    "AccessPolicyError",
    "ApprovalSettings",
    "AssignmentSettings",
    "AttributeSettings",
    "IsolationSettings",
    "Permission",
    "RevocationSettings",
    "Role",
    "SensitiveRule",
    "access_policy_schema_text",
    "load_access_policy",
    "parse_access_policy",
    "policy_from_settings",
]

OPERATIONS = (
    "read",
    "search",
    "history",
    "create",
    "update",
    "delete",
    "export",
    "download",
    "reidentify",
)
"""The operations a permission names (plus ``$name`` for a named FHIR operation and ``*`` for all).

``read``: read (and operations answering one resource); ``search``: searches and paging; ``history``: history
and vread (past versions); ``update`` covers patch; ``export``: ``$export`` (bulk data); ``download``: raw
Binary content (document and attachment download); ``reidentify``: the proxy's ``$reidentify``."""

CareSource = Literal["encounter", "episode-of-care", "care-team"]
CARE_SOURCES: tuple[CareSource, ...] = ("encounter", "episode-of-care", "care-team")
_NAME = r"^[a-z][a-z0-9._-]{0,63}$"


class AccessPolicyError(Exception):
    """The access policy is invalid; ``problems`` lists every ``(key path, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{path}: {message}" for path, message in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Permission(_Model):
    """Operations on resource types, optionally only for resources meeting a condition."""

    resources: list[str] = Field(min_length=1, description="FHIR resource types, or '*' for every type.")
    operations: list[str] = Field(
        min_length=1,
        description="read, search, history, create, update, delete, export, download, reidentify, "
        "'$name' for a named operation, or '*'.",
    )
    when: str | None = Field(
        None,
        description="FHIRPath over the resource (request body, stored resource, every returned resource); "
        "the permission applies only where it is true. %principal has roles, organizations, locations, "
        "specialties, fhirUser, subject and clientId.",
    )

    @field_validator("resources")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        unknown = sorted({t for t in value if t != "*" and t not in R4_RESOURCE_TYPES})
        if unknown:
            raise ValueError(f"unknown resource types {unknown}")
        return value

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, value: list[str]) -> list[str]:
        unknown = sorted(
            {op for op in value if op != "*" and op not in OPERATIONS and not _is_named_operation(op)}
        )
        if unknown:
            raise ValueError(f"unknown operations {unknown} (known: {', '.join(OPERATIONS)}, $name, *)")
        return value

    @field_validator("when")
    @classmethod
    def _fhirpath(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_expression(value)
            except ValueError as exc:
                raise ValueError(f"not a valid FHIRPath condition: {exc}") from None
        return value


class Role(_Model):
    """One role: its permissions, whether department isolation applies, what its holders may approve or
    administer."""

    description: str = Field("", description="What the role is for (shown in access reviews).")
    permissions: list[Permission] = Field(default_factory=list, description="What holders may do.")
    isolation: Literal["care-relationship", "none"] | None = Field(
        None,
        description="care-relationship: patient data only for patients in the holder's care (see "
        "isolation); none: no department isolation. Default: isolation.default.",
    )
    approves: list[str] = Field(
        default_factory=list, description="Sensitive rules (names, or '*') holders may approve for others."
    )
    administers: list[Literal["revocations"]] = Field(
        default_factory=list, description="Administrative rights: revocations (revoke users and clients)."
    )


class AssignmentSettings(_Model):
    """Where a principal's roles come from (the union of every source)."""

    from_token: bool = Field(True, description="Take roles from the token's roles claim (auth.claims.roles).")
    practitioner_role_codes: dict[str, str] = Field(
        default_factory=dict,
        description="PractitionerRole.code ('system|code' or 'code') -> role, for roles looked up from the "
        "FHIR server (attributes.practitioner_roles).",
    )
    clients: dict[str, list[str]] = Field(
        default_factory=dict, description="client_id -> roles (system clients, integrations)."
    )
    users: dict[str, list[str]] = Field(
        default_factory=dict,
        description="fhirUser (e.g. Practitioner/123) or subject -> roles. Listed users are also checked "
        "for dormancy by the access review.",
    )


class AttributeSettings(_Model):
    """Where organisations, locations and specialties come from, and how long they are reused."""

    organizations_claims: list[str] = Field(
        default_factory=list, description="Extra claim paths holding organisations (besides auth.claims)."
    )
    locations_claims: list[str] = Field(default_factory=list, description="Claim paths holding locations.")
    specialties_claims: list[str] = Field(
        default_factory=list, description="Claim paths holding specialties."
    )
    practitioner_roles: bool = Field(
        True,
        description="Look up PractitionerRole?practitioner=<fhirUser> on the FHIR server: active roles in "
        "their period add organisations, locations, specialties and roles (practitioner_role_codes).",
    )
    cache_seconds: float = Field(
        300.0,
        gt=0,
        le=3600,
        description="How long looked-up attributes are reused (an ended role stops "
        "granting within this time).",
    )


class IsolationSettings(_Model):
    """Department isolation: which patients count as in a user's care."""

    default: Literal["care-relationship", "none"] = Field(
        "care-relationship", description="Isolation of roles that do not say."
    )
    recent_days: int = Field(
        30, ge=0, le=3650, description="An Encounter or EpisodeOfCare ended this many days ago still counts."
    )
    sources: list[CareSource] = Field(
        default_factory=lambda: list(CARE_SOURCES),
        min_length=1,
        description="encounter: an Encounter at one of the user's organisations or locations, or with the "
        "user as participant; episode-of-care: an EpisodeOfCare managed by one of the user's organisations "
        "or by the user; care-team: an active CareTeam with the user (or their organisation) as member.",
    )
    cache_seconds: float = Field(
        60.0, gt=0, le=3600, description="How long a patient's care relationships are reused."
    )


class SensitiveRule(_Model):
    """Requests that need an approval from a second person (one condition per rule)."""

    description: str = Field("", description="Why the operation is sensitive.")
    operations: list[str] = Field(
        default_factory=list, description="Any of these operations (e.g. export, reidentify, $everything)."
    )
    patients_over: int | None = Field(
        None, ge=1, description="An answer carrying data of more than this many distinct patients."
    )
    break_glass: bool = Field(False, description="A break-glass (emergency purpose of use) request.")
    except_roles: list[str] = Field(
        default_factory=list, description="Holders of these roles need no approval for this rule."
    )

    @field_validator("operations")
    @classmethod
    def _known_operations(cls, value: list[str]) -> list[str]:
        unknown = sorted({op for op in value if op not in OPERATIONS and not _is_named_operation(op)})
        if unknown:
            raise ValueError(f"unknown operations {unknown}")
        return value

    @model_validator(mode="after")
    def _one_condition(self) -> SensitiveRule:
        conditions = [bool(self.operations), self.patients_over is not None, self.break_glass]
        if sum(conditions) != 1:
            raise ValueError("a sensitive rule has exactly one of operations, patients_over, break_glass")
        return self


class ApprovalSettings(_Model):
    """Two-person review: how approvals are presented and how long they last."""

    header: str = Field("x-fhirwall-approval", description="Request header carrying the approval id.")
    default_minutes: int = Field(60, ge=1, le=1440, description="Validity of an approval unless asked less.")
    max_minutes: int = Field(240, ge=1, le=1440, description="Longest validity an approver may grant.")
    request_minutes: int = Field(
        1440, ge=1, le=10080, description="How long a pending approval request waits for an approver."
    )

    @field_validator("header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class RevocationSettings(_Model):
    """Immediate revocation of users and clients (shared through Redis when redis.url is set)."""

    file: Path | None = Field(
        None, description="Without Redis: the revocation list file (written by `fhirwall revoke`)."
    )
    refresh_seconds: float = Field(
        2.0, gt=0, le=60, description="Longest time before a revocation made elsewhere takes effect here."
    )


class AccessPolicy(_Model):
    """Who may do what: effective rights = token scopes ∩ this policy ∩ patient consent."""

    roles: dict[str, Role] = Field(description="Role name -> role.")
    assignments: AssignmentSettings = Field(default_factory=AssignmentSettings)
    attributes: AttributeSettings = Field(default_factory=AttributeSettings)
    isolation: IsolationSettings = Field(default_factory=IsolationSettings)
    sensitive: dict[str, SensitiveRule] = Field(
        default_factory=dict, description="Rule name -> requests that need a second person's approval."
    )
    approvals: ApprovalSettings = Field(default_factory=ApprovalSettings)
    revocation: RevocationSettings = Field(default_factory=RevocationSettings)
    patients: Literal["exempt", "deny"] = Field(
        "exempt",
        description="Principals whose fhirUser is a Patient or RelatedPerson: exempt (bound by patient "
        "scopes, compartment and consent only) or deny.",
    )

    @field_validator("roles")
    @classmethod
    def _role_names(cls, value: dict[str, Role]) -> dict[str, Role]:
        bad = sorted(name for name in value if not re.match(_NAME, name))
        if bad:
            raise ValueError(f"role names must match {_NAME}: {bad}")
        return value

    @model_validator(mode="after")
    def _references(self) -> AccessPolicy:
        problems: list[str] = []
        roles = set(self.roles)
        assigned = [
            *self.assignments.practitioner_role_codes.values(),
            *(r for names in self.assignments.clients.values() for r in names),
            *(r for names in self.assignments.users.values() for r in names),
            *(r for rule in self.sensitive.values() for r in rule.except_roles),
        ]
        unknown = sorted(set(assigned) - roles)
        if unknown:
            problems.append(f"unknown roles {unknown} (defined: {sorted(roles)})")
        rules = set(self.sensitive) | {"*"}
        for name, role in sorted(self.roles.items()):
            missing = sorted(set(role.approves) - rules)
            if missing:
                problems.append(f"roles.{name}.approves names unknown sensitive rules {missing}")
        if self.approvals.default_minutes > self.approvals.max_minutes:
            problems.append("approvals.default_minutes exceeds approvals.max_minutes")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def isolation_of(self, role: str) -> str:
        """The isolation that applies to holders of ``role``."""
        return self.roles[role].isolation or self.isolation.default


def _is_named_operation(value: str) -> bool:
    return value.startswith("$") and len(value) > 1 and value[1:].replace("-", "").isalnum()


def parse_access_policy(data: Any) -> AccessPolicy:
    """Validate a loaded document; ``AccessPolicyError`` lists every problem."""
    if not isinstance(data, Mapping):
        raise AccessPolicyError([("(top level)", "the access policy must be a mapping")])
    try:
        return AccessPolicy.model_validate(data)
    except ValidationError as exc:
        raise AccessPolicyError([_problem(error) for error in exc.errors()]) from exc


def load_access_policy(path: Path) -> AccessPolicy:
    """Read and validate the policy file (YAML or JSON)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AccessPolicyError([(str(path), f"cannot read: {exc.strerror}")]) from exc
    except yaml.YAMLError as exc:
        raise AccessPolicyError([(str(path), f"not valid YAML: {exc}")]) from exc
    return parse_access_policy(data)


def access_policy_schema_text() -> str:
    """The JSON Schema of the policy file (published as ``proxy/rights/access-policy.schema.json``)."""
    schema = AccessPolicy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fhirwall access policy"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _problem(error: Mapping[str, Any]) -> tuple[str, str]:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return location, str(error["msg"]).removeprefix("Value error, ")


def policy_from_settings(path: Path) -> AccessPolicy:
    """The policy named by ``access.policy_file``; problems are reported under that key path."""
    from proxy.settings import ConfigError  # the settings module does not depend on this one

    try:
        return load_access_policy(path)
    except AccessPolicyError as error:
        problems = [(f"access.policy_file ({path}) {where}", message) for where, message in error.problems]
        raise ConfigError(problems) from None
