"""Typed settings: one model, loaded from YAML, overridden by ``FHIRWALL_<SECTION>__<KEY>`` and CLI flags.

Everything is validated at start-up and every problem is reported at once with its key path
(``upstreams.0.auth.token_url: ...``). A configuration that does not validate never starts a proxy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from masking.keys import KeySource
from proxy.audit.alerts import AlertSettings
from proxy.fhir.resource_types import R4_RESOURCE_TYPES

__all__ = [
    "AccessSettings",
    "AuditDeliverySettings",
    "AuditSettings",
    "AuthSettings",
    "BreakGlassSettings",
    "ConfigError",
    "ConsentSettings",
    "IntrospectionSettings",
    "IssuerSettings",
    "LimitsSettings",
    "MaskingProfileSource",
    "MaskingSelection",
    "MaskingSettings",
    "PolicySettings",
    "RateLimitQuota",
    "RateLimitRule",
    "RateLimitSettings",
    "RedisSettings",
    "ServerSettings",
    "ServerTlsSettings",
    "Settings",
    "TelemetrySettings",
    "UpstreamAuthSettings",
    "UpstreamSettings",
    "UpstreamTlsSettings",
    "load_settings",
]

ENV_PREFIX = "FHIRWALL_"
MiB = 1024 * 1024


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every ``(key path, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{path}: {message}" for path, message in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an absolute http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    return value.rstrip("/")


class ServerTlsSettings(_Model):
    """Inbound TLS. Only TLS 1.2 and newer are offered."""

    cert_file: Path = Field(description="PEM certificate chain served to clients.")
    key_file: Path = Field(description="PEM private key of the certificate.")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version accepted.")
    client_ca_file: Path | None = Field(
        None, description="CA bundle; when set, clients must present a certificate."
    )
    reload_seconds: float = Field(
        30.0,
        ge=0,
        description="Seconds between checks of these files; changed files serve new connections without a "
        "restart (unusable ones are logged and the previous ones kept). 0 turns reloading off.",
    )

    _files = field_validator("cert_file", "key_file", "client_ca_file")(_existing_file)


class ServerSettings(_Model):
    """How the proxy listens and how it names itself to clients."""

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8080, ge=1, le=65535, description="TCP port to bind.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes.")
    base_path: str = Field("/fhir", description="Path under which the FHIR API is served.")
    public_base_url: str | None = Field(
        None, description="The FHIR base clients see (absolute). Default: derived from the request's Host."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) of reverse proxies whose X-Forwarded-*/Forwarded headers are honoured.",
    )
    tls: ServerTlsSettings | None = Field(None, description="Serve HTTPS (TLS 1.2+).")
    graceful_shutdown_seconds: float = Field(30.0, ge=0, description="How long in-flight requests may drain.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    access_log: bool = Field(False, description="Log one line per request (method, route, status; no PHI).")

    @field_validator("base_path")
    @classmethod
    def _check_base_path(cls, value: str) -> str:
        if not value.startswith("/") or "//" in value or "%" in value or "?" in value:
            raise ValueError("must be an absolute path such as /fhir")
        return value.rstrip("/")

    @field_validator("public_base_url")
    @classmethod
    def _check_public_base(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP network: {item!r}") from exc
        return value

    def trusted_networks(self) -> list[IPv4Network | IPv6Network]:
        """The trusted proxy networks, parsed."""
        return [ip_network(item, strict=False) for item in self.trusted_proxies]


class LimitsSettings(_Model):
    """Size limits (bytes)."""

    max_body_bytes: int = Field(16 * MiB, ge=1024, description="Largest FHIR JSON request body accepted.")
    max_binary_bytes: int = Field(
        256 * MiB, ge=1024, description="Largest raw (Binary) body streamed through."
    )
    max_upstream_body_bytes: int = Field(
        128 * MiB, ge=1024, description="Largest FHIR JSON response read from an upstream."
    )


class UpstreamAuthSettings(_Model):
    """The proxy's own credentials towards an upstream (the client's token is never forwarded)."""

    type: Literal["none", "bearer", "client_credentials"] = Field("none", description="Credential kind.")
    token_env: str | None = Field(None, description="bearer: environment variable holding the token.")
    token_file: Path | None = Field(
        None, description="bearer: file holding the token (re-read when it changes)."
    )
    token_url: str | None = Field(None, description="client_credentials: the token endpoint.")
    client_id: str | None = Field(None, description="client_credentials: the client id.")
    client_secret_env: str | None = Field(None, description="client_credentials: env var holding the secret.")
    client_secret_file: Path | None = Field(None, description="client_credentials: file holding the secret.")
    scope: str | None = Field(None, description="client_credentials: scope to request.")
    auth_method: Literal["client_secret_basic", "client_secret_post"] = Field(
        "client_secret_basic", description="client_credentials: how the client authenticates."
    )

    _files = field_validator("token_file", "client_secret_file")(_existing_file)

    @model_validator(mode="after")
    def _check_kind(self) -> UpstreamAuthSettings:
        problems: list[str] = []
        if self.type == "bearer":
            problems += _one_secret_source(self.token_env, self.token_file, "token")
        if self.type == "client_credentials":
            if not self.token_url:
                problems.append("client_credentials needs token_url")
            if not self.client_id:
                problems.append("client_credentials needs client_id")
            problems += _one_secret_source(self.client_secret_env, self.client_secret_file, "client_secret")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _one_secret_source(env: str | None, file: Path | None, what: str) -> list[str]:
    if (env is None) == (file is None):
        return [f"set exactly one of {what}_env or {what}_file"]
    if env is not None and not os.environ.get(env):
        return [f"environment variable {env} is not set"]
    return []


class UpstreamTlsSettings(_Model):
    """TLS towards an upstream: custom CA, and a client certificate for mTLS."""

    ca_file: Path | None = Field(None, description="CA bundle to verify the upstream.")
    cert_file: Path | None = Field(None, description="Client certificate (mTLS).")
    key_file: Path | None = Field(None, description="Client certificate key (mTLS).")
    verify: bool = Field(True, description="Verify the upstream certificate (never disable in production).")
    reload_seconds: float = Field(
        30.0,
        ge=0,
        description="Upstreams: seconds between checks of these files; changed files apply to new "
        "connections without a restart (unusable ones are logged and the previous ones kept). 0: off.",
    )

    _files = field_validator("ca_file", "cert_file", "key_file")(_existing_file)

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class UpstreamSettings(_Model):
    """One upstream FHIR server and the resource types routed to it."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Short name used in logs and metrics.")
    url: str = Field(description="The upstream FHIR base URL.")
    resource_types: list[str] = Field(
        default_factory=lambda: ["*"], description='Types routed here; ["*"] marks the default upstream.'
    )
    auth: UpstreamAuthSettings = Field(default_factory=UpstreamAuthSettings)
    tls: UpstreamTlsSettings = Field(default_factory=UpstreamTlsSettings)
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    read_timeout: float = Field(60.0, gt=0, description="Seconds to wait for the response.")
    max_connections: int = Field(100, ge=1, description="Connection pool size.")

    _url = field_validator("url")(_http_url)

    @field_validator("resource_types")
    @classmethod
    def _check_types(cls, value: list[str]) -> list[str]:
        unknown = [item for item in value if item != "*" and item not in R4_RESOURCE_TYPES]
        if unknown:
            raise ValueError(f"unknown R4 resource types: {', '.join(unknown)}")
        if not value:
            raise ValueError("must name at least one type, or '*'")
        return value


