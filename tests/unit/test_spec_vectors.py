"""SPEC.md's known-answer vectors (``tests/vectors/spec/spec.json``), checked both ways.

The vectors are written by ``tests/vectors/spec/generate_spec_vectors.py``, which follows
SPEC.md's steps on ``cryptography`` primitives and a hand-written protobuf encoder, importing
nothing from ``gateway/``. Here the gateway must reproduce every vector byte for byte from the
same fixed inputs (and read each one back), and outside checkers agree: the stream's KEK
derivation, wrap and first segment are rebuilt again in this file from primitives alone, PyJWT
verifies the passports, and the ``openssl`` command line derives the KEK and verifies the
signed documents. So SPEC.md, an independent implementation of it and the gateway are three
things that must agree -- what an implementer outside the project can rely on.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import jwt
import pydantic
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap,
    aes_key_wrap_with_padding,
)

import gateway.config
import gateway.config_schema
import gateway.errors
from gateway._proto.xbgw.v1 import partner_pb2
from gateway.config import Limits
from gateway.documents import (
    KeySet,
    Manifest,
    Receipt,
    key_set_body,
    open_key_set,
    open_manifest,
    open_receipt,
    sign_key_set,
    sign_manifest,
    sign_receipt,
)
from gateway.envelope import Header, StreamContext, StreamEncryptor, open_header, rewrap_for_storage
from gateway.envelope.wrapping import _seal_header
from gateway.errors import KeyNotFoundError, PartnerError, UnwrapError
from gateway.keys import KeyRef, Purpose
from gateway.passport import PassportVerifier, issue, passport_digest
from gateway.passport_claims import PassportClaims
from gateway.receiver.offer import MESSAGE_OVERHEAD
from gateway.signed import Signed
from tests.loopback import make_loopback

SPEC_DIR = Path(__file__).resolve().parents[1] / "vectors" / "spec"
GENERATOR = SPEC_DIR / "generate_spec_vectors.py"
DATA: dict[str, Any] = json.loads((SPEC_DIR / "spec.json").read_text(encoding="utf-8"))
STREAM: dict[str, Any] = DATA["stream"]
INPUTS: dict[str, Any] = STREAM["inputs"]
PASSPORT: dict[str, Any] = DATA["passport"]
DOCS: dict[str, Any] = DATA["documents"]
SIZE: dict[str, Any] = DATA["message_size"]
OPENSSL = shutil.which("openssl")
OPENSSL_VERIFY = [OPENSSL or "openssl", "dgst", "-sha256", "-verify"]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def private(scalar: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int(scalar, 16), ec.SECP256R1())


def public(point_hex: str) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), h(point_hex))


class DeterministicSigner:
    """An HSM stand-in that signs like ``CKM_ECDSA`` (raw r || s over a given SHA-256 digest)
    but with RFC 6979 nonces, so the gateway's signatures can be compared byte for byte."""

    def __init__(self, keys: dict[int, ec.EllipticCurvePrivateKey]) -> None:
        self._keys = keys

    def sign_digest(self, version: int, digest: bytes) -> bytes:
        der = self._keys[version].sign(
            digest, ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True)
        )
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


class VectorHolder:
    """The recipient's transport key and storage key from the vector inputs."""

    def __init__(self) -> None:
        self._transport = private(INPUTS["recipient_private_scalar"])
        self._storage = h(INPUTS["storage_key"])

    def public_key(self, purpose: Purpose, version: int, /) -> ec.EllipticCurvePublicKey:
        if purpose is not Purpose.TRANSPORT or version != 1:
            raise KeyNotFoundError(f"{purpose.value} {version} is not here")
        return self._transport.public_key()

    def ecdh(self, version: int, peer_point: bytes, /) -> bytes:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point)
        return self._transport.exchange(ec.ECDH(), peer)

    def wrap(self, version: int, secret: bytes, /) -> bytes:
        return aes_key_wrap_with_padding(self._storage, secret)

    def unwrap(self, version: int, wrapped: bytes, /) -> bytes:
        try:
            return aes_key_unwrap_with_padding(self._storage, wrapped)
        except InvalidUnwrap:
            raise UnwrapError("does not unwrap") from None


