"""Throughput/latency benchmark for fhirwall against a bare passthrough and the upstream itself.

One command, one run::

    .venv/bin/python tests/bench/run_bench.py [--rounds 3] [--duration 5 | --quick] [--json out.json]

It starts an in-memory FHIR R4 upstream (Medplum's router, ``medplum_upstream/``), seeds one
Patient and at least 60 Observations for it, then starts every benchmark *row* (a server in
front of the upstream) at once and measures them in ``--rounds`` rounds: in each round every
row is driven with ``wrk``, one row at a time and in the same order, for two requests: a
Patient read and a 50-entry Observation search. Each measurement is compared with the
``passthrough`` row (a bare aiohttp reverse proxy, ``passthrough.py``) measured in the same
round, so a ratio never spans more than one round of machine drift. Every server is started
afresh before each round (``--same-processes`` keeps them): two processes of the same row differ by up
to 3 % for as long as they run, which the median over rounds then absorbs. The table shows medians
over the rounds, the fhirwall targets are marked PASS/MISS on the median ratio (printed, never
asserted) with the per-round ratios beside them. Everything started is stopped on exit.

Rows are declared in :func:`build_rows`; a row whose server does not come up within the
startup timeout is skipped with a message, so the script also works before the fhirwall CLI
exists. Rows may carry extra request headers (e.g. ``Authorization`` for a policy-on row).

Seed data: see ``seed_data.py`` (``--data`` / ``FHIRWALL_BENCH_DATA`` / ``examples/data/``,
else built-in synthetic resources of realistic size).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import seed_data

HERE = Path(__file__).resolve().parent
UPSTREAM_DIR = HERE / "medplum_upstream"
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"

STARTUP_TIMEOUT_S = 15.0
NPM_INSTALL_TIMEOUT_S = 300.0
WARMUP_S = 2
DEFAULT_ROUNDS = 3
DEFAULT_DURATION_S = 10  # per measurement with --rounds 1
ROUNDS_DURATION_S = 5  # per measurement with several rounds (unless --duration is given)
QUICK_DURATION_S = 3
WRK_THREADS = 2
WRK_CONNECTIONS = 8
SEARCH_COUNT = 50
BASELINE_ROW = "passthrough"
GOAL_MIN_RPS_RATIO = 0.60  # fhirwall without policy
GOAL_MAX_P50_RATIO = 1.5
GOAL_POLICY_MIN_RPS_RATIO = 0.45  # fhirwall with SMART scopes and compartment checks
GOAL_CONSENT_MIN_RPS_RATIO = 0.40  # ... and patient consent (cached lookups)
GOAL_MASKING_MIN_RPS_RATIO = 0.35  # ... and the Safe Harbor masking profile on every answer
GOAL_ISOLATION_MIN_RPS_RATIO = 0.35  # SMART scopes + access policy with department isolation (cached)
GOAL_AUDIT_MIN_RATIO = 0.90  # the audit trail costs at most 10 % of the same row without it
MASKING_CONFIG = """
masking:
  keys:
    hash: {value: bench-hash-key}
    date-shift: {value: bench-date-shift-key}
  profiles:
    safe-harbor: {builtin: safe-harbor}
  default_profile: safe-harbor
"""

Json = seed_data.Json


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Row:
    """One server under test: how to start it and where its FHIR base URL is.

    ``command`` is None for a server that is already running (the upstream itself).
    ``headers`` are sent with every benchmark request (e.g. ``Authorization``).
    ``min_rps_ratio`` / ``max_p50_ratio`` are the row's targets against the passthrough (None: none).
    """

    name: str
    command: list[str] | None
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    min_rps_ratio: float | None = None
    max_p50_ratio: float | None = None

    @property
    def goals(self) -> bool:
        return self.min_rps_ratio is not None or self.max_p50_ratio is not None


@dataclass(frozen=True)
class BenchRequest:
    """A request path relative to a row's FHIR base URL (starts with ``/``)."""

    name: str
    path: str


