"""Two replicas sharing one real Redis: revocation through the admin API takes effect on the other replica
(401), and the two-person review of a break-glass request refuses self-approval, non-approvers, reused and
expired approvals — every step audited."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from proxy.audit.chain import read_events
from proxy.auth.dev_issuer import DevIssuer, load_or_create_key
from proxy.demo_rights import departments_bundle
from proxy.embedded_upstream import EmbeddedUpstream
from tests.conftest import REPO_ROOT, RedisServer, RunningProxy, free_port, make_settings

POLICY = REPO_ROOT / "examples" / "access" / "hospital-policy.yaml"
FHIR_JSON = {"content-type": "application/fhir+json"}
AUDIT_KEY_ENV = "FHIRWALL_TEST_ADMIN_AUDIT_KEY"
BREAK_GLASS: dict[str, Any] = {"extensions": {"ihe_iua": {"purpose_of_use": ["BTG"]}}}


@dataclass
class Replica:
    proxy: RunningProxy
    issuer: DevIssuer
    audit_log: Path

    def client(
        self, practitioner: str | None = None, *, client_id: str = "ward-app", **claims: Any
    ) -> httpx.Client:
        payload: dict[str, Any] = {"sub": f"user-{practitioner or client_id}", "client_id": client_id}
        payload["scope"] = "user/*.cruds" if practitioner else "system/*.rs"
        if practitioner:
            payload["fhirUser"] = f"Practitioner/{practitioner}"
        token = self.issuer.mint({**payload, **claims}, audience=self.proxy.base_url)
        return httpx.Client(
            base_url=self.proxy.root, headers={"authorization": f"Bearer {token}"}, timeout=30
        )


@dataclass
class Cluster:
    a: Replica
    b: Replica
    redis: RedisServer


def start_replica(upstream: EmbeddedUpstream, redis_url: str, policy: Path, folder: Path) -> Replica:
    port = free_port()
    issuer_url = f"http://127.0.0.1:{port}/_dev"
    key_file = folder / f"issuer-{port}.pem"
    audit_log = folder / f"audit-{port}.jsonl"
    settings = make_settings(
        upstream.base_url,
        **{
            "server.port": port,
            "auth.dev_issuer": {"enabled": True, "key_file": str(key_file), "issuer": issuer_url},
            "policy.hide_existence": False,
            "access.policy_file": str(policy),
            "redis.url": redis_url,
            "audit.log_file": str(audit_log),
            "audit.log_key_env": AUDIT_KEY_ENV,
        },
    )
    proxy = RunningProxy(settings).start()
    return Replica(proxy, DevIssuer(load_or_create_key(key_file), issuer_url), audit_log)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    patch = pytest.MonkeyPatch()
    patch.setenv(AUDIT_KEY_ENV, "test-admin-audit-key")
    policy_data = yaml.safe_load(POLICY.read_text())
    policy_data["revocation"] = {"refresh_seconds": 0.5}
    policy_data["sensitive"]["many-patients"]["patients_over"] = 3  # the scenario has four patients
    policy = folder / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_data))
    redis_server = RedisServer().start()
    upstream = EmbeddedUpstream(free_port())
    upstream.start()
    replicas: list[Replica] = []
    try:
        httpx.post(
            upstream.base_url, json=departments_bundle(), headers=FHIR_JSON, timeout=30
        ).raise_for_status()
        replicas = [start_replica(upstream, redis_server.url, policy, folder) for _ in range(2)]
        yield Cluster(replicas[0], replicas[1], redis_server)
    finally:
        for replica in replicas:
            replica.proxy.stop()
        upstream.stop()
        redis_server.stop()
        patch.undo()


def wait_for_status(client: httpx.Client, path: str, status: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (answer := client.get(path)).status_code != status:
        assert time.monotonic() < deadline, f"{path} answered {answer.status_code}, not {status}"
        time.sleep(0.1)


def test_revocation_on_one_replica_takes_effect_on_the_other(cluster: Cluster) -> None:
    path = "/fhir/Patient/pt-onco-recent"
    with cluster.b.client("dr-onco") as onco_b, cluster.a.client(client_id="hr-system") as hr_a:
        assert onco_b.get(path).status_code == 200
        revoked = hr_a.post(
            "/admin/revocations", json={"kind": "user", "value": "user-dr-onco", "reason": "left"}
        )
        assert revoked.status_code == 201, revoked.text
        wait_for_status(onco_b, path, 401, within=3.0)
        assert "revoked" in onco_b.get(path).json()["issue"][0]["diagnostics"]
        with cluster.a.client("dr-onco") as onco_a:
            assert onco_a.get(path).status_code == 401
            assert (
                onco_a.post(
                    "/admin/approval-requests", json={"rule": "break-glass", "reason": "x"}
                ).status_code
                == 401
            )
        listed = hr_a.get("/admin/revocations").json()["revocations"]
        assert [(r["kind"], r["value"]) for r in listed] == [("user", "user-dr-onco")]
        assert hr_a.delete("/admin/revocations/user/user-dr-onco").status_code == 204
        wait_for_status(onco_b, path, 200, within=3.0)
    with cluster.a.client("dr-heart") as heart:
        refused = heart.post(
            "/admin/revocations", json={"kind": "user", "value": "user-dr-onco", "reason": "x"}
        )
        assert refused.status_code == 403  # revoking needs a role that administers revocations


def request_approval(client: httpx.Client, rule: str = "break-glass") -> str:
    created = client.post("/admin/approval-requests", json={"rule": rule, "reason": "patient collapsed"})
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "pending"
    return str(created.json()["id"])


def test_two_person_review_of_break_glass(cluster: Cluster) -> None:
    path = "/fhir/Patient/pt-onco-recent"  # outside dr-heart's department
    with (
        cluster.a.client("dr-heart", **BREAK_GLASS) as heart,
        cluster.b.client("dr-onco") as onco,
        cluster.b.client("privacy-officer") as officer,
    ):
        refused = heart.get(path)
        assert refused.status_code == 403
        assert "needs an approval (break-glass)" in refused.json()["issue"][0]["diagnostics"]
        approval = request_approval(heart)
        assert heart.post(f"/admin/approval-requests/{approval}/approve").status_code == 403  # self-approval
        assert onco.post(f"/admin/approval-requests/{approval}/approve").status_code == 403  # not an approver
        assert heart.get(path, headers={"x-fhirwall-approval": approval}).status_code == 403  # still pending
        granted = officer.post(f"/admin/approval-requests/{approval}/approve", json={"minutes": 30})
        assert granted.status_code == 200, granted.text
        assert granted.json()["status"] == "approved"
        assert (
            heart.get(path, headers={"x-fhirwall-approval": approval}).status_code == 200
        )  # isolation lifted
        reused = heart.get(path, headers={"x-fhirwall-approval": approval})
        assert reused.status_code == 403
        assert "used" in reused.json()["issue"][0]["diagnostics"]
        with cluster.a.client("dr-onco", **BREAK_GLASS) as other:  # another requester cannot use it
            foreign = request_approval(heart)
            officer.post(f"/admin/approval-requests/{foreign}/approve")
            assert (
                other.get(
                    "/fhir/Patient/pt-cardio-inpatient", headers={"x-fhirwall-approval": foreign}
                ).status_code
                == 403
            )
        expired = request_approval(heart)
        assert officer.post(f"/admin/approval-requests/{expired}/approve").status_code == 200
        age_approval(cluster.redis, expired)
        stale = heart.get(path, headers={"x-fhirwall-approval": expired})
        assert stale.status_code == 403
        assert "expired" in stale.json()["issue"][0]["diagnostics"]
    logged = b"".join(
        orjson.dumps(event) for replica in (cluster.a, cluster.b) for event in read_events(replica.audit_log)
    )
    for fact in (
        b"admin-approval-request",
        b"admin-approval-grant",
        f"approval {approval} used for break-glass".encode(),
    ):
        assert fact in logged, fact


def test_an_answer_with_too_many_patients_needs_an_approval(cluster: Cluster) -> None:
    with cluster.a.client("records-clerk") as clerk, cluster.b.client("privacy-officer") as officer:
        assert clerk.get("/fhir/Patient", params={"_count": 3}).status_code == 200
        refused = clerk.get("/fhir/Patient", params={"_count": 50})
        assert refused.status_code == 403
        assert "many-patients" in refused.json()["issue"][0]["diagnostics"]
        assert "entry" not in refused.json()  # the answer is withheld
        approval = request_approval(clerk, "many-patients")
        assert officer.post(f"/admin/approval-requests/{approval}/approve").status_code == 200
        answer = clerk.get("/fhir/Patient", params={"_count": 50}, headers={"x-fhirwall-approval": approval})
        assert answer.status_code == 200
        assert len(answer.json()["entry"]) >= 4


def age_approval(server: RedisServer, approval: str) -> None:
    """Let the approval's validity pass (as if its minutes were over)."""
    client = redis.Redis.from_url(server.url)
    key = f"fhirwall:approval:{approval}"
    raw = client.get(key)
    assert isinstance(raw, bytes)
    stored = orjson.loads(raw)
    stored["expires_at"] = time.time() - 1
    client.set(key, orjson.dumps(stored), keepttl=True)
    client.close()
