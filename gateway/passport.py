"""Data passports: per-transfer policy tokens, signed in the HSM and verified strictly.

Format
------
A passport is a compact JWS (RFC 7515) carrying a JWT (RFC 7519), signed ES256 (ECDSA on
P-256 over SHA-256) by an issuer's HSM signing key::

    BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(r || s)

* header, exactly ``{"alg":"ES256","kid":"<issuer>/signing/<version>","typ":"xbgw-passport+jwt"}``;
  ``kid`` is the :class:`~gateway.keys.KeyRef` of the signing key, and its owner *is* the issuer;
* payload: the claims of :class:`PassportClaims` (``iss``, ``jti`` = transfer id, ``iat``,
  ``nbf``, ``exp``, ``aud``, optional ``sub`` = dataset SHA-256, and the ``xbgw`` object with
  the terms of the transfer);
* JSON is written compactly with sorted keys and ASCII only; base64url has no padding; the
  signature is the raw 64-byte ``r || s`` that JWS ES256 prescribes -- which is also exactly
  what PKCS#11 ``CKM_ECDSA`` returns, so the HSM signs the SHA-256 of the ASCII signing input
  and nothing is re-encoded.

Any standard JOSE library verifies our passports, and we verify theirs if they use our header.

The terms of a transfer (the ``xbgw`` object, with the compliance facts) are defined and
checked in :mod:`gateway.passport_claims`.

Why verification looks like this (RFC 8725, the JWT best current practice)
--------------------------------------------------------------------------
* **The algorithm is pinned**, never taken from the token: ``none``, ``HS256`` keyed with the
  issuer's public key (the classic key-confusion forgery) and every other value are refused
  before any key is touched. The header may not carry ``jwk``, ``jku``, ``x5u``, ``crit`` or
  anything else: exactly three members, so a token can never choose its own key or semantics.
* **``typ`` is explicit and pinned**, so no other JWT an issuer key might sign can be replayed
  as a passport.
* **``kid`` names one trusted key version**, and ``iss`` must equal its owner: one trusted
  issuer cannot speak for another.
* **The exact bytes are verified first**: the signature is checked over the signing input as
  received, before the payload is even base64-decoded. No claim is ever read from
  unauthenticated data, and nothing is re-serialised that could differ from what was signed.
* **Parsing is strict and bounded**: the size limit is checked before anything else; exactly
  three parts; canonical base64url (no padding, whitespace or non-zero trailing bits); UTF-8
  JSON objects with no duplicate members (``{"alg":"none","alg":"ES256"}`` means different
  things to different parsers) and no ``NaN``; unknown claims are refused at both levels;
  ``bool`` is not accepted where an integer is due.

The passport digest (SHA-256 of the token's ASCII bytes) is what envelope headers and ledgers
record. ECDSA signatures are malleable -- ``(r, s)`` and ``(r, n - s)`` both verify, and
standard signers do not normalise ``s`` -- so the digest identifies *these token bytes*, not
the claims: single use must be keyed by ``(iss, jti)``, never by the digest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.errors import (
    PassportAudienceError,
    PassportExpiredError,
    PassportFormatError,
    PassportHeaderError,
    PassportNotYetValidError,
    PassportSignatureError,
    PassportUnknownIssuerError,
)
from gateway.keys import KeyRef, Purpose, check_gateway_id
from gateway.passport_claims import (
    DEFAULT_MAX_LIFETIME_SECONDS,
    PassportClaims,
    check_max_lifetime,
    short_repr,
)

ALG: Final = "ES256"
TYP: Final = "xbgw-passport+jwt"
HEADER_MEMBERS: Final = frozenset({"alg", "typ", "kid"})
SIGNATURE_LEN: Final = 64  # raw r || s, 32 bytes each (P-256)

DEFAULT_MAX_TOKEN_BYTES: Final = 32768  # every valid passport fits (tested with worst-case claims)
MIN_MAX_TOKEN_BYTES: Final = 1024
MAX_MAX_TOKEN_BYTES: Final = 65536
MAX_HEADER_CHARS: Final = 512  # base64url characters; our header is about 130
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
DEFAULT_LEEWAY_SECONDS: Final = 60
MAX_LEEWAY_SECONDS: Final = 600  # skew beyond ten minutes is a broken clock (config allows 600)

# --- encoding -------------------------------------------------------------------------------


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(part: bytes, what: str) -> bytes:
    """Strict base64url: the charset was checked by :func:`_split`; padding is re-added here
    and the result must re-encode to ``part`` (no non-zero trailing bits: one encoding only).
    """
    data = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    if _b64encode(data) != part:
        raise PassportFormatError(f"passport {what} is not canonical base64url")
    return data


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, separators=(",", ":"), sort_keys=True, ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate member {short_repr(key)}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse RFC 8259 JSON (UTF-8 only) that must be an object; duplicates and NaN refused."""
    try:
        # Decode explicitly: json.loads(bytes) would also guess UTF-16 and UTF-32.
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, digits
        raise PassportFormatError(f"passport {what} is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(value, dict):
        raise PassportFormatError(f"passport {what} is not a JSON object")
    return value


def _token_bytes(token: str | bytes, max_token_bytes: int | None) -> bytes:
    if isinstance(token, str):
        if max_token_bytes is not None and len(token) > max_token_bytes:
            raise PassportFormatError(
                f"passport is longer than {max_token_bytes} bytes ({len(token)} characters)"
            )
        try:
            return token.encode("ascii")
        except UnicodeEncodeError:
            raise PassportFormatError("passport contains non-ASCII characters") from None
    if isinstance(token, bytes):
        if max_token_bytes is not None and len(token) > max_token_bytes:
            raise PassportFormatError(
                f"passport is longer than {max_token_bytes} bytes ({len(token)} bytes)"
            )
        return token
    raise TypeError(f"passport must be str or bytes, not {type(token).__name__}")


def _split(token: str | bytes, max_token_bytes: int) -> tuple[bytes, bytes, bytes, bytes]:
    """Size limit, then three strict base64url parts: ``(token, header, payload, signature)``."""
    raw = _token_bytes(token, max_token_bytes)
    parts = raw.split(b".")
    if len(parts) != 3:
        raise PassportFormatError(
            f"passport must have exactly 3 dot-separated parts (compact JWS), got {len(parts)}"
        )
    for what, part in zip(("header", "payload", "signature"), parts, strict=True):
        if not _B64URL.fullmatch(part):
            raise PassportFormatError(
                f"passport {what} is not unpadded base64url (A-Z a-z 0-9 - _ only)"
            )
        if len(part) % 4 == 1:
            raise PassportFormatError(f"passport {what} has an impossible base64url length")
    header, payload, signature = parts
    if not header or not payload:
        raise PassportFormatError("passport header and payload must not be empty")
    if len(header) > MAX_HEADER_CHARS:
        raise PassportFormatError(f"passport header is longer than {MAX_HEADER_CHARS} characters")
    return raw, header, payload, signature


def passport_digest(token: str | bytes) -> bytes:
    """SHA-256 of the token's ASCII bytes: the passport digest of envelopes and ledgers."""
    return hashlib.sha256(_token_bytes(token, None)).digest()


# --- issuing --------------------------------------------------------------------------------


class DigestSigner(Protocol):
    """What :func:`issue` needs from an HSM: ``gateway.hsm.Hsm`` is one."""

    def sign_digest(self, version: int, digest: bytes) -> bytes:
        """ECDSA P-256 over a SHA-256 digest with signing key ``version``: raw ``r || s``."""
        ...


def issue(
    claims: PassportClaims,
    signer: DigestSigner,
    kid: KeyRef,
    *,
    max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS,
) -> str:
    """Sign ``claims`` with the signing key ``kid`` of ``signer``; return the compact token.

    ``kid`` must be a signing key owned by ``claims.iss`` (``ValueError`` otherwise): a
    verifier takes the issuer from the key, so any other pairing could never verify.
    """
    if not isinstance(claims, PassportClaims):
        raise TypeError(f"claims must be PassportClaims, not {type(claims).__name__}")
    if not isinstance(kid, KeyRef):
        raise TypeError(f"kid must be a KeyRef, not {type(kid).__name__}")
    if kid.purpose is not Purpose.SIGNING:
        raise ValueError(f"passport key {kid} is not a signing key")
    if kid.owner != claims.iss:
        raise ValueError(f"passport key {kid} is not owned by the issuer {claims.iss!r}")
    claims.check_lifetime(max_lifetime_seconds)
    header = {"alg": ALG, "kid": str(kid), "typ": TYP}
    signing_input = _b64encode(_dumps(header)) + b"." + _b64encode(_dumps(claims.to_json()))
    signature = signer.sign_digest(kid.version, hashlib.sha256(signing_input).digest())
    if len(signature) != SIGNATURE_LEN:
        raise ValueError(
            f"signer returned {len(signature)} bytes, not a {SIGNATURE_LEN}-byte r || s signature"
        )
    return (signing_input + b"." + _b64encode(bytes(signature))).decode("ascii")


# --- verifying ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedPassport:
    """A passport whose signature, issuer, claims, validity window and audience all checked."""

    claims: PassportClaims
    kid: KeyRef  #: the signing key that verified it; ``kid.owner == claims.iss``
    digest: bytes  #: SHA-256 of the token bytes (see the module docstring on malleability)
    token: str  #: the token exactly as received


class PassportVerifier:
    """Verifies passports for one receiving gateway against a fixed set of issuer keys.

    ``trusted`` maps key ids (``<issuer>/signing/<version>``) to P-256 public keys; a key id's
    owner is the issuer. Constructor arguments are checked at once (``ValueError``), so a bad
    configuration fails at start-up, not on the first transfer. An empty ``trusted`` is
    allowed (a gateway that only sends may trust no issuer): every passport is then refused
    with ``PassportUnknownIssuerError``. The object is immutable and safe to share between
    threads.
    """

    def __init__(
        self,
        trusted: Mapping[str, ec.EllipticCurvePublicKey],
        audience: str,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        clock: Callable[[], float] = time.time,
        *,
        max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS,
    ) -> None:
        self._trusted = _check_trusted(trusted)
        if type(audience) is not str:
            raise ValueError(f"audience must be a gateway id string, got {short_repr(audience)}")
        try:
            check_gateway_id(audience)
        except ValueError as exc:
            raise ValueError(f"audience: {exc}") from None
        self._audience = audience
        if type(leeway_seconds) is not int or not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(
                f"leeway_seconds must be an integer from 0 to {MAX_LEEWAY_SECONDS}, "
                f"got {short_repr(leeway_seconds)}"
            )
        self._leeway = leeway_seconds
        if (
            type(max_token_bytes) is not int
            or not MIN_MAX_TOKEN_BYTES <= max_token_bytes <= MAX_MAX_TOKEN_BYTES
        ):
            raise ValueError(
                f"max_token_bytes must be an integer from {MIN_MAX_TOKEN_BYTES} to "
                f"{MAX_MAX_TOKEN_BYTES}, got {short_repr(max_token_bytes)}"
            )
        self._max_token_bytes = max_token_bytes
        if not callable(clock):
            raise ValueError("clock must be a callable returning seconds since the epoch")
        self._clock = clock
        self._max_lifetime = check_max_lifetime(max_lifetime_seconds)

    @property
    def audience(self) -> str:
        """The gateway id every verified passport's ``aud`` equals."""
        return self._audience

    @property
    def trusted_kids(self) -> tuple[str, ...]:
        """The trusted key ids, sorted."""
        return tuple(sorted(self._trusted))

    def verify(self, token: str | bytes) -> VerifiedPassport:
        """Verify ``token`` completely, or raise the :class:`PassportError` that says why.

        Order: size; three strict base64url parts; header (pinned ``alg`` and ``typ``, known
        ``kid``); the signature over the exact signing input; only then the payload: claims
        schema, ``iss`` = key owner, ``nbf``/``exp`` with leeway, ``aud``.
        """
        raw, header_b64, payload_b64, signature_b64 = _split(token, self._max_token_bytes)
        header = _json_object(_b64decode(header_b64, "header"), "header")
        kid, public_key = self._check_header(header)

        signature = _b64decode(signature_b64, "signature")
        if len(signature) != SIGNATURE_LEN:
            raise PassportSignatureError(
                f"passport signature is {len(signature)} bytes, not the {SIGNATURE_LEN}-byte "
                "ES256 r || s"
            )
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        signing_input = header_b64 + b"." + payload_b64
        try:
            public_key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise PassportSignatureError(
                f"passport signature does not verify with key {kid}"
            ) from None

        # Authenticated from here on.
        payload = _json_object(_b64decode(payload_b64, "payload"), "payload")
        claims = PassportClaims.from_json(payload, max_lifetime_seconds=self._max_lifetime)
        if claims.iss != kid.owner:
            raise PassportUnknownIssuerError(
                f"passport iss {claims.iss!r} is not the owner of its signing key {kid}"
            )
        now = self._clock()
        if not math.isfinite(now):
            raise ValueError(f"the verifier's clock returned {now!r}")
        if now < claims.nbf - self._leeway:
            raise PassportNotYetValidError(
                f"passport {claims.jti} is not valid before {claims.nbf} (now {int(now)}, "
                f"leeway {self._leeway} s)"
            )
        if now >= claims.exp + self._leeway:
            raise PassportExpiredError(
                f"passport {claims.jti} expired at {claims.exp} (now {int(now)}, "
                f"leeway {self._leeway} s)"
            )
        if claims.aud != self._audience:
            raise PassportAudienceError(
                f"passport {claims.jti} is for {claims.aud!r}, not for {self._audience!r}"
            )
        return VerifiedPassport(
            claims=claims,
            kid=kid,
            digest=hashlib.sha256(raw).digest(),
            token=raw.decode("ascii"),
        )

    def _check_header(self, header: dict[str, Any]) -> tuple[KeyRef, ec.EllipticCurvePublicKey]:
        alg = header.get("alg")
        if type(alg) is not str or alg != ALG:
            raise PassportHeaderError(
                f"passport alg {short_repr(alg)} is not accepted; passports are signed {ALG}"
            )
        if header.keys() != HEADER_MEMBERS:
            extra = sorted(header.keys() - HEADER_MEMBERS)
            missing = sorted(HEADER_MEMBERS - header.keys())
            problems = [f"unknown member {short_repr(name)}" for name in extra]
            problems += [f"missing member {name!r}" for name in missing]
            raise PassportHeaderError(f"passport header: {', '.join(problems)}")
        typ = header["typ"]
        if type(typ) is not str or typ != TYP:
            raise PassportHeaderError(f"passport typ {short_repr(typ)} is not {TYP!r}")
        kid_text = header["kid"]
        if type(kid_text) is not str:
            raise PassportHeaderError(f"passport kid must be a string, got {short_repr(kid_text)}")
        try:
            kid = KeyRef.parse(kid_text)
        except ValueError:
            raise PassportHeaderError(
                f"passport kid {short_repr(kid_text)} is not of the form <issuer>/signing/<version>"
            ) from None
        if kid.purpose is not Purpose.SIGNING or str(kid) != kid_text:
            raise PassportHeaderError(
                f"passport kid {short_repr(kid_text)} is not of the form <issuer>/signing/<version>"
            )
        public_key = self._trusted.get(kid_text)
        if public_key is None:
            raise PassportUnknownIssuerError(f"passport key {kid_text} is not a trusted issuer key")
        return kid, public_key


def _check_trusted(trusted: object) -> dict[str, ec.EllipticCurvePublicKey]:
    if not isinstance(trusted, Mapping):
        raise ValueError("trusted must map key ids (<issuer>/signing/<version>) to public keys")
    checked: dict[str, ec.EllipticCurvePublicKey] = {}
    for kid_text, key in trusted.items():
        if type(kid_text) is not str:
            raise ValueError(f"trusted key id {short_repr(kid_text)} is not a string")
        try:
            kid = KeyRef.parse(kid_text)
        except ValueError as exc:
            raise ValueError(f"trusted key id {kid_text!r}: {exc}") from None
        if kid.purpose is not Purpose.SIGNING:
            raise ValueError(f"trusted key id {kid_text!r} is not a signing key")
        if str(kid) != kid_text:
            raise ValueError(f"trusted key id {kid_text!r} is not canonical; write {str(kid)!r}")
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError(f"trusted key {kid_text!r} is not an EC public key")
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"trusted key {kid_text!r} is on {key.curve.name}, not P-256")
        checked[kid_text] = key
    return checked


# --- unverified inspection and key helpers -------------------------------------------------


def inspect(
    token: str | bytes, *, max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """UNVERIFIED header and payload of ``token``, for ``xbgw passport inspect``.

    Nothing here is checked but the format: the signature is not verified and the claims are
    not validated, so the result must never authorise anything. It is still bounded and
    strict (size, three canonical base64url parts, UTF-8 JSON objects without duplicates), so
    it is safe to run on hostile input.
    """
    _, header_b64, payload_b64, signature_b64 = _split(token, max_token_bytes)
    header = _json_object(_b64decode(header_b64, "header"), "header")
    payload = _json_object(_b64decode(payload_b64, "payload"), "payload")
    _b64decode(signature_b64, "signature")
    return header, payload


def public_key_to_pem(key: ec.EllipticCurvePublicKey) -> str:
    """SubjectPublicKeyInfo PEM of an issuer key, as written into partner configuration."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key_pem(data: str | bytes) -> ec.EllipticCurvePublicKey:
    """Parse a PEM public key that must be P-256; ``ValueError`` says what is wrong."""
    pem = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not a PEM public key (expected -----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"public key is {type(key).__name__}, not an EC P-256 key")
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"public key is on {key.curve.name}, not P-256")
    return key
