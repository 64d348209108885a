"""The gateway against the XBGW-STREAM-1 known-answer vectors in ``tests/vectors/stream.json``.

The vectors are written by ``tests/vectors/generate_stream_vectors.py``, a second, small
implementation of the format that imports nothing from ``gateway/`` (it is built from the
layout in ``gateway/envelope/__init__.py`` on ``cryptography`` primitives alone), so these
tests compare two implementations rather than the gateway with a snapshot of itself. To
regenerate after a deliberate format change: ``.venv/bin/python
tests/vectors/generate_stream_vectors.py`` and commit ``tests/vectors``.

Checked here: valid vectors open to the exact plaintext and are re-sealed byte for byte from
their explicit inputs; invalid vectors fail with exactly the error class they name; the
committed file is what the generator writes with ``gateway`` unimportable; and the key
derivation, key wraps, ECDH and segment bodies agree with the ``openssl`` command line, so at
least one check does not rest on Python at all.
"""

from __future__ import annotations

import ast
import io
import json
import shutil
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
    StreamEncryptor,
    WrappedKey,
    open_header,
    read_stream,
    rewrap_for_storage,
    write_stream,
)
from gateway.envelope.wrapping import _derive, _seal_header, _wrap_ecdh_es
from gateway.errors import KeyNotFoundError, UnwrapError, XbgwError
from gateway.keys import KeyRef, Purpose

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
GENERATOR = VECTORS / "generate_stream_vectors.py"
DATA: dict[str, Any] = json.loads((VECTORS / "stream.json").read_text(encoding="utf-8"))
RECIPIENT: dict[str, Any] = DATA["recipient"]
ME: str = RECIPIENT["owner"]
VALID: list[dict[str, Any]] = DATA["valid"]
INVALID: list[dict[str, Any]] = DATA["invalid"]
PAYLOAD_INFO = b"XBGW-STREAM-1 payload"
ECDH_INFO = b"XBGW-STREAM-1 ECDH-ES+A256KW"
STORAGE_INFO = b"XBGW-STREAM-1 storage"


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


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _scalar_key(hex_scalar: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int(hex_scalar, 16), ec.SECP256R1())


def _context(vector: dict[str, Any]) -> StreamContext:
    return StreamContext(
        vector["transfer_id"],
        vector["sender_id"],
        vector["receiver_id"],
        _h(vector["passport_digest"]),
    )


def _kind1_entries() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{v['name']}-{i}", entry)
        for v in VALID
        for i, entry in enumerate(v["wrapped_keys"])
        if entry["kind"] == 1
    ]


def _kind2_entries() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{v['name']}-{i}", entry)
        for v in VALID
        for i, entry in enumerate(v["wrapped_keys"])
        if entry["kind"] == 2
    ]


# --- The file and its generator ---------------------------------------------------------------


def test_the_generator_imports_nothing_from_gateway() -> None:
    """Known answers only if the generator cannot share a bug with the gateway's code."""
    tree = ast.parse(GENERATOR.read_text(encoding="utf-8"))
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append(node.module or "")
    assert imported, "the parse found no imports at all"
    assert not [name for name in imported if name.split(".")[0] == "gateway"]


def test_the_committed_vectors_are_what_the_generator_writes(tmp_path: Path) -> None:
    """Run the generator with ``gateway`` made unimportable, and compare with the file."""
    out = tmp_path / "stream.json"
    script = (
        "import runpy, sys; sys.modules['gateway'] = None; "
        f"sys.argv = [{str(GENERATOR)!r}, {str(out)!r}]; "
        f"runpy.run_path({str(GENERATOR)!r}, run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    committed = (VECTORS / "stream.json").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed, (
        "run '.venv/bin/python tests/vectors/generate_stream_vectors.py' and commit tests/vectors"
    )


def test_the_recipient_point_matches_its_scalar() -> None:
    point = HOLDER.public_key(Purpose.TRANSPORT, 1).public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert point.hex() == RECIPIENT["transport_public_point"]


