"""``fhirwall demo``: an embedded upstream with synthetic patients behind the proxy, a development token
issuer, one token per persona, and requests to paste — one each persona may make and one it may not."""

from __future__ import annotations

import secrets
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from proxy.auth.dev_issuer import PERSONAS, DevIssuer, load_or_create_key
from proxy.demo_consent import (
    BREAK_GLASS_ROLE,
    ConsentScenario,
    consent_requests,
    consent_tokens,
    seed_consent_scenario,
)
from proxy.demo_rights import (
    HOSPITAL_POLICY,
    departments_bundle,
    hospital_requests,
    hospital_tokens,
    request_approval,
)
from proxy.embedded_upstream import EXAMPLE_DATA, EmbeddedUpstream, synthea_bundles
from proxy.serve import run_server, uvicorn_config
from proxy.settings import load_settings

__all__ = ["run_demo"]

MAX_DEMO_PATIENTS = 6
RESEARCH_CLIENT = PERSONAS["research"].client_id
DEMO_MASKING: dict[str, Any] = {
    "masking.keys": {  # fresh for every demo run; real deployments read keys from secrets
        "hash": {"value": secrets.token_hex(32), "encoding": "hex"},
        "date-shift": {"value": secrets.token_hex(32), "encoding": "hex"},
    },
    "masking.profiles": {"safe-harbor": {"builtin": "safe-harbor"}},
    "masking.selection": [{"client_id": [RESEARCH_CLIENT], "profile": "safe-harbor"}],
    "masking.default_profile": "none",
    "masking.reidentification.roles": ["privacy-officer"],
}
_FHIR_JSON = {"content-type": "application/fhir+json"}
DEMO_KEY_FILE = Path(".fhirwall-dev/issuer-key.pem")
TOKEN_LIFETIME_SECONDS = 8 * 3600


@dataclass(frozen=True)
class DemoIds:
    """Ids the printed requests use."""

    patients: list[str]
    observation: str
    practitioners: list[str]

    @property
    def patient(self) -> str:
        return self.patients[0]

    @property
    def other_patient(self) -> str:
        return self.patients[1]

    @property
    def practitioner(self) -> str:
        return self.practitioners[0]


def run_demo(*, proxy_port: int, upstream_port: int, patients: int, hospital_port: int = 8081) -> int:
    """Start everything, print how to use it, serve until Ctrl-C."""
    bundles = synthea_bundles(EXAMPLE_DATA, min(max(patients, 3), MAX_DEMO_PATIENTS))
    if len(bundles) < 5:
        print(f"demo data not found in {EXAMPLE_DATA} (run the demo from a source checkout)", file=sys.stderr)
        return 1
    print(f"starting the embedded upstream FHIR server on 127.0.0.1:{upstream_port} ...", flush=True)
    with EmbeddedUpstream(upstream_port) as upstream:
        print(f"loading {len(bundles) - 2} synthetic patients (Synthea, no real people) ...", flush=True)
        ids = _demo_ids(upstream.seed(bundles))
        scenario = seed_consent_scenario(upstream.base_url, ids.patients, ids.practitioners)
        issuer_url = f"http://127.0.0.1:{proxy_port}/_dev"
        settings = load_settings(
            None,
            overrides={
                "server.port": proxy_port,
                "server.log_level": "warning",
                "upstreams": [{"name": "default", "url": upstream.base_url}],
                "auth.dev_issuer": {"enabled": True, "key_file": str(DEMO_KEY_FILE), "issuer": issuer_url},
                "consent.enabled": True,
                "consent.break_glass": {
                    "eligible_roles": [BREAK_GLASS_ROLE],
                    "justification_claim": "btg_reason",
                },
                **DEMO_MASKING,
            },
        )
        issuer = DevIssuer(load_or_create_key(DEMO_KEY_FILE), issuer_url)
        text = banner(f"http://127.0.0.1:{proxy_port}/fhir", upstream.base_url, ids, issuer, scenario)
        hospital = _start_hospital(upstream, hospital_port)
        threading.Thread(target=_print_when_ready, args=(proxy_port, text, hospital), daemon=True).start()
        run_server(settings)
    return 0


