"""A development-only token issuer: one local EC key, its JWKS, and tokens for demo personas.

Never use it in production: anyone with the key file can mint any token. The proxy trusts it only when
``auth.dev_issuer.enabled`` is set explicitly (the demo does), and says so loudly at start-up.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from proxy.auth.jwt_verifier import StaticKeys, TrustedIssuer

__all__ = ["PERSONAS", "DevIssuer", "Persona", "dev_trusted_issuer", "load_or_create_key"]

ALGORITHM = "ES256"
LAB_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


@dataclass(frozen=True)
class Persona:
    """A demo caller: its client, scopes, and whether it needs a patient or practitioner context."""

    name: str
    client_id: str
    scope: str
    description: str
    patient_context: bool = False
    user_type: str | None = None


PERSONAS: dict[str, Persona] = {
    persona.name: persona
    for persona in (
        Persona(
            "patient-app",
            "demo-patient-app",
            "launch/patient openid fhirUser patient/*.rs",
            "a patient's mobile app: read/search that patient's own record",
            patient_context=True,
            user_type="Patient",
        ),
        Persona(
            "clinician",
            "demo-ehr",
            "openid fhirUser user/*.cruds",
            "a clinician in the EHR: everything the user may see",
            user_type="Practitioner",
        ),
        Persona(
            "lab-app",
            "demo-lab-app",
            f"launch/patient patient/Observation.rs?category={LAB_CATEGORY}",
            "a lab-results app: laboratory Observations of one patient only",
            patient_context=True,
        ),
        Persona(
            "backend", "demo-backend", "system/*.rs", "a backend service: read everything, write nothing"
        ),
        Persona(
            "research",
            "demo-research",
            "system/*.rs",
            "a research partner: reads everything, de-identified by the built-in Safe Harbor profile",
        ),
    )
}


def load_or_create_key(path: Path) -> ECKey:
    """The dev signing key at ``path`` (a P-256 PEM), created with mode 0600 when missing."""
    if path.exists():
        key = ECKey.import_key(path.read_bytes())
    else:
        key = ECKey.generate_key("P-256")
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key.as_pem(private=True))
    return ECKey.import_key(
        key.as_dict(private=True), {"kid": key.thumbprint(), "alg": ALGORITHM, "use": "sig"}
    )


class DevIssuer:
    """Mints tokens with the dev key and publishes its public JWKS."""

    def __init__(self, key: ECKey, issuer: str) -> None:
        self.key = key
        self.issuer = issuer

    def jwks(self) -> dict[str, Any]:
        """The public key set (what ``/_dev/jwks.json`` serves)."""
        return {"keys": [self.key.as_dict(private=False)]}

    def mint(self, claims: dict[str, Any], *, audience: str, lifetime: int = 3600) -> str:
        """A signed access token with ``claims`` plus iss/aud/iat/exp/jti."""
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode({"alg": ALGORITHM, "kid": self.key.kid, "typ": "at+jwt"}, payload, self.key)

    def mint_persona(
        self,
        persona: Persona,
        *,
        audience: str,
        patient: str | None = None,
        practitioner: str | None = None,
        lifetime: int = 3600,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """A token for a demo persona (``patient`` is required for patient-context personas)."""
        claims: dict[str, Any] = {
            "sub": f"{persona.name}-user",
            "client_id": persona.client_id,
            "scope": persona.scope,
            **(extra or {}),
        }
        if persona.patient_context:
            if not patient:
                raise ValueError(f"persona {persona.name} needs a patient id")
            claims["patient"] = patient
        if persona.user_type == "Patient" and patient:
            claims["fhirUser"] = f"Patient/{patient}"
        if persona.user_type == "Practitioner" and practitioner:
            claims["fhirUser"] = f"Practitioner/{practitioner}"
        return self.mint(claims, audience=audience, lifetime=lifetime)


def dev_trusted_issuer(issuer: DevIssuer) -> TrustedIssuer:
    """The dev issuer as a trusted issuer of the authenticator (audiences: the public base)."""
    return TrustedIssuer(issuer.issuer, StaticKeys(KeySet([issuer.key])), frozenset({ALGORITHM}))
