"""The key set as served (``GetKeySet``): format vectors and every way to break one.

A good key set -- two transport versions, two signing versions, the body signed by the active
signing key and endorsed by the verify-only one -- is checked independently of
``gateway.signed`` (each signature verified with ``cryptography`` alone, the body parsed with
the protobuf classes alone), then opened through the key a partner trusts: the old signing key
(the chain of custody) or the new one. Every inconsistency is refused as a whole with a
``SignatureError`` whose exact message names the gateway and the fault.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway._proto.xbgw.v1 import partner_pb2
from gateway.documents import (
    MAX_KEY_SET_KEYS,
    EndorsedKeySet,
    KeySet,
    Trust,
    key_set_body,
    open_endorsed_key_set,
    serve_key_set,
)
from gateway.errors import SignatureError
from gateway.keys import KeyRef, KeyState, Purpose
from gateway.signed import Signed, sign
from tests.fakes import SoftwareHsm

OWNER = "frankfurt"
ISSUED = 1_800_000_000

HSM = SoftwareHsm()  # frankfurt: v1 of every purpose ...
assert HSM.generate(Purpose.TRANSPORT) == 2  # ... transport v2 (active)
assert HSM.generate(Purpose.SIGNING) == 2  # ... signing v2 (active)
assert HSM.generate(Purpose.SIGNING) == 3  # made, never listed
OTHER = SoftwareHsm()  # another holder of keys that claims frankfurt's key ids
assert OTHER.generate(Purpose.SIGNING) == 2


def t_pub(version: int) -> ec.EllipticCurvePublicKey:
    return HSM.public_key(Purpose.TRANSPORT, version)


def s_pub(version: int) -> ec.EllipticCurvePublicKey:
    return HSM.public_key(Purpose.SIGNING, version)


def point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def ref(version: int, owner: str = OWNER) -> KeyRef:
    return KeyRef(owner, Purpose.SIGNING, version)


GOOD = KeySet(
    gateway_id=OWNER,
    keys={1: t_pub(1), 2: t_pub(2)},
    current_version=2,
    issued_at=ISSUED,
    signing_keys={1: s_pub(1), 2: s_pub(2)},
    signing_version=2,
)

Listed = list[tuple[int, bytes, str]]
TRANSPORT: Listed = [(1, point(t_pub(1)), "decrypt-only"), (2, point(t_pub(2)), "active")]
SIGNING: Listed = [(1, point(s_pub(1)), "verify-only"), (2, point(s_pub(2)), "active")]
NOT_ON_CURVE = b"\x04" + b"\x01" * 64


def body(
    *,
    gateway: str = OWNER,
    keys: Listed | None = None,
    current: int = 2,
    issued_at: int = ISSUED,
    signing: Listed | None = None,
) -> bytes:
    """A key set body written by hand with the protobuf classes (the good one by default)."""
    return partner_pb2.KeySet(
        gateway_id=gateway,
        keys=[
            partner_pb2.TransportKey(version=v, public_point=p, state=s)
            for v, p, s in (TRANSPORT if keys is None else keys)
        ],
        current_version=current,
        issued_at=issued_at,
        signing_keys=[
            partner_pb2.SigningKey(version=v, public_point=p, state=s)
            for v, p, s in (SIGNING if signing is None else signing)
        ],
    ).SerializeToString(deterministic=True)


def served(
    data: bytes | None = None,
    primary: int = 2,
    endorsers: tuple[int, ...] = (1,),
    signer: SoftwareHsm = HSM,
) -> EndorsedKeySet:
    """``data`` signed as frankfurt/signing/``primary`` and endorsed by ``endorsers``."""
    data = body() if data is None else data
    blob = sign(signer, ref(primary), data)
    endorsements = tuple(sign(HSM, ref(v), data) for v in endorsers)
    return EndorsedKeySet(blob.body, blob.signature, blob.kid, endorsements)


def endorsed(primary: Signed, *endorsements: Signed) -> EndorsedKeySet:
    return EndorsedKeySet(primary.body, primary.signature, primary.kid, endorsements)


def trusting(*versions: int) -> Trust:
    """What a partner trusts: frankfurt's real signing keys of ``versions``."""

    def trust(kid: KeyRef) -> ec.EllipticCurvePublicKey | None:
        assert kid.owner == OWNER and kid.purpose is Purpose.SIGNING
        return s_pub(kid.version) if kid.version in versions else None

    return trust


