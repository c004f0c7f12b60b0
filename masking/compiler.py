"""Profiles compiled at start-up: keys read, every path parsed, every method built, all problems at once.

``compile_profile`` turns a validated ``Profile`` plus a keyring into a ``CompiledProfile`` whose ``mask``
masks a resource (a Bundle included) in place. Anything wrong -- an unknown method, a bad FHIRPath, an
unknown element in a path, a missing key, a key of the wrong size, a bad method setting -- is reported by
``ProfileError`` with the key path of every problem; nothing half-compiled is ever returned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

import orjson

import masking.methods  # noqa: F401  (registers the built-in methods)
from masking.bundles import mask_bundle
from masking.cache import MaskCache
from masking.engine import MaskingError, MaskStats, Walker
from masking.keys import resolve_keys
from masking.locations import Mark, marks_of
from masking.methods.base import (
    Keyring,
    MethodConfigError,
    ProfileParameters,
    is_deterministic,
    method_factory,
)
from masking.methods.plugins import load_plugin_methods
from masking.patients import patient_of
from masking.plan import CompiledRule, Planner
from masking.profile import Profile, ProfileError
from masking.rewrite import InputRewrite, rewritten
from masking.selectors import FastSelector, FhirPathSelector, SelectorError, parse_selector

__all__ = ["DEFAULT_CACHE_BYTES", "CompiledProfile", "compile_profile"]

DEFAULT_CACHE_BYTES = 32 * 2**20
"""Bytes of masked results a profile keeps by default (``enable_cache``)."""

_KEY_ID = re.compile(r"^[a-z0-9]{1,8}$")
Problems = list[tuple[str, str]]


class CompiledProfile:
    """A profile ready to mask resources; build it with ``compile_profile``."""

    def __init__(
        self,
        profile: Profile,
        parameters: ProfileParameters,
        rules: tuple[CompiledRule, ...],
        selectors: list[FastSelector | FhirPathSelector],
    ) -> None:
        self.profile = profile
        self.parameters = parameters
        self.rules = rules
        self._cache: MaskCache | None = None
        self._fhirpath = [
            (rule, sel)
            for rule, sel in zip(rules, selectors, strict=True)
            if isinstance(sel, FhirPathSelector)
        ]
        fast = [sel if isinstance(sel, FastSelector) else None for sel in selectors]
        walk_all = frozenset(sel.resource_type for _, sel in self._fhirpath)
        # FHIRPath marks are found over the whole Bundle: such profiles mask Bundles as one document
        self._split_bundles = not any(sel.applies_to("Bundle") for _, sel in self._fhirpath)
        self._walker = Walker(
            Planner(rules, fast, walk_all),
            native=profile.mode == "native",
            resource_labels=tuple(profile.resource_labels),
            remove_narrative=profile.narrative_removed,
            skip_errors=profile.processing_errors == "skip",
            patient_of=patient_of,
            marks_of=self._marks if self._fhirpath else _no_marks,
        )

    @property
    def deterministic(self) -> bool:
        """Whether masking the same resource twice gives the same result (so results may be cached)."""
        return all(is_deterministic(rule.method) for rule in self.rules)

    def enable_cache(self, max_entries: int, max_bytes: int = DEFAULT_CACHE_BYTES) -> bool:
        """Reuse masked results of resources and Bundle entry arrays seen before (``mask_json``), if the
        profile is deterministic, keeping at most ``max_entries`` results and ``max_bytes`` bytes; returns
        whether the cache is on."""
        on = self.deterministic and max_entries > 0 and max_bytes > 0
        self._cache = MaskCache(max_entries, max_bytes) if on else None
        return self._cache is not None

    def mask_json(
        self,
        body: bytes,
        *,
        stats: MaskStats | None = None,
        today: date | None = None,
        rewrite: InputRewrite | None = None,
    ) -> bytes:
        """Mask a serialized resource (or Bundle), rewritten first by ``rewrite`` if given, and serialize the
        result, through the cache when on.

        Raises ``MaskingError``; a resource the profile drops (``processing_errors: skip``) is an error here.
        With the cache on, a Bundle's entry array is looked up by its bytes (``masking.bundles``).
        """
        own = stats if stats is not None else MaskStats()
        day = today or date.today()
        if self._cache is not None and self._split_bundles:
            masked_bundle = mask_bundle(self._walker, body, own, day, None, self._cache, rewrite)
            if masked_bundle is not None:
                return masked_bundle
        try:
            document = orjson.loads(rewritten(body, rewrite))
        except orjson.JSONDecodeError:
            raise MaskingError("the answer is not JSON") from None
        if not isinstance(document, dict):
            raise MaskingError("the answer is not a JSON object")
        masked = self._walker.mask(document, own, today=day, cache=self._cache)
        if masked is None:
            raise MaskingError("the resource could not be masked")
        return orjson.dumps(masked)

    def warm(self) -> int:
        """Build the plans of every resource type now (the proxy does this at start-up, so the first
        requests are not slower); returns the number of plan nodes."""
        return self._walker.warm()

    @property
    def name(self) -> str:
        """The profile's name."""
        return self.profile.name

    def mask(
        self,
        resource: dict[str, Any],
        *,
        stats: MaskStats | None = None,
        scope_key: str | None = None,
        today: date | None = None,
    ) -> dict[str, Any] | None:
        """Mask ``resource`` in place and return it; None when ``processing_errors: skip`` dropped it.

        Raises ``MaskingError`` (never returns the resource unmasked) when masking fails and errors raise.
        """
        kept = self._walker.mask(
            resource, stats if stats is not None else MaskStats(), scope_key=scope_key, today=today
        )
        return resource if kept else None

    def _marks(self, resource: dict[str, Any], resource_type: str) -> dict[Mark, CompiledRule] | None:
        found: dict[Mark, CompiledRule] = {}
        for rule, selector in self._fhirpath:
            if selector.applies_to(resource_type):
                try:
                    results = selector.evaluate(resource)
                except Exception as exc:
                    raise MaskingError(f"rule {rule.index} FHIRPath failed: {type(exc).__name__}") from exc
                for mark in marks_of(resource, results):
                    found.setdefault(mark, rule)
        return found or None


