r"""Bare reverse proxy used as the throughput "floor" in the fhirwall benchmarks.

Every request under ``/fhir/...`` is forwarded verbatim (method, raw path, raw query, body,
``Content-Type``/``Accept``) to the upstream through one shared :class:`aiohttp.ClientSession`,
and the upstream's status, content type and body are returned unchanged. There is no policy,
no parsing and no header rewriting: whatever fhirwall costs on top of this is its own overhead.

The upstream base URL (for example ``http://127.0.0.1:8080/fhir``) comes from ``--upstream`` or
the ``FHIRWALL_BENCH_UPSTREAM`` environment variable.

Run with uvicorn (uvloop + httptools, 1 worker)::

    python tests/bench/passthrough.py --upstream http://127.0.0.1:8080/fhir --port 8081

or, since ``app`` is a module-level ASGI app, with any ASGI server, e.g.::

    FHIRWALL_BENCH_UPSTREAM=http://127.0.0.1:8080/fhir \
        granian --interface asgi --loop uvloop --working-dir tests/bench passthrough:app
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from yarl import URL

UPSTREAM_ENV = "FHIRWALL_BENCH_UPSTREAM"
MOUNT_PREFIX = "/fhir"
FORWARDED_REQUEST_HEADERS = ("content-type", "accept")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def upstream_from_env() -> str:
    """Return the configured upstream base URL without a trailing slash."""
    upstream = os.environ.get(UPSTREAM_ENV, "").rstrip("/")
    if not upstream:
        raise RuntimeError(f"set {UPSTREAM_ENV} or pass --upstream")
    return upstream


def target_url(upstream: str, request: Request) -> URL:
    """Build the upstream URL from the raw (still percent-encoded) path and query."""
    raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    suffix = raw_path.decode("latin-1")[len(MOUNT_PREFIX) :]
    query: bytes = request.scope.get("query_string", b"")
    url = upstream + suffix
    if query:
        url += "?" + query.decode("latin-1")
    return URL(url, encoded=True)


async def forward(request: Request) -> Response:
    """Forward one request to the upstream and relay status, content type and body."""
    session: aiohttp.ClientSession = request.app.state.session
    upstream: str = request.app.state.upstream
    body = await request.body()
    headers = {k: v for k in FORWARDED_REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
    async with session.request(
        request.method, target_url(upstream, request), data=body or None, headers=headers
    ) as upstream_response:
        payload = await upstream_response.read()
        content_type = upstream_response.headers.get("Content-Type")
        status = upstream_response.status
    response = Response(payload, status_code=status)
    if content_type is not None:
        response.headers["content-type"] = content_type
    return response


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Create the shared keep-alive client session for the lifetime of the server."""
    app.state.upstream = upstream_from_env()
    connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=60.0)
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        app.state.session = session
        yield


app = Starlette(
    routes=[
        Route(MOUNT_PREFIX, forward, methods=METHODS),
        Route(MOUNT_PREFIX + "/{path:path}", forward, methods=METHODS),
    ],
    lifespan=lifespan,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstream", default=os.environ.get(UPSTREAM_ENV, ""), help="upstream FHIR base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Serve the passthrough with uvicorn: uvloop + httptools, one worker, no access log."""
    args = parse_args(argv)
    if not args.upstream:
        raise SystemExit(f"error: pass --upstream or set {UPSTREAM_ENV}")
    os.environ[UPSTREAM_ENV] = args.upstream
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