def _start_hospital(upstream: EmbeddedUpstream, port: int) -> DevIssuer:
    """The access-policy scenario: its data in the upstream, a second proxy enforcing the hospital policy."""
    httpx.post(
        upstream.base_url, json=departments_bundle(), headers=_FHIR_JSON, timeout=60
    ).raise_for_status()
    policy = yaml.safe_load(HOSPITAL_POLICY.read_text(encoding="utf-8"))
    revocations = DEMO_KEY_FILE.parent / "hospital-revocations.jsonl"
    revocations.unlink(missing_ok=True)  # every demo starts with nobody revoked
    policy["revocation"] = {"file": str(revocations), "refresh_seconds": 1}
    policy_file = DEMO_KEY_FILE.parent / "hospital-policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    issuer_url = f"http://127.0.0.1:{port}/_dev"
    settings = load_settings(
        None,
        overrides={
            "server.port": port,
            "server.log_level": "warning",
            "upstreams": [{"name": "default", "url": upstream.base_url}],
            "auth.dev_issuer": {"enabled": True, "key_file": str(DEMO_KEY_FILE), "issuer": issuer_url},
            "policy.hide_existence": False,
            "access.policy_file": str(policy_file),
        },
    )
    server = uvicorn.Server(uvicorn_config(settings))
    threading.Thread(target=server.run, daemon=True).start()
    return DevIssuer(load_or_create_key(DEMO_KEY_FILE), issuer_url)


def _print_when_ready(port: int, text: str, hospital: DevIssuer) -> None:
    """Print ``text`` once both proxies answer, so every printed request works when it is read."""
    hospital_root = hospital.issuer.removesuffix("/_dev")
    if _ready(f"http://127.0.0.1:{port}") and _ready(hospital_root):
        print(text + hospital_banner(hospital_root, hospital), flush=True)
        return
    print("the proxy did not start; see the log above", file=sys.stderr, flush=True)


def _ready(root: str) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{root}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def hospital_banner(root: str, issuer: DevIssuer) -> str:
    """The access-policy part of the banner (a pending approval request is created for it)."""
    tokens = hospital_tokens(issuer, f"{root}/fhir", TOKEN_LIFETIME_SECONDS)
    approval = request_approval(root, tokens["DR_HEART_TOKEN"])
    lines = [
        "",
        f"Hospital with an access policy (examples/access/hospital-policy.yaml), a second proxy: {root}/fhir",
        "  cardiology (dr-heart), oncology (dr-onco), laboratory (lab-tech), privacy officer, HR system",
        *(f"  export {variable}={token}" for variable, token in tokens.items()),
    ]
    for title, requests in hospital_requests(root, approval):
        lines += ["", title]
        for request in requests:
            content_type = "application/json" if "/admin/" in request.url else "application/fhir+json"
            lines += _request(
                request.method,
                request.url,
                request.token,
                request.expect,
                request.body,
                request.headers,
                content_type,
            )
    return "\n".join([*lines, "", "Press Ctrl-C to stop."])


def _demo_ids(responses: list[dict[str, Any]]) -> DemoIds:
    found: dict[str, list[str]] = {}
    for bundle in responses:
        for entry in bundle.get("entry", []):
            resource = entry.get("resource") or {}
            found.setdefault(resource.get("resourceType", ""), []).append(resource.get("id", ""))
    return DemoIds(found["Patient"], found["Observation"][0], found["Practitioner"])


def _request(
    method: str,
    url: str,
    token_var: str | None,
    expect: str,
    data: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    content_type: str = "application/fhir+json",
) -> list[str]:
    parts = ["curl -s -w '\\n-> HTTP %{http_code}\\n'"]
    if method != "GET":
        parts.append(f"-X {method}")
    if token_var:
        parts.append(f'-H "Authorization: Bearer ${token_var}"')
    parts += [f"-H {shlex.quote(f'{name}: {value}')}" for name, value in headers]
    if data:
        parts += [f"-H 'Content-Type: {content_type}'", f"-d {shlex.quote(data)}"]
    parts.append(shlex.quote(url))
    return [f"  # {expect}", "  " + " ".join(parts)]