DEFAULT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]
_ASYMMETRIC = frozenset(DEFAULT_ALGORITHMS)


class IssuerSettings(_Model):
    """A trusted issuer of JWT access tokens."""

    issuer: str = Field(description="The exact `iss` value.")
    jwks_uri: str = Field(description="Where the issuer publishes its signing keys (JWKS).")
    audiences: list[str] = Field(
        default_factory=list,
        description="Accepted `aud` values; default: auth.audiences, else the public base.",
    )
    algorithms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS), description="Accepted signature algorithms."
    )

    _urls = field_validator("jwks_uri")(_http_url)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        refused = [alg for alg in value if alg not in _ASYMMETRIC]
        if refused:
            raise ValueError(
                f"only asymmetric algorithms are accepted ({', '.join(DEFAULT_ALGORITHMS)}); "
                f"refused: {', '.join(refused)}"
            )
        if not value:
            raise ValueError("at least one algorithm is needed")
        return value


class IntrospectionSettings(_Model):
    """RFC 7662 token introspection for opaque tokens."""

    endpoint: str = Field(description="The introspection endpoint.")
    client_id: str = Field(description="The proxy's client id at the authorization server.")
    client_secret_env: str | None = Field(None, description="Environment variable holding the client secret.")
    client_secret_file: Path | None = Field(None, description="File holding the client secret.")
    issuer: str | None = Field(None, description="Issuer recorded for introspected principals.")
    cache_seconds: float = Field(60.0, gt=0, le=3600, description="Longest time an active answer is reused.")
    negative_cache_seconds: float = Field(
        5.0, ge=0, le=300, description="How long an inactive answer is reused."
    )

    _url = field_validator("endpoint")(_http_url)
    _file = field_validator("client_secret_file")(_existing_file)

    @model_validator(mode="after")
    def _secret(self) -> IntrospectionSettings:
        problems = _one_secret_source(self.client_secret_env, self.client_secret_file, "client_secret")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ClaimSettings(_Model):
    """Where non-standard facts live in tokens (dotted paths)."""

    purpose_of_use: list[str] = Field(
        default_factory=lambda: ["extensions.ihe_iua.purpose_of_use", "extensions.hl7-b2b.purpose_of_use"],
        description="Claims holding the purpose of use (first present wins).",
    )
    roles: list[str] = Field(default_factory=lambda: ["roles"], description="Claims holding roles.")
    organizations: list[str] = Field(
        default_factory=lambda: ["extensions.ihe_iua.subject_organization_id", "organization"],
        description="Claims holding the user's organisations.",
    )


