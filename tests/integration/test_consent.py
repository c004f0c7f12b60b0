"""Patient consent through the proxy, against Consents stored in the real upstream (and a real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.auth.dev_issuer import DevIssuer, load_or_create_key
from tests.conftest import RedisServer, RunningProxy, SeededUpstream, make_settings

FHIR_JSON = {"content-type": "application/fhir+json"}
PSY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}
CONSENT_SCOPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
}
CONSENT_CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]
BTG = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG"}]


@dataclass
class Person:
    """A fresh patient with two Observations (one labelled PSY) in the upstream."""

    patient: str
    observation: str
    psy_observation: str


def create(upstream: SeededUpstream, resource: dict[str, Any]) -> str:
    response = httpx.post(f"{upstream.base_url}/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def new_person(upstream: SeededUpstream) -> Person:
    patient = create(
        upstream, {"resourceType": "Patient", "name": [{"family": "Consent" + uuid.uuid4().hex[:6]}]}
    )

    def observation(**extra: Any) -> str:
        return create(
            upstream,
            {
                "resourceType": "Observation",
                "status": "final",
                "subject": {"reference": f"Patient/{patient}"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "effectiveDateTime": "2025-03-01",
                **extra,
            },
        )

    return Person(patient, observation(), observation(meta={"security": [PSY]}))


def consent(
    patient: str,
    kind: str,
    *,
    actor: str | None = None,
    nested: list[dict[str, Any]] | None = None,
    labels: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": kind}
    if actor:
        provision["actor"] = [{"reference": {"reference": actor}}]
    if labels:
        provision["securityLabel"] = labels
    if nested:
        provision["provision"] = nested
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": CONSENT_SCOPE,
        "category": CONSENT_CATEGORY,
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": "2025-01-01T00:00:00Z",
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": provision,
    }


def refuse_practitioner(upstream: SeededUpstream, patient: str, practitioner: str) -> None:
    """The patient's Consent: permit, except for ``practitioner``."""
    refused = {"type": "deny", "actor": [{"reference": {"reference": practitioner}}]}
    create(upstream, consent(patient, "permit", nested=[refused]))


@dataclass
class ConsentSetup:
    upstream: SeededUpstream
    issuer: DevIssuer
    proxies: list[RunningProxy]

    def token(self, proxy: RunningProxy, fhir_user: str, **claims: Any) -> str:
        payload = {
            "sub": fhir_user,
            "client_id": "ehr",
            "scope": "user/*.cruds",
            "fhirUser": fhir_user,
            **claims,
        }
        return self.issuer.mint(payload, audience=proxy.base_url)

    def get(
        self, path: str, fhir_user: str = "Practitioner/doc-1", replica: int = 0, **claims: Any
    ) -> httpx.Response:
        proxy = self.proxies[replica]
        headers = {"authorization": f"Bearer {self.token(proxy, fhir_user, **claims)}"}
        return httpx.get(proxy.base_url + path, headers=headers, timeout=30)


def consent_proxies(
    upstream: SeededUpstream,
    tmp_path: Path,
    run_proxy: Callable[..., RunningProxy],
    count: int = 1,
    redis_url: str | None = None,
    extra: dict[str, Any] | None = None,
) -> ConsentSetup:
    key_file = tmp_path / "dev-key.pem"
    issuer_url = "http://127.0.0.1:1/_dev"
    overrides: dict[str, Any] = {
        "auth.dev_issuer": {"enabled": True, "key_file": str(key_file), "issuer": issuer_url},
        "consent.enabled": True,
        "consent.break_glass": {
            "eligible_roles": ["emergency-physician"],
            "justification_claim": "btg_reason",
        },
        **(extra or {}),
    }
    if redis_url:
        overrides |= {"redis.url": redis_url, "consent.cache": "redis"}
    proxies = [run_proxy(make_settings(upstream.base_url, **overrides)) for _ in range(count)]
    return ConsentSetup(upstream, DevIssuer(load_or_create_key(key_file), issuer_url), proxies)


@pytest.fixture
def setup(upstream: SeededUpstream, tmp_path: Path, run_proxy: Callable[..., RunningProxy]) -> ConsentSetup:
    return consent_proxies(upstream, tmp_path, run_proxy)


def ids(response: httpx.Response) -> set[str]:
    return {entry["resource"]["id"] for entry in response.json().get("entry", [])}


def test_no_consent_uses_the_implicit_policy_and_withholds_sensitive_data(setup: ConsentSetup) -> None:
    person = new_person(setup.upstream)
    assert setup.get(f"/Observation/{person.observation}").status_code == 200
    assert setup.get(f"/Observation/{person.psy_observation}").status_code == 404
    search = setup.get(f"/Observation?patient={person.patient}&_total=accurate")
    assert ids(search) == {person.observation}
    assert "total" not in search.json()


