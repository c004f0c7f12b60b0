"""Base-URL rewriting: upstream absolute URLs become the proxy's public base.

Applied to every string in a response document that starts with an upstream base (``Bundle.link.url``,
``entry.fullUrl``, ``entry.response.location``, absolute references, attachment URLs, ...) and to the
``Location``/``Content-Location`` headers. Matching is by URL prefix at a path boundary, never by
substring, so ``http://up/fhir2`` is not mistaken for ``http://up/fhir``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["BaseUrlRewriter"]


class BaseUrlRewriter:
    """Maps URLs under any of the upstream bases onto one public base."""

    def __init__(self, upstream_bases: Iterable[str]) -> None:
        self._bases: list[str] = []
        self._netlocs: list[bytes] = []
        for base in upstream_bases:
            self.add_base(base)

    def add_base(self, base: str) -> None:
        """Treat ``base`` as an upstream base (also used for the URL an upstream announces for itself)."""
        base = base.rstrip("/")
        if base in self._bases:
            return
        self._bases = sorted([*self._bases, base], key=len, reverse=True)
        self._netlocs = sorted({*self._netlocs, urlsplit(base).netloc.encode()})

    def may_contain(self, body: bytes) -> bool:
        """Cheap pre-check: can ``body`` contain an upstream URL at all?"""
        return any(netloc in body for netloc in self._netlocs)

    def rewrite_url(self, url: str, public_base: str) -> str:
        """``url`` with an upstream base prefix replaced by ``public_base``; other URLs unchanged."""
        for base in self._bases:
            if url.startswith(base):
                rest = url[len(base) :]
                if rest == "" or rest[0] in "/?#":
                    return public_base + rest
        return url

    def rewrite_document(self, document: Any, public_base: str) -> bool:
        """Rewrite every upstream URL inside a parsed JSON document in place; True if anything changed."""
        return self._walk(document, public_base)

    def _walk(self, node: Any, public_base: str) -> bool:
        changed = False
        if isinstance(node, dict):
            items: Iterable[tuple[Any, Any]] = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            return False
        for key, value in list(items):
            if isinstance(value, str):
                if value.startswith("http"):
                    new_value = self.rewrite_url(value, public_base)
                    if new_value is not value:
                        node[key] = new_value
                        changed = True
            elif isinstance(value, dict | list):
                changed = self._walk(value, public_base) or changed
        return changed