@dataclass
class WrkResult:
    """The figures parsed from one wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


@dataclass
class Measurement:
    """One row x request result in one round, with ratios against the baseline row in that round."""

    row: str
    request: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    preflight_status: int
    round_no: int
    rps_ratio: float | None = None
    p50_ratio: float | None = None

    @property
    def flagged(self) -> bool:
        """True when the row produced errors, so its numbers are not trustworthy."""
        ok_preflight = 200 <= self.preflight_status < 300
        return self.non_2xx > 0 or self.socket_errors > 0 or not ok_preflight


@dataclass
class Summary:
    """One table line: a row x request over all rounds (medians of the per-round figures)."""

    row: str
    request: str
    rounds: list[Measurement]

    @property
    def rps(self) -> float:
        return statistics.median(m.rps for m in self.rounds)

    @property
    def p50_ms(self) -> float:
        return statistics.median(m.p50_ms for m in self.rounds)

    @property
    def p99_ms(self) -> float:
        return statistics.median(m.p99_ms for m in self.rounds)

    @property
    def rps_ratios(self) -> list[float | None]:
        return [m.rps_ratio for m in self.rounds]

    @property
    def p50_ratios(self) -> list[float | None]:
        return [m.p50_ratio for m in self.rounds]

    @property
    def rps_ratio(self) -> float | None:
        return median_or_none(self.rps_ratios)

    @property
    def p50_ratio(self) -> float | None:
        return median_or_none(self.p50_ratios)

    @property
    def flagged(self) -> bool:
        """True when any round produced errors."""
        return any(m.flagged for m in self.rounds)

    def error_note(self) -> str:
        """Describe the errors of the flagged rounds (empty when there were none)."""
        bad = [m for m in self.rounds if m.flagged]
        if not bad:
            return ""
        preflight = sorted({m.preflight_status for m in bad})
        return (
            f"ERRORS in {len(bad)}/{len(self.rounds)} rounds: preflight {'/'.join(map(str, preflight))}, "
            f"non-2xx {sum(m.non_2xx for m in bad)}, socket {sum(m.socket_errors for m in bad)}"
        )

    def to_json(self) -> Json:
        """The medians plus every round's measurement."""
        return {
            "row": self.row,
            "request": self.request,
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "rps_ratio": self.rps_ratio,
            "p50_ratio": self.p50_ratio,
            "flagged": self.flagged,
            "rounds": [{**asdict(m), "flagged": m.flagged} for m in self.rounds],
        }


def median_or_none(values: list[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# --------------------------------------------------------------------------- processes


class Processes:
    """Starts child processes in their own process groups and stops all of them on close."""

    def __init__(self, log_dir: Path) -> None:
        """Keep the children's logs in ``log_dir``."""
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: Path | None) -> Path:
        """Start ``command``; its stdout and stderr go to a log file whose path is returned."""
        log_path = self.log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                cwd=cwd,
                start_new_session=True,
            )
        self.children.append((name, proc))
        return log_path

    def stop(self, name: str) -> None:
        """Stop the named child (and its process group)."""
        for child_name, proc in self.children:
            if child_name == name:
                _terminate(proc)
        self.children = [(n, p) for n, p in self.children if n != name]

    def exited(self, name: str) -> int | None:
        """Return the exit code of the named child, or None while it runs."""
        for child_name, proc in self.children:
            if child_name == name:
                return proc.poll()
        return None

    def close(self) -> None:
        """Stop every child, newest first."""
        for _, proc in reversed(self.children):
            _terminate(proc)
        self.children.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=5)
    _signal_group(proc, signal.SIGKILL)  # leftovers such as worker processes


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def free_port() -> int:
    """Ask the kernel for an unused TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 15) -> str:
    """Return the last lines of a log file, indented for printing."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text) or "    (empty log)"


# --------------------------------------------------------------------------- HTTP helpers


