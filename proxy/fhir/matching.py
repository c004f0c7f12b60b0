"""Does a resource satisfy FHIR search criteria? Used to enforce granular SMART scopes (pure; no I/O).

A scope such as ``patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory``
grants only the resources that match its query. :func:`matches` evaluates such ``name=value`` criteria on a
parsed resource: every criterion must hold (AND) and a comma-separated value holds when any of its values
does (OR). Only the forms below are understood; anything else raises :class:`UnsupportedCriterionError`,
on which callers must deny:

* token: ``code``, ``system|code``, ``|code``, ``system|`` on Coding, CodeableConcept and Identifier; a plain
  ``code`` also on code/string/uri/id/boolean primitives and ContactPoint values.
* reference: ``Type/id``, an absolute URL (its ``Type/id`` tail is compared), or a bare ``id`` when the
  parameter has a single target type.
* string: case- and accent-insensitive "starts with", on strings and on HumanName/Address parts.
* uri: exact match.
* date: ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD`` with an optional ``eq``, ``gt``, ``lt``, ``ge`` or ``le``
  prefix, against date, dateTime and instant values and Periods, with the range semantics of the FHIR
  search specification. A date has no time zone; when a value with a time zone lies so close to a boundary
  that the answer depends on the zone the date is read in (up to 14 hours), the criterion is unsupported.

Refused: modifiers (``:not``, ``:missing``, ``:text``, ...), chains (``subject.name``), ``_has`` and other
control parameters, unknown parameters, composite/quantity/number/special parameters, parameters whose
expression is not a simple path, empty values, and values of a shape the type above does not cover.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.fhir.resource_types import R4_RESOURCE_TYPES, is_valid_id
from proxy.fhir.search_params import SearchParamDef, search_param, values_at

__all__ = ["Criterion", "UnsupportedCriterionError", "matches", "matches_parsed", "parse_criteria"]

_ESCAPABLE = frozenset(",|$\\")
_CONTACT_POINT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
_ZONE_SPREAD = 14 * 3600.0  # time zones run from -12:00 to +14:00
_DATE_QUERY = re.compile(
    r"(?P<prefix>eq|gt|lt|ge|le)?(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2}))?)?"
)
_DATE_VALUE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


class UnsupportedCriterionError(ValueError):
    """A search criterion this module cannot evaluate exactly; callers must deny."""


# --- values: escaping and splitting ---------------------------------------------------------------------


def _unescaped_split(value: str, separator: str) -> list[str]:
    """Split on ``separator`` where it is not escaped with ``\\``; keep the other escapes for later."""
    pieces: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if escaped not in _ESCAPABLE:
                raise UnsupportedCriterionError("invalid escape in a search value")
            current.append(char + escaped)
        elif char == separator:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


# --- token ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code

    @property
    def plain(self) -> bool:
        return self.system is None


def _parse_token(value: str) -> _Token:
    parts = _unescaped_split(value, "|")
    if len(parts) == 1:
        return _Token(None, _unescape(parts[0]))
    if len(parts) != 2 or (parts[0] == "" and parts[1] == ""):
        raise UnsupportedCriterionError("a token is code, system|code, |code or system|")
    return _Token(_unescape(parts[0]), _unescape(parts[1]) or None)


def _coded(token: _Token, system: Any, code: Any) -> bool:
    if token.code is not None and code != token.code:
        return False
    if token.system is None:
        return True
    return (system or "") == token.system


def _token_matches(token: _Token, value: Any) -> bool:
    if isinstance(value, bool):
        return _plain_only(token) and token.code == ("true" if value else "false")
    if isinstance(value, str):
        return _plain_only(token) and value == token.code
    if not isinstance(value, dict):
        raise UnsupportedCriterionError("a token cannot be compared with this value")
    if "coding" in value or ("text" in value and "value" not in value):
        codings = value.get("coding", [])
        return any(_coded(token, c.get("system"), c.get("code")) for c in codings if isinstance(c, dict))
    if "value" in value and (value.get("system") in _CONTACT_POINT_SYSTEMS or "rank" in value):
        return _plain_only(token) and value.get("value") == token.code  # ContactPoint: no token system
    if "value" in value or "type" in value or "assigner" in value:
        return _coded(token, value.get("system"), value.get("value"))  # Identifier
    if "code" in value or "system" in value:
        return _coded(token, value.get("system"), value.get("code"))  # Coding
    return False


def _plain_only(token: _Token) -> bool:
    if not token.plain:
        raise UnsupportedCriterionError("a token system cannot be checked on a plain code or contact point")
    return True


# --- reference ------------------------------------------------------------------------------------------


def _reference_tail(reference: str) -> tuple[str, str] | None:
    """``(type, id)`` of a literal reference (relative, absolute or versioned); None for other forms."""
    if reference.startswith(("#", "urn:")) or any(char in reference for char in "?# "):
        return None
    segments = reference.split("/")
    if len(segments) >= 4 and segments[-2] == "_history":
        segments = segments[:-2]
    if ("://" not in reference and len(segments) != 2) or len(segments) < 2:
        return None
    return segments[-2], segments[-1]


def _parse_reference(value: str, definition: SearchParamDef) -> tuple[str, str]:
    value = _unescape(value)
    if "/" not in value:
        if len(definition.targets) != 1:
            raise UnsupportedCriterionError("a bare id needs a parameter with a single target type")
        tail: tuple[str, str] | None = (definition.targets[0], value)
    elif "/_history/" in value:
        raise UnsupportedCriterionError("version-specific references are not supported")
    else:
        tail = _reference_tail(value)
    if tail is None or tail[0] not in R4_RESOURCE_TYPES or not is_valid_id(tail[1]):
        raise UnsupportedCriterionError("a reference is Type/id, an absolute URL or a bare id")
    if tail[0] not in definition.targets:
        raise UnsupportedCriterionError(f"{tail[0]} is not a target of {definition.name}")
    return tail


def _reference_matches(expected: tuple[str, str], value: Any) -> bool:
    if not isinstance(value, dict):
        raise UnsupportedCriterionError("a reference criterion cannot be compared with this value")
    reference = value.get("reference")
    return isinstance(reference, str) and _reference_tail(reference) == expected


# --- string and uri -------------------------------------------------------------------------------------


def _folded(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char)).casefold()


def _string_parts(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict) and set(value) & {"family", "given", "prefix", "suffix"}:
        names: Iterable[str] = _NAME_PARTS
    elif isinstance(value, dict) and set(value) & {
        "line",
        "city",
        "district",
        "state",
        "postalCode",
        "country",
    }:
        names = _ADDRESS_PARTS
    elif isinstance(value, dict) and set(value) <= {"text", "use", "period", "id", "extension"}:
        names = ("text",)
    else:
        raise UnsupportedCriterionError("a string criterion cannot be compared with this value")
    parts: list[Any] = []
    for name in names:
        part = value.get(name)
        parts.extend(part if isinstance(part, list) else [part] if part is not None else [])
    return parts


def _string_matches(prefix: str, value: Any) -> bool:
    parts = _string_parts(value)
    if not all(isinstance(part, str) for part in parts):
        raise UnsupportedCriterionError("a string criterion cannot be compared with this value")
    return any(_folded(part).startswith(prefix) for part in parts)


def _uri_matches(expected: str, value: Any) -> bool:
    if not isinstance(value, str):
        raise UnsupportedCriterionError("a uri criterion cannot be compared with this value")
    return value == expected


# --- date -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bound:
    seconds: float  # POSIX seconds, reading a value without a time zone as UTC; +-inf when open
    zoned: bool  # False for dates and other values without a time zone


@dataclass(frozen=True, slots=True)
class _DateQuery:
    prefix: str
    low: float
    high: float


def _start_and_end(year: int, month: int | None, day: int | None) -> tuple[datetime, datetime]:
    if day is not None and month is not None:
        start = datetime(year, month, day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    if month is not None:
        start = datetime(year, month, 1, tzinfo=UTC)
        return start, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)


def _optional_int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _parse_date_query(value: str) -> _DateQuery:
    match = _DATE_QUERY.fullmatch(value)
    if match is None:
        raise UnsupportedCriterionError("a date criterion is [eq|gt|lt|ge|le]YYYY[-MM[-DD]]")
    try:
        start, end = _start_and_end(
            int(match["year"]), _optional_int(match["month"]), _optional_int(match["day"])
        )
    except ValueError as exc:
        raise UnsupportedCriterionError("not a valid date") from exc
    return _DateQuery(match["prefix"] or "eq", start.timestamp(), end.timestamp())


def _time_range(match: re.Match[str]) -> tuple[_Bound, _Bound]:
    fraction = match["fraction"] or ""
    day = (int(match["year"]), int(match["month"]), int(match["day"]))
    start = datetime(*day, int(match["hour"]), int(match["minute"]), int(match["second"] or 0), tzinfo=UTC)
    seconds = start.timestamp() + (float(fraction) if fraction else 0.0)
    width = 10.0 ** -(len(fraction) - 1) if fraction else 1.0 if match["second"] else 60.0
    zone = match["zone"]
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return _Bound(seconds, bool(zone)), _Bound(seconds + width, bool(zone))


def _point_range(text: str) -> tuple[_Bound, _Bound]:
    match = _DATE_VALUE.fullmatch(text)
    if match is None:
        raise UnsupportedCriterionError("a date criterion cannot be compared with this value")
    try:
        if match["hour"] is not None:
            return _time_range(match)
        start, end = _start_and_end(
            int(match["year"]), _optional_int(match["month"]), _optional_int(match["day"])
        )
    except ValueError as exc:
        raise UnsupportedCriterionError("not a valid date or dateTime value") from exc
    return _Bound(start.timestamp(), False), _Bound(end.timestamp(), False)


def _value_range(value: Any) -> tuple[_Bound, _Bound]:
    if isinstance(value, str):
        return _point_range(value)
    if isinstance(value, dict) and set(value) <= {"start", "end", "id", "extension"}:  # Period
        start, end = value.get("start"), value.get("end")
        low = _point_range(start)[0] if isinstance(start, str) else _Bound(-math.inf, False)
        high = _point_range(end)[1] if isinstance(end, str) else _Bound(math.inf, False)
        return low, high
    raise UnsupportedCriterionError("a date criterion cannot be compared with this value")


def _compare(prefix: str, low: float, high: float, query: _DateQuery) -> bool:
    contained = low >= query.low and high <= query.high
    if prefix == "gt":
        return high > query.high
    if prefix == "lt":
        return low < query.low
    if prefix == "ge":
        return high > query.high or contained
    if prefix == "le":
        return low < query.low or contained
    return contained


def _shifted(bound: _Bound, offset: float) -> float:
    return bound.seconds + offset if bound.zoned else bound.seconds


def _date_matches(query: _DateQuery, value: Any) -> bool:
    low, high = _value_range(value)
    answers = {
        _compare(query.prefix, _shifted(low, offset), _shifted(high, offset), query)
        for offset in (-_ZONE_SPREAD, 0.0, _ZONE_SPREAD)
    }
    if len(answers) != 1:
        raise UnsupportedCriterionError("the answer depends on the time zone the date is read in")
    return answers.pop()


# --- criteria -------------------------------------------------------------------------------------------

_Matcher = Callable[[Any], bool]


def _matcher(definition: SearchParamDef, value: str) -> _Matcher:
    if definition.type == "token":
        token = _parse_token(value)
        return lambda node: _token_matches(token, node)
    if definition.type == "reference":
        expected = _parse_reference(value, definition)
        return lambda node: _reference_matches(expected, node)
    if definition.type == "string":
        prefix = _folded(_unescape(value))
        return lambda node: _string_matches(prefix, node)
    if definition.type == "uri":
        uri = _unescape(value)
        return lambda node: _uri_matches(uri, node)
    if definition.type == "date":
        query = _parse_date_query(_unescape(value))
        return lambda node: _date_matches(query, node)
    raise UnsupportedCriterionError(f"{definition.type} parameters are not supported")


@dataclass(frozen=True, slots=True)
class Criterion:
    """One parsed ``name=value`` criterion: the parameter and one matcher per comma-separated value."""

    definition: SearchParamDef
    alternatives: tuple[_Matcher, ...]

    def holds(self, resource: Mapping[str, Any]) -> bool:
        """True when any alternative matches any value of the parameter in ``resource``.

        A value that cannot be evaluated does not matter when another one matches; otherwise it raises.
        """
        unsupported: UnsupportedCriterionError | None = None
        for node in values_at(resource, self.definition.paths):
            for alternative in self.alternatives:
                try:
                    if alternative(node):
                        return True
                except UnsupportedCriterionError as exc:
                    unsupported = exc
        if unsupported is not None:
            raise unsupported
        return False


def _definition(resource_type: str, name: str) -> SearchParamDef:
    if ":" in name or "." in name:
        raise UnsupportedCriterionError(f"modifiers and chains are not supported ({name})")
    definition = search_param(resource_type, name)
    if definition is None:
        raise UnsupportedCriterionError(f"{name} is not a search parameter of {resource_type}")
    if definition.complex or not definition.paths:
        raise UnsupportedCriterionError(f"{name} has no simple path")
    return definition


def _criterion(resource_type: str, name: str, value: str) -> Criterion:
    definition = _definition(resource_type, name)
    values = _unescaped_split(value, ",")
    if any(item == "" for item in values):
        raise UnsupportedCriterionError(f"{name} has an empty value")
    return Criterion(definition, tuple(_matcher(definition, item) for item in values))


def parse_criteria(resource_type: str, criteria: Sequence[tuple[str, str]]) -> tuple[Criterion, ...]:
    """Parse ``criteria`` for ``resource_type`` once (e.g. a scope's query); raise if any is unsupported."""
    return tuple(_criterion(resource_type, name, value) for name, value in criteria)


def matches(resource: Mapping[str, Any], resource_type: str, criteria: Sequence[tuple[str, str]]) -> bool:
    """True when ``resource`` is a ``resource_type`` satisfying every criterion (see the module docstring)."""
    return matches_parsed(resource, resource_type, parse_criteria(resource_type, criteria))


def matches_parsed(resource: Mapping[str, Any], resource_type: str, parsed: Sequence[Criterion]) -> bool:
    """:func:`matches` with criteria parsed once by :func:`parse_criteria` (e.g. when the scope is read).

    A criterion that does not hold decides (False) even when another cannot be evaluated; otherwise an
    unevaluable criterion raises :class:`UnsupportedCriterionError`.
    """
    if resource.get("resourceType") != resource_type:
        return False
    unsupported: UnsupportedCriterionError | None = None
    for criterion in parsed:
        try:
            if not criterion.holds(resource):
                return False
        except UnsupportedCriterionError as exc:
            unsupported = exc
    if unsupported is not None:
        raise unsupported
    return True
