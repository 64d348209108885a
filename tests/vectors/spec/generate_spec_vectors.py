"""Write ``spec.json``: known-answer vectors for every format SPEC.md defines.

Built from SPEC.md's steps alone, on the standard library and ``cryptography``'s primitives
(ECDH, HKDF, AES-KW/KWP, AES-GCM, ECDSA with RFC 6979 deterministic nonces): nothing is
imported from ``gateway/``, so ``tests/unit/test_spec_vectors.py`` compares two
implementations, not the gateway with a snapshot of itself. Protobuf bodies are encoded by
hand from the wire format, for the same reason.

Every input is fixed and every signature deterministic, so the output is the same on every
run: ``.venv/bin/python tests/vectors/spec/generate_spec_vectors.py`` rewrites the file, and
the test checks that the committed file is exactly what this writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap, aes_key_wrap_with_padding

OUT = Path(__file__).resolve().with_name("spec.json")
PURPOSE_CODES = {"transport": 1, "signing": 2, "storage": 3}
N_P256 = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def seed(label: str, n: int = 32) -> bytes:
    """Fixed "random" bytes, reproducible from their label."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"xbgw spec vectors/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


def private_key(label: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(seed(label), "big") % (N_P256 - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def scalar_hex(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_numbers().private_value.to_bytes(32, "big").hex()


def point(key: ec.EllipticCurvePublicKey, compressed: bool = False) -> bytes:
    form = (
        serialization.PublicFormat.CompressedPoint
        if compressed
        else serialization.PublicFormat.UncompressedPoint
    )
    return key.public_bytes(serialization.Encoding.X962, form)


def key_ref(owner: str, purpose: str, version: int) -> bytes:
    raw = owner.encode("ascii")
    return bytes([len(raw)]) + raw + bytes([PURPOSE_CODES[purpose]]) + version.to_bytes(4, "big")


def short(text: str) -> bytes:
    raw = text.encode("ascii")
    return bytes([len(raw)]) + raw


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def sign_rs(key: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    """ECDSA P-256 over a SHA-256 digest, RFC 6979 nonce, raw r || s."""
    der = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# --- XBGW-STREAM-1 ---------------------------------------------------------------------------


def key_refs() -> list[dict[str, Any]]:
    cases = [("frankfurt", "transport", 1), ("dpo", "signing", 7), ("lingang", "storage", 65536)]
    return [
        {
            "text": f"{owner}/{purpose}/{version}",
            "owner": owner,
            "purpose": purpose,
            "purpose_code": PURPOSE_CODES[purpose],
            "version": version,
            "encoded": key_ref(owner, purpose, version).hex(),
        }
        for owner, purpose, version in cases
    ]


def stream() -> dict[str, Any]:
    recipient = private_key("recipient transport")
    ephemeral = private_key("ephemeral")
    recipient_ref = key_ref("frankfurt", "transport", 1)
    storage_ref = key_ref("frankfurt", "storage", 2)
    storage_key = seed("storage key")
    data_key = seed("data key")
    salt = seed("salt")
    nonce_prefix = seed("nonce prefix", 7)
    segment_size = 64
    plaintext = seed("plaintext", segment_size + 5)
    passport_digest = hashlib.sha256(b"a passport token").digest()
    transfer_id, sender, receiver = "T-0001.spec_vector", "lingang", "frankfurt"

    core = (
        b"XBGW"
        + bytes([1, 1])
        + segment_size.to_bytes(4, "big")
        + salt
        + nonce_prefix
        + short(transfer_id)
        + short(sender)
        + short(receiver)
        + passport_digest
    )
    core_digest = hashlib.sha256(core).digest()
    okm = hkdf(data_key, salt, b"XBGW-STREAM-1 payload" + core_digest, 64)
    payload_key, commitment = okm[:32], okm[32:]

    ephemeral_point = point(ephemeral.public_key())
    recipient_point = point(recipient.public_key())
    shared = ephemeral.exchange(ec.ECDH(), recipient.public_key())
    kek_info = b"XBGW-STREAM-1 ECDH-ES+A256KW" + recipient_ref + core_digest
    kek = hkdf(shared, ephemeral_point + recipient_point, kek_info, 32)
    kek_compressed = hkdf(
        shared, ephemeral_point + point(recipient.public_key(), compressed=True), kek_info, 32
    )
    wrapped = aes_key_wrap(kek, data_key)
    entry = bytes([1]) + recipient_ref + ephemeral_point + bytes([len(wrapped)]) + wrapped

    binding = hashlib.sha256(b"XBGW-STREAM-1 storage" + storage_ref + core_digest).digest()
    stored = aes_key_wrap_with_padding(storage_key, data_key + binding)
    storage_entry = bytes([2]) + storage_ref + bytes([len(stored)]) + stored

    def header(entries: bytes) -> bytes:
        keys = bytes([1]) + entries
        length = len(core) + 2 + len(keys) + len(commitment)
        return core[:6] + length.to_bytes(2, "big") + core[6:] + keys + commitment

    aead = AESGCM(payload_key)
    segments = []
    pieces = [(0, plaintext[:segment_size], False), (1, plaintext[segment_size:], True)]
    for index, piece, final in pieces:
        nonce = nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")
        segments.append(
            {
                "index": index,
                "final": final,
                "nonce": nonce.hex(),
                "ciphertext": aead.encrypt(nonce, piece, core_digest).hex(),
            }
        )
    return {
        "inputs": {
            "recipient_private_scalar": scalar_hex(recipient),
            "recipient_key_ref": "frankfurt/transport/1",
            "ephemeral_private_scalar": scalar_hex(ephemeral),
            "data_key": data_key.hex(),
            "salt": salt.hex(),
            "nonce_prefix": nonce_prefix.hex(),
            "segment_size": segment_size,
            "transfer_id": transfer_id,
            "sender_id": sender,
            "receiver_id": receiver,
            "passport_digest": passport_digest.hex(),
            "plaintext": plaintext.hex(),
            "storage_key_ref": "frankfurt/storage/2",
            "storage_key": storage_key.hex(),
        },
        "core": core.hex(),
        "core_digest": core_digest.hex(),
        "payload_key": payload_key.hex(),
        "commitment": commitment.hex(),
        "recipient_point": recipient_point.hex(),
        "recipient_point_compressed": point(recipient.public_key(), compressed=True).hex(),
        "ephemeral_point": ephemeral_point.hex(),
        "shared_secret": shared.hex(),
        "kek_salt": (ephemeral_point + recipient_point).hex(),
        "kek_info": kek_info.hex(),
        "kek": kek.hex(),
        "kek_if_recipient_point_compressed": kek_compressed.hex(),
        "wrapped": wrapped.hex(),
        "header": header(entry).hex(),
        "segments": segments,
        "storage_binding": binding.hex(),
        "storage_wrapped": stored.hex(),
        "header_at_rest": header(storage_entry).hex(),
    }


# --- passports -------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()


def jws(key: ec.EllipticCurvePrivateKey, header: bytes, payload: bytes) -> str:
    signing_input = f"{b64(header)}.{b64(payload)}"
    digest = hashlib.sha256(signing_input.encode("ascii")).digest()
    return f"{signing_input}.{b64(sign_rs(key, digest))}"


NOW = 1_900_000_000  # the verifier's clock for every passport vector
LEEWAY = 60


def passports() -> dict[str, Any]:
    issuer = private_key("issuer signing")
    stranger = private_key("not a trusted key")
    kid = "dpo/signing/1"
    header = {"alg": "ES256", "kid": kid, "typ": "xbgw-passport+jwt"}
    plain_terms = {
        "sender": "lingang",
        "src": "CN-SH",
        "dst": "EU-DE",
        "classification": "general",
        "pi": "none",
        "subjects": 0,
        "purpose": "spec vector",
        "legal_basis": "test",
        "byte_limit": 1048576,
    }
    minimal = {
        "iss": "dpo",
        "jti": "dpo_T-0001",
        "iat": NOW - 100,
        "nbf": NOW - 100,
        "exp": NOW + 3600,
        "aud": "frankfurt",
        "xbgw": plain_terms,
    }
    full = {
        **minimal,
        "jti": "dpo_T-0002",
        "sub": hashlib.sha256(b"the data set").hexdigest(),
        "xbgw": {
            **plain_terms,
            "classification": "important",
            "pi": "personal",
            "subjects": 1200,
            "exporter": "Lingang Widgets Co., Ltd.",
            "ciio": True,
            "eu_class": "personal",
            "categories": ["hr.payroll", "hr.staff"],
            "zone": "lingang",
            "evidence": [
                {"kind": "cac-assessment", "reference": "CAC-2026-0042", "expires": 1964339200},
                {"kind": "gdpr-scc", "reference": "SCC-2026-7", "module": "2", "tia": "TIA-7"},
                {"kind": "exemption", "reference": "HR-2026-1", "article": "Art. 5(2)"},
            ],
        },
    }

    def valid(name: str, claims: dict[str, Any]) -> dict[str, Any]:
        header_json, payload_json = dumps(header), dumps(claims)
        token = jws(issuer, header_json, payload_json)
        signing_input, _, signature = token.rpartition(".")
        return {
            "name": name,
            "header_json": header_json.decode(),
            "payload_json": payload_json.decode(),
            "signing_input": signing_input,
            "signature": base64.urlsafe_b64decode(signature + "==").hex(),
            "token": token,
            "digest": hashlib.sha256(token.encode("ascii")).hexdigest(),
            "claims": claims,
        }

    def signed(claims: dict[str, Any], hdr: dict[str, Any] | None = None) -> str:
        return jws(issuer, dumps(hdr or header), dumps(claims))

    good = signed(minimal)
    bad_signature = good[:-2] + ("AA" if not good.endswith("AA") else "BA")
    expired_at = {**minimal, "exp": NOW - LEEWAY}
    invalid = [
        (
            "alg-none-and-bad-signature",
            "the alg is checked before the signature",
            f"{b64(dumps({**header, 'alg': 'none'}))}.{b64(dumps(minimal))}.",
            "PassportHeaderError",
        ),
        (
            "hs256-and-bad-signature",
            "HS256 (key confusion) is refused before any key is touched",
            f"{b64(dumps({**header, 'alg': 'HS256'}))}.{b64(dumps(minimal))}.{b64(b'x' * 32)}",
            "PassportHeaderError",
        ),
        (
            "extra-header-member",
            "the header has exactly alg, kid, typ",
            signed(minimal, {**header, "jku": "https://example.org/keys"}),
            "PassportHeaderError",
        ),
        (
            "untrusted-kid",
            "kid must name a trusted key version",
            signed(minimal, {**header, "kid": "dpo/signing/2"}),
            "PassportUnknownIssuerError",
        ),
        (
            "bad-signature-and-expired",
            "the signature is checked before any claim",
            b64(dumps(header)) + "." + b64(dumps(expired_at)) + "." + bad_signature.split(".")[2],
            "PassportSignatureError",
        ),
        (
            "signed-by-another-key",
            "a signature by a key other than the kid's",
            jws(stranger, dumps(header), dumps(minimal)),
            "PassportSignatureError",
        ),
        (
            "duplicate-member",
            "duplicate JSON members are refused (after the signature)",
            jws(issuer, dumps(header), dumps(minimal)[:-1] + b',"aud":"lingang"}'),
            "PassportFormatError",
        ),
        (
            "unknown-claim-and-expired",
            "the claim set is checked before the validity window",
            signed({**expired_at, "role": "admin"}),
            "PassportClaimsError",
        ),
        (
            "iss-not-the-kid-owner",
            "iss must be the owner of the signing key",
            signed({**minimal, "iss": "mallory", "jti": "mallory_T-0001"}),
            "PassportUnknownIssuerError",
        ),
        (
            "jti-of-another-issuer",
            "a jti must begin with its own issuer's id and '_'",
            signed({**minimal, "jti": "mallory_T-0001"}),
            "PassportClaimsError",
        ),
        (
            "jti-without-issuer",
            "a jti must begin with its own issuer's id and '_'",
            signed({**minimal, "jti": "T-0001"}),
            "PassportClaimsError",
        ),
        (
            "not-yet-valid",
            "now < nbf - leeway",
            signed({**minimal, "nbf": NOW + LEEWAY + 1, "exp": NOW + 7200}),
            "PassportNotYetValidError",
        ),
        (
            "expired-at-exp-plus-leeway-and-wrong-audience",
            "now >= exp + leeway is expired; time is checked before the audience",
            signed({**expired_at, "aud": "paris"}),
            "PassportExpiredError",
        ),
        (
            "wrong-audience",
            "aud must be the verifying gateway",
            signed({**minimal, "aud": "paris"}),
            "PassportAudienceError",
        ),
    ]
    return {
        "issuer_private_scalar": scalar_hex(issuer),
        "issuer_public_point": point(issuer.public_key()).hex(),
        "kid": kid,
        "verifier": {"audience": "frankfurt", "now": NOW, "leeway_seconds": LEEWAY},
        "valid": [
            valid("minimal", minimal),
            valid("full", full),
            valid("valid-one-second-before-exp-plus-leeway", {**minimal, "exp": NOW - LEEWAY + 1}),
        ],
        "invalid": [
            {"name": name, "description": why, "token": token, "expected_error": error}
            for name, why, token, error in invalid
        ],
    }


# --- signed documents ------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, value: int | bytes | str) -> bytes:
    """One proto3 field; defaults (0, empty) are left out, as deterministic protobuf does."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value) if value else b""
    raw = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(raw)) + raw if raw else b""


def documents() -> dict[str, Any]:
    signer = private_key("frankfurt signing 3")
    lingang_signer = private_key("lingang signing 1")
    manifest: dict[str, Any] = {
        "transfer_id": "T-0001",
        "sender": "lingang",
        "receiver": "frankfurt",
        "header_core_digest": hashlib.sha256(b"core").hexdigest(),
        "passport_digest": hashlib.sha256(b"passport").hexdigest(),
        "plaintext_sha256": hashlib.sha256(b"plaintext").hexdigest(),
        "plaintext_size": 300000,
        "segment_count": 5,
    }
    manifest_body = b"".join(
        field(number, bytes.fromhex(value) if name.endswith(("digest", "sha256")) else value)
        for number, (name, value) in enumerate(manifest.items(), start=1)
    )
    receipt: dict[str, Any] = {
        "transfer_id": "T-0001",
        "sender": "lingang",
        "receiver": "frankfurt",
        "manifest_digest": hashlib.sha256(manifest_body).hexdigest(),
        "plaintext_sha256": manifest["plaintext_sha256"],
        "plaintext_size": 300000,
        "passport_digest": manifest["passport_digest"],
        "committed_at": 1900000123,
    }
    receipt_body = b"".join(
        field(number, bytes.fromhex(value) if name.endswith(("digest", "sha256")) else value)
        for number, (name, value) in enumerate(receipt.items(), start=1)
    )
    transport = {1: private_key("frankfurt transport 1"), 2: private_key("frankfurt transport 2")}
    signing = {2: private_key("frankfurt signing 2"), 3: signer}
    transport_states = {1: "decrypt-only", 2: "active"}
    signing_states = {2: "verify-only", 3: "active"}
    key_set: dict[str, Any] = {
        "gateway_id": "frankfurt",
        "keys": [
            {
                "version": v,
                "public_point": point(k.public_key()).hex(),
                "state": transport_states[v],
            }
            for v, k in sorted(transport.items())
        ],
        "current_version": 2,
        "issued_at": 1900000000,
        "signing_keys": [
            {"version": v, "public_point": point(k.public_key()).hex(), "state": signing_states[v]}
            for v, k in sorted(signing.items())
        ],
    }

    def entry(key: dict[str, Any]) -> bytes:
        return (
            field(1, key["version"])
            + field(2, bytes.fromhex(key["public_point"]))
            + field(3, key["state"])
        )

    key_set_body = (
        field(1, key_set["gateway_id"])
        + b"".join(field(2, entry(k)) for k in key_set["keys"])
        + field(3, key_set["current_version"])
        + field(4, key_set["issued_at"])
        + b"".join(field(5, entry(k)) for k in key_set["signing_keys"])
    )

    def blob(
        key: ec.EllipticCurvePrivateKey, kid: str, body: bytes, fields: dict[str, Any]
    ) -> dict[str, Any]:
        digest = hashlib.sha256(body).digest()
        return {
            "fields": fields,
            "body": body.hex(),
            "digest": digest.hex(),
            "kid": kid,
            "signature": sign_rs(key, digest).hex(),
        }

    return {
        "signers": {
            "lingang/signing/1": {
                "private_scalar": scalar_hex(lingang_signer),
                "public_point": point(lingang_signer.public_key()).hex(),
            },
            "frankfurt/signing/3": {
                "private_scalar": scalar_hex(signer),
                "public_point": point(signer.public_key()).hex(),
            },
            "frankfurt/signing/2": {
                "private_scalar": scalar_hex(signing[2]),
                "public_point": point(signing[2].public_key()).hex(),
            },
        },
        "manifest": blob(lingang_signer, "lingang/signing/1", manifest_body, manifest),
        "receipt": blob(signer, "frankfurt/signing/3", receipt_body, receipt),
        "key_set": blob(signer, "frankfurt/signing/3", key_set_body, key_set),
        "key_set_endorsement": blob(signing[2], "frankfurt/signing/2", key_set_body, key_set),
    }


# --- the message-size rule -------------------------------------------------------------------

TAG_LEN = 16
OFFER_FRAMING = 1024  # the receiver's allowance for a Segment message's other fields
CONFIG_FRAMING = 65536  # what a gateway's own configuration must leave (limits.*)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def message_size() -> dict[str, Any]:
    segment_size = 16 * 1024 * 1024
    ciphertext_len = segment_size + TAG_LEN
    transfer_id = "T" * 64
    index = 2**32 - 2
    message = (
        field(1, transfer_id)
        + field(2, index)
        + field(3, 1)
        + varint(4 << 3 | 2)
        + varint(ciphertext_len)
    )
    framing = len(message)
    offer_cases = []
    for size in (64, 4096):
        limit = size + TAG_LEN + OFFER_FRAMING
        offer_cases.append({"segment_size": size, "max_message_bytes": limit, "accepted": True})
        offer_cases.append(
            {"segment_size": size, "max_message_bytes": limit - 1, "accepted": False}
        )
    config_cases = [
        (1048576, 1048576 + CONFIG_FRAMING, True),
        (1048576, 1048576 + CONFIG_FRAMING - 1, False),
        (64, 64 + CONFIG_FRAMING, True),
        (MAX_MESSAGE_BYTES - CONFIG_FRAMING, MAX_MESSAGE_BYTES, True),
        (MAX_MESSAGE_BYTES - CONFIG_FRAMING + 1, MAX_MESSAGE_BYTES + 1, False),
    ]
    return {
        "tag_len": TAG_LEN,
        "offer_framing": OFFER_FRAMING,
        "config_framing": CONFIG_FRAMING,
        "max_message_bytes_ceiling": MAX_MESSAGE_BYTES,
        "largest_segment_message": {
            "transfer_id": transfer_id,
            "index": index,
            "final": True,
            "ciphertext_len": ciphertext_len,
            "framing_bytes": framing,
            "message_bytes": framing + ciphertext_len,
        },
        "offer_cases": offer_cases,
        "config_cases": [
            {"segment_size": s, "max_message_bytes": m, "accepted": ok} for s, m, ok in config_cases
        ],
    }


def vectors() -> dict[str, Any]:
    return {
        "format": "xbgw-spec-vectors-1",
        "comment": (
            "Generated by tests/vectors/spec/generate_spec_vectors.py from SPEC.md on "
            "cryptography primitives alone (no gateway code); do not edit. Hex strings."
        ),
        "key_refs": key_refs(),
        "stream": stream(),
        "passport": passports(),
        "documents": documents(),
        "message_size": message_size(),
    }


def render() -> str:
    return json.dumps(vectors(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    target.write_text(render(), encoding="utf-8")