def test_a_patient_who_denies_one_practitioner(setup: ConsentSetup) -> None:
    person = new_person(setup.upstream)
    refuse_practitioner(setup.upstream, person.patient, "Practitioner/doc-denied")
    assert setup.get(f"/Observation/{person.observation}", "Practitioner/doc-ok").status_code == 200
    denied = setup.get(f"/Observation/{person.observation}", "Practitioner/doc-denied")
    assert denied.status_code == 404
    search = setup.get(f"/Observation?patient={person.patient}", "Practitioner/doc-denied")
    assert ids(search) == set()
    included = setup.get(
        f"/Patient?_id={person.patient}&_revinclude=Observation:subject", "Practitioner/doc-denied"
    )
    assert person.observation not in included.text


def test_opt_out_patient_and_break_glass(setup: ConsentSetup, caplog: pytest.LogCaptureFixture) -> None:
    person = new_person(setup.upstream)
    create(setup.upstream, consent(person.patient, "deny"))
    assert setup.get(f"/Observation/{person.observation}").status_code == 404
    extensions = {"ihe_iua": {"purpose_of_use": BTG}}
    not_eligible = setup.get(
        f"/Observation/{person.observation}", extensions=extensions, btg_reason="unconscious"
    )
    assert not_eligible.status_code == 404
    no_reason = setup.get(
        f"/Observation/{person.observation}", extensions=extensions, roles=["emergency-physician"]
    )
    assert no_reason.status_code == 404
    with caplog.at_level("WARNING", logger="fhirwall.consent"):
        glass = setup.get(
            f"/Observation/{person.observation}",
            extensions=extensions,
            roles=["emergency-physician"],
            btg_reason="unconscious in ED",
        )
    assert glass.status_code == 200
    assert any("BREAK-GLASS" in record.message for record in caplog.records)
    assert person.patient not in caplog.text  # the audit line carries no patient identifiers


def test_consent_can_release_sensitive_data_to_one_practitioner(setup: ConsentSetup) -> None:
    person = new_person(setup.upstream)
    create(
        setup.upstream,
        consent(
            person.patient,
            "permit",
            nested=[
                {
                    "type": "permit",
                    "actor": [{"reference": {"reference": "Practitioner/psychiatrist"}}],
                    "securityLabel": [PSY],
                }
            ],
        ),
    )
    assert setup.get(f"/Observation/{person.psy_observation}", "Practitioner/psychiatrist").status_code == 200
    assert setup.get(f"/Observation/{person.psy_observation}", "Practitioner/other").status_code == 404


def test_consent_written_through_one_replica_applies_at_once_on_another(
    upstream: SeededUpstream,
    tmp_path: Path,
    run_proxy: Callable[..., RunningProxy],
    redis_server: RedisServer,
) -> None:
    setup = consent_proxies(upstream, tmp_path, run_proxy, count=2, redis_url=redis_server.url)
    person = new_person(upstream)
    for replica in (0, 1):  # both replicas have now cached "no consent on file"
        assert setup.get(f"/Observation/{person.observation}", replica=replica).status_code == 200
    manager = setup.token(setup.proxies[0], "Practitioner/privacy-officer", roles=["consent-manager"])
    written = httpx.post(
        setup.proxies[0].base_url + "/Consent",
        json=consent(person.patient, "deny"),
        headers={**FHIR_JSON, "authorization": f"Bearer {manager}"},
    )
    assert written.status_code == 201, written.text
    assert setup.get(f"/Observation/{person.observation}", replica=1).status_code == 404
    assert setup.get(f"/Observation/{person.observation}", replica=0).status_code == 404


def test_redis_outage_denies_and_says_why(
    upstream: SeededUpstream,
    tmp_path: Path,
    run_proxy: Callable[..., RunningProxy],
    redis_server: RedisServer,
) -> None:
    setup = consent_proxies(upstream, tmp_path, run_proxy, redis_url=redis_server.url)
    person = new_person(upstream)
    assert setup.get(f"/Observation/{person.observation}").status_code == 200
    redis_server.stop()
    response = setup.get(f"/Observation/{person.observation}")
    assert response.status_code == 503
    assert "consent" in response.json()["issue"][0]["diagnostics"]
    search = setup.get(f"/Observation?patient={person.patient}")
    assert search.status_code == 503


def test_unreadable_consent_denies(setup: ConsentSetup) -> None:
    person = new_person(setup.upstream)
    broken = consent(person.patient, "permit")
    broken["provision"]["period"] = {"start": "not-a-date"}
    create(setup.upstream, broken)
    response = setup.get(f"/Observation/{person.observation}")
    assert response.status_code == 503
    assert response.json()["resourceType"] == "OperationOutcome"


