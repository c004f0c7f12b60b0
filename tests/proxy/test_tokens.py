"""JWT verification: every token weakness of threat class 15 is refused; valid tokens become principals."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from proxy.auth.authenticator import bearer_token
from proxy.auth.jwt_verifier import StaticKeys, TrustedIssuer, verify_jwt
from proxy.auth.principal import Principal
from proxy.errors import AuthenticationError
from proxy.settings import ClaimSettings

ISSUER = "https://as.example.org"
OTHER_ISSUER = "https://other-as.example.org"
AUDIENCE = "https://fhir.example.org/fhir"
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "other-1"})


def issuers() -> dict[str, TrustedIssuer]:
    algorithms = frozenset({"RS256", "PS256", "ES256"})
    return {
        ISSUER: TrustedIssuer(ISSUER, StaticKeys(KeySet([RSA, EC])), algorithms),
        OTHER_ISSUER: TrustedIssuer(OTHER_ISSUER, StaticKeys(KeySet([OTHER])), algorithms),
    }


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "client_id": "app-1",
        "scope": "patient/*.rs launch/patient",
        "patient": "123",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "t-1",
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def sign(payload: dict[str, Any], key: Any = RSA, alg: str = "RS256", kid: str | None = "rsa-1") -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "at+jwt"}
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(header, payload, key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def verify(token: str, skew: float = 30) -> Principal:
    return asyncio.run(
        verify_jwt(token, issuers(), default_audiences=[AUDIENCE], skew=skew, claim_settings=ClaimSettings())
    )


def test_valid_rs256_token_becomes_a_principal() -> None:
    principal = verify(
        sign(
            claims(
                extensions={
                    "ihe_iua": {
                        "purpose_of_use": [
                            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
                        ]
                    }
                }
            )
        )
    )
    assert principal.issuer == ISSUER
    assert principal.subject == "user-1"
    assert principal.client_id == "app-1"
    assert principal.patient == "123"
    assert principal.purpose_of_use == ("TREAT",)
    assert principal.scopes.allows("Observation", "r")
    assert not principal.scopes.allows("Observation", "c")


def test_es256_and_list_audience() -> None:
    principal = verify(sign(claims(aud=["other", AUDIENCE]), EC, "ES256", "ec-1"))
    assert principal.subject == "user-1"


def test_hl7_b2b_purpose_of_use() -> None:
    token = sign(claims(extensions={"hl7-b2b": {"purpose_of_use": ["urn:oid:2.16.840.1.113883.5.8#ETREAT"]}}))
    assert verify(token).purpose_of_use == ("ETREAT",)


def test_alg_none_is_refused() -> None:
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    token = f"{header}.{b64(orjson.dumps(claims()))}."
    with pytest.raises(AuthenticationError):
        verify(token)


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    public_pem = RSA.as_pem(private=False)
    signing_input = f"{b64(orjson.dumps({'alg': 'HS256', 'kid': 'rsa-1'}))}.{b64(orjson.dumps(claims()))}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(AuthenticationError, match="algorithm"):
        verify(f"{signing_input}.{b64(signature)}")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"aud": None}, "aud"),
        ({"aud": "https://elsewhere.example.org/fhir"}, "aud"),
        ({"aud": [AUDIENCE + "2"]}, "aud"),
        ({"exp": None}, "expiry"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"nbf": int(time.time()) + 600}, "not valid yet"),
        ({"iat": int(time.time()) + 600}, "future"),
        ({"exp": "tomorrow"}, "number"),
        ({"iss": "https://evil.example.org"}, "issuer"),
        ({"iss": None}, "issuer"),
    ],
)
def test_bad_claims_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(AuthenticationError, match=message):
        verify(sign(claims(**changes)))


def test_clock_skew_is_bounded() -> None:
    just_expired = sign(claims(exp=int(time.time()) - 10))
    assert verify(just_expired, skew=30).subject == "user-1"
    with pytest.raises(AuthenticationError):
        verify(just_expired, skew=0)


def test_unknown_kid_is_refused() -> None:
    with pytest.raises(AuthenticationError, match="unknown key"):
        verify(sign(claims(), kid="rsa-2"))


def test_missing_kid_with_several_keys_is_refused() -> None:
    with pytest.raises(AuthenticationError, match="key id"):
        verify(sign(claims(), kid=None))


def test_issuer_mix_up_is_refused() -> None:
    """Signed by the other issuer's key but claiming to come from ours: the signature cannot verify."""
    with pytest.raises(AuthenticationError):
        verify(sign(claims(iss=ISSUER), OTHER, kid="rsa-1"))
    with pytest.raises(AuthenticationError):
        verify(sign(claims(iss=OTHER_ISSUER), RSA, kid="other-1"))


def test_tampered_payload_is_refused() -> None:
    header, _, signature = sign(claims()).split(".")
    forged = b64(orjson.dumps(claims(patient="456")))
    with pytest.raises(AuthenticationError, match="signature"):
        verify(f"{header}.{forged}.{signature}")


def test_algorithm_not_on_the_issuers_list_is_refused() -> None:
    with pytest.raises(AuthenticationError, match="algorithm"):
        verify(sign(claims(), RSA, "RS512"))


def test_key_type_must_match_the_algorithm() -> None:
    with pytest.raises(AuthenticationError):
        verify(sign(claims(), EC, "ES256", kid="rsa-1"))


@pytest.mark.parametrize(
    "scope",
    [
        "patient/*.dr",
        "patient/Observation.sr",
        "patient/Observation.rdus",
        "patient/observation.rs",
        "patient/*.RS",
    ],
)
def test_out_of_order_or_malformed_scopes_grant_nothing(scope: str) -> None:
    principal = verify(sign(claims(scope=scope)))
    for permission in "cruds":
        assert not principal.scopes.allows("Observation", permission)


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        ("Bearer abc.def.ghi", True),
        ("bearer abc", True),
        ("Bearer  abc=", True),
        ("Basic abc", False),
        ("Bearer", False),
        ("Bearer a b", False),
        ("Bearer <script>", False),
    ],
)
def test_bearer_extraction(header: str, valid: bool) -> None:
    if valid:
        assert bearer_token(header)
    else:
        with pytest.raises(AuthenticationError):
            bearer_token(header)


def test_missing_token_challenge_has_no_error_code() -> None:
    with pytest.raises(AuthenticationError) as raised:
        bearer_token(None)
    assert raised.value.headers["WWW-Authenticate"] == 'Bearer realm="fhirwall"'
    with pytest.raises(AuthenticationError) as raised:
        verify(sign(claims(exp=1)))
    assert 'error="invalid_token"' in raised.value.headers["WWW-Authenticate"]
