"""Patient consent: FHIR Consent (R4/R5) parsed into directive trees, pure evaluation, stores and caches."""

from consent.errors import ConsentDeniedError, ConsentLookupError
from consent.evaluate import AccessContext, BreakGlass, ConsentVerdict, ImplicitPolicy, evaluate
from consent.facts import ResourceFacts, facts_of
from consent.model import ConsentDirective, ConsentParseError, parse_consent

__all__ = [
    "AccessContext",
    "BreakGlass",
    "ConsentDeniedError",
    "ConsentDirective",
    "ConsentLookupError",
    "ConsentParseError",
    "ConsentVerdict",
    "ImplicitPolicy",
    "ResourceFacts",
    "evaluate",
    "facts_of",
    "parse_consent",
]
