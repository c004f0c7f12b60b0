"""A minimal raw-content Binary store (the embedded FHIR upstream only stores Binary as JSON).

It streams uploads to disk and downloads from disk, so tests can check that the proxy streams raw content
with bounded memory. ``?delay=S`` on a read delays the answer (for graceful-shutdown tests).
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
import uuid
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from tests.threaded_server import ThreadedServer


class BinaryStore(ThreadedServer):
    """Serves ``/fhir/Binary`` on 127.0.0.1:``port`` from a temporary directory, in a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/fhir"
        self.directory = Path(tempfile.mkdtemp(prefix="fhirwall-binary-"))
        self.completed_uploads = 0
        routes = [
            Route("/fhir/metadata", self._metadata),
            Route("/fhir/Binary", self._create, methods=["POST"]),
            Route("/fhir/Binary/{id}", self._read, methods=["GET"]),
        ]
        config = uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning")
        super().__init__(config)

    async def _metadata(self, request: Request) -> Response:
        return JSONResponse(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "kind": "instance",
                "fhirVersion": "4.0.1",
                "format": ["json"],
                "rest": [{"mode": "server", "resource": [{"type": "Binary"}]}],
            },
            media_type="application/fhir+json",
        )

    async def _create(self, request: Request) -> Response:
        binary_id = uuid.uuid4().hex
        path = self.directory / binary_id
        with path.open("wb") as sink:
            async for chunk in request.stream():
                sink.write(chunk)
        (self.directory / f"{binary_id}.type").write_text(request.headers.get("content-type", ""))
        self.completed_uploads += 1
        return Response(
            status_code=201,
            headers={"Location": f"{self.base_url}/Binary/{binary_id}/_history/1", "ETag": 'W/"1"'},
        )

    async def _read(self, request: Request) -> Response:
        path = self.directory / request.path_params["id"]
        if not path.is_file():
            return JSONResponse(
                {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]},
                status_code=404,
                media_type="application/fhir+json",
            )
        await asyncio.sleep(float(request.query_params.get("delay", "0")))
        content_type = (self.directory / f"{path.name}.type").read_text()
        if "fhir+json" in request.headers.get("accept", ""):
            data = base64.b64encode(path.read_bytes()).decode()
            return JSONResponse(
                {"resourceType": "Binary", "id": path.name, "contentType": content_type, "data": data},
                media_type="application/fhir+json",
            )
        return FileResponse(path, media_type=content_type, headers={"ETag": 'W/"1"'})

    def start(self) -> BinaryStore:
        self.start_serving()
        return self