def http_request(method: str, url: str, body: Json | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    """Send one request; returns the status and the decoded JSON body (or None)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def probe_status(url: str, headers: dict[str, str], timeout: float = 5.0) -> int:
    """Status of a GET (0 when no HTTP response could be had)."""
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, ValueError):
        return 0


def wait_until_up(procs: Processes, row: Row, timeout: float) -> str | None:
    """Wait until the row answers HTTP at all; returns None when up, else the reason."""
    deadline = time.monotonic() + timeout
    url = row.base_url + "/metadata"
    while time.monotonic() < deadline:
        code = procs.exited(row.name)
        if code is not None:
            return f"exited with code {code}"
        if probe_status(url, row.headers, timeout=2.0) != 0:
            return None
        time.sleep(0.2)
    return f"did not answer within {timeout:.0f} s"


# --------------------------------------------------------------------------- seed data


def seed_upstream(base_url: str, patient: Json, observations: list[Json]) -> str:
    """Create the Patient and its Observations on the upstream; returns the new Patient id."""
    patient = {k: v for k, v in patient.items() if k != "id"}
    status, created = http_request("POST", base_url + "/Patient", patient)
    if status != 201 or not isinstance(created, dict) or "id" not in created:
        raise RuntimeError(f"seeding the Patient failed with HTTP {status}")
    patient_id = str(created["id"])
    seed_consent(base_url, patient_id)
    seed_care(base_url, patient_id)
    prepared = seed_data.prepare_observations(observations, patient_id)
    status, _ = http_request("POST", base_url, seed_data.transaction_bundle(prepared))
    if not 200 <= status < 300:
        print(f"  transaction seeding answered HTTP {status}; posting Observations one by one")
        for obs in prepared:
            status, _ = http_request("POST", base_url + "/Observation", obs)
            if status != 201:
                raise RuntimeError(f"seeding an Observation failed with HTTP {status}")
    return patient_id


def seed_consent(base_url: str, patient_id: str) -> None:
    """The patient's Consent: permit, except for one practitioner (not the benchmark's clinician)."""
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "provision": {
            "type": "permit",
            "provision": [{"type": "deny", "actor": [{"reference": {"reference": "Practitioner/refused"}}]}],
        },
    }
    status, _ = http_request("POST", base_url + "/Consent", consent)
    if status != 201:
        raise RuntimeError(f"seeding the Consent failed with HTTP {status}")


def seed_care(base_url: str, patient_id: str) -> None:
    """An in-progress Encounter at the benchmark clinician's ward: the patient is in their care."""
    encounter = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "serviceProvider": {"reference": f"Organization/{BENCH_WARD}"},
        "period": {"start": "2026-01-01T00:00:00Z"},
    }
    status, _ = http_request("POST", base_url + "/Encounter", encounter)
    if status != 201:
        raise RuntimeError(f"seeding the Encounter failed with HTTP {status}")


def check_seed(base_url: str, requests: list[BenchRequest]) -> None:
    """Make sure the read works and the search really returns SEARCH_COUNT entries."""
    read, search = requests
    status, _ = http_request("GET", base_url + read.path)
    if status != 200:
        raise RuntimeError(f"seed check: read answered HTTP {status}")
    status, bundle = http_request("GET", base_url + search.path)
    entries = len(bundle.get("entry", [])) if isinstance(bundle, dict) else 0
    if status != 200 or entries != SEARCH_COUNT:
        raise RuntimeError(f"seed check: search answered HTTP {status} with {entries} entries")


def bench_requests(patient_id: str) -> list[BenchRequest]:
    """Return the two benchmarked requests."""
    return [
        BenchRequest("read", f"/Patient/{patient_id}"),
        BenchRequest(
            f"search{SEARCH_COUNT}", f"/Observation?subject=Patient/{patient_id}&_count={SEARCH_COUNT}"
        ),
    ]


# --------------------------------------------------------------------------- rows

BENCH_WARD = "bench-ward"
ISOLATION_POLICY = """
roles:
  clinician:
    isolation: care-relationship
    permissions:
      - {resources: ["*"], operations: [read, search, history]}
attributes: {practitioner_roles: false, cache_seconds: 300}
isolation: {recent_days: 30, cache_seconds: 300}
"""


def build_rows(upstream_base: str, args: argparse.Namespace, patient_id: str) -> list[Row]:
    """Return the servers to benchmark, in table order."""
    rows = [Row("direct", None, upstream_base), passthrough_row(upstream_base)]
    if args.granian:
        rows.append(granian_row(upstream_base))
    rows.append(fhirwall_row("fhirwall", upstream_base, goals=(GOAL_MIN_RPS_RATIO, GOAL_MAX_P50_RATIO)))
    rows.append(policy_row(upstream_base, patient_id))
    rows.append(policy_row(upstream_base, patient_id, consent=True))
    rows.append(clinician_row(upstream_base))
    rows.append(isolation_row(upstream_base))
    rows.append(masking_row(upstream_base, patient_id))
    rows.append(audit_row(upstream_base, patient_id))
    if args.rows:
        wanted = {*args.rows.split(","), "direct", BASELINE_ROW}
        rows = [row for row in rows if row.name in wanted]
    return rows


