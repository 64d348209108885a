"""The committed XBGW-STREAM-1 vectors: valid ones open and re-encrypt byte for byte,
invalid ones fail with exactly the error class they name, and the file cannot drift from
its generator."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

import gateway.errors
from gateway.envelope import (
    Header,
    StreamContext,
    StreamDecryptor,
    open_header,
    read_stream,
    rewrap_for_storage,
    write_stream,
)
from gateway.envelope.wrapping import _derive, _seal_header
from gateway.errors import KeyNotFoundError, UnwrapError, XbgwError
from gateway.keys import KeyRef, Purpose

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
GENERATOR = VECTORS / "generate_stream_vectors.py"
DATA: dict[str, Any] = json.loads((VECTORS / "stream.json").read_text(encoding="utf-8"))
RECIPIENT: dict[str, Any] = DATA["recipient"]
ME: str = RECIPIENT["owner"]


class VectorHolder:
    """The recipient's keys from the vector file: transport v1 (P-256), storage v1 (AES)."""

    def __init__(self) -> None:
        scalar = int(RECIPIENT["transport_private_scalar"], 16)
        self._transport = ec.derive_private_key(scalar, ec.SECP256R1())
        self._transport_version: int = RECIPIENT["transport_version"]
        self._storage = bytes.fromhex(RECIPIENT["storage_key"])
        self._storage_version: int = RECIPIENT["storage_version"]

    def public_key(self, purpose: Purpose, version: int, /) -> ec.EllipticCurvePublicKey:
        if purpose is not Purpose.TRANSPORT or version != self._transport_version:
            raise KeyNotFoundError(f"{purpose.label} version {version} is not here")
        return self._transport.public_key()

    def ecdh(self, version: int, peer_point: bytes, /) -> bytes:
        if version != self._transport_version:
            raise KeyNotFoundError(f"transport version {version} is not here")
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point)
        return self._transport.exchange(ec.ECDH(), peer)

    def wrap(self, version: int, secret: bytes, /) -> bytes:
        if version != self._storage_version:
            raise KeyNotFoundError(f"storage version {version} is not here")
        return aes_key_wrap_with_padding(self._storage, secret)

    def unwrap(self, version: int, wrapped: bytes, /) -> bytes:
        if version != self._storage_version:
            raise KeyNotFoundError(f"storage version {version} is not here")
        try:
            return aes_key_unwrap_with_padding(self._storage, wrapped)
        except InvalidUnwrap:
            raise UnwrapError("does not unwrap") from None


HOLDER = VectorHolder()


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def test_the_committed_vectors_are_what_the_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "stream.json"
    subprocess.run([sys.executable, str(GENERATOR), str(out)], check=True)
    committed = (VECTORS / "stream.json").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed, (
        "run 'python tests/vectors/generate_stream_vectors.py' and commit tests/vectors"
    )


def test_the_recipient_point_matches_its_scalar() -> None:
    point = HOLDER.public_key(Purpose.TRANSPORT, 1).public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert point.hex() == RECIPIENT["transport_public_point"]


def test_the_set_covers_the_required_cases() -> None:
    valid = set(_ids(DATA["valid"]))
    assert {"empty", "one-byte", "one-segment", "one-segment-plus-one", "several-segments"} <= valid
    invalid = {v["name"]: v["expected_error"] for v in DATA["invalid"]}
    for name in (
        "reordered-segments",
        "dropped-segment",
        "duplicated-segment",
        "missing-final-segment",
        "two-final-segments",
        "data-after-final",
        "bit-flip-header-core",
        "bit-flip-ciphertext",
        "bit-flip-tag",
        "wrong-recipient-key",
        "wrong-key-version",
        "bad-commitment",
        "unknown-suite",
        "unknown-version",
        "oversize-header",
        "segment-size-too-small",
        "segment-size-too-large",
        "truncated-header",
    ):
        assert name in invalid


