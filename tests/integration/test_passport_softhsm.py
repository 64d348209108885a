"""Passports signed by a real SoftHSM token: the HSM's CKM_ECDSA output is the JWS form as is."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import jwt
import pytest

from gateway.errors import PassportSignatureError
from gateway.hsm import Hsm
from gateway.keys import KeyRef, Purpose
from gateway.passport import PassportVerifier, issue
from gateway.passport_claims import PassportClaims, XbgwClaims

ISSUER = "issuer-sh"
AUDIENCE = "gw-de.example"
KID = KeyRef(ISSUER, Purpose.SIGNING, 1)


def make_claims(jti: str, now: int) -> PassportClaims:
    return PassportClaims(
        iss=ISSUER,
        jti=f"{ISSUER}_{jti}",
        iat=now,
        nbf=now,
        exp=now + 3600,
        aud=AUDIENCE,
        sub=hashlib.sha256(jti.encode()).hexdigest(),
        xbgw=XbgwClaims(
            sender="gw-sh.example",
            src="CN-SH",
            dst="EU-DE",
            classification="important",
            pi="sensitive",
            subjects=42,
            purpose="Clinical trial adverse-event reports",
            legal_basis="CAC-SC-2026-0042",
            byte_limit=2**30,
        ),
    )


@pytest.fixture(scope="module")
def verifier(hsm: Hsm) -> PassportVerifier:
    return PassportVerifier({str(KID): hsm.public_key(Purpose.SIGNING, 1)}, AUDIENCE)


def test_hsm_signed_passport_verifies_with_ours_and_pyjwt(
    hsm: Hsm, verifier: PassportVerifier
) -> None:
    claims = make_claims("tx-hsm-1", int(time.time()))
    token = issue(claims, hsm, KID)
    verified = verifier.verify(token)
    assert verified.claims == claims
    assert verified.kid == KID
    decoded: dict[str, Any] = jwt.decode(
        token,
        hsm.public_key(Purpose.SIGNING, 1),
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    assert decoded == claims.to_json()


def test_rotation_each_version_verifies_only_under_its_own_kid(hsm: Hsm) -> None:
    """After rotation both versions verify; a v2 signature under the v1 kid does not."""
    v2 = hsm.generate(Purpose.SIGNING)
    kid2 = KeyRef(ISSUER, Purpose.SIGNING, v2)
    verifier = PassportVerifier(
        {
            str(KID): hsm.public_key(Purpose.SIGNING, 1),
            str(kid2): hsm.public_key(Purpose.SIGNING, v2),
        },
        AUDIENCE,
    )
    now = int(time.time())
    assert verifier.verify(issue(make_claims("tx-rot-1", now), hsm, KID)).kid == KID
    assert verifier.verify(issue(make_claims("tx-rot-2", now), hsm, kid2)).kid == kid2

    signing_input = issue(make_claims("tx-rot-3", now), hsm, KID).rsplit(".", 1)[0]
    wrong = hsm.sign_digest(v2, hashlib.sha256(signing_input.encode()).digest())
    forged = f"{signing_input}.{base64.urlsafe_b64encode(wrong).rstrip(b'=').decode()}"
    with pytest.raises(PassportSignatureError):
        verifier.verify(forged)


def test_two_hundred_passports(hsm: Hsm, verifier: PassportVerifier) -> None:
    now = int(time.time())
    tokens = [issue(make_claims(f"tx-loop-{i:03d}", now), hsm, KID) for i in range(200)]
    digests = {verifier.verify(token).digest for token in tokens}
    assert len(digests) == 200
    assert [verifier.verify(token).claims.jti for token in tokens[:3]] == [
        "issuer-sh_tx-loop-000",
        "issuer-sh_tx-loop-001",
        "issuer-sh_tx-loop-002",
    ]