def opened(blob: Signed, *versions: int) -> tuple[KeySet, KeyRef]:
    return open_endorsed_key_set(blob, OWNER, trusting(*versions))


def refused(blob: Signed, versions: tuple[int, ...], message: str) -> None:
    with pytest.raises(SignatureError) as caught:
        opened(blob, *versions)
    assert str(caught.value) == message


def independently_verified(blob: Signed, public: ec.EllipticCurvePublicKey) -> None:
    """ECDSA P-256 / SHA-256 over the body, raw r || s -- checked with ``cryptography`` only."""
    assert len(blob.signature) == 64
    der = encode_dss_signature(
        int.from_bytes(blob.signature[:32], "big"), int.from_bytes(blob.signature[32:], "big")
    )
    public.verify(der, blob.body, ec.ECDSA(hashes.SHA256()))


# --- the good key set -----------------------------------------------------------------------


def test_the_served_key_set_is_signed_by_the_active_key_and_endorsed_by_the_old_one() -> None:
    blob = serve_key_set(HSM, GOOD)
    assert isinstance(blob, EndorsedKeySet)
    assert blob.kid == "frankfurt/signing/2"
    assert [e.kid for e in blob.endorsements] == ["frankfurt/signing/1"]
    assert all(e.body == blob.body for e in blob.endorsements)
    # Each signature under the key its kid names, checked without gateway.signed.
    independently_verified(blob, s_pub(2))
    independently_verified(blob.endorsements[0], s_pub(1))
    # The body, read with the protobuf classes alone.
    parsed = partner_pb2.KeySet.FromString(blob.body)
    assert parsed.gateway_id == OWNER
    assert (parsed.current_version, parsed.issued_at) == (2, ISSUED)
    assert [(k.version, k.public_point, k.state) for k in parsed.keys] == TRANSPORT
    assert [(k.version, k.public_point, k.state) for k in parsed.signing_keys] == SIGNING
    # Deterministic: the same bytes as the body written by hand, and the same every time.
    assert blob.body == key_set_body(GOOD) == body()
    assert serve_key_set(HSM, GOOD).body == blob.body


def test_versions_are_written_in_order_whatever_the_order_given() -> None:
    shuffled = dataclasses.replace(
        GOOD, keys={2: t_pub(2), 1: t_pub(1)}, signing_keys={2: s_pub(2), 1: s_pub(1)}
    )
    assert key_set_body(shuffled) == body()


@pytest.mark.parametrize(
    ("trusted", "voucher"),
    [((1,), 1), ((2,), 2), ((1, 2), 2)],
    ids=["old-key-only", "new-key-only", "both-primary-first"],
)
def test_the_good_key_set_opens_through_any_signing_key_it_lists(
    trusted: tuple[int, ...], voucher: int
) -> None:
    key_set, vouched = opened(serve_key_set(HSM, GOOD), *trusted)
    assert vouched == ref(voucher)
    assert (key_set.gateway_id, key_set.current_version, key_set.issued_at) == (OWNER, 2, ISSUED)
    assert key_set.signing_version == 2
    assert {v: point(k) for v, k in key_set.keys.items()} == {
        1: point(t_pub(1)),
        2: TRANSPORT[1][1],
    }
    assert {v: point(k) for v, k in key_set.signing_keys.items()} == {
        1: point(s_pub(1)),
        2: point(s_pub(2)),
    }
    assert point(key_set.current) == point(t_pub(2))
    assert key_set.states(Purpose.TRANSPORT) == {1: KeyState.DECRYPT_ONLY, 2: KeyState.ACTIVE}
    assert key_set.states(Purpose.SIGNING) == {1: KeyState.VERIFY_ONLY, 2: KeyState.ACTIVE}
    with pytest.raises(ValueError, match="a key set lists no storage keys"):
        key_set.states(Purpose.STORAGE)


