"""The proxy's own credentials towards an upstream: none, a static bearer token, or OAuth2 client credentials.

The client's ``Authorization`` header is never forwarded; these providers produce the only one the upstream
sees. (mTLS client certificates are part of the connection, see ``proxy.upstream.client``.)
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from proxy.errors import UpstreamUnavailableError
from proxy.settings import UpstreamAuthSettings

__all__ = [
    "BearerTokenCredentials",
    "ClientCredentials",
    "NoCredentials",
    "UpstreamCredentials",
    "credentials_for",
]

REFRESH_MARGIN_SECONDS = 30.0


class UpstreamCredentials(Protocol):
    """Produces the ``Authorization`` header value for upstream calls (or None)."""

    async def authorization(self) -> str | None: ...

    async def close(self) -> None: ...


class NoCredentials:
    """No upstream authentication."""

    async def authorization(self) -> str | None:
        return None

    async def close(self) -> None:
        return None


class BearerTokenCredentials:
    """A static bearer token from an environment variable or a file (re-read when the file changes)."""

    def __init__(self, *, env: str | None = None, file: Path | None = None) -> None:
        self._env = env
        self._file = file
        self._cached: tuple[float, str] | None = None

    async def authorization(self) -> str | None:
        return f"Bearer {self._token()}"

    def _token(self) -> str:
        if self._env is not None:
            return os.environ[self._env]
        assert self._file is not None
        mtime = self._file.stat().st_mtime
        if self._cached is None or self._cached[0] != mtime:
            self._cached = (mtime, self._file.read_text(encoding="utf-8").strip())
        return self._cached[1]

    async def close(self) -> None:
        return None


class ClientCredentials:
    """OAuth2 client-credentials grant (RFC 6749 4.4); the token is cached until shortly before it expires.

    A direct httpx call: authlib's httpx integration is deprecated in favour of a different HTTP package, and
    the grant is one form POST.
    """

    def __init__(self, settings: UpstreamAuthSettings, *, verify: ssl.SSLContext | bool = True) -> None:
        assert settings.token_url is not None
        assert settings.client_id is not None
        self._token_url = settings.token_url
        self._form = {"grant_type": "client_credentials"}
        if settings.scope:
            self._form["scope"] = settings.scope
        secret = _secret(settings)
        auth: httpx.BasicAuth | None = None
        if settings.auth_method == "client_secret_basic":
            auth = httpx.BasicAuth(settings.client_id, secret)
        else:
            self._form.update(client_id=settings.client_id, client_secret=secret)
        self._client = httpx.AsyncClient(auth=auth, timeout=10.0, verify=verify)
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def authorization(self) -> str | None:
        if self._token is None or time.monotonic() >= self._expires_at:
            async with self._lock:
                if self._token is None or time.monotonic() >= self._expires_at:
                    await self._fetch()
        return f"Bearer {self._token}"

    async def _fetch(self) -> None:
        try:
            response = await self._client.post(self._token_url, data=self._form)
            response.raise_for_status()
            token: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamUnavailableError("the proxy could not obtain its upstream access token") from exc
        if not isinstance(token, dict):
            raise UpstreamUnavailableError("the upstream token endpoint returned no access token")
        access_token = token.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise UpstreamUnavailableError("the upstream token endpoint returned no access token")
        lifetime = float(token.get("expires_in") or 300)
        self._token = access_token
        self._expires_at = time.monotonic() + max(lifetime - REFRESH_MARGIN_SECONDS, lifetime / 2)

    async def close(self) -> None:
        await self._client.aclose()


def _secret(settings: UpstreamAuthSettings) -> str:
    if settings.client_secret_env is not None:
        return os.environ[settings.client_secret_env]
    assert settings.client_secret_file is not None
    return settings.client_secret_file.read_text(encoding="utf-8").strip()


def credentials_for(
    settings: UpstreamAuthSettings, *, verify: ssl.SSLContext | bool = True
) -> UpstreamCredentials:
    """Build the provider configured by ``settings``."""
    if settings.type == "bearer":
        return BearerTokenCredentials(env=settings.token_env, file=settings.token_file)
    if settings.type == "client_credentials":
        return ClientCredentials(settings, verify=verify)
    return NoCredentials()
