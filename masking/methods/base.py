"""The one interface every masking method implements, and the registry built-ins and plug-ins share.

A method is built once per rule at start-up (``MethodFactory``: rule settings + profile parameters ->
``MaskingMethod``) and then called for every primitive value its rule governs (``MaskingMethod.apply``).
Building validates everything (keys, sizes, FHIRPath, numbers) and raises ``MethodConfigError`` listing
every problem; applying never sees configuration problems, only values.

``apply`` receives a ``Leaf`` (the primitive value with its FHIR type, element name and the type of the
element holding it) and the per-resource ``MaskContext``; it returns the new value, ``KEEP`` (unchanged)
or ``REMOVE``. Methods that replace whole complex elements (substitute with a JSON fragment) also
implement ``apply_element``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

__all__ = [
    "KEEP",
    "MODES",
    "MS_SECURITY_LABELS",
    "REMOVE",
    "V3_OBSERVATION_VALUE",
    "ElementMethod",
    "Keyring",
    "Leaf",
    "MaskContext",
    "MaskingMethod",
    "MaskingValueError",
    "MethodConfigError",
    "MethodFactory",
    "ProfileParameters",
    "Relabelled",
    "common_problems",
    "is_deterministic",
    "known_methods",
    "method_factory",
    "register_method",
]


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


KEEP: Final = _Marker("KEEP")
"""Returned by ``apply`` when the value stays as it is."""
REMOVE: Final = _Marker("REMOVE")
"""Returned by ``apply`` when the value (and, once empty, its parents) must go."""


MODES: Final = ("native", "compatibility")
"""The values ``ProfileParameters.mode`` may take."""

V3_OBSERVATION_VALUE: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
"""The system of every native label (REDACTED, MASKED, PSEUDED, ABSTRED, ANONYED)."""

MS_SECURITY_LABELS: Final[Mapping[str, tuple[str | None, str]]] = {
    "REDACTED": (V3_OBSERVATION_VALUE, "redacted"),
    "ABSTRED": (V3_OBSERVATION_VALUE, "abstracted"),
    "CRYTOHASH": (V3_OBSERVATION_VALUE, "cryptographic hash function"),
    "ENCRYPT": (None, "exact value is transformed into ciphertext"),
    "PERTURBED": (None, "exact value is replaced with another exact value"),
    "SUBSTITUTED": (None, "exact value is replaced with a predefined value"),
    "GENERALIZED": (None, "exact value is replaced with a general value"),
}
"""Compatibility-mode label code -> (system, display), as the Microsoft anonymizer writes them."""


class MethodConfigError(ValueError):
    """A rule's settings are invalid; ``problems`` lists every one (without the rule path prefix)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class MaskingValueError(ValueError):
    """``apply`` cannot mask this value (malformed input, result not valid for the element's type).

    The engine reports it as a processing error (``processingErrors``: raise | skip).
    """


@dataclass(frozen=True, slots=True)
class Relabelled:
    """A new value whose label differs from the method's usual one (e.g. partial redaction -> ABSTRED).

    ``value`` may itself be ``REMOVE``; ``label`` is the HL7 (native) or MS (compatibility) code to record.
    """

    value: Any
    label: str


@dataclass(slots=True)
class Leaf:
    """One primitive value to mask, with what the method needs to know about where it sits.

    ``type_name`` is the FHIR primitive type (``date``, ``dateTime``, ``instant``, ``string``, ``decimal``,
    ``integer``, ``positiveInt``, ``unsignedInt``, ``code``, ``uri``, ``id``, ...); ``name`` the JSON key
    holding it (``postalCode``, ``valueDate``, ``reference``); ``parent_type`` the FHIR type of the element
    that holds it (``Address``, ``Reference``, ``Quantity``, ``Age``, ``Patient``, ``BackboneElement``).
    ``resource_type`` is the type of the resource being masked (contained/entry resources: their own).
    """

    value: Any
    type_name: str
    name: str
    parent_type: str
    resource_type: str