def test_one_signing_key_means_no_endorsements() -> None:
    single = dataclasses.replace(GOOD, signing_keys={2: s_pub(2)})
    blob = serve_key_set(HSM, single)
    assert blob.endorsements == ()
    key_set, voucher = opened(blob, 2)
    assert voucher == ref(2) and sorted(key_set.signing_keys) == [2]


def test_a_key_set_that_cannot_be_served_is_not_signed() -> None:
    with pytest.raises(ValueError, match="a served key set must list its signing keys"):
        serve_key_set(HSM, dataclasses.replace(GOOD, signing_keys={}, signing_version=0))
    with pytest.raises(ValueError, match="active signing version 3 is not in the key set"):
        serve_key_set(HSM, dataclasses.replace(GOOD, signing_version=3))
    with pytest.raises(ValueError, match="current version 3 is not in the key set"):
        serve_key_set(HSM, dataclasses.replace(GOOD, current_version=3))


def test_at_most_64_keys_of_each_purpose() -> None:
    keys = [(v, point(t_pub(1)), "decrypt-only") for v in range(1, MAX_KEY_SET_KEYS)]
    signing = [(v, point(s_pub(1)), "verify-only") for v in range(3, MAX_KEY_SET_KEYS + 1)]
    full = body(
        keys=[*keys, (MAX_KEY_SET_KEYS, point(t_pub(2)), "active")],
        current=MAX_KEY_SET_KEYS,
        signing=[*SIGNING, *signing],
    )
    key_set, _ = opened(served(full), 1)
    assert len(key_set.keys) == len(key_set.signing_keys) == MAX_KEY_SET_KEYS


def test_the_hand_written_wire_version_is_read_as_written() -> None:
    """The control for the out-of-range case below: the same bytes with version 1 open."""
    key_set, _ = opened(served(_version_on_the_wire(b"\x01")), 1)
    assert {v: point(k) for v, k in key_set.keys.items()} == {
        1: point(t_pub(1)),
        2: point(t_pub(2)),
    }


# --- a key set from before key states -------------------------------------------------------


def test_a_key_set_from_before_key_states_is_accepted_under_a_trusted_key() -> None:
    old = dataclasses.replace(GOOD, signing_keys={}, signing_version=0)
    data = key_set_body(old)
    parsed = partner_pb2.KeySet.FromString(data)
    assert [(k.version, k.state) for k in parsed.keys] == [(1, ""), (2, "")]
    assert list(parsed.signing_keys) == []
    plain = sign(HSM, ref(1), data)  # a plain signed blob, as an older gateway serves it
    key_set, voucher = opened(plain, 1)
    assert voucher == ref(1)
    assert (key_set.signing_keys, key_set.signing_version, key_set.current_version) == ({}, 0, 2)
    assert key_set.states(Purpose.TRANSPORT) == {1: KeyState.DECRYPT_ONLY, 2: KeyState.ACTIVE}
    assert key_set.states(Purpose.SIGNING) == {}
    refused(
        plain,
        (2,),
        "the key set of frankfurt is signed by frankfurt/signing/1, none of which this gateway "
        "trusts",
    )


# --- every way to break one -----------------------------------------------------------------

Make = Callable[[], Signed]


def _version_on_the_wire(version_bytes: bytes) -> bytes:
    """The good body with transport v1 written by hand with a raw varint version."""
    key = b"\x08" + version_bytes + b"\x12\x41" + point(t_pub(1)) + b"\x1a\x0cdecrypt-only"
    return body(keys=TRANSPORT[1:]) + b"\x12" + bytes([len(key)]) + key


def _forged(version: int) -> Signed:
    """The good body signed by OTHER's key under frankfurt/signing/``version``."""
    return sign(OTHER, ref(version), body())


def _with_kid(kid: str) -> Make:
    return lambda: dataclasses.replace(served(endorsers=()), kid=kid)


def _flipped(where: str, index: int) -> Make:
    def make() -> Signed:
        blob = sign(HSM, ref(2), body())
        data = bytearray(getattr(blob, where))
        data[index] ^= 0x01
        return dataclasses.replace(blob, **{where: bytes(data)})  # type: ignore[arg-type]

    return make


