"""``fhirwall demo``: an embedded upstream with synthetic patients behind the proxy, and requests to paste."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import httpx

from proxy.embedded_upstream import EXAMPLE_DATA, EmbeddedUpstream, synthea_bundles
from proxy.serve import run_server
from proxy.settings import load_settings

__all__ = ["run_demo"]

MAX_DEMO_PATIENTS = 6


def run_demo(*, proxy_port: int, upstream_port: int, patients: int) -> int:
    """Start everything, print how to use it, serve until Ctrl-C."""
    bundles = synthea_bundles(EXAMPLE_DATA, min(max(patients, 1), MAX_DEMO_PATIENTS))
    if len(bundles) < 3:
        print(f"demo data not found in {EXAMPLE_DATA} (run the demo from a source checkout)", file=sys.stderr)
        return 1
    print(f"starting the embedded upstream FHIR server on 127.0.0.1:{upstream_port} ...", flush=True)
    with EmbeddedUpstream(upstream_port) as upstream:
        print(f"loading {len(bundles) - 2} synthetic patients (Synthea, no real people) ...", flush=True)
        responses = upstream.seed(bundles)
        settings = load_settings(
            None,
            overrides={
                "server.port": proxy_port,
                "server.log_level": "warning",
                "upstreams": [{"name": "default", "url": upstream.base_url}],
            },
        )
        text = banner(f"http://127.0.0.1:{proxy_port}/fhir", upstream.base_url, _sample_ids(responses))
        threading.Thread(target=_print_when_ready, args=(proxy_port, text), daemon=True).start()
        run_server(settings)
    return 0


def _print_when_ready(port: int, text: str) -> None:
    """Print ``text`` once the proxy answers, so every printed request works when it is read."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                print(text, flush=True)
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    print("the proxy did not start; see the log above", file=sys.stderr, flush=True)


def _sample_ids(responses: list[dict[str, Any]]) -> dict[str, str]:
    ids: dict[str, str] = {}
    for bundle in responses:
        for entry in bundle.get("entry", []):
            resource = entry.get("resource") or {}
            resource_type = resource.get("resourceType")
            if resource_type in ("Patient", "Observation") and resource_type not in ids:
                ids[resource_type] = resource["id"]
    return ids


def banner(proxy_base: str, upstream_base: str, ids: dict[str, str]) -> str:
    """The text printed once everything runs."""
    patient = ids.get("Patient", "<patient-id>")
    observation = ids.get("Observation", "<observation-id>")
    lines = [
        "",
        "fhirwall demo is running (development only: synthetic data, no authentication yet)",
        f"  FHIR base (proxy):   {proxy_base}",
        f"  upstream (direct):   {upstream_base}",
        f"  health:              {proxy_base.rsplit('/fhir', 1)[0]}/readyz",
        "",
        "Try:",
        f"  curl -s {proxy_base}/metadata | head -c 400",
        f"  curl -s {proxy_base}/Patient/{patient}",
        f"  curl -s '{proxy_base}/Observation?patient={patient}&_count=5'",
        f"  curl -s {proxy_base}/Observation/{observation}/_history",
        f"  curl -s '{proxy_base}/Patient/{patient}/$everything?_count=10'",
        "Refused by design (each answers with an OperationOutcome):",
        "  # 406, JSON only:",
        f"  curl -si -H 'Accept: application/fhir+xml' {proxy_base}/Patient/{patient}",
        "  # 400, resource types are case-sensitive:",
        f"  curl -si {proxy_base}/patient/{patient}",
        "  # 400, method override headers are refused:",
        f"  curl -si -X POST -H 'X-HTTP-Method-Override: DELETE' {proxy_base}/Patient",
        "",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)