# --- the vector file itself ------------------------------------------------------------------


def test_the_generator_imports_nothing_from_gateway() -> None:
    tree = ast.parse(GENERATOR.read_text(encoding="utf-8"))
    modules = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [m for m in modules if m.split(".")[0] in {"gateway", "tests"}], modules


def test_the_committed_vectors_are_what_the_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "spec.json"
    subprocess.run([sys.executable, "-I", str(GENERATOR), str(out)], check=True, timeout=120)
    assert out.read_text(encoding="utf-8") == (SPEC_DIR / "spec.json").read_text(encoding="utf-8")


# --- key references --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", DATA["key_refs"], ids=lambda v: v["text"])
def test_key_reference_encoding_and_purpose_codes(vector: dict[str, Any]) -> None:
    ref = KeyRef(vector["owner"], Purpose(vector["purpose"]), vector["version"])
    assert ref.purpose.code == vector["purpose_code"]
    assert Purpose.from_code(vector["purpose_code"]) is ref.purpose
    assert ref.encode().hex() == vector["encoded"]
    assert str(ref) == vector["text"] and KeyRef.parse(vector["text"]) == ref


# --- XBGW-STREAM-1 ---------------------------------------------------------------------------


def _context() -> StreamContext:
    return StreamContext(
        INPUTS["transfer_id"],
        INPUTS["sender_id"],
        INPUTS["receiver_id"],
        h(INPUTS["passport_digest"]),
    )


def _sealed() -> tuple[Header, bytes]:
    recipient = private(INPUTS["recipient_private_scalar"])
    return _seal_header(
        _context(),
        KeyRef.parse(INPUTS["recipient_key_ref"]),
        recipient.public_key(),
        INPUTS["segment_size"],
        data_key=h(INPUTS["data_key"]),
        salt=h(INPUTS["salt"]),
        nonce_prefix=h(INPUTS["nonce_prefix"]),
        ephemeral=private(INPUTS["ephemeral_private_scalar"]),
    )


def test_the_spec_steps_rebuilt_from_primitives_give_the_vector() -> None:
    """KEK derivation, wrap and first segment from SPEC.md's steps, in this file, no gateway."""
    recipient = private(INPUTS["recipient_private_scalar"])
    ephemeral = private(INPUTS["ephemeral_private_scalar"])
    uncompressed = serialization.PublicFormat.UncompressedPoint
    recipient_point = recipient.public_key().public_bytes(serialization.Encoding.X962, uncompressed)
    ephemeral_point = ephemeral.public_key().public_bytes(serialization.Encoding.X962, uncompressed)
    owner = b"frankfurt"
    key_ref = bytes([len(owner)]) + owner + b"\x01" + (1).to_bytes(4, "big")  # transport = 1
    core_digest = hashlib.sha256(h(STREAM["core"])).digest()
    shared = ephemeral.exchange(ec.ECDH(), recipient.public_key())
    kek = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_point + recipient_point,
        info=b"XBGW-STREAM-1 ECDH-ES+A256KW" + key_ref + core_digest,
    ).derive(shared)
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=h(INPUTS["salt"]),
        info=b"XBGW-STREAM-1 payload" + core_digest,
    ).derive(h(INPUTS["data_key"]))
    nonce = h(INPUTS["nonce_prefix"]) + (0).to_bytes(4, "big") + b"\x00"
    first = AESGCM(okm[:32]).encrypt(
        nonce, h(INPUTS["plaintext"])[: INPUTS["segment_size"]], core_digest
    )
    assert recipient_point.hex() == STREAM["recipient_point"]
    assert core_digest.hex() == STREAM["core_digest"]
    assert shared.hex() == STREAM["shared_secret"]
    assert kek.hex() == STREAM["kek"]
    assert aes_key_wrap(kek, h(INPUTS["data_key"])).hex() == STREAM["wrapped"]
    assert okm[32:].hex() == STREAM["commitment"]
    assert first.hex() == STREAM["segments"][0]["ciphertext"]


