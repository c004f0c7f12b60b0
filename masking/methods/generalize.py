"""generalize: map a primitive value onto a coarser one with FHIRPath cases.

Settings: ``cases``, an ordered mapping FHIRPath condition -> FHIRPath result, both evaluated with the
value as ``$this`` (dates as FHIRPath dates, so ``$this >= @2010-01-01`` works); ``otherValues``
``redact`` (default) or ``keep``. The first true condition wins and its result, read for the element's
type, replaces the value (an empty result removes it); without a true condition the value is removed
(``redact``) or kept. Every expression is checked and compiled once at build time. Outcomes depend only
on the value, so recent ones are cached (unless an expression reads the clock).

Label: ABSTRED natively (REDACTED for removals), GENERALIZED in compatibility mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, cast

import fhirpathpy
from fhirpathpy.engine.nodes import FP_Type, ResourceNode

from masking.fhirpath import check_expression
from masking.methods.base import (
    KEEP,
    REMOVE,
    Leaf,
    MaskContext,
    MaskingValueError,
    MethodConfigError,
    ProfileParameters,
    Relabelled,
    common_problems,
)
from masking.methods.substitute import fit_to_type

__all__ = ["Generalize", "build", "compile_expression"]

Compiled = Callable[[Any, Any], list[Any]]
_CACHE_SIZE: Final = 4096
_CLOCK_FUNCTIONS: Final = frozenset({"now", "today", "timeOfDay"})
_FHIRPATH_TYPES: Final = {"date": "date", "dateTime": "dateTime", "instant": "dateTime", "time": "time"}
_OTHER_VALUES: Final = ("redact", "keep")
_node: Callable[[Any, str], Any] = ResourceNode.create_node


def compile_expression(expression: str) -> tuple[Compiled, bool]:
    """Compile ``expression`` to run with the value as ``$this``; also whether it reads the clock.

    Raises ``ValueError`` with the syntax error or unknown function.
    """
    functions = check_expression(expression)
    clock = bool(functions & _CLOCK_FUNCTIONS)
    # select() makes the value $this; the newline ends a trailing // comment.
    return cast(Compiled, fhirpathpy.compile(f"select({expression}\n)")), clock


def _focus(value: Any, type_name: str) -> Any:
    kind = _FHIRPATH_TYPES.get(type_name)
    return _node(value, kind) if kind else value


def _single(items: list[Any], what: str) -> Any:
    if len(items) > 1:
        raise MaskingValueError(f"generalize: the {what} gave {len(items)} values, not one")
    item = items[0]
    if isinstance(item, ResourceNode):
        item = item.data
    if isinstance(item, FP_Type):
        item = getattr(item, "asStr", None) or str(item)
    return item


class Generalize:
    """Evaluates precompiled cases; the first true one gives the new value."""

    name: ClassVar[str] = "generalize"
    label: str | None

    def __init__(
        self, cases: list[tuple[Compiled, Compiled]], *, keep_others: bool, cache: bool, compat: bool
    ) -> None:
        self.label = "GENERALIZED" if compat else "ABSTRED"
        self._cases = cases
        kept: Any = Relabelled(KEEP, "GENERALIZED") if compat else KEEP  # MS labels values it keeps too
        self._others: Any = kept if keep_others else (REMOVE if compat else Relabelled(REMOVE, "REDACTED"))
        self._emptied: Any = REMOVE if compat else Relabelled(REMOVE, "REDACTED")
        self._cache: dict[tuple[str, Any], Any] | None = {} if cache else None
        self.deterministic = cache  # expressions reading the clock are not

    def apply(self, leaf: Leaf, context: MaskContext) -> Any:
        """The first matching case's result, else the ``otherValues`` outcome."""
        value = leaf.value
        if value is None or value == "":
            return KEEP
        if self._cache is None or isinstance(value, dict | list):
            return self._evaluate(value, leaf.type_name)
        key = (leaf.type_name, value)
        outcome = self._cache.get(key)
        if outcome is None:
            outcome = self._evaluate(value, leaf.type_name)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = outcome
        return outcome

    def _evaluate(self, value: Any, type_name: str) -> Any:
        focus = _focus(value, type_name)
        try:
            for condition, result in self._cases:
                verdict = condition(focus, None)
                if verdict and (_single(verdict, "condition") is not False):
                    return self._result(result(focus, None), type_name)
        except MaskingValueError:
            raise
        except Exception as exc:
            raise MaskingValueError(f"generalize: evaluation failed: {exc}") from exc
        return self._others

    def _result(self, items: list[Any], type_name: str) -> Any:
        if not items:
            return self._emptied
        new = fit_to_type(_single(items, "result"), type_name)
        if new is None:
            raise MaskingValueError(f"generalize: the result {items[0]!r} is not a valid {type_name}")
        return new


def _expression(text: Any, role: str, problems: list[str]) -> tuple[Compiled | None, bool]:
    if isinstance(text, bool):
        text = "true" if text else "false"
    elif isinstance(text, int | float):
        text = repr(text)
    if not isinstance(text, str):
        problems.append(f"generalize: {role} {text!r} is not a FHIRPath expression")
        return None, False
    try:
        return compile_expression(text)
    except ValueError as exc:
        problems.append(f"generalize: invalid {role} {text!r}: {exc}")
        return None, False


def _cases(settings: Mapping[str, Any], problems: list[str]) -> tuple[list[tuple[Compiled, Compiled]], bool]:
    cases = settings.get("cases")
    if "cases" not in settings:
        problems.append("generalize: cases is required")
        return [], False
    if not isinstance(cases, Mapping):
        problems.append("generalize: cases must map FHIRPath conditions to FHIRPath results")
        return [], False
    compiled: list[tuple[Compiled, Compiled]] = []
    clock = False
    for condition_text, result_text in cases.items():
        condition, condition_clock = _expression(condition_text, "condition", problems)
        result, result_clock = _expression(result_text, "result", problems)
        clock = clock or condition_clock or result_clock
        if condition is not None and result is not None:
            compiled.append((condition, result))
    return compiled, clock


def build(settings: Mapping[str, Any], params: ProfileParameters) -> Generalize:
    """Settings: ``cases`` (required), ``otherValues`` (redact | keep)."""
    problems = common_problems("generalize", settings, ("cases", "otherValues"), params)
    cases, clock = _cases(settings, problems)
    others = settings.get("otherValues", "redact")
    if not isinstance(others, str) or others.lower() not in _OTHER_VALUES:
        problems.append(f"generalize: otherValues {others!r} must be redact or keep")
    if problems:
        raise MethodConfigError(problems)
    compat = params.mode == "compatibility"
    return Generalize(cases, keep_others=others.lower() == "keep", cache=not clock, compat=compat)
