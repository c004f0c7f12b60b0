"""The Helm chart, rendered offline by Helm's own engine and checked against the Kubernetes schemas.

Every values file under ``charts/fhirwall/ci`` is rendered and each manifest validated strictly (unknown
fields refused) against the Kubernetes 1.30 API; the values schema is exercised through Helm (the render
must fail) and directly; and the fhirwall.yaml the chart renders is run through ``fhirwall check-config`` in
a simulated pod filesystem, which proves the chart produces a configuration the proxy accepts.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from proxy.cli import main as fhirwall_main
from proxy.settings import Settings, load_settings
from tests.conftest import REPO_ROOT

CHART_DIR = REPO_ROOT / "charts" / "fhirwall"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
KUBERNETES_VERSION = "1.30"
RELEASE = "fw"
NAMESPACE = "fhir"
FULLNAME = "fw-fhirwall"
CONFIG_PATH = "/etc/fhirwall/fhirwall.yaml"
Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def ci_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART_DIR / "ci" / f"{name}-values.yaml").read_text())
    return values


MINIMAL = ci_values("minimal")


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in (mappings recursively, like Helm's values files)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def render(chart: helm.Chart, values: dict[str, Any]) -> list[Manifest]:
    """Every Kubernetes object the chart renders for ``values`` (NOTES.txt left out)."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        manifests += [doc for doc in yaml.safe_load_all(text) if doc]
    return manifests


