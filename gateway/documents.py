"""The signed documents of a transfer: manifest, receipt, key set -- build, sign, verify, compare.

Why one module: each document is made on one side and checked on the other, and the two
halves must agree on every field. Kept together, a field added to the manifest is signed,
parsed and compared in one place, and the rest of the code handles frozen dataclasses, never
``partner_pb2`` messages (this is the only domain module that touches them).

Every document is a :class:`~gateway.signed.Signed` blob whose body is the deterministic
protobuf serialisation of its message (``proto/xbgw/v1/partner.proto``). Verification order
is strict: the signature under the key the verifier already trusts (a partner's pinned key, or
one learnt from it through key sets -- ``partner_keys``), then the parse, then the fields -- a
byte of an unverified body is never interpreted.

* **Manifest** (sender -> receiver, with Finish): what the sender sent -- header core digest,
  passport digest, plaintext SHA-256, size and segment count.
* **Receipt** (receiver -> sender, the answer to Finish): what the receiver committed and
  when, bound to the manifest by its digest.
* **Key set** (any gateway, on request): the keys it has in service, so that a partner learns
  new transport keys and follows a new signing key from the one it already trusts.

The key set (``KeySet`` message; ``GetKeySetResponse`` carries it):

* ``keys``: every transport key in service -- ``version``, ``public_point`` (uncompressed
  P-256) and ``state``: exactly one ``"active"`` (the one to seal new transfers to; it is also
  ``current_version``), the others ``"decrypt-only"`` (replaced; offers already sealed to them
  are still opened until the version is retired).
* ``signing_keys``: every signing key in service, same fields: exactly one ``"active"`` (what
  receipts, manifests and this key set are signed with now), the others ``"verify-only"``.
* ``issued_at``: when it was made (Unix seconds). A partner refuses a key set older than one
  it already accepted (a replayed key set must not take back a rotation).
* ``GetKeySetResponse.key_set`` is the body signed by the active signing key;
  ``endorsements`` are the *same body bytes* signed by each verify-only signing key. A partner
  that trusts only an older key (pinned in its configuration, or learnt before) finds the
  signature of that key among the endorsements, accepts the set, and from it learns -- and
  checks, by the active key's own signature -- the new active key: a chain of custody from
  the key it pinned to the key in use.
* Compatibility: a key set from before key states lists no signing keys and no states (the
  ``current_version`` is then the active transport key); it is accepted under a trusted key
  with no endorsements. A set that gives states to some keys and not others is refused.

Any inconsistency refuses the whole key set, naming the gateway: a state that is not one of
the names above, no or two active keys of a purpose, the active transport key not
``current_version``, a version listed twice or out of range, a point not on P-256, an
endorsement over other bytes, by a key the set does not list as verify-only, or twice, a
primary signature not by the active signing key, or any signature not verifying under the key
the set lists for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, fields

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import DecodeError

from gateway._proto.xbgw.v1 import partner_pb2
from gateway.errors import ManifestError, SignatureError
from gateway.keys import MAX_VERSION, KeyRef, KeyState, Purpose
from gateway.signed import DigestSigner, Signed, sign, verify

MAX_KEY_SET_KEYS = 64


@dataclass(frozen=True)
class Manifest:
    """The sender's account of one transfer, checked by the receiver against what arrived."""

    transfer_id: str
    sender: str
    receiver: str
    header_core_digest: bytes
    passport_digest: bytes
    plaintext_sha256: bytes
    plaintext_size: int
    segment_count: int

    def differences(self, arrived: Manifest) -> list[str]:
        """Each field in which this manifest disagrees with what ``arrived``, for a refusal."""
        problems = []
        for field in fields(self):
            mine, theirs = getattr(self, field.name), getattr(arrived, field.name)
            if mine == theirs:
                continue
            label = _MANIFEST_LABELS[field.name]
            if isinstance(mine, bytes):
                problems.append(label)
            elif isinstance(mine, int):
                problems.append(f"{label} {mine} (received {theirs})")
            else:
                problems.append(f"{label} {mine!r} (expected {theirs!r})")
        return problems


