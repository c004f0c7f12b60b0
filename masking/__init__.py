"""Profile-based masking and pseudonymization of FHIR resources, inline in the proxy and offline for files.

A profile (YAML) is an ordered list of rules ``{path, method, settings}``; ``compile_profile``
validates it and compiles it into per-type plans once; ``CompiledProfile.mask`` then masks a resource
(Bundles included) in place. Methods implement ``MaskingMethod`` and are registered by name
(``register_method``), built-ins and plug-ins alike.
"""

from masking.builtin import builtin_profile_names, load_builtin_profile
from masking.compiler import CompiledProfile, compile_profile
from masking.engine import MaskingError, MaskStats
from masking.keys import KeySource, resolve_keys
from masking.methods.base import (
    KEEP,
    REMOVE,
    Leaf,
    MaskContext,
    MaskingMethod,
    MethodConfigError,
    ProfileParameters,
    Relabelled,
    known_methods,
    register_method,
)
from masking.profile import Profile, ProfileError, load_profile, parse_profile

__all__ = [
    "KEEP",
    "REMOVE",
    "CompiledProfile",
    "KeySource",
    "Leaf",
    "MaskContext",
    "MaskStats",
    "MaskingError",
    "MaskingMethod",
    "MethodConfigError",
    "Profile",
    "ProfileError",
    "ProfileParameters",
    "Relabelled",
    "builtin_profile_names",
    "compile_profile",
    "known_methods",
    "load_builtin_profile",
    "load_profile",
    "parse_profile",
    "register_method",
    "resolve_keys",
]
