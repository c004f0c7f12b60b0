"""Masking in the proxy: profiles compiled at start-up, one picked per request, applied to every answer.

``MaskingPolicy.from_settings`` loads and compiles every configured profile (built-in or file) with the
configured keys; every problem of every profile is reported at once as a ``ConfigError``. ``select`` walks the
ordered selection rules (client, scope, role, purpose of use, upstream route, an allowed request header) and
falls back to the default profile; ``none`` means no masking and is only ever chosen explicitly.
``mask_body`` masks a JSON answer (any resource, Bundles of every kind included) and never returns the
unmasked body: a failure raises ``MaskingFailedError`` (500).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from masking.builtin import load_builtin_profile
from masking.compiler import CompiledProfile, compile_profile
from masking.engine import MaskingError, MaskStats
from masking.keys import resolve_keys
from masking.profile import Profile, ProfileError, load_profile
from masking.rewrite import InputRewrite
from proxy.auth.principal import Principal
from proxy.errors import MaskingFailedError
from proxy.settings import ConfigError, MaskingSelection, MaskingSettings

__all__ = ["MaskedBody", "MaskingPolicy"]

NO_MASKING = "none"


class MaskedBody:
    """A masked answer and what masking did (for the audit trail)."""

    __slots__ = ("body", "profile", "stats")

    def __init__(self, body: bytes, profile: str, stats: MaskStats) -> None:
        self.body = body
        self.profile = profile
        self.stats = stats


class MaskingPolicy:
    """The compiled profiles and the rules choosing one per request."""

    def __init__(self, settings: MaskingSettings, profiles: Mapping[str, CompiledProfile]) -> None:
        self._settings = settings
        self._profiles = dict(profiles)
        self._header = settings.profile_header.lower() if settings.profile_header else None

    @classmethod
    def from_settings(
        cls, settings: MaskingSettings, environ: Mapping[str, str] | None = None, *, warm: bool = True
    ) -> MaskingPolicy:
        """Compile every configured profile (``warm``: also build all their plans now, as serving does);
        ``ConfigError`` lists every problem of every profile."""
        problems: list[tuple[str, str]] = []
        keys, key_problems = resolve_keys(settings.keys, environ)
        problems += [(f"masking.keys.{name}", message) for name, message in key_problems]
        compiled: dict[str, CompiledProfile] = {}
        for name, source in settings.profiles.items():
            where = f"masking.profiles.{name}"
            try:
                profile = _load(source.builtin, source.file)
                compiled[name] = compile_profile(profile, keys, environ=environ, source=where)
                if warm:
                    compiled[name].warm()
                compiled[name].enable_cache(settings.cache_entries, settings.cache_bytes)
            except ProfileError as error:
                problems += [
                    (f"{where}: {path}" if path != "(file)" else where, msg) for path, msg in error.problems
                ]
            except KeyError as error:
                problems.append((f"{where}.builtin", str(error.args[0])))
        problems += _key_id_clashes(compiled)
        if problems:
            raise ConfigError(problems)
        return cls(settings, compiled)

    @property
    def pseudonym_keys(self) -> dict[str, bytes]:
        """Every profile's reversible-pseudonym keys by key id (old ids included, for rotation)."""
        keys: dict[str, bytes] = {}
        for profile in self._profiles.values():
            keys.update(profile.parameters.keyring.pseudonym_keys)
        return keys

    @property
    def profiles(self) -> Mapping[str, CompiledProfile]:
        """Compiled profiles by configured name."""
        return self._profiles

    def select(
        self, principal: Principal | None, route: str, headers: Mapping[str, str]
    ) -> CompiledProfile | None:
        """The profile for this request (None only when the chosen name is ``none``)."""
        requested = headers.get(self._header) if self._header else None
        name = self._settings.default_profile or NO_MASKING
        for rule in self._settings.selection:
            if _matches(rule, principal, route, requested):
                name = rule.profile
                break
        return None if name == NO_MASKING else self._profiles[name]

    def mask_body(
        self, profile: CompiledProfile, body: bytes, rewrite: InputRewrite | None = None
    ) -> MaskedBody:
        """Mask a JSON answer, rewritten first by ``rewrite`` (the proxy's URL rebasing);
        ``MaskingFailedError`` rather than ever returning it unmasked."""
        stats = MaskStats()
        try:
            return MaskedBody(profile.mask_json(body, stats=stats, rewrite=rewrite), profile.name, stats)
        except MaskingError as exc:
            raise MaskingFailedError(profile.name) from exc


def _key_id_clashes(profiles: Mapping[str, CompiledProfile]) -> list[tuple[str, str]]:
    """One key id must mean one key across profiles, or re-identification could not tell them apart."""
    seen: dict[str, tuple[str, bytes]] = {}
    problems: list[tuple[str, str]] = []
    for name, profile in profiles.items():
        for key_id, key in profile.parameters.keyring.pseudonym_keys.items():
            first = seen.setdefault(key_id, (name, key))
            if first[1] != key:
                where = f"masking.profiles.{name}: parameters.pseudonym_keys.{key_id}"
                problems.append((where, f"key id {key_id!r} names a different key in profile {first[0]!r}"))
    return problems


def _load(builtin: str | None, file: Path | None) -> Profile:
    if builtin is not None:
        return load_builtin_profile(builtin)
    assert file is not None  # the settings require one of the two
    return load_profile(file)


def _matches(rule: MaskingSelection, principal: Principal | None, route: str, requested: str | None) -> bool:
    """Every condition the rule gives holds (conditions on the token never hold without one)."""
    if rule.route is not None and route not in rule.route:
        return False
    if rule.header is not None and requested not in rule.header:
        return False
    token_conditions = (rule.client_id, rule.scope, rule.role, rule.purpose_of_use)
    if all(condition is None for condition in token_conditions):
        return True
    if principal is None:
        return False
    return (
        (rule.client_id is None or principal.client_id in rule.client_id)
        and (rule.scope is None or any(scope in rule.scope for scope in principal.scope_text.split()))
        and (rule.role is None or not set(rule.role).isdisjoint(principal.roles))
        and (rule.purpose_of_use is None or not set(rule.purpose_of_use).isdisjoint(principal.purpose_of_use))
    )
