"""Base-URL rewriting between the upstreams' bases and the proxy's public base.

Rewriting works on the serialized JSON, anchored at the start of a JSON string: ``"<base>`` followed by
``/``, ``?``, ``#`` or the closing quote. That is exactly "a string value that starts with the base at a path
boundary" (``Bundle.link.url``, ``entry.fullUrl``, ``entry.response.location``, absolute references,
attachment URLs, ...), never a substring in the middle of a value, so ``http://up/fhir2`` is not mistaken for
``http://up/fhir``. Working on bytes keeps every other byte as the upstream sent it: FHIR decimals keep their
precision (``1.50`` stays ``1.50``), which a parse/serialize round trip would not guarantee.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import urlsplit

from masking.rewrite import InputRewrite

__all__ = ["BaseUrlRewriter", "rebase_body", "rebase_url", "to_upstream"]


@lru_cache(maxsize=64)
def _patterns(sources: tuple[str, ...]) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """Patterns for the sources as written plainly and with JSON-escaped slashes (``http:\\/\\/``)."""
    ordered = sorted((source.encode() for source in sources), key=len, reverse=True)
    plain = b"|".join(re.escape(raw) for raw in ordered)
    escaped = b"|".join(re.escape(raw.replace(b"/", b"\\/")) for raw in ordered)
    boundary = rb'(?=/|\\/|\?|#|")'
    return re.compile(rb'"(?:' + plain + rb")" + boundary), re.compile(rb'"(?:' + escaped + rb")" + boundary)


def rebase_body(body: bytes, sources: tuple[str, ...], target: str) -> bytes:
    """Replace each of ``sources`` by ``target`` where a JSON string in ``body`` starts with it."""
    plain, escaped = _patterns(sources)
    target_bytes = target.encode()
    original = body
    for source in sorted(sources, key=len, reverse=True):
        # the common case, a path below the base, in one C-level pass; the regex handles what is left
        body = body.replace(b'"' + source.encode() + b"/", b'"' + target_bytes + b"/")
    count = 0 if body is original else 1
    if any(b'"' + source.encode() in body for source in sources):
        body, more = plain.subn(_template(b'"' + target_bytes), body)
        count += more
    if count == 0:  # a server escapes slashes everywhere or nowhere: only then look for the escaped form
        body = escaped.sub(_template(b'"' + target_bytes.replace(b"/", b"\\/")), body)
    return body


def _template(text: bytes) -> bytes:
    """``text`` as a literal ``re.sub`` replacement (backslashes escaped)."""
    return text.replace(b"\\", b"\\\\")


def rebase_url(url: str, sources: Iterable[str], target: str) -> str:
    """``url`` with a leading source base (at a path boundary) replaced by ``target``; else unchanged."""
    for source in sorted(sources, key=len, reverse=True):
        if url.startswith(source):
            rest = url[len(source) :]
            if rest == "" or rest[0] in "/?#":
                return target + rest
    return url


class BaseUrlRewriter:
    """Maps URLs under any upstream base onto a public base (responses) and back (request bodies)."""

    def __init__(self, upstream_bases: Iterable[str]) -> None:
        self._bases: tuple[str, ...] = ()
        self._netlocs: tuple[bytes, ...] = ()
        self._rewrites: dict[str, InputRewrite] = {}
        for base in upstream_bases:
            self.add_base(base)

    @property
    def bases(self) -> tuple[str, ...]:
        return self._bases

    def add_base(self, base: str) -> None:
        """Treat ``base`` as an upstream base (also used for the URL an upstream announces for itself)."""
        base = base.rstrip("/")
        if base not in self._bases:
            self._bases = (*self._bases, base)
            self._netlocs = tuple(sorted({*self._netlocs, urlsplit(base).netloc.encode()}))
            self._rewrites = {}

    def to_public(self, body: bytes, public_base: str) -> bytes:
        """A response body with upstream URLs rebased on ``public_base``."""
        if not any(netloc in body for netloc in self._netlocs):
            return body
        return rebase_body(body, self._bases, public_base)

    def rewrite_to_public(self, public_base: str) -> InputRewrite:
        """``to_public`` for ``public_base`` as a named rewrite (masking applies it to what it masks and
        keeps it in cached results); named by the public base and every upstream base."""
        rewrite = self._rewrites.get(public_base)
        if rewrite is None:
            if len(self._rewrites) >= 64:  # public bases come from a few configured or allowed origins
                self._rewrites.clear()
            name = "\n".join(("to-public", public_base, *self._bases))
            rewrite = InputRewrite(name, lambda body: self.to_public(body, public_base))
            self._rewrites[public_base] = rewrite
        return rewrite

    def url_to_public(self, url: str, public_base: str) -> str:
        """A response header URL rebased on ``public_base``."""
        return rebase_url(url, self._bases, public_base)


def to_upstream(body: bytes, public_base: str, upstream_base: str) -> bytes:
    """A request body with URLs under the public base rebased on ``upstream_base``."""
    if urlsplit(public_base).netloc.encode() not in body:
        return body
    return rebase_body(body, (public_base,), upstream_base)
