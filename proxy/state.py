"""What one proxy process holds for its lifetime: settings, upstream pools, URL rewriter, auth, Redis."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from consent.cache import ConsentCache, MemoryConsentCache, RedisConsentCache
from consent.store import CachedConsentStore, FhirConsentStore
from proxy.audit.delivery import AuditDelivery, AuditDeliveryError
from proxy.audit.process_delivery import ProcessDelivery
from proxy.audit.redis_spool import RedisSpoolDelivery, RedisSpoolWriter
from proxy.audit.telemetry import Telemetry
from proxy.audit.trail import AuditTrail
from proxy.auth.authenticator import Authenticator, build_authenticator
from proxy.auth.dev_issuer import DevIssuer, dev_trusted_issuer, load_or_create_key
from proxy.auth.discovery import SmartDiscovery
from proxy.fhir.urls import BaseUrlRewriter
from proxy.limits import RateLimiter, build_limiter
from proxy.masking import MaskingPolicy
from proxy.policy.actors import ActorResolver
from proxy.policy.consent_gate import ConsentGate
from proxy.policy.paging import PageSealer, load_paging_key, shared_paging_key
from proxy.reidentify import Reidentifier
from proxy.rights.approvals import ApprovalStore, MemoryApprovalStore, RedisApprovalStore
from proxy.rights.attributes import AttributeResolver
from proxy.rights.care import CareIndex
from proxy.rights.gate import RightsGate
from proxy.rights.model import AccessPolicy, policy_from_settings
from proxy.rights.revocation import FileRevocationStore, RedisRevocationStore, RevocationList, RevocationStore
from proxy.settings import ConfigError, Settings
from proxy.upstream import Upstream, UpstreamRouter

__all__ = ["ProxyState", "dev_issuer_url"]

logger = logging.getLogger("fhirwall")


def dev_issuer_url(settings: Settings) -> str:
    """The development issuer's ``iss``: configured, or ``<public root>/_dev``."""
    if settings.auth.dev_issuer.issuer:
        return settings.auth.dev_issuer.issuer.rstrip("/")
    if settings.server.public_base_url:
        parts = urlsplit(settings.server.public_base_url)
        return f"{parts.scheme}://{parts.netloc}/_dev"
    scheme = "https" if settings.server.tls else "http"
    return f"{scheme}://{settings.server.host}:{settings.server.port}/_dev"


