"""Checkpoints of the audit log as C2SP signed notes, and witness cosignatures.

A checkpoint states "the log of gateway G had N leaves with Merkle root R". It travels as a
signed note (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint)::

    gw-a.example                                  <- origin: the gateway id
    1234                                          <- tree size, decimal, no leading zeros
    2GZ1zmS5VkfUZmn2ZyR4KZXwHLD+xnwBIWzql/cD50w=  <- RFC 6962 root hash, base64 (32 bytes)
                                                  <- blank line
    — gw-a.example csh42zBFAiAd3Y1F...            <- em dash, key name, base64(key ID || sig)
    — gw-b.example AT8vJi0AAAAAZ6Kq7...           <- a partner's cosignature

What follows the specs exactly:

* **Text layout** (signed-note, tlog-checkpoint): origin line, tree size, base64 root hash,
  optional non-empty extension lines, every line newline-terminated; a blank line; one or more
  ``U+2014 U+0020 <name> U+0020 <base64(4-byte key ID || signature)>`` lines. UTF-8, no ASCII
  control character but LF. Signatures of unknown keys (name *and* key ID not both known) are
  ignored, a known key whose signature fails rejects the whole note, and a note without one
  good signature from a known log key is refused.
* **The gateway's own checkpoint signature is signed-note type 0x02**, "ECDSA signatures as
  implemented by github.com/transparency-dev/witness", NIST P-256 (which signed-note says it
  SHOULD be): the signature is ASN.1 DER ECDSA over SHA-256 of the note text, and the key ID
  is ``SHA-256(DER SubjectPublicKeyInfo)[:4]`` -- the rule signed-note gives for 0x02, which
  does *not* hash the key name or the type byte. The HSM returns raw ``r || s``; it is turned
  into DER here. So our checkpoints verify unchanged with transparency-dev/formats'
  ``note.NewECDSAVerifier`` (as Rekor's and the Pixel log's do), and :meth:`EcdsaVerifier.vkey`
  prints the ``name+hex(key ID)+base64(0x02 || SPKI)`` verifier key that tooling reads. The
  key name is the origin, i.e. the gateway id (tlog-checkpoint: it SHOULD match).
* **The cosignature message** is tlog-cosignature's, byte for byte:
  ``"cosignature/v1\\ntime <decimal>\\n" || checkpoint text`` (extension lines included), and
  the signature is the ``timestamped_signature`` structure ``u64be timestamp || signature``.

Where we must deviate, because the partner's HSM key is ECDSA P-256 and tlog-cosignature
defines only Ed25519 (type 0x04) and ML-DSA-44 (0x06) cosignatures:

* **Our cosignature type** is not an assigned byte but ``0xff`` followed by the identifier
  ``xbgw/cosignature/v1/ecdsa-p256-sha256`` (signed-note: 0xff is "reserved for signature
  types without an identifier byte assigned by this specification", RECOMMENDED to be
  followed by a longer identifier). Key ID = ``SHA-256(name || 0x0A || 0xff || identifier ||
  DER SPKI)[:4]``, the spec's RECOMMENDED formula with that type. The ``signature`` inside
  ``timestamped_signature`` is ECDSA P-256 over SHA-256 of the message as raw ``r || s`` (64
  bytes, fixed length like the Ed25519 case, so the structure is always 72 bytes). A standard
  cosignature client does not know the type, so by the spec it ignores our lines; it cannot
  mistake them for Ed25519 cosignatures because the key ID differs.
* **One key, two signature types.** The HSM signing key of a gateway signs its checkpoints
  (0x02) and its cosignatures of partners' checkpoints (our type) -- signed-note says the same
  key SHOULD NOT be reused across types and, if it is, MUST use a different key ID per type,
  which it does. The two messages cannot be confused: a cosignature message starts with
  ``cosignature/v1\\ntime `` and is never a valid checkpoint (its second line is not a
  decimal), and :func:`sign_note` signs only text that parses as a checkpoint. Like the Ed25519
  format, ours does not commit to the cosigner name; each gateway has its own key, as
  tlog-cosignature requires of cosigners that do not commit to their name.
* **Stricter than the reference parser** (golang.org/x/mod/sumdb/note), where the spec leaves
  room: base64 must be canonical (padded, zero trailing bits); two signature lines with the
  same name and key ID reject the note (Go drops the repeat; the spec is silent); tree size
  and root hash follow tlog-checkpoint to the letter (no sign, no leading zeros, at most
  2^64-1; root exactly 32 bytes); only P-256 is accepted for type 0x02 (the spec also allows
  P-384 and P-521).

Bounds, checked before any signature is decoded: a note is at most :data:`MAX_NOTE_SIZE`
bytes, a line :data:`MAX_LINE_LEN`, a key name or origin :data:`MAX_NAME_LEN` bytes, the
checkpoint text :data:`MAX_TEXT_SIZE`, at most :data:`MAX_SIGNATURES` signatures and
:data:`MAX_EXTENSIONS` extension lines. signed-note asks verifiers to accept at least 16
signatures: 16 ML-DSA-44 cosignature lines (the largest assigned type) with 255-byte names
plus a full-size text still fit in :data:`MAX_NOTE_SIZE`.

Signing goes through a :data:`DigestSign` callable: SHA-256 digest in, raw ``r || s`` out, as
the HSM's ``sign_digest`` produces (:func:`digest_signer` binds one signing key version).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)

from gateway.keys import KeyRef, Purpose
from gateway.signed import DigestSigner

HASH_LEN: Final = 32
MAX_NOTE_SIZE: Final = 65_536
MAX_TEXT_SIZE: Final = 8_192
MAX_LINE_LEN: Final = 8_192
MAX_NAME_LEN: Final = 255
MAX_SIGNATURES: Final = 32
MAX_EXTENSIONS: Final = 16
MAX_TREE_SIZE: Final = 2**64 - 1
MAX_TIMESTAMP: Final = 2**63 - 1

#: signed-note signature type of our checkpoint signatures (ECDSA, transparency-dev/witness).
ECDSA_SIGNATURE_TYPE: Final = b"\x02"
#: Our cosignature type: 0xff (no assigned byte) and a long identifier, per signed-note.
COSIGNATURE_TYPE: Final = b"\xff" + b"xbgw/cosignature/v1/ecdsa-p256-sha256"
COSIGNATURE_HEADER: Final = b"cosignature/v1\n"

RAW_SIGNATURE_LEN: Final = 64
TIMESTAMP_LEN: Final = 8
MAX_DER_SIGNATURE_LEN: Final = 72
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

_SIG_PREFIX: Final = "\u2014 "
_SIG_PREFIX_BYTES: Final = _SIG_PREFIX.encode("utf-8")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX8 = re.compile(r"[0-9a-f]{8}")

#: Signs one SHA-256 digest (32 bytes) and returns the raw ``r || s`` (64 bytes).
DigestSign = Callable[[bytes], bytes]


class NoteError(ValueError):
    """A note, checkpoint or signature is malformed, or does not verify."""


# --- the checkpoint text ---------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """One tree head: ``origin`` (the log's identity), ``size`` leaves, Merkle ``root_hash``."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_text_line("origin", self.origin, MAX_NAME_LEN)
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError(f"tree size must be an integer from 0 to 2^64-1, got {self.size!r}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_LEN:
            raise NoteError(f"root hash must be {HASH_LEN} bytes")
        extensions = tuple(self.extensions)
        object.__setattr__(self, "extensions", extensions)
        if len(extensions) > MAX_EXTENSIONS:
            raise NoteError(f"{len(extensions)} extension lines, at most {MAX_EXTENSIONS}")
        for number, line in enumerate(extensions, start=1):
            _check_text_line(f"extension line {number}", line, MAX_LINE_LEN)
        if len(self.body()) > MAX_TEXT_SIZE:
            raise NoteError(f"checkpoint text is longer than {MAX_TEXT_SIZE} bytes")

    def body(self) -> bytes:
        """The note text: origin, size, base64 root hash, extensions, each ending in LF."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def from_body(cls, body: bytes | str) -> Checkpoint:
        """Parse checkpoint text (no signatures) strictly; raises :class:`NoteError`."""
        data, text = _decode(body, "checkpoint text", MAX_TEXT_SIZE)
        if not text.endswith("\n"):
            raise NoteError("checkpoint text does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(
                f"checkpoint text has {len(lines)} line(s); it needs an origin, "
                "a tree size and a root hash"
            )
        for number, line in enumerate(lines, start=1):
            if not line:
                raise NoteError(f"checkpoint text line {number} is empty")
            if len(line.encode("utf-8")) > MAX_LINE_LEN:
                raise NoteError(f"checkpoint text line {number} is longer than {MAX_LINE_LEN}")
        origin, size_text, root_text, *extensions = lines
        if len(origin.encode("utf-8")) > MAX_NAME_LEN:
            raise NoteError(f"origin is longer than {MAX_NAME_LEN} bytes")
        if not _DECIMAL.fullmatch(size_text):
            raise NoteError(
                f"tree size {size_text[:24]!r} is not a decimal number "
                "without sign or leading zeros"
            )
        if len(size_text) > 20 or int(size_text) > MAX_TREE_SIZE:
            raise NoteError(f"tree size {size_text[:24]} is larger than 2^64-1")
        root_hash = _b64decode("root hash", root_text)
        if len(root_hash) != HASH_LEN:
            raise NoteError(f"root hash is {len(root_hash)} bytes, expected {HASH_LEN}")
        if len(extensions) > MAX_EXTENSIONS:
            raise NoteError(f"{len(extensions)} extension lines, at most {MAX_EXTENSIONS}")
        checkpoint = cls(origin, int(size_text), root_hash, tuple(extensions))
        if checkpoint.body() != data:  # pragma: no cover - the rules above make it canonical
            raise NoteError("checkpoint text is not in canonical form")
        return checkpoint


# --- signature lines and the note ----------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key ``name``, 32-bit ``key_id`` and the signature bytes after it."""

    name: str
    key_id: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if type(self.key_id) is not int or not 0 <= self.key_id < 2**32:
            raise NoteError(f"key ID must be a 32-bit unsigned integer, got {self.key_id!r}")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise NoteError(f"signature of {self.name} is empty")

    def line(self) -> str:
        """``— <name> <base64(key ID || signature)>``, without the final newline."""
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}"

    @classmethod
    def from_line(cls, line: str) -> NoteSignature:
        """Parse one signature line (without its newline) strictly."""
        data, text = _decode(line, "signature line", MAX_LINE_LEN)
        if "\n" in text:
            raise NoteError("a signature line cannot contain a newline")
        return _parse_signature_line(data, "signature line")

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id:08x}"


