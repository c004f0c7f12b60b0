"""Microsoft FHIR anonymizer configurations turned into fhirwall profiles (compatibility mode).

``import_anonymizer_config`` reads the decoded JSON of an anonymizer configuration (``fhirVersion``,
``processingErrors``, ``fhirPathRules``, ``parameters``) and returns a profile dict in the native file
format, plus warnings for the operator. The profile runs in ``compatibility`` mode, so masking gives the
anonymizer's output; rules are copied in order with their settings. Literal keys move to the profile's
``keys`` section (``hash``, ``date-shift``, ``encrypt``) with a warning to move them to a secret store.

What cannot be carried over is refused (``AnonymizerImportError`` lists every problem): a FHIR version other
than R4, ``processingErrors: keep`` (the anonymizer then passes a resource it failed to mask through
unmasked), malformed rules or parameters. An unknown method or a path fhirwall cannot select is copied as
written and reported as a warning, so compiling the profile fails loudly until it is fixed.
``dump_profile_yaml`` writes the result as readable YAML, rule order preserved. Messages never contain key
values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import yaml

from masking.profile import ProfileError, parse_profile
from masking.selectors import SelectorError, parse_selector

__all__ = ["MS_METHODS", "AnonymizerImportError", "dump_profile_yaml", "import_anonymizer_config"]

MS_METHODS: Final = (
    "keep",
    "redact",
    "dateShift",
    "cryptoHash",
    "encrypt",
    "substitute",
    "perturb",
    "generalize",
)
"""The anonymizer's methods, spelt as fhirwall registers them."""

_METHOD_BY_LOWER: Final = {method.lower(): method for method in MS_METHODS}
_TOP_LEVEL: Final = ("fhirVersion", "processingErrors", "fhirPathRules", "parameters")
_SCOPES: Final = ("resource", "file", "folder")
_AES_KEY_SIZES: Final = (16, 24, 32)