def test_the_set_covers_the_required_cases() -> None:
    valid = set(_ids(VALID))
    assert {
        "empty",
        "one-byte",
        "one-segment",
        "one-segment-plus-one",
        "several-segments",
        "exact-multiple",
        "rewrapped-to-storage",
        "two-recipients",
    } <= valid
    invalid = {v["name"] for v in INVALID}
    required = {
        "reordered-segments",
        "reordered-segments-stream",
        "dropped-segment",
        "dropped-segment-stream",
        "duplicated-segment",
        "duplicated-segment-stream",
        "missing-final-segment",
        "missing-final-segment-stream",
        "truncated-final-segment",
        "truncated-final-segment-stream",
        "truncated-mid-segment-stream",
        "truncated-header",
        "truncated-header-prefix",
        "truncated-header-commitment",
        "last-segment-not-final",
        "last-segment-not-final-stream",
        "two-final-segments",
        "data-after-final",
        "data-after-final-stream",
        "bit-flip-header-core",
        "bit-flip-wrapped-key",
        "bit-flip-storage-wrapped-key",
        "bit-flip-ciphertext",
        "bit-flip-tag",
        "bad-commitment",
        "wrong-recipient-key",
        "wrong-storage-key",
        "wrong-key-version",
        "unknown-suite",
        "unknown-version",
        "bad-magic",
        "oversize-header",
        "segment-size-too-small",
        "segment-size-too-large",
    }
    assert required <= invalid, sorted(required - invalid)
    assert len(invalid) == len(INVALID), "invalid vector names must be unique"
    assert all(isinstance(getattr(gateway.errors, v["expected_error"]), type) for v in INVALID)


# --- Valid vectors: the gateway reads them ----------------------------------------------------


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_valid_stream_decrypts(vector: dict[str, Any]) -> None:
    out = io.BytesIO()
    written = read_stream(io.BytesIO(_h(vector["stream"])), out, ME, HOLDER)
    assert out.getvalue().hex() == vector["plaintext"]
    assert written == len(vector["plaintext"]) // 2


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_valid_segments_decrypt_with_the_published_intermediates(vector: dict[str, Any]) -> None:
    header = Header.decode(_h(vector["header"]))
    assert header.core().hex() == vector["core"]
    assert header.core_digest().hex() == vector["core_digest"]
    assert header.commitment.hex() == vector["commitment"]
    assert [
        (int(k.kind), str(k.key_ref), (k.ephemeral_point or b"").hex(), k.wrapped.hex())
        for k in header.wrapped_keys
    ] == [
        (e["kind"], e["key_ref"], e.get("ephemeral_point", ""), e["wrapped"])
        for e in vector["wrapped_keys"]
    ]
    data_key = open_header(header, ME, HOLDER)
    assert data_key.hex() == vector["data_key"]
    payload_key, commitment = _derive(data_key, header.salt, header.core_digest())
    assert (payload_key.hex(), commitment.hex()) == (vector["payload_key"], vector["commitment"])
    decryptor = StreamDecryptor(header, data_key)
    plaintext = b"".join(
        decryptor.decrypt_segment(s["index"], _h(s["ciphertext"]), s["final"])
        for s in vector["segments"]
    )
    decryptor.finish()
    assert decryptor.done
    assert plaintext.hex() == vector["plaintext"]


# --- Valid vectors: the gateway writes them, byte for byte -------------------------------------