_MANIFEST_LABELS = {
    "transfer_id": "transfer id",
    "sender": "sender",
    "receiver": "receiver",
    "header_core_digest": "header digest",
    "passport_digest": "passport digest",
    "plaintext_sha256": "plaintext SHA-256",
    "plaintext_size": "size",
    "segment_count": "segment count",
}


@dataclass(frozen=True)
class Receipt:
    """The receiver's signed statement that it committed a transfer."""

    transfer_id: str
    sender: str
    receiver: str
    manifest_digest: bytes
    plaintext_sha256: bytes
    plaintext_size: int
    passport_digest: bytes
    committed_at: int

    def confirms(self, manifest: Manifest, manifest_digest: bytes) -> bool:
        """True if this receipt is for exactly ``manifest`` (signed as ``manifest_digest``)."""
        return (
            self.transfer_id == manifest.transfer_id
            and self.sender == manifest.sender
            and self.receiver == manifest.receiver
            and self.manifest_digest == manifest_digest
            and self.plaintext_sha256 == manifest.plaintext_sha256
            and self.plaintext_size == manifest.plaintext_size
            and self.passport_digest == manifest.passport_digest
        )


@dataclass(frozen=True)
class KeySet:
    """A gateway's keys in service: transport keys by version and the one to seal to, signing
    keys by version and the one it signs with now.

    States are not stored but implied -- in service means active or replaced, and exactly one
    version of each purpose is active -- so a ``KeySet`` cannot hold an inconsistent state.
    ``signing_version`` 0 (no ``signing_keys``): a key set from before key states.
    """

    gateway_id: str
    keys: dict[int, ec.EllipticCurvePublicKey]
    current_version: int
    issued_at: int
    signing_keys: dict[int, ec.EllipticCurvePublicKey] = dataclasses.field(default_factory=dict)
    signing_version: int = 0

    @property
    def current(self) -> ec.EllipticCurvePublicKey:
        return self.keys[self.current_version]

    def states(self, purpose: Purpose) -> dict[int, KeyState]:
        """The state of each listed version of ``purpose`` (transport or signing)."""
        if purpose is Purpose.TRANSPORT:
            listed, active = self.keys, self.current_version
        elif purpose is Purpose.SIGNING:
            listed, active = self.signing_keys, self.signing_version
        else:
            raise ValueError(f"a key set lists no {purpose.value} keys")
        replaced = KeyState.replaced(purpose)
        return {v: KeyState.ACTIVE if v == active else replaced for v in sorted(listed)}


@dataclass(frozen=True)
class EndorsedKeySet(Signed):
    """A key set as ``GetKeySet`` serves it: the body signed by the active signing key (this
    blob) and the same body signed by each verify-only signing key (``endorsements``).

    A :class:`Signed` itself, so that a link that knows nothing of endorsements (or a key set
    from an older gateway) still passes as the plain signed key set."""

    endorsements: tuple[Signed, ...] = ()


#: What a verifier trusts: the public key it holds for a signing key reference, or None.
Trust = Callable[[KeyRef], ec.EllipticCurvePublicKey | None]


# --- manifest -------------------------------------------------------------------------------


def sign_manifest(signer: DigestSigner, kid: KeyRef, manifest: Manifest) -> Signed:
    body = partner_pb2.Manifest(
        transfer_id=manifest.transfer_id,
        sender=manifest.sender,
        receiver=manifest.receiver,
        header_core_digest=manifest.header_core_digest,
        passport_digest=manifest.passport_digest,
        plaintext_sha256=manifest.plaintext_sha256,
        plaintext_size=manifest.plaintext_size,
        segment_count=manifest.segment_count,
    )
    return sign(signer, kid, body.SerializeToString(deterministic=True))


def open_manifest(signed: Signed, public_key: ec.EllipticCurvePublicKey, sender: str) -> Manifest:
    """Verify ``signed`` as ``sender``'s manifest, then parse it."""
    verify(signed, public_key, sender, "manifest")
    return read_manifest(signed)


