"""The key ring over a real ledger: adoption, rotate, retire, destroy, due -- and their logs.

The HSM is :class:`Token`, a few lists that record what was asked of them and can fail on
purpose; the ledger is a real SQLite file; the clock is a number the tests move. Stored data
keys that block a storage version are real XBGW-STREAM-1 headers (wrapped by a
``SoftwareHsm``), so the ledger derives their versions as it does in service.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import envelope
from gateway.config import DAY, KeysConfig
from gateway.errors import HsmError, KeyLifecycleError, KeyNotFoundError, StorageError
from gateway.keyring import KeyRing
from gateway.keys import CurrentKeys, KeyRef, KeyState, KeyVersion, Purpose
from gateway.ledger import Ledger
from gateway.logs import JsonFormatter
from gateway.signed import Signed
from tests.fakes import SoftwareHsm

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z: adoption
T1 = T0 + DAY  # the rotation
ME = "frankfurt"
DECRYPT_ONLY, VERIFY_ONLY = KeyState.DECRYPT_ONLY, KeyState.VERIFY_ONLY
TRANSPORT, SIGNING, STORAGE = Purpose.TRANSPORT, Purpose.SIGNING, Purpose.STORAGE


class Crash(Exception):
    """The process died here."""


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


class Token:
    """A ``KeyAdmin``: the versions on the token, what was made and destroyed, and a switch
    that makes the next ``generate`` fail as a broken HSM would."""

    def __init__(
        self,
        transport: tuple[int, ...] = (1,),
        signing: tuple[int, ...] = (1,),
        storage: tuple[int, ...] = (1,),
    ) -> None:
        self.held = {TRANSPORT: list(transport), SIGNING: list(signing), STORAGE: list(storage)}
        self.generated: list[tuple[Purpose, int]] = []
        self.destroyed: list[tuple[Purpose, int]] = []
        self.fail_generate = False

    def versions(self, purpose: Purpose) -> list[int]:
        return sorted(self.held[purpose])

    def generate(self, purpose: Purpose, version: int | None = None) -> int:
        if self.fail_generate:
            self.fail_generate = False
            raise HsmError("C_GenerateKey failed: CKR_DEVICE_ERROR")
        made = version if version is not None else max(self.held[purpose], default=0) + 1
        assert made not in self.held[purpose], f"{purpose} v{made} made twice"
        self.held[purpose].append(made)
        self.generated.append((purpose, made))
        return made

    def destroy(self, purpose: Purpose, version: int) -> None:
        self.held[purpose].remove(version)
        self.destroyed.append((purpose, version))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    made = Ledger(tmp_path / "ledger.sqlite3")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def ring_of(
    ledger: Ledger,
    token: Token,
    clock: Clock,
    policy: KeysConfig | None = None,
    pinned: dict[Purpose, int] | None = None,
) -> KeyRing:
    return KeyRing(ME, ledger, token, policy, pinned=pinned, clock=clock)


def states(ledger: Ledger, purpose: Purpose | None = None) -> dict[str, KeyState]:
    """What the ledger holds (not the ring's memory)."""
    return {
        f"{v.purpose.value}/{v.version}": v.state
        for v in ledger.key_versions()
        if purpose is None or v.purpose is purpose
    }


def found(ring: KeyRing, purpose: Purpose, version: int) -> KeyVersion:
    key = ring.find(purpose, version)
    assert key is not None, f"{purpose}/{version} unknown"
    return key


def refusal(ring: KeyRing, purpose: Purpose, version: int) -> str:
    with pytest.raises(KeyLifecycleError) as refused:
        ring.retire(purpose, version)
    return str(refused.value)


def json_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The records on xbgw.keys as the daemon writes them (each must be one JSON object)."""
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == "xbgw.keys"]
    assert all("\n" not in line for line in lines)
    return [json.loads(line) for line in lines]


# -- adoption --------------------------------------------------------------------------------


def test_adoption_makes_the_newest_version_active_and_the_others_replaced(
    ledger: Ledger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    ring = ring_of(ledger, Token(transport=(1, 2, 3), signing=(1, 2)), clock)
    assert states(ledger) == {
        "signing/1": VERIFY_ONLY,
        "signing/2": KeyState.ACTIVE,
        "storage/1": KeyState.ACTIVE,
        "transport/1": DECRYPT_ONLY,
        "transport/2": DECRYPT_ONLY,
        "transport/3": KeyState.ACTIVE,
    }
    assert ring.current() == CurrentKeys(transport=3, signing=2, storage=1)
    assert found(ring, TRANSPORT, 3) == KeyVersion(TRANSPORT, 3, KeyState.ACTIVE, T0, T0)
    assert found(ring, TRANSPORT, 1) == KeyVersion(TRANSPORT, 1, DECRYPT_ONLY, T0)
    assert ring.in_service(TRANSPORT) == [1, 2, 3]
    lines = json_lines(caplog)
    assert [(line["key_ref"], line["outcome"]) for line in lines] == [
        ("frankfurt/transport/1", "decrypt-only"),
        ("frankfurt/transport/2", "decrypt-only"),
        ("frankfurt/transport/3", "active"),
        ("frankfurt/signing/1", "verify-only"),
        ("frankfurt/signing/2", "active"),
        ("frankfurt/storage/1", "active"),
    ]
    assert lines[2]["msg"] == "key adopted: frankfurt/transport/3"


def test_adoption_takes_the_pinned_version(ledger: Ledger, clock: Clock) -> None:
    token = Token(transport=(1, 2, 3), signing=(1, 2))
    ring = ring_of(ledger, token, clock, pinned={TRANSPORT: 2, SIGNING: 1})
    assert states(ledger) == {
        "signing/1": KeyState.ACTIVE,
        "signing/2": VERIFY_ONLY,
        "storage/1": KeyState.ACTIVE,
        "transport/1": DECRYPT_ONLY,
        "transport/2": KeyState.ACTIVE,
        "transport/3": DECRYPT_ONLY,
    }
    assert ring.current() == CurrentKeys(transport=2, signing=1, storage=1)
    assert token.generated == []


@pytest.mark.parametrize(
    ("token", "pinned", "message"),
    [
        pytest.param(
            Token(transport=(1, 2)),
            {TRANSPORT: 7},
            "hsm.keys pins xbgw-transport v7, which is not on the token (versions there: [1, 2])",
            id="pin-not-on-token",
        ),
        pytest.param(
            Token(storage=()),
            None,
            "the HSM token has no xbgw-storage key (run 'xbgw keys init')",
            id="empty-token",
        ),
    ],
)
def test_adoption_refuses_what_it_cannot_adopt(
    ledger: Ledger, clock: Clock, token: Token, pinned: dict[Purpose, int] | None, message: str
) -> None:
    with pytest.raises(KeyNotFoundError) as refused:
        ring_of(ledger, token, clock, pinned=pinned)
    assert str(refused.value) == message


def test_after_adoption_the_ledger_decides_and_an_unknown_version_stays_pending(
    ledger: Ledger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    token = Token(transport=(1, 2, 3))
    ring_of(ledger, token, clock)
    token.held[TRANSPORT].append(4)  # made by hand on the token, not by xbgw
    clock.now = T1
    caplog.set_level(logging.INFO, logger="xbgw.keys")

    ring = ring_of(ledger, token, clock, pinned={TRANSPORT: 1})  # a pin no longer decides
    assert ring.current() == CurrentKeys(transport=3, signing=1, storage=1)
    assert found(ring, TRANSPORT, 4) == KeyVersion(TRANSPORT, 4, KeyState.PENDING, T1)
    assert found(ring, TRANSPORT, 1).state is DECRYPT_ONLY
    assert ring.in_service(TRANSPORT) == [1, 2, 3]  # what the key set lists
    assert not ring.opens(TRANSPORT, 4)
    [line] = json_lines(caplog)
    assert line == {
        "ts": line["ts"],
        "level": "warning",
        "logger": "xbgw.keys",
        "msg": "key found on the token but not in the key state: pending, unused: "
        "frankfurt/transport/4",
        "outcome": "pending",
        "key_ref": "frankfurt/transport/4",
    }

    caplog.clear()
    ring = ring_of(ledger, token, clock)  # recorded once, not again
    assert json_lines(caplog) == []
    assert ring.current().transport == 3
    assert ring.due(T1) == []  # and it is not a reason to rotate


@pytest.mark.parametrize("pinned", [None, 1], ids=["newest", "pinned-v1"])
def test_an_adoption_cut_short_is_completed_at_the_next_start(
    ledger: Ledger,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    pinned: int | None,
) -> None:
    """One row per version: killed before the active one was written, the next start must
    adopt the rest (not record it as a pending stranger and leave no active version)."""
    token = Token(transport=(1, 2, 3))
    pins = None if pinned is None else {TRANSPORT: pinned}
    active = pinned or 3
    original = ledger.add_key_version

    def killed_at_the_active(purpose: Purpose, version: int, state: KeyState, at: int) -> None:
        if state is KeyState.ACTIVE and purpose is TRANSPORT:
            raise Crash("killed during adoption")
        original(purpose, version, state, at)

    monkeypatch.setattr(ledger, "add_key_version", killed_at_the_active)
    with pytest.raises(Crash):
        ring_of(ledger, token, clock, pinned=pins)
    assert KeyState.ACTIVE not in states(ledger, TRANSPORT).values()
    monkeypatch.setattr(ledger, "add_key_version", original)

    caplog.set_level(logging.INFO, logger="xbgw.keys")
    ring = ring_of(ledger, token, clock, pinned=pins)
    assert ring.current().transport == active
    assert states(ledger, TRANSPORT) == {
        f"transport/{v}": KeyState.ACTIVE if v == active else DECRYPT_ONLY for v in (1, 2, 3)
    }
    adopted = [line["key_ref"] for line in json_lines(caplog)]
    assert adopted == [
        f"frankfurt/transport/{active}",
        "frankfurt/signing/1",
        "frankfurt/storage/1",
    ]


# -- rotate ----------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", list(Purpose))
def test_rotate_makes_a_new_version_active_and_the_old_one_replaced(
    ledger: Ledger, clock: Clock, caplog: pytest.LogCaptureFixture, purpose: Purpose
) -> None:
    token = Token()
    ring = ring_of(ledger, token, clock)
    clock.now = T1
    caplog.set_level(logging.INFO, logger="xbgw.keys")

    made = ring.rotate(purpose)
    assert made == KeyVersion(purpose, 2, KeyState.ACTIVE, created_at=T1, activated_at=T1)
    replaced = VERIFY_ONLY if purpose is SIGNING else DECRYPT_ONLY
    assert found(ring, purpose, 1) == KeyVersion(
        purpose, 1, replaced, created_at=T0, activated_at=T0, deactivated_at=T1
    )
    assert token.generated == [(purpose, 2)]
    expected = {p: 2 if p is purpose else 1 for p in Purpose}
    assert ring.current().as_dict() == expected
    assert ring_of(ledger, token, clock).current().as_dict() == expected  # durable
    assert ring.in_service(purpose) == [1, 2]
    [line] = json_lines(caplog)
    assert (line["msg"], line["key_ref"], line["outcome"]) == (
        f"key rotated: frankfurt/{purpose.value}/2 (replaces v1)",
        f"frankfurt/{purpose.value}/2",
        "active",
    )

    clock.now = T1 + 60
    assert ring.rotate(purpose).version == 3
    assert ring.current().as_dict()[purpose] == 3
    assert [found(ring, purpose, v).state for v in (1, 2, 3)] == [
        replaced,
        replaced,
        KeyState.ACTIVE,
    ]


@pytest.mark.parametrize("restarted", [False, True], ids=["retried", "restarted"])
def test_rotate_resumes_when_the_hsm_did_not_make_the_new_version(
    ledger: Ledger, clock: Clock, restarted: bool
) -> None:
    token = Token()
    ring = ring_of(ledger, token, clock)
    clock.now = T1
    token.fail_generate = True
    with pytest.raises(HsmError):
        ring.rotate(STORAGE)
    assert states(ledger, STORAGE) == {"storage/1": KeyState.ACTIVE, "storage/2": KeyState.PENDING}
    assert token.versions(STORAGE) == [1]
    assert ring.storage == 1  # new work keeps using v1

    if restarted:
        ring = ring_of(ledger, token, clock)
        assert ring.storage == 1
    clock.now = T1 + 60
    made = ring.rotate(STORAGE)
    assert (made.version, made.state, made.created_at) == (2, KeyState.ACTIVE, T1)
    assert token.generated == [(STORAGE, 2)]
    assert states(ledger, STORAGE) == {"storage/1": DECRYPT_ONLY, "storage/2": KeyState.ACTIVE}


@pytest.mark.parametrize("restarted", [False, True], ids=["retried", "restarted"])
def test_rotate_resumes_when_the_new_version_was_made_but_not_activated(
    ledger: Ledger, clock: Clock, monkeypatch: pytest.MonkeyPatch, restarted: bool
) -> None:
    """The version on the token is the one activated: not made again, and no version skipped
    (which would leave an orphan key on the token)."""
    token = Token()
    ring = ring_of(ledger, token, clock)
    clock.now = T1
    original = ledger.activate_key_version

    def fails_once(purpose: Purpose, version: int, at: int) -> None:
        monkeypatch.setattr(ledger, "activate_key_version", original)
        raise StorageError("database is locked")

    monkeypatch.setattr(ledger, "activate_key_version", fails_once)
    with pytest.raises(StorageError):
        ring.rotate(TRANSPORT)
    assert states(ledger, TRANSPORT) == {
        "transport/1": KeyState.ACTIVE,
        "transport/2": KeyState.PENDING,
    }
    assert token.versions(TRANSPORT) == [1, 2]

    if restarted:
        ring = ring_of(ledger, token, clock)
    made = ring.rotate(TRANSPORT)
    assert (made.version, made.state) == (2, KeyState.ACTIVE)
    assert token.generated == [(TRANSPORT, 2)]
    assert token.versions(TRANSPORT) == [1, 2]
    assert ring.transport == 2


def test_rotate_to_a_pending_stranger_activates_it_without_making_another(
    ledger: Ledger, clock: Clock
) -> None:
    """A version found on the token after adoption is used only once rotated to."""
    token = Token()
    ring_of(ledger, token, clock)
    token.held[SIGNING].append(2)
    ring = ring_of(ledger, token, clock)
    assert ring.signing == 1
    assert ring.rotate(SIGNING).version == 2
    assert token.generated == []
    assert ring.signing == 2


# -- retire ----------------------------------------------------------------------------------


def stored_header(hsm: SoftwareHsm, transfer_id: str, storage_version: int) -> bytes:
    """A stored XBGW-STREAM-1 header: a data key wrapped to our storage ``storage_version``."""
    context = envelope.StreamContext(transfer_id, "lingang", ME, bytes(32))
    header, data_key = envelope.seal_header(
        context, KeyRef(ME, TRANSPORT, 1), hsm.public_key(TRANSPORT, 1), 64
    )
    ref = KeyRef(ME, STORAGE, storage_version)
    return envelope.rewrap_for_storage(header, data_key, ref, hsm).encode()


def offered(
    ledger: Ledger,
    hsm: SoftwareHsm,
    transfer_id: str,
    *,
    transport: int,
    storage: int,
    state: str = "receiving",
) -> None:
    ledger.create_inbound(
        transfer_id=transfer_id,
        sender="lingang",
        passport="unused",
        passport_digest=bytes(32),
        offered_header_digest=bytes(32),
        stored_header=stored_header(hsm, transfer_id, storage),
        byte_limit=1 << 20,
        classification="general",
        source_jurisdiction="CN-SH",
        dataset_sha256=None,
        transport_version=transport,
    )
    if state == "committed":
        ledger.commit_inbound(transfer_id, bytes(32), Signed(b"r", b"s", "lingang/signing/1"), T0)
    elif state == "refused":
        ledger.refuse_inbound(transfer_id, "byte limit")


def sending(ledger: Ledger, hsm: SoftwareHsm, transfer_id: str, storage: int) -> None:
    header = stored_header(hsm, transfer_id, storage)
    ledger.create_outbound(
        transfer_id=transfer_id,
        partner="lingang",
        passport_digest=bytes(32),
        sent_header=header,
        stored_header=header,
    )


def test_the_active_version_cannot_be_retired(ledger: Ledger, clock: Clock) -> None:
    ring = ring_of(ledger, Token(), clock)
    assert refusal(ring, TRANSPORT, 1) == (
        "frankfurt/transport/1 cannot be retired: frankfurt/transport/1 is the active version; "
        "rotate transport first"
    )


@pytest.mark.parametrize(
    ("purpose", "after", "left"),
    [
        (TRANSPORT, DAY, "6.0 days more, until 2027-01-23T08:00:00Z"),
        (TRANSPORT, 7 * DAY - 1, "1 s more, until 2027-01-23T08:00:00Z"),
        (SIGNING, DAY, "29.0 days more, until 2027-02-15T08:00:00Z"),
        (SIGNING, 30 * DAY - 5400, "1.5 hours more, until 2027-02-15T08:00:00Z"),
    ],
)
def test_retire_waits_for_the_grace_period(
    ledger: Ledger, clock: Clock, purpose: Purpose, after: int, left: str
) -> None:
    """Default grace: transport 7 days, signing 30, from the moment the version was replaced."""
    ring = ring_of(ledger, Token(), clock)
    clock.now = T1
    ring.rotate(purpose)
    clock.now = T1 + after
    assert refusal(ring, purpose, 1) == (
        f"frankfurt/{purpose.value}/1 cannot be retired: its grace period "
        f"(keys.grace.{purpose.value}) runs {left}"
    )
    assert ring.retire_blockers(purpose, 1) == [
        f"its grace period (keys.grace.{purpose.value}) runs {left}"
    ]
    clock.now = T1 + ring.policy.grace[purpose]
    assert ring.retire_blockers(purpose, 1) == []


def test_retire_of_a_transport_version_gives_every_reason_at_once(
    ledger: Ledger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    hsm = SoftwareHsm()
    ring = ring_of(ledger, Token(), clock)
    offered(ledger, hsm, "open-1", transport=1, storage=1)
    offered(ledger, hsm, "open-2", transport=1, storage=1)
    offered(ledger, hsm, "done", transport=1, storage=1, state="committed")
    offered(ledger, hsm, "refused", transport=1, storage=1, state="refused")
    clock.now = T1
    ring.rotate(TRANSPORT)
    offered(ledger, hsm, "to-v2", transport=2, storage=1)
    clock.now = T1 + DAY

    with pytest.raises(KeyLifecycleError) as refused:
        ring.retire(TRANSPORT, 1, ["the partner still seals to it"])
    assert str(refused.value) == (
        "frankfurt/transport/1 cannot be retired: its grace period (keys.grace.transport) runs "
        "6.0 days more, until 2027-01-23T08:00:00Z; 2 transfer(s) offered to it are still being "
        "received; the partner still seals to it"
    )

    clock.now = T1 + 7 * DAY
    assert refusal(ring, TRANSPORT, 1) == (
        "frankfurt/transport/1 cannot be retired: 2 transfer(s) offered to it are still being "
        "received"
    )
    ledger.refuse_inbound("open-1", "byte limit")
    ledger.commit_inbound("open-2", bytes(32), Signed(b"r", b"s", "lingang/signing/1"), T1)
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    retired = ring.retire(TRANSPORT, 1)
    assert retired == KeyVersion(TRANSPORT, 1, KeyState.RETIRED, T0, T0, T1, T1 + 7 * DAY)
    assert states(ledger, TRANSPORT)["transport/1"] is KeyState.RETIRED
    assert ring.in_service(TRANSPORT) == [2]
    [line] = json_lines(caplog)
    assert (line["msg"], line["key_ref"], line["outcome"]) == (
        "key retired: frankfurt/transport/1",
        "frankfurt/transport/1",
        "retired",
    )
    assert refusal(ring, TRANSPORT, 1) == (
        "frankfurt/transport/1 cannot be retired: frankfurt/transport/1 is already retired"
    )


def test_retire_of_a_storage_version_waits_for_every_stored_data_key(
    ledger: Ledger, clock: Clock
) -> None:
    hsm = SoftwareHsm()
    hsm.generate(STORAGE)
    policy = KeysConfig(grace={TRANSPORT: 7 * DAY, SIGNING: 30 * DAY, STORAGE: 7200})
    ring = ring_of(ledger, Token(), clock, policy)
    offered(ledger, hsm, "in-receiving", transport=1, storage=1)
    offered(ledger, hsm, "in-committed", transport=1, storage=1, state="committed")
    offered(ledger, hsm, "in-refused", transport=1, storage=1, state="refused")
    sending(ledger, hsm, "out-sending", 1)
    sending(ledger, hsm, "out-delivered", 1)
    ledger.deliver_outbound("out-delivered", 1, bytes(32), Signed(b"r", b"s", "lingang/signing/1"))
    clock.now = T1
    ring.rotate(STORAGE)
    offered(ledger, hsm, "in-v2", transport=1, storage=2)
    clock.now = T1 + 1800

    assert refusal(ring, STORAGE, 1) == (
        "frankfurt/storage/1 cannot be retired: its grace period (keys.grace.storage) runs "
        "1.5 hours more, until 2027-01-16T10:00:00Z; 3 stored data key(s) are still wrapped to "
        "it (run 'xbgw keys rewrap')"
    )
    clock.now = T1 + 7200
    for direction, transfer_id in (("in", "in-receiving"), ("in", "in-committed")):
        row = ledger.inbound(transfer_id)
        assert row is not None
        new = stored_header(hsm, transfer_id, 2)
        assert ledger.replace_stored_header(direction, transfer_id, row.stored_header, new)
    assert refusal(ring, STORAGE, 1) == (
        "frankfurt/storage/1 cannot be retired: 1 stored data key(s) are still wrapped to it "
        "(run 'xbgw keys rewrap')"
    )
    row_out = ledger.outbound("out-sending")
    assert row_out is not None
    new = stored_header(hsm, "out-sending", 2)
    assert ledger.replace_stored_header("out", "out-sending", row_out.stored_header, new)
    assert ring.retire(STORAGE, 1).state is KeyState.RETIRED


def test_retire_of_a_version_this_gateway_never_had(ledger: Ledger, clock: Clock) -> None:
    ring = ring_of(ledger, Token(), clock)
    assert refusal(ring, SIGNING, 9) == (
        "frankfurt/signing/9 cannot be retired: frankfurt/signing/9 is not a key version of this "
        "gateway"
    )


# -- destroy ---------------------------------------------------------------------------------


def test_destroy_only_after_retire_and_then_in_the_hsm(
    ledger: Ledger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    token = Token()
    ring = ring_of(ledger, token, clock)

    def refused(version: int) -> str:
        with pytest.raises(KeyLifecycleError) as raised:
            ring.destroy(STORAGE, version)
        return str(raised.value)

    assert refused(1) == (
        "frankfurt/storage/1 is active; only a retired version can be destroyed "
        "(xbgw keys retire storage 1)"
    )
    clock.now = T1
    ring.rotate(STORAGE)
    assert refused(1) == (
        "frankfurt/storage/1 is decrypt-only; only a retired version can be destroyed "
        "(xbgw keys retire storage 1)"
    )
    assert refused(9) == (
        "frankfurt/storage/9 is not a version of this gateway; only a retired version can be "
        "destroyed (xbgw keys retire storage 9)"
    )
    assert token.destroyed == []
    assert token.versions(STORAGE) == [1, 2]

    ring.retire(STORAGE, 1)
    clock.now = T1 + 60
    caplog.set_level(logging.INFO, logger="xbgw.keys")
    destroyed = ring.destroy(STORAGE, 1)
    assert destroyed == KeyVersion(STORAGE, 1, KeyState.DESTROYED, T0, T0, T1, T1, T1 + 60)
    assert token.destroyed == [(STORAGE, 1)]
    assert token.versions(STORAGE) == [2]
    assert states(ledger, STORAGE) == {
        "storage/1": KeyState.DESTROYED,
        "storage/2": KeyState.ACTIVE,
    }
    [line] = json_lines(caplog)
    assert (line["msg"], line["key_ref"], line["outcome"]) == (
        "key destroyed: frankfurt/storage/1",
        "frankfurt/storage/1",
        "destroyed",
    )
    assert refused(1).startswith("frankfurt/storage/1 is destroyed; only a retired version")
    assert refusal(ring, STORAGE, 1).endswith("frankfurt/storage/1 is already destroyed")
    assert token.destroyed == [(STORAGE, 1)]


def test_destroy_resumes_after_the_hsm_object_went_but_the_ledger_did_not_follow(
    ledger: Ledger, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = Token()
    ring = ring_of(ledger, token, clock)
    clock.now = T1
    ring.rotate(TRANSPORT)
    clock.now = T1 + 7 * DAY
    ring.retire(TRANSPORT, 1)
    original = ledger.set_key_state

    def killed(purpose: Purpose, version: int, state: KeyState, at: int) -> None:
        monkeypatch.setattr(ledger, "set_key_state", original)
        raise Crash("killed after the HSM destroyed the object")

    monkeypatch.setattr(ledger, "set_key_state", killed)
    with pytest.raises(Crash):
        ring.destroy(TRANSPORT, 1)
    assert token.versions(TRANSPORT) == [2]
    assert states(ledger, TRANSPORT)["transport/1"] is KeyState.RETIRED

    ring = ring_of(ledger, token, clock)  # the version missing from the token: not pending
    assert ring.destroy(TRANSPORT, 1).state is KeyState.DESTROYED
    assert token.destroyed == [(TRANSPORT, 1)]


# -- due -------------------------------------------------------------------------------------


def test_due_follows_rotate_every_per_purpose(ledger: Ledger, clock: Clock) -> None:
    policy = KeysConfig(rotate_every={TRANSPORT: 10 * DAY, SIGNING: 100 * DAY, STORAGE: 50 * DAY})
    ring = ring_of(ledger, Token(), clock, policy)
    assert ring.due() == []
    assert ring.due(T0 + 10 * DAY - 1) == []
    assert ring.due(T0 + 10 * DAY) == [TRANSPORT]
    assert ring.due(T0 + 50 * DAY) == [TRANSPORT, STORAGE]

    clock.now = T0 + 50 * DAY
    assert ring.due() == [TRANSPORT, STORAGE]  # the ring's clock when no time is given
    ring.rotate(TRANSPORT)
    assert ring.due() == [STORAGE]
    assert ring.due(T0 + 60 * DAY - 1) == [STORAGE]
    assert ring.due(T0 + 60 * DAY) == [TRANSPORT, STORAGE]
    assert ring.due(T0 + 100 * DAY) == [TRANSPORT, SIGNING, STORAGE]


def test_due_with_the_default_policy(ledger: Ledger, clock: Clock) -> None:
    """Transport every 30 days, signing and storage every year."""
    ring = ring_of(ledger, Token(), clock)
    assert ring.due(T0 + 30 * DAY - 1) == []
    assert ring.due(T0 + 30 * DAY) == [TRANSPORT]
    assert ring.due(T0 + 365 * DAY) == [TRANSPORT, SIGNING, STORAGE]
