"""PartnerKeys: a partner's keys followed from the one pinned in gateway.yaml, with a real
ledger and a partner played here (its own keys, the key set it serves, a count of fetches).

What is checked: the configured key's version is learnt from the first blob it verifies; a
signing rotation is followed through the old key's endorsement (the pin moves in the ledger,
one log line, no configuration change); old receipts verify from the stored history after the
partner retired their key, but a retired key vouches for no key set; rollback, a key set from
the future and a key version whose public key changes are refused; a configured key outside the
chain starts a new one (one warning); the cache follows ``keys.key_set_refresh`` and
``forget``; an unknown version costs one fetch, then a refusal.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.config import (
    Address,
    GatewayConfig,
    HsmConfig,
    Identity,
    KeysConfig,
    Listen,
    PartnerConfig,
    TlsConfig,
)
from gateway.documents import EndorsedKeySet, KeySet, serve_key_set
from gateway.errors import SignatureError
from gateway.keys import KeyRef, Purpose
from gateway.ledger import Ledger
from gateway.partner_keys import PartnerKey, PartnerKeys
from gateway.secrets import PinSource
from gateway.signed import Signed, sign
from gateway.transfer import unreachable

NOW = 1_800_000_000
REFRESH = 300
LEEWAY = 60  # Limits.passport_leeway_seconds, the default


def point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass
class Frankfurt:
    """The partner: a private key per version and purpose, the versions in service (the first
    of each purpose active), and what it serves."""

    now: list[float]
    signing: dict[int, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    transport: dict[int, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    active: dict[Purpose, int] = field(default_factory=dict)
    fetches: int = 0
    retired: dict[tuple[Purpose, int], ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    serving: Signed | None = None  # served instead of the current key set, if set
    down: bool = False

    def __post_init__(self) -> None:
        for purpose in (Purpose.SIGNING, Purpose.TRANSPORT):
            self.rotate(purpose)

    def _keys(self, purpose: Purpose) -> dict[int, ec.EllipticCurvePrivateKey]:
        return self.signing if purpose is Purpose.SIGNING else self.transport

    def rotate(self, purpose: Purpose) -> int:
        keys = self._keys(purpose)
        version = max([*keys, 0]) + 1
        keys[version] = ec.generate_private_key(ec.SECP256R1())
        self.active[purpose] = version
        return version

    def retire(self, purpose: Purpose, version: int) -> None:
        assert version != self.active[purpose]
        self.retired[(purpose, version)] = self._keys(purpose).pop(version)

    def remake(self, purpose: Purpose, version: int) -> None:
        """Another key under a version already used (a token wiped and re-made)."""
        self._keys(purpose)[version] = ec.generate_private_key(ec.SECP256R1())

    def public(self, purpose: Purpose, version: int) -> ec.EllipticCurvePublicKey:
        return self._keys(purpose)[version].public_key()

    def sign_digest(self, version: int, digest: bytes) -> bytes:
        der = self.signing[version].sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def key_set(self, issued_at: int | None = None) -> EndorsedKeySet:
        return serve_key_set(
            self,
            KeySet(
                gateway_id="frankfurt",
                keys={v: k.public_key() for v, k in self.transport.items()},
                current_version=self.active[Purpose.TRANSPORT],
                issued_at=int(self.now[0]) if issued_at is None else issued_at,
                signing_keys={v: k.public_key() for v, k in self.signing.items()},
                signing_version=self.active[Purpose.SIGNING],
            ),
        )

    def receipt(self, version: int, text: str = "receipt of t-1") -> Signed:
        return sign(self, KeyRef("frankfurt", Purpose.SIGNING, version), text.encode())

    def fetch(self, partner: PartnerConfig) -> Signed:
        assert partner.id == "frankfurt"
        self.fetches += 1
        if self.down:
            raise unreachable("frankfurt", "key_set", "connection refused")
        return self.serving if self.serving is not None else self.key_set()


@dataclass
class World:
    config: GatewayConfig
    keys: PartnerKeys
    frankfurt: Frankfurt
    partner: PartnerConfig
    ledger: Ledger
    now: list[float]

    def later(self, seconds: float) -> None:
        self.now[0] += seconds
        self.frankfurt.now[0] = self.now[0]

    def known(self) -> list[tuple[str, str, str]]:
        """(key ref, state, source) of every version learnt of frankfurt."""
        return [(str(k.ref), k.state, k.source) for k in self.keys.known("frankfurt")]

    def pinned(self) -> PartnerKey:
        pinned = self.keys.pinned("frankfurt")
        assert pinned is not None
        return pinned


def config(root: Path, pinned: ec.EllipticCurvePublicKey) -> GatewayConfig:
    unused = root / "unused"
    return GatewayConfig(
        path=root / "gateway.yaml",
        gateway=Identity("lingang", "CN-SH"),
        listen=Listen(Address("127.0.0.1", 0), root / "local.sock"),
        tls=TlsConfig(unused, unused),
        hsm=HsmConfig(unused, "t", PinSource("env", "XBGW_TEST_PIN")),
        state_dir=root,
        partners=(
            PartnerConfig(
                id="frankfurt",
                endpoint=Address("127.0.0.1", 1),
                jurisdiction="EU-DE",
                ca=unused,
                ca_pem=b"",
                identity="frankfurt.example",
                signing_key=unused,
                signing_public_key=pinned,
            ),
        ),
        keys=KeysConfig(key_set_refresh=REFRESH),
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    now = [float(NOW)]
    frankfurt = Frankfurt([float(NOW)])
    cfg = config(tmp_path, frankfurt.public(Purpose.SIGNING, 1))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    keys = PartnerKeys(cfg, ledger, frankfurt.fetch, clock=lambda: now[0])
    try:
        yield World(cfg, keys, frankfurt, cfg.partner("frankfurt"), ledger, now)
    finally:
        ledger.close()


def key_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "xbgw.keys"]


def refused(call: Callable[[], object], message: str) -> None:
    with pytest.raises(SignatureError) as caught:
        call()
    assert str(caught.value) == message


S1, S2, S3 = (f"frankfurt/signing/{v}" for v in (1, 2, 3))
T1, T2 = "frankfurt/transport/1", "frankfurt/transport/2"


# --- the root -------------------------------------------------------------------------------


def test_first_use_learns_the_configured_keys_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file holds no version: the first receipt the configured key verifies names it."""
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    frankfurt = Frankfurt([float(NOW)])
    frankfurt.rotate(Purpose.SIGNING)  # frankfurt signs with v2 by the time we meet it
    cfg = config(tmp_path, frankfurt.public(Purpose.SIGNING, 2))
    with contextlib.closing(Ledger(tmp_path / "ledger.sqlite3")) as ledger:
        keys = PartnerKeys(cfg, ledger, frankfurt.fetch, clock=lambda: NOW)
        partner = cfg.partner("frankfurt")
        assert keys.pinned("frankfurt") is None
        assert keys.verify(partner, frankfurt.receipt(2), "receipt") == KeyRef(
            "frankfurt", Purpose.SIGNING, 2
        )
        assert frankfurt.fetches == 0
        [learnt] = keys.known("frankfurt")
        assert learnt == PartnerKey(
            KeyRef("frankfurt", Purpose.SIGNING, 2),
            point(frankfurt.public(Purpose.SIGNING, 2)),
            "active",
            NOW,
            "config",
        )
        assert keys.pinned("frankfurt") == learnt
        assert learnt.origin == "pinned in gateway.yaml"
        assert key_lines(caplog) == [
            (logging.INFO, f"partner signing key pinned: {S2} (the key in gateway.yaml)")
        ]
        # Learnt once: the next receipt logs nothing more and fetches nothing.
        keys.verify(partner, frankfurt.receipt(2, "receipt of t-2"), "receipt")
        assert len(key_lines(caplog)) == 1 and frankfurt.fetches == 0


