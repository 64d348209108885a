"""Data passports with a software signer: the format, every refusal, and JOSE interoperability.

Each negative test builds the hostile token by hand (``sign_raw``), because ``issue`` cannot
produce anything invalid; where a token is signed by a trusted key, the test proves that the
check itself refuses it, not the signature.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from gateway.errors import (
    PassportAudienceError,
    PassportClaimsError,
    PassportError,
    PassportExpiredError,
    PassportFormatError,
    PassportHeaderError,
    PassportNotYetValidError,
    PassportSignatureError,
    PassportUnknownIssuerError,
)
from gateway.keys import MAX_VERSION, KeyRef, Purpose
from gateway.passport import (
    DEFAULT_MAX_TOKEN_BYTES,
    TYP,
    PassportVerifier,
    inspect,
    issue,
    load_public_key_pem,
    passport_digest,
    public_key_to_pem,
)
from gateway.passport_claims import EvidenceClaim, PassportClaims, XbgwClaims
from tests.fakes import SoftwareHsm

ISSUER = "issuer-a"
AUDIENCE = "gw-de.example"
NOW = 1_780_000_000
KID = KeyRef(ISSUER, Purpose.SIGNING, 1)
DAY = 24 * 3600
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


# --- helpers --------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def enc(obj: object) -> str:
    return b64(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode())


def good_header(kid: KeyRef = KID) -> dict[str, Any]:
    return {"alg": "ES256", "typ": TYP, "kid": str(kid)}


def claims_json(now: int = NOW, **overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "iss": ISSUER,
        "jti": "issuer-a_tx-2026.0001_a",
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 3600,
        "aud": AUDIENCE,
        "sub": hashlib.sha256(b"dataset").hexdigest(),
        "xbgw": {
            "sender": "gw-sh.example",
            "src": "CN-SH",
            "dst": "EU-DE",
            "classification": "general",
            "pi": "personal",
            "subjects": 1200,
            "purpose": "Quarterly supplier quality report",
            "legal_basis": "CAC-SC-2026-0042",
            "byte_limit": 10 * 2**20,
        },
    }
    obj.update(overrides)
    return obj


def make_claims(now: int = NOW, **overrides: Any) -> PassportClaims:
    return PassportClaims.from_json(claims_json(now, **overrides))


def sign_raw(
    signer: SoftwareHsm, header: object, payload: object, version: int = 1, raw: bool = False
) -> str:
    """A token with any header and payload (objects, or bytes with ``raw``), signed ES256."""
    h = b64(header) if raw and isinstance(header, bytes) else enc(header)
    p = b64(payload) if raw and isinstance(payload, bytes) else enc(payload)
    signing_input = f"{h}.{p}".encode()
    signature = signer.sign_digest(version, hashlib.sha256(signing_input).digest())
    return f"{h}.{p}.{b64(signature)}"


@pytest.fixture(scope="module")
def signer() -> SoftwareHsm:
    return SoftwareHsm()


@pytest.fixture(scope="module")
def other_signer() -> SoftwareHsm:
    return SoftwareHsm()


def make_verifier(signer: SoftwareHsm, now: float = NOW, **kwargs: Any) -> PassportVerifier:
    trusted = {str(KID): signer.public_key(Purpose.SIGNING, 1)}
    return PassportVerifier(trusted, AUDIENCE, clock=lambda: now, **kwargs)


@pytest.fixture
def verifier(signer: SoftwareHsm) -> PassportVerifier:
    return make_verifier(signer)


@pytest.fixture
def token(signer: SoftwareHsm) -> str:
    return issue(make_claims(), signer, KID)


# --- issue and verify -----------------------------------------------------------------------


def test_round_trip(signer: SoftwareHsm, verifier: PassportVerifier) -> None:
    claims = make_claims()
    token = issue(claims, signer, KID)
    verified = verifier.verify(token)
    assert verified.claims == claims
    assert verified.kid == KID
    assert verified.token == token
    assert verified.digest == hashlib.sha256(token.encode("ascii")).digest()
    assert verified.digest == passport_digest(token) == passport_digest(token.encode())
    assert verifier.verify(token.encode("ascii")) == verified


def test_round_trip_without_sub(signer: SoftwareHsm, verifier: PassportVerifier) -> None:
    obj = claims_json()
    del obj["sub"]
    claims = PassportClaims.from_json(obj)
    assert claims.sub is None
    assert "sub" not in claims.to_json()
    assert verifier.verify(issue(claims, signer, KID)).claims == claims


def test_header_and_payload_are_compact_sorted_json(token: str) -> None:
    header_b64, payload_b64, signature_b64 = token.split(".")
    assert unb64(header_b64) == (
        b'{"alg":"ES256","kid":"issuer-a/signing/1","typ":"xbgw-passport+jwt"}'
    )
    payload = unb64(payload_b64)
    assert payload == json.dumps(
        make_claims().to_json(), separators=(",", ":"), sort_keys=True
    ).encode("ascii")
    assert len(unb64(signature_b64)) == 64
    assert "=" not in token


def test_signature_is_over_sha256_of_the_signing_input(signer: SoftwareHsm, token: str) -> None:
    header_b64, payload_b64, signature_b64 = token.split(".")
    raw = unb64(signature_b64)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    signer.public_key(Purpose.SIGNING, 1).verify(
        der, f"{header_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256())
    )


def test_issue_refuses_a_key_that_cannot_verify(signer: SoftwareHsm) -> None:
    claims = make_claims()
    with pytest.raises(ValueError, match="not a signing key"):
        issue(claims, signer, KeyRef(ISSUER, Purpose.TRANSPORT, 1))
    with pytest.raises(ValueError, match="not owned by the issuer 'issuer-a'"):
        issue(claims, signer, KeyRef("issuer-b", Purpose.SIGNING, 1))


def test_issue_refuses_too_long_a_lifetime(signer: SoftwareHsm) -> None:
    claims = PassportClaims.from_json(
        claims_json(exp=NOW - 10 + 10 * DAY), max_lifetime_seconds=30 * DAY
    )
    with pytest.raises(PassportClaimsError, match=r"'exp'.*lifetime"):
        issue(claims, signer, KID)
    assert issue(claims, signer, KID, max_lifetime_seconds=10 * DAY)


def test_issue_refuses_a_signature_of_the_wrong_shape() -> None:
    class DerSigner:
        def sign_digest(self, version: int, digest: bytes) -> bytes:
            return b"\x30" * 71

    with pytest.raises(ValueError, match="71 bytes"):
        issue(make_claims(), DerSigner(), KID)


def test_worst_case_claims_fit_the_default_size_limit(signer: SoftwareHsm) -> None:
    """Every valid passport fits in DEFAULT_MAX_TOKEN_BYTES: the limit never refuses one."""
    # the longest issuer id that can still name a transfer: "<62>_x" is the longest jti
    long_kid = KeyRef("i" * 62, Purpose.SIGNING, MAX_VERSION)
    signer_version = signer.generate(Purpose.SIGNING, MAX_VERSION)
    emoji = "\U0001f600"  # six JSON characters per UTF-16 half: the longest escape
    exp = 2**33
    claims = PassportClaims(
        iss=long_kid.owner,
        jti="i" * 62 + "_j",
        iat=exp,
        nbf=exp - 7 * DAY,
        exp=exp,
        aud="a" * 63,
        sub="f" * 64,
        xbgw=XbgwClaims(
            sender="s" * 63,
            src="XX-ABC",
            dst="YY-DEF",
            classification="important",
            pi="sensitive",
            subjects=2**53 - 1,
            purpose=emoji * 256,
            legal_basis=emoji * 128,
            byte_limit=2**50,
            # The compliance facts at their largest: SCC entries are the longest evidence.
            exporter=emoji * 128,
            ciio=True,
            eu_class="special",
            categories=tuple(f"{i:02d}" + "c" * 62 for i in range(64)),
            zone="z" * 32,
            evidence=tuple(
                EvidenceClaim(
                    kind="gdpr-scc",
                    reference=f"{i:02d}" + "r" * 126,
                    expires=2**33,
                    module="4",
                    tia="t" * 128,
                )
                for i in range(16)
            ),
        ),
    )
    token = issue(claims, signer, long_kid)
    assert len(token) <= DEFAULT_MAX_TOKEN_BYTES
    verifier = PassportVerifier(
        {str(long_kid): signer.public_key(Purpose.SIGNING, signer_version)},
        "a" * 63,
        clock=lambda: exp - 1,
    )
    assert verifier.verify(token).claims == claims


# --- the header -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alg", ["none", "None", "NONE", "", None, "HS256", "RS256", "ES384", "ES256K", "EdDSA", "es256"]
)
def test_unsigned_or_other_algorithm_refused(
    signer: SoftwareHsm, verifier: PassportVerifier, alg: object
) -> None:
    header = {**good_header(), "alg": alg}
    unsigned = f"{enc(header)}.{enc(claims_json())}."
    with pytest.raises(PassportHeaderError, match="alg"):
        verifier.verify(unsigned)
    with pytest.raises(PassportHeaderError, match="alg"):
        verifier.verify(sign_raw(signer, header, claims_json()))


def test_alg_none_without_kid_refused(verifier: PassportVerifier) -> None:
    unsigned = f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims_json())}."
    with pytest.raises(PassportHeaderError, match="alg 'none'"):
        verifier.verify(unsigned)


def test_hs256_keyed_with_the_public_key_refused(
    signer: SoftwareHsm, verifier: PassportVerifier
) -> None:
    """The key-confusion forgery: HMAC keyed with the issuer's (public) PEM."""
    secret = public_key_to_pem(signer.public_key(Purpose.SIGNING, 1)).encode()
    signing_input = f"{enc({**good_header(), 'alg': 'HS256'})}.{enc(claims_json())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(PassportHeaderError, match="alg 'HS256'"):
        verifier.verify(f"{signing_input}.{b64(mac)}")