@dataclass
class ProxyState:
    """Long-lived resources; opened and closed by the application lifespan."""

    settings: Settings
    router: UpstreamRouter = field(init=False)
    rewriter: BaseUrlRewriter = field(init=False)
    http: httpx.AsyncClient = field(init=False)
    dev_issuer: DevIssuer | None = field(init=False, default=None)
    authenticator: Authenticator | None = field(init=False, default=None)
    discovery: SmartDiscovery | None = field(init=False, default=None)
    sealer: PageSealer = field(init=False)
    redis: aioredis.Redis | None = field(init=False, default=None)
    consent_cache: ConsentCache | None = field(init=False, default=None)
    consent_gate: ConsentGate | None = field(init=False, default=None)
    masking: MaskingPolicy | None = field(init=False, default=None)
    reidentifier: Reidentifier | None = field(init=False, default=None)
    audit: AuditTrail | None = field(init=False, default=None)
    audit_delivery: AuditDelivery | ProcessDelivery | None = field(init=False, default=None)
    rights: RightsGate | None = field(init=False, default=None)
    limiter: RateLimiter | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        settings = self.settings
        self.router = UpstreamRouter(settings.upstreams)
        self.rewriter = BaseUrlRewriter(upstream.base_url for upstream in self.router.upstreams)
        self.http = httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        self.sealer = PageSealer(load_paging_key(settings.policy.paging_key_env))
        if settings.redis.url:
            self.redis = aioredis.Redis.from_url(
                settings.redis.url, socket_timeout=2.0, socket_connect_timeout=2.0
            )
        if settings.audit.enabled:
            self._build_audit()
        if settings.masking.enabled:
            self.masking = MaskingPolicy.from_settings(settings.masking)
            if settings.masking.reidentification.roles:
                self.reidentifier = Reidentifier(
                    settings.masking.reidentification, self.masking.pseudonym_keys
                )
        if settings.consent.enabled:
            self._build_consent_gate()
        if settings.access.policy_file is not None:
            self._build_rights(settings.access.policy_file)
        if settings.rate_limits.enabled:
            self.limiter = build_limiter(settings, self.redis)
        if settings.auth.dev_issuer.enabled:
            key = load_or_create_key(settings.auth.dev_issuer.key_file)
            self.dev_issuer = DevIssuer(key, dev_issuer_url(settings))
            logger.warning(
                "DEVELOPMENT ISSUER ENABLED: tokens signed with %s are trusted. Never in production.",
                settings.auth.dev_issuer.key_file,
            )
        if settings.auth.enforced:
            trusted = dev_trusted_issuer(self.dev_issuer) if self.dev_issuer else None
            self.authenticator = build_authenticator(settings.auth, self.http, trusted, self.redis)
            self.discovery = SmartDiscovery(
                settings.auth, self.http, self.dev_issuer.issuer if self.dev_issuer else None
            )
        elif not settings.auth.configured:
            logger.warning("no authentication configured: every local client has full access to the upstream")

    def _build_audit(self) -> None:
        audit = self.settings.audit
        self.audit = AuditTrail.from_settings(audit)
        if audit.telemetry.exporter != "none":
            self.audit.telemetry = Telemetry.from_settings(audit.telemetry)
        if audit.delivery.enabled:
            assert audit.log_file is not None
            self.audit_delivery = self._build_audit_delivery(audit.log_file)
            self.audit.on_append = self.audit_delivery.notify
            if self.audit.telemetry is not None:
                delivery = self.audit_delivery
                self.audit.telemetry.set_backlog_source(lambda: delivery.backlog)

    def _build_audit_delivery(self, log_file: Path) -> AuditDelivery | ProcessDelivery:
        """Delivery from the local log (here, or in a child process: ``audit.delivery.runner``), or from the
        Redis spool (``audit.delivery.spool: redis``)."""
        audit = self.settings.audit
        if audit.delivery.spool == "log" and audit.delivery.runner == "process":
            AuditTrail.signing_key(audit)  # the child reads it too: a missing key is a start-up error here
            return ProcessDelivery(log_file, audit, self.settings.server.log_level)
        if audit.delivery.spool == "log":
            return AuditDelivery(log_file, audit.delivery, key=AuditTrail.signing_key(audit))
        if self.redis is None or self.settings.redis.url is None:
            raise ConfigError([("audit.delivery.spool", "the Redis spool needs redis.url")])
        assert self.audit is not None
        self.audit.spool = RedisSpoolWriter(self.redis)
        return RedisSpoolDelivery(log_file, audit.delivery, self.redis)

    def _build_rights(self, path: Path) -> None:
        policy = policy_from_settings(path)
        max_bytes = self.settings.limits.max_upstream_body_bytes
        if self.redis is None and self.settings.server.workers > 1:
            raise ConfigError(
                [("redis.url", "the access policy with several workers needs Redis (shared state)")]
            )
        approvals: ApprovalStore = (
            RedisApprovalStore(self.redis, policy.approvals)
            if self.redis is not None
            else MemoryApprovalStore(policy.approvals)
        )
        self.rights = RightsGate(
            policy,
            AttributeResolver(policy, self.router, max_bytes),
            CareIndex(policy.isolation, self.router, max_bytes),
            hide_existence=self.settings.policy.hide_existence,
            approvals=approvals,
            revocations=self._revocation_list(policy),
        )

    def _revocation_list(self, policy: AccessPolicy) -> RevocationList:
        store: RevocationStore
        if self.redis is not None:
            store = RedisRevocationStore(self.redis)
        elif policy.revocation.file is not None:
            store = FileRevocationStore(policy.revocation.file)
        else:
            problem = (
                "revocations need Redis (redis.url) or a revocation file (revocation.file in the policy)"
            )
            raise ConfigError([("access.policy_file", problem)])
        return RevocationList(store, policy.revocation.refresh_seconds)

    def _build_consent_gate(self) -> None:
        consent = self.settings.consent
        if consent.cache == "redis":
            assert self.redis is not None
            self.consent_cache = RedisConsentCache(self.redis, consent.cache_seconds)
        else:
            self.consent_cache = MemoryConsentCache(consent.cache_seconds)
        source = FhirConsentStore(
            self.router.for_type("Consent"), self.settings.limits.max_upstream_body_bytes
        )
        store = CachedConsentStore(source, self.consent_cache)
        actors = ActorResolver(
            self.router, consent.cache_seconds, self.settings.limits.max_upstream_body_bytes
        )
        self.consent_gate = ConsentGate(
            consent, store, actors, hide_existence=self.settings.policy.hide_existence
        )

    async def open(self) -> None:
        """Open connection pools and subscriptions."""
        await self.router.start()
        if self.redis is not None and self.settings.policy.paging_key_env is None:
            try:
                self.sealer.rekey(await shared_paging_key(self.redis))
            except (RedisError, OSError, ValueError) as exc:
                raise ConfigError(
                    [("redis.url", f"the shared paging key could not be read: {exc}")]
                ) from None
        if self.audit_delivery is not None:
            try:
                await self.audit_delivery.start()
            except AuditDeliveryError as exc:
                raise ConfigError([("audit.delivery", str(exc))]) from None
        if self.consent_cache is not None:
            await self.consent_cache.start()
        if self.rights is not None and self.rights.revocations is not None:
            await self.rights.revocations.refresh()
            await self.rights.revocations.start()

    async def close(self) -> None:
        """Close connection pools and the audit log (its final signed checkpoint)."""
        if self.audit_delivery is not None:
            await self.audit_delivery.stop()
        if self.audit is not None:
            self.audit.close()
        if self.consent_cache is not None:
            await self.consent_cache.close()
        if self.rights is not None and self.rights.revocations is not None:
            await self.rights.revocations.stop()
        await self.router.close()
        await self.http.aclose()
        if self.redis is not None:
            await self.redis.aclose()

    def upstream_names(self) -> list[str]:
        return [upstream.name for upstream in self.router.upstreams]

    def router_by_name(self, name: str) -> Upstream:
        return self.router.by_name(name)