def _truncated(signed_after: bool) -> Make:
    def make() -> Signed:
        data = body()[:-1]
        if signed_after:
            return sign(HSM, ref(2), data)
        return dataclasses.replace(sign(HSM, ref(2), body()), body=data)

    return make


NOT_VERIFIED = "key set of frankfurt signature does not verify under the pinned key of frankfurt"
LISTED_KEY = "does not verify under the key the set lists for it"
KS = "the key set of frankfurt"
UNCOMPRESSED_ONLY = (
    f"{KS} has a transport key v1 that is not a P-256 point in uncompressed form "
    "(65 bytes, 0x04 first)"
)

BROKEN = [
    # -- states
    pytest.param(
        lambda: served(body(keys=[(1, TRANSPORT[0][1], "active"), TRANSPORT[1]])),
        (1,),
        f"{KS} has 2 active transport keys (v1, v2)",
        id="two-active-transport",
    ),
    pytest.param(
        lambda: served(body(signing=[(1, SIGNING[0][1], "active"), SIGNING[1]])),
        (1,),
        f"{KS} has 2 active signing keys (v1, v2)",
        id="two-active-signing",
    ),
    pytest.param(
        lambda: served(body(keys=[TRANSPORT[0], (2, TRANSPORT[1][1], "decrypt-only")])),
        (1,),
        f"{KS} has no active transport key",
        id="no-active-transport",
    ),
    pytest.param(
        lambda: served(body(signing=[SIGNING[0], (2, SIGNING[1][1], "verify-only")])),
        (1,),
        f"{KS} has no active signing key",
        id="no-active-signing",
    ),
    pytest.param(
        lambda: served(body(current=1)),
        (1,),
        f"{KS} names transport v1 current but v2 active",
        id="active-transport-not-current",
    ),
    pytest.param(
        lambda: served(body(current=3)),
        (1,),
        "key set of frankfurt lacks its current version",
        id="current-not-listed",
    ),
    pytest.param(
        lambda: served(body(keys=[(1, TRANSPORT[0][1], "retired"), TRANSPORT[1]])),
        (1,),
        f"{KS} gives transport key v1 the state 'retired'; expected 'active' or 'decrypt-only'",
        id="unknown-transport-state",
    ),
    pytest.param(
        lambda: served(body(keys=[TRANSPORT[0], (2, TRANSPORT[1][1], "Active")])),
        (1,),
        f"{KS} gives transport key v2 the state 'Active'; expected 'active' or 'decrypt-only'",
        id="state-names-are-exact",
    ),
    pytest.param(
        lambda: served(body(signing=[(1, SIGNING[0][1], "decrypt-only"), SIGNING[1]])),
        (2,),
        f"{KS} gives signing key v1 the state 'decrypt-only'; expected 'active' or 'verify-only'",
        id="transport-state-on-a-signing-key",
    ),
    pytest.param(
        lambda: served(body(keys=[(1, TRANSPORT[0][1], ""), TRANSPORT[1]])),
        (1,),
        f"{KS} lists signing keys but not every transport key's state",
        id="states-on-some-keys-only",
    ),
    pytest.param(
        lambda: served(body(signing=[]), endorsers=()),
        (2,),
        f"{KS} gives transport key states but lists no signing keys",
        id="transport-states-without-signing-keys",
    ),
    pytest.param(
        lambda: served(body(keys=[(1, TRANSPORT[0][1], ""), (2, TRANSPORT[1][1], "")], signing=[])),
        (2,),
        f"{KS} lists no signing keys yet carries endorsements",
        id="endorsed-without-signing-keys",
    ),
    # -- versions and points
    pytest.param(
        lambda: served(body(keys=[(0, TRANSPORT[0][1], "decrypt-only"), TRANSPORT[1]])),
        (1,),
        f"{KS} has a transport key of version 0",
        id="transport-version-0",
    ),
    pytest.param(
        lambda: served(body(signing=[(0, SIGNING[0][1], "verify-only"), SIGNING[1]]), endorsers=()),
        (2,),
        f"{KS} has a signing key of version 0",
        id="signing-version-0",
    ),
    pytest.param(
        # 2**32 on the wire: protobuf reads a uint32 modulo 2**32, so it arrives as 0.
        lambda: served(_version_on_the_wire(b"\x80\x80\x80\x80\x10")),
        (1,),
        f"{KS} has a transport key of version 0",
        id="version-out-of-range-on-the-wire",
    ),
    pytest.param(
        lambda: served(body(keys=[TRANSPORT[0], *TRANSPORT])),
        (1,),
        f"{KS} lists version 1 twice (transport keys)",
        id="transport-version-twice",
    ),
    pytest.param(
        lambda: served(body(signing=[SIGNING[0], *SIGNING])),
        (1,),
        f"{KS} lists version 1 twice (signing keys)",
        id="signing-version-twice",
    ),
    pytest.param(
        lambda: served(body(keys=[(1, NOT_ON_CURVE, "decrypt-only"), TRANSPORT[1]])),
        (1,),
        f"{KS} has a transport key v1 that is not a P-256 point",
        id="transport-point-not-on-curve",
    ),
    pytest.param(
        lambda: served(body(keys=[(1, b"", "decrypt-only"), TRANSPORT[1]])),
        (1,),
        UNCOMPRESSED_ONLY,
        id="transport-point-empty",
    ),
    pytest.param(
        lambda: served(
            body(
                keys=[
                    (
                        1,
                        point(ec.generate_private_key(ec.SECP384R1()).public_key()),
                        "decrypt-only",
                    ),
                    TRANSPORT[1],
                ]
            )
        ),
        (1,),
        UNCOMPRESSED_ONLY,
        id="transport-point-on-p384",
    ),
    pytest.param(
        lambda: served(
            body(
                keys=[
                    (
                        1,
                        ec.generate_private_key(ec.SECP256R1())
                        .public_key()
                        .public_bytes(Encoding.X962, PublicFormat.CompressedPoint),
                        "decrypt-only",
                    ),
                    TRANSPORT[1],
                ]
            )
        ),
        (1,),
        UNCOMPRESSED_ONLY,
        id="transport-point-compressed",
    ),
    pytest.param(
        lambda: served(body(signing=[(1, NOT_ON_CURVE, "verify-only"), SIGNING[1]])),
        (2,),
        f"{KS} has a signing key v1 that is not a P-256 point",
        id="signing-point-not-on-curve",
    ),
    pytest.param(
        lambda: served(
            body(keys=[(v, TRANSPORT[1][1], "decrypt-only") for v in range(3, 66)] + TRANSPORT)
        ),
        (1,),
        f"{KS} lists 65 transport keys, more than 64",
        id="65-transport-keys",
    ),
    pytest.param(
        lambda: served(
            body(signing=[(v, SIGNING[0][1], "verify-only") for v in range(3, 66)] + SIGNING)
        ),
        (1,),
        f"{KS} lists 65 signing keys, more than 64",
        id="65-signing-keys",
    ),
    # -- endorsements
    pytest.param(
        lambda: endorsed(sign(HSM, ref(2), body()), sign(HSM, ref(1), body(issued_at=ISSUED + 1))),
        (1,),
        f"{KS}: the endorsement by frankfurt/signing/1 is over other bytes",
        id="endorsement-over-other-bytes",
    ),
    pytest.param(
        lambda: served(endorsers=(1, 3)),
        (2,),
        f"{KS} is endorsed by frankfurt/signing/3, which it does not list as verify-only",
        id="endorsed-by-a-key-not-listed",
    ),
    pytest.param(
        lambda: served(endorsers=(1, 2)),
        (1,),
        f"{KS} is endorsed by frankfurt/signing/2, which it does not list as verify-only",
        id="endorsed-by-the-active-key",
    ),
    pytest.param(
        lambda: served(endorsers=(1, 1)),
        (1,),
        f"{KS} is endorsed twice by frankfurt/signing/1",
        id="endorsed-twice",
    ),
    pytest.param(
        lambda: served(primary=1, endorsers=(2,)),
        (1,),
        f"{KS} is signed by frankfurt/signing/1, but lists frankfurt/signing/2 as its active "
        "signing key",
        id="primary-not-by-the-active-key",
    ),
    # -- signatures
    pytest.param(
        lambda: served(signer=OTHER),
        (1,),
        f"{KS}: the signature by frankfurt/signing/2 {LISTED_KEY}",
        id="primary-by-another-key-vouched-by-the-old-one",
    ),
    pytest.param(
        lambda: served(signer=OTHER),
        (2,),
        f"{NOT_VERIFIED} (signed by frankfurt/signing/2, endorsed by frankfurt/signing/1)",
        id="primary-by-another-key",
    ),
    pytest.param(
        lambda: endorsed(sign(HSM, ref(2), body()), _forged(1)),
        (2,),
        f"{KS}: the signature by frankfurt/signing/1 {LISTED_KEY}",
        id="endorsement-by-another-key",
    ),
    pytest.param(
        lambda: served(
            body(
                signing=[
                    (1, point(OTHER.public_key(Purpose.SIGNING, 1)), "verify-only"),
                    SIGNING[1],
                ]
            )
        ),
        (1,),
        f"{KS} lists another public key for frankfurt/signing/1 than the one this gateway trusts",
        id="lists-another-key-for-the-voucher",
    ),
    pytest.param(
        served,
        (),
        f"{KS} is signed by frankfurt/signing/2, endorsed by frankfurt/signing/1, none of which "
        "this gateway trusts",
        id="no-trusted-signer",
    ),
    # -- whose, and what
    pytest.param(
        lambda: served(body(gateway="lingang")),
        (1,),
        "key set names 'lingang', expected 'frankfurt'",
        id="other-gateway-id",
    ),
    pytest.param(
        _with_kid("lingang/signing/2"),
        (2,),
        "key set of frankfurt is signed by lingang/signing/2, expected a signing key of frankfurt",
        id="kid-of-another-gateway",
    ),
    pytest.param(
        _with_kid("frankfurt/transport/2"),
        (2,),
        "key set of frankfurt is signed by frankfurt/transport/2, expected a signing key of "
        "frankfurt",
        id="kid-of-a-transport-key",
    ),
    pytest.param(
        _with_kid("frankfurt/signing/02"),
        (2,),
        "key set of frankfurt: bad key id: key reference 'frankfurt/signing/02': version must be "
        "a positive integer",
        id="kid-malformed",
    ),
    pytest.param(
        lambda: sign(
            HSM,
            ref(2),
            partner_pb2.Manifest(
                transfer_id="t-1", sender="lingang", receiver=OWNER, plaintext_size=4
            ).SerializeToString(),
        ),
        (2,),
        f"{KS} is not a KeySet message",
        id="wrong-body-type",
    ),
    pytest.param(
        _truncated(signed_after=False),
        (2,),
        f"{NOT_VERIFIED} (signed by frankfurt/signing/2)",
        id="truncated-body",
    ),
    pytest.param(
        _truncated(signed_after=True),
        (2,),
        f"{KS} is not a KeySet message",
        id="truncated-body-signed",
    ),
    pytest.param(
        lambda: dataclasses.replace(sign(HSM, ref(2), body()), signature=b"\x00" * 63),
        (2,),
        "key set of frankfurt: signature must be 64 bytes (signed by frankfurt/signing/2)",
        id="short-signature",
    ),
]


@pytest.mark.parametrize(("make", "trusted", "message"), BROKEN)
def test_a_broken_key_set_is_refused_whole(
    make: Make, trusted: tuple[int, ...], message: str
) -> None:
    refused(make(), trusted, message)


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("body", 0),
        ("body", 5),
        ("body", -1),
        ("signature", 0),
        ("signature", 31),
        ("signature", 63),
    ],
)
def test_a_bit_flip_anywhere_is_refused(where: str, index: int) -> None:
    refused(_flipped(where, index)(), (2,), f"{NOT_VERIFIED} (signed by frankfurt/signing/2)")
    # The same flip, as the independent check sees it.
    with pytest.raises(InvalidSignature):
        independently_verified(_flipped(where, index)(), s_pub(2))