def _sealed(vector: dict[str, Any]) -> tuple[Header, bytes]:
    """The gateway's header sealed to the recipient from the vector's explicit inputs."""
    recipient = KeyRef.parse(vector["recipient_key_ref"])
    return _seal_header(
        _context(vector),
        recipient,
        HOLDER.public_key(Purpose.TRANSPORT, recipient.version),
        vector["segment_size"],
        data_key=_h(vector["data_key"]),
        salt=_h(vector["salt"]),
        nonce_prefix=_h(vector["nonce_prefix"]),
        ephemeral=_scalar_key(vector["ephemeral_private_scalar"]),
    )


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_valid_header_is_sealed_byte_for_byte(vector: dict[str, Any]) -> None:
    header, data_key = _sealed(vector)
    assert data_key.hex() == vector["data_key"]
    if vector["storage_key_ref"] is not None:
        assert header.encode().hex() == vector["sealed_header"]
        stored = rewrap_for_storage(
            header, data_key, KeyRef.parse(vector["storage_key_ref"]), HOLDER
        )
        assert stored.encode().hex() == vector["header"]
    elif len(vector["wrapped_keys"]) == 1:
        assert header.encode().hex() == vector["header"]
    else:
        # Several recipients: the gateway wraps to each, and the header carries them in order.
        entries: list[WrappedKey] = []
        for entry in vector["wrapped_keys"]:
            assert entry["kind"] == 1
            public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), _h(entry["recipient_public_point"])
            )
            entries.append(
                _wrap_ecdh_es(
                    data_key,
                    KeyRef.parse(entry["key_ref"]),
                    public,
                    header.core_digest(),
                    _scalar_key(entry["ephemeral_private_scalar"]),
                )
            )
        assert header.with_wrapped_keys(entries).encode().hex() == vector["header"]


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_valid_segments_encrypt_byte_for_byte(vector: dict[str, Any]) -> None:
    header = Header.decode(_h(vector["header"]))
    data_key = _h(vector["data_key"])
    encryptor = StreamEncryptor(header, data_key)
    plaintext = _h(vector["plaintext"])
    size = vector["segment_size"]
    for s in vector["segments"]:
        chunk = plaintext[s["index"] * size : (s["index"] + 1) * size]
        assert encryptor.encrypt_segment(s["index"], chunk, s["final"]).hex() == s["ciphertext"]
    out = io.BytesIO()
    written = write_stream(header, data_key, io.BytesIO(plaintext), out)
    assert out.getvalue().hex() == vector["stream"]
    assert written == len(out.getvalue())


# --- Invalid vectors ----------------------------------------------------------------------


def _run_invalid(vector: dict[str, Any]) -> None:
    if vector["mode"] == "stream":
        read_stream(io.BytesIO(_h(vector["stream"])), io.BytesIO(), ME, HOLDER)
        return
    assert vector["mode"] == "segments"
    header = Header.decode(_h(vector["header"]))
    decryptor = StreamDecryptor(header, open_header(header, ME, HOLDER))
    for s in vector["segments"]:
        decryptor.decrypt_segment(s["index"], _h(s["ciphertext"]), s["final"])
    decryptor.finish()


@pytest.mark.parametrize("vector", INVALID, ids=_ids(INVALID))
def test_invalid_vector_raises_exactly_its_error(vector: dict[str, Any]) -> None:
    expected = getattr(gateway.errors, vector["expected_error"])
    assert issubclass(expected, XbgwError)
    with pytest.raises(expected) as caught:
        _run_invalid(vector)
    assert type(caught.value) is expected, f"{type(caught.value).__name__}: {caught.value}"


# --- The openssl command line: no Python in the arithmetic ----------------------------------


def _openssl(*args: str, stdin: bytes = b"") -> bytes:
    """Run ``openssl``; it must be installed (CI installs it), so its absence fails."""
    binary = shutil.which("openssl")
    assert binary is not None, "openssl is not on PATH; install it (CI does)"
    return subprocess.run([binary, *args], input=stdin, capture_output=True, check=True).stdout