def read_manifest(signed: Signed) -> Manifest:
    """Parse a manifest whose signature was verified (by a partner's key history)."""
    try:
        body = partner_pb2.Manifest.FromString(signed.body)
    except DecodeError:
        raise ManifestError("the signed manifest is not a Manifest message") from None
    return Manifest(
        transfer_id=body.transfer_id,
        sender=body.sender,
        receiver=body.receiver,
        header_core_digest=body.header_core_digest,
        passport_digest=body.passport_digest,
        plaintext_sha256=body.plaintext_sha256,
        plaintext_size=body.plaintext_size,
        segment_count=body.segment_count,
    )


# --- receipt --------------------------------------------------------------------------------


def sign_receipt(signer: DigestSigner, kid: KeyRef, receipt: Receipt) -> Signed:
    body = partner_pb2.ReceiptBody(
        transfer_id=receipt.transfer_id,
        sender=receipt.sender,
        receiver=receipt.receiver,
        manifest_digest=receipt.manifest_digest,
        plaintext_sha256=receipt.plaintext_sha256,
        plaintext_size=receipt.plaintext_size,
        passport_digest=receipt.passport_digest,
        committed_at=receipt.committed_at,
    )
    return sign(signer, kid, body.SerializeToString(deterministic=True))


def open_receipt(
    signed: Signed, public_key: ec.EllipticCurvePublicKey, receiver: str
) -> tuple[Receipt, KeyRef]:
    """Verify ``signed`` as ``receiver``'s receipt; return it and the key that signed it."""
    kid = verify(signed, public_key, receiver, "receipt")
    return read_own_receipt(signed, receiver), kid


def read_own_receipt(signed: Signed, receiver: str) -> Receipt:
    """Parse a receipt already verified (or signed by us and read back from our ledger)."""
    try:
        body = partner_pb2.ReceiptBody.FromString(signed.body)
    except DecodeError:
        raise ManifestError(f"the receipt from {receiver} is not a ReceiptBody") from None
    return Receipt(
        transfer_id=body.transfer_id,
        sender=body.sender,
        receiver=body.receiver,
        manifest_digest=body.manifest_digest,
        plaintext_sha256=body.plaintext_sha256,
        plaintext_size=body.plaintext_size,
        passport_digest=body.passport_digest,
        committed_at=body.committed_at,
    )


# --- key set --------------------------------------------------------------------------------

_TRANSPORT_STATES = (KeyState.ACTIVE, KeyState.DECRYPT_ONLY)
_SIGNING_STATES = (KeyState.ACTIVE, KeyState.VERIFY_ONLY)


def public_point(public: ec.EllipticCurvePublicKey) -> bytes:
    """The uncompressed P-256 point: the one encoding key sets carry and ledgers keep."""
    return public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def key_set_body(key_set: KeySet) -> bytes:
    """The deterministic ``KeySet`` bytes every signature of ``key_set`` is over.

    A key set without signing keys is written as before key states (no states at all)."""
    if key_set.current_version not in key_set.keys:
        raise ValueError(f"current version {key_set.current_version} is not in the key set")
    if key_set.signing_keys and key_set.signing_version not in key_set.signing_keys:
        raise ValueError(f"active signing version {key_set.signing_version} is not in the key set")
    with_states = bool(key_set.signing_keys)
    transport = key_set.states(Purpose.TRANSPORT)
    signing = key_set.states(Purpose.SIGNING)
    body = partner_pb2.KeySet(
        gateway_id=key_set.gateway_id,
        keys=[
            partner_pb2.TransportKey(
                version=version,
                public_point=public_point(key_set.keys[version]),
                state=transport[version].value if with_states else "",
            )
            for version in sorted(key_set.keys)
        ],
        current_version=key_set.current_version,
        issued_at=key_set.issued_at,
        signing_keys=[
            partner_pb2.SigningKey(
                version=version,
                public_point=public_point(key_set.signing_keys[version]),
                state=signing[version].value,
            )
            for version in sorted(key_set.signing_keys)
        ],
    )
    return body.SerializeToString(deterministic=True)


def sign_key_set(signer: DigestSigner, kid: KeyRef, key_set: KeySet) -> Signed:
    return sign(signer, kid, key_set_body(key_set))


