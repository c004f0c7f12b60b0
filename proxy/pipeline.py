"""The enforcement point: one FHIR request from the client to the upstream and back.

    classify -> check formats -> read and check the body -> route -> forward -> check and rewrite the response

Every failure is a ``ProxyError`` rendered as an OperationOutcome; an unexpected exception becomes a 500
OperationOutcome. Nothing reaches the client that did not pass through the response checks, except raw
Binary content, which is streamed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.audit.capture import (
    describe_principal,
    describe_request,
    note_error,
    note_patients_in_body,
    note_stage,
    start_record,
)
from proxy.audit.context import current_record
from proxy.audit.delivery import AuditDelivery
from proxy.audit.process_delivery import ProcessDelivery
from proxy.audit.record import AuditRecord, Decision
from proxy.audit.trail import AuditTrail
from proxy.auth.authenticator import Authenticator
from proxy.auth.discovery import SmartDiscovery, security_extension
from proxy.auth.principal import Principal
from proxy.authorization import authorize
from proxy.body import RawBodyStream, check_declared_length, parse_json_object, read_body
from proxy.call import ProxyCall
from proxy.capabilities import proxy_capabilities, resource_entries
from proxy.enforcement import LinkContext, checked_body, fast_checked_body
from proxy.errors import (
    InvalidPathError,
    InvalidRequestError,
    InvalidUpstreamResponseError,
    MethodNotAllowedError,
    NotAcceptableError,
    NotFoundError,
    PayloadTooLargeError,
    ProxyError,
    UnsupportedMediaTypeError,
)
from proxy.fhir.bundle import classify_entries
from proxy.fhir.compartment import PATIENT_COMPARTMENT_TYPES
from proxy.fhir.documents import InvalidDocumentError, ResourceHead, decode_resource_head
from proxy.fhir.media import (
    FHIR_JSON_TYPES,
    BodyKind,
    body_kind,
    check_accept,
    check_format_param,
    media_type,
)
from proxy.fhir.request import FhirRequest, Interaction, classify, parse_query, searched_patient
from proxy.fhir.urls import BaseUrlRewriter, to_upstream
from proxy.headers import check_refused_headers, forwardable_request_headers, forwardable_response_headers
from proxy.limits import RateLimiter, client_address
from proxy.masking import MaskingPolicy
from proxy.origin import resolve_origin
from proxy.policy.access import AccessView
from proxy.policy.consent_gate import ConsentGate
from proxy.policy.decision import AccessDecision, ResponseCheck
from proxy.policy.fast_bundle import LinkSealer, ProvenSearchset, fast_patient_searchset
from proxy.policy.paging import PageSealer, load_paging_key
from proxy.policy.smart import check_operation_allowed
from proxy.reidentify import Reidentifier, is_reidentify
from proxy.responses import fhir_response, outcome_response, raw_stream_response
from proxy.rights.enforcement import answer_body, authorize_rights
from proxy.rights.gate import RightsGate
from proxy.rights.sensitive import (
    answer_rules,
    counts_patients,
    lifts_isolation,
    request_rules,
    use_approvals,
)
from proxy.settings import Settings
from proxy.upstream import BufferedResponse, Upstream, UpstreamRouter

__all__ = ["FhirEndpoint"]

logger = logging.getLogger("fhirwall.pipeline")

_BODY_INTERACTIONS = frozenset({Interaction.CREATE, Interaction.UPDATE, Interaction.PATCH, Interaction.BATCH})
_UPSTREAM_ACCEPT = "application/fhir+json"
SMART_CONFIGURATION_PATH = "/.well-known/smart-configuration"
_CONSENT_CHECKED_READS = frozenset({Interaction.READ, Interaction.VREAD, Interaction.OPERATION})


class FhirEndpoint:
    """ASGI app serving the FHIR API below ``settings.server.base_path``."""

    def __init__(
        self,
        settings: Settings,
        router: UpstreamRouter,
        rewriter: BaseUrlRewriter,
        authenticator: Authenticator | None = None,
        sealer: PageSealer | None = None,
        discovery: SmartDiscovery | None = None,
        consent_gate: ConsentGate | None = None,
        masking: MaskingPolicy | None = None,
        reidentifier: Reidentifier | None = None,
        audit: AuditTrail | None = None,
        delivery: AuditDelivery | ProcessDelivery | None = None,
        rights: RightsGate | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.rewriter = rewriter
        self.authenticator = authenticator
        self.sealer = sealer or PageSealer(load_paging_key(None))
        self.discovery = discovery
        self.consent_gate = consent_gate
        self.masking = masking
        self.reidentifier = reidentifier
        self.audit = audit
        self.delivery = delivery
        self.rights = rights
        self.limiter = limiter
        self._base_path = settings.server.base_path
        self._trusted = settings.server.trusted_networks()
        self._limits = settings.limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = self._start_record(scope)
        token = current_record.set(record)
        try:
            if self.delivery is not None:
                await self.delivery.admit()  # back-pressure: the audit backlog must have room
            response = await self.handle(scope, receive, record)
        except ProxyError as error:
            response = self._refusal(error, record)
        except Exception:
            logger.exception("unexpected error while handling a FHIR request")
            response = self._refusal(ProxyError(), record)
        finally:
            current_record.reset(token)
        if record is not None:
            response = await self._recorded(record, response)
        await response(scope, receive, send)

    async def _open_rights(self, call: ProxyCall, principal: Principal) -> None:
        """The caller's rights under the access policy (their effective roles go into the audit record)."""
        assert self.rights is not None
        await self.rights.check_revoked(principal)
        call.rights = await self.rights.view_for(principal)
        if call.rights is not None and call.audit is not None:
            call.audit.roles = tuple(sorted(call.rights.roles))

    async def _authorize_rights(self, call: ProxyCall, principal: Principal, upstream: Upstream) -> None:
        """The access policy's request checks; approvals are used only once everything else allowed it."""
        assert self.rights is not None
        assert call.rights is not None
        if lifts_isolation(self.rights.policy, principal):
            call.rights.isolation_lifted = True  # the break-glass approval is still required below
            if call.audit is not None:
                call.audit.reasons.append("break-glass: department isolation lifted")
        call.rights_operation = await authorize_rights(call, call.rights, upstream, self._fetch_current)
        await self._approve_request(call, principal, call.rights_operation)

    async def _approve_request(self, call: ProxyCall, principal: Principal, operation: str | None) -> None:
        """Sensitive requests (by operation, break-glass) must present an approval per rule they set off."""
        assert self.rights is not None
        assert call.rights is not None
        rules = request_rules(self.rights.policy, call.rights.roles, operation, principal)
        if rules:
            await self._use_approvals(call, principal, rules)

    async def _approve_answer(self, call: ProxyCall, body: bytes) -> None:
        """An answer carrying more patients than a rule allows needs an approval too (else it is withheld)."""
        assert self.rights is not None
        assert call.rights is not None
        assert call.view is not None
        policy, roles = self.rights.policy, call.rights.roles
        if not counts_patients(policy, roles) or decode_resource_head(body).resourceType != "Bundle":
            return
        rules = answer_rules(policy, roles, body)
        if rules:
            await self._use_approvals(call, call.view.principal, rules)

    async def _use_approvals(self, call: ProxyCall, principal: Principal, rules: list[str]) -> None:
        assert self.rights is not None
        header = self.rights.policy.approvals.header
        store = self.rights.approvals
        used = await use_approvals(store, rules, call.headers.get(header), principal, call.request_id, header)
        if call.audit is not None:
            call.audit.reasons += [
                f"approval {approval} used for {rule}" for approval, rule in zip(used, rules, strict=True)
            ]

    def _start_record(self, scope: Scope) -> AuditRecord | None:
        if self.audit is None:
            return None
        request_id = scope.get("state", {}).get("request_id", "")
        return start_record(scope, request_id, telemetry=self.audit.telemetry is not None)

    def _refusal(self, error: ProxyError, record: AuditRecord | None) -> Response:
        if record is not None:
            note_error(record, error)
        return outcome_response(error)

    async def _recorded(self, record: AuditRecord, response: Response) -> Response:
        """Write the request's audit record before its answer goes out (503 if it cannot be written)."""
        assert self.audit is not None
        if not record.status:
            record.status = response.status_code
        try:
            await self.audit.commit(record)
        except ProxyError as error:
            return outcome_response(error)
        return response

    async def handle(self, scope: Scope, receive: Receive, record: AuditRecord | None = None) -> Response:
        """Check, forward and answer one request."""
        if self._relative_path(scope) == SMART_CONFIGURATION_PATH:
            return await self._smart_configuration(scope)
        call = self._prepare(scope)
        call.audit = record
        if record is not None:
            describe_request(record, call.request, call.query)
        if call.request.interaction is Interaction.CAPABILITIES:
            return await self._capabilities(call)
        if self.authenticator is not None:
            started = time.time()
            principal = await self.authenticator.authenticate(
                call.headers.get("authorization"), call.public_base
            )
            note_stage(record, "token", started)
            call.view = AccessView(principal, self.settings.policy)
            if record is not None:
                describe_principal(record, principal)
            await self._limit(scope, call, principal)
            if not is_reidentify(call.request):
                check_operation_allowed(call.view, call.request)
            if self.rights is not None:
                await self._open_rights(call, principal)
        else:
            await self._limit(scope, call, None)
        if is_reidentify(call.request):
            return await self._reidentify(call, receive)
        await self._read_body(call, receive)
        if call.request.interaction is Interaction.PAGE:
            return await self._page(call)
        upstream = self._route(call)
        self._select_masking(call, upstream)
        if call.view is not None:
            started = time.time()
            await authorize(call, upstream, self._fetch_current)
            if call.rights is not None:
                await self._authorize_rights(call, call.view.principal, upstream)
            note_stage(record, "policy", started)
            if record is not None:
                record.decision = Decision.PERMIT
        if call.raw_response or call.raw_body is not None:
            return await self._forward_raw(call, upstream)
        return await self._forward_json(call, upstream)

    async def _limit(self, scope: Scope, call: ProxyCall, principal: Principal | None) -> None:
        """Rate limits and quotas (429 when spent), charged before the body is read or anything forwarded."""
        if self.limiter is not None:
            address = client_address(scope, call.headers, self._trusted)
            await self.limiter.admit(call.request, principal, address)

    # -- request side -------------------------------------------------------------------------------------

    def _prepare(self, scope: Scope) -> ProxyCall:
        raw_headers = scope["headers"]
        check_refused_headers(raw_headers)
        headers = _header_dict(raw_headers)
        public_base = self._public_base(scope, headers)
        relative_path = self._relative_path(scope)
        query = scope["query_string"].decode("latin-1")
        request = classify(scope["method"], relative_path, query)
        check_format_param(request.param_values("_format"))
        raw_response = check_accept(headers.get("accept"), raw_allowed=_is_binary_read(request))
        request_id = scope.get("state", {}).get("request_id", "")
        return ProxyCall(
            request, public_base, request_id, headers, relative_path, query, raw_response=raw_response
        )

    def _public_base(self, scope: Scope, headers: dict[str, str]) -> str:
        client = scope.get("client")
        origin = resolve_origin(client[0] if client else None, scope["scheme"], headers, self._trusted)
        return self.settings.server.public_base_url or origin.base_url(self._base_path)

    async def _smart_configuration(self, scope: Scope) -> Response:
        """``GET [base]/.well-known/smart-configuration``: public, JSON whatever the Accept header."""
        if scope["method"] != "GET":
            raise MethodNotAllowedError(headers={"Allow": "GET"})
        if self.discovery is None:
            raise NotFoundError("this server does not require SMART authorization")
        public_base = self._public_base(scope, _header_dict(scope["headers"]))
        document = await self.discovery.configuration(public_base)
        return Response(orjson.dumps(document), media_type="application/json")

    def _relative_path(self, scope: Scope) -> str:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        text = raw_path.decode("latin-1")
        if not text.startswith(self._base_path):
            raise InvalidPathError()
        return text[len(self._base_path) :]

    async def _read_body(self, call: ProxyCall, receive: Receive) -> None:
        request = call.request
        if request.interaction is Interaction.SEARCH_SYSTEM or request.interaction is Interaction.SEARCH_TYPE:
            if request.method == "POST":
                await self._read_search_form(call, receive)
            return
        if request.interaction not in _BODY_INTERACTIONS and not _is_post_operation(request):
            return
        kind = body_kind(
            call.headers.get("content-type"),
            raw_allowed=_is_binary_write(request),
            patch=request.interaction is Interaction.PATCH,
        )
        if kind is BodyKind.RAW:
            check_declared_length(call.headers, self._limits.max_binary_bytes)
            call.raw_body = RawBodyStream(receive, self._limits.max_binary_bytes)
            return
        check_declared_length(call.headers, self._limits.max_body_bytes)
        call.body = await read_body(receive, self._limits.max_body_bytes)
        if kind is BodyKind.JSON_PATCH:
            _check_json_patch(call.body)
            return
        call.document = parse_json_object(call.body)
        call.request = _check_resource_body(request, call.document)

    async def _read_search_form(self, call: ProxyCall, receive: Receive) -> None:
        content_type = media_type(call.headers.get("content-type"))
        if content_type != "application/x-www-form-urlencoded":
            raise UnsupportedMediaTypeError("POST _search needs application/x-www-form-urlencoded parameters")
        check_declared_length(call.headers, self._limits.max_body_bytes)
        call.body = await read_body(receive, self._limits.max_body_bytes)
        form = parse_query(call.body.decode("latin-1"))
        check_format_param([value for key, value in form if key == "_format"])
        call.request = replace(call.request, params=call.request.params + form)

    def _route(self, call: ProxyCall) -> Upstream:
        request = call.request
        if request.interaction in (Interaction.BATCH, Interaction.TRANSACTION):
            assert call.document is not None
            entries = classify_entries(call.document, call.public_base)
            return self.router.for_types(entry.resource_type for entry in entries)
        return self.router.for_type(request.resource_type)

    async def _reidentify(self, call: ProxyCall, receive: Receive) -> Response:
        """Answer ``$reidentify`` locally (never forwarded); only for authorised callers."""
        if self.reidentifier is None:
            raise NotFoundError("re-identification is not configured")
        principal = call.view.principal if call.view is not None else None
        if call.rights is not None and principal is not None:
            call.rights.check_operation(None, "reidentify")
            await self._approve_request(call, principal, "reidentify")
        caller = self.reidentifier.authorize(principal, call.request.method)
        if call.audit is not None:
            call.audit.decision = Decision.PERMIT
        await self._read_body(call, receive)
        answer = self.reidentifier.reidentify(caller, call.document)
        return fhir_response(200, orjson.dumps(answer), [("cache-control", "no-store")])

    def _select_masking(self, call: ProxyCall, upstream: Upstream) -> None:
        """Pick the masking profile; raw Binary content cannot be masked, so it is not served under one."""
        if self.masking is None:
            return
        principal = call.view.principal if call.view is not None else None
        call.masking = self.masking.select(principal, upstream.name, call.headers)
        if call.masking is not None and call.raw_response:
            raise NotAcceptableError(
                "raw Binary content cannot be masked; ask for application/fhir+json to receive it masked"
            )

    def _upstream_headers(self, call: ProxyCall, content_type: str | None) -> dict[str, str]:
        headers = forwardable_request_headers(call.headers)
        headers.update(call.header_overrides)
        headers["accept"] = call.headers.get("accept", "*/*") if call.raw_response else _UPSTREAM_ACCEPT
        if call.request_id:
            headers["x-request-id"] = call.request_id
        if content_type:
            headers["content-type"] = content_type
        return headers

    # -- forwarding ---------------------------------------------------------------------------------------

    async def _forward_json(self, call: ProxyCall, upstream: Upstream) -> Response:
        content_type = call.headers.get("content-type") if call.body is not None else None
        headers = self._upstream_headers(call, content_type)
        url = upstream.url_for(call.relative_path, call.query)
        body = call.body
        if body is not None and call.document is not None:
            body = to_upstream(body, call.public_base, upstream.base_url)
        started = time.time()
        answer = await upstream.send(
            call.request.method, url, headers, body, max_bytes=self._limits.max_upstream_body_bytes
        )
        note_stage(call.audit, "upstream", started)
        return await self._json_response(call, answer, upstream)

    async def _forward_raw(self, call: ProxyCall, upstream: Upstream) -> Response:
        content_type = call.headers.get("content-type") if call.raw_body is not None else None
        headers = self._upstream_headers(call, content_type)
        if call.raw_body is not None and "content-length" in call.headers:
            headers["content-length"] = call.headers["content-length"]
        url = upstream.url_for(call.relative_path, call.query)
        body = call.raw_body.chunks() if call.raw_body is not None else None
        try:
            stream = await upstream.stream(call.request.method, url, headers, body)
        except ProxyError:
            if call.raw_body is not None and call.raw_body.exceeded:
                raise PayloadTooLargeError() from None
            raise
        if media_type(stream.content_type) in FHIR_JSON_TYPES or stream.status >= 400 or call.masking:
            payload = await stream.read(self._limits.max_upstream_body_bytes)
            answer = BufferedResponse(stream.status, stream.headers, stream.content_type, payload)
            return await self._json_response(call, answer, upstream)
        response_headers = self._response_headers(call, stream.headers)
        if "content-length" in dict(stream.headers):
            response_headers.append(("content-length", dict(stream.headers)["content-length"]))
        return raw_stream_response(
            stream.status,
            stream.chunks(),
            response_headers,
            stream.content_type,
            BackgroundTask(stream.close),
        )

    # -- response side ------------------------------------------------------------------------------------

    async def _json_response(self, call: ProxyCall, answer: BufferedResponse, upstream: Upstream) -> Response:
        if answer.status in (401, 407):
            raise InvalidUpstreamResponseError("the upstream refused the proxy's own credentials")
        if self.consent_gate is not None and _writes_consent(call.request) and 200 <= answer.status < 300:
            await self.consent_gate.forget(call.document, answer.body)
        headers = self._response_headers(call, answer.headers)
        if not answer.body:
            return fhir_response(answer.status, b"", headers)
        if call.view is not None and call.decision is not None and 200 <= answer.status < 300:
            body, proof = self._checked_body(call, answer, upstream, call.view, call.decision)
            if proof is None and self._layers_want_proof(call) and not _nothing_to_filter(call):
                proof = _one_patient_searchset(call.request, body)  # proved once for both layers
                body = body if proof is None else proof.body
            patient = None if proof is None else proof.patient
            if call.rights is not None:
                resource_type = call.request.resource_type
                one = (resource_type, patient) if resource_type and patient else None
                body, _withheld = await answer_body(call.rights, call.rights_operation, body, one)
            if self.consent_gate is not None:
                started = time.time()
                body = await self._consent_checked(call, call.view.principal, body, proof)
                note_stage(call.audit, "consent", started)
            if call.rights is not None:
                await self._approve_answer(call, body)
            if call.audit is not None:
                self._note_patients(call.audit, body, patient)
        else:
            head = _check_upstream_json(answer)
            if call.view is not None and head.resourceType != "OperationOutcome":
                # an error or redirect answer carries an OperationOutcome, never data that was not checked
                raise InvalidUpstreamResponseError(f"the upstream answered {answer.status} with a resource")
            body = answer.body
        if call.masking is not None:
            assert self.masking is not None
            started = time.time()
            # rebased on the public base first: masking sees what the client will, once per cached page
            rebase = self.rewriter.rewrite_to_public(call.public_base)
            masked = self.masking.mask_body(call.masking, body, rebase)
            note_stage(call.audit, "masking", started)
            if call.audit is not None:
                call.audit.masking_profile = masked.profile
                call.audit.masked_values = sum(masked.stats.by_method.values())
            return fhir_response(answer.status, masked.body, headers)
        return fhir_response(answer.status, self.rewriter.to_public(body, call.public_base), headers)

    def _note_patients(self, record: AuditRecord, body: bytes, proven_patient: str | None) -> None:
        """The patients an answer carries: proved by the searchset fast path, else read from the body."""
        if proven_patient is not None:
            record.patients.add(proven_patient)
        elif record.resource_type == "Patient" and record.interaction in ("read", "vread"):
            return  # the patient is the resource the request named (already recorded)
        else:
            note_patients_in_body(record, body)

    def _checked_body(
        self,
        call: ProxyCall,
        answer: BufferedResponse,
        upstream: Upstream,
        view: AccessView,
        decision: AccessDecision,
    ) -> tuple[bytes, ProvenSearchset | None]:
        """The successful answer as the principal may see it, and the searchset fast path's proof that every
        entry belongs to the token's patient (None: not proved)."""
        links = self._link_context(call, upstream, view, decision)
        if media_type(answer.content_type) in FHIR_JSON_TYPES:
            drop_total = self.consent_gate is not None  # consent may withhold entries on other pages
            fast = fast_checked_body(view, call.request, decision, answer.body, links, drop_total=drop_total)
            if fast is None and self._layers_want_proof(call) and _nothing_to_filter(call):
                # the token sees the whole page: prove it for the layers below and seal its links in one pass
                fast = _one_patient_searchset(call.request, answer.body, links.seal)
            if fast is not None:
                return fast.body, fast
        head = _check_upstream_json(answer)
        return checked_body(view, call.request, decision, head, answer.body, links), None

    def _layers_want_proof(self, call: ProxyCall) -> bool:
        """Whether the access policy or consent would use a proof that a page holds one patient's data."""
        return call.rights is not None or self.consent_gate is not None

    async def _consent_checked(
        self, call: ProxyCall, principal: Principal, body: bytes, proof: ProvenSearchset | None
    ) -> bytes:
        """Patient consent after the scope checks: Bundles are filtered, a withheld single read refused.
        ``proof``: every entry is known to belong to one patient (no need to look), labelled or not."""
        assert self.consent_gate is not None
        if proof is not None:  # a searchset whose entries all belong to this patient
            return await self.consent_gate.filter_body(
                principal, body, {proof.patient}, labelled=proof.labelled
            )
        head = decode_resource_head(body)
        if head.resourceType == "Bundle":
            return await self.consent_gate.filter_body(principal, body)
        if call.request.interaction in _CONSENT_CHECKED_READS and head.resourceType != "OperationOutcome":
            await self.consent_gate.check_resource(principal, body)
        return body

    def _link_context(
        self, call: ProxyCall, upstream: Upstream, view: AccessView, decision: AccessDecision
    ) -> LinkContext:
        return LinkContext(
            self.sealer,
            upstream.name,
            upstream.base_url,
            call.public_base,
            call.request.resource_type,
            view.principal.binding,
            decision.total_is_exact,
        )

    async def _page(self, call: ProxyCall) -> Response:
        """Follow a sealed paging link: only for the principal it was issued to; re-checked like a search."""
        if call.view is None:
            raise NotFoundError()
        token = next(iter(call.request.param_values("token")), "")
        relation = next(iter(call.request.param_values("rel")), "")
        location = self.sealer.open(token, call.view.principal.binding)
        if relation not in location.paths:
            raise InvalidRequestError("the paging link names no page of this result")
        upstream = self.router.by_name(location.upstream)
        self._select_masking(call, upstream)
        call.relative_path, _, call.query = location.paths[relation].partition("?")
        call.request = replace(call.request, resource_type=location.resource_type)
        call.decision = AccessDecision(response=ResponseCheck.BUNDLE, total_is_exact=location.total_is_exact)
        call.rights_operation = "search"
        return await self._forward_json(call, upstream)

    async def _fetch_current(self, call: ProxyCall, upstream: Upstream) -> BufferedResponse:
        """GET the stored version of the resource a write targets (for checks before writing)."""
        request = call.request
        path = f"/{request.resource_type}/{request.id}"
        headers = {"accept": _UPSTREAM_ACCEPT, "x-request-id": call.request_id}
        return await upstream.send(
            "GET", upstream.url_for(path), headers, None, max_bytes=self._limits.max_upstream_body_bytes
        )

    def _response_headers(
        self, call: ProxyCall, upstream_headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        kept = forwardable_response_headers(upstream_headers)
        return [
            (name, self.rewriter.url_to_public(value, call.public_base))
            if name in ("location", "content-location")
            else (name, value)
            for name, value in kept
        ]

    async def _capabilities(self, call: ProxyCall) -> Response:
        statements: dict[str, dict[str, Any]] = {}
        for upstream in self.router.upstreams:
            headers = self._upstream_headers(call, None)
            answer = await upstream.send(
                "GET",
                upstream.url_for("/metadata"),
                headers,
                None,
                max_bytes=self._limits.max_upstream_body_bytes,
            )
            if answer.status != 200:
                raise InvalidUpstreamResponseError("an upstream did not return its CapabilityStatement")
            statements[upstream.name] = _parse_upstream_json(answer)
        routed = {
            resource_type: entry
            for upstream in self.router.upstreams
            if upstream is not self.router.default
            for resource_type, entry in resource_entries(statements[upstream.name]).items()
            if self.router.for_type(resource_type) is upstream
        }
        statement = proxy_capabilities(statements[self.router.default.name], routed, call.public_base)
        if self.discovery is not None:
            configuration = await self.discovery.configuration(call.public_base)
            for rest in statement.get("rest", []):
                rest["security"] = security_extension(configuration)
        return fhir_response(200, self.rewriter.to_public(orjson.dumps(statement), call.public_base))


def _header_dict(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def _writes_consent(request: FhirRequest) -> bool:
    return request.resource_type == "Consent" and request.method != "GET"


def _is_binary_read(request: FhirRequest) -> bool:
    return request.resource_type == "Binary" and request.interaction in (Interaction.READ, Interaction.VREAD)


def _is_binary_write(request: FhirRequest) -> bool:
    return request.resource_type == "Binary" and request.interaction in (
        Interaction.CREATE,
        Interaction.UPDATE,
    )


def _is_post_operation(request: FhirRequest) -> bool:
    return request.interaction is Interaction.OPERATION and request.method == "POST"


def _check_json_patch(body: bytes) -> None:
    try:
        patch = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError("the JSON Patch body is not well-formed JSON") from exc
    if not isinstance(patch, list) or not all(isinstance(op, dict) and "op" in op for op in patch):
        raise InvalidRequestError("a JSON Patch body must be an array of operations")


def _check_resource_body(request: FhirRequest, document: dict[str, Any]) -> FhirRequest:
    """Check that the body fits the URL; a POST to the base becomes batch or transaction by Bundle.type."""
    resource_type = document.get("resourceType")
    if not isinstance(resource_type, str):
        raise InvalidRequestError("the body is not a FHIR resource (no resourceType)")
    interaction = request.interaction
    if interaction is Interaction.BATCH:
        if resource_type != "Bundle" or document.get("type") not in ("batch", "transaction"):
            raise InvalidRequestError("a POST to the FHIR base must be a batch or transaction Bundle")
        kind = Interaction.TRANSACTION if document["type"] == "transaction" else Interaction.BATCH
        return replace(request, interaction=kind)
    if interaction is Interaction.PATCH:
        if resource_type != "Parameters":
            raise InvalidRequestError("a FHIRPath Patch body must be a Parameters resource")
        return request
    if interaction in (Interaction.CREATE, Interaction.UPDATE) and resource_type != request.resource_type:
        raise InvalidRequestError("the resource type in the body does not match the URL")
    if interaction is Interaction.UPDATE and request.id is not None and document.get("id") != request.id:
        raise InvalidRequestError("the resource id in the body does not match the URL")
    return request


def _one_patient_searchset(
    request: FhirRequest, body: bytes, seal: LinkSealer | None = None
) -> ProvenSearchset | None:
    """The proof that a search for one patient's resources of one type has every entry naming that patient,
    with the body without its total (consent may withhold entries on other pages) and its links sealed by
    ``seal`` if given; None when not proved."""
    searched = searched_patient(request)
    if searched is None or searched[0] not in PATIENT_COMPARTMENT_TYPES:
        return None
    return fast_patient_searchset(body, searched[0], searched[1], seal, total_allowed=False)


def _nothing_to_filter(call: ProxyCall) -> bool:
    """A searchset answer the token sees whole (``user``/``system`` read and search on every type): the
    scope check only seals its links and fixes its total."""
    return (
        call.view is not None
        and call.decision is not None
        and call.decision.response is ResponseCheck.BUNDLE
        and call.view.sees_everything()
    )


def _check_upstream_json(answer: BufferedResponse) -> ResourceHead:
    """The response must be one well-formed FHIR JSON resource (502 otherwise)."""
    if media_type(answer.content_type) not in FHIR_JSON_TYPES:
        raise InvalidUpstreamResponseError(f"the upstream answered {answer.status} with a non-FHIR-JSON body")
    try:
        return decode_resource_head(answer.body)
    except InvalidDocumentError as exc:
        raise InvalidUpstreamResponseError("the upstream body is not a FHIR JSON resource") from exc


def _parse_upstream_json(answer: BufferedResponse) -> dict[str, Any]:
    """The response as a full document (for the few responses the proxy rebuilds)."""
    _check_upstream_json(answer)
    document: dict[str, Any] = orjson.loads(answer.body)
    return document