def test_first_key_set_learns_the_root_and_the_transport_keys(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    key_set = world.keys.key_set(world.partner)
    assert key_set.current_version == 1 and world.frankfurt.fetches == 1
    assert world.known() == [(S1, "active", "config"), (T1, "active", "key set v1")]
    assert key_lines(caplog) == [
        (logging.INFO, f"partner signing key pinned: {S1} (the key in gateway.yaml)")
    ]
    assert world.ledger.partner_key_set_issued("frankfurt") == NOW


# --- following a rotation -------------------------------------------------------------------


def test_a_signing_rotation_is_followed_through_the_old_keys_endorsement(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    world.keys.key_set(world.partner)
    world.frankfurt.rotate(Purpose.SIGNING)
    world.later(REFRESH)
    caplog.clear()
    world.keys.key_set(world.partner)
    assert world.frankfurt.fetches == 2
    pinned = world.pinned()
    assert (str(pinned.ref), pinned.source) == (S2, "key set v1")
    assert pinned.public_point == point(world.frankfurt.public(Purpose.SIGNING, 2))
    assert pinned.origin == "learnt from a key set vouched for by frankfurt/signing/1"
    assert world.known() == [
        (S1, "verify-only", "config"),
        (S2, "active", "key set v1"),
        (T1, "active", "key set v1"),
    ]
    assert key_lines(caplog) == [
        (logging.INFO, f"partner signing key followed: {S2} (endorsed by {S1})")
    ]
    # No configuration change: the file still pins v1's key.
    assert point(world.partner.signing_public_key) == point(
        world.frankfurt.public(Purpose.SIGNING, 1)
    )
    # Receipts of the new key verify at once; the same key set again logs nothing.
    assert str(world.keys.verify(world.partner, world.frankfurt.receipt(2), "receipt")) == S2
    world.keys.forget("frankfurt")
    world.keys.key_set(world.partner)
    assert world.frankfurt.fetches == 3 and len(key_lines(caplog)) == 1

    # The partner retires v1 and rotates again: the chain goes on from v2, still no edit.
    world.frankfurt.retire(Purpose.SIGNING, 1)
    world.frankfurt.rotate(Purpose.SIGNING)
    world.later(REFRESH)
    world.keys.key_set(world.partner)
    assert str(world.pinned().ref) == S3
    assert world.known()[:3] == [
        (S1, "retired", "config"),
        (S2, "verify-only", "key set v1"),
        (S3, "active", "key set v2"),
    ]
    assert key_lines(caplog)[-1] == (
        logging.INFO,
        f"partner signing key followed: {S3} (endorsed by {S2})",
    )


def test_a_key_set_signed_by_the_new_key_alone_is_followed_once_it_is_known(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Followed by its own signature when this gateway learnt the new key already."""
    world.keys.key_set(world.partner)
    world.frankfurt.rotate(Purpose.SIGNING)
    world.later(REFRESH)
    world.keys.key_set(world.partner)  # v2 learnt through v1's endorsement
    world.frankfurt.retire(Purpose.SIGNING, 1)
    world.later(REFRESH)
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    key_set = world.keys.key_set(world.partner)
    assert sorted(key_set.signing_keys) == [2]
    assert world.known()[:2] == [(S1, "retired", "config"), (S2, "active", "key set v1")]
    assert key_lines(caplog) == []  # nothing moved


# --- history --------------------------------------------------------------------------------


def test_old_receipts_verify_after_the_partner_retired_their_key(world: World) -> None:
    old = world.frankfurt.receipt(1)
    world.keys.key_set(world.partner)
    world.frankfurt.rotate(Purpose.SIGNING)
    world.later(REFRESH)
    world.keys.key_set(world.partner)
    world.frankfurt.retire(Purpose.SIGNING, 1)
    world.later(REFRESH)
    world.keys.key_set(world.partner)
    assert (S1, "retired", "config") in world.known()
    fetches = world.frankfurt.fetches
    assert str(world.keys.verify(world.partner, old, "receipt")) == S1
    assert world.frankfurt.fetches == fetches
    # From the stored history alone: a gateway restarted with no link verifies it too.
    offline = PartnerKeys(world.config, world.ledger, None, clock=lambda: world.now[0])
    assert str(offline.verify(world.partner, old, "receipt")) == S1
    # History is not a blank cheque: a receipt under v1 that v1 did not sign is refused.
    forged = replace(old, body=b"receipt of t-9")
    refused(
        lambda: world.keys.verify(world.partner, forged, "receipt"),
        "receipt signature does not verify under the pinned key of frankfurt "
        f"({S1}, pinned in gateway.yaml)",
    )


def followed_to_v2(world: World, *, retire_v1: bool) -> None:
    """Frankfurt rotates signing (v1 -> v2) and this gateway follows; then, if asked, frankfurt
    retires v1 and this gateway learns that too."""
    world.keys.key_set(world.partner)
    world.frankfurt.rotate(Purpose.SIGNING)
    world.later(REFRESH)
    world.keys.key_set(world.partner)
    if retire_v1:
        world.frankfurt.retire(Purpose.SIGNING, 1)
        world.later(REFRESH)
        world.keys.key_set(world.partner)


NOT_TRUSTED_HINT = (
    "if frankfurt replaced its signing key without endorsing the new one with a key trusted "
    "here, pin its new key in gateway.yaml (partners: frankfurt: signing_key)"
)


def test_a_retired_version_no_longer_vouches_for_a_key_set(world: World) -> None:
    followed_to_v2(world, retire_v1=True)
    before = world.known()
    # Whoever holds the retired v1 (it leaked once replaced) makes a key set of its own.
    thief = Frankfurt([world.now[0]])
    thief.signing = {1: world.frankfurt.retired[(Purpose.SIGNING, 1)]}
    world.frankfurt.serving = thief.key_set()
    world.keys.forget("frankfurt")
    refused(
        lambda: world.keys.key_set(world.partner),
        f"the key set of frankfurt is signed by {S1}, none of which this gateway trusts (it "
        f"trusts {S2} (learnt from a key set vouched for by {S1})); {NOT_TRUSTED_HINT}",
    )
    assert world.known() == before
    # ... though gateway.yaml still pins that very key: the ledger knows it was retired.
    assert point(world.partner.signing_public_key) == point(thief.public(Purpose.SIGNING, 1))


# --- refusals -------------------------------------------------------------------------------


def test_a_key_set_older_than_the_last_one_accepted_is_refused(world: World) -> None:
    world.keys.key_set(world.partner)
    replayed = world.frankfurt.key_set()  # issued at NOW, lists transport v1 active
    world.frankfurt.rotate(Purpose.TRANSPORT)
    world.later(REFRESH)
    assert world.keys.key_set(world.partner).current_version == 2
    world.frankfurt.serving = replayed
    world.keys.forget("frankfurt")
    refused(
        lambda: world.keys.key_set(world.partner),
        f"the key set of frankfurt was issued at {when(NOW)}, before the one this gateway "
        f"accepted already (issued at {when(NOW + REFRESH)}): refused as a rollback",
    )
    assert (T1, "decrypt-only", "key set v1") in world.known()
    assert (T2, "active", "key set v1") in world.known()
    assert world.ledger.partner_key_set_issued("frankfurt") == NOW + REFRESH
    # Issued at the same second as the last one accepted: no rollback.
    world.frankfurt.serving = None
    assert world.keys.key_set(world.partner).issued_at == NOW + REFRESH


def test_a_key_set_of_the_same_second_cannot_take_back_a_rotation(world: World) -> None:
    """Issued in the same second as the newest accepted (issued_at is in seconds): accepted,
    unless it names an older active version than the one already followed."""
    world.keys.key_set(world.partner)
    replayed = world.frankfurt.key_set()  # issued at NOW, lists transport v1 active
    world.frankfurt.rotate(Purpose.TRANSPORT)  # the same second: frankfurt's clock stands
    world.keys.forget("frankfurt")
    assert world.keys.key_set(world.partner).current_version == 2
    world.frankfurt.serving = replayed
    world.keys.forget("frankfurt")
    refused(
        lambda: world.keys.key_set(world.partner),
        "the key set of frankfurt names transport v1 active, but this gateway already follows "
        "v2: refused as a rollback",
    )
    assert (T2, "active", "key set v1") in world.known()


def test_a_key_set_issued_ahead_of_this_gateways_clock_is_refused(world: World) -> None:
    world.frankfurt.now[0] = NOW + LEEWAY + 1
    refused(
        lambda: world.keys.key_set(world.partner),
        f"the key set of frankfurt was issued at {when(NOW + LEEWAY + 1)}, {LEEWAY + 1} s ahead "
        "of this gateway's clock (more than limits.passport_leeway_seconds, 60 s); check both "
        "clocks",
    )
    assert world.known() == []  # nothing learnt, not even the root's version
    assert world.ledger.partner_key_set_issued("frankfurt") is None
    world.frankfurt.now[0] = NOW + LEEWAY  # within the leeway: accepted
    assert world.keys.key_set(world.partner).issued_at == NOW + LEEWAY


def test_a_key_version_whose_public_key_changes_is_refused(world: World) -> None:
    followed_to_v2(world, retire_v1=False)
    before = world.known()
    original = world.frankfurt.transport[1]
    world.frankfurt.remake(Purpose.TRANSPORT, 1)
    world.later(REFRESH)
    refused(
        lambda: world.keys.key_set(world.partner),
        f"the key set of frankfurt lists {T1} with another public key than the one learnt from "
        f"a key set vouched for by {S1}; a key version never changes: refused",
    )
    world.frankfurt.transport[1] = original
    world.frankfurt.remake(Purpose.SIGNING, 2)  # signed by the new v2, endorsed by v1
    refused(
        lambda: world.keys.key_set(world.partner),
        f"the key set of frankfurt lists {S2} with another public key than the one learnt from "
        f"a key set vouched for by {S1}; a key version never changes: refused",
    )
    assert world.known() == before


# --- re-pin ---------------------------------------------------------------------------------


def test_a_configured_key_outside_the_chain_starts_a_new_one(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    followed_to_v2(world, retire_v1=False)
    # Frankfurt lost its token and started over, endorsing nothing.
    fresh = Frankfurt([world.now[0]])
    fresh.signing = {3: fresh.signing[1]}
    fresh.active[Purpose.SIGNING] = 3
    world.frankfurt.serving = fresh.key_set(issued_at=NOW - 1000)
    world.keys.forget("frankfurt")
    refused(
        lambda: world.keys.key_set(world.partner),
        f"the key set of frankfurt is signed by {S3}, none of which this gateway trusts (it "
        f"trusts {S1} (pinned in gateway.yaml), {S2} (learnt from a key set vouched for by "
        f"{S1})); {NOT_TRUSTED_HINT}",
    )
    # The operator pins the new key.
    repinned = replace(world.partner, signing_public_key=fresh.public(Purpose.SIGNING, 3))
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    key_set = world.keys.key_set(repinned)
    warnings = [line for line in key_lines(caplog) if line[0] >= logging.WARNING]
    assert warnings == [
        (
            logging.WARNING,
            "partner signing key re-pinned: the key in gateway.yaml for frankfurt is none of the "
            f"keys learnt of it ({S1}, {S2}); that chain is dropped and a new one starts from the "
            "configured key",
        )
    ]
    assert key_set.issued_at == NOW - 1000  # the old chain's rollback mark went with it
    assert world.known() == [(S3, "active", "config"), (T1, "active", "key set v3")]
    assert world.pinned().public_point == point(fresh.public(Purpose.SIGNING, 3))
    # Once: the next uses of the new pin warn no more.
    world.keys.forget("frankfurt")
    world.keys.key_set(repinned)
    world.keys.verify(repinned, fresh.receipt(3), "receipt")
    assert [line for line in key_lines(caplog) if line[0] >= logging.WARNING] == warnings


def test_a_configured_key_already_in_the_chain_changes_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    followed_to_v2(world, retire_v1=True)
    before = world.known()
    caught_up = replace(
        world.partner, signing_public_key=world.frankfurt.public(Purpose.SIGNING, 2)
    )
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    fetches = world.frankfurt.fetches
    world.keys.key_set(caught_up)  # another root: the cached key set is not used under it
    assert world.frankfurt.fetches == fetches + 1
    assert world.known() == before
    assert key_lines(caplog) == []
    assert str(world.pinned().ref) == S2


# --- cache ----------------------------------------------------------------------------------


def test_the_key_set_is_cached_for_key_set_refresh_seconds(world: World) -> None:
    first = world.keys.key_set(world.partner)
    world.later(REFRESH - 1)
    assert world.keys.key_set(world.partner) is first
    assert world.frankfurt.fetches == 1
    world.later(1)
    assert world.keys.key_set(world.partner) is not first
    assert world.frankfurt.fetches == 2
    world.keys.forget("lingang")  # another partner's: nothing of frankfurt's
    world.keys.key_set(world.partner)
    assert world.frankfurt.fetches == 2
    world.keys.forget("frankfurt")
    world.keys.key_set(world.partner)
    world.keys.key_set(world.partner)
    assert world.frankfurt.fetches == 3
    world.now[0] -= 1  # this gateway's clock stepped back: the age is unknown, fetch
    world.keys.key_set(world.partner)
    assert world.frankfurt.fetches == 4
    world.keys.reconfigure(replace(world.config, keys=KeysConfig(key_set_refresh=0)))
    world.keys.key_set(world.partner)
    world.keys.key_set(world.partner)
    assert world.frankfurt.fetches == 6


def test_a_refused_key_set_is_not_cached(world: World) -> None:
    world.frankfurt.now[0] = NOW + LEEWAY + 1
    for _ in range(2):
        with pytest.raises(SignatureError):
            world.keys.key_set(world.partner)
    assert world.frankfurt.fetches == 2


# --- verifying documents --------------------------------------------------------------------


def test_a_first_receipt_by_a_newer_key_is_followed_from_the_configured_one(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    world.frankfurt.rotate(Purpose.SIGNING)  # frankfurt moved on before the first receipt
    assert str(world.keys.verify(world.partner, world.frankfurt.receipt(2), "receipt")) == S2
    assert world.frankfurt.fetches == 1
    assert world.known() == [
        (S1, "verify-only", "config"),
        (S2, "active", "key set v1"),
        (T1, "active", "key set v1"),
    ]
    assert key_lines(caplog) == [
        (logging.INFO, f"partner signing key pinned: {S1} (the key in gateway.yaml)"),
        (logging.INFO, f"partner signing key followed: {S2} (endorsed by {S1})"),
    ]


def test_an_unknown_version_costs_one_fetch_then_a_refusal(world: World) -> None:
    world.keys.verify(world.partner, world.frankfurt.receipt(1), "receipt")
    assert world.frankfurt.fetches == 0
    stranger = Frankfurt([float(NOW)])
    stranger.signing = {7: stranger.signing[1]}
    stray = stranger.receipt(7)
    unknown = "receipt is signed by frankfurt/signing/7, a version of frankfurt this gateway "
    refused(
        lambda: world.keys.verify(world.partner, stray, "receipt"),
        f"{unknown}has not learnt (it knows {S1})",
    )
    assert world.frankfurt.fetches == 1
    # A version the fetched key set lists verifies after that one fetch.
    world.frankfurt.rotate(Purpose.SIGNING)
    assert str(world.keys.verify(world.partner, world.frankfurt.receipt(2), "receipt")) == S2
    assert world.frankfurt.fetches == 2
    # The fetch failing is said too.
    world.frankfurt.down = True
    refused(
        lambda: world.keys.verify(world.partner, stray, "receipt"),
        f"{unknown}has not learnt (it knows {S1}, {S2}); the key set of frankfurt, fetched to "
        "learn its keys, did not help: partner frankfurt is unreachable during the key-set "
        "request: connection refused",
    )
    assert world.frankfurt.fetches == 3
    # With no link (a receiver's view), refused at once.
    offline = PartnerKeys(world.config, world.ledger, None, clock=lambda: world.now[0])
    refused(
        lambda: offline.verify(world.partner, stray, "receipt"),
        f"{unknown}has not learnt (it knows {S1}, {S2})",
    )
    assert world.frankfurt.fetches == 3


def test_a_failing_signature_refetches_only_when_asked(world: World) -> None:
    world.keys.verify(world.partner, world.frankfurt.receipt(1), "receipt")
    bad = replace(world.frankfurt.receipt(1), body=b"receipt of t-2")
    problem = (
        "receipt signature does not verify under the pinned key of frankfurt "
        f"({S1}, pinned in gateway.yaml)"
    )
    refused(lambda: world.keys.verify(world.partner, bad, "receipt"), problem)
    assert world.frankfurt.fetches == 0
    refused(
        lambda: world.keys.verify(world.partner, bad, "receipt", refetch_on_failure=True), problem
    )
    assert world.frankfurt.fetches == 1
    world.frankfurt.down = True
    refused(
        lambda: world.keys.verify(world.partner, bad, "receipt", refetch_on_failure=True),
        f"{problem}; the key set of frankfurt, fetched to learn its keys, did not help: partner "
        "frankfurt is unreachable during the key-set request: connection refused",
    )
    assert world.frankfurt.fetches == 2


def test_a_blob_of_another_gateway_is_refused_without_a_fetch(world: World) -> None:
    blob = sign(world.frankfurt, KeyRef("lingang", Purpose.SIGNING, 1), b"receipt")
    refused(
        lambda: world.keys.verify(world.partner, blob, "receipt", refetch_on_failure=True),
        "receipt is signed by lingang/signing/1, expected a signing key of frankfurt",
    )
    assert world.frankfurt.fetches == 0 and world.known() == []


def test_an_unverifiable_first_blob_learns_nothing(world: World) -> None:
    stranger = Frankfurt([float(NOW)])
    world.frankfurt.down = True
    refused(
        lambda: world.keys.verify(world.partner, stranger.receipt(1), "receipt"),
        "receipt signature does not verify under the pinned key of frankfurt (signed by "
        f"{S1}, a version this gateway has not learnt, and not by the key pinned in "
        "gateway.yaml); the key set of frankfurt, fetched to learn its keys, did not help: "
        "partner frankfurt is unreachable during the key-set request: connection refused",
    )
    assert world.known() == []


# --- the chain kept in memory ---------------------------------------------------------------


def _counting_reads(world: World, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of frankfurt's keys from the ledger, from now on."""
    reads: list[str] = []
    real = world.ledger.partner_keys

    def partner_keys(partner: str) -> list[tuple[Purpose, int, bytes, str, int, str]]:
        reads.append(partner)
        return real(partner)

    monkeypatch.setattr(world.ledger, "partner_keys", partner_keys)
    return reads


def test_the_chain_is_read_once_until_a_key_is_learnt_or_the_pin_changes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.keys.key_set(world.partner)
    reads = _counting_reads(world, monkeypatch)
    for n in range(3):  # receipts and cached key sets: no ledger read after the first
        world.keys.verify(world.partner, world.frankfurt.receipt(1, f"receipt of t-{n}"), "receipt")
        world.keys.key_set(world.partner)
    assert len(reads) == 1
    # A rotation: the fetch reads the ledger afresh, and what it records drops the kept chain.
    world.frankfurt.rotate(Purpose.SIGNING)
    world.later(REFRESH)
    world.keys.key_set(world.partner)
    assert str(world.keys.verify(world.partner, world.frankfurt.receipt(2), "receipt")) == S2
    settled = len(reads)
    world.keys.verify(world.partner, world.frankfurt.receipt(2, "receipt of t-9"), "receipt")
    assert len(reads) == settled
    # A reload (another configured key object, here the same key): read again, nothing moves.
    reloaded = replace(world.partner, signing_public_key=world.frankfurt.public(Purpose.SIGNING, 1))
    assert str(world.keys.verify(reloaded, world.frankfurt.receipt(2), "receipt")) == S2
    assert len(reads) == settled + 1
    # A configured key outside the chain (a re-pin) is seen at once through a kept chain.
    fresh = ec.generate_private_key(ec.SECP256R1())
    world.frankfurt.signing[7] = fresh
    repinned = replace(world.partner, signing_public_key=fresh.public_key())
    assert str(world.keys.verify(repinned, world.frankfurt.receipt(7), "receipt")) == (
        "frankfurt/signing/7"
    )
    assert [k[0] for k in world.known()] == ["frankfurt/signing/7"]


def test_a_kept_chain_sees_what_another_view_of_the_ledger_learnt(world: World) -> None:
    """Two views of one ledger (the sender's and a receiver's of their own): a version the
    other learnt is found by reading again, with no fetch and no refusal."""
    offline = PartnerKeys(world.config, world.ledger, None, clock=lambda: world.now[0])
    world.keys.key_set(world.partner)
    assert str(offline.verify(world.partner, world.frankfurt.receipt(1), "receipt")) == S1
    world.frankfurt.rotate(Purpose.SIGNING)
    world.later(REFRESH)
    world.keys.key_set(world.partner)  # the other view follows frankfurt to v2
    fetches = world.frankfurt.fetches
    assert str(offline.verify(world.partner, world.frankfurt.receipt(2), "receipt")) == S2
    assert world.frankfurt.fetches == fetches


def test_no_chain_is_kept_over_a_shared_ledger(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another node may learn a key at any time: every use reads the ledger."""
    monkeypatch.setattr(Ledger, "shared", property(lambda self: True))
    keys = PartnerKeys(world.config, world.ledger, world.frankfurt.fetch, clock=lambda: NOW)
    reads = _counting_reads(world, monkeypatch)
    for n in range(3):
        keys.verify(world.partner, world.frankfurt.receipt(1, f"receipt of t-{n}"), "receipt")
    assert len(reads) == 3


def test_signing_keys_are_every_version_learnt_else_the_configured_one(world: World) -> None:
    """What a partner's audit checkpoints may be signed with (``Sender`` checks commit proofs
    under them): retired versions too, as a checkpoint may predate a rotation."""
    assert [point(k) for k in world.keys.signing_keys(world.partner)] == [
        point(world.partner.signing_public_key)
    ]
    followed_to_v2(world, retire_v1=True)
    assert [point(k) for k in world.keys.signing_keys(world.partner)] == [
        point(world.frankfurt.retired[(Purpose.SIGNING, 1)].public_key()),
        point(world.frankfurt.public(Purpose.SIGNING, 2)),
    ]
