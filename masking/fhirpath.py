"""FHIRPath checked strictly before it is compiled.

fhirpathpy recovers silently from many syntax errors and only notices unknown functions or wrong arity when
an expression runs; profiles must fail at start-up instead. ``check_expression`` runs the grammar with an
error listener that collects every syntax error and checks every function name against fhirpathpy's
registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.parser import parse as _untyped_parse
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

__all__ = ["check_expression"]

_parse: Callable[[str], Any] = _untyped_parse


def check_expression(expression: str) -> set[str]:
    """The names of the functions ``expression`` calls; ``ValueError`` on a syntax error or an unknown
    function."""
    errors = _syntax_errors(expression)
    if errors:
        raise ValueError("; ".join(errors))
    functions = _functions(_parse(expression))
    unknown = sorted(functions - invocation_registry.keys())
    if unknown:
        raise ValueError(f"unknown function {', '.join(unknown)}")
    return functions


class _Collect(ErrorListener):  # type: ignore[misc]
    """Collects ANTLR syntax errors instead of ignoring them."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any) -> None:
        self.errors.append(f"column {column + 1}: {msg.split(' expecting ')[0]}")


def _syntax_errors(expression: str) -> list[str]:
    listener = _Collect()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    parser.expression()
    if not listener.errors and tokens.LA(1) != Token.EOF:
        listener.errors.append(f"unexpected {tokens.LT(1).text!r}")
    return listener.errors


def _functions(node: Any) -> set[str]:
    """Names of the functions an expression's syntax tree invokes."""
    names: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        children = current.get("children") or []
        if current.get("type") == "Functn" and children:
            names.add(str(children[0].get("text")))
        stack.extend(children)
    return names