def parse_note(text: bytes | str) -> tuple[bytes, list[NoteSignature]]:
    """Split a signed note into its text (with final newline) and its signature lines.

    Strict and bounded; nothing is verified. Raises :class:`NoteError` naming the rule.
    """
    data, decoded = _decode(text, "note", MAX_NOTE_SIZE)
    if not decoded.endswith("\n"):
        raise NoteError("note does not end with a newline")
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        if len(line) > MAX_LINE_LEN:
            raise NoteError(f"note line {number} is longer than {MAX_LINE_LEN} bytes")
    split = data.rfind(b"\n\n")
    if split < 0:
        raise NoteError("note has no blank line between its text and its signatures")
    body, block = data[: split + 1], data[split + 2 :]
    if not block:
        raise NoteError("note has no signature line after its last blank line")
    lines = block[:-1].split(b"\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signatures, at most {MAX_SIGNATURES}")
    signatures: list[NoteSignature] = []
    seen: set[tuple[str, int]] = set()
    for number, line in enumerate(lines, start=1):
        signature = _parse_signature_line(line, f"signature line {number}")
        key = (signature.name, signature.key_id)
        if key in seen:
            raise NoteError(f"note is signed twice by key {signature}")
        seen.add(key)
        signatures.append(signature)
    return body, signatures