@pytest.mark.parametrize("typ", ["JWT", "jwt", "XBGW-PASSPORT+JWT", "xbgw-passport", None, 1])
def test_wrong_typ_refused(signer: SoftwareHsm, verifier: PassportVerifier, typ: object) -> None:
    token = sign_raw(signer, {**good_header(), "typ": typ}, claims_json())
    with pytest.raises(PassportHeaderError, match="typ"):
        verifier.verify(token)


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c", "crit", "b64", "zip", "cty"])
def test_extra_header_member_refused(
    signer: SoftwareHsm, verifier: PassportVerifier, member: str
) -> None:
    token = sign_raw(signer, {**good_header(), member: "x"}, claims_json())
    with pytest.raises(PassportHeaderError, match=f"unknown member '{member}'"):
        verifier.verify(token)


@pytest.mark.parametrize("missing", ["typ", "kid"])
def test_missing_header_member_refused(
    signer: SoftwareHsm, verifier: PassportVerifier, missing: str
) -> None:
    header = good_header()
    del header[missing]
    with pytest.raises(PassportHeaderError, match=f"missing member '{missing}'"):
        verifier.verify(sign_raw(signer, header, claims_json()))


@pytest.mark.parametrize(
    "kid",
    [
        "issuer-a",
        "issuer-a/signing",
        "issuer-a/transport/1",
        "issuer-a/signing/01",
        "issuer-a/signing/0",
        "issuer-a/signing/\u0661",  # an Arabic-Indic digit: int() reads it as 1
        "Issuer-A/signing/1",
        "issuer-a/signing/1/x",
        7,
        None,
    ],
)
def test_malformed_kid_refused(
    signer: SoftwareHsm, verifier: PassportVerifier, kid: object
) -> None:
    token = sign_raw(signer, {**good_header(), "kid": kid}, claims_json())
    with pytest.raises(PassportHeaderError, match="kid"):
        verifier.verify(token)


