"""Settings: loading, overrides, every problem reported with its key path, the shipped JSON Schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import schema_text
from proxy.settings import ConfigError, load_settings
from tests.conftest import REPO_ROOT

MINIMAL = "upstreams:\n  - name: default\n    url: http://127.0.0.1:8090/fhir\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fhirwall.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    assert settings.server.port == 8080
    assert settings.server.base_path == "/fhir"
    assert settings.upstreams[0].resource_types == ["*"]


def test_no_file_with_overrides() -> None:
    settings = load_settings(
        None,
        environ={},
        overrides={"upstreams": [{"name": "default", "url": "http://u/fhir"}], "server.port": 9000},
    )
    assert settings.server.port == 9000
    assert settings.upstreams[0].url == "http://u/fhir"


def test_environment_overrides_file(tmp_path: Path) -> None:
    environ = {
        "FHIRWALL_SERVER__PORT": "9100",
        "FHIRWALL_UPSTREAMS__0__READ_TIMEOUT": "5",
        "FHIRWALL_LIMITS__MAX_BODY_BYTES": "2048",
        "OTHER": "x",
    }
    settings = load_settings(write(tmp_path, MINIMAL), environ=environ)
    assert settings.server.port == 9100
    assert settings.upstreams[0].read_timeout == 5
    assert settings.limits.max_body_bytes == 2048


def test_variables_that_name_no_section_are_not_overrides(tmp_path: Path) -> None:
    environ = {
        "FHIRWALL_PORT": "tcp://10.0.0.1:8080",  # Kubernetes service links for a Service named fhirwall
        "FHIRWALL_SERVICE_HOST": "10.0.0.1",
        "FHIRWALL_MASKING_HASH_KEY": "a secret whose variable happens to start with the prefix",
        "FHIRWALL_REDIS": "{url: 'redis://127.0.0.1:6379/0'}",  # a whole section is an override
    }
    settings = load_settings(write(tmp_path, MINIMAL), environ=environ)
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="sevrer"):
        load_settings(write(tmp_path, MINIMAL), environ={"FHIRWALL_SEVRER__PORT": "1"})


def test_cli_overrides_environment(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, MINIMAL), environ={"FHIRWALL_SERVER__PORT": "9100"}, overrides={"server.port": 9200}
    )
    assert settings.server.port == 9200


def test_every_problem_is_reported_with_its_path(tmp_path: Path) -> None:
    text = """
server:
  port: 70000
  trusted_proxies: [not-a-network]
limits:
  max_body_bytes: 10
upstreams:
  - name: default
    url: ftp://upstream
    resource_types: ["*", Patiënt]
    auth: {type: bearer}
  - name: Bad Name
    url: http://x/fhir
    colour: blue
"""
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text), environ={})
    paths = {path for path, _ in raised.value.problems}
    assert {
        "server.port",
        "server.trusted_proxies",
        "limits.max_body_bytes",
        "upstreams.0.url",
        "upstreams.0.resource_types",
        "upstreams.0.auth",
        "upstreams.1.name",
        "upstreams.1.colour",
    } <= paths


def test_cross_field_rules(tmp_path: Path) -> None:
    text = """
upstreams:
  - {name: a, url: "http://a/fhir", resource_types: [Consent]}
  - {name: a, url: "http://b/fhir", resource_types: [Consent]}
"""
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text), environ={})
    message = str(raised.value)
    assert "used twice" in message
    assert "exactly one upstream" in message
    assert "Consent is routed to both" in message


def test_missing_secret_environment_variable(tmp_path: Path) -> None:
    text = MINIMAL + "    auth: {type: bearer, token_env: FHIRWALL_TEST_SURELY_UNSET}\n"
    with pytest.raises(ConfigError, match="FHIRWALL_TEST_SURELY_UNSET is not set"):
        load_settings(write(tmp_path, text), environ={})


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "server: [unclosed"), environ={})


def test_check_config_prints_all_three_mistakes(tmp_path: Path) -> None:
    text = """
server:
  port: "eighty"
upstreams:
  - name: default
    url: not-a-url
    read_timeout: -1
"""
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "check-config", str(write(tmp_path, text))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "3 problem(s)" in result.stderr
    for path in ("server.port", "upstreams.0.url", "upstreams.0.read_timeout"):
        assert path in result.stderr


def test_check_config_compiles_masking_profiles(tmp_path: Path) -> None:
    profile = tmp_path / "bad-profile.yaml"
    profile.write_text("name: bad\nrules:\n  - {path: Patient.nmae, method: redact}\n")
    text = f"""
upstreams:
  - name: default
    url: http://127.0.0.1:8090/fhir
masking:
  profiles:
    bad: {{file: {profile}}}
  default_profile: bad
"""
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "check-config", str(write(tmp_path, text))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "masking.profiles.bad" in result.stderr
    assert "rules.0.path" in result.stderr


def test_check_config_accepts_the_examples() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "check-config", str(REPO_ROOT / "examples/config/minimal.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_shipped_schema_is_current() -> None:
    shipped = (REPO_ROOT / "proxy" / "settings.schema.json").read_text(encoding="utf-8")
    assert shipped == schema_text(), "regenerate with: fhirwall config-schema > proxy/settings.schema.json"


def test_schema_validates_examples() -> None:
    import jsonschema
    import orjson
    import yaml

    schema = orjson.loads(schema_text())
    document = yaml.safe_load((REPO_ROOT / "examples/config/full.yaml").read_text(encoding="utf-8"))
    jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"upstreams": [{"name": "x", "url": "http://x"}], "bogus": 1}, schema)