@pytest.mark.parametrize("vector", DATA["valid"], ids=_ids(DATA["valid"]))
def test_valid_stream_decrypts(vector: dict[str, Any]) -> None:
    out = io.BytesIO()
    written = read_stream(io.BytesIO(bytes.fromhex(vector["stream"])), out, ME, HOLDER)
    assert out.getvalue().hex() == vector["plaintext"]
    assert written == len(vector["plaintext"]) // 2


@pytest.mark.parametrize("vector", DATA["valid"], ids=_ids(DATA["valid"]))
def test_valid_segments_decrypt_with_the_published_intermediates(vector: dict[str, Any]) -> None:
    header = Header.decode(bytes.fromhex(vector["header"]))
    assert header.core().hex() == vector["core"]
    assert header.core_digest().hex() == vector["core_digest"]
    data_key = open_header(header, ME, HOLDER)
    assert data_key.hex() == vector["data_key"]
    payload_key, commitment = _derive(data_key, header.salt, header.core_digest())
    assert (payload_key.hex(), commitment.hex()) == (vector["payload_key"], vector["commitment"])
    decryptor = StreamDecryptor(header, data_key)
    plaintext = b"".join(
        decryptor.decrypt_segment(s["index"], bytes.fromhex(s["ciphertext"]), s["final"])
        for s in vector["segments"]
    )
    decryptor.finish()
    assert plaintext.hex() == vector["plaintext"]


@pytest.mark.parametrize("vector", DATA["valid"], ids=_ids(DATA["valid"]))
def test_valid_stream_re_encrypts_byte_for_byte(vector: dict[str, Any]) -> None:
    context = StreamContext(
        vector["transfer_id"],
        vector["sender_id"],
        vector["receiver_id"],
        bytes.fromhex(vector["passport_digest"]),
    )
    recipient = KeyRef.parse(vector["recipient_key_ref"])
    header, data_key = _seal_header(
        context,
        recipient,
        HOLDER.public_key(Purpose.TRANSPORT, recipient.version),
        vector["segment_size"],
        data_key=bytes.fromhex(vector["data_key"]),
        salt=bytes.fromhex(vector["salt"]),
        nonce_prefix=bytes.fromhex(vector["nonce_prefix"]),
        ephemeral=ec.derive_private_key(
            int(vector["ephemeral_private_scalar"], 16), ec.SECP256R1()
        ),
    )
    if vector["storage_key_ref"] is not None:
        header = rewrap_for_storage(
            header, data_key, KeyRef.parse(vector["storage_key_ref"]), HOLDER
        )
    out = io.BytesIO()
    src = io.BytesIO(bytes.fromhex(vector["plaintext"]))
    written = write_stream(header, data_key, src, out)
    assert out.getvalue().hex() == vector["stream"]
    assert written == len(out.getvalue())


def _run_invalid(vector: dict[str, Any]) -> None:
    if vector["mode"] == "stream":
        read_stream(io.BytesIO(bytes.fromhex(vector["stream"])), io.BytesIO(), ME, HOLDER)
        return
    assert vector["mode"] == "segments"
    header = Header.decode(bytes.fromhex(vector["header"]))
    decryptor = StreamDecryptor(header, open_header(header, ME, HOLDER))
    for s in vector["segments"]:
        decryptor.decrypt_segment(s["index"], bytes.fromhex(s["ciphertext"]), s["final"])
    decryptor.finish()


@pytest.mark.parametrize("vector", DATA["invalid"], ids=_ids(DATA["invalid"]))
def test_invalid_vector_raises_exactly_its_error(vector: dict[str, Any]) -> None:
    expected = getattr(gateway.errors, vector["expected_error"])
    assert issubclass(expected, XbgwError)
    with pytest.raises(expected) as caught:
        _run_invalid(vector)
    assert type(caught.value) is expected, f"{type(caught.value).__name__}: {caught.value}"