def serve_key_set(signer: DigestSigner, key_set: KeySet) -> EndorsedKeySet:
    """``key_set`` signed by its active signing key and endorsed by each verify-only one."""
    if not key_set.signing_keys:
        raise ValueError("a served key set must list its signing keys")
    body = key_set_body(key_set)
    owner = key_set.gateway_id
    primary = sign(signer, KeyRef(owner, Purpose.SIGNING, key_set.signing_version), body)
    endorsements = tuple(
        sign(signer, KeyRef(owner, Purpose.SIGNING, version), body)
        for version in sorted(key_set.signing_keys)
        if version != key_set.signing_version
    )
    return EndorsedKeySet(primary.body, primary.signature, primary.kid, endorsements)


def open_key_set(signed: Signed, public_key: ec.EllipticCurvePublicKey, owner: str) -> KeySet:
    """Verify ``signed`` as ``owner``'s key set under ``public_key``, then parse and check it.

    Every point must be on P-256 and the states consistent (see the module doc): a key set
    that would make the sender fail later is refused now, naming the partner.
    """
    verify(signed, public_key, owner, f"key set of {owner}")
    return parse_key_set(signed.body, owner)


def open_endorsed_key_set(served: Signed, owner: str, trust: Trust) -> tuple[KeySet, KeyRef]:
    """Verify ``served`` (an :class:`EndorsedKeySet`, or a plain signed key set) as ``owner``'s
    key set through a key ``trust`` vouches for; return it and the key that vouched.

    The voucher is the first signature -- the primary one, then each endorsement -- by a key
    ``trust`` returns a public key for, that verifies under it. Only then is the body parsed;
    then every signature must be by a key the set lists (the primary one by its active signing
    key, each endorsement by a different verify-only one) and verify under the key listed.
    """
    what = f"key set of {owner}"
    endorsements = served.endorsements if isinstance(served, EndorsedKeySet) else ()
    blobs = [served, *endorsements]
    kids = [signing_kid(blob, owner, what) for blob in blobs]
    for blob, kid in zip(blobs[1:], kids[1:], strict=True):
        if blob.body != served.body:
            raise SignatureError(f"the {what}: the endorsement by {kid} is over other bytes")
    voucher: KeyRef | None = None
    failed: list[SignatureError] = []
    for blob, kid in zip(blobs, kids, strict=True):
        trusted = trust(kid)
        if trusted is None:
            continue
        try:
            verify(blob, trusted, owner, what)
        except SignatureError as exc:
            failed.append(exc)
            continue
        voucher = kid
        break
    if voucher is None:
        names = _signers(kids)
        if failed:
            raise SignatureError(f"{failed[0]} ({names})")
        raise SignatureError(f"the {what} is {names}, none of which this gateway trusts")
    key_set = parse_key_set(served.body, owner)
    if not key_set.signing_keys:
        if endorsements:
            raise SignatureError(f"the {what} lists no signing keys yet carries endorsements")
        return key_set, voucher
    states = key_set.states(Purpose.SIGNING)
    if kids[0].version != key_set.signing_version:
        raise SignatureError(
            f"the {what} is signed by {kids[0]}, but lists "
            f"{KeyRef(owner, Purpose.SIGNING, key_set.signing_version)} as its active signing key"
        )
    seen: set[int] = set()
    for kid in kids[1:]:
        if states.get(kid.version) is not KeyState.VERIFY_ONLY:
            raise SignatureError(
                f"the {what} is endorsed by {kid}, which it does not list as verify-only"
            )
        if kid.version in seen:
            raise SignatureError(f"the {what} is endorsed twice by {kid}")
        seen.add(kid.version)
    vouched = trust(voucher)
    assert vouched is not None
    if public_point(key_set.signing_keys[voucher.version]) != public_point(vouched):
        raise SignatureError(
            f"the {what} lists another public key for {voucher} than the one this gateway trusts"
        )
    for blob, kid in zip(blobs, kids, strict=True):
        try:
            verify(blob, key_set.signing_keys[kid.version], owner, what)
        except SignatureError:
            raise SignatureError(
                f"the {what}: the signature by {kid} does not verify under the key the set "
                "lists for it"
            ) from None
    return key_set, voucher


