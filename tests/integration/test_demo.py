"""The demo command works end to end: every printed request answers with the status printed beside it."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port


def read_banner(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    output = ""
    deadline = time.monotonic() + 120
    while "Press Ctrl-C" not in output and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output += line
    return output


def run_printed_curl(command: str, tokens: dict[str, str]) -> int:
    """Execute one printed ``curl`` line with httpx (curl itself may not be installed)."""
    words = shlex.split(command.strip())
    method, headers, data, url = "GET", {}, None, words[-1]
    for index, word in enumerate(words):
        if word == "-X":
            method = words[index + 1]
        if word == "-H":
            name, _, value = words[index + 1].partition(": ")
            headers[name] = re.sub(r"\$(\w+)", lambda m: tokens[m.group(1)], value)
        if word == "-d":
            data = words[index + 1]
    return httpx.request(method, url, headers=headers, content=data, timeout=30).status_code


def test_demo_starts_and_every_printed_request_behaves_as_printed(tmp_path: Path) -> None:
    proxy_port, upstream_port, hospital_port = free_port(), free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "proxy.cli",
        "demo",
        "--port",
        str(proxy_port),
        "--upstream-port",
        str(upstream_port),
        "--patients",
        "2",
        "--hospital-port",
        str(hospital_port),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    try:
        output = read_banner(process)
        assert "Press Ctrl-C" in output, output
        tokens = dict(re.findall(r"export (\w+)=(\S+)", output))
        assert len(tokens) == 13
        checks = re.findall(r"# (\d{3}): .*\n\s+(curl .*)", output)
        assert len(checks) == 32
        for expected, curl in checks:
            assert run_printed_curl(curl, tokens) == int(expected), curl
        base = f"http://127.0.0.1:{proxy_port}/fhir"
        for variable, masked in (("RESEARCH_TOKEN", True), ("BACKEND_TOKEN", False)):
            headers = {"authorization": f"Bearer {tokens[variable]}"}
            patients = httpx.get(f"{base}/Patient?_count=2", headers=headers, timeout=30).json()["entry"]
            for entry in patients:
                codes = {c["code"] for c in entry["resource"].get("meta", {}).get("security", [])}
                assert ("name" not in entry["resource"]) is masked
                assert ("ANONYED" in codes) is masked
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