def _no_marks(resource: dict[str, Any], resource_type: str) -> None:
    return None


def compile_profile(
    profile: Profile,
    keys: Mapping[str, bytes] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    source: str | None = None,
) -> CompiledProfile:
    """Compile ``profile`` with ``keys`` (named key bytes; they override the profile's own ``keys``)."""
    problems: Problems = load_plugin_methods()
    inline, key_problems = resolve_keys(
        {k: v for k, v in profile.keys.items() if k not in (keys or {})}, environ
    )
    problems += [(f"keys.{name}", message) for name, message in key_problems]
    parameters = _parameters(profile, {**inline, **(keys or {})}, problems)
    rules: list[CompiledRule] = []
    selectors: list[FastSelector | FhirPathSelector] = []
    for index, rule in enumerate(profile.rules):
        built = _rule(index, rule.path, rule.method, rule.settings, parameters, problems)
        if built is not None:
            rules.append(built[0])
            selectors.append(built[1])
    if problems:
        raise ProfileError(source or f"profile {profile.name}", problems)
    return CompiledProfile(profile, parameters, tuple(rules), selectors)


def _rule(
    index: int,
    path: str,
    method: str,
    settings: dict[str, Any],
    parameters: ProfileParameters,
    problems: Problems,
) -> tuple[CompiledRule, FastSelector | FhirPathSelector] | None:
    where = f"rules.{index}"
    selector: FastSelector | FhirPathSelector | None = None
    try:
        selector = parse_selector(path)
    except SelectorError as exc:
        problems.append((f"{where}.path", f"{path!r}: {exc}"))
    try:
        built = method_factory(method)(settings, parameters)
    except KeyError as exc:
        problems.append((f"{where}.method", str(exc.args[0])))
        return None
    except MethodConfigError as exc:
        problems += [(where, f"{method}: {problem}") for problem in exc.problems]
        return None
    if selector is None:
        return None
    return CompiledRule(index, path, method, built), selector


def _parameters(profile: Profile, keys: Mapping[str, bytes], problems: Problems) -> ProfileParameters:
    model = profile.parameters

    def key(name: str | None, where: str) -> bytes | None:
        if name is None:
            return None
        if name not in keys:
            problems.append(
                (f"parameters.{where}", f"no key named {name!r} (give it in masking.keys or `keys`)")
            )
            return None
        return keys[name]

    pseudonym_keys = {}
    for key_id, name in model.pseudonym_keys.items():
        if not _KEY_ID.match(key_id):
            problems.append((f"parameters.pseudonym_keys.{key_id}", "key ids are 1-8 of a-z, 0-9"))
        found = key(name, f"pseudonym_keys.{key_id}")
        if found is not None:
            pseudonym_keys[key_id] = found
    current = model.current_pseudonym_key
    if current is not None and current not in model.pseudonym_keys:
        problems.append(("parameters.current_pseudonym_key", f"{current!r} is not in pseudonym_keys"))
    if current is None and len(model.pseudonym_keys) == 1:
        current = next(iter(model.pseudonym_keys))
    return ProfileParameters(
        mode=profile.mode,
        date_shift_key=key(model.date_shift.key, "date_shift.key"),
        date_shift_scope=model.date_shift.scope,
        date_shift_fixed_offset_days=model.date_shift.fixed_offset_days,
        date_shift_max_days=model.date_shift.max_days,
        crypto_hash_key=key(model.crypto_hash_key, "crypto_hash_key"),
        encrypt_key=key(model.encrypt_key, "encrypt_key"),
        keyring=Keyring(secrets=dict(keys), pseudonym_keys=pseudonym_keys, current_pseudonym_key=current),
        partial_dates=model.partial_dates,
        partial_ages=model.partial_ages,
        partial_zip_codes=model.partial_zip_codes,
        restricted_zip_codes=tuple(model.restricted_zip_codes),
    )