class DevIssuerSettings(_Model):
    """A development-only token issuer served by the proxy itself (the demo's). Never in production."""

    enabled: bool = Field(False, description="Serve /_dev/jwks.json and trust tokens signed by the dev key.")
    key_file: Path = Field(Path(".fhirwall-dev/issuer-key.pem"), description="PEM key; created if missing.")
    issuer: str | None = Field(None, description="The dev issuer URL (default: <public root>/_dev).")


class AuthorizationServerSettings(_Model):
    """The OAuth2/SMART authorization server advertised in SMART discovery."""

    metadata_url: str | None = Field(
        None,
        description="Its OpenID/OAuth metadata URL (fetched and cached), e.g. "
        "<issuer>/.well-known/openid-configuration.",
    )
    authorization_endpoint: str | None = Field(None, description="Overrides the metadata value.")
    token_endpoint: str | None = Field(None, description="Overrides the metadata value.")
    capabilities: list[str] = Field(
        default_factory=lambda: [
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-standalone-patient",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
        ],
        description="SMART capabilities advertised.",
    )


class AuthSettings(_Model):
    """Who may call the proxy. Without issuers or introspection the proxy only binds to loopback."""

    mode: Literal["auto", "smart", "none"] = Field(
        "auto",
        description="auto: SMART when issuers/introspection are configured, else no authentication "
        "(allowed only on a loopback interface); none: explicitly unauthenticated.",
    )
    issuers: list[IssuerSettings] = Field(default_factory=list, description="Trusted JWT issuers.")
    audiences: list[str] = Field(default_factory=list, description="Accepted `aud` values for every issuer.")
    introspection: IntrospectionSettings | None = Field(None, description="Opaque-token introspection.")
    clock_skew_seconds: float = Field(60.0, ge=0, le=300, description="Tolerance for exp/nbf/iat.")
    jwks_min_refresh_seconds: float = Field(
        30.0, ge=1, description="At most one JWKS refresh per this interval."
    )
    jwks_max_age_seconds: float = Field(3600.0, ge=60, description="JWKS are refetched after this age.")
    claims: ClaimSettings = Field(default_factory=ClaimSettings)
    dev_issuer: DevIssuerSettings = Field(default_factory=DevIssuerSettings)
    authorization_server: AuthorizationServerSettings = Field(default_factory=AuthorizationServerSettings)

    @property
    def configured(self) -> bool:
        """True when any way of verifying tokens is configured."""
        return bool(self.issuers or self.introspection or self.dev_issuer.enabled)

    @property
    def enforced(self) -> bool:
        """True when requests must carry a valid token."""
        return self.mode == "smart" or (self.mode == "auto" and self.configured)


class PolicySettings(_Model):
    """How SMART scopes and compartments are enforced."""

    hide_existence: bool = Field(
        True, description="Answer 404 (not 403) for a resource that exists but may not be seen."
    )
    noncompartment_types_for_patient_scopes: bool = Field(
        True,
        description="patient/ scopes also reach types outside the Patient compartment (Medication, ...).",
    )
    protected_write_types: list[str] = Field(
        default_factory=lambda: ["Consent", "AuditEvent"],
        description="Types only principals with a role in protected_write_roles may write.",
    )
    protected_write_roles: list[str] = Field(
        default_factory=lambda: ["consent-manager"], description="Roles allowed to write protected types."
    )
    patients_write_own_consent: bool = Field(
        False,
        description="A patient (fhirUser Patient, in patient context) may write Consents about themselves.",
    )
    allowed_operations: list[str] = Field(
        default_factory=lambda: ["everything", "validate", "lastn", "meta"],
        description="Operations the policy knows how to enforce; every other $operation is refused.",
    )
    paging_key_env: str | None = Field(
        None,
        description="Env var with a base64 32-byte key sealing paging links (share it across replicas); "
        "default: a random key per process.",
    )


class BreakGlassSettings(_Model):
    """Who may override a consent denial in an emergency (purpose of use BTG/ETREAT from the token)."""

    eligible_roles: list[str] = Field(
        default_factory=list, description="Token roles allowed to break the glass."
    )
    eligible_clients: list[str] = Field(
        default_factory=list, description="client_ids allowed to break the glass."
    )
    justification_claim: str | None = Field(
        None, description="Dotted claim path holding the user's justification (e.g. btg_reason)."
    )
    require_justification: bool = Field(True, description="Refuse break-glass without a justification claim.")