def test_the_gateway_seals_the_vector_byte_for_byte() -> None:
    header, data_key = _sealed()
    assert header.core().hex() == STREAM["core"]
    assert header.core_digest().hex() == STREAM["core_digest"]
    assert header.commitment.hex() == STREAM["commitment"]
    (entry,) = header.wrapped_keys
    assert (
        entry.ephemeral_point is not None
        and entry.ephemeral_point.hex() == STREAM["ephemeral_point"]
    )
    assert entry.wrapped.hex() == STREAM["wrapped"]
    assert header.encode().hex() == STREAM["header"]
    encryptor = StreamEncryptor(header, data_key)
    plaintext, size = h(INPUTS["plaintext"]), INPUTS["segment_size"]
    for segment in STREAM["segments"]:
        index = segment["index"]
        piece = plaintext[index * size : (index + 1) * size]
        assert (
            encryptor.encrypt_segment(index, piece, segment["final"]).hex() == segment["ciphertext"]
        )


def test_the_gateway_opens_the_vector_and_rewraps_it_at_rest() -> None:
    header = Header.decode(h(STREAM["header"]))
    holder = VectorHolder()
    data_key = open_header(header, "frankfurt", holder)
    assert data_key.hex() == INPUTS["data_key"]
    at_rest = rewrap_for_storage(header, data_key, KeyRef.parse(INPUTS["storage_key_ref"]), holder)
    assert at_rest.encode().hex() == STREAM["header_at_rest"]
    assert open_header(Header.decode(h(STREAM["header_at_rest"])), "frankfurt", holder) == data_key
    blob = aes_key_unwrap_with_padding(h(INPUTS["storage_key"]), h(STREAM["storage_wrapped"]))
    assert blob.hex() == INPUTS["data_key"] + STREAM["storage_binding"]


