"""The demo command works end to end: embedded upstream, synthetic patients, proxy, printed requests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import free_port


def test_demo_starts_and_its_printed_requests_work() -> None:
    proxy_port, upstream_port = free_port(), free_port()
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
        "1",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = ""
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while "Press Ctrl-C" not in output and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output += line
        assert "Press Ctrl-C" in output, output
        urls = re.findall(r"curl -s '?(http://127\.0\.0\.1:\d+/fhir/[^ ']+)'?$", output, flags=re.MULTILINE)
        assert len(urls) >= 4
        for url in urls:
            response = httpx.get(url, timeout=30)
            assert response.status_code == 200, url
            assert response.headers["content-type"].startswith("application/fhir+json")
        refused = httpx.get(
            f"http://127.0.0.1:{proxy_port}/fhir/Patient", headers={"accept": "application/fhir+xml"}
        )
        assert refused.status_code == 406
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