class ConsentSettings(_Model):
    """Patient consent enforcement (FHIR Consent records on the upstream routed for Consent)."""

    enabled: bool = Field(False, description="Check the patient's Consents on every resource returned.")
    implicit_policy: Literal["deny", "all-normal", "basic-normal", "break-glass-only"] = Field(
        "all-normal",
        description="What applies when a patient has no active Consent (IHE PCF implicit policies).",
    )
    implicit_policy_by_purpose: dict[
        str, Literal["deny", "all-normal", "basic-normal", "break-glass-only"]
    ] = Field(default_factory=dict, description="Per purpose-of-use code (e.g. HRESCH: deny).")
    combining: Literal["deny-overrides", "permit-overrides", "most-recent"] = Field(
        "deny-overrides", description="How several applicable active Consents combine."
    )
    cache: Literal["memory", "redis"] = Field(
        "memory", description="redis: shared by replicas (needs redis.url)."
    )
    cache_seconds: float = Field(
        60.0, gt=0, le=3600, description="Longest time a patient's Consents are reused."
    )
    on_lookup_failure: Literal["deny"] = Field(
        "deny", description="Always deny when Consents cannot be read."
    )
    break_glass: BreakGlassSettings = Field(default_factory=BreakGlassSettings)


class MaskingProfileSource(_Model):
    """Where a masking profile comes from: a built-in one or a YAML file."""

    builtin: str | None = Field(None, description="A built-in profile (safe-harbor, limited-data-set, ...).")
    file: Path | None = Field(None, description="A profile YAML file.")

    @model_validator(mode="after")
    def _one_source(self) -> MaskingProfileSource:
        if (self.builtin is None) == (self.file is None):
            raise ValueError("give exactly one of builtin, file")
        _existing_file(self.file)
        return self


class MaskingSelection(_Model):
    """One selection rule: when every condition given holds, ``profile`` applies (first rule wins)."""

    profile: str = Field(description="A profile name from masking.profiles, or none (no masking).")
    client_id: list[str] | None = Field(None, description="The token's client_id is one of these.")
    scope: list[str] | None = Field(None, description="The token grants one of these scopes (exact text).")
    role: list[str] | None = Field(None, description="The token carries one of these roles.")
    purpose_of_use: list[str] | None = Field(None, description="The token's purpose of use is one of these.")
    route: list[str] | None = Field(None, description="The request goes to one of these upstreams (by name).")
    header: list[str] | None = Field(
        None, description="The request header masking.profile_header holds one of these values."
    )


class ReidentificationSettings(_Model):
    """Who may reverse native reversible pseudonyms (``POST [base]/$reidentify``); every call is audited."""

    roles: list[str] = Field(default_factory=list, description="Token roles allowed to re-identify.")
    clients: list[str] = Field(
        default_factory=list, description="client_ids allowed to re-identify (with one of the roles)."
    )


class MaskingSettings(_Model):
    """Masking profiles and how the proxy picks one per request."""

    profiles: dict[str, MaskingProfileSource] = Field(
        default_factory=dict, description="Profiles by name (the name used in selection rules)."
    )
    keys: dict[str, KeySource] = Field(
        default_factory=dict, description="Named keys the profiles refer to (env, file or inline value)."
    )
    default_profile: str | None = Field(
        None, description="Profile used when no selection rule matches; none = no masking (must be explicit)."
    )
    selection: list[MaskingSelection] = Field(default_factory=list, description="Ordered selection rules.")
    profile_header: str | None = Field(
        None, description="Request header a client may use to ask for a profile (only values rules allow)."
    )
    reidentification: ReidentificationSettings = Field(default_factory=ReidentificationSettings)
    cache_entries: int = Field(
        10_000,
        ge=0,
        le=1_000_000,
        description="Masked resources kept per profile for reuse, by content digest (0: off; "
        "profiles with random methods are never cached).",
    )
    cache_bytes: int = Field(
        32 * 2**20,
        ge=0,
        le=2**40,
        description="Bytes the masking cache keeps per profile (masked resources, and Bundle entry arrays "
        "with the bytes they were masked from); least recently used first out (0: off).",
    )

    @property
    def enabled(self) -> bool:
        """Whether masking is configured at all."""
        return bool(self.profiles)

    @model_validator(mode="after")
    def _check_names(self) -> MaskingSettings:
        if not self.profiles:
            if self.selection or self.default_profile is not None:
                raise ValueError(
                    "masking.selection/default_profile name profiles but masking.profiles is empty"
                )
            return self
        if self.default_profile is None:
            raise ValueError(
                "masking.default_profile is required when profiles are configured (a name, or none)"
            )
        known = set(self.profiles) | {"none"}
        unknown = sorted({self.default_profile, *(rule.profile for rule in self.selection)} - known)
        if unknown:
            raise ValueError(f"unknown masking profiles {unknown}; configured: {sorted(self.profiles)}")
        if any(rule.header for rule in self.selection) and not self.profile_header:
            raise ValueError("a selection rule uses header but masking.profile_header is not set")
        return self