def policy_row(upstream_base: str, patient_id: str, consent: bool = False) -> Row:
    """fhirwall enforcing SMART scopes: a patient-app token (``patient/*.rs``) for the seeded patient; with
    ``consent`` also the patient's Consent (on file: a permit with an exception for another practitioner)."""
    name = "fhirwall-consent" if consent else "fhirwall-policy"
    goal = GOAL_CONSENT_MIN_RPS_RATIO if consent else GOAL_POLICY_MIN_RPS_RATIO
    claims = {"client_id": "bench-app", "scope": "launch/patient patient/*.rs", "patient": patient_id}
    return secured_row(name, upstream_base, goal, claims, consent=consent)


def masking_row(upstream_base: str, patient_id: str) -> Row:
    """fhirwall-consent plus the built-in Safe Harbor profile applied to every answer."""
    claims = {"client_id": "bench-app", "scope": "launch/patient patient/*.rs", "patient": patient_id}
    config = Path(tempfile.mkdtemp(prefix="fhirwall-bench-")) / "masking.yaml"
    config.write_text(MASKING_CONFIG)
    return secured_row(
        "fhirwall-masking",
        upstream_base,
        GOAL_MASKING_MIN_RPS_RATIO,
        claims,
        consent=True,
        extra_args=["--config", str(config)],
    )


def audit_row(upstream_base: str, patient_id: str) -> Row:
    """fhirwall-consent plus the audit trail: a request record per request in the hash-chained local log
    (fsync policy ``BENCH_AUDIT_FSYNC``, default interval). ``BENCH_AUDIT_DELIVERY=file`` also delivers the
    BALP AuditEvents made from the log to a local file (the delivery's share of the cost), from a deliverer
    child process (``BENCH_AUDIT_RUNNER``, default process) or inline."""
    claims = {"client_id": "bench-app", "scope": "launch/patient patient/*.rs", "patient": patient_id}
    folder = Path(tempfile.mkdtemp(prefix="fhirwall-bench-audit-"))
    env = {
        "FHIRWALL_AUDIT__LOG_FILE": str(folder / "audit.jsonl"),
        "FHIRWALL_AUDIT__LOG_KEY_ENV": "BENCH_AUDIT_KEY",
        "BENCH_AUDIT_KEY": "bench-audit-checkpoint-key",
        "FHIRWALL_AUDIT__FSYNC": os.environ.get("BENCH_AUDIT_FSYNC", "interval"),
    }
    if os.environ.get("BENCH_AUDIT_DELIVERY") == "file":
        env["FHIRWALL_AUDIT__DELIVERY__TARGET"] = "file"
        env["FHIRWALL_AUDIT__DELIVERY__FILE"] = str(folder / "delivered.jsonl")
        env["FHIRWALL_AUDIT__DELIVERY__RUNNER"] = os.environ.get("BENCH_AUDIT_RUNNER", "process")
    return secured_row(
        "fhirwall-audit", upstream_base, GOAL_CONSENT_MIN_RPS_RATIO, claims, consent=True, extra_env=env
    )


def isolation_row(upstream_base: str) -> Row:
    """fhirwall with the access policy: a clinician (role and ward from the token) under department
    isolation; the patient's care relationship (an Encounter at the ward) is looked up once, then cached."""
    claims = {
        "client_id": "bench-ehr",
        "scope": "user/*.rs",
        "fhirUser": "Practitioner/bench-doctor",
        "roles": ["clinician"],
        "organization": BENCH_WARD,
    }
    folder = Path(tempfile.mkdtemp(prefix="fhirwall-bench-"))
    policy = folder / "access-policy.yaml"
    policy.write_text(ISOLATION_POLICY + f"revocation: {{file: {folder / 'revocations.jsonl'}}}\n")
    env = {"FHIRWALL_ACCESS__POLICY_FILE": str(policy)}
    return secured_row(
        "fhirwall-isolation",
        upstream_base,
        GOAL_ISOLATION_MIN_RPS_RATIO,
        claims,
        consent=False,
        extra_env=env,
    )


def clinician_row(upstream_base: str) -> Row:
    """fhirwall with consent, a clinician token (``user/*.rs``): the patient's Consent is evaluated."""
    claims = {"client_id": "bench-ehr", "scope": "user/*.rs", "fhirUser": "Practitioner/bench-doctor"}
    return secured_row(
        "fhirwall-consent-ehr", upstream_base, GOAL_CONSENT_MIN_RPS_RATIO, claims, consent=True
    )