@dataclass(slots=True)
class MaskContext:
    """What one resource's masking knows beyond the value itself.

    ``resource_id`` is the id of the top-level resource (the MS anonymizer's date-shift prefix for scope
    ``resource``); ``patient_id`` the patient the resource belongs to, when known (native per-patient
    date shift); ``scope_key`` the file/folder name for MS scopes ``file``/``folder``; ``today`` pins the
    clock for age computations (tests pin it).
    """

    resource_type: str
    resource_id: str | None
    patient_id: str | None = None
    scope_key: str | None = None
    today: date = field(default_factory=date.today)


@dataclass(frozen=True, slots=True)
class Keyring:
    """Named secret keys (bytes) a profile's rules refer to by name; pseudonym keys by key id.

    ``pseudonym_keys`` maps key id -> 32/48/64-byte AES-SIV key; ``current_pseudonym_key`` names the one
    used for new pseudonyms (old ids keep decrypting after rotation).
    """

    secrets: Mapping[str, bytes] = field(default_factory=dict)
    pseudonym_keys: Mapping[str, bytes] = field(default_factory=dict)
    current_pseudonym_key: str | None = None


@dataclass(frozen=True, slots=True)
class ProfileParameters:
    """Profile-wide parameters, resolved (keys already loaded), shared by every rule of a profile.

    ``mode`` is ``native`` or ``compatibility`` (MS FHIR anonymizer semantics, exactly). Key fields hold
    bytes already resolved from the keyring (``None`` when the profile configures none).
    """

    mode: str = "native"
    date_shift_key: bytes | None = None
    date_shift_scope: str = "patient"
    date_shift_fixed_offset_days: int | None = None
    date_shift_max_days: int = 50
    crypto_hash_key: bytes | None = None
    encrypt_key: bytes | None = None
    keyring: Keyring = field(default_factory=Keyring)
    partial_dates: bool = False
    partial_ages: bool = False
    partial_zip_codes: bool = False
    restricted_zip_codes: tuple[str, ...] = ()


@runtime_checkable
class MaskingMethod(Protocol):
    """Masks one primitive value; built once per rule."""

    name: ClassVar[str]
    label: str | None
    """The label code this method implies when it changes something (None: no label); set per instance
    from the profile mode: HL7 v3-ObservationValue codes natively, ``MS_SECURITY_LABELS`` codes in
    compatibility mode."""

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """Return the new value, ``KEEP``, ``REMOVE`` or a ``Relabelled`` value."""
        ...


@runtime_checkable
class ElementMethod(Protocol):
    """Optional: a method that replaces a whole complex element (e.g. substitute with a JSON fragment)."""

    def apply_element(self, element: dict[str, Any], type_name: str, context: MaskContext) -> Any:
        """Return the replacement element (a new dict), ``KEEP`` or ``REMOVE``."""
        ...


def common_problems(
    method: str, settings: Mapping[str, Any], allowed: Collection[str], params: ProfileParameters
) -> list[str]:
    """Problems every factory checks: setting keys the method does not know and an unknown mode."""
    problems = [f"{method}: unknown setting {key!r}" for key in settings if key not in allowed]
    if params.mode not in MODES:
        problems.append(f"{method}: unknown mode {params.mode!r} (expected native or compatibility)")
    return problems


def is_deterministic(method: MaskingMethod) -> bool:
    """Whether the method always gives the same output for the same input and context (methods say
    otherwise with a ``deterministic = False`` attribute: random noise, random IVs, the clock)."""
    return bool(getattr(method, "deterministic", True))


MethodFactory = Callable[[Mapping[str, Any], ProfileParameters], MaskingMethod]
"""Builds a method from a rule's settings (every key but ``path``/``method``) and the profile parameters."""

_REGISTRY: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory) -> None:
    """Register a method under ``name`` (built-ins and plug-ins alike); re-registering a name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"masking method {name!r} is already registered")
    _REGISTRY[name] = factory


def method_factory(name: str) -> MethodFactory:
    """The factory registered for ``name``; ``KeyError`` names the known methods."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown masking method {name!r}; known: {', '.join(known_methods())}") from None


def known_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)