def test_patients_may_write_their_own_consent_only_where_allowed(
    upstream: SeededUpstream, tmp_path: Path, run_proxy: Callable[..., RunningProxy]
) -> None:
    person, other = new_person(upstream), new_person(upstream)
    for allowed in (False, True):
        options: dict[str, Any] = {"policy.patients_write_own_consent": allowed}
        setup = consent_proxies(upstream, tmp_path, run_proxy, extra=options)
        proxy = setup.proxies[0]
        token = setup.issuer.mint(
            {
                "sub": "patient-user",
                "client_id": "patient-app",
                "scope": "patient/*.cruds",
                "patient": person.patient,
                "fhirUser": f"Patient/{person.patient}",
            },
            audience=proxy.base_url,
        )
        headers = {**FHIR_JSON, "authorization": f"Bearer {token}"}
        own = httpx.post(proxy.base_url + "/Consent", json=consent(person.patient, "deny"), headers=headers)
        foreign = httpx.post(
            proxy.base_url + "/Consent", json=consent(other.patient, "deny"), headers=headers
        )
        assert own.status_code == (201 if allowed else 403), own.text
        assert foreign.status_code == 403
    assert (
        setup.get(f"/Observation/{person.observation}").status_code == 404
    )  # the patient's opt-out took effect
    assert setup.get(f"/Observation/{other.observation}").status_code == 200


def test_care_team_and_organisation_actors_are_resolved_from_the_server(setup: ConsentSetup) -> None:
    person = new_person(setup.upstream)
    practitioner = "Practitioner/" + create(setup.upstream, {"resourceType": "Practitioner"})
    colleague = "Practitioner/" + create(setup.upstream, {"resourceType": "Practitioner"})
    organization = "Organization/" + create(
        setup.upstream, {"resourceType": "Organization", "name": "Ward 7"}
    )
    team = "CareTeam/" + create(
        setup.upstream,
        {
            "resourceType": "CareTeam",
            "status": "active",
            "participant": [{"member": {"reference": practitioner}}],
        },
    )
    create(
        setup.upstream,
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": colleague},
            "organization": {"reference": organization},
        },
    )
    create(
        setup.upstream,
        consent(
            person.patient,
            "permit",
            nested=[
                {"type": "deny", "actor": [{"reference": {"reference": team}}]},
                {"type": "deny", "actor": [{"reference": {"reference": organization}}]},
            ],
        ),
    )
    assert setup.get(f"/Observation/{person.observation}", practitioner).status_code == 404  # via the team
    assert setup.get(f"/Observation/{person.observation}", colleague).status_code == 404  # via the role's org
    assert setup.get(f"/Observation/{person.observation}", "Practitioner/someone-else").status_code == 200


def test_searches_decide_once_per_patient_but_labelled_data_is_still_checked(setup: ConsentSetup) -> None:
    person = new_person(setup.upstream)
    refuse_practitioner(setup.upstream, person.patient, "Practitioner/doc-denied")
    allowed = setup.get(f"/Observation?patient={person.patient}", "Practitioner/doc-ok")
    assert ids(allowed) == {person.observation}  # the PSY-labelled one still needs an explicit permit
    denied = setup.get(f"/Observation?patient={person.patient}", "Practitioner/doc-denied")
    assert ids(denied) == set()
    own = setup.issuer.mint(
        {
            "sub": "p",
            "client_id": "app",
            "scope": "patient/*.rs",
            "patient": person.patient,
            "fhirUser": f"Patient/{person.patient}",
        },
        audience=setup.proxies[0].base_url,
    )
    mine = httpx.get(f"{setup.proxies[0].base_url}/Observation", headers={"authorization": f"Bearer {own}"})
    assert ids(mine) == {person.observation, person.psy_observation}


def test_a_clinicians_one_patient_pages_are_sealed_and_still_checked(setup: ConsentSetup) -> None:
    """``user/*`` sees every page whole: it is proved for consent and its links sealed in one pass."""
    person = new_person(setup.upstream)
    extra = {
        setup.get(f"/Observation/{person.observation}").json()["id"],
        *(
            create(
                setup.upstream,
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "subject": {"reference": f"Patient/{person.patient}"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                },
            )
            for _ in range(2)
        ),
    }
    seen: set[str] = set()
    url: str | None = f"/Observation?patient={person.patient}&_count=2&_total=accurate"
    pages = 0
    while url is not None and pages < 5:
        page = setup.get(url)
        assert page.status_code == 200
        document = page.json()
        assert "total" not in document  # consent may withhold entries on other pages
        seen |= ids(page)
        links = {link["relation"]: link["url"] for link in document.get("link", [])}
        base = setup.proxies[0].base_url
        assert all(link.startswith(base + "/_page?") for link in links.values())  # sealed, never upstream
        url = links["next"].removeprefix(base) if "next" in links else None
        pages += 1
    assert seen == extra  # every page checked: the PSY-labelled one withheld, the others all there