def test_a_compressed_recipient_point_in_the_kek_salt_gives_another_kek() -> None:
    """The salt takes the recipient point uncompressed: the compressed form does not unwrap."""
    assert len(h(STREAM["recipient_point_compressed"])) == 33
    assert STREAM["kek_if_recipient_point_compressed"] != STREAM["kek"]
    with pytest.raises(InvalidUnwrap):
        aes_key_unwrap(h(STREAM["kek_if_recipient_point_compressed"]), h(STREAM["wrapped"]))
    assert aes_key_unwrap(h(STREAM["kek"]), h(STREAM["wrapped"])).hex() == INPUTS["data_key"]


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command line")
def test_openssl_derives_the_kek() -> None:
    result = subprocess.run(
        [
            cast(str, OPENSSL),
            "kdf",
            "-keylen",
            "32",
            "-kdfopt",
            "digest:SHA256",
            "-kdfopt",
            f"hexkey:{STREAM['shared_secret']}",
            "-kdfopt",
            f"hexsalt:{STREAM['kek_salt']}",
            "-kdfopt",
            f"hexinfo:{STREAM['kek_info']}",
            "HKDF",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip().replace(":", "").lower() == STREAM["kek"]


# --- passports -------------------------------------------------------------------------------


def _verifier() -> PassportVerifier:
    settings = PASSPORT["verifier"]
    return PassportVerifier(
        {PASSPORT["kid"]: public(PASSPORT["issuer_public_point"])},
        settings["audience"],
        leeway_seconds=settings["leeway_seconds"],
        clock=lambda: float(settings["now"]),
    )


@pytest.mark.parametrize("vector", PASSPORT["valid"], ids=lambda v: v["name"])
def test_the_gateway_issues_the_passport_byte_for_byte(vector: dict[str, Any]) -> None:
    signer = DeterministicSigner({1: private(PASSPORT["issuer_private_scalar"])})
    claims = PassportClaims.from_json(vector["claims"])
    assert issue(claims, signer, KeyRef.parse(PASSPORT["kid"])) == vector["token"]
    assert passport_digest(vector["token"]).hex() == vector["digest"]


@pytest.mark.parametrize("vector", PASSPORT["valid"], ids=lambda v: v["name"])
def test_the_passport_json_form_and_verification(vector: dict[str, Any]) -> None:
    header = {"alg": "ES256", "kid": PASSPORT["kid"], "typ": "xbgw-passport+jwt"}
    compact = {"separators": (",", ":"), "sort_keys": True, "ensure_ascii": True}
    assert vector["header_json"] == json.dumps(header, **compact)  # type: ignore[arg-type]
    assert vector["payload_json"] == json.dumps(vector["claims"], **compact)  # type: ignore[arg-type]
    verified = _verifier().verify(vector["token"])
    assert verified.claims.to_json() == vector["claims"]
    assert verified.digest.hex() == vector["digest"]
    # PyJWT, an independent JOSE implementation, verifies the same token (time checks off:
    # the vectors use a fixed clock; the gateway's window is tested with the invalid ones).
    decoded = jwt.decode(
        vector["token"],
        public(PASSPORT["issuer_public_point"]),
        algorithms=["ES256"],
        audience=PASSPORT["verifier"]["audience"],
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert decoded == vector["claims"]
    assert jwt.get_unverified_header(vector["token"]) == header


@pytest.mark.parametrize("vector", PASSPORT["invalid"], ids=lambda v: v["name"])
def test_the_verifier_refuses_in_the_specified_order(vector: dict[str, Any]) -> None:
    expected = getattr(gateway.errors, vector["expected_error"])
    with pytest.raises(expected) as raised:
        _verifier().verify(vector["token"])
    assert type(raised.value) is expected, f"{vector['description']}: {raised.value!r}"


# --- signed documents ------------------------------------------------------------------------


def _doc_signer() -> DeterministicSigner:
    keys = {kid: private(v["private_scalar"]) for kid, v in DOCS["signers"].items()}
    return DeterministicSigner(
        {
            1: keys["lingang/signing/1"],
            2: keys["frankfurt/signing/2"],
            3: keys["frankfurt/signing/3"],
        }
    )


def _signed(vector: dict[str, Any]) -> Signed:
    return Signed(h(vector["body"]), h(vector["signature"]), vector["kid"])


def _signer_key(kid: str) -> ec.EllipticCurvePublicKey:
    return public(DOCS["signers"][kid]["public_point"])


def _bytes_fields(fields: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: h(v) if k in names else v for k, v in fields.items()}


def test_the_manifest_vector() -> None:
    vector = DOCS["manifest"]
    manifest = Manifest(
        **_bytes_fields(
            vector["fields"], "header_core_digest", "passport_digest", "plaintext_sha256"
        )
    )
    blob = sign_manifest(_doc_signer(), KeyRef.parse(vector["kid"]), manifest)
    assert (blob.body.hex(), blob.signature.hex(), blob.kid) == (
        vector["body"],
        vector["signature"],
        vector["kid"],
    )
    assert open_manifest(_signed(vector), _signer_key(vector["kid"]), "lingang") == manifest


def test_the_receipt_vector() -> None:
    vector = DOCS["receipt"]
    receipt = Receipt(
        **_bytes_fields(vector["fields"], "manifest_digest", "plaintext_sha256", "passport_digest")
    )
    blob = sign_receipt(_doc_signer(), KeyRef.parse(vector["kid"]), receipt)
    assert (blob.body.hex(), blob.signature.hex()) == (vector["body"], vector["signature"])
    assert (
        vector["fields"]["manifest_digest"]
        == hashlib.sha256(h(DOCS["manifest"]["body"])).hexdigest()
    )
    opened, kid = open_receipt(_signed(vector), _signer_key(vector["kid"]), "frankfurt")
    assert opened == receipt and str(kid) == vector["kid"]


def test_the_key_set_vector_and_its_endorsement() -> None:
    vector = DOCS["key_set"]
    fields = vector["fields"]
    key_set = KeySet(
        gateway_id=fields["gateway_id"],
        keys={k["version"]: public(k["public_point"]) for k in fields["keys"]},
        current_version=fields["current_version"],
        issued_at=fields["issued_at"],
        signing_keys={k["version"]: public(k["public_point"]) for k in fields["signing_keys"]},
        signing_version=3,
    )
    assert key_set_body(key_set).hex() == vector["body"]
    for name in ("key_set", "key_set_endorsement"):
        expected = DOCS[name]
        blob = sign_key_set(_doc_signer(), KeyRef.parse(expected["kid"]), key_set)
        assert blob.signature.hex() == expected["signature"]
        opened = open_key_set(_signed(expected), _signer_key(expected["kid"]), "frankfurt")
        assert key_set_body(opened) == h(vector["body"])


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command line")
@pytest.mark.parametrize("name", ["manifest", "receipt", "key_set", "key_set_endorsement"])
def test_openssl_verifies_the_document_signature(name: str, tmp_path: Path) -> None:
    vector = DOCS[name]
    signature = h(vector["signature"])
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    pem = _signer_key(vector["kid"]).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "body.bin").write_bytes(h(vector["body"]))
    result = subprocess.run(
        [*OPENSSL_VERIFY, "key.pem", "-signature", "sig.der", "body.bin"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "Verified OK" in result.stdout, result.stdout + result.stderr


def test_protobuf_parses_the_hand_encoded_bodies() -> None:
    manifest = partner_pb2.Manifest.FromString(h(DOCS["manifest"]["body"]))
    assert manifest.segment_count == DOCS["manifest"]["fields"]["segment_count"]
    key_set = partner_pb2.KeySet.FromString(h(DOCS["key_set"]["body"]))
    assert [k.state for k in key_set.keys] == ["decrypt-only", "active"]
    assert key_set.SerializeToString(deterministic=True) == h(DOCS["key_set"]["body"])


# --- the message-size rule -------------------------------------------------------------------


def test_the_largest_segment_message_fits_the_offer_rule() -> None:
    largest = SIZE["largest_segment_message"]
    message = partner_pb2.Segment(
        transfer_id=largest["transfer_id"],
        index=largest["index"],
        final=largest["final"],
        ciphertext=bytes(largest["ciphertext_len"]),
    )
    assert message.ByteSize() == largest["message_bytes"]
    assert largest["framing_bytes"] <= SIZE["offer_framing"]
    offer_overhead = SIZE["tag_len"] + SIZE["offer_framing"]
    assert offer_overhead == MESSAGE_OVERHEAD
    assert SIZE["config_framing"] == gateway.config.FRAME_OVERHEAD
    assert SIZE["max_message_bytes_ceiling"] == gateway.config.MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    "case",
    SIZE["config_cases"],
    ids=lambda c: f"{c['segment_size']}-in-{c['max_message_bytes']}",
)
def test_a_gateway_configuration_leaves_the_framing(case: dict[str, Any]) -> None:
    values = {"segment_size": case["segment_size"], "max_message_bytes": case["max_message_bytes"]}
    if case["accepted"]:
        limits = gateway.config_schema.Limits.model_validate(values)
        assert limits.max_message_bytes == case["max_message_bytes"]
    else:
        with pytest.raises(pydantic.ValidationError) as refused:
            gateway.config_schema.Limits.model_validate(values)
        (problem,) = gateway.config_schema.problems(refused.value, "gateway.yaml", values)
        assert "bytes of framing" in problem or "must be between" in problem, problem


@pytest.mark.parametrize(
    "case",
    SIZE["offer_cases"],
    ids=lambda c: f"{c['segment_size']}-in-{c['max_message_bytes']}",
)
def test_the_receiver_takes_an_offer_only_if_a_segment_fits(
    case: dict[str, Any], tmp_path: Path
) -> None:
    limits = Limits(
        segment_size=case["segment_size"],
        max_message_bytes=case["max_message_bytes"],
        partner_wait_seconds=0,
    )
    lb = make_loopback(tmp_path, limits)
    try:
        data = bytes(range(256)) * 40
        if case["accepted"]:
            lb.send("dpo_T-size", data)
            assert lb.fetch("dpo_T-size") == data
        else:
            with pytest.raises(PartnerError) as refused:
                lb.send("dpo_T-size", data)
            assert refused.value.grpc_status == "INVALID_ARGUMENT"
            assert f"segment size {case['segment_size']} does not fit" in str(refused.value)
    finally:
        lb.close()