def parse(text: bytes | str) -> tuple[Checkpoint, list[NoteSignature]]:
    """Parse a signed checkpoint strictly; nothing is verified (see :func:`verify_note`)."""
    body, signatures = parse_note(text)
    return Checkpoint.from_body(body), signatures


def add_signatures(text: bytes | str, signatures: Iterable[NoteSignature]) -> str:
    """``text`` with ``signatures`` (e.g. verified cosignatures) appended after its own.

    Nothing is verified here. A key that already signed the note is refused, and the result
    must still be within the bounds of :func:`parse_note`.
    """
    body, existing = parse_note(text)
    seen = {(s.name, s.key_id) for s in existing}
    lines = [s.line() for s in existing]
    for signature in signatures:
        key = (signature.name, signature.key_id)
        if key in seen:
            raise NoteError(f"note is already signed by key {signature}")
        seen.add(key)
        lines.append(signature.line())
    result = body.decode("utf-8") + "\n" + "".join(line + "\n" for line in lines)
    parse_note(result)
    return result


# --- keys and verifiers --------------------------------------------------------------------


class NoteVerifier(Protocol):
    """Knows one key: its name, its key ID, and how to check its signature over a text."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def verify(self, text: bytes, signature: bytes) -> bool: ...


def note_key_id(name: str, signature_type: bytes, public_key: bytes) -> int:
    """signed-note's RECOMMENDED key ID: ``SHA-256(name || 0x0A || type || key)[:4]``."""
    _check_name(name)
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + signature_type + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def key_id(name: str, public_key: ec.EllipticCurvePublicKey) -> int:
    """Key ID of a checkpoint signing key (type 0x02): ``SHA-256(DER SPKI)[:4]``.

    signed-note's rule for 0x02 hashes the public key alone; ``name`` is checked to be a valid
    key name but, per that rule, not hashed (the pair name + key ID identifies the key).
    """
    _check_name(name)
    return int.from_bytes(hashlib.sha256(_spki(public_key)).digest()[:4], "big")