def _openssl_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 by ``openssl kdf``, which prints the key as colon-separated hex."""
    out = _openssl(
        "kdf",
        "-keylen",
        str(length),
        "-kdfopt",
        "digest:SHA256",
        "-kdfopt",
        f"hexkey:{ikm.hex()}",
        "-kdfopt",
        f"hexsalt:{salt.hex()}",
        "-kdfopt",
        f"hexinfo:{info.hex()}",
        "HKDF",
    )
    return bytes.fromhex(out.decode().strip().replace(":", ""))


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_openssl_hkdf_gives_the_payload_key_and_commitment(vector: dict[str, Any]) -> None:
    okm = _openssl_hkdf(
        _h(vector["data_key"]),
        _h(vector["salt"]),
        PAYLOAD_INFO + _h(vector["core_digest"]),
        64,
    )
    assert okm.hex() == vector["payload_key"] + vector["commitment"]


@pytest.mark.parametrize("vector", VALID, ids=_ids(VALID))
def test_openssl_aes_ctr_gives_the_segment_bodies(vector: dict[str, Any]) -> None:
    """AES-GCM with a 96-bit nonce encrypts with CTR from ``nonce || 2``: check that part
    (``openssl enc`` has no AEAD modes, so the tag stays with the Python checks)."""
    for s in vector["segments"]:
        ciphertext = _h(s["ciphertext"])
        plaintext = _h(vector["plaintext"])[
            s["index"] * vector["segment_size"] : (s["index"] + 1) * vector["segment_size"]
        ]
        assert len(ciphertext) == len(plaintext) + 16
        body = _openssl(
            "enc",
            "-aes-256-ctr",
            "-K",
            vector["payload_key"],
            "-iv",
            s["nonce"] + "00000002",
            stdin=plaintext,
        )
        assert body == ciphertext[:-16]


@pytest.mark.parametrize(
    "entry", [e for _, e in _kind1_entries()], ids=[i for i, _ in _kind1_entries()]
)
def test_openssl_reproduces_a_kind1_wrap(entry: dict[str, Any], tmp_path: Path) -> None:
    """ECDH (``pkeyutl -derive``), the KEK (``kdf HKDF``) and AES-KW (``enc -id-aes256-wrap``)."""
    ephemeral = _scalar_key(entry["ephemeral_private_scalar"])
    mine = tmp_path / "ephemeral.pem"
    mine.write_bytes(
        ephemeral.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    peer = tmp_path / "recipient.pem"
    peer.write_bytes(
        ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), _h(entry["recipient_public_point"])
        ).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    shared = _openssl("pkeyutl", "-derive", "-inkey", str(mine), "-peerkey", str(peer))
    assert shared.hex() == entry["shared_secret"]
    vector = next(v for v in VALID if entry in v["wrapped_keys"])
    kek = _openssl_hkdf(
        shared,
        _h(entry["ephemeral_point"] + entry["recipient_public_point"]),
        ECDH_INFO + _h(entry["key_ref_encoded"] + vector["core_digest"]),
        32,
    )
    assert kek.hex() == entry["kek"]
    wrapped = _openssl(
        "enc",
        "-id-aes256-wrap",
        "-K",
        kek.hex(),
        "-iv",
        "A6A6A6A6A6A6A6A6",
        stdin=_h(vector["data_key"]),
    )
    assert wrapped.hex() == entry["wrapped"]


@pytest.mark.parametrize(
    "entry", [e for _, e in _kind2_entries()], ids=[i for i, _ in _kind2_entries()]
)
def test_openssl_reproduces_a_kind2_wrap(entry: dict[str, Any]) -> None:
    """The blob's binding (``dgst -sha256``) and its AES-KWP (``enc -id-aes256-wrap-pad``)."""
    vector = next(v for v in VALID if entry in v["wrapped_keys"])
    blob = _h(entry["blob"])
    assert blob[:32].hex() == vector["data_key"]
    binding = _openssl(
        "dgst",
        "-sha256",
        "-binary",
        stdin=STORAGE_INFO + _h(entry["key_ref_encoded"] + vector["core_digest"]),
    )
    assert blob[32:] == binding
    wrapped = _openssl(
        "enc",
        "-id-aes256-wrap-pad",
        "-K",
        RECIPIENT["storage_key"],
        "-iv",
        "A65959A6",
        stdin=blob,
    )
    assert wrapped.hex() == entry["wrapped"]
