"""Checkpoints as C2SP signed notes: layout, strict parsing, ECDSA signing, cosignatures.

Published notes (tests/vectors/note/, provenance in its README) prove the parts that do not
depend on our key type: the text layout, the signature-line rules, the key-ID formula and the
cosignature message. They are checked with real signatures: Ed25519 ones (signed-note type
0x01 and tlog-cosignature 0x04, verified here with ``cryptography``) and ECDSA P-256 ones
(type 0x02, the type our checkpoints use).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.checkpoint import (
    COSIGNATURE_TYPE,
    MAX_EXTENSIONS,
    MAX_LINE_LEN,
    MAX_NAME_LEN,
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    MAX_TEXT_SIZE,
    Checkpoint,
    CosignatureVerifier,
    EcdsaVerifier,
    NoteError,
    NoteSignature,
    add_signatures,
    cosign,
    cosignature_key_id,
    cosignature_message,
    cosignature_timestamp,
    digest_signer,
    key_id,
    note_key_id,
    open_checkpoint,
    parse,
    parse_note,
    sign_note,
    verify_cosignature,
    verify_note,
)
from gateway.keys import KeyRef, Purpose
from tests.fakes import SoftwareHsm

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "note"

GW_A, GW_B = "gw-a.example", "gw-b.example"
HSM_A, HSM_B = SoftwareHsm(), SoftwareHsm()
KID_A = KeyRef(GW_A, Purpose.SIGNING, 1)
KID_B = KeyRef(GW_B, Purpose.SIGNING, 1)
PUB_A = HSM_A.public_key(Purpose.SIGNING, 1)
PUB_B = HSM_B.public_key(Purpose.SIGNING, 1)
SIGN_A = digest_signer(HSM_A, KID_A)
SIGN_B = digest_signer(HSM_B, KID_B)
LOG_A = EcdsaVerifier(GW_A, PUB_A)
LOG_B = EcdsaVerifier(GW_B, PUB_B)
COSIGNER_B = CosignatureVerifier(GW_B, PUB_B)

ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
CHECKPOINT = Checkpoint(GW_A, 1234, ROOT)
WHEN = 1_738_713_836


def _signed(checkpoint: Checkpoint = CHECKPOINT) -> str:
    return sign_note(checkpoint.body(), GW_A, LOG_A.key_id, SIGN_A)


NOTE = _signed()


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def _vkeys(name: str) -> dict[str, tuple[int, bytes]]:
    """``name -> (key ID, type || key)`` from a ``.vkeys`` file."""
    out: dict[str, tuple[int, bytes]] = {}
    for vkey in (VECTORS / f"{name}.vkeys").read_text(encoding="utf-8").split():
        key_name, hex_id, encoded = vkey.split("+", 2)
        out[key_name] = (int(hex_id, 16), base64.b64decode(encoded))
    return out


# --- Ed25519 verifiers: only to check published vectors (our keys are P-256) ---------------


@dataclass(frozen=True)
class Ed25519Verifier:
    """signed-note type 0x01."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> int:
        return note_key_id(self.name, b"\x01", self.public_key)

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Ed25519CosignatureVerifier:
    """tlog-cosignature type 0x04, built on *our* cosignature message."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> int:
        return note_key_id(self.name, b"\x04", self.public_key)

    def verify(self, text: bytes, signature: bytes) -> bool:
        timestamp = int.from_bytes(signature[:8], "big")
        message = cosignature_message(Checkpoint.from_body(text), timestamp)
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                signature[8:], message
            )
        except InvalidSignature:
            return False
        return True


# --- published vectors -----------------------------------------------------------------------

NOTE_FILES = sorted(p.name for p in VECTORS.glob("*.note"))
CHECKPOINT_FILES = [
    ("c2sp-tlog-cosignature.note", "example.com/behind-the-sofa", 20852163),
    ("sumdb-checkpoint.note", "go.sum database tree", 6476701),
    ("rekor-checkpoint.note", "Rekor", 798034),
    ("pixel6-checkpoint.note", "DEFAULT", 10),
    ("pixel-witnessed-checkpoint.note", "developers.google.com/android/binary_transparency/0", 611),
]


def test_every_vector_file_is_used() -> None:
    assert len(NOTE_FILES) == 8
    assert {name for name, _, _ in CHECKPOINT_FILES} <= set(NOTE_FILES)


@pytest.mark.parametrize("name", NOTE_FILES)
def test_published_notes_parse_and_reassemble_byte_for_byte(name: str) -> None:
    data = _vector(name)
    body, signatures = parse_note(data)
    assert signatures
    assert body + b"\n" + b"".join(s.line().encode() + b"\n" for s in signatures) == data


@pytest.mark.parametrize(("name", "origin", "size"), CHECKPOINT_FILES)
def test_published_checkpoints_parse(name: str, origin: str, size: int) -> None:
    checkpoint, _ = parse(_vector(name))
    assert (checkpoint.origin, checkpoint.size, checkpoint.extensions) == (origin, size, ())
    assert len(checkpoint.root_hash) == 32
    assert checkpoint.body() == parse_note(_vector(name))[0]
    assert Checkpoint.from_body(checkpoint.body()) == checkpoint


def test_note_text_ends_at_the_last_blank_line() -> None:
    body, signatures = parse_note(_vector("c2sp-signed-note-quasimodo.note"))
    assert body.decode().split("\n") == [
        "Ognuno sta solo sul cuor della terra",
        "trafitto da un raggio di sole:",
        "",
        "ed è subito sera.",
        "",
    ]
    assert [str(s) for s in signatures] == ["quasimodo.example/salvatore+367ba04b"]
    with pytest.raises(NoteError, match="line 3 is empty"):
        Checkpoint.from_body(body)


@pytest.mark.parametrize(
    ("note", "vkeys"),
    [
        ("c2sp-signed-note.note", "c2sp-signed-note"),
        ("sumdb-note-doubly-signed.note", "sumdb-note"),
        ("sumdb-checkpoint.note", "sumdb-checkpoint"),
    ],
)
def test_ed25519_vectors_key_ids_recompute_and_signatures_verify(note: str, vkeys: str) -> None:
    body, signatures = parse_note(_vector(note))
    keys = _vkeys(vkeys)
    checked = 0
    for signature in signatures:
        if signature.name not in keys:
            continue  # EnochRoot: no published key, an unknown signer
        wanted, material = keys[signature.name]
        assert material[0] == 0x01
        verifier = Ed25519Verifier(signature.name, material[1:])
        assert verifier.key_id == wanted == signature.key_id
        assert verifier.verify(body, signature.signature)
        assert not verifier.verify(body + b"x\n", signature.signature)
        checked += 1
    assert checked == 1


@pytest.mark.parametrize("name", ["rekor-checkpoint", "pixel6-checkpoint"])
def test_ecdsa_vectors_type_0x02_verify(name: str) -> None:
    vkey = (VECTORS / f"{name}.vkeys").read_text(encoding="utf-8").strip()
    verifier = EcdsaVerifier.from_vkey(vkey)
    assert verifier.vkey() == vkey
    assert key_id(verifier.name, verifier.public_key) == int(vkey.split("+")[1], 16)
    data = _vector(f"{name}.note")
    checkpoint = verify_note(data, [verifier])
    assert checkpoint == parse(data)[0]
    _, [signature] = parse(data)
    tampered = data.replace(
        f"\n{checkpoint.size}\n".encode(), f"\n{checkpoint.size + 1}\n".encode()
    )
    with pytest.raises(NoteError, match="does not verify"):
        verify_note(tampered, [verifier])
    assert signature.key_id == verifier.key_id


def test_witnessed_checkpoint_ecdsa_log_and_two_ed25519_cosignatures() -> None:
    data = _vector("pixel-witnessed-checkpoint.note")
    keys = _vkeys("pixel-witnessed-checkpoint")
    vkey = next(
        v
        for v in (VECTORS / "pixel-witnessed-checkpoint.vkeys").read_text().split()
        if v.startswith("pixel_transparency_log+")
    )
    log = EcdsaVerifier.from_vkey(vkey)
    # The published vkeys are type 0x01; a 0x04 cosigner's key ID hashes type 0x04 instead.
    witnesses = [
        Ed25519CosignatureVerifier(name, material[1:])
        for name, (_, material) in keys.items()
        if name.startswith("ArmoredWitness-")
    ]
    for witness in witnesses:
        wanted, material = keys[witness.name]
        assert note_key_id(witness.name, b"\x01", material[1:]) == wanted
    opened = open_checkpoint(data, [log], cosigners=witnesses)
    assert opened.checkpoint.size == 611
    assert [str(s) for s in opened.signatures] == ["pixel_transparency_log+72c878db"]
    assert sorted(str(s) for s in opened.cosignatures) == [
        "ArmoredWitness-autumn-wood+a996f95d",
        "ArmoredWitness-small-breeze+9d1ab951",
    ]
    assert opened.unverified == ()
    times = {
        s.name: verify_cosignature(opened.checkpoint, s, w)
        for s in opened.cosignatures
        for w in witnesses
        if w.name == s.name
    }
    # 2025-02-05T00:03:56Z and 00:03:49Z, as the distributor README shows them.
    assert times == {
        "ArmoredWitness-small-breeze": 1738713836,
        "ArmoredWitness-autumn-wood": 1738713829,
    }
    # Known only the log key: the cosignatures are unknown signers, ignored.
    alone = open_checkpoint(data, [log])
    assert alone.cosignatures == () and len(alone.unverified) == 2
    # Known only the witnesses: no log signature, refused.
    with pytest.raises(NoteError, match="no signature by a known log key"):
        open_checkpoint(data, [], cosigners=witnesses)


def test_cosignature_message_is_the_spec_example_byte_for_byte() -> None:
    checkpoint, signatures = parse(_vector("c2sp-tlog-cosignature.note"))
    witness = next(s for s in signatures if s.name == "witness.example.com/w1")
    timestamp = cosignature_timestamp(witness)
    assert timestamp == 1679315147
    assert cosignature_message(checkpoint, timestamp) == _vector("c2sp-tlog-cosignature.message")


# --- checkpoint text -------------------------------------------------------------------------


def test_body_layout_is_byte_exact() -> None:
    assert CHECKPOINT.body() == f"{GW_A}\n1234\n{ROOT_B64}\n".encode()
    empty = Checkpoint("gw-a", 0, bytes(32), ("ext one", "ext-2"))
    assert empty.body() == b"gw-a\n0\n" + b"A" * 43 + b"=\next one\next-2\n"
    top = Checkpoint("é.example/log", 2**64 - 1, b"\xff" * 32)
    assert top.body() == "é.example/log\n18446744073709551615\n".encode() + (b"/" * 42 + b"8=\n")


def test_extensions_accept_a_list_and_are_kept_as_a_tuple() -> None:
    checkpoint = Checkpoint("o", 1, ROOT, ["x"])  # type: ignore[arg-type]
    assert checkpoint.extensions == ("x",)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"origin": ""}, "origin is empty"),
        ({"origin": "a\nb"}, "origin contains a newline"),
        ({"origin": "a\rb"}, "carriage return"),
        ({"origin": "a\x00b"}, "control character U\\+0000"),
        ({"origin": "x" * (MAX_NAME_LEN + 1)}, "origin is longer than 255 bytes"),
        ({"origin": "é" * 128}, "origin is 256 bytes, more than 255"),
        ({"origin": "\ud800"}, "lone surrogate"),
        ({"size": -1}, "tree size"),
        ({"size": 2**64}, "tree size"),
        ({"size": True}, "tree size"),
        ({"root_hash": bytes(31)}, "root hash must be 32 bytes"),
        ({"root_hash": bytes(33)}, "root hash must be 32 bytes"),
        ({"extensions": ("",)}, "extension line 1 is empty"),
        ({"extensions": ("a\nb",)}, "extension line 1 contains a newline"),
        ({"extensions": ("x",) * (MAX_EXTENSIONS + 1)}, "17 extension lines"),
        ({"extensions": ("x" * (MAX_TEXT_SIZE - 50),)}, "checkpoint text is longer"),
    ],
)
def test_checkpoint_refuses_bad_fields(kwargs: dict[str, object], match: str) -> None:
    fields: dict[str, object] = {"origin": GW_A, "size": 1, "root_hash": ROOT, "extensions": ()}
    fields.update(kwargs)
    with pytest.raises(NoteError, match=match):
        Checkpoint(**fields)  # type: ignore[arg-type]


_LINE = st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0x20), min_size=1).filter(
    lambda s: len(s.encode()) <= MAX_NAME_LEN
)


@given(
    origin=_LINE,
    size=st.integers(min_value=0, max_value=2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_LINE, max_size=3).map(tuple),
)
def test_body_round_trips(origin: str, size: int, root: bytes, extensions: tuple[str, ...]) -> None:
    checkpoint = Checkpoint(origin, size, root, extensions)
    assert Checkpoint.from_body(checkpoint.body()) == checkpoint
    assert Checkpoint.from_body(checkpoint.body().decode()) == checkpoint


# --- strict parsing --------------------------------------------------------------------------

_SIG_LINE = NOTE.split("\n\n", 1)[1]
_BODY = CHECKPOINT.body().decode()


def _with_body(body: str) -> str:
    return body + "\n" + _SIG_LINE


def _replace_line(number: int, value: str) -> str:
    lines = _BODY.split("\n")
    lines[number] = value
    return _with_body("\n".join(lines))


MALFORMED: list[tuple[str, str | bytes, str]] = [
    ("no blank line", NOTE.replace("\n\n", "\n"), "no blank line"),
    ("no signature", _BODY + "\n", "no signature line after"),
    ("text only", _BODY, "no blank line"),
    ("blank line only", _BODY + "\n\n", "no signature line after"),
    ("trailing blank line", NOTE + "\n", "no signature line after"),
    ("no final newline", NOTE[:-1], "does not end with a newline"),
    ("CRLF", NOTE.replace("\n", "\r\n"), "carriage return"),
    ("tab", NOTE.replace(GW_A, "gw\ta", 1), "control character U\\+0009"),
    ("NUL", NOTE.replace(GW_A, "gw\x00a", 1), "control character U\\+0000"),
    ("not UTF-8", NOTE.encode().replace(b"gw-a", b"gw\xff", 1), "not valid UTF-8"),
    ("overlong UTF-8", NOTE.encode().replace(b"gw-a", b"gw\xc0\xaf", 1), "not valid UTF-8"),
    ("lone surrogate", NOTE.replace("gw-a", "gw\ud800", 1), "lone surrogate"),
    ("too large", _with_body(_BODY + "x" * MAX_NOTE_SIZE + "\n"), "longer than 65536"),
    ("too large bytes", (NOTE + "x" * MAX_NOTE_SIZE).encode(), "bytes, more than 65536"),
    ("line too long", _with_body(_BODY + "x" * (MAX_LINE_LEN + 1) + "\n"), "line 4 is longer"),
    ("two lines", _with_body(f"{GW_A}\n1234\n"), "has 2 line"),
    ("empty origin", _replace_line(0, ""), "line 1 is empty"),
    ("empty line in text", _with_body(f"{GW_A}\n1234\n\n{ROOT_B64}\n"), "line 3 is empty"),
    ("empty extension", _with_body(_BODY + "ext\n\next\n"), "line 5 is empty"),
    ("size not a number", _replace_line(1, "12a"), "not a decimal number"),
    ("size leading zero", _replace_line(1, "01234"), "not a decimal number"),
    ("size plus sign", _replace_line(1, "+1234"), "not a decimal number"),
    ("size minus sign", _replace_line(1, "-1"), "not a decimal number"),
    ("size space", _replace_line(1, " 1234"), "not a decimal number"),
    ("size underscore", _replace_line(1, "1_234"), "not a decimal number"),
    ("size Arabic digits", _replace_line(1, "١٢٣"), "not a decimal number"),
    ("size 2^64", _replace_line(1, str(2**64)), "larger than 2\\^64-1"),
    ("size huge", _replace_line(1, "9" * 40), "larger than 2\\^64-1"),
    ("root not base64", _replace_line(2, "not base64 at all!"), "root hash is not standard"),
    ("root unpadded", _replace_line(2, ROOT_B64.rstrip("=")), "root hash is not standard"),
    ("root URL-safe", _replace_line(2, "-" + ROOT_B64[1:]), "root hash is not standard"),
    ("root padding bits", _replace_line(2, ROOT_B64[:42] + "B="), "not canonical base64"),
    ("root 31 bytes", _replace_line(2, base64.b64encode(bytes(31)).decode()), "31 bytes"),
    ("root 33 bytes", _replace_line(2, base64.b64encode(bytes(33)).decode()), "33 bytes"),
    ("hyphen for em dash", NOTE.replace("\u2014 ", "- "), "em dash"),
    ("en dash for em dash", NOTE.replace("\u2014 ", "\u2013 "), "em dash"),
    ("no space after dash", NOTE.replace("\u2014 ", "\u2014"), "em dash"),
    ("no space after name", NOTE.replace(f"{GW_A} ", GW_A), "no space between"),
    ("empty name", NOTE.replace(f"\u2014 {GW_A} ", "\u2014  "), "key name is empty"),
    ("plus in name", NOTE.replace(f"\u2014 {GW_A} ", "\u2014 gw+a "), "contains a plus"),
    ("NBSP in name", NOTE.replace(f"\u2014 {GW_A} ", "\u2014 gw\u00a0a "), "contains a space"),
    ("long name", NOTE.replace(f"\u2014 {GW_A} ", f"\u2014 {'n' * 256} "), "longer than 255"),
    ("signature not base64", NOTE[:-3] + "!!\n", "signature line 1 is not standard"),
    ("signature padding", NOTE.replace(_SIG_LINE, "\u2014 x AAAAAB==\n"), "not canonical"),
    ("signature 4 bytes", NOTE.replace(_SIG_LINE, "\u2014 x AAAAAA==\n"), "holds 4 bytes"),
    ("signature empty", NOTE.replace(_SIG_LINE, "\u2014 x \n"), "not standard padded"),
    ("duplicate", NOTE + _SIG_LINE, "signed twice by key gw-a.example\\+"),
    ("too many", _with_body(_BODY) + _SIG_LINE * MAX_SIGNATURES, "33 signatures"),
]


@pytest.mark.parametrize(
    ("text", "match"), [(t, m) for _, t, m in MALFORMED], ids=[i for i, _, _ in MALFORMED]
)
def test_parse_refuses(text: str | bytes, match: str) -> None:
    with pytest.raises(NoteError, match=match):
        parse(text)


def test_parse_accepts_the_limits() -> None:
    top = _replace_line(1, str(2**64 - 1))
    assert parse(top)[0].size == 2**64 - 1
    assert parse(_replace_line(1, "0"))[0].size == 0
    many = "".join(NoteSignature(f"w{i}", i, b"s").line() + "\n" for i in range(MAX_SIGNATURES - 1))
    assert len(parse(NOTE + many)[1]) == MAX_SIGNATURES


def test_sixteen_post_quantum_size_cosignatures_fit() -> None:
    """signed-note: verifiers MUST accept at least 16 signatures, PQ ones included."""
    text = Checkpoint("o" * MAX_NAME_LEN, 2**64 - 1, ROOT, ("e" * 2000,) * 3).body().decode()
    mldsa_cosignature = bytes(8 + 2420)  # timestamp || ML-DSA-44 signature
    lines = "".join(
        NoteSignature(f"{i:x}".rjust(MAX_NAME_LEN, "w"), i, mldsa_cosignature).line() + "\n"
        for i in range(16)
    )
    note = text + "\n" + lines
    assert len(note.encode()) <= MAX_NOTE_SIZE
    assert len(parse(note)[1]) == 16


def test_refuses_a_value_of_the_wrong_type() -> None:
    with pytest.raises(TypeError):
        parse(1234)  # type: ignore[arg-type]


# --- signing and verifying (the HSM key, software stand-in) -------------------------------


def test_sign_note_layout_and_type_0x02_key_id() -> None:
    assert NOTE.startswith(_BODY + "\n\u2014 gw-a.example ")
    assert NOTE.endswith("\n") and NOTE.count("\n") == 5
    checkpoint, [signature] = parse(NOTE)
    assert checkpoint == CHECKPOINT
    spki = PUB_A.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert signature.key_id == int.from_bytes(hashlib.sha256(spki).digest()[:4], "big")
    assert signature.key_id == key_id(GW_A, PUB_A) == LOG_A.key_id
    # The signature is plain DER ECDSA over SHA-256 of the text (transparency-dev's 0x02).
    r, s = decode_dss_signature(signature.signature)
    assert encode_dss_signature(r, s) == signature.signature
    PUB_A.verify(signature.signature, CHECKPOINT.body(), ec.ECDSA(hashes.SHA256()))


def test_verify_round_trip() -> None:
    assert verify_note(NOTE, [LOG_A]) == CHECKPOINT
    assert verify_note(NOTE.encode(), [LOG_B, LOG_A], origin=GW_A) == CHECKPOINT
    with_extensions = Checkpoint(GW_A, 7, ROOT, ("note one", "two"))
    assert verify_note(_signed(with_extensions), [LOG_A]) == with_extensions


def test_verify_refuses_another_origin() -> None:
    with pytest.raises(
        NoteError, match=re.escape("is from 'gw-a.example', expected 'gw-b.example'")
    ):
        verify_note(NOTE, [LOG_A], origin=GW_B)
    moved = NOTE.replace(f"{GW_A}\n", f"{GW_B}\n", 1)
    with pytest.raises(NoteError, match="does not verify"):
        verify_note(moved, [LOG_A])


def test_verify_refuses_the_wrong_key() -> None:
    other = EcdsaVerifier(GW_A, PUB_B)  # same name, another key: another key ID, unknown
    with pytest.raises(NoteError, match="no signature by a known log key"):
        verify_note(NOTE, [other])
    with pytest.raises(NoteError, match="no signature by a known log key"):
        verify_note(NOTE, [])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("\n1234\n", "\n1235\n"),
        ("\n1234\n", "\n123\n"),
        (f"\n{ROOT_B64}\n", f"\n{base64.b64encode(bytes(32)).decode()}\n"),
        (f"{ROOT_B64}\n\n", f"{ROOT_B64}\nextension\n\n"),
    ],
    ids=["size+1", "size-shorter", "root", "extension added"],
)
def test_verify_refuses_an_altered_text(old: str, new: str) -> None:
    with pytest.raises(NoteError, match="does not verify"):
        verify_note(NOTE.replace(old, new, 1), [LOG_A])


def test_verify_refuses_every_flipped_signature_bit() -> None:
    _, [signature] = parse(NOTE)
    for bit in range(len(signature.signature) * 8):
        bad = NoteSignature(GW_A, signature.key_id, _flip(signature.signature, bit))
        with pytest.raises(NoteError, match="does not verify"):
            verify_note(_with_body(_BODY).replace(_SIG_LINE, bad.line() + "\n"), [LOG_A])


def test_ecdsa_verifier_refuses_non_der_and_raw_signatures() -> None:
    _, [signature] = parse(NOTE)
    r, s = decode_dss_signature(signature.signature)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    body = CHECKPOINT.body()
    assert LOG_A.verify(body, signature.signature)
    assert not LOG_A.verify(body, raw)
    assert not LOG_A.verify(body, signature.signature + b"\x00")
    assert not LOG_A.verify(body, b"\x30\x00")
    # BER long-form length: same r and s, not DER.
    ber = b"\x30\x81" + signature.signature[1:]
    assert not LOG_A.verify(body, ber)


def test_a_known_key_that_fails_refuses_the_whole_note() -> None:
    good = parse(NOTE)[1][0]
    other_note = _signed(Checkpoint(GW_A, 1, ROOT))
    wrong = NoteSignature(GW_B, LOG_B.key_id, parse(other_note)[1][0].signature)
    text = add_signatures(NOTE, [wrong])
    assert verify_note(text, [LOG_A]) == CHECKPOINT  # gw-b unknown: ignored
    with pytest.raises(NoteError, match=r"signature by key gw-b\.example\+\w{8} does not verify"):
        verify_note(text, [LOG_A, LOG_B])
    assert good.name == GW_A


def test_signatures_sharing_only_the_name_or_only_the_key_id_are_ignored() -> None:
    _, [good] = parse(NOTE)
    same_name = NoteSignature(GW_A, good.key_id ^ 1, good.signature[::-1])
    same_id = NoteSignature("impostor.example", good.key_id, good.signature[::-1])
    text = add_signatures(NOTE, [same_name, same_id])
    opened = open_checkpoint(text, [LOG_A])
    assert opened.signatures == (good,)
    assert opened.unverified == (same_name, same_id)


def test_verifier_lists_must_be_unambiguous() -> None:
    with pytest.raises(NoteError, match=re.escape("two verifiers for key gw-a.example+")):
        verify_note(NOTE, [LOG_A, EcdsaVerifier(GW_A, PUB_A)])


def test_sign_note_signs_only_checkpoints() -> None:
    with pytest.raises(NoteError, match="has 1 line"):
        sign_note(b"hello\n", GW_A, LOG_A.key_id, SIGN_A)
    message = cosignature_message(CHECKPOINT, WHEN)
    with pytest.raises(NoteError, match="not a decimal number"):
        sign_note(message, GW_A, LOG_A.key_id, SIGN_A)


def _constant(raw: bytes) -> Callable[[bytes], bytes]:
    return lambda digest: raw


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (bytes(63), "63 bytes, expected 64"),
        (bytes(65), "65 bytes, expected 64"),
        (bytes(64), "out of range"),
        (b"\x01" * 32 + b"\xff" * 32, "out of range"),
    ],
)
def test_sign_note_refuses_a_bad_signer_output(raw: bytes, match: str) -> None:
    with pytest.raises(NoteError, match=match):
        sign_note(CHECKPOINT.body(), GW_A, LOG_A.key_id, _constant(raw))
    with pytest.raises(NoteError, match=match):
        cosign(CHECKPOINT, WHEN, GW_B, COSIGNER_B.key_id, _constant(raw))


def test_digest_signer_binds_a_signing_key_version() -> None:
    seen: list[tuple[int, bytes]] = []

    class Recorder:
        def sign_digest(self, version: int, digest: bytes) -> bytes:
            seen.append((version, digest))
            return HSM_A.sign_digest(1, digest)

    sign = digest_signer(Recorder(), KeyRef(GW_A, Purpose.SIGNING, 3))
    sign_note(CHECKPOINT.body(), GW_A, LOG_A.key_id, sign)
    assert seen == [(3, hashlib.sha256(CHECKPOINT.body()).digest())]
    with pytest.raises(ValueError, match="not a signing key"):
        digest_signer(HSM_A, KeyRef(GW_A, Purpose.TRANSPORT, 1))


# --- cosignatures ----------------------------------------------------------------------------


def _cosigned(timestamp: int = WHEN) -> NoteSignature:
    return cosign(CHECKPOINT, timestamp, GW_B, COSIGNER_B.key_id, SIGN_B)


def test_cosign_layout() -> None:
    cosignature = _cosigned()
    assert cosignature.name == GW_B
    spki = PUB_B.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    wanted = hashlib.sha256(GW_B.encode() + b"\n" + COSIGNATURE_TYPE + spki).digest()[:4]
    assert cosignature.key_id == int.from_bytes(wanted, "big") == cosignature_key_id(GW_B, PUB_B)
    assert cosignature.key_id != key_id(GW_B, PUB_B)  # one key, one key ID per type
    assert COSIGNATURE_TYPE[0] == 0xFF
    assert len(cosignature.signature) == 8 + 64
    assert cosignature.signature[:8] == WHEN.to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1738713836\n" + CHECKPOINT.body()
    assert cosignature_message(CHECKPOINT, WHEN) == message
    raw = cosignature.signature[8:]
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    PUB_B.verify(der, message, ec.ECDSA(hashes.SHA256()))


def test_cosignature_round_trip_through_the_note() -> None:
    cosignature = _cosigned()
    assert verify_cosignature(CHECKPOINT, cosignature, COSIGNER_B) == WHEN
    assert verify_cosignature(CHECKPOINT, cosignature, COSIGNER_B, not_after=WHEN) == WHEN
    witnessed = add_signatures(NOTE, [cosignature])
    assert witnessed == NOTE + cosignature.line() + "\n"
    opened = open_checkpoint(witnessed, [LOG_A], cosigners=[COSIGNER_B], origin=GW_A)
    assert opened.cosignatures == (cosignature,)
    assert cosignature_timestamp(opened.cosignatures[0]) == WHEN
    assert verify_note(witnessed, [LOG_A]) == CHECKPOINT
    assert NoteSignature.from_line(cosignature.line()) == cosignature


def test_cosignature_refusals() -> None:
    cosignature = _cosigned()
    moved = Checkpoint(GW_A, CHECKPOINT.size + 1, ROOT)
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(moved, cosignature, COSIGNER_B)
    redated = NoteSignature(
        GW_B, cosignature.key_id, (WHEN + 1).to_bytes(8, "big") + cosignature.signature[8:]
    )
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(CHECKPOINT, redated, COSIGNER_B)
    with pytest.raises(NoteError, match="dated 1738713836, after 1738713835"):
        verify_cosignature(CHECKPOINT, cosignature, COSIGNER_B, not_after=WHEN - 1)
    with pytest.raises(NoteError, match=re.escape("expected gw-a.example+")):
        verify_cosignature(CHECKPOINT, cosignature, CosignatureVerifier(GW_A, PUB_B))
    for bit in (0, 70, 8 * 8, 8 * 40, 8 * 72 - 1):
        flipped = NoteSignature(GW_B, cosignature.key_id, _flip(cosignature.signature, bit))
        with pytest.raises(NoteError, match="does not verify"):
            verify_cosignature(CHECKPOINT, flipped, COSIGNER_B)
    witnessed = add_signatures(NOTE, [redated])
    with pytest.raises(NoteError, match=r"signature by key gw-b\.example\+\w{8} does not verify"):
        open_checkpoint(witnessed, [LOG_A], cosigners=[COSIGNER_B])


def test_cosignature_and_checkpoint_signature_cannot_stand_in_for_each_other() -> None:
    body = CHECKPOINT.body()
    cosignature = _cosigned()
    _, [checkpoint_signature] = parse(_signed())
    b_note = sign_note(body.replace(GW_A.encode(), GW_B.encode()), GW_B, LOG_B.key_id, SIGN_B)
    _, [b_signature] = parse(b_note)
    assert not LOG_B.verify(body, cosignature.signature)
    assert not COSIGNER_B.verify(body, b_signature.signature)
    assert not COSIGNER_B.verify(body, checkpoint_signature.signature)
    assert not COSIGNER_B.verify(b"not\na\ncheckpoint\n", cosignature.signature)
    with pytest.raises(NoteError, match="both a log key and a cosigner key"):
        open_checkpoint(NOTE, [LOG_A], cosigners=[LOG_A])


@pytest.mark.parametrize("timestamp", [-1, 2**63, True])
def test_cosignature_timestamp_bounds(timestamp: int) -> None:
    with pytest.raises(NoteError, match="timestamp must be"):
        cosignature_message(CHECKPOINT, timestamp)


def test_cosignature_timestamp_edges() -> None:
    assert verify_cosignature(CHECKPOINT, _cosigned(0), COSIGNER_B) == 0
    top = 2**63 - 1
    assert verify_cosignature(CHECKPOINT, _cosigned(top), COSIGNER_B) == top
    beyond = NoteSignature(GW_B, 1, (2**63).to_bytes(8, "big") + bytes(64))
    with pytest.raises(NoteError, match="exceeds 2\\^63-1"):
        cosignature_timestamp(beyond)
    assert not COSIGNER_B.verify(CHECKPOINT.body(), beyond.signature)
    with pytest.raises(NoteError, match="too short"):
        cosignature_timestamp(NoteSignature(GW_B, 1, bytes(8)))


def test_add_signatures_refuses_a_second_signature_by_one_key() -> None:
    witnessed = add_signatures(NOTE, [_cosigned()])
    with pytest.raises(NoteError, match=re.escape("already signed by key gw-b.example+")):
        add_signatures(witnessed, [_cosigned(WHEN + 5)])
    with pytest.raises(NoteError, match=re.escape("already signed by key gw-a.example+")):
        add_signatures(NOTE, parse(NOTE)[1])
    lines = [NoteSignature(f"w{i}", i, b"s") for i in range(MAX_SIGNATURES)]
    with pytest.raises(NoteError, match="33 signatures"):
        add_signatures(NOTE, lines)


# --- verifier keys and signature lines -------------------------------------------------------


def test_vkeys_round_trip() -> None:
    vkey = LOG_A.vkey()
    name, hex_id, encoded = vkey.split("+", 2)
    assert (name, int(hex_id, 16)) == (GW_A, LOG_A.key_id)
    assert base64.b64decode(encoded)[0] == 0x02
    assert EcdsaVerifier.from_vkey(vkey) == LOG_A
    cosigner = COSIGNER_B.vkey()
    assert base64.b64decode(cosigner.split("+", 2)[2]).startswith(COSIGNATURE_TYPE)
    assert CosignatureVerifier.from_vkey(cosigner) == COSIGNER_B


@pytest.mark.parametrize(
    ("vkey", "match"),
    [
        ("gw-a.example+1234", "not of the form"),
        (LOG_A.vkey().replace("+", "+0", 1), "8 lowercase hex"),
        (LOG_A.vkey().replace(f"+{LOG_A.key_id:08x}+", "+00000000+"), "does not match"),
        (LOG_A.vkey()[:-4] + "!!!=", "not standard padded base64"),
        (COSIGNER_B.vkey(), "not of signature type 02"),
        ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "type 02"),
        ("x+00000000+AjBZ", "no valid DER public key"),
    ],
)
def test_ecdsa_vkey_refusals(vkey: str, match: str) -> None:
    with pytest.raises(NoteError, match=match):
        EcdsaVerifier.from_vkey(vkey)


def test_only_p256_keys() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(NoteError, match="P-256"):
        EcdsaVerifier(GW_A, p384)
    with pytest.raises(NoteError, match="P-256"):
        CosignatureVerifier(GW_A, p384)
    with pytest.raises(NoteError, match="P-256"):
        key_id(GW_A, p384)
    spki = p384.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    vkey = f"x+{int.from_bytes(hashlib.sha256(spki).digest()[:4], 'big'):08x}+"
    with pytest.raises(NoteError, match="P-256"):
        EcdsaVerifier.from_vkey(vkey + base64.b64encode(b"\x02" + spki).decode())


def test_signature_line_round_trip_and_refusals() -> None:
    signature = NoteSignature("n.example/x", 0xDEADBEEF, b"\x01\x02\x03")
    assert signature.line() == "\u2014 n.example/x 3q2+7wECAw=="
    assert NoteSignature.from_line(signature.line()) == signature
    assert str(signature) == "n.example/x+deadbeef"
    with pytest.raises(NoteError, match="cannot contain a newline"):
        NoteSignature.from_line(signature.line() + "\n")
    with pytest.raises(NoteError, match="32-bit"):
        NoteSignature("n", 2**32, b"s")
    with pytest.raises(NoteError, match="empty"):
        NoteSignature("n", 1, b"")
    with pytest.raises(NoteError, match="contains a space"):
        NoteSignature("a b", 1, b"s")


def test_key_id_formula() -> None:
    # signed-note: SHA-256(name || 0x0A || type || key)[:4], big-endian.
    vkeys = _vkeys("c2sp-signed-note")
    wanted, material = vkeys["example.com/foo"]
    assert note_key_id("example.com/foo", material[:1], material[1:]) == wanted == 0x530D903A
    digest = hashlib.sha256(b"example.com/foo\n" + material).digest()
    assert wanted == int.from_bytes(digest[:4], "big")
