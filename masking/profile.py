"""The masking profile file: an ordered list of rules plus the parameters and key names they use.

A profile is YAML (or JSON) validated by ``Profile`` (``extra="forbid"``: a misspelt key is an error). Rule
settings other than ``path``/``method`` belong to the method (``replaceWith``, ``span``, ``cases``, ...) and
are checked by the method's factory when the profile is compiled. Keys are referred to by name; their bytes
come from a keyring (``masking.keys`` in the proxy settings, ``--key`` on the command line) or, for
self-contained examples, from the profile's own ``keys`` section.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from masking.keys import KeySource

__all__ = [
    "HHS_RESTRICTED_ZIP3",
    "HL7_SECURITY_LABELS",
    "DateShiftParameters",
    "Profile",
    "ProfileError",
    "ProfileParametersModel",
    "Rule",
    "load_profile",
    "parse_profile",
    "profile_schema_text",
]

HHS_RESTRICTED_ZIP3 = (
    "036", "059", "063", "102", "203", "556", "692", "790", "821",
    "823", "830", "831", "878", "879", "884", "890", "893",
)  # fmt: skip
"""3-digit zip areas with 20,000 people or fewer (2000 Census), which Safe Harbor turns into ``000``."""

HL7_SECURITY_LABELS = frozenset(
    {"REDACTED", "MASKED", "PSEUDED", "ABSTRED", "ANONYED", "AGGRED", "SUBSETTED"}
)
"""v3-ObservationValue integrity/obligation codes a profile may add to every changed resource."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(BaseModel):
    """One rule: which nodes (``path``) and what to do with them (``method`` + its settings)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    path: str = Field(
        description="FHIRPath, optionally type-prefixed, or nodesByType('T') / nodesByName('n')."
    )
    method: str = Field(description="A registered masking method: keep, redact, cryptoHash, encrypt, ...")

    @property
    def settings(self) -> dict[str, Any]:
        """The method's own settings (every key but ``path`` and ``method``)."""
        return dict(self.model_extra or {})


class DateShiftParameters(_Model):
    """How ``dateShift`` picks its offset."""

    key: str | None = Field(None, description="Name of the key the offset is derived from.")
    scope: Literal["patient", "resource", "file", "folder"] = Field(
        "patient", description="patient (native), or the MS anonymizer's resource/file/folder scopes."
    )
    fixed_offset_days: int | None = Field(None, description="Use this offset for every date instead.")
    max_days: int = Field(50, ge=1, le=3650, description="Native offsets fall in [-max_days, +max_days].")


class ProfileParametersModel(_Model):
    """Profile-wide parameters (keys by name; redact options; restricted zip areas)."""

    date_shift: DateShiftParameters = Field(default_factory=DateShiftParameters)
    crypto_hash_key: str | None = Field(None, description="Name of the HMAC key used by cryptoHash.")
    encrypt_key: str | None = Field(None, description="Name of the AES key used by encrypt (compatibility).")
    pseudonym_keys: dict[str, str] = Field(
        default_factory=dict, description="Key id -> key name, for reversible AES-SIV pseudonyms (native)."
    )
    current_pseudonym_key: str | None = Field(None, description="Key id used for new pseudonyms.")
    partial_dates: bool = Field(False, description="redact keeps the year of dates (not when age > 89).")
    partial_ages: bool = Field(False, description="redact keeps ages of 89 and under.")
    partial_zip_codes: bool = Field(False, description="redact keeps the first 3 zip digits.")
    restricted_zip_codes: list[str] = Field(
        default_factory=lambda: list(HHS_RESTRICTED_ZIP3),
        description="3-digit zip areas zeroed entirely by partial zip redaction.",
    )

    @field_validator("restricted_zip_codes")
    @classmethod
    def _three_digits(cls, value: list[str]) -> list[str]:
        bad = [zip3 for zip3 in value if len(zip3) != 3 or not zip3.isdigit()]
        if bad:
            raise ValueError(f"not 3-digit zip areas: {', '.join(bad)}")
        return value


class Profile(_Model):
    """A masking profile file."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Profile name used in selection.")
    description: str = Field("", description="What the profile removes and why.")
    mode: Literal["native", "compatibility"] = Field(
        "native", description="native, or compatibility (Microsoft FHIR anonymizer semantics, exactly)."
    )
    processing_errors: Literal["raise", "skip"] = Field(
        "raise", description="raise: fail the request/file; skip: drop the resource that could not be masked."
    )
    resource_labels: list[str] = Field(
        default_factory=list,
        description="Extra labels (e.g. ANONYED) added to every resource the profile changes.",
    )
    remove_narrative: bool | None = Field(
        None,
        description="Drop the narrative when anything is masked (default: native yes, compatibility no).",
    )
    parameters: ProfileParametersModel = Field(default_factory=ProfileParametersModel)
    keys: dict[str, KeySource] = Field(
        default_factory=dict, description="Inline key sources (examples, tests)."
    )
    rules: list[Rule] = Field(min_length=0, description="Ordered rules; the first rule matching a node wins.")

    @field_validator("resource_labels")
    @classmethod
    def _hl7_labels(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - HL7_SECURITY_LABELS)
        if unknown:
            raise ValueError(f"unknown labels {unknown}; known: {sorted(HL7_SECURITY_LABELS)}")
        return value

    @property
    def narrative_removed(self) -> bool:
        """Whether a changed resource loses its narrative."""
        return self.mode == "native" if self.remove_narrative is None else self.remove_narrative


class ProfileError(ValueError):
    """A profile file cannot be read or does not validate; ``problems`` are ``(key path, message)``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {path}: {message}" for path, message in problems))


def parse_profile(data: Mapping[str, Any], source: str = "<profile>") -> Profile:
    """Validate a decoded profile; ``ProfileError`` lists every problem with its key path."""
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in err["loc"]) or "(root)", err["msg"]) for err in exc.errors()]
        raise ProfileError(source, problems) from None


def load_profile(path: Path) -> Profile:
    """Read and validate a YAML/JSON profile file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(str(path), [("(file)", exc.strerror or str(exc))]) from None
    except yaml.YAMLError as exc:
        raise ProfileError(str(path), [("(file)", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ProfileError(str(path), [("(root)", "a profile is a mapping")])
    return parse_profile(data, str(path))


def profile_schema_text() -> str:
    """The profile file's JSON Schema, as shipped in ``masking/profile.schema.json``."""
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fhirwall masking profile"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