def signing_kid(blob: Signed, owner: str, what: str) -> KeyRef:
    """The signing key ``blob`` names, which must be one of ``owner``'s (checked before any
    key is looked up, so a blob of another gateway costs nothing)."""
    try:
        kid = KeyRef.parse(blob.kid)
    except ValueError as exc:
        raise SignatureError(f"{what}: bad key id: {exc}") from None
    if kid.owner != owner or kid.purpose is not Purpose.SIGNING:
        raise SignatureError(f"{what} is signed by {blob.kid}, expected a signing key of {owner}")
    return kid


def _signers(kids: list[KeyRef]) -> str:
    text = f"signed by {kids[0]}"
    if len(kids) > 1:
        text += f", endorsed by {', '.join(str(k) for k in kids[1:])}"
    return text


def parse_key_set(body_bytes: bytes, owner: str) -> KeySet:
    """Parse and check a key set body whose signature was verified (see the module doc)."""
    what = f"key set of {owner}"
    try:
        body = partner_pb2.KeySet.FromString(body_bytes)
    except DecodeError:
        raise SignatureError(f"the {what} is not a KeySet message") from None
    if body.gateway_id != owner:
        raise SignatureError(f"key set names {body.gateway_id!r}, expected {owner!r}")
    with_states = bool(body.signing_keys)
    stated = [key.state != "" for key in body.keys]
    if with_states and not all(stated):
        raise SignatureError(f"the {what} lists signing keys but not every transport key's state")
    if not with_states and any(stated):
        raise SignatureError(f"the {what} gives transport key states but lists no signing keys")
    keys = _public_keys(
        [(k.version, k.public_point, k.state) for k in body.keys],
        what,
        "transport",
        _TRANSPORT_STATES if with_states else None,
    )
    if body.current_version not in keys:
        raise SignatureError(f"key set of {owner} lacks its current version")
    if with_states:
        active = _active([(k.version, k.state) for k in body.keys], what, "transport")
        if active != body.current_version:
            raise SignatureError(
                f"the {what} names transport v{body.current_version} current but v{active} active"
            )
    signing = _public_keys(
        [(k.version, k.public_point, k.state) for k in body.signing_keys],
        what,
        "signing",
        _SIGNING_STATES,
    )
    signing_version = (
        _active([(k.version, k.state) for k in body.signing_keys], what, "signing")
        if with_states
        else 0
    )
    return KeySet(owner, keys, body.current_version, body.issued_at, signing, signing_version)


def _public_keys(
    listed: list[tuple[int, bytes, str]],
    what: str,
    purpose: str,
    states: tuple[KeyState, ...] | None,
) -> dict[int, ec.EllipticCurvePublicKey]:
    if len(listed) > MAX_KEY_SET_KEYS:
        raise SignatureError(
            f"the {what} lists {len(listed)} {purpose} keys, more than {MAX_KEY_SET_KEYS}"
        )
    keys: dict[int, ec.EllipticCurvePublicKey] = {}
    for version, point, state in listed:
        if version in keys:
            raise SignatureError(f"the {what} lists version {version} twice ({purpose} keys)")
        if not 1 <= version <= MAX_VERSION:
            raise SignatureError(f"the {what} has a {purpose} key of version {version}")
        if states is not None and state not in states:
            names = " or ".join(repr(s.value) for s in states)
            raise SignatureError(
                f"the {what} gives {purpose} key v{version} the state {state!r}; expected {names}"
            )
        if len(point) != 65 or point[0] != 0x04:  # one encoding only: uncompressed
            raise SignatureError(
                f"the {what} has a {purpose} key v{version} that is not a P-256 point in "
                "uncompressed form (65 bytes, 0x04 first)"
            )
        try:
            keys[version] = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:
            raise SignatureError(
                f"the {what} has a {purpose} key v{version} that is not a P-256 point"
            ) from None
    return keys


def _active(listed: list[tuple[int, str]], what: str, purpose: str) -> int:
    """The one version listed active (states were checked to be valid names already)."""
    active = [version for version, state in listed if state == KeyState.ACTIVE.value]
    if not active:
        raise SignatureError(f"the {what} has no active {purpose} key")
    if len(active) > 1:
        versions = ", ".join(f"v{v}" for v in sorted(active))
        raise SignatureError(f"the {what} has {len(active)} active {purpose} keys ({versions})")
    return active[0]