def only(manifests: list[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}{name_suffix}, found {len(found)}"
    return found[0]


def kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def proxy_container(manifests: list[Manifest]) -> dict[str, Any]:
    container: dict[str, Any] = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


def rendered_config(manifests: list[Manifest]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(only(manifests, "ConfigMap", "-config")["data"]["fhirwall.yaml"])
    return config


# ---------------------------------------------------------------------------------------------------------
# Chart metadata and the values schema itself


def test_chart_metadata_matches_the_project(chart: helm.Chart) -> None:
    metadata = chart.metadata
    assert metadata["apiVersion"] == "v2"
    assert metadata["name"] == "fhirwall"
    project = (REPO_ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', project, re.MULTILINE)
    assert version is not None
    assert metadata["appVersion"] == version.group(1) == "0.1.0"


def test_ci_values_files_cover_the_required_cases() -> None:
    assert {path.name for path in CI_VALUES} >= {
        "minimal-values.yaml",
        "full-values.yaml",
        "tls-values.yaml",
        "hpa-values.yaml",
    }


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
    return schema


def _walk_schema(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "type" in node or "$ref" in node:
            yield path, node
        for key, child in node.items():
            if key in ("properties", "definitions"):
                for name, sub in child.items():
                    yield from _walk_schema(sub, f"{path}.{name}")
            elif key in ("items", "additionalProperties") and isinstance(child, dict):
                yield from _walk_schema(child, f"{path}[{key}]")


# Objects whose content Kubernetes or the proxy validates (free-form for this schema) and string maps.
PASS_THROUGH = {
    ".affinity",
    ".autoscaling.behavior",
    ".autoscaling.metrics[items]",
    ".tolerations[items]",
    ".topologySpreadConstraints[items]",
    ".maskingProfiles[additionalProperties]",
    *(f".config.{section}" for section in ("server", "limits", "redis", "auth", "policy", "consent")),
    *(f".config.{section}" for section in ("masking", "audit", "access", "rate_limits")),
    ".accessPolicy",
}


def test_values_schema_is_draft7_with_descriptions_and_closed_objects() -> None:
    schema = _schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    undocumented = []
    open_objects = []
    for path, node in _walk_schema(schema, ""):
        if path and "[" not in path.rsplit(".", 1)[-1] and not node.get("description"):
            undocumented.append(path)
        if node.get("type") == "object" and path not in PASS_THROUGH:
            if "additionalProperties" not in node:
                open_objects.append(path)
            elif node["additionalProperties"] is not False:
                # A map: its keys are free, its values typed.
                assert isinstance(node["additionalProperties"], dict), path
                assert "type" in node["additionalProperties"], path
    assert undocumented == []
    assert open_objects == []


def test_config_sections_are_the_proxy_settings_sections() -> None:
    sections = set(_schema()["properties"]["config"]["properties"])
    assert sections == set(Settings.model_fields)


def _values_keys(node: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            keys.add(prefix + key)
            if isinstance(value, dict) and value:
                keys |= _values_keys(value, f"{prefix}{key}.")
    return keys


def _schema_keys(node: dict[str, Any], definitions: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, sub in node.get("properties", {}).items():
        keys.add(prefix + key)
        target = definitions[sub["$ref"].rsplit("/", 1)[-1]] if "$ref" in sub else sub
        if target.get("additionalProperties") is False:
            keys |= _schema_keys(target, definitions, f"{prefix}{key}.")
    return keys


def test_every_value_has_a_default_and_a_comment() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    defaults = yaml.safe_load(text)
    schema = _schema()
    documented = _schema_keys(schema, schema["definitions"])
    # config and the string maps are empty by default; their keys are the operator's.
    assert _values_keys(defaults) - {"config"} <= documented
    assert documented - _values_keys(defaults) <= {
        f"config.{section}" for section in Settings.model_fields
    } | {"resources.requests", "resources.limits"}
    # Each key of values.yaml outside lists is preceded by a comment line.
    lines = text.splitlines()
    list_indent: int | None = None
    uncommented = []
    for number, line in enumerate(lines):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if list_indent is not None and indent > list_indent:
            continue
        list_indent = None
        if stripped.startswith("- "):
            list_indent = indent - 1
            continue
        match = re.match(r"([A-Za-z][\w.-]*):", stripped)
        assert match, line
        previous = next(p for p in reversed(lines[:number]) if p.strip())
        if not previous.lstrip().startswith("#"):
            uncommented.append(match.group(1))
        if stripped.rstrip().endswith(":"):
            # A mapping or a list follows; a list's items are data, not keys.
            following = next(
                (p for p in lines[number + 1 :] if p.strip() and not p.lstrip().startswith("#")), ""
            )
            if following.lstrip().startswith("- "):
                list_indent = indent
    assert uncommented == []


def test_default_values_pass_the_schema(chart: helm.Chart) -> None:
    validator = jsonschema.Draft7Validator(_schema())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert list(validator.iter_errors(defaults)) == []
    for path in CI_VALUES:
        values = chart.merge_values(yaml.safe_load(path.read_text()))
        assert list(validator.iter_errors(values)) == [], path.name


BAD_VALUES: dict[str, dict[str, Any]] = {
    "unknown key": {"replicas": 3},
    "unknown nested key": {"service": {"portNumber": 80}},
    "wrong type": {"replicaCount": "two"},
    "negative port": {"service": {"port": -1}},
    "port out of range": {"containerPort": 70000},
    "bad enum": {"tls": {"minVersion": "1.0"}},
    "bad service type": {"service": {"type": "ExternalName"}},
    "misspelt config section": {"config": {"upstream": []}},
    "inline secret in secretEnv": {
        "secretEnv": [{"name": "UPSTREAM_CLIENT_SECRET", "secretName": "s", "key": "k", "value": "hunter2"}]
    },
    "inline secret as plain env": {"extraEnv": {"UPSTREAM_CLIENT_SECRET": "hunter2"}},
    "inline key as plain env": {"extraEnv": {"MASKING_HASH_KEY": "hunter2"}},
    "password in the Redis URL": {"redis": {"url": "redis://:hunter2@redis.shared.svc:6379/0"}},
    "inline TLS key": {"tls": {"enabled": True, "key": "-----BEGIN PRIVATE KEY-----"}},
    "inline audit key": {"auditLog": {"keySecret": {"name": "s", "key": "k", "value": "hunter2"}}},
    "root user": {"securityContext": {"runAsUser": 0}},
    "bad image digest": {"image": {"digest": "latest"}},
    "negative replicas": {"replicaCount": -1},
    # The proxy reads FHIRWALL_<X> variables as settings overrides: this one would stop it at start-up.
    "secret variable named like an override": {
        "secretEnv": [{"name": "FHIRWALL_PAGING_KEY", "secretName": "s", "key": "k"}]
    },
    "plain variable named like an override": {"extraEnv": {"FHIRWALL_LOGLEVEL": "debug"}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_refuses_bad_values(chart: helm.Chart, case: str) -> None:
    values = merged(MINIMAL, BAD_VALUES[case])
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    errors = list(jsonschema.Draft7Validator(_schema()).iter_errors(chart.merge_values(values)))
    assert errors, case


def test_schema_accepts_non_secret_environment(chart: helm.Chart) -> None:
    values = merged(MINIMAL, {"extraEnv": {"FHIRWALL_SERVER__LOG_LEVEL": "debug", "OTEL_SERVICE_NAME": "x"}})
    chart.validate_schema(values)


# ---------------------------------------------------------------------------------------------------------
# Every rendered manifest against the Kubernetes API schemas


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_ci_values_render_valid_kubernetes_objects(chart: helm.Chart, values_file: Path) -> None:
    manifests = render(chart, yaml.safe_load(values_file.read_text()))
    assert {"ConfigMap", "Deployment", "Service", "ServiceAccount", "Pod"} <= set(kinds(manifests))
    for manifest in manifests:
        # kubernetes-validate bundles the API schemas of every kind the chart renders (no CRDs).
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        metadata = manifest["metadata"]
        assert metadata["namespace"] == NAMESPACE
        assert metadata["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert metadata["labels"]["app.kubernetes.io/version"] == "0.1.0"


def test_strict_validation_catches_what_the_chart_must_not_render() -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targtPort": 8080}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_helm_lint_is_clean(values_file: Path) -> None:
    report = helm.lint(
        CHART_DIR, yaml.safe_load(values_file.read_text()), strict=True, kube_version="v1.30.0"
    )
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert problems == []
    assert report["errors"] == []


def test_required_values_fail_the_render(chart: helm.Chart) -> None:
    without_image = {key: value for key, value in MINIMAL.items() if key != "image"}
    with pytest.raises(helm.HelmError, match=r"image\.repository is required"):
        chart.render(without_image, name=RELEASE, namespace=NAMESPACE)
    without_upstreams = {**MINIMAL, "config": {"auth": MINIMAL["config"]["auth"]}}
    with pytest.raises(helm.HelmError, match=r"config\.upstreams is required"):
        chart.render(without_upstreams, name=RELEASE, namespace=NAMESPACE)
    tls_without_secret = merged(MINIMAL, {"tls": {"enabled": True}})
    with pytest.raises(helm.HelmError, match=r"tls\.secretName is required"):
        chart.render(tls_without_secret, name=RELEASE, namespace=NAMESPACE)
    audit_without_key = merged(MINIMAL, {"auditLog": {"enabled": True}})
    with pytest.raises(helm.HelmError, match=r"auditLog\.keySecret\.name is required"):
        chart.render(audit_without_key, name=RELEASE, namespace=NAMESPACE)
    policy_without_redis = merged(MINIMAL, {"accessPolicy": {"roles": {"clinician": {}}}})
    with pytest.raises(helm.HelmError, match=r"accessPolicy needs Redis"):
        chart.render(policy_without_redis, name=RELEASE, namespace=NAMESPACE)


# ---------------------------------------------------------------------------------------------------------
# Secrets only by reference

SECRET_LOOKING = re.compile(r"(?i)(secret|token|passw|credential|key|redis__url|otlp_headers)")


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_no_manifest_carries_a_secret_value(chart: helm.Chart, values_file: Path) -> None:
    manifests = render(chart, yaml.safe_load(values_file.read_text()))
    assert "Secret" not in kinds(manifests)
    for manifest in manifests:
        if manifest["kind"] not in ("Deployment", "Pod"):
            continue
        pod = manifest["spec"]["template"]["spec"] if manifest["kind"] == "Deployment" else manifest["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            for variable in container.get("env", []):
                if SECRET_LOOKING.search(variable["name"]):
                    assert "value" not in variable, variable["name"]
                    assert set(variable["valueFrom"]) == {"secretKeyRef"}, variable["name"]
        for volume in pod.get("volumes", []):
            assert "projected" not in volume
    config = rendered_config(manifests)
    # Secrets in the configuration are names of variables or paths of mounted files, never values.
    for path, key, _value in _leaves(config):
        if re.search(r"(secret|token|key)", key) and not key.endswith(("_env", "_file", "_url", "_claim")):
            assert key in {"crypto_hash_key", "current_pseudonym_key", "key"}, (path, key)
        assert key != "value", path
    for name, source in config.get("masking", {}).get("keys", {}).items():
        assert set(source) <= {"env", "file", "encoding"}, name


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                yield from _leaves(value, f"{path}.{key}")
            else:
                yield f"{path}.{key}", str(key), value
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{path}[{index}]")


def test_secret_references_are_rendered_from_values(chart: helm.Chart) -> None:
    manifests = render(chart, ci_values("full"))
    env = {item["name"]: item for item in proxy_container(manifests)["env"]}
    assert env["UPSTREAM_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "fhirwall-upstream",
        "key": "client-secret",
    }
    assert env["FHIRWALL_REDIS__URL"]["valueFrom"]["secretKeyRef"] == {"name": "fhirwall-redis", "key": "url"}
    assert env["AUDIT_LOG_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "fhirwall-keys"
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"]["name"] == "fhirwall-otlp"
    volumes = {v["name"]: v for v in only(manifests, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["governance-token"]["secret"]["secretName"] == "fhirwall-governance"
    assert volumes["masking-keys"]["secret"]["defaultMode"] == 0o400


# ---------------------------------------------------------------------------------------------------------
# Pod hardening, probes, volumes


def _pod_specs(manifests: list[Manifest]) -> list[dict[str, Any]]:
    specs = [only(manifests, "Deployment")["spec"]["template"]["spec"]]
    specs += [m["spec"] for m in manifests if m["kind"] == "Pod"]
    return specs


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_pods_are_hardened(chart: helm.Chart, values_file: Path) -> None:
    manifests = render(chart, yaml.safe_load(values_file.read_text()))
    for spec in _pod_specs(manifests):
        assert spec["automountServiceAccountToken"] is False
        # No FHIRWALL_SERVICE_HOST / FHIRWALL_PORT variables for a Service named fhirwall.
        assert spec["enableServiceLinks"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        containers = spec.get("initContainers", []) + spec["containers"]
        for container in containers:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] == 10001
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert "/tmp" in mounts
            tmp = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in tmp
    service_account = only(manifests, "ServiceAccount")
    assert service_account["automountServiceAccountToken"] is False


def test_resources_are_unset_by_default(chart: helm.Chart) -> None:
    manifests = render(chart, MINIMAL)
    spec = only(manifests, "Deployment")["spec"]["template"]["spec"]
    assert all("resources" not in c for c in spec["containers"] + spec["initContainers"])


@pytest.mark.parametrize(("values_name", "scheme"), [("minimal", "HTTP"), ("full", "HTTP"), ("tls", "HTTPS")])
def test_probes_check_health_and_readiness(chart: helm.Chart, values_name: str, scheme: str) -> None:
    container = proxy_container(render(chart, ci_values(values_name)))
    port = container["ports"][0]
    assert port["containerPort"] == 8080
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        check = container[probe]["httpGet"]
        assert (check["path"], check["port"], check["scheme"]) == (path, port["name"], scheme)
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 60


def test_mutual_tls_switches_probes_to_tcp(chart: helm.Chart) -> None:
    values = merged(ci_values("tls"), {"tls": {"clientCa": {"secretName": "clients-ca"}}})
    manifests = render(chart, values)
    container = proxy_container(manifests)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "https"}
    assert rendered_config(manifests)["server"]["tls"]["client_ca_file"] == "/etc/fhirwall/client-ca/ca.crt"


def test_configuration_is_mounted_and_checked_before_start(chart: helm.Chart) -> None:
    manifests = render(chart, ci_values("full"))
    spec = only(manifests, "Deployment")["spec"]["template"]["spec"]
    container = proxy_container(manifests)
    assert container["args"] == ["serve", "--config", CONFIG_PATH]
    config_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == CONFIG_PATH)
    volume = next(v for v in spec["volumes"] if v["name"] == config_mount["name"])
    assert volume["configMap"]["name"] == f"{FULLNAME}-config"
    assert config_mount["subPath"] == "fhirwall.yaml"
    profiles_mount = next(m for m in container["volumeMounts"] if m["name"] == "masking-profiles")
    assert profiles_mount["mountPath"] == "/etc/fhirwall/masking-profiles"
    (init,) = spec["initContainers"]
    assert init["args"] == ["check-config", CONFIG_PATH]
    assert init["image"] == container["image"]
    assert init["env"] == container["env"]
    assert init["volumeMounts"] == container["volumeMounts"]
    unchecked = only(render(chart, merged(MINIMAL, {"checkConfig": {"enabled": False}})), "Deployment")
    assert "initContainers" not in unchecked["spec"]["template"]["spec"]


def test_config_checksum_rolls_the_pods(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = only(render(chart, values), "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    before = checksum(MINIMAL)
    assert re.fullmatch(r"[0-9a-f]{64}", before)
    assert checksum(MINIMAL) == before
    assert checksum(merged(MINIMAL, {"config": {"server": {"access_log": True}}})) != before
    profile = {"name": "p", "rules": [{"path": "Patient.name", "method": "redact"}]}
    assert checksum(merged(MINIMAL, {"maskingProfiles": {"p": profile}})) != before


def test_audit_log_volume(chart: helm.Chart) -> None:
    full = render(chart, ci_values("full"))
    volumes = {v["name"]: v for v in only(full, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["audit"]["emptyDir"] == {"sizeLimit": "2Gi"}
    assert rendered_config(full)["audit"]["log_file"] == "/var/lib/fhirwall/audit/audit.jsonl"
    tls = render(chart, ci_values("tls"))
    deployment = only(tls, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = only(tls, "PersistentVolumeClaim")
    assert volumes["audit"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    existing = merged(ci_values("tls"), {"auditLog": {"persistence": {"existingClaim": "audit-claim"}}})
    manifests = render(chart, existing)
    assert "PersistentVolumeClaim" not in kinds(manifests)
    with pytest.raises(helm.HelmError, match="single writer"):
        render(chart, merged(ci_values("tls"), {"replicaCount": 2}))


# ---------------------------------------------------------------------------------------------------------
# Service, HPA, PDB, NetworkPolicy, Ingress, helm test


def test_service_selects_only_proxy_pods(chart: helm.Chart) -> None:
    manifests = render(chart, ci_values("full"))
    selector = only(manifests, "Service")["spec"]["selector"]
    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    test_pod = only(manifests, "Pod")
    assert not selector.items() <= test_pod["metadata"]["labels"].items()
    (port,) = only(manifests, "Service")["spec"]["ports"]
    assert port["targetPort"] == proxy_container(manifests)["ports"][0]["name"]


def test_hpa_only_when_enabled(chart: helm.Chart) -> None:
    minimal = render(chart, MINIMAL)
    assert "HorizontalPodAutoscaler" not in kinds(minimal)
    assert only(minimal, "Deployment")["spec"]["replicas"] == 2
    manifests = render(chart, ci_values("hpa"))
    hpa = only(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    cpu, custom = hpa["spec"]["metrics"]
    assert cpu["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 65}}
    assert custom["type"] == "Pods"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert "replicas" not in only(manifests, "Deployment")["spec"]


def test_pod_disruption_budget(chart: helm.Chart) -> None:
    minimal = render(chart, MINIMAL)
    pdb = only(minimal, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"] == only(minimal, "Deployment")["spec"]["selector"]
    assert only(render(chart, ci_values("full")), "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "selector": pdb["spec"]["selector"],
    }
    assert only(render(chart, ci_values("hpa")), "PodDisruptionBudget")["spec"]["maxUnavailable"] == "25%"
    assert "PodDisruptionBudget" not in kinds(render(chart, ci_values("tls")))


def test_network_policy_only_when_enabled(chart: helm.Chart) -> None:
    assert "NetworkPolicy" not in kinds(render(chart, MINIMAL))
    manifests = render(chart, ci_values("full"))
    policy = only(manifests, "NetworkPolicy")["spec"]
    assert policy["podSelector"] == only(manifests, "Deployment")["spec"]["selector"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    peers = ingress["from"]
    assert peers[0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    test_labels = only(manifests, "Pod")["metadata"]["labels"]
    assert peers[1]["podSelector"]["matchLabels"].items() <= test_labels.items()
    egress_ports = [(p["port"], p.get("protocol")) for rule in policy["egress"] for p in rule["ports"]]
    assert (53, "UDP") in egress_ports
    assert (53, "TCP") in egress_ports
    assert (6379, "TCP") in egress_ports
    assert (443, "TCP") in egress_ports
    open_ingress = merged(ci_values("full"), {"networkPolicy": {"ingress": {"from": []}}})
    policy = only(render(chart, open_ingress), "NetworkPolicy")["spec"]
    assert "from" not in policy["ingress"][0]
    no_egress = merged(ci_values("full"), {"networkPolicy": {"egress": {"enabled": False}}})
    policy = only(render(chart, no_egress), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert "egress" not in policy


def test_ingress_with_tls(chart: helm.Chart) -> None:
    assert "Ingress" not in kinds(render(chart, MINIMAL))
    ingress = only(render(chart, ci_values("full")), "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"secretName": "fhir-example-org-tls", "hosts": ["fhir.example.org"]}]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}


@pytest.mark.parametrize(
    ("values_name", "url"),
    [
        ("minimal", f"http://{FULLNAME}:8080/fhir/metadata"),
        ("tls", f"https://{FULLNAME}:8080/fhir/metadata"),
    ],
)
def test_helm_test_pod_fetches_the_capability_statement(
    chart: helm.Chart, values_name: str, url: str
) -> None:
    manifests = render(chart, ci_values(values_name))
    pod = only(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == proxy_container(manifests)["image"]
    assert container["command"] == ["python", "-c"]
    compile(container["args"][0], "test-metadata", "exec")
    assert container["env"] == [{"name": "METADATA_URL", "value": url}]
    assert only(manifests, "Service")["spec"]["ports"][0]["port"] == 8080
    assert "tests" not in str(render(chart, merged(MINIMAL, {"tests": {"enabled": False}})))


def test_helm_test_script_fetches_metadata(tmp_path: Path) -> None:
    """The test pod's script, run here against a stand-in for the Service."""
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/fhir/metadata" and self.headers["Accept"] == "application/fhir+json"
            body = json.dumps({"resourceType": "CapabilityStatement" if ok else "OperationOutcome"}).encode()
            self.send_response(200 if ok else 404)
            self.send_header("content-type", "application/fhir+json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    manifests_script = _test_pod_script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        for path, expected in (("/fhir/metadata", 0), ("/other/metadata", 1)):
            env = {"METADATA_URL": f"http://127.0.0.1:{port}{path}"}
            result = subprocess.run(
                [sys.executable, "-c", manifests_script],
                env=env,
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert (result.returncode == 0) == (expected == 0), result.stderr.decode()
    finally:
        server.shutdown()
        server.server_close()


def _test_pod_script() -> str:
    with helm.Chart.load(CHART_DIR) as loaded:
        pod = only(render(loaded, MINIMAL), "Pod")
    script: str = pod["spec"]["containers"][0]["args"][0]
    return script


def test_telemetry_is_wired_through_otlp(chart: helm.Chart) -> None:
    for values_name, exporter, endpoint in (
        ("full", "otlp-http", "http://otel-collector.observability.svc:4318"),
        ("hpa", "otlp-grpc", "http://otel-collector.observability.svc:4317"),
    ):
        manifests = render(chart, ci_values(values_name))
        env = {item["name"]: item for item in proxy_container(manifests)["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == endpoint
        telemetry = rendered_config(manifests)["audit"]["telemetry"]
        assert telemetry["exporter"] == exporter
        assert "endpoint" not in telemetry
    minimal = render(chart, MINIMAL)
    assert "audit" not in rendered_config(minimal)
    assert "env" not in proxy_container(minimal)
    # No Prometheus endpoint exists, so no ServiceMonitor is rendered (see values telemetry.otlpEndpoint).
    assert not any(
        m["apiVersion"].startswith("monitoring.coreos.com") for m in render(chart, ci_values("full"))
    )


# ---------------------------------------------------------------------------------------------------------
# The rendered configuration is one the proxy accepts


def _dummy_secret(name: str) -> str:
    if name == "FHIRWALL_REDIS__URL":
        return "redis://redis.test:6379/0"
    # Valid as UTF-8 text and as base64 of 32 bytes (paging, pseudonym and hash keys all accept it).
    return base64.b64encode(bytes(range(32))).decode()


def _materialise_pod(manifests: list[Manifest], root: Path) -> tuple[Path, dict[str, str]]:
    """Lay out the proxy container's view under ``root``: the ConfigMaps' files where they are mounted,
    placeholder files in Secret and ConfigMap volumes, paths in the configuration moved under ``root``.
    Returns the configuration file and the container's environment (Secrets replaced by placeholders)."""
    deployment = only(manifests, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container = proxy_container(manifests)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    config_maps = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "ConfigMap"}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    config = rendered_config(manifests)

    def mounted_under(path: str) -> bool:
        return any(path == mount or path.startswith(mount.rstrip("/") + "/") for mount in mounts)

    # Every file the configuration names must come from a volume: the root filesystem has none of them.
    for where, key, value in _leaves(config):
        if isinstance(value, str) and (key.endswith("_file") or key == "file"):
            assert mounted_under(value), f"{where}: {value} is not on a mounted volume"

    for mount_path, mount in mounts.items():
        target = root / mount_path.lstrip("/")
        volume = volumes[mount["name"]]
        if "subPath" in mount or mount_path == "/tmp":
            continue
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume and volume["configMap"]["name"] in config_maps:
            for file_name, text in config_maps[volume["configMap"]["name"]].items():
                (target / file_name).write_text(text)
    for _where, key, value in _leaves(config):
        if isinstance(value, str) and (key.endswith("_file") or key == "file"):
            placeholder = root / value.lstrip("/")
            if not placeholder.exists() and "/audit/" not in value:
                placeholder.parent.mkdir(parents=True, exist_ok=True)
                placeholder.write_text(_dummy_secret(key) + "\n")

    def relocate(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: relocate(value) for key, value in node.items()}
        if isinstance(node, list):
            return [relocate(value) for value in node]
        if isinstance(node, str) and node.startswith("/") and mounted_under(node):
            return str(root / node.lstrip("/"))
        return node

    config_file = root / CONFIG_PATH.lstrip("/")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(relocate(config)))
    environ = {
        item["name"]: item["value"] if "value" in item else _dummy_secret(item["name"])
        for item in container.get("env", [])
    }
    return config_file, environ


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.name)
def test_rendered_configuration_passes_check_config(
    chart: helm.Chart,
    values_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifests = render(chart, yaml.safe_load(values_file.read_text()))
    config_file, environ = _materialise_pod(manifests, tmp_path)
    for name in [name for name in os.environ if name.startswith(("FHIRWALL_", "OTEL_"))]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    # What the check-config init container runs.
    assert fhirwall_main(["check-config", str(config_file)]) == 0, capsys.readouterr().err
    settings = load_settings(config_file, environ=environ)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == proxy_container(manifests)["ports"][0]["containerPort"]
    assert settings.auth.enforced


def test_chart_settings_land_in_the_configuration(chart: helm.Chart, tmp_path: Path) -> None:
    tls = rendered_config(render(chart, ci_values("tls")))
    assert tls["server"]["tls"] == {
        "cert_file": "/etc/fhirwall/tls/tls.crt",
        "key_file": "/etc/fhirwall/tls/tls.key",
        "min_version": "1.3",
    }
    assert tls["redis"] == {"url": "rediss://redis.shared.svc:6380/0"}
    assert tls["audit"]["log_key_env"] == "AUDIT_LOG_SIGNING_KEY"
    full = rendered_config(render(chart, ci_values("full")))
    assert full["masking"]["profiles"] == {
        "research": {"file": "/etc/fhirwall/masking-profiles/research.yaml"},
        "safe-harbor": {"builtin": "safe-harbor"},
    }
    # Operator settings survive; the chart's own keys win over them.
    custom = merged(MINIMAL, {"containerPort": 9090, "config": {"server": {"host": "127.0.0.1", "port": 1}}})
    manifests = render(chart, custom)
    assert rendered_config(manifests)["server"] == {"host": "0.0.0.0", "port": 9090}
    assert proxy_container(manifests)["ports"][0]["containerPort"] == 9090


def test_chart_and_image_agree(chart: helm.Chart) -> None:
    """What the chart assumes about the image is what the Containerfile builds."""
    from tests.deploy.test_container import CONTAINERFILE, exec_form, parse_containerfile

    _, stages = parse_containerfile(CONTAINERFILE.read_text())
    final = stages[-1]
    manifests = render(chart, merged(ci_values("tls"), {"tls": {"enabled": False}}))
    spec = only(manifests, "Deployment")["spec"]["template"]["spec"]
    container = proxy_container(manifests)
    uid, _, gid = final.last("USER").partition(":")
    context = spec["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    assert exec_form(final.last("CMD")) == container["args"]
    assert int(final.last("EXPOSE")) == container["ports"][0]["containerPort"]
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == set(exec_form(final.last("VOLUME")))