class AnonymizerImportError(ValueError):
    """The configuration cannot be imported; ``problems`` says why, one message each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Key(NamedTuple):
    """One key parameter of the anonymizer: its name in the profile and the method that needs it."""

    parameter: str
    name: str
    method: str


_KEYS: Final = (
    _Key("cryptoHashKey", "hash", "cryptoHash"),
    _Key("dateShiftKey", "date-shift", "dateShift"),
    _Key("encryptKey", "encrypt", "encrypt"),
)
_PARTIAL: Final = {
    "enablePartialAgesForRedact": "partial_ages",
    "enablePartialDatesForRedact": "partial_dates",
    "enablePartialZipCodesForRedact": "partial_zip_codes",
}
_KNOWN_PARAMETERS: Final = (
    *(key.parameter for key in _KEYS),
    "dateShiftScope",
    "dateShiftFixedOffsetInDays",
    *_PARTIAL,
    "restrictedZipCodeTabulationAreas",
)


class _Import:
    """Collects the converted sections, problems and warnings of one configuration."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def top_level(self, data: Mapping[str, Any]) -> str:
        for key in data:
            if key not in _TOP_LEVEL:
                self.warnings.append(f"{key}: not an anonymizer configuration key; ignored")
        version = data.get("fhirVersion")
        if version not in (None, "") and (not isinstance(version, str) or version.upper() != "R4"):
            self.problems.append(
                f"fhirVersion: {version!r} is not supported: fhirwall masks FHIR R4 resources"
            )
        return self.processing_errors(data.get("processingErrors"))

    def processing_errors(self, value: Any) -> str:
        if value is None:
            return "raise"
        text = value.lower() if isinstance(value, str) else None
        if text in ("raise", "skip"):
            return text
        if text == "keep":
            self.problems.append(
                "processingErrors: keep is refused: the anonymizer then passes a resource it failed to "
                "mask through unmasked (fail-open). Use raise (fail the request or file) or skip (drop "
                "the resource)"
            )
        else:
            self.problems.append(f"processingErrors: {value!r} must be raise or skip")
        return "raise"

    def rules(self, value: Any) -> list[dict[str, Any]]:
        if value is None:
            self.warnings.append("fhirPathRules: none given: the profile masks nothing")
            return []
        if not isinstance(value, list):
            self.problems.append("fhirPathRules: must be a list of rules")
            return []
        return [rule for index, item in enumerate(value) if (rule := self.rule(index, item)) is not None]

    def rule(self, index: int, item: Any) -> dict[str, Any] | None:
        where = f"fhirPathRules[{index}]"
        if not isinstance(item, Mapping):
            self.problems.append(f"{where}: a rule is an object with path and method")
            return None
        path, method = item.get("path"), item.get("method")
        if not isinstance(path, str) or not path.strip():
            self.problems.append(f"{where}.path: missing or not a string")
        if not isinstance(method, str) or not method.strip():
            self.problems.append(f"{where}.method: missing or not a string")
        if not isinstance(path, str) or not isinstance(method, str):
            return None
        rule: dict[str, Any] = {"path": path, "method": self.method(where, method)}
        rule.update(
            (key, copy.deepcopy(value)) for key, value in item.items() if key not in ("path", "method")
        )
        self.check_path(where, path)
        return rule

    def method(self, where: str, method: str) -> str:
        canonical = _METHOD_BY_LOWER.get(method.strip().lower())
        if canonical is None:
            self.warnings.append(
                f"{where}.method: {method!r} is not an anonymizer method ({', '.join(MS_METHODS)}); "
                "copied as written, so the profile will not compile until the rule is fixed or removed"
            )
            return method
        if canonical != method:
            self.warnings.append(f"{where}.method: {method!r} written as {canonical!r}")
        return canonical

    def check_path(self, where: str, path: str) -> None:
        try:
            parse_selector(path)
        except SelectorError as exc:
            self.warnings.append(
                f"{where}.path: {path!r} cannot be used as written ({exc}); the profile will not compile "
                "until the rule is rewritten (e.g. nodesByType('T').where(...) as "
                "<ResourceType>.descendants().ofType(T).where(...), one rule per resource type)"
            )

    def parameters(
        self, value: Any, rules: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            self.problems.append("parameters: must be an object")
            value = {}
        for key in value:
            if key not in _KNOWN_PARAMETERS:
                self.warnings.append(f"parameters.{key}: not an anonymizer parameter; ignored")
        used = {rule["method"] for rule in rules}
        keys: dict[str, dict[str, str]] = {}
        fixed = self.fixed_offset(value.get("dateShiftFixedOffsetInDays"))
        date_shift: dict[str, Any] = {"scope": self.scope(value.get("dateShiftScope"))}
        if fixed is not None:
            date_shift["fixed_offset_days"] = fixed
        parameters: dict[str, Any] = {"date_shift": date_shift}
        for spec in _KEYS:
            unused = None if spec.method in used else f"no {spec.method} rule uses this key"
            if spec.method == "dateShift" and fixed is not None:
                unused = "dateShiftFixedOffsetInDays is set, so dates are shifted without a key"
            name = self.key(spec, value.get(spec.parameter), unused=unused, keys=keys)
            if name is None:
                continue
            if spec.method == "dateShift":
                date_shift["key"] = name
            else:
                parameters["crypto_hash_key" if spec.method == "cryptoHash" else "encrypt_key"] = name
        for source, target in _PARTIAL.items():
            flag = value.get(source, False)
            if not isinstance(flag, bool):
                self.problems.append(f"parameters.{source}: must be true or false")
            elif flag:
                parameters[target] = True
        parameters["restricted_zip_codes"] = self.zip_areas(
            value.get("restrictedZipCodeTabulationAreas"),
            partial=value.get("enablePartialZipCodesForRedact") is True,
        )
        return parameters, keys

    def scope(self, value: Any) -> str:
        if value is None:
            return "resource"
        if isinstance(value, str) and value.lower() in _SCOPES:
            return value.lower()
        self.problems.append(f"parameters.dateShiftScope: {value!r} must be one of {', '.join(_SCOPES)}")
        return "resource"

    def fixed_offset(self, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append("parameters.dateShiftFixedOffsetInDays: must be a whole number of days")
            return None
        return value

    def key(
        self, spec: _Key, value: Any, *, unused: str | None, keys: dict[str, dict[str, str]]
    ) -> str | None:
        where = f"parameters.{spec.parameter}"
        if value is not None and not isinstance(value, str):
            self.problems.append(f"{where}: must be a string")
            return None
        if value:
            if unused is not None:
                self.warnings.append(f"{where}: {unused}; the key is not carried over")
                return None
            keys[spec.name] = {"value": value}
            self.warnings.append(
                f"{where}: the key was written in the configuration and is now inline in "
                f"keys.{spec.name}; move it to a secret store (masking.keys.{spec.name}: {{env: ...}} or "
                f"{{file: ...}}, encoding utf8) and delete keys.{spec.name} from the profile"
            )
            if spec.method == "encrypt" and len(value.encode("utf-8")) not in _AES_KEY_SIZES:
                self.warnings.append(
                    f"{where}: an AES key must be 16, 24 or 32 bytes (UTF-8); compiling will fail"
                )
            return spec.name
        if unused is None:
            self.warnings.append(
                f"{where}: not set (the anonymizer then makes up a random key for each run); give a key "
                f"named {spec.name!r} in masking.keys or on the command line, or compiling fails"
            )
            return spec.name
        return None

    def zip_areas(self, value: Any, *, partial: bool) -> list[str]:
        if value is None:
            if partial:
                self.warnings.append(
                    "parameters.restrictedZipCodeTabulationAreas: not set, so no 3-digit zip area is "
                    "zeroed (as the anonymizer does); Safe Harbor needs the HHS list of areas with 20,000 "
                    "people or fewer"
                )
            return []
        if not isinstance(value, list) or not all(isinstance(area, str) for area in value):
            self.problems.append("parameters.restrictedZipCodeTabulationAreas: must be a list of strings")
            return []
        return list(value)


def import_anonymizer_config(data: Mapping[str, Any], *, name: str) -> tuple[dict[str, Any], list[str]]:
    """A compatibility-mode profile dict (YAML-ready) and warnings for the operator.

    ``AnonymizerImportError`` lists every reason the configuration cannot be imported.
    """
    if not isinstance(data, Mapping):
        raise AnonymizerImportError(["(root): an anonymizer configuration is a JSON object"])
    run = _Import()
    processing_errors = run.top_level(data)
    rules = run.rules(data.get("fhirPathRules"))
    parameters, keys = run.parameters(data.get("parameters"), rules)
    profile: dict[str, Any] = {
        "name": name,
        "description": (
            f"Imported from a Microsoft FHIR anonymizer configuration ({len(rules)} rules).\n"
            "Compatibility mode: the output is the anonymizer's, rule for rule (date shift per resource,\n"
            "partial redaction, labels as the anonymizer writes them).\n"
        ),
        "mode": "compatibility",
        "processing_errors": processing_errors,
        "parameters": parameters,
    }
    if keys:
        profile["keys"] = keys
    profile["rules"] = rules
    if not run.problems:
        try:
            parse_profile(profile, f"profile {name}")
        except ProfileError as exc:
            run.problems += [f"{path}: {message}" for path, message in exc.problems]
    if run.problems:
        raise AnonymizerImportError(run.problems)
    return profile, run.warnings


class _ProfileDumper(yaml.SafeDumper):
    """Indented block sequences, literal blocks for multi-line text, short scalar lists on one line."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None
    if "\n" in value:
        style = "|"
    elif value.isdigit():
        style = '"'  # "059" stays a string for YAML 1.2 readers too
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _sequence(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    flow = bool(value) and all(isinstance(item, str) and len(item) <= 12 for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_ProfileDumper.add_representer(str, _text)
_ProfileDumper.add_representer(list, _sequence)


def dump_profile_yaml(profile: Mapping[str, Any], *, header: Sequence[str] = ()) -> str:
    """``profile`` as YAML in its own key order (rules in order), ``header`` lines as leading comments."""
    body = str(
        yaml.dump(
            dict(profile),
            Dumper=_ProfileDumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
            width=110,
        )
    )
    lines = [f"# {line}".rstrip() for text in header for line in text.splitlines()]
    return "\n".join([*lines, body]) if lines else body
