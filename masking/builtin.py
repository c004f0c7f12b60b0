"""The profiles shipped with fhirwall (``masking/profiles/*.yaml``), loaded by name.

``safe-harbor`` de-identifies along HIPAA 45 CFR 164.514(b)(2); ``limited-data-set`` removes the 16 direct
identifiers of 164.514(e)(2); ``minimum-necessary-research`` is Safe-Harbor-like with reversible patient
pseudonyms; ``minimum-necessary-payment`` keeps what billing needs. Each file's ``description`` and comments
say what it removes and why; ``masking/profiles/README.md`` documents the format.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

import yaml

from masking.profile import Profile, ProfileError, parse_profile

__all__ = ["builtin_profile_names", "load_builtin_profile"]

_PACKAGE = "masking.profiles"
_SUFFIX = ".yaml"


def _directory() -> Traversable:
    return files(_PACKAGE)


def builtin_profile_names() -> list[str]:
    """Names of the built-in profiles, sorted (the file names without ``.yaml``)."""
    return sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in _directory().iterdir()
        if entry.is_file() and entry.name.endswith(_SUFFIX)
    )


def load_builtin_profile(name: str) -> Profile:
    """The built-in profile ``name``; ``KeyError`` names the known ones."""
    known = builtin_profile_names()
    if name not in known:
        raise KeyError(f"unknown built-in masking profile {name!r}; known: {', '.join(known)}")
    source = f"built-in profile {name}"
    data = yaml.safe_load((_directory() / f"{name}{_SUFFIX}").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ProfileError(source, [("(root)", "a profile is a mapping")])
    return parse_profile(data, source)