@pytest.mark.parametrize("kid", ["issuer-b/signing/1", "issuer-a/signing/2"])
def test_unknown_kid_refused(signer: SoftwareHsm, verifier: PassportVerifier, kid: str) -> None:
    token = sign_raw(
        signer, {**good_header(), "kid": kid}, claims_json(iss=kid.split("/", maxsplit=1)[0])
    )
    with pytest.raises(PassportUnknownIssuerError, match=re.escape(kid)):
        verifier.verify(token)


def test_duplicate_header_member_refused(verifier: PassportVerifier, token: str) -> None:
    """``{"alg":"none","alg":"ES256"}`` means different things to different parsers."""
    header = b'{"alg":"none","alg":"ES256","kid":"issuer-a/signing/1","typ":"xbgw-passport+jwt"}'
    _, payload, signature = token.split(".")
    with pytest.raises(PassportFormatError, match="duplicate member 'alg'"):
        verifier.verify(f"{b64(header)}.{payload}.{signature}")


@pytest.mark.parametrize(
    "header",
    [
        b"not json",
        b"[]",
        b'"ES256"',
        b"\xff\xfe{}",
        '{"alg":"ES256"}'.encode("utf-16"),
        b'{"alg":NaN}',
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
        b'{"alg":"ES256","pad":"' + b"x" * 400 + b'"}',  # over the header bound
    ],
)
def test_header_that_is_not_a_small_json_object_refused(
    verifier: PassportVerifier, token: str, header: bytes
) -> None:
    _, payload, signature = token.split(".")
    with pytest.raises(PassportFormatError, match="header"):
        verifier.verify(f"{b64(header)}.{payload}.{signature}")


# --- the signature --------------------------------------------------------------------------


def test_payload_altered_after_signing_refused(verifier: PassportVerifier, token: str) -> None:
    header, payload, signature = token.split(".")
    claims = json.loads(unb64(payload))
    claims["xbgw"]["byte_limit"] = 2**40
    forged = f"{header}.{enc(claims)}.{signature}"
    with pytest.raises(PassportSignatureError, match="does not verify with key issuer-a/signing/1"):
        verifier.verify(forged)


def test_header_reencoded_refused(verifier: PassportVerifier, token: str) -> None:
    """Same header members, different bytes: the exact signed bytes are what count."""
    _, payload, signature = token.split(".")
    header = json.dumps(good_header(), indent=1).encode()
    with pytest.raises(PassportSignatureError):
        verifier.verify(f"{b64(header)}.{payload}.{signature}")


def test_signature_from_another_key_refused(
    other_signer: SoftwareHsm, verifier: PassportVerifier
) -> None:
    token = issue(make_claims(), other_signer, KID)
    with pytest.raises(PassportSignatureError):
        verifier.verify(token)


@pytest.mark.parametrize("length", [0, 32, 63, 65, 70, 72, 96])
def test_signature_of_wrong_length_refused(
    verifier: PassportVerifier, token: str, length: int
) -> None:
    header, payload, _ = token.split(".")
    with pytest.raises(PassportSignatureError, match=f"is {length} bytes"):
        verifier.verify(f"{header}.{payload}.{b64(bytes(range(length)))}")