def secured_row(
    name: str,
    upstream_base: str,
    goal: float,
    claims: Json,
    *,
    consent: bool,
    extra_args: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Row:
    """A fhirwall row trusting a development issuer, with a token carrying ``claims``."""
    from proxy.auth.dev_issuer import DevIssuer, load_or_create_key

    key_file = Path(tempfile.mkdtemp(prefix="fhirwall-bench-")) / "dev-key.pem"
    row = fhirwall_row(name, upstream_base, ["--allow-dev-issuer", *(extra_args or [])], goals=(goal, None))
    issuer = DevIssuer(load_or_create_key(key_file), row.base_url.removesuffix("/fhir") + "/_dev")
    token = issuer.mint({"sub": "bench", **claims}, audience=row.base_url, lifetime=6 * 3600)
    env = {
        "FHIRWALL_AUTH__DEV_ISSUER__KEY_FILE": str(key_file),
        "FHIRWALL_AUTH__DEV_ISSUER__ISSUER": issuer.issuer,
        "FHIRWALL_CONSENT__ENABLED": "true" if consent else "false",
        **(extra_env or {}),
    }
    headers = {"Authorization": f"Bearer {token}"}
    return Row(row.name, row.command, row.base_url, headers=headers, env=env, min_rps_ratio=row.min_rps_ratio)


def _split(command_line: str) -> list[str]:
    return command_line.split()  # the values used here never contain spaces


def passthrough_row(upstream_base: str) -> Row:
    """Serve the bare aiohttp passthrough with uvicorn: the baseline ("floor") row."""
    port = free_port()
    args = _split(f"--upstream {upstream_base} --host {HOST} --port {port}")
    command = [sys.executable, str(HERE / "passthrough.py"), *args]
    return Row(BASELINE_ROW, command, f"http://{HOST}:{port}/fhir")


def granian_row(upstream_base: str) -> Row:
    """Serve the same passthrough app with granian instead of uvicorn (for information)."""
    port = free_port()
    args = _split(
        f"--interface asgi --loop uvloop --host {HOST} --port {port} --workers 1 --no-ws "
        f"--log-level warning --no-access-log --working-dir {HERE} passthrough:app"
    )
    env = {"FHIRWALL_BENCH_UPSTREAM": upstream_base}
    command = [str(VENV_BIN / "granian"), *args]
    return Row("passthrough-granian", command, f"http://{HOST}:{port}/fhir", env=env, cwd=HERE)


def fhirwall_row(
    name: str,
    upstream_base: str,
    extra_args: list[str] | None = None,
    headers: dict[str, str] | None = None,
    goals: tuple[float | None, float | None] = (None, None),
) -> Row:
    """Serve fhirwall itself; ``extra_args`` are appended to ``fhirwall serve``."""
    port = free_port()
    args = _split(
        f"serve --upstream {upstream_base} --port {port} --host {HOST} --workers 1 --log-level warning"
    )
    command = [str(VENV_BIN / "fhirwall"), *args, *(extra_args or [])]
    return Row(
        name,
        command,
        f"http://{HOST}:{port}/fhir",
        headers=headers or {},
        min_rps_ratio=goals[0],
        max_p50_ratio=goals[1],
    )


# --------------------------------------------------------------------------- wrk


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(value: str) -> float:
    """Convert a wrk duration such as ``812.00us``, ``1.20ms`` or ``2.01s`` to milliseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", value.strip())
    if not match:
        raise ValueError(f"unrecognised wrk duration: {value!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Pull req/s, p50, p99, request count, non-2xx and socket errors out of wrk's report."""
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if not (rps and p50 and p99 and total):
        raise ValueError("could not parse wrk output:\n" + output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=to_ms(p50.group(1)),
        p99_ms=to_ms(p99.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def wrk_command(url: str, duration: int, headers: dict[str, str]) -> list[str]:
    """Return the wrk invocation for one URL."""
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return [*command, url]


def run_wrk(url: str, duration: int, headers: dict[str, str]) -> WrkResult:
    """Run wrk once (bounded by a timeout) and parse its report."""
    proc = subprocess.run(
        wrk_command(url, duration, headers),
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return parse_wrk(proc.stdout)


def measure(row: Row, request: BenchRequest, duration: int, round_no: int) -> Measurement:
    """Pre-flight, warm up, then measure one row x request."""
    url = row.base_url + request.path
    preflight = probe_status(url, row.headers)
    run_wrk(url, WARMUP_S, row.headers)
    result = run_wrk(url, duration, row.headers)
    return Measurement(
        row.name, request.name, preflight_status=preflight, round_no=round_no, **asdict(result)
    )


# --------------------------------------------------------------------------- reporting


def add_ratios(results: list[Measurement]) -> None:
    """Fill in req/s and p50 ratios against the baseline row, per request and round."""
    baseline = {(m.round_no, m.request): m for m in results if m.row == BASELINE_ROW}
    for m in results:
        base = baseline.get((m.round_no, m.request))
        if base is None:
            continue
        m.rps_ratio = m.rps / base.rps if base.rps else None
        m.p50_ratio = m.p50_ms / base.p50_ms if base.p50_ms else None


def summarise(results: list[Measurement]) -> list[Summary]:
    """Group the measurements by row x request (in measurement order), rounds in order."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in results:
        groups.setdefault((m.row, m.request), []).append(m)
    return [
        Summary(row, request, sorted(ms, key=lambda m: m.round_no)) for (row, request), ms in groups.items()
    ]


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_table(summaries: list[Summary], rounds: int) -> None:
    """Print the results table (medians over the rounds)."""
    header = f"{'row':<22} {'request':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
    header += f"{'rps/pt':>7} {'p50/pt':>7}  note"
    print("\n" + header + "\n" + "-" * len(header))
    for m in summaries:
        print(
            f"{m.row:<22} {m.request:<9} {m.rps:>9.0f} {m.p50_ms:>8.3f} {m.p99_ms:>8.3f} "
            f"{_fmt(m.rps_ratio, 7, 2)} {_fmt(m.p50_ratio, 7, 2)}  {m.error_note()}".rstrip()
        )
    if rounds > 1:
        print(
            f"(medians over {rounds} rounds; rps/pt, p50/pt: median of the per-round ratios to the "
            f"{BASELINE_ROW} row for the same request in the same round)"
        )
    else:
        print(f"(rps/pt, p50/pt: ratio to the {BASELINE_ROW} row for the same request)")


def audit_cost_goals(summaries: list[Summary]) -> list[Json]:
    """Audit on vs off: the audit row against the consent row (same token, same policy), per request,
    compared round by round."""
    goals: list[Json] = []
    by_key = {(m.row, m.request): m for m in summaries}
    for (row, request), audited in by_key.items():
        plain = by_key.get(("fhirwall-consent", request))
        if row != "fhirwall-audit" or plain is None:
            continue
        plain_rps = {m.round_no: m.rps for m in plain.rounds}
        ratios: list[float | None] = []
        for m in audited.rounds:
            base = plain_rps.get(m.round_no)
            ratios.append(m.rps / base if base else None)
        goals.append(_goal(audited, "throughput vs audit off", ratios, f">= {GOAL_AUDIT_MIN_RATIO:.2f}"))
    return goals


def evaluate_goals(rows: list[Row], summaries: list[Summary], skipped: dict[str, str]) -> list[Json]:
    """Compare goal rows against the targets on the median ratio (reported, never asserted)."""
    goals: list[Json] = audit_cost_goals(summaries)
    for row in (r for r in rows if r.goals):
        for m in (m for m in summaries if m.row == row.name):
            if row.min_rps_ratio is not None:
                goals.append(
                    _goal(m, "throughput vs passthrough", m.rps_ratios, f">= {row.min_rps_ratio:.2f}")
                )
            if row.max_p50_ratio is not None:
                goals.append(_goal(m, "p50 vs passthrough", m.p50_ratios, f"<= {row.max_p50_ratio:.2f}"))
        if row.name in skipped:
            goals.append(
                {
                    "row": row.name,
                    "request": "*",
                    "metric": "all",
                    "value": None,
                    "per_round": [],
                    "threshold": "",
                    "status": "n/a",
                    "reason": skipped[row.name],
                }
            )
    return goals


def _goal(m: Summary, metric: str, per_round: list[float | None], threshold: str) -> Json:
    """One target line, decided on the median of the per-round ratios."""
    value = median_or_none(per_round)
    limit = float(threshold.split()[1])
    ok = value is not None and (value >= limit if threshold.startswith(">=") else value <= limit)
    status = "n/a" if value is None else ("PASS" if ok and not m.flagged else "MISS")
    return {
        "row": m.row,
        "request": m.request,
        "metric": metric,
        "value": value,
        "per_round": per_round,
        "threshold": threshold,
        "status": status,
    }


def print_goals(goals: list[Json]) -> None:
    """Print the targets with PASS/MISS, and the per-round ratios when there were several rounds."""
    print(
        "\nTargets: fhirwall (no policy) throughput >= 60 % of passthrough and p50 <= 1.5x; "
        "fhirwall-policy (patient token) >= 45 %; fhirwall-consent (same token, consent on) >= 40 %; "
        "fhirwall-masking (consent + Safe Harbor) >= 35 %; fhirwall-isolation (access policy, department "
        "isolation) >= 35 %; fhirwall-audit >= 90 % of fhirwall-consent"
    )
    for g in goals:
        if g["request"] == "*":
            print(f"  {g['row']:<22} n/a  (row skipped: {g['reason']})")
            continue
        value = _fmt(g["value"], 6, 2)
        line = (
            f"  {g['row']:<22} {g['request']:<9} {g['metric']:<26} {value} {g['threshold']:<8} {g['status']}"
        )
        if len(g["per_round"]) > 1:
            line += "  rounds: " + " ".join(_fmt(v, 4, 2).strip() for v in g["per_round"])
        print(line)
    if any(len(g["per_round"]) > 1 for g in goals):
        print("(value: median of the per-round ratios; PASS/MISS on the median)")


def write_json(path: Path, report: Json) -> None:
    """Write the report as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


# --------------------------------------------------------------------------- orchestration


def check_tools() -> None:
    """Fail early and clearly when a required executable is missing."""
    missing = [tool for tool in ("node", "npm", "wrk") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"error: required tool(s) not on PATH: {', '.join(missing)}")


def ensure_node_modules() -> None:
    """Install the upstream's npm dependencies on first use."""
    if (UPSTREAM_DIR / "node_modules").is_dir():
        return
    print("installing the upstream's npm dependencies ...")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund"],
        cwd=UPSTREAM_DIR,
        check=True,
        timeout=NPM_INSTALL_TIMEOUT_S,
    )


def start_upstream(procs: Processes, no_cache: bool) -> str:
    """Start the Medplum upstream and wait for it; returns its FHIR base URL."""
    port = free_port()
    base = f"http://{HOST}:{port}/fhir"
    command = ["node", str(UPSTREAM_DIR / "server.mjs"), "--host", HOST, "--port", str(port), "--base", base]
    if no_cache:
        command.append("--no-cache")
    log = procs.start("upstream", command, {}, UPSTREAM_DIR)
    reason = wait_until_up(procs, Row("upstream", command, base), STARTUP_TIMEOUT_S)
    if reason is not None:
        raise RuntimeError(f"the upstream {reason}; its log:\n{tail(log)}")
    return base


def start_row(procs: Processes, row: Row) -> str | None:
    """Start a row's server; returns None when it is up, else why it was skipped."""
    if row.command is None:
        return None
    executable = row.command[0]
    if shutil.which(executable) is None and not Path(executable).is_file():
        return f"command not found: {executable}"
    log = procs.start(row.name, row.command, row.env, row.cwd)
    reason = wait_until_up(procs, row, STARTUP_TIMEOUT_S)
    if reason is not None:
        procs.stop(row.name)
        return f"{reason}; last log lines:\n{tail(log)}"
    return None


def start_rows(procs: Processes, rows: list[Row]) -> tuple[list[Row], dict[str, str]]:
    """Start every row's server up front; returns the rows that are up and why the others were skipped."""
    up: list[Row] = []
    skipped: dict[str, str] = {}
    for row in rows:
        reason = start_row(procs, row)
        if reason is not None:
            skipped[row.name] = reason
            print(f"  SKIP {row.name}: {reason}")
            continue
        up.append(row)
    return up, skipped


def restart_rows(procs: Processes, rows: list[Row], skipped: dict[str, str]) -> None:
    """Start every row's server afresh (same port and settings) before a round.

    Two processes of one row differ by up to 3 % in throughput for as long as they run (hash seeds,
    memory layout): three identical consent rows measured 5,210 / 5,081 / 5,061 req/s in one round and
    5,119 / 4,961 / 4,963 in the next. Fresh processes each round turn that into noise the median absorbs,
    where one process per run would bias every ratio of that run the same way."""
    for row in rows:
        if row.command is None or row.name in skipped:
            continue
        procs.stop(row.name)
        reason = start_row(procs, row)
        if reason is not None:
            skipped[row.name] = f"did not restart: {reason} (earlier rounds kept)"
            print(f"  SKIP {row.name}: {skipped[row.name]}")


def bench_round(
    procs: Processes,
    rows: list[Row],
    requests: list[BenchRequest],
    duration: int,
    round_no: int,
    skipped: dict[str, str],
) -> list[Measurement]:
    """Measure every running row x request once, one at a time. Each round starts one row further down
    the list (round 1 with the first), so no row is always measured early or late in a round: a drift of
    the machine's speed during a round does not favour one row over another.

    A row whose server has exited since it started is reported in ``skipped`` and left out from then on.
    """
    results = []
    shift = (round_no - 1) % len(rows) if rows else 0
    for row in rows[shift:] + rows[:shift]:
        if row.name in skipped:
            continue
        code = procs.exited(row.name)
        if code is not None:
            skipped[row.name] = f"exited with code {code} before round {round_no} (earlier rounds kept)"
            print(f"  SKIP {row.name}: {skipped[row.name]}")
            continue
        for request in requests:
            print(f"  {row.name:<22} {request.name:<9} ...", end="", flush=True)
            m = measure(row, request, duration, round_no)
            print(
                f" {m.rps:>9.0f} req/s  p50 {m.p50_ms:.3f} ms  p99 {m.p99_ms:.3f} ms"
                + ("  (ERRORS)" if m.flagged else "")
            )
            results.append(m)
    return results


def run(args: argparse.Namespace, procs: Processes) -> Json:
    """Run the whole benchmark; returns the JSON report."""
    check_tools()
    ensure_node_modules()
    upstream = start_upstream(procs, args.upstream_no_cache)
    patient, observations, source = seed_data.load_seed(args.data)
    patient_id = seed_upstream(upstream, patient, observations)
    requests = bench_requests(patient_id)
    check_seed(upstream, requests)
    print(f"upstream {upstream} seeded from {source} (Patient/{patient_id})")
    rows = build_rows(upstream, args, patient_id)
    running, skipped = start_rows(procs, rows)
    results: list[Measurement] = []
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"round {round_no}/{args.rounds} ({WARMUP_S} s warm-up + {args.duration} s each)")
        if round_no > 1 and not args.same_processes:
            restart_rows(procs, running, skipped)
        results += bench_round(procs, running, requests, args.duration, round_no, skipped)
    add_ratios(results)
    return build_report(args, rows, results, skipped, source)


def build_report(
    args: argparse.Namespace,
    rows: list[Row],
    results: list[Measurement],
    skipped: dict[str, str],
    source: str,
) -> Json:
    """Print the table and targets; returns the JSON report."""
    summaries = summarise(results)
    print_table(summaries, args.rounds)
    goals = evaluate_goals(rows, summaries, skipped)
    print_goals(goals)
    meta = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": WARMUP_S,
        "wrk": {"threads": WRK_THREADS, "connections": WRK_CONNECTIONS},
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "seed_source": source,
        "upstream_cache": not args.upstream_no_cache,
    }
    rows_json = [
        {"name": r.name, "base_url": r.base_url, "headers": sorted(r.headers), "goals": r.goals} for r in rows
    ]
    return {
        "meta": meta,
        "rows": rows_json,
        "skipped": skipped,
        "results": [m.to_json() for m in summaries],
        "goals": goals,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"measure every row x request this many times; medians are reported (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--duration",
        type=int,
        help=f"seconds per measurement (default {ROUNDS_DURATION_S}; {DEFAULT_DURATION_S} with --rounds 1)",
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S} s per measurement")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    parser.add_argument(
        "--data", help=f"seed Bundle file or folder (default: ${seed_data.DATA_ENV}, then examples/data/)"
    )
    parser.add_argument(
        "--granian", action="store_true", help="add the passthrough served by granian as a row"
    )
    parser.add_argument(
        "--upstream-no-cache",
        action="store_true",
        help="make the upstream run every GET through the Medplum router (slow searches)",
    )
    parser.add_argument("--rows", help="only these rows (comma-separated; direct and passthrough always run)")
    parser.add_argument(
        "--same-processes",
        action="store_true",
        help="keep each row's server for all rounds (default: started afresh before every round)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds must be between 1 and 50")
    if args.quick:
        args.duration = QUICK_DURATION_S
    elif args.duration is None:
        args.duration = DEFAULT_DURATION_S if args.rounds == 1 else ROUNDS_DURATION_S
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be between 1 and 600 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="fhirwall-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            report = run(args, procs)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        except (RuntimeError, subprocess.SubprocessError) as err:
            print(f"\nerror: {err}", file=sys.stderr)
            return 1
        finally:
            procs.close()
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
