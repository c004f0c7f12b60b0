"""The Containerfile, checked without a container engine: its stages and instructions as parsed text, its
health check run for real, and its install step (a wheel built from exactly what it copies) repeated here."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import _parser as fhirwall_parser
from tests.conftest import REPO_ROOT

CONTAINERFILE = REPO_ROOT / "Containerfile"
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|apt-get|apt|dpkg|git|curl|wget|cargo|rustc|pip wheel)\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for instruction, arguments in self.instructions if instruction == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def parse_containerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (before the first FROM) and the stages, with continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        arguments = arguments.strip()
        if instruction == "FROM":
            parts = arguments.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            key, _, default = arguments.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((instruction, arguments))
    return global_args, stages


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse_containerfile(CONTAINERFILE.read_text())


def final_stage(parsed: tuple[dict[str, str], list[Stage]]) -> Stage:
    return parsed[1][-1]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list)
    assert all(isinstance(item, str) for item in value)
    return value


def test_multi_stage_build_on_python_slim(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    global_args, stages = parsed
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    python = global_args["PYTHON_VERSION"]
    assert tuple(int(part) for part in python.split(".")) >= (3, 11)
    for stage in (builder, final):
        assert stage.base == "docker.io/library/python:${PYTHON_VERSION}-slim"
    # Dependencies come as prebuilt wheels: no compiler is needed, not even in the builder.
    install = " ".join(builder.all("RUN"))
    assert "--only-binary=:all:" in install
    assert "pip wheel --no-deps" in install


def test_final_stage_has_no_build_tools_and_only_the_venv(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    final = final_stage(parsed)
    for command in final.all("RUN"):
        assert not BUILD_TOOLS.search(command), command
        assert "pip install" not in command
    copies = final.all("COPY")
    assert copies == ["--from=builder /opt/fhirwall /opt/fhirwall"]
    assert not final.all("ADD")
    env = " ".join(final.all("ENV"))
    assert "PATH=/opt/fhirwall/bin:$PATH" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    # The builder removes pip from the environment it hands over.
    assert "pip uninstall --yes pip" in " ".join(parsed[1][0].all("RUN"))


def test_runs_as_a_numeric_non_root_user(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    final = final_stage(parsed)
    user = final.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) == 10001
    assert gid.isdigit()
    assert int(gid) != 0
    # USER comes after every RUN: nothing in the final stage runs as root afterwards.
    keywords = [instruction for instruction, _ in final.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_read_only_root_filesystem_contract(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    final = final_stage(parsed)
    volumes = exec_form(final.last("VOLUME"))
    assert sorted(volumes) == ["/tmp", "/var/lib/fhirwall/audit"]
    env = " ".join(final.all("ENV"))
    assert "HOME=/tmp" in env
    assert "TMPDIR=/tmp" in env
    # The audit directory is the only one the runtime user owns.
    setup = " ".join(final.all("RUN"))
    assert "chown 10001:10001 /var/lib/fhirwall/audit" in setup
    assert setup.count("chown") == 1


def test_entrypoint_command_port_and_labels(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    final = final_stage(parsed)
    assert exec_form(final.last("ENTRYPOINT")) == ["fhirwall"]
    command = exec_form(final.last("CMD"))
    assert command == ["serve", "--config", "/etc/fhirwall/fhirwall.yaml"]
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["fhirwall"] == "proxy.cli:main"
    arguments = fhirwall_parser().parse_args(command)
    assert str(arguments.config) == "/etc/fhirwall/fhirwall.yaml"
    assert final.last("EXPOSE") == "8080"
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', " ".join(final.all("LABEL"))))
    assert {"title", "description", "version", "revision", "created", "licenses"} <= {
        key.rsplit(".", 1)[-1] for key in labels
    }
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert "ARG VERSION=" + project["version"] in CONTAINERFILE.read_text()


def _healthcheck_command(parsed: tuple[dict[str, str], list[Stage]]) -> list[str]:
    healthcheck = final_stage(parsed).last("HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert {"--interval", "--timeout", "--start-period", "--retries"} <= {
        option.split("=")[0] for option in shlex.split(options)
    }
    return exec_form(command)


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 503
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_healthcheck_uses_the_standard_library_against_healthz(
    parsed: tuple[dict[str, str], list[Stage]],
) -> None:
    command = _healthcheck_command(parsed)
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8080/healthz" in command[2]
    assert "curl" not in command[2]
    assert "wget" not in command[2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        for path, healthy in (("/healthz", True), ("/readyz", False)):
            result = subprocess.run(
                [sys.executable, *command[1:]],
                env={"HEALTHCHECK_URL": f"http://127.0.0.1:{port}{path}"},
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert (result.returncode == 0) is healthy, result.stderr.decode()
        # Nothing listening: unhealthy.
        result = subprocess.run(
            [sys.executable, *command[1:]],
            env={"HEALTHCHECK_URL": "http://127.0.0.1:9/healthz"},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0
    finally:
        server.shutdown()
        server.server_close()


def _ignore_patterns(path: Path) -> list[str]:
    return [
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def _builder_sources(parsed: tuple[dict[str, str], list[Stage]]) -> list[str]:
    sources: list[str] = []
    for arguments in parsed[1][0].all("COPY"):
        parts = arguments.split()
        assert not parts[0].startswith("--"), arguments
        sources += parts[:-1]
    return sources


def test_build_context_holds_exactly_what_is_copied(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    container_ignore = _ignore_patterns(REPO_ROOT / ".containerignore")
    assert _ignore_patterns(REPO_ROOT / ".dockerignore") == container_ignore
    assert container_ignore[0] == "*"
    included = {pattern[1:].rstrip("/") for pattern in container_ignore if pattern.startswith("!")}
    assert set(_builder_sources(parsed)) == included
    for source in included:
        assert (REPO_ROOT / source).exists(), source
    # Nothing else of the repository reaches the build context.
    for excluded in ("tests", "charts", "examples", ".git", ".venv"):
        assert not any(fnmatch.fnmatch(excluded, pattern) for pattern in included)


def _package_data_files() -> set[str]:
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["*"]
    found: set[str] = set()
    for package in ("proxy", "consent", "masking"):
        for path in (REPO_ROOT / package).rglob("*"):
            if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
                found.add(path.relative_to(REPO_ROOT).as_posix())
    return found


def test_wheel_from_the_build_context_carries_the_package_data(
    parsed: tuple[dict[str, str], list[Stage]], tmp_path: Path
) -> None:
    """The builder's `pip wheel --no-deps .`, on a copy of exactly what the Containerfile copies (a few
    seconds: the isolated build environment installs setuptools from the package index or pip's cache)."""
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache", ".ruff_cache")
    for item in _builder_sources(parsed):
        origin = REPO_ROOT / item
        if origin.is_dir():
            shutil.copytree(origin, source / item, ignore=ignore)
        else:
            shutil.copy2(origin, source / item)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    (wheel,) = wheels.glob("fhirwall-*.whl")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert wheel.name.startswith(f"fhirwall-{project['version']}-py3-none-any")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"fhirwall-{project['version']}.dist-info/entry_points.txt").decode()
    for required in (
        "proxy/py.typed",
        "proxy/settings.schema.json",
        "masking/profile.schema.json",
        "masking/profiles/safe-harbor.yaml",
        "masking/profiles/limited-data-set.yaml",
        "proxy/fhir/data/r4-patient-compartment.json",
        "proxy/cli.py",
        "consent/evaluate.py",
    ):
        assert required in names, required
    missing = _package_data_files() - names
    assert missing == set()
    modules = {
        path.relative_to(REPO_ROOT).as_posix()
        for package in ("proxy", "consent", "masking")
        for path in (REPO_ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules - names == set()  # every module ships (a folder without __init__.py would not)
    assert not any(name.startswith(("tests/", "charts/", "examples/")) for name in names)
    assert "fhirwall = proxy.cli:main" in entry_points