def test_der_signature_refused(verifier: PassportVerifier, token: str) -> None:
    header, payload, signature = token.split(".")
    raw = unb64(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    with pytest.raises(PassportSignatureError):
        verifier.verify(f"{header}.{payload}.{b64(der)}")


@pytest.mark.parametrize("raw", [bytes(64), b"\xff" * 64])
def test_degenerate_signature_refused(verifier: PassportVerifier, token: str, raw: bytes) -> None:
    header, payload, _ = token.split(".")
    with pytest.raises(PassportSignatureError):
        verifier.verify(f"{header}.{payload}.{b64(raw)}")


def test_signature_checked_before_the_payload_is_parsed(
    signer: SoftwareHsm, other_signer: SoftwareHsm, verifier: PassportVerifier
) -> None:
    """A payload that is not even JSON is never looked at unless the signature verifies."""
    garbage = b"\x00{not json"
    with pytest.raises(PassportSignatureError):
        verifier.verify(sign_raw(other_signer, good_header(), garbage, raw=True))
    unknown = good_header(KeyRef("issuer-b", Purpose.SIGNING, 1))
    with pytest.raises(PassportUnknownIssuerError):
        verifier.verify(sign_raw(signer, unknown, garbage, raw=True))
    with pytest.raises(PassportFormatError, match="payload is not valid JSON"):
        verifier.verify(sign_raw(signer, good_header(), garbage, raw=True))


def test_ecdsa_malleability_changes_the_digest_not_the_claims(
    verifier: PassportVerifier, token: str
) -> None:
    """Why single use is keyed by (iss, jti): (r, n - s) verifies too, with another digest."""
    header, payload, signature = token.split(".")
    raw = unb64(signature)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    twin = f"{header}.{payload}.{b64(r.to_bytes(32, 'big') + (P256_ORDER - s).to_bytes(32, 'big'))}"
    original, mirrored = verifier.verify(token), verifier.verify(twin)
    assert mirrored.claims == original.claims
    assert mirrored.digest != original.digest


# --- format ---------------------------------------------------------------------------------


def _mutations(token: str) -> dict[str, str]:
    header, payload, signature = token.split(".")
    return {
        "padding on header": f"{header}==.{payload}.{signature}",
        "padding on signature": f"{header}.{payload}.{signature}=",
        "standard base64 plus": f"{header}.{payload}.+{signature[1:]}",
        "standard base64 slash": f"{header}.{payload[:-1]}/.{signature}",
        "inner space": f"{header}.{payload} .{signature}",
        "trailing newline": f"{token}\n",
        "leading space": f" {token}",
        "two parts": f"{header}.{payload}",
        "four parts": f"{token}.{signature}",
        "five parts (JWE)": f"{header}..{payload}.{signature}.{signature}",
        "empty": "",
        "only dots": "..",
        "empty header": f".{payload}.{signature}",
        "empty payload": f"{header}..{signature}",
        "impossible length": f"{header}.{payload}.{signature}AAA",
        "non-canonical last character": f"{header}.{payload}.{signature[:-1]}"
        + ("B" if signature[-1] == "A" else chr(ord(signature[-1]) + 1)),
        "non-ascii": f"{header}.{payload}.{signature[:-1]}\u00e9",
        "nul byte": f"{header}.{payload}\x00.{signature}",
    }


@pytest.mark.parametrize("name", list(_mutations("a.b.c")))
def test_malformed_token_refused(verifier: PassportVerifier, token: str, name: str) -> None:
    bad = _mutations(token)[name]
    with pytest.raises(PassportFormatError):
        verifier.verify(bad)
    with pytest.raises(PassportFormatError):
        inspect(bad)


def test_oversized_token_refused_before_anything_else(
    signer: SoftwareHsm, verifier: PassportVerifier
) -> None:
    limit = DEFAULT_MAX_TOKEN_BYTES
    with pytest.raises(PassportFormatError, match=f"longer than {limit} bytes"):
        verifier.verify("!" * (limit + 1))
    with pytest.raises(PassportFormatError, match=f"longer than {limit} bytes"):
        verifier.verify(b"a.b.c" + b"A" * (limit - 4))
    big = sign_raw(signer, good_header(), claims_json(pad="x" * (limit * 3 // 4)))
    assert len(big) > limit
    with pytest.raises(PassportFormatError, match="longer than"):
        verifier.verify(big)
    roomy = make_verifier(signer, max_token_bytes=65536)
    with pytest.raises(PassportClaimsError, match="'pad'"):
        roomy.verify(big)


def test_not_str_or_bytes_is_a_type_error(verifier: PassportVerifier) -> None:
    with pytest.raises(TypeError):
        verifier.verify(bytearray(b"a.b.c"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 3000 + b"]" * 3000,  # nesting deeper than the recursion limit
        b'{"iat":' + b"9" * 5000 + b"}",  # more digits than int() accepts
        b'{"iss":"a","iss":"b"}',
        b'{"exp":Infinity}',
        b"[]",
        b"\xc3\x28",  # invalid UTF-8
    ],
)
def test_signed_payload_that_is_not_a_json_object_refused(
    signer: SoftwareHsm, payload: bytes
) -> None:
    roomy = make_verifier(signer, max_token_bytes=65536)
    with pytest.raises(PassportFormatError, match="payload"):
        roomy.verify(sign_raw(signer, good_header(), payload, raw=True))


# --- time, audience, issuer -----------------------------------------------------------------

NBF = NOW
EXP = NOW + 3600


@pytest.mark.parametrize(
    ("leeway", "now", "error"),
    [
        (60, NBF - 60, None),
        (60, NBF - 61, PassportNotYetValidError),
        (60, NBF - 60.5, PassportNotYetValidError),
        (0, NBF, None),
        (0, NBF - 1, PassportNotYetValidError),
        (60, EXP + 59, None),
        (60, EXP + 59.9, None),
        (60, EXP + 60, PassportExpiredError),
        (0, EXP - 1, None),
        (0, EXP, PassportExpiredError),
        (300, EXP + 299, None),
        (300, NBF - 300, None),
        (600, EXP + 599, None),
        (600, EXP + 600, PassportExpiredError),
        (60, EXP + 10 * DAY, PassportExpiredError),
    ],
)
def test_validity_window_with_leeway(
    signer: SoftwareHsm, leeway: int, now: float, error: type[PassportError] | None
) -> None:
    token = issue(make_claims(iat=NBF, nbf=NBF, exp=EXP), signer, KID)
    verifier = make_verifier(signer, now=now, leeway_seconds=leeway)
    if error is None:
        assert verifier.verify(token).claims.exp == EXP
    else:
        with pytest.raises(error):
            verifier.verify(token)


def test_non_finite_clock_fails_closed(signer: SoftwareHsm, token: str) -> None:
    verifier = make_verifier(signer, now=float("nan"))
    with pytest.raises(ValueError, match="clock"):
        verifier.verify(token)


def test_wrong_audience_refused(signer: SoftwareHsm, verifier: PassportVerifier) -> None:
    token = issue(make_claims(aud="gw-fr.example"), signer, KID)
    with pytest.raises(
        PassportAudienceError, match=re.escape("'gw-fr.example', not for 'gw-de.example'")
    ):
        verifier.verify(token)


def test_expiry_is_checked_before_audience(signer: SoftwareHsm) -> None:
    token = issue(make_claims(aud="gw-fr.example"), signer, KID)
    with pytest.raises(PassportExpiredError):
        make_verifier(signer, now=NOW + 10 * DAY).verify(token)


def test_issuer_must_own_the_signing_key(signer: SoftwareHsm) -> None:
    """A trusted key of issuer-a cannot sign for issuer-b, even if issuer-b is trusted too."""
    second = SoftwareHsm()
    trusted = {
        str(KID): signer.public_key(Purpose.SIGNING, 1),
        "issuer-b/signing/1": second.public_key(Purpose.SIGNING, 1),
    }
    verifier = PassportVerifier(trusted, AUDIENCE, clock=lambda: NOW)
    token = sign_raw(signer, good_header(), claims_json(iss="issuer-b", jti="issuer-b_tx-1"))
    with pytest.raises(PassportUnknownIssuerError, match="not the owner of its signing key"):
        verifier.verify(token)
    own = issue(
        make_claims(iss="issuer-b", jti="issuer-b_tx-1"),
        second,
        KeyRef("issuer-b", Purpose.SIGNING, 1),
    )
    assert verifier.verify(own).kid.owner == "issuer-b"


def test_key_rotation_both_versions_trusted(signer: SoftwareHsm) -> None:
    rotated = SoftwareHsm()
    v2 = rotated.generate(Purpose.SIGNING)
    kid2 = KeyRef(ISSUER, Purpose.SIGNING, v2)
    trusted = {
        str(KID): rotated.public_key(Purpose.SIGNING, 1),
        str(kid2): rotated.public_key(Purpose.SIGNING, v2),
    }
    verifier = PassportVerifier(trusted, AUDIENCE, clock=lambda: NOW)
    assert verifier.verify(issue(make_claims(), rotated, KID)).kid == KID
    assert verifier.verify(issue(make_claims(), rotated, kid2)).kid == kid2
    assert verifier.trusted_kids == (str(KID), str(kid2))


def test_longer_lifetime_when_configured(signer: SoftwareHsm) -> None:
    obj = claims_json(exp=NOW - 10 + 10 * DAY)
    token = sign_raw(signer, good_header(), obj)
    with pytest.raises(PassportClaimsError, match=r"'exp'.*lifetime"):
        make_verifier(signer).verify(token)
    roomy = make_verifier(signer, max_lifetime_seconds=10 * DAY)
    assert roomy.verify(token).claims.lifetime == 10 * DAY


# --- the claims schema ----------------------------------------------------------------------

DELETE = object()

# (path, value or DELETE, the claim the message must name)
CLAIM_CASES: list[tuple[str, object, str]] = [
    ("iss", 5, "iss"),
    ("iss", "Issuer-A", "iss"),
    ("iss", "", "iss"),
    ("iss", DELETE, "iss"),
    ("jti", "", "jti"),
    ("jti", "t" * 65, "jti"),
    ("jti", "tx/1", "jti"),
    ("jti", "tx 1", "jti"),
    ("jti", "tx\u00e91", "jti"),
    ("jti", 17, "jti"),
    ("jti", "tx-1", "jti"),  # no issuer prefix
    ("jti", "issuer-b_tx-1", "jti"),  # another issuer's id space
    ("jti", "issuer-a_", "jti"),  # the prefix alone
    ("jti", "issuer-a.b_tx-1", "jti"),  # a longer gateway id that begins like the issuer's
    ("jti", "issuer-a-tx-1", "jti"),
    ("iat", True, "iat"),
    ("iat", NOW + 0.5, "iat"),
    ("iat", str(NOW), "iat"),
    ("iat", -1, "iat"),
    ("iat", 2**33 + 1, "iat"),
    ("nbf", False, "nbf"),
    ("nbf", None, "nbf"),
    ("nbf", DELETE, "nbf"),
    ("exp", [NOW], "exp"),
    ("exp", NOW - 10, "exp"),  # == nbf
    ("exp", NOW - 11, "exp"),  # < nbf
    ("exp", NOW - 10 + 7 * DAY + 1, "exp"),  # lifetime one second too long
    ("aud", "", "aud"),
    ("aud", "GW-DE", "aud"),
    ("aud", ["gw-de.example"], "aud"),  # JWT allows an array; passports do not
    ("aud", DELETE, "aud"),
    ("sub", "A" * 64, "sub"),
    ("sub", "0" * 63, "sub"),
    ("sub", "0" * 65, "sub"),
    ("sub", None, "sub"),  # absent, not null, when unknown
    ("sub", 5, "sub"),
    ("extra", 1, "extra"),
    ("scope", "all", "scope"),
    ("xbgw", [], "xbgw"),
    ("xbgw", None, "xbgw"),
    ("xbgw", DELETE, "xbgw"),
    ("xbgw.sender", "GW", "xbgw.sender"),
    ("xbgw.sender", DELETE, "xbgw.sender"),
    ("xbgw.src", "cn-sh", "xbgw.src"),
    ("xbgw.src", "CN-SHAN", "xbgw.src"),
    ("xbgw.src", "CHN", "xbgw.src"),
    ("xbgw.src", "CN_SH", "xbgw.src"),
    ("xbgw.src", "CN-", "xbgw.src"),
    ("xbgw.src", "CN-SH\n", "xbgw.src"),
    ("xbgw.dst", "EU-de", "xbgw.dst"),
    ("xbgw.dst", 49, "xbgw.dst"),
    ("xbgw.classification", "General", "xbgw.classification"),
    ("xbgw.classification", "", "xbgw.classification"),
    ("xbgw.classification", "c" * 33, "xbgw.classification"),
    ("xbgw.classification", "1st", "xbgw.classification"),
    ("xbgw.pi", "public", "xbgw.pi"),
    ("xbgw.pi", 1, "xbgw.pi"),
    ("xbgw.subjects", -1, "xbgw.subjects"),
    ("xbgw.subjects", True, "xbgw.subjects"),
    ("xbgw.subjects", 1.0, "xbgw.subjects"),
    ("xbgw.subjects", "5", "xbgw.subjects"),
    ("xbgw.subjects", 2**53, "xbgw.subjects"),
    ("xbgw.subjects", 0, "xbgw.subjects"),  # pi is "personal"
    ("xbgw.purpose", "", "xbgw.purpose"),
    ("xbgw.purpose", "p" * 257, "xbgw.purpose"),
    ("xbgw.purpose", "   ", "xbgw.purpose"),
    ("xbgw.purpose", "line\nbreak", "xbgw.purpose"),
    ("xbgw.purpose", "report \u202egnp.exe", "xbgw.purpose"),  # bidi override
    ("xbgw.purpose", "lone \ud800 surrogate", "xbgw.purpose"),
    ("xbgw.purpose", 5, "xbgw.purpose"),
    ("xbgw.legal_basis", "", "xbgw.legal_basis"),
    ("xbgw.legal_basis", "L" * 129, "xbgw.legal_basis"),
    ("xbgw.legal_basis", "CAC\x00", "xbgw.legal_basis"),
    ("xbgw.byte_limit", 0, "xbgw.byte_limit"),
    ("xbgw.byte_limit", 2**50 + 1, "xbgw.byte_limit"),
    ("xbgw.byte_limit", True, "xbgw.byte_limit"),
    ("xbgw.byte_limit", 1.5, "xbgw.byte_limit"),
    ("xbgw.byte_limit", DELETE, "xbgw.byte_limit"),
    ("xbgw.extra", "x", "xbgw.extra"),
]


def _mutated(path: str, value: object) -> dict[str, Any]:
    obj = copy.deepcopy(claims_json())
    target = obj
    *parents, leaf = path.split(".")
    for parent in parents:
        target = target[parent]
    if value is DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return obj


@pytest.mark.parametrize(("path", "value", "claim"), CLAIM_CASES)
def test_claims_schema_violation(path: str, value: object, claim: str) -> None:
    with pytest.raises(PassportClaimsError, match=re.escape(f"passport claim '{claim}'")):
        PassportClaims.from_json(_mutated(path, value))


@pytest.mark.parametrize(("path", "value", "claim"), CLAIM_CASES)
def test_signed_claims_schema_violation(
    signer: SoftwareHsm, verifier: PassportVerifier, path: str, value: object, claim: str
) -> None:
    """The same table through verify(): a trusted signature does not make bad claims good."""
    payload = json.dumps(_mutated(path, value), separators=(",", ":")).encode()
    token = sign_raw(signer, good_header(), payload, raw=True)
    with pytest.raises(PassportClaimsError, match=re.escape(f"passport claim '{claim}'")):
        verifier.verify(token)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("exp", NOW - 10 + 7 * DAY),  # exactly the maximum lifetime
        ("jti", "issuer-a_" + "A.b_c-9" * 7 + "x" * 6),  # 64 characters
        ("xbgw.src", "CN"),
        ("xbgw.dst", "EU-DE1"),
        ("xbgw.purpose", "数据出境 供应商质量季度报告"),
        ("xbgw.legal_basis", "GDPR-Art46-SCC"),
        ("xbgw.byte_limit", 2**50),
        ("xbgw.classification", "important"),
    ],
)
def test_claims_at_the_edges_accepted(path: str, value: object) -> None:
    claims = PassportClaims.from_json(_mutated(path, value))
    assert PassportClaims.from_json(claims.to_json()) == claims


def test_pi_none_requires_zero_subjects() -> None:
    obj = claims_json()
    obj["xbgw"].update(pi="none", subjects=0)
    assert PassportClaims.from_json(obj).xbgw.subjects == 0
    obj["xbgw"].update(subjects=3)
    with pytest.raises(PassportClaimsError, match=re.escape("'xbgw.subjects' must be 0")):
        PassportClaims.from_json(obj)


def test_constructor_validates_like_from_json() -> None:
    good = make_claims()
    with pytest.raises(PassportClaimsError, match="'iat' must be an integer, got bool"):
        PassportClaims(**{**good.__dict__, "iat": True})
    with pytest.raises(PassportClaimsError, match="'xbgw' must be XbgwClaims"):
        PassportClaims(**{**good.__dict__, "xbgw": good.xbgw.to_json()})
    with pytest.raises(PassportClaimsError, match=re.escape("'xbgw.pi' must be one of none")):
        XbgwClaims(**{**good.xbgw.__dict__, "pi": "secret"})


def test_claims_must_be_an_object() -> None:
    with pytest.raises(PassportClaimsError, match="must be a JSON object"):
        PassportClaims.from_json(["iss"])


# --- the verifier's configuration -----------------------------------------------------------


def _p256() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trusted": []}, "trusted must map key ids (<issuer>/signing/<version>) to public keys"),
        (
            {"trusted": {"issuer-a": None}},
            "trusted key id 'issuer-a': key reference 'issuer-a' is not of the form "
            "owner/purpose/version",
        ),
        (
            {"trusted": {"issuer-a/transport/1": None}},
            "trusted key id 'issuer-a/transport/1' is not a signing key",
        ),
        ({"trusted": {1: None}}, "trusted key id 1 is not a string"),
        ({"trusted": {"issuer-a/signing/1": "PEM"}}, "is not an EC public key"),
        (
            {"trusted": {"issuer-a/signing/1": ed25519.Ed25519PrivateKey.generate().public_key()}},
            "trusted key 'issuer-a/signing/1' is not an EC public key",
        ),
        (
            {
                "trusted": {
                    "issuer-a/signing/1": ec.generate_private_key(ec.SECP384R1()).public_key()
                }
            },
            "trusted key 'issuer-a/signing/1' is on secp384r1, not P-256",
        ),
        ({"audience": "GW"}, "audience: gateway id 'GW' must be 1-63 characters"),
        ({"audience": None}, "audience must be a gateway id string, got None"),
        ({"leeway_seconds": -1}, "leeway_seconds must be an integer from 0 to 600, got -1"),
        ({"leeway_seconds": 601}, "leeway_seconds must be an integer from 0 to 600, got 601"),
        ({"leeway_seconds": True}, "leeway_seconds must be an integer from 0 to 600, got True"),
        ({"leeway_seconds": 1.5}, "leeway_seconds must be an integer from 0 to 600, got 1.5"),
        (
            {"max_token_bytes": 512},
            "max_token_bytes must be an integer from 1024 to 65536, got 512",
        ),
        (
            {"max_token_bytes": 2**20},
            "max_token_bytes must be an integer from 1024 to 65536, got 1048576",
        ),
        ({"clock": 0}, "clock must be a callable returning seconds since the epoch"),
        (
            {"max_lifetime_seconds": 0},
            "max_lifetime_seconds must be an integer from 1 to 2592000, got 0",
        ),
        (
            {"max_lifetime_seconds": 31 * DAY},
            "max_lifetime_seconds must be an integer from 1 to 2592000, got 2678400",
        ),
    ],
)
def test_verifier_constructor_rejections(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"trusted": {str(KID): _p256()}, "audience": AUDIENCE, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        PassportVerifier(**args)


def test_verifier_constructor_rejects_non_canonical_kid() -> None:
    with pytest.raises(ValueError, match=re.escape("write 'issuer-a/signing/1'")):
        PassportVerifier({"issuer-a/signing/\u0661": _p256()}, AUDIENCE)


def test_empty_trust_refuses_every_passport(token: str) -> None:
    verifier = PassportVerifier({}, AUDIENCE, clock=lambda: NOW)
    assert verifier.trusted_kids == ()
    with pytest.raises(PassportUnknownIssuerError, match="not a trusted issuer key"):
        verifier.verify(token)


def test_verifier_copies_its_trust(signer: SoftwareHsm, token: str) -> None:
    trusted = {str(KID): signer.public_key(Purpose.SIGNING, 1)}
    verifier = PassportVerifier(trusted, AUDIENCE, clock=lambda: NOW)
    trusted.clear()
    assert verifier.verify(token).kid == KID
    assert verifier.audience == AUDIENCE


# --- inspect, digest and key helpers --------------------------------------------------------


def test_inspect_returns_unverified_header_and_payload(other_signer: SoftwareHsm) -> None:
    token = issue(make_claims(), other_signer, KID)  # a key nobody trusts: inspect shows it anyway
    header, payload = inspect(token)
    assert header == {"alg": "ES256", "kid": "issuer-a/signing/1", "typ": TYP}
    assert payload == make_claims().to_json()
    odd = f"{enc({'alg': 'none'})}.{enc({'anything': [1, 2]})}."
    assert inspect(odd) == ({"alg": "none"}, {"anything": [1, 2]})


def test_inspect_is_bounded() -> None:
    with pytest.raises(PassportFormatError, match=f"longer than {DEFAULT_MAX_TOKEN_BYTES}"):
        inspect("A" * (DEFAULT_MAX_TOKEN_BYTES + 808))
    with pytest.raises(PassportFormatError, match="payload is not a JSON object"):
        inspect(f"{enc({})}.{enc([1])}.")


def test_public_key_pem_round_trip(signer: SoftwareHsm) -> None:
    key = signer.public_key(Purpose.SIGNING, 1)
    pem = public_key_to_pem(key)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert load_public_key_pem(pem).public_numbers() == key.public_numbers()
    assert load_public_key_pem(pem.encode()).public_numbers() == key.public_numbers()


def test_load_public_key_pem_rejections() -> None:
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_key_pem("hello")
    p384 = public_key_to_pem(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(ValueError, match="secp384r1, not P-256"):
        load_public_key_pem(p384)
    ed_pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="not an EC P-256 key"):
        load_public_key_pem(ed_pem)


# --- interoperability with PyJWT ------------------------------------------------------------


def test_pyjwt_verifies_our_token(signer: SoftwareHsm) -> None:
    now = int(time.time())
    claims = make_claims(now=now)
    token = issue(claims, signer, KID)
    decoded = jwt.decode(
        token,
        signer.public_key(Purpose.SIGNING, 1),
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    assert decoded == claims.to_json()
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": str(KID), "typ": TYP}
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, signer.public_key(Purpose.SIGNING, 1), algorithms=["ES256"], audience="x")


def test_we_verify_a_token_pyjwt_signed() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    payload = claims_json(now=now)
    token = jwt.encode(payload, private, algorithm="ES256", headers={"kid": str(KID), "typ": TYP})
    verifier = PassportVerifier({str(KID): private.public_key()}, AUDIENCE)
    verified = verifier.verify(token)
    assert verified.claims == PassportClaims.from_json(payload)
    # PyJWT's default header (typ "JWT") is not a passport.
    plain = jwt.encode(payload, private, algorithm="ES256", headers={"kid": str(KID)})
    with pytest.raises(PassportHeaderError, match="typ 'JWT'"):
        verifier.verify(plain)


def test_our_raw_signature_is_the_jws_form(token: str) -> None:
    """r || s, each 32 bytes big-endian, both in range: what JWS ES256 (RFC 7518 3.4) says."""
    raw = unb64(token.split(".")[2])
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    assert decode_dss_signature(encode_dss_signature(r, s)) == (r, s)
    assert 0 < r < P256_ORDER and 0 < s < P256_ORDER
