"""Masking through the proxy, against the real upstream: profile selection, every kind of answer masked,
raw Binary refused under a profile, failures withheld (500), never the unmasked body."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.auth.dev_issuer import DevIssuer, load_or_create_key
from proxy.masking import MaskingPolicy
from proxy.settings import ConfigError
from tests.conftest import RunningProxy, SeededUpstream, free_port, make_settings

HASH_KEY = "integration-hash-key"
FHIR_JSON = {"content-type": "application/fhir+json"}
PROFILE_HEADER = "X-Masking-Profile"
CONTACTS_ONLY = """
name: contacts-only
rules:
  - path: nodesByType('ContactPoint')
    method: redact
"""
PSEUDONYMS = """
name: pseudonyms
parameters:
  pseudonym_keys: {k1: pseudonym-2025, k2: pseudonym}
  current_pseudonym_key: k2
rules:
  - path: Patient.id
    method: encrypt
"""


OLD_PSEUDONYM_KEY = b"o" * 32


def hashed(value: str) -> str:
    return hmac.new(HASH_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


class MaskingSetup:
    def __init__(self, proxy: RunningProxy, issuer: DevIssuer) -> None:
        self.proxy = proxy
        self.issuer = issuer

    def client(
        self,
        client_id: str = "patient-app",
        roles: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> httpx.Client:
        claims = {"sub": "u1", "client_id": client_id, "scope": "system/*.cruds", "roles": list(roles)}
        token = self.issuer.mint(claims, audience=self.proxy.base_url)
        return self.proxy.client(headers={"authorization": f"Bearer {token}", **(headers or {})})


@pytest.fixture(scope="module")
def masking(upstream: SeededUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MaskingSetup]:
    folder = tmp_path_factory.mktemp("masking")
    (folder / "contacts.yaml").write_text(CONTACTS_ONLY)
    (folder / "pseudonyms.yaml").write_text(PSEUDONYMS)
    port = free_port()
    issuer_url = f"http://127.0.0.1:{port}/_dev"
    settings = make_settings(
        upstream.base_url,
        **{
            "server.port": port,
            "auth.dev_issuer.enabled": True,
            "auth.dev_issuer.key_file": str(folder / "key.pem"),
            "auth.dev_issuer.issuer": issuer_url,
            "masking.keys": {
                "hash": {"value": HASH_KEY},
                "date-shift": {"value": "integration-date-shift"},
                "pseudonym": {"value": base64.b64encode(b"p" * 32).decode(), "encoding": "base64"},
                "pseudonym-2025": {"value": OLD_PSEUDONYM_KEY.hex(), "encoding": "hex"},
            },
            "masking.profiles": {
                "safe-harbor": {"builtin": "safe-harbor"},
                "contacts": {"file": str(folder / "contacts.yaml")},
                "pseudonyms": {"file": str(folder / "pseudonyms.yaml")},
            },
            "masking.profile_header": PROFILE_HEADER,
            "masking.selection": [
                {"client_id": ["ehr"], "profile": "none"},
                {"client_id": ["research-app"], "profile": "safe-harbor"},
                {"client_id": ["pseudo-app"], "profile": "pseudonyms"},
                {"header": ["safe-harbor"], "profile": "safe-harbor"},
            ],
            "masking.default_profile": "contacts",
            "masking.reidentification.roles": ["privacy-officer"],
        },
    )
    proxy = RunningProxy(settings).start()
    yield MaskingSetup(proxy, DevIssuer(load_or_create_key(folder / "key.pem"), issuer_url))
    proxy.stop()


def upstream_json(upstream: SeededUpstream, path: str) -> dict[str, Any]:
    response = httpx.get(f"{upstream.base_url}/{path}", headers={"accept": "application/fhir+json"})
    assert response.status_code == 200
    return dict(response.json())


def security_codes(resource: dict[str, Any]) -> set[str]:
    return {coding["code"] for coding in resource.get("meta", {}).get("security", [])}


@pytest.fixture(scope="module")
def patient_id(upstream: SeededUpstream) -> str:
    return next(iter(upstream.by_patient))


def test_default_profile_masks_a_read(
    masking: MaskingSetup, upstream: SeededUpstream, patient_id: str
) -> None:
    original = upstream_json(upstream, f"Patient/{patient_id}")
    assert original.get("telecom")
    with masking.client() as client:
        response = client.get(f"/Patient/{patient_id}")
    assert response.status_code == 200
    masked = response.json()
    assert "telecom" not in masked
    assert masked["name"] == original["name"]
    assert "REDACTED" in security_codes(masked)


def test_explicit_none_profile_passes_the_resource_unchanged(
    masking: MaskingSetup, upstream: SeededUpstream, patient_id: str
) -> None:
    original = upstream_json(upstream, f"Patient/{patient_id}")
    with masking.client("ehr") as client:
        masked = client.get(f"/Patient/{patient_id}").json()
    assert masked["telecom"] == original["telecom"]
    assert "meta" not in masked or not security_codes(masked) - security_codes(original)


def test_safe_harbor_by_client_masks_every_entry_of_a_search(
    masking: MaskingSetup, upstream: SeededUpstream, patient_id: str
) -> None:
    original = upstream_json(upstream, f"Patient/{patient_id}")
    with masking.client("research-app") as client:
        response = client.get(
            "/Encounter", params={"patient": patient_id, "_count": "5", "_include": "Encounter:patient"}
        )
    assert response.status_code == 200
    bundle = response.json()
    resources = [entry["resource"] for entry in bundle["entry"]]
    assert {r["resourceType"] for r in resources} == {"Encounter", "Patient"}
    text = response.text
    for secret in (patient_id, original["name"][0]["family"], original["birthDate"]):
        assert secret not in text
    for resource in resources:
        assert "ANONYED" in security_codes(resource)
        assert len(resource["id"]) == 64
        assert resource["id"] not in upstream.ids.get(resource["resourceType"], [])
    encounter = next(r for r in resources if r["resourceType"] == "Encounter")
    assert encounter["subject"]["reference"] == f"Patient/{hashed(patient_id)}"
    assert next(r for r in resources if r["resourceType"] == "Patient")["id"] == hashed(patient_id)


def test_a_repeated_search_page_is_masked_the_same_with_fresh_sealed_links(
    masking: MaskingSetup, patient_id: str
) -> None:
    params = {"patient": patient_id, "_count": "2"}
    with masking.client("research-app") as client:
        first, second = (client.get("/Encounter", params=params).json() for _ in range(2))
        assert first["entry"] == second["entry"]
        assert all("ANONYED" in security_codes(entry["resource"]) for entry in second["entry"])
        next_links = [
            link["url"] for answer in (first, second) for link in answer["link"] if link["relation"] == "next"
        ]
        assert len(next_links) == 2
        assert next_links[0] != next_links[1]  # each seal has its own nonce
        following = client.get(next_links[1])
    assert following.status_code == 200
    assert following.json()["entry"] != second["entry"]
    assert patient_id not in following.text


def test_safe_harbor_by_allowed_header(
    masking: MaskingSetup, upstream: SeededUpstream, patient_id: str
) -> None:
    with masking.client(headers={PROFILE_HEADER: "safe-harbor"}) as client:
        masked = client.get(f"/Patient/{patient_id}").json()
    assert masked["id"] == hashed(patient_id)
    assert "name" not in masked


def test_a_header_value_no_rule_allows_is_ignored(masking: MaskingSetup, patient_id: str) -> None:
    with masking.client(headers={PROFILE_HEADER: "none"}) as client:
        masked = client.get(f"/Patient/{patient_id}").json()
    assert "telecom" not in masked


def test_transaction_response_is_masked(masking: MaskingSetup) -> None:
    family = "Masked" + uuid.uuid4().hex[:8]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": family}]},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    with masking.client("research-app") as client:
        response = client.post("/", json=bundle, headers={**FHIR_JSON, "prefer": "return=representation"})
    assert response.status_code == 200, response.text
    assert family not in response.text


def test_raw_binary_is_refused_under_a_profile(masking: MaskingSetup, upstream: SeededUpstream) -> None:
    with masking.client() as client:
        response = client.get("/Binary/anything", headers={"accept": "application/pdf"})
    assert response.status_code == 406
    assert response.json()["resourceType"] == "OperationOutcome"


def test_a_masking_failure_withholds_the_answer(masking: MaskingSetup, upstream: SeededUpstream) -> None:
    long_id = "x" * 60  # too long for a reversible pseudonym that must stay a valid id
    family = "Withheld" + uuid.uuid4().hex[:8]
    response = httpx.put(
        f"{upstream.base_url}/Patient/{long_id}",
        json={"resourceType": "Patient", "id": long_id, "name": [{"family": family}]},
        headers=FHIR_JSON,
    )
    assert response.status_code in (200, 201)
    with masking.client("pseudo-app") as client:
        answer = client.get(f"/Patient/{long_id}")
        search = client.get("/Patient", params={"family": family})
        again = client.get("/Patient", params={"family": family})  # nothing of a failure is kept for reuse
    for failed in (answer, search, again):
        assert failed.status_code == 500
        assert failed.json()["resourceType"] == "OperationOutcome"
        assert family not in failed.text
        assert long_id not in failed.text


def reidentify(client: httpx.Client, *pseudonyms: str) -> httpx.Response:
    parameters = {
        "resourceType": "Parameters",
        "parameter": [{"name": "pseudonym", "valueString": value} for value in pseudonyms],
    }
    return client.post("/$reidentify", json=parameters, headers=FHIR_JSON)


def results(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    return [
        {part["name"]: part["valueString"] for part in result["part"]}
        for result in response.json()["parameter"]
    ]


def test_reversible_pseudonyms_are_reversed_for_the_authorised_role(
    masking: MaskingSetup, patient_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with masking.client("pseudo-app") as client:
        masked = client.get(f"/Patient/{patient_id}").json()
    pseudonym = masked["id"]
    assert pseudonym.startswith("k2.")
    assert patient_id not in pseudonym
    tampered = pseudonym[:-1] + ("a" if pseudonym[-1] != "a" else "b")
    with (
        caplog.at_level("INFO", logger="fhirwall.audit"),
        masking.client("console", ("privacy-officer",)) as client,
    ):
        answer = results(reidentify(client, pseudonym, f"Patient/{pseudonym}", tampered))
    assert answer[0]["original"] == patient_id
    assert answer[1]["original"] == f"Patient/{patient_id}"
    assert "error" in answer[2]
    assert "original" not in answer[2]
    audit = [record for record in caplog.records if getattr(record, "fhirwall_event", None) == "reidentify"]
    assert [record.outcome for record in audit] == ["permitted"]  # type: ignore[attr-defined]
    assert audit[0].pseudonyms == 3  # type: ignore[attr-defined]
    logged = " ".join(str(value) for value in vars(audit[0]).values())
    assert patient_id not in logged
    assert pseudonym not in logged


def test_rotation_keeps_old_pseudonyms_reversible(masking: MaskingSetup, patient_id: str) -> None:
    from masking.pseudonyms import encode_id

    old = encode_id(patient_id, "k1", OLD_PSEUDONYM_KEY)
    with masking.client("console", ("privacy-officer",)) as client:
        assert results(reidentify(client, old))[0]["original"] == patient_id


@pytest.mark.parametrize(("client_id", "roles"), [("pseudo-app", ()), ("pseudo-app", ("clinician",))])
def test_nobody_else_can_reidentify(
    masking: MaskingSetup,
    patient_id: str,
    client_id: str,
    roles: tuple[str, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with masking.client("pseudo-app") as client:
        pseudonym = client.get(f"/Patient/{patient_id}").json()["id"]
    with caplog.at_level("INFO", logger="fhirwall.audit"), masking.client(client_id, roles) as client:
        response = reidentify(client, pseudonym)
    assert response.status_code == 403
    assert patient_id not in response.text
    assert [getattr(r, "outcome", None) for r in caplog.records if r.name == "fhirwall.audit"] == ["denied"]


def test_reidentify_needs_a_parameters_body(masking: MaskingSetup) -> None:
    with masking.client("console", ("privacy-officer",)) as client:
        assert (
            client.post("/$reidentify", json={"resourceType": "Patient"}, headers=FHIR_JSON).status_code
            == 400
        )
        assert client.get("/$reidentify").status_code == 400


def test_bad_profile_configuration_fails_at_start_with_every_problem(
    upstream: SeededUpstream, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nrules:\n"
        "  - {path: Patient.nmae, method: redact}\n"
        "  - {path: Patient.id, method: scramble}\n"
    )
    settings = make_settings(
        upstream.base_url,
        **{
            "masking.profiles": {"bad": {"file": str(bad)}, "sh": {"builtin": "safe-harbor"}},
            "masking.default_profile": "bad",
        },
    )
    with pytest.raises(ConfigError) as caught:
        MaskingPolicy.from_settings(settings.masking, environ={})
    paths = [path for path, _ in caught.value.problems]
    assert any("rules.0.path" in path for path in paths)
    assert any("rules.1.method" in path for path in paths)
    assert any(path.startswith("masking.profiles.sh") for path in paths)  # its keys are missing
