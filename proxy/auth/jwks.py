"""Signing keys of trusted issuers: fetched, cached, refreshed on an unknown ``kid`` (rate-limited)."""

from __future__ import annotations

import asyncio
import time

import httpx
from joserfc.jwk import KeySet

from proxy.errors import IssuerUnavailableError

__all__ = ["JwksCache"]


class JwksCache:
    """The JWKS of one issuer. ``key_set(kid)`` refetches at most once per ``min_refresh`` seconds."""

    def __init__(self, uri: str, client: httpx.AsyncClient, *, min_refresh: float, max_age: float) -> None:
        self.uri = uri
        self._client = client
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._keys: KeySet | None = None
        self._kids: frozenset[str | None] = frozenset()
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_set(self, kid: str | None) -> KeySet | None:
        """The key set if it holds ``kid`` (after one rate-limited refresh when it does not), else None."""
        if self._keys is None or self._stale() or kid not in self._kids:
            await self._refresh(force=self._keys is None or self._stale())
        if self._keys is None or (kid is not None and kid not in self._kids):
            return None
        return self._keys

    def _stale(self) -> bool:
        return time.monotonic() - self._fetched_at > self._max_age

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at < self._min_refresh:
                return
            try:
                response = await self._client.get(self.uri, headers={"accept": "application/json"})
                response.raise_for_status()
                keys = KeySet.import_key_set(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                if self._keys is None:
                    raise IssuerUnavailableError() from exc
                return  # keep serving the keys we have; the next refresh will retry
            finally:
                self._fetched_at = time.monotonic()
            self._keys = keys
            self._kids = frozenset(key.kid for key in keys.keys)