def banner(base: str, upstream_base: str, ids: DemoIds, issuer: DevIssuer, scenario: ConsentScenario) -> str:
    """The text printed once everything runs."""
    tokens = {
        name: issuer.mint_persona(
            persona,
            audience=base,
            patient=ids.patient,
            practitioner=ids.practitioner,
            lifetime=TOKEN_LIFETIME_SECONDS,
        )
        for name, persona in PERSONAS.items()
    }
    variable = {name: name.upper().replace("-", "_") + "_TOKEN" for name in PERSONAS}
    extra_tokens = consent_tokens(issuer, base, scenario, TOKEN_LIFETIME_SECONDS)
    lines = [
        "",
        "fhirwall demo is running (DEVELOPMENT ONLY: synthetic data, a local dev token issuer)",
        f"  FHIR base (proxy):   {base}",
        f"  upstream (direct):   {upstream_base}",
        f"  SMART discovery:     {base}/.well-known/smart-configuration",
        f"  health:              {base.rsplit('/fhir', 1)[0]}/readyz",
        "",
        "Tokens (valid 8 hours; paste these lines into your shell):",
        *(f"  export {variable[name]}={token}" for name, token in tokens.items()),
        *(f"  export {name}={token}" for name, token in extra_tokens.items()),
        "",
        "Each persona, one request it may make (200) and one it may not:",
    ]
    examples = {
        "patient-app": (
            ("GET", f"{base}/Observation?_count=5", "200: the patient's own observations"),
            ("GET", f"{base}/Patient/{ids.other_patient}", "404: another patient does not exist for it"),
        ),
        "clinician": (
            ("GET", f"{base}/Patient?_count=3", "200: user/*.cruds sees every patient"),
            ("POST", f"{base}/Consent", "403: Consent is writable only by consent managers"),
        ),
        "lab-app": (
            ("GET", f"{base}/Observation?_count=5", "200: laboratory observations only"),
            ("GET", f"{base}/Condition", "403: no scope on Condition (insufficient_scope)"),
        ),
        "backend": (
            ("GET", f"{base}/Patient?_count=3", "200: system/*.rs reads everything"),
            ("POST", f"{base}/Patient", "403: system/*.rs cannot create"),
        ),
        "research": (
            (
                "GET",
                f"{base}/Patient?_count=2",
                "200: no names, addresses, contact details, identifiers, ids or exact dates (Safe Harbor)",
            ),
            ("POST", f"{base}/$reidentify", "403: re-identification is for explicitly authorised roles only"),
        ),
    }
    bodies = {"POST": '{"resourceType":"Patient"}'}
    for name, persona in PERSONAS.items():
        lines.append(f"  [{name}] {persona.description}")
        for method, url, expect in examples[name]:
            body = bodies["POST"] if method == "POST" and url.endswith("/Patient") else None
            if url.endswith("/$reidentify"):
                body = '{"resourceType":"Parameters","parameter":[{"name":"pseudonym","valueString":"k1.x"}]}'
            if url.endswith("/Consent"):
                body = (
                    '{"resourceType":"Consent","status":"active","scope":{"text":"x"},'
                    f'"category":[{{"text":"x"}}],"patient":{{"reference":"Patient/{ids.patient}"}}}}'
                )
            lines += _request(method, url, variable[name], expect, body)
    lines += [
        "  [no token]",
        *_request("GET", f"{base}/Patient/{ids.patient}", None, "401: a bearer token is required"),
        "",
        "Patient consent (the patients' own FHIR Consent records and the data's security labels decide):",
    ]
    for token_variable, url, expect in consent_requests(base, scenario):
        lines += _request("GET", url, token_variable, expect)
    lines += [
        "",
        'Try also: curl -s -H "Authorization: Bearer $PATIENT_APP_TOKEN" '
        f"'{base}/Patient/{ids.patient}/$everything?_count=10'   (paging links are sealed to the token)",
        "Mint more tokens: fhirwall token --persona patient-app --patient <id> --issuer "
        f"{issuer.issuer} --audience {base}",
    ]
    return "\n".join(lines)