def cosignature_key_id(name: str, public_key: ec.EllipticCurvePublicKey) -> int:
    """Key ID of a cosigner key: ``SHA-256(name || 0x0A || COSIGNATURE_TYPE || SPKI)[:4]``."""
    return note_key_id(name, COSIGNATURE_TYPE, _spki(public_key))


@dataclass(frozen=True)
class EcdsaVerifier:
    """A log key: checks signed-note type 0x02 signatures (ECDSA P-256, SHA-256, DER)."""

    name: str
    public_key: ec.EllipticCurvePublicKey
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        _check_p256(self.public_key)
        object.__setattr__(self, "key_id", key_id(self.name, self.public_key))

    def verify(self, text: bytes, signature: bytes) -> bool:
        if not 8 <= len(signature) <= MAX_DER_SIGNATURE_LEN:
            return False
        try:
            r, s = decode_dss_signature(signature)
            if encode_dss_signature(r, s) != signature:  # DER, one encoding only
                return False
        except ValueError:
            return False
        return _ecdsa_verify(self.public_key, text, signature)

    def vkey(self) -> str:
        """``name+hex(key ID)+base64(0x02 || DER SPKI)`` (transparency-dev's ECDSA vkey)."""
        return _vkey(self.name, self.key_id, ECDSA_SIGNATURE_TYPE + _spki(self.public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> EcdsaVerifier:
        name, wanted, key = _parse_vkey(vkey, ECDSA_SIGNATURE_TYPE)
        verifier = cls(name, _load_p256(key))
        if verifier.key_id != wanted:
            raise NoteError(f"verifier key {name}: key ID {wanted:08x} does not match the key")
        return verifier


@dataclass(frozen=True)
class CosignatureVerifier:
    """A cosigner key: checks our timestamped ECDSA P-256 cosignatures (see module doc)."""

    name: str
    public_key: ec.EllipticCurvePublicKey
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        _check_p256(self.public_key)
        object.__setattr__(self, "key_id", cosignature_key_id(self.name, self.public_key))

    def verify(self, text: bytes, signature: bytes) -> bool:
        if len(signature) != TIMESTAMP_LEN + RAW_SIGNATURE_LEN:
            return False
        timestamp = int.from_bytes(signature[:TIMESTAMP_LEN], "big")
        if timestamp > MAX_TIMESTAMP:
            return False
        try:
            checkpoint = Checkpoint.from_body(text)
        except NoteError:
            return False
        message = cosignature_message(checkpoint, timestamp)
        try:
            der = _raw_to_der(signature[TIMESTAMP_LEN:])
        except NoteError:
            return False
        return _ecdsa_verify(self.public_key, message, der)

    def vkey(self) -> str:
        """``name+hex(key ID)+base64(COSIGNATURE_TYPE || DER SPKI)``."""
        return _vkey(self.name, self.key_id, COSIGNATURE_TYPE + _spki(self.public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        name, wanted, key = _parse_vkey(vkey, COSIGNATURE_TYPE)
        verifier = cls(name, _load_p256(key))
        if verifier.key_id != wanted:
            raise NoteError(f"verifier key {name}: key ID {wanted:08x} does not match the key")
        return verifier


# --- signing and verifying -----------------------------------------------------------------


def digest_signer(signer: DigestSigner, kid: KeyRef) -> DigestSign:
    """A :data:`DigestSign` for one HSM signing key version."""
    if kid.purpose is not Purpose.SIGNING:
        raise ValueError(f"{kid} is not a signing key")
    version = kid.version

    def sign(digest: bytes) -> bytes:
        return signer.sign_digest(version, digest)

    return sign


def sign_note(body: bytes, name: str, key_id: int, signer: DigestSign) -> str:
    """Sign checkpoint text ``body`` as key ``name``/``key_id`` (type 0x02); the signed note.

    ``body`` must be a checkpoint's text (:meth:`Checkpoint.body`): the gateway key signs
    nothing else in this format, which keeps checkpoints apart from cosignature messages.
    """
    Checkpoint.from_body(body)
    der = _raw_to_der(_call(signer, hashlib.sha256(body).digest()))
    line = NoteSignature(name, key_id, der).line()
    return body.decode("utf-8") + "\n" + line + "\n"


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint and who vouched for it: log ``signatures`` and ``cosignatures`` verified,
    ``unverified`` lines of keys not known (kept as they were, never trusted)."""

    checkpoint: Checkpoint
    signatures: tuple[NoteSignature, ...]
    cosignatures: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


def open_checkpoint(
    text: bytes | str,
    verifiers: Iterable[NoteVerifier],
    *,
    cosigners: Iterable[NoteVerifier] = (),
    origin: str | None = None,
) -> VerifiedCheckpoint:
    """Parse and verify a signed checkpoint.

    At least one signature by a log key (``verifiers``) must verify; every signature by a
    known key (log or cosigner) must verify, else the whole note is refused; signatures by
    other keys are ignored. ``origin``, if given, must be the checkpoint's origin.
    """
    checkpoint, signatures = parse(text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint is from {checkpoint.origin!r}, expected {origin!r}")
    logs = _index(verifiers)
    witnesses = _index(cosigners)
    both = sorted(logs.keys() & witnesses.keys())
    if both:
        raise NoteError(f"key {both[0][0]}+{both[0][1]:08x} is both a log key and a cosigner key")
    body = checkpoint.body()
    signed: list[NoteSignature] = []
    cosigned: list[NoteSignature] = []
    unknown: list[NoteSignature] = []
    for signature in signatures:
        key = (signature.name, signature.key_id)
        verifier = logs[key] if key in logs else witnesses.get(key)
        if verifier is None:
            unknown.append(signature)
            continue
        if not verifier.verify(body, signature.signature):
            raise NoteError(f"signature by key {signature} does not verify")
        (signed if key in logs else cosigned).append(signature)
    if not signed:
        raise NoteError(f"checkpoint of {checkpoint.origin!r} has no signature by a known log key")
    return VerifiedCheckpoint(checkpoint, tuple(signed), tuple(cosigned), tuple(unknown))


def verify_note(
    text: bytes | str, verifiers: Iterable[NoteVerifier], *, origin: str | None = None
) -> Checkpoint:
    """The checkpoint of a signed note that at least one of ``verifiers`` signed."""
    return open_checkpoint(text, verifiers, origin=origin).checkpoint


def cosignature_message(checkpoint: Checkpoint, timestamp: int) -> bytes:
    """What a cosigner signs: ``cosignature/v1\\ntime <timestamp>\\n`` + checkpoint text."""
    _check_timestamp(timestamp)
    return COSIGNATURE_HEADER + f"time {timestamp}\n".encode("ascii") + checkpoint.body()


def cosign(
    checkpoint: Checkpoint, timestamp: int, name: str, key_id: int, signer: DigestSign
) -> NoteSignature:
    """Our cosignature of ``checkpoint`` at ``timestamp`` (Unix seconds) as ``name``/``key_id``.

    Call it only after checking the checkpoint is consistent with the last one seen.
    """
    digest = hashlib.sha256(cosignature_message(checkpoint, timestamp)).digest()
    raw = _call(signer, digest)
    _raw_to_der(raw)  # the same checks as for a checkpoint signature
    return NoteSignature(name, key_id, timestamp.to_bytes(TIMESTAMP_LEN, "big") + raw)


def cosignature_timestamp(signature: NoteSignature) -> int:
    """The time (Unix seconds) a timestamped cosignature states; nothing is verified."""
    if len(signature.signature) < TIMESTAMP_LEN + 1:
        raise NoteError(f"cosignature by key {signature} is too short")
    timestamp = int.from_bytes(signature.signature[:TIMESTAMP_LEN], "big")
    if timestamp > MAX_TIMESTAMP:
        raise NoteError(f"cosignature by key {signature}: timestamp exceeds 2^63-1")
    return timestamp


def verify_cosignature(
    checkpoint: Checkpoint,
    signature: NoteSignature,
    verifier: NoteVerifier,
    *,
    not_after: int | None = None,
) -> int:
    """Check ``signature`` is ``verifier``'s cosignature of ``checkpoint``; its timestamp.

    ``not_after`` (Unix seconds), if given, refuses a timestamp later than it (the spec lets
    verifiers reject cosignatures from the future).
    """
    if (signature.name, signature.key_id) != (verifier.name, verifier.key_id):
        raise NoteError(
            f"cosignature is by key {signature}, expected {verifier.name}+{verifier.key_id:08x}"
        )
    timestamp = cosignature_timestamp(signature)
    if not_after is not None and timestamp > not_after:
        raise NoteError(f"cosignature by key {signature} is dated {timestamp}, after {not_after}")
    if not verifier.verify(checkpoint.body(), signature.signature):
        raise NoteError(f"cosignature by key {signature} does not verify")
    return timestamp


# --- helpers -------------------------------------------------------------------------------


def _decode(value: bytes | str, what: str, limit: int) -> tuple[bytes, str]:
    """``value`` as UTF-8 bytes and text, at most ``limit`` bytes, no control but LF."""
    if isinstance(value, str):
        if len(value) > limit:
            raise NoteError(f"{what} is longer than {limit} bytes")
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise NoteError(f"{what} is not valid UTF-8 (lone surrogate)") from None
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")
    if len(data) > limit:
        raise NoteError(f"{what} is {len(data)} bytes, more than {limit}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    control = _CONTROL.search(text)
    if control is not None:
        if control.group() == "\r":
            raise NoteError(f"{what} contains a carriage return: lines end with LF only")
        raise NoteError(
            f"{what} contains control character U+{ord(control.group()):04X} "
            f"at character {control.start()}"
        )
    return data, text


def _parse_signature_line(line: bytes, what: str) -> NoteSignature:
    if not line.startswith(_SIG_PREFIX_BYTES):
        raise NoteError(f"{what} does not start with an em dash (U+2014) and a space")
    name, space, encoded = line[len(_SIG_PREFIX_BYTES) :].decode("utf-8").partition(" ")
    if not space:
        raise NoteError(f"{what} has no space between key name and signature")
    try:
        _check_name(name)
    except NoteError as exc:
        raise NoteError(f"{what}: {exc}") from None
    blob = _b64decode(what, encoded)
    if len(blob) < 5:
        raise NoteError(f"{what} holds {len(blob)} bytes; it needs a 4-byte key ID and a signature")
    return NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:])


def _b64decode(what: str, text: str) -> bytes:
    """Standard padded base64 (RFC 4648 section 4), canonical, nothing else."""
    if not text or len(text) % 4 or not _BASE64.fullmatch(text):
        raise NoteError(f"{what} is not standard padded base64")
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64 (non-zero padding bits)")
    return data


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise NoteError("key name is empty")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_LEN:
        raise NoteError(f"key name is longer than {MAX_NAME_LEN} bytes")
    if any(ch.isspace() for ch in name):
        raise NoteError(f"key name {name!r} contains a space")
    if "+" in name:
        raise NoteError(f"key name {name!r} contains a plus sign")
    _decode(name, "key name", MAX_NAME_LEN)


def _check_text_line(what: str, line: str, limit: int) -> None:
    if not isinstance(line, str) or not line:
        raise NoteError(f"{what} is empty")
    if "\n" in line:
        raise NoteError(f"{what} contains a newline")
    _decode(line, what, limit)


def _check_timestamp(timestamp: int) -> None:
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"timestamp must be an integer from 0 to 2^63-1, got {timestamp!r}")


def _check_p256(public_key: object) -> None:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise NoteError("the key must be an ECDSA P-256 public key")


def _spki(public_key: ec.EllipticCurvePublicKey) -> bytes:
    _check_p256(public_key)
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _load_p256(der: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = load_der_public_key(der)
    except ValueError:
        raise NoteError("verifier key holds no valid DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise NoteError("verifier key is not an ECDSA key")
    _check_p256(key)
    if _spki(key) != der:
        raise NoteError("verifier key is not in canonical DER form")
    return key


def _vkey(name: str, key_id: int, material: bytes) -> str:
    return f"{name}+{key_id:08x}+{base64.b64encode(material).decode('ascii')}"


def _parse_vkey(vkey: str, signature_type: bytes) -> tuple[str, int, bytes]:
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise NoteError("verifier key is not of the form name+keyid+base64")
    name, hex_id, encoded = parts
    _check_name(name)
    if not _HEX8.fullmatch(hex_id):
        raise NoteError(f"verifier key {name}: key ID must be 8 lowercase hex digits")
    material = _b64decode(f"verifier key {name}", encoded)
    if not material.startswith(signature_type):
        raise NoteError(f"verifier key {name} is not of signature type {signature_type[:1].hex()}")
    return name, int(hex_id, 16), material[len(signature_type) :]


def _call(signer: DigestSign, digest: bytes) -> bytes:
    raw = signer(digest)
    if not isinstance(raw, bytes):
        raise NoteError("the signer did not return bytes")
    return raw


def _raw_to_der(raw: bytes) -> bytes:
    """Raw ``r || s`` (the HSM's output) -> DER, refusing anything but a P-256 signature."""
    if len(raw) != RAW_SIGNATURE_LEN:
        raise NoteError(f"signature is {len(raw)} bytes, expected {RAW_SIGNATURE_LEN} (r || s)")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
        raise NoteError("signature r or s is out of range for P-256")
    return encode_dss_signature(r, s)


def _ecdsa_verify(public_key: ec.EllipticCurvePublicKey, message: bytes, der: bytes) -> bool:
    try:
        public_key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _index(verifiers: Iterable[NoteVerifier]) -> Mapping[tuple[str, int], NoteVerifier]:
    index: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        key = (verifier.name, verifier.key_id)
        if key in index:
            raise NoteError(f"two verifiers for key {key[0]}+{key[1]:08x}")
        index[key] = verifier
    return index
