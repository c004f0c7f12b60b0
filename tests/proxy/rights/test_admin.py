"""The administrative API with real tokens (dev issuer), real role resolution and real stores: authentication,
rights, revocation and approval flows, validation, and the audit events of every mutation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Mount

from proxy.auth.authenticator import Authenticator
from proxy.auth.dev_issuer import DevIssuer, dev_trusted_issuer, load_or_create_key
from proxy.auth.principal import Principal
from proxy.middleware import RequestContextMiddleware
from proxy.rights.admin import AdminApp, AdminEvent
from proxy.rights.approvals import ApprovalStore, MemoryApprovalStore, RedisApprovalStore
from proxy.rights.attributes import AttributeResolver
from proxy.rights.grants import CompiledPolicy
from proxy.rights.model import parse_access_policy
from proxy.rights.revocation import FileRevocationStore, RedisRevocationStore, RevocationList, RevocationStore
from proxy.settings import AuthSettings, UpstreamSettings
from proxy.upstream import UpstreamRouter
from tests.conftest import RedisServer
from tests.proxy.rights.support import redis_client

BASE = "https://fhir.example.org/fhir"
ISSUER_URL = "https://fhir.example.org/_dev"
REASON = "badge reported stolen on ward 4"
POLICY = parse_access_policy(
    {
        "roles": {
            "clinician": {"permissions": [{"resources": ["Patient"], "operations": ["read"]}]},
            "privacy-officer": {"approves": ["bulk-export"]},
            "chief": {"approves": ["*"]},
            "security-admin": {"administers": ["revocations"]},
        },
        "attributes": {"practitioner_roles": False},
        "sensitive": {
            "bulk-export": {"operations": ["export"]},
            "reidentify": {"operations": ["reidentify"]},
        },
    }
)


@dataclass
class Admin:
    """The admin API mounted under /admin behind the request-id middleware, and what it reported."""

    issuer: DevIssuer
    authenticator: Authenticator
    revocations: RevocationStore
    revocation_list: RevocationList | None
    approvals: ApprovalStore
    events: list[AdminEvent] = field(default_factory=list)
    app: Starlette = field(init=False)

    def __post_init__(self) -> None:
        admin = AdminApp(
            authenticate=self.authenticator.authenticate,
            public_base=_public_base,
            attributes=AttributeResolver(POLICY, _router(), 1_000_000),
            compiled=CompiledPolicy(POLICY),
            revocations=self.revocations,
            revocation_list=self.revocation_list,
            approvals=self.approvals,
            policy=POLICY,
            audit=self.events.append,
        )
        self.app = Starlette(
            routes=[Mount("/admin", app=admin)], middleware=[Middleware(RequestContextMiddleware)]
        )

    def token(
        self,
        subject: str,
        *roles: str,
        fhir_user: str | None = None,
        client_id: str = "ehr",
        jti: str | None = None,
    ) -> dict[str, str]:
        """Authorization headers with a real signed token."""
        claims: dict[str, Any] = {"sub": subject, "client_id": client_id, "scope": "user/*.rs"}
        if roles:
            claims["roles"] = list(roles)
        if fhir_user:
            claims["fhirUser"] = fhir_user
        if jti:
            claims["jti"] = jti
        return {"authorization": f"Bearer {self.issuer.mint(claims, audience=BASE)}"}

    async def principal(self, headers: dict[str, str]) -> Principal:
        return await self.authenticator.authenticate(headers["authorization"], BASE)

    @asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy.test/admin") as client:
            yield client


def _public_base(request: Request) -> str:
    return BASE


def _router() -> UpstreamRouter:
    """Never called: the policy looks nothing up (practitioner_roles: false)."""
    return UpstreamRouter([UpstreamSettings(name="default", url="http://127.0.0.1:9/fhir")])


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> DevIssuer:
    return DevIssuer(load_or_create_key(tmp_path_factory.mktemp("issuer") / "key.pem"), ISSUER_URL)


def authenticator(issuer: DevIssuer) -> Authenticator:
    return Authenticator(AuthSettings(), {issuer.issuer: dev_trusted_issuer(issuer)}, None)


@pytest.fixture
def admin(issuer: DevIssuer, tmp_path: Path) -> Admin:
    store = FileRevocationStore(tmp_path / "revocations.jsonl")
    return Admin(
        issuer,
        authenticator(issuer),
        store,
        RevocationList(store, 2.0),
        MemoryApprovalStore(POLICY.approvals),
    )


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


def diagnostics(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    text: str = body["issue"][0]["diagnostics"]
    return text


# -- authentication and rights -----------------------------------------------------------------------------


def test_callers_need_a_valid_token(admin: Admin) -> None:
    async def scenario() -> None:
        async with admin.client() as http:
            missing = await http.post("/revocations", json={"kind": "user", "value": "x", "reason": "r"})
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"].startswith("Bearer")
            diagnostics(missing)
            forged = await http.get("/revocations", headers={"authorization": "Bearer eyJhbGciOi.e30.c2ln"})
            assert forged.status_code == 401
            anonymous = await http.post("/approval-requests", json={"rule": "bulk-export", "reason": "r"})
            assert anonymous.status_code == 401
        assert [(event.action, event.status, event.subject) for event in admin.events] == [
            ("revoke", 401, None),
            ("approval-request", 401, None),
        ]

    run(scenario())


def test_revocations_need_the_administrative_right(admin: Admin) -> None:
    async def scenario() -> None:
        clinician = admin.token("dr-1", "clinician", "chief")
        async with admin.client() as http:
            body = {"kind": "user", "value": "nurse-9", "reason": REASON}
            refused = await http.post("/revocations", json=body, headers=clinician)
            assert refused.status_code == 403
            assert "do not administer revocations" in diagnostics(refused)
            assert (await http.get("/revocations", headers=clinician)).status_code == 403
            assert (await http.delete("/revocations/user/nurse-9", headers=clinician)).status_code == 403
        assert await admin.revocations.all() == []
        assert [(e.action, e.status, e.subject, e.target, e.target_value) for e in admin.events] == [
            ("revoke", 403, "dr-1", None, None),
            ("lift-revocation", 403, "dr-1", "user", "nurse-9"),
        ]

    run(scenario())


def test_unknown_paths_and_methods(admin: Admin) -> None:
    async def scenario() -> None:
        async with admin.client() as http:
            headers = admin.token("sec-1", "security-admin")
            assert (await http.get("/nothing-here", headers=headers)).status_code == 404
            wrong = await http.put("/revocations", headers=headers)
            assert wrong.status_code == 405
            diagnostics(wrong)
            assert (await http.delete("/revocations/group/x", headers=headers)).status_code == 404

    run(scenario())


# -- revocations -------------------------------------------------------------------------------------------


def test_revoke_list_and_lift_a_user(admin: Admin) -> None:
    async def scenario() -> None:
        security = admin.token("sec-1", "security-admin", fhir_user="Practitioner/sec")
        nurse = admin.token("nurse-7", fhir_user="Practitioner/7")
        request = {"rule": "bulk-export", "reason": "registry"}
        async with admin.client() as http:
            assert (await http.post("/approval-requests", json=request, headers=nurse)).status_code == 201
            until = "2999-01-01T00:00:00Z"
            body = {"kind": "user", "value": "Practitioner/7", "reason": REASON, "until": until}
            created = await http.post("/revocations", json=body, headers=security)
            assert created.status_code == 201
            assert created.headers["content-type"] == "application/json"
            revocation = created.json()
            assert revocation["kind"] == "user"
            assert revocation["value"] == "Practitioner/7"
            assert revocation["reason"] == REASON
            assert revocation["revoked_by"] == "Practitioner/sec"
            assert revocation["until"] == until
            assert revocation["active"] is True

            listed = (await http.get("/revocations", headers=security)).json()["revocations"]
            assert listed == [revocation]

            revoked = await http.post("/approval-requests", json=request, headers=nurse)
            assert revoked.status_code == 401
            assert "revoked" in diagnostics(revoked)

            path = "/revocations/user/" + quote("Practitioner/7", safe="")
            assert (await http.delete(path, headers=security)).status_code == 204
            assert (await http.post("/approval-requests", json=request, headers=nurse)).status_code == 201
            again = await http.delete(path, headers=security)
            assert again.status_code == 404
        revoke = next(event for event in admin.events if event.action == "revoke")
        assert (revoke.status, revoke.target, revoke.target_value) == (201, "user", "Practitioner/7")
        assert (revoke.subject, revoke.fhir_user, revoke.client_id) == ("sec-1", "Practitioner/sec", "ehr")
        assert revoke.issuer == ISSUER_URL
        assert revoke.request_id
        lifts = [
            (event.status, event.target_value) for event in admin.events if event.action == "lift-revocation"
        ]
        assert lifts == [(204, "Practitioner/7"), (404, "Practitioner/7")]
        assert all(REASON not in repr(event) for event in admin.events)

    run(scenario())


def test_revoking_one_token_leaves_the_users_other_tokens(admin: Admin) -> None:
    async def scenario() -> None:
        security = admin.token("sec-1", "security-admin")
        leaked = admin.token("nurse-7", jti="leaked-jti")
        fresh = admin.token("nurse-7")
        request = {"rule": "bulk-export", "reason": "registry"}
        async with admin.client() as http:
            body = {"kind": "token", "value": "leaked-jti", "reason": "pasted in a chat"}
            assert (await http.post("/revocations", json=body, headers=security)).status_code == 201
            assert (await http.post("/approval-requests", json=request, headers=leaked)).status_code == 401
            assert (await http.post("/approval-requests", json=request, headers=fresh)).status_code == 201

    run(scenario())


def test_revoked_administrator_is_refused(admin: Admin) -> None:
    async def scenario() -> None:
        security = admin.token("sec-1", "security-admin")
        async with admin.client() as http:
            body = {"kind": "user", "value": "sec-1", "reason": "left"}
            assert (await http.post("/revocations", json=body, headers=security)).status_code == 201
            assert (await http.get("/revocations", headers=security)).status_code == 401
            refused = await http.delete("/revocations/user/sec-1", headers=security)
            assert refused.status_code == 401
        assert admin.events[-1].subject == "sec-1"
        assert admin.events[-1].status == 401

    run(scenario())


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"kind": "group", "value": "x", "reason": "r"}, "kind must be one of user, client, token"),
        ({"kind": "user", "value": "", "reason": "r"}, "value must be a non-empty string"),
        ({"kind": "user", "value": "x"}, "reason must be a non-empty string"),
        ({"kind": "user", "value": "x", "reason": "r", "until": "2001-01-01"}, "until must be in the future"),
        ({"kind": "user", "value": "x", "reason": "r", "until": "next week"}, "until is not an ISO 8601"),
        ({"kind": "user", "value": "x", "reason": "r", "until": True}, "until must be an ISO 8601"),
        ({"kind": "user", "value": "x", "reason": "r", "note": 1}, "unknown fields ['note']"),
        (["user", "x"], "the body must be a JSON object"),
    ],
)
def test_revocation_requests_are_validated(admin: Admin, body: Any, problem: str) -> None:
    async def scenario() -> None:
        async with admin.client() as http:
            headers = admin.token("sec-1", "security-admin")
            answer = await http.post("/revocations", json=body, headers=headers)
            assert answer.status_code == 400
            assert problem in diagnostics(answer)
        assert await admin.revocations.all() == []

    run(scenario())


def test_bodies_must_be_small_json(admin: Admin) -> None:
    async def scenario() -> None:
        headers = admin.token("sec-1", "security-admin")
        async with admin.client() as http:
            malformed = await http.post(
                "/revocations", content=b"{", headers={**headers, "content-type": "application/json"}
            )
            assert malformed.status_code == 400
            form = await http.post("/revocations", data={"kind": "user"}, headers=headers)
            assert form.status_code == 415
            huge = {"kind": "user", "value": "x", "reason": "r" * 20_000}
            assert (await http.post("/revocations", json=huge, headers=headers)).status_code == 413

    run(scenario())


def test_epoch_until_and_expiry_are_reported(admin: Admin) -> None:
    async def scenario() -> None:
        headers = admin.token("sec-1", "security-admin")
        async with admin.client() as http:
            body = {"kind": "client", "value": "kiosk", "reason": "r", "until": time.time() + 0.3}
            assert (await http.post("/revocations", json=body, headers=headers)).status_code == 201
            await asyncio.sleep(0.4)
            (listed,) = (await http.get("/revocations", headers=headers)).json()["revocations"]
            assert listed["active"] is False

    run(scenario())


def test_unreadable_revocation_list_fails_closed(issuer: DevIssuer, tmp_path: Path) -> None:
    broken = FileRevocationStore(tmp_path)  # a directory: cannot be read as the list
    admin = Admin(
        issuer,
        authenticator(issuer),
        broken,
        RevocationList(broken, 2.0),
        MemoryApprovalStore(POLICY.approvals),
    )

    async def scenario() -> None:
        async with admin.client() as http:
            request = {"rule": "bulk-export", "reason": "r"}
            answer = await http.post("/approval-requests", json=request, headers=admin.token("a-1"))
            assert answer.status_code == 503

    run(scenario())


# -- approvals ---------------------------------------------------------------------------------------------


def test_approval_flow(admin: Admin) -> None:
    async def scenario() -> None:
        analyst = admin.token("analyst-1", fhir_user="Practitioner/analyst", client_id="research")
        officer = admin.token("officer-1", "privacy-officer", fhir_user="Practitioner/officer")
        clinician = admin.token("dr-1", "clinician")
        async with admin.client() as http:
            body = {"rule": "bulk-export", "reason": "quarterly registry", "wait_minutes": 30}
            created = await http.post("/approval-requests", json=body, headers=analyst)
            assert created.status_code == 201
            request = created.json()
            assert set(request) == {"id", "status", "rule", "request_expires_at"}
            assert request["status"] == "pending"
            assert request["rule"] == "bulk-export"
            approval_id = request["id"]

            own = (await http.get(f"/approval-requests/{approval_id}", headers=analyst)).json()
            assert own["reason"] == "quarterly registry"
            assert own["requester"] == "Practitioner/analyst"
            assert (await http.get(f"/approval-requests/{approval_id}", headers=officer)).status_code == 200
            stranger = await http.get(f"/approval-requests/{approval_id}", headers=clinician)
            assert stranger.status_code == 403

            itself = await http.post(f"/approval-requests/{approval_id}/approve", headers=analyst)
            assert itself.status_code == 403
            assert "self-approval is not allowed" in diagnostics(itself)
            outsider = await http.post(f"/approval-requests/{approval_id}/approve", headers=clinician)
            assert outsider.status_code == 403
            assert "may not decide" in diagnostics(outsider)

            granted = await http.post(
                f"/approval-requests/{approval_id}/approve", json={"minutes": 15}, headers=officer
            )
            assert granted.status_code == 200
            view = granted.json()
            assert view["status"] == "approved"
            assert view["approver"] == "Practitioner/officer"
            assert {"approved_at", "expires_at"} <= set(view)

            requester = await admin.principal(analyst)
            used = await admin.approvals.use(approval_id, requester, "bulk-export", "req-42")
            assert used.status == "used"
            shown = (await http.get(f"/approval-requests/{approval_id}", headers=officer)).json()
            assert shown["status"] == "used"
            assert shown["used_by_request"] == "req-42"
            again = await http.post(f"/approval-requests/{approval_id}/approve", headers=officer)
            assert again.status_code == 409

        actions = [(event.action, event.status, event.subject) for event in admin.events]
        assert actions == [
            ("approval-request", 201, "analyst-1"),
            ("approval-grant", 403, "analyst-1"),
            ("approval-grant", 403, "dr-1"),
            ("approval-grant", 200, "officer-1"),
            ("approval-grant", 409, "officer-1"),
        ]
        assert all((event.target, event.rule) == (approval_id, "bulk-export") for event in admin.events)
        assert all("quarterly" not in repr(event) for event in admin.events)

    run(scenario())


def test_an_approver_cannot_approve_their_own_request(admin: Admin) -> None:
    async def scenario() -> None:
        chief = admin.token("chief-1", "chief")
        async with admin.client() as http:
            created = await http.post(
                "/approval-requests", json={"rule": "reidentify", "reason": "audit"}, headers=chief
            )
            approval_id = created.json()["id"]
            own = await http.post(f"/approval-requests/{approval_id}/approve", headers=chief)
            assert own.status_code == 403
            assert "self-approval is not allowed" in diagnostics(own)
            # the privacy officer approves bulk exports only; another chief may approve anything
            officer = admin.token("officer-1", "privacy-officer")
            path = f"/approval-requests/{approval_id}/approve"
            assert (await http.post(path, headers=officer)).status_code == 403
            assert (await http.post(path, headers=admin.token("chief-2", "chief"))).status_code == 200

    run(scenario())


def test_deny(admin: Admin) -> None:
    async def scenario() -> None:
        analyst = admin.token("analyst-1")
        officer = admin.token("officer-1", "privacy-officer")
        async with admin.client() as http:
            created = await http.post(
                "/approval-requests", json={"rule": "bulk-export", "reason": "r"}, headers=analyst
            )
            approval_id = created.json()["id"]
            assert (
                await http.post(f"/approval-requests/{approval_id}/deny", headers=analyst)
            ).status_code == 403
            denied = await http.post(f"/approval-requests/{approval_id}/deny", headers=officer)
            assert denied.status_code == 200
            assert denied.json()["status"] == "denied"
            late = await http.post(f"/approval-requests/{approval_id}/approve", headers=officer)
            assert late.status_code == 409
        assert [(event.action, event.status) for event in admin.events] == [
            ("approval-request", 201),
            ("approval-deny", 403),
            ("approval-deny", 200),
            ("approval-grant", 409),
        ]

    run(scenario())


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"rule": "everything", "reason": "r"}, "not a sensitive rule"),
        ({"rule": "bulk-export"}, "reason must be a non-empty string"),
        ({"rule": "bulk-export", "reason": "r", "wait_minutes": 0}, "wait_minutes must be a positive"),
        ({"rule": "bulk-export", "reason": "r", "wait_minutes": "5"}, "wait_minutes must be a positive"),
    ],
)
def test_approval_requests_are_validated(admin: Admin, body: dict[str, Any], problem: str) -> None:
    async def scenario() -> None:
        async with admin.client() as http:
            answer = await http.post("/approval-requests", json=body, headers=admin.token("analyst-1"))
            assert answer.status_code == 400
            assert problem in diagnostics(answer)

    run(scenario())


def test_unknown_approval(admin: Admin) -> None:
    async def scenario() -> None:
        officer = admin.token("officer-1", "privacy-officer")
        async with admin.client() as http:
            missing = "A" * 32
            assert (await http.get(f"/approval-requests/{missing}", headers=officer)).status_code == 404
            answer = await http.post(f"/approval-requests/{missing}/approve", headers=officer)
            assert answer.status_code == 404
        assert [(e.action, e.status, e.target, e.rule) for e in admin.events] == [
            ("approval-grant", 404, missing, None)
        ]

    run(scenario())


# -- several replicas on Redis -----------------------------------------------------------------------------


def test_replicas_share_revocations_and_approvals(issuer: DevIssuer, redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_client(redis_server.url) as a, redis_client(redis_server.url) as b:
            replicas = []
            for client in (a, b):
                store = RedisRevocationStore(client)
                revocation_list = RevocationList(store, 60.0)
                await revocation_list.start()
                approvals = RedisApprovalStore(client, POLICY.approvals)
                replicas.append(Admin(issuer, authenticator(issuer), store, revocation_list, approvals))
            first, second = replicas
            try:
                analyst = first.token("analyst-1")
                async with first.client() as http_a, second.client() as http_b:
                    created = await http_a.post(
                        "/approval-requests", json={"rule": "bulk-export", "reason": "r"}, headers=analyst
                    )
                    approval_id = created.json()["id"]
                    officer = first.token("officer-1", "privacy-officer")
                    path = f"/approval-requests/{approval_id}/approve"
                    assert (await http_b.post(path, headers=officer)).status_code == 200

                    body = {"kind": "user", "value": "analyst-1", "reason": REASON}
                    security = first.token("sec-1", "security-admin")
                    assert (await http_a.post("/revocations", json=body, headers=security)).status_code == 201
                    deadline = time.monotonic() + 3
                    while (
                        await http_b.get(f"/approval-requests/{approval_id}", headers=analyst)
                    ).status_code != 401:
                        assert time.monotonic() < deadline, "the other replica did not see the revocation"
                        await asyncio.sleep(0.02)
            finally:
                for replica in replicas:
                    assert replica.revocation_list is not None
                    await replica.revocation_list.stop()

    run(scenario())
