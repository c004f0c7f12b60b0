"""Masking methods: the shared interface (``base``) and the built-ins, registered by their profile names.

Built-ins: keep, redact, cryptoHash, encrypt, dateShift, substitute, perturb, generalize. Plug-ins register
more with ``register_method``, or are found through the ``fhirwall.masking_methods`` entry points
(``masking.methods.plugins``).
"""

from __future__ import annotations

from masking.methods import crypto_hash, date_shift, encrypt, generalize, keep, perturb, redact, substitute
from masking.methods.base import (
    KEEP,
    MODES,
    MS_SECURITY_LABELS,
    REMOVE,
    V3_OBSERVATION_VALUE,
    ElementMethod,
    Keyring,
    Leaf,
    MaskContext,
    MaskingMethod,
    MaskingValueError,
    MethodConfigError,
    MethodFactory,
    ProfileParameters,
    Relabelled,
    common_problems,
    known_methods,
    method_factory,
    register_method,
)

__all__ = [
    "BUILTIN_METHODS",
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
    "known_methods",
    "method_factory",
    "register_method",
]

BUILTIN_METHODS: dict[str, MethodFactory] = {
    "keep": keep.build,
    "redact": redact.build,
    "cryptoHash": crypto_hash.build,
    "encrypt": encrypt.build,
    "dateShift": date_shift.build,
    "substitute": substitute.build,
    "perturb": perturb.build,
    "generalize": generalize.build,
}
"""The built-in factories by profile method name."""

for _name, _factory in BUILTIN_METHODS.items():
    if _name not in known_methods():
        register_method(_name, _factory)
