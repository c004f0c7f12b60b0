"""One upstream FHIR server: a pooled aiohttp session, the proxy's credentials, and error mapping.

aiohttp carries the forwarding hot path (measured ~2.4x faster than httpx's default transport on this
workload); httpx is used for everything else. Transport failures become ``UpstreamError`` subclasses here,
at the one boundary where they can occur.

TLS files are watched: each request names the newest SSLContext, and aiohttp pools connections per context,
so after a certificate change new connections present the new certificate and idle pooled connections made
with the old one are no longer used (they close after the keep-alive timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from proxy.errors import (
    InvalidUpstreamResponseError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from proxy.settings import UpstreamSettings
from proxy.tls_reload import ReloadingContext, start_watching, stop_watching
from proxy.upstream.credentials import UpstreamCredentials, credentials_for
from proxy.upstream.tls import reloading_client_context, token_endpoint_verify

__all__ = ["BufferedResponse", "Upstream", "UpstreamStream"]

USER_AGENT = "fhirwall"
STREAM_CHUNK_BYTES = 64 * 1024


@dataclass(slots=True)
class BufferedResponse:
    """An upstream response read completely (bounded)."""

    status: int
    headers: list[tuple[str, str]]
    content_type: str
    body: bytes


@dataclass(slots=True)
class UpstreamStream:
    """An upstream response whose body is still to be streamed; ``close`` must be awaited."""

    status: int
    headers: list[tuple[str, str]]
    content_type: str
    _response: aiohttp.ClientResponse

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in bounded chunks; transport failures mid-stream become ``UpstreamError``."""
        try:
            async for chunk in self._response.content.iter_chunked(STREAM_CHUNK_BYTES):
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise InvalidUpstreamResponseError("the upstream response broke off") from exc
        finally:
            self._response.release()

    async def read(self, max_bytes: int) -> bytes:
        """The whole body, refusing more than ``max_bytes``."""
        try:
            return await _read_bounded(self._response, max_bytes)
        finally:
            self._response.release()

    async def close(self) -> None:
        self._response.release()


class Upstream:
    """A named upstream with its own connection pool and credentials."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.name = settings.name
        self.base_url = settings.url
        self.base_path = urlsplit(settings.url).path.rstrip("/")
        self.settings = settings
        self.credentials: UpstreamCredentials = credentials_for(
            settings.auth, verify=token_endpoint_verify(settings.tls)
        )
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._tls: ReloadingContext | None = None
        self._tls_watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the connection pool and watch the TLS files (call inside the event loop)."""
        if self.settings.url.startswith("https:"):
            self._tls = reloading_client_context(self.settings.tls, self.name)
            self._tls_watcher = start_watching(self._tls, self.settings.tls.reload_seconds)
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections,
            ssl=self._tls.current if self._tls is not None else False,
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
        )

    async def close(self) -> None:
        await stop_watching(self._tls_watcher)
        if self._session is not None:
            await self._session.close()
        await self.credentials.close()

    def url_for(self, relative_path: str, query: str = "") -> str:
        """Absolute upstream URL for a path below the FHIR base."""
        url = self.base_url + relative_path
        return f"{url}?{query}" if query else url

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, *, max_bytes: int
    ) -> BufferedResponse:
        """Send a request and read the whole response, refusing bodies over ``max_bytes``."""
        response = await self._open(method, url, headers, body)
        try:
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise InvalidUpstreamResponseError("the upstream response is larger than the proxy accepts")
            payload = await _read_bounded(response, max_bytes)
        finally:
            response.release()
        return BufferedResponse(response.status, _header_pairs(response), _content_type(response), payload)

    async def stream(
        self, method: str, url: str, headers: dict[str, str], body: bytes | AsyncIterator[bytes] | None
    ) -> UpstreamStream:
        """Send a request and return the response with its body still unread (for raw content)."""
        response = await self._open(method, url, headers, body)
        return UpstreamStream(response.status, _header_pairs(response), _content_type(response), response)

    async def _open(
        self, method: str, url: str, headers: dict[str, str], body: bytes | AsyncIterator[bytes] | None
    ) -> aiohttp.ClientResponse:
        assert self._session is not None, "Upstream.start() was not called"
        outgoing = {"user-agent": USER_AGENT, **headers}
        authorization = await self.credentials.authorization()
        if authorization is not None:
            outgoing["authorization"] = authorization
        try:
            return await self._session.request(
                method,
                url,
                headers=outgoing,
                data=body,
                allow_redirects=False,
                ssl=self._tls.current if self._tls is not None else True,
            )
        except TimeoutError as exc:
            raise UpstreamTimeoutError() from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailableError() from exc
        except aiohttp.ClientError as exc:
            raise InvalidUpstreamResponseError() from exc


async def _read_bounded(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_chunked(STREAM_CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise InvalidUpstreamResponseError("the upstream response is larger than the proxy accepts")
            parts.append(chunk)
    except TimeoutError as exc:
        raise UpstreamTimeoutError() from exc
    except aiohttp.ClientError as exc:
        raise InvalidUpstreamResponseError("the upstream response broke off") from exc
    return b"".join(parts)


def _header_pairs(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in response.headers.items()]


def _content_type(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("Content-Type", "")