class AuditDeliverySettings(_Model):
    """Where and how the audit log's AuditEvents are delivered (``audit.delivery``)."""

    target: Literal["none", "fhir", "file"] = Field(
        "none", description="none: keep the events in the local log only; fhir: an audit server; file: JSONL."
    )
    url: str | None = Field(
        None, description="fhir: the audit server's FHIR base URL (may be an upstream's)."
    )
    auth: UpstreamAuthSettings = Field(
        default_factory=UpstreamAuthSettings, description="fhir: the proxy's credentials at the audit server."
    )
    tls: UpstreamTlsSettings = Field(
        default_factory=UpstreamTlsSettings, description="fhir: TLS towards the audit server."
    )
    connect_timeout: float = Field(5.0, gt=0, description="fhir: seconds to establish a connection.")
    read_timeout: float = Field(30.0, gt=0, description="fhir: seconds to wait for an answer.")
    file: Path | None = Field(None, description="file: JSON-lines file the delivered AuditEvents go to.")
    batch_size: int = Field(
        100, ge=1, le=10_000, description="Events per batch Bundle; 1 sends one PUT per event."
    )
    linger_seconds: float = Field(
        0.05,
        ge=0,
        le=10,
        description="How long new records may wait for a batch to fill before they are delivered (fewer, "
        "fuller batches, and fewer syncs of the log, cursor and file, under load); 0: deliver at once.",
    )
    retry_initial_seconds: float = Field(0.5, gt=0, description="First retry delay after a failure.")
    retry_max_seconds: float = Field(60.0, gt=0, description="Longest retry delay (exponential backoff).")
    max_backlog: int = Field(
        100_000, ge=1, description="Records not yet delivered at which new requests are refused or held."
    )
    on_backlog_full: Literal["refuse", "block"] = Field(
        "refuse", description="refuse: answer 503 at once; block: wait up to block_timeout_seconds first."
    )
    block_timeout_seconds: float = Field(5.0, gt=0, description="block: longest wait for backlog room.")
    drain_timeout_seconds: float = Field(
        10.0, ge=0, description="On shutdown, how long delivery may go on to empty the backlog."
    )
    cursor_file: Path | None = Field(None, description="Delivery position; default: <log>.cursor.")
    dead_letter_file: Path | None = Field(
        None, description="Records the server rejected for good; default: <log>.dead-letter.jsonl."
    )
    spool: Literal["log", "redis"] = Field(
        "log",
        description="Where delivery reads the records from. log: this replica's local hash-chained log "
        "(needs a persistent volume). redis: each request's entry is also appended to the Redis stream "
        "fhirwall:audit:spool before the answer goes out (on_failure: refuse answers 503 when Redis cannot "
        "take it) and every replica delivers from it through one consumer group, acknowledging an entry "
        "only once the target confirmed it; the local log stays the tamper-evident record. Needs redis.url "
        "and a target. Durable only as far as Redis is: run it with appendonly yes (AOF, appendfsync "
        "everysec or always) and no eviction (maxmemory-policy noeviction); max_backlog counts the "
        "stream's undelivered entries. The append waits at most 1 s; after a failure requests are refused "
        "at once for 1 s.",
    )
    claim_idle_seconds: float = Field(
        60.0,
        gt=0,
        description="spool redis: seconds an entry may stay unacknowledged by the replica that read it "
        "before another replica claims and delivers it (a replica that died).",
    )
    runner: Literal["inline", "process"] = Field(
        "inline",
        description="spool log: where delivery runs. inline: a task of each serving process. process: a "
        "child process per serving process (restarted if it dies, stopped with it), so reading the log, "
        "making the AuditEvents and syncing files never take the serving process's CPU or event loop; "
        "back-pressure then follows the delivery cursor file.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="after")
    def _check_target(self) -> AuditDeliverySettings:
        if self.target == "fhir" and not self.url:
            raise ValueError("audit.delivery.target fhir needs audit.delivery.url")
        if self.target == "file" and self.file is None:
            raise ValueError("audit.delivery.target file needs audit.delivery.file")
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must not be less than retry_initial_seconds")
        if self.spool == "redis" and self.target == "none":
            raise ValueError("audit.delivery.spool redis needs a delivery target (fhir or file)")
        if self.runner == "process" and self.spool != "log":
            raise ValueError("audit.delivery.runner process delivers from the local log (spool log)")
        return self

    @property
    def enabled(self) -> bool:
        """Whether AuditEvents are delivered anywhere."""
        return self.target != "none"


class TelemetrySettings(_Model):
    """OpenTelemetry export of the audit trail: spans and metrics per request, without PHI by default."""

    exporter: Literal["none", "otlp-http", "otlp-grpc", "console", "jsonl"] = Field(
        "none",
        description="Where spans and metrics go: none, OTLP over HTTP or gRPC, the console, or a JSON-lines "
        "file.",
    )
    endpoint: str | None = Field(
        None,
        description="OTLP collector: base URL for otlp-http (/v1/traces and /v1/metrics are appended), "
        "http(s)://host:port for otlp-grpc. Unset: the OTEL_EXPORTER_OTLP_* environment variables.",
    )
    jsonl_file: Path | None = Field(None, description="jsonl: the file spans and metrics are appended to.")
    service_name: str = Field(
        "fhirwall",
        min_length=1,
        description="service.name of the resource (OTEL_SERVICE_NAME wins over the default; "
        "OTEL_RESOURCE_ATTRIBUTES adds attributes).",
    )
    include_phi: bool = Field(
        False,
        description="Add keyed HMAC-SHA256 hashes of patient and Consent ids (never clear ids); needs "
        "phi_hash_key_env.",
    )
    phi_hash_key_env: str | None = Field(
        None,
        description="Env var with the HMAC key (at least 32 bytes) for PHI hashes and the user pseudonym; "
        "unset: the pseudonym uses a random per-process key.",
    )
    metrics: bool = Field(True, description="Export metrics as well as spans.")
    metric_interval_seconds: float = Field(
        60.0, gt=0, le=3600, description="Seconds between two metric exports."
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="after")
    def _check_combination(self) -> TelemetrySettings:
        problems: list[str] = []
        if self.exporter == "jsonl" and self.jsonl_file is None:
            problems.append("exporter jsonl needs jsonl_file")
        if self.exporter != "jsonl" and self.jsonl_file is not None:
            problems.append("jsonl_file is only used by exporter jsonl")
        if self.endpoint is not None and not self.exporter.startswith("otlp-"):
            problems.append("endpoint is only used by the otlp-http and otlp-grpc exporters")
        if self.include_phi and not self.phi_hash_key_env:
            problems.append("include_phi needs phi_hash_key_env (PHI is only ever exported hashed)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AuditSettings(_Model):
    """The audit trail: BALP AuditEvents for every request in a local hash-chained log."""

    log_file: Path | None = Field(
        None,
        description=(
            "Append-only, hash-chained audit log (JSON lines); unset = off. With server.workers > 1 each "
            "worker writes its own log, <stem>.<slot><suffix> (audit.jsonl: audit.0.jsonl, audit.1.jsonl, "
            "...), holding slot <log>.slot-<slot>.lock while it runs; `fhirwall audit` reads several files."
        ),
    )
    log_key_env: str | None = Field(
        None, description="Env var with the key that signs the log's checkpoints (required with log_file)."
    )
    checkpoint_every: int = Field(1000, ge=1, le=1_000_000, description="Records between signed checkpoints.")
    fsync: Literal["always", "interval", "never"] = Field(
        "interval",
        description="always: fsync every record; interval: about once a second; never: the OS decides.",
    )
    on_failure: Literal["refuse", "continue"] = Field(
        "refuse", description="When the log cannot be written: refuse the request (503) or serve it anyway."
    )
    observer_name: str = Field("fhirwall", description="This proxy's name as the AuditEvent observer.")
    site: str | None = Field(None, description="Site or instance name recorded in AuditEvent.source.site.")
    alerts: AlertSettings = Field(default_factory=AlertSettings, description="Anomaly alert rules.")
    telemetry: TelemetrySettings = Field(
        default_factory=TelemetrySettings,
        description="OpenTelemetry spans and metrics made from the records.",
    )
    delivery: AuditDeliverySettings = Field(
        default_factory=AuditDeliverySettings, description="Delivery of the logged AuditEvents elsewhere."
    )

    _workers: int = PrivateAttr(1)

    @property
    def workers(self) -> int:
        """The worker processes that write logs named by ``log_file`` (``server.workers``)."""
        return self._workers

    @model_validator(mode="after")
    def _key_with_file(self) -> AuditSettings:
        if self.log_file is not None and not self.log_key_env:
            raise ValueError("audit.log_file needs audit.log_key_env (the checkpoint signing key)")
        if self.delivery.target != "none" and self.log_file is None:
            raise ValueError("audit.delivery needs audit.log_file (the log is the delivery spool)")
        return self

    @property
    def enabled(self) -> bool:
        """Whether requests are recorded at all (a local log, telemetry, or both)."""
        return self.log_file is not None or self.telemetry.exporter != "none"


class AccessSettings(_Model):
    """The fine-grained access policy for people and clients (roles, departments, approvals, revocation)."""

    policy_file: Path | None = Field(
        None, description="The access-policy YAML file (see `fhirwall access-policy-schema`); unset = off."
    )

    _exists = field_validator("policy_file")(_existing_file)

    @property
    def enabled(self) -> bool:
        """Whether the access-policy layer runs."""
        return self.policy_file is not None


RateLimitInteraction = Literal[
    "read", "vread", "search", "history", "create", "update", "patch", "delete", "batch", "operation"
]


class RateLimitQuota(_Model):
    """A fixed-window request count per key: stops bulk scraping over hours or days."""

    requests: int = Field(ge=1, description="Requests allowed per window (each counts 1, whatever its cost).")
    per_seconds: int = Field(
        ge=1,
        le=31 * 86_400,
        description="Window length in seconds: 3600 hourly, 86400 daily. Windows are aligned to the Unix "
        "epoch (a daily window starts at 00:00 UTC) and the count starts again at zero in each one.",
    )


class RateLimitRule(_Model):
    """One token bucket per key (and optionally a quota); every rule matching a request is charged."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Short unique name, used in answers, logs and keys."
    )
    per: Literal["client", "user", "client+user", "address"] = Field(
        description="Whose bucket: the token's client_id, its user (fhirUser, else sub), both together, or "
        "the client's address (for unauthenticated traffic; X-Forwarded-For only from trusted proxies). A "
        "token without that identity shares one bucket with the other tokens without it."
    )
    rate: float = Field(gt=0, description="Tokens added per second: the sustained request rate.")
    burst: int = Field(ge=1, description="Bucket size: the most tokens available at once (full at first).")
    cost: int = Field(1, ge=1, description="Tokens one matching request takes (e.g. more for searches).")
    client_id: list[str] | None = Field(None, description="Only requests of these client_ids match.")
    interaction: list[RateLimitInteraction] | None = Field(
        None,
        description="Only these interactions match (search includes paging links and POST _search; "
        "history includes system, type and instance history; batch includes transaction).",
    )
    resource_type: list[str] | None = Field(
        None,
        description="Only requests for these types match; requests whose type the URL does not name "
        "(system searches and history, batches, paging links) match too.",
    )
    quota: RateLimitQuota | None = Field(None, description="Also allow at most N requests per window.")

    @field_validator("resource_type")
    @classmethod
    def _check_types(cls, value: list[str] | None) -> list[str] | None:
        unknown = [item for item in value or () if item not in R4_RESOURCE_TYPES]
        if unknown:
            raise ValueError(f"unknown R4 resource types: {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _cost_fits(self) -> RateLimitRule:
        if self.cost > self.burst:
            raise ValueError("cost must not exceed burst (such a request could never be served)")
        return self


class RateLimitSettings(_Model):
    """Rate limits and quotas per client, user or address (token buckets; shared through Redis if set)."""

    enabled: bool = Field(
        False, description="Charge every FHIR request to the buckets of the rules it matches."
    )
    rules: list[RateLimitRule] = Field(
        default_factory=list,
        description="Every matching rule applies: a request is served only if each has enough tokens (and "
        "quota left), and then takes from each; otherwise 429 with Retry-After and nothing is taken.",
    )
    on_backend_failure: Literal["refuse", "allow"] = Field(
        "refuse",
        description="When Redis cannot be reached: refuse the request (503, the default) or serve it "
        "unlimited. Without redis.url the buckets are in memory, per worker process.",
    )

    @model_validator(mode="after")
    def _check_rules(self) -> RateLimitSettings:
        names = [rule.name for rule in self.rules]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"rule names must be unique: {', '.join(twice)}")
        if self.enabled and not self.rules:
            raise ValueError("rate_limits.enabled needs at least one rule")
        return self


class RedisSettings(_Model):
    """Shared state for several replicas (optional)."""

    url: str | None = Field(None, description="redis:// or rediss:// URL; unset = no Redis.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


class Settings(_Model):
    """The whole fhirwall configuration."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    upstreams: Annotated[list[UpstreamSettings], Field(min_length=1)] = Field(
        description="Upstream FHIR servers; exactly one is the default (resource_types: ['*'])."
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    consent: ConsentSettings = Field(default_factory=ConsentSettings)
    masking: MaskingSettings = Field(default_factory=MaskingSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    rate_limits: RateLimitSettings = Field(
        default_factory=RateLimitSettings, description="Rate limits and quotas per client, user or address."
    )

    @model_validator(mode="after")
    def _check_access(self) -> Settings:
        if self.access.enabled and not self.auth.enforced:
            raise ValueError("access.policy_file needs authentication (who is asking, in which roles)")
        return self

    @model_validator(mode="after")
    def _check_consent(self) -> Settings:
        if self.consent.enabled and self.consent.cache == "redis" and not self.redis.url:
            raise ValueError("consent.cache is redis but redis.url is not set")
        if self.consent.enabled and not self.auth.enforced:
            raise ValueError("consent.enabled needs authentication (who is asking, for what purpose)")
        return self

    @model_validator(mode="after")
    def _check_unauthenticated_exposure(self) -> Settings:
        if self.auth.mode == "auto" and not self.auth.configured and not _is_loopback(self.server.host):
            raise ValueError(
                f"no authentication is configured but server.host is {self.server.host}: configure "
                "auth.issuers "
                "or auth.introspection, or set auth.mode: none to expose an unauthenticated proxy on purpose"
            )
        if self.auth.mode == "smart" and not self.auth.configured:
            raise ValueError("auth.mode is smart but no issuers, introspection or dev issuer are configured")
        return self

    @model_validator(mode="after")
    def _check_audit(self) -> Settings:
        self.audit._workers = self.server.workers  # several workers: one log (and delivery) per worker
        delivery = self.audit.delivery
        explicit = [
            name for name in ("cursor_file", "dead_letter_file") if getattr(delivery, name) is not None
        ]
        if self.server.workers > 1 and delivery.enabled and explicit:
            raise ValueError(
                f"audit.delivery.{' and '.join(explicit)} name one file, but with server.workers > 1 each "
                "worker delivers its own log and needs its own; leave them unset (they follow each "
                "worker's log: <log>.cursor, <log>.dead-letter.jsonl)"
            )
        return self

    @model_validator(mode="after")
    def _check_masking(self) -> Settings:
        masking = self.masking
        names = {upstream.name for upstream in self.upstreams}
        unknown = sorted({r for rule in masking.selection for r in rule.route or ()} - names)
        if unknown:
            raise ValueError(f"masking.selection names unknown upstreams {unknown}")
        needs_token = any(
            rule.client_id or rule.scope or rule.role or rule.purpose_of_use for rule in masking.selection
        ) or bool(masking.reidentification.roles)
        if needs_token and not self.auth.enforced:
            raise ValueError("masking selection by token (client, scope, role, purpose) needs authentication")
        return self

    @model_validator(mode="after")
    def _check_routes(self) -> Settings:
        names = [upstream.name for upstream in self.upstreams]
        problems = [f"upstream name {n!r} is used twice" for n in sorted(set(names)) if names.count(n) > 1]
        defaults = [upstream.name for upstream in self.upstreams if "*" in upstream.resource_types]
        if len(defaults) != 1:
            problems.append(f"exactly one upstream must have resource_types ['*'] (found {len(defaults)})")
        claimed: dict[str, str] = {}
        for upstream in self.upstreams:
            for resource_type in upstream.resource_types:
                if resource_type in claimed and resource_type != "*":
                    problems.append(
                        f"{resource_type} is routed to both {claimed[resource_type]} and {upstream.name}"
                    )
                claimed[resource_type] = upstream.name
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _check_rate_limits(self) -> Settings:
        if not self.rate_limits.enabled or self.auth.enforced:
            return self
        for index, rule in enumerate(self.rate_limits.rules):
            if rule.per != "address" or rule.client_id:
                what = "a client_id condition" if rule.per == "address" else f"per: {rule.per}"
                raise ValueError(
                    f"rate_limits.rules.{index}: {what} needs authentication (without it, rules apply "
                    "per: address only)"
                )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_network(host).is_loopback
    except ValueError:
        return False


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings from ``path`` (YAML), then ``FHIRWALL_*`` variables, then ``overrides`` (CLI flags)."""
    problems: list[tuple[str, str]] = []
    data = _read_yaml(Path(path), problems) if path is not None else {}
    for key_path, value in _env_overrides(os.environ if environ is None else environ, problems):
        _set_path(data, key_path, value, problems)
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted.split("."), value, problems)
    if problems:
        raise ConfigError(problems)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_problem(error) for error in exc.errors()]) from exc


def _read_yaml(path: Path, problems: list[tuple[str, str]]) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append((str(path), f"cannot read: {exc.strerror}"))
        return {}
    except yaml.YAMLError as exc:
        problems.append((str(path), f"not valid YAML: {exc}"))
        return {}
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        problems.append((str(path), "the top level must be a mapping"))
        return {}
    return loaded


def _env_overrides(
    environ: Mapping[str, str], problems: list[tuple[str, str]]
) -> list[tuple[list[str], Any]]:
    found: list[tuple[list[str], Any]] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_PREFIX + "_"):
            continue
        key_path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(key_path) == 1 and key_path[0] not in Settings.model_fields:
            continue  # not an override: e.g. FHIRWALL_PORT from Kubernetes service links, a secret's name
        try:
            found.append((key_path, yaml.safe_load(raw) if raw else raw))
        except yaml.YAMLError:
            problems.append((name, "value is not a valid YAML/JSON scalar or collection"))
    return found


def _set_path(data: dict[str, Any], key_path: list[str], value: Any, problems: list[tuple[str, str]]) -> None:
    node: Any = data
    for index, key in enumerate(key_path[:-1]):
        child_key: Any = int(key) if isinstance(node, list) and key.isdigit() else key
        try:
            child = node[child_key] if isinstance(node, list) else node.setdefault(child_key, {})
        except (IndexError, TypeError):
            problems.append((".".join(key_path[: index + 1]), "cannot be overridden: no such entry"))
            return
        node = child
    last = key_path[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        problems.append((".".join(key_path), "cannot be overridden: no such entry"))


def _problem(error: Mapping[str, Any]) -> tuple[str, str]:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"]).removeprefix("Value error, ")
    return location, message
