"""Rewrap, in process: every stored data key moves to the active storage version, nothing else.

Two real gateways over the loopback (``tests.loopback``): frankfurt holds committed inbox items
and the partial file of an interrupted transfer, lingang holds the undelivered outbound record
of that transfer. After both rotate storage, ``gateway.rewrap`` must move all of them from v1
to v2 -- the header rewritten in place, the ciphertext after it byte for byte the same -- so
that v1 can be retired and destroyed with every item still fetching and the interrupted
transfer resuming where it stopped. Then the ways a run is cut short: a crash between the file
header and the ledger swap, a transfer busy at that moment, a file that is not the ledger's;
and the wrapped TLS private key, which ``gateway_key_administration`` moves and waits for.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import envelope, tlskey
from gateway.config import TlsConfig
from gateway.errors import KeyLifecycleError, PartnerError, StorageError
from gateway.keyadmin import KeyAdministration, RewrapOutcome, gateway_key_administration
from gateway.keys import KeyRef, KeyState, Purpose
from gateway.ledger import storage_version_of
from gateway.rewrap import Hold, RewrapProgress, RewrapReport, rewrap
from gateway.transfer import TransferState
from tests.fakes import SoftwareHsm
from tests.loopback import SEGMENT, Loopback, Side, make_loopback
from tests.loopback_rig import (
    Rig,
    assert_delivered,
    assert_partner_error,
    broken_after,
    record_uploads,
    restart_receiver,
    restart_sender,
)

INBOX = {"dpo_inbox-1": 5 * SEGMENT + 7, "dpo_inbox-2": SEGMENT, "dpo_inbox-3": 3 * SEGMENT}
PARTIAL = "dpo_partial-1"
PARTIAL_SIZE = 7 * SEGMENT + 17  # 8 segments
CUT = 3  # segments frankfurt holds of the interrupted transfer
EVERY = sorted([*INBOX, PARTIAL])  # frankfurt's stored data keys, in the order rewrap takes them


def retire_refusal(side: Side, users: int, *more: str) -> str:
    reasons = [f"{users} stored data key(s) are still wrapped to it (run 'xbgw keys rewrap')"]
    return f"{side.id}/storage/1 cannot be retired: " + "; ".join([*reasons, *more])


@dataclass
class Stored:
    """Frankfurt holds INBOX committed and PARTIAL cut after CUT segments; lingang holds the
    undelivered send of PARTIAL. Every stored data key is under storage v1."""

    rig: Rig
    inbox: dict[str, bytes]
    token: str  # PARTIAL's passport
    data: bytes  # PARTIAL's data

    @property
    def lb(self) -> Loopback:
        return self.rig.lb

    def path(self, transfer_id: str) -> Path:
        spool = self.lb.frankfurt.spool
        if transfer_id == PARTIAL:
            return spool.partial_path(transfer_id)
        return spool.committed_path(transfer_id)

    def stored_in(self, transfer_id: str) -> bytes:
        row = self.lb.frankfurt.ledger.inbound(transfer_id)
        assert row is not None
        return row.stored_header

    def stored_out(self) -> bytes:
        row = self.lb.lingang.ledger.outbound(PARTIAL)
        assert row is not None
        return row.stored_header


@pytest.fixture
def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stored]:
    lb = make_loopback(tmp_path)
    rig = Rig(lb)
    record_uploads(rig, monkeypatch)
    inbox = {transfer_id: os.urandom(size) for transfer_id, size in INBOX.items()}
    for transfer_id, data in inbox.items():
        rig.send(lb.passport(transfer_id), data)
    token = lb.passport(PARTIAL)
    data = os.urandom(PARTIAL_SIZE)
    lb.link.tamper = broken_after(CUT)
    with pytest.raises(PartnerError):
        rig.send(token, data)
    made = Stored(rig, inbox, token, data)
    for transfer_id in EVERY:
        assert storage_version_of(made.stored_in(transfer_id)) == 1
        assert made.path(transfer_id).read_bytes().startswith(made.stored_in(transfer_id))
    assert storage_version_of(made.stored_out()) == 1
    try:
        yield made
    finally:
        lb.close()


def run(
    side: Side,
    progress: Callable[[RewrapProgress], None] = lambda _: None,
    *,
    hold_inbound: Hold | None = None,
) -> RewrapReport:
    """One rewrap of ``side``, as the daemon wires it (the receiver's and sender's holds)."""
    return rewrap(
        me=side.id,
        ring=side.ring,
        keys=side.keys,
        ledger=side.ledger,
        spool=side.spool,
        hold_inbound=hold_inbound or side.receiver.hold,
        hold_outbound=side.sender.hold,
        on_progress=progress,
    )


@dataclass(frozen=True)
class OnDisk:
    inode: int
    size: int
    payload_sha256: bytes  # every byte after the header


def on_disk(path: Path, header_len: int) -> OnDisk:
    data = path.read_bytes()
    return OnDisk(path.stat().st_ino, len(data), hashlib.sha256(data[header_len:]).digest())


def rotate_storage(lb: Loopback, *sides: Side) -> None:
    lb.now[0] += 3600
    for side in sides:
        made = side.ring.rotate(Purpose.STORAGE)
        assert (made.version, made.state) == (2, KeyState.ACTIVE)


# -- the whole way: rotate, rewrap, retire, destroy, resume ----------------------------------


@pytest.mark.parametrize("restarted", [False, True], ids=["running", "restarted"])
def test_rewrap_moves_every_stored_key_then_v1_is_retired_destroyed_and_nothing_is_lost(
    stored: Stored, restarted: bool
) -> None:
    lb = stored.lb
    frankfurt, lingang = lb.frankfurt, lb.lingang
    old_in = {tid: stored.stored_in(tid) for tid in EVERY}
    old_out = lingang.ledger.outbound(PARTIAL)
    assert old_out is not None and old_out.state is TransferState.SENDING
    before = {tid: on_disk(stored.path(tid), len(old_in[tid])) for tid in EVERY}
    assert (frankfurt.ledger.storage_version_users(1), lingang.ledger.storage_version_users(1)) == (
        len(EVERY),
        1,  # the delivered sends need no data key any more
    )
    rotate_storage(lb, frankfurt, lingang)

    for side, users in ((frankfurt, len(EVERY)), (lingang, 1)):
        with pytest.raises(KeyLifecycleError) as refused:
            side.ring.retire(Purpose.STORAGE, 1)
        assert str(refused.value) == retire_refusal(side, users)

    seen: list[RewrapProgress] = []
    report = run(frankfurt, seen.append)
    assert report == RewrapReport(to_version=2, rewrapped=len(EVERY), remaining=0)
    assert seen == [RewrapProgress(n, len(EVERY), tid) for n, tid in enumerate(EVERY, start=1)]
    seen_out: list[RewrapProgress] = []
    assert run(lingang, seen_out.append) == RewrapReport(to_version=2, rewrapped=1)
    assert seen_out == [RewrapProgress(1, 1, PARTIAL)]

    for tid in EVERY:
        new = stored.stored_in(tid)
        assert storage_version_of(new) == 2
        assert len(new) == len(old_in[tid])
        assert envelope.Header.decode(new).core() == envelope.Header.decode(old_in[tid]).core()
        path = stored.path(tid)
        assert path.read_bytes()[: len(new)] == new, f"{tid}: the file header is not the ledger's"
        assert on_disk(path, len(new)) == before[tid], f"{tid}: more than the header changed"
    new_out = lingang.ledger.outbound(PARTIAL)
    assert new_out is not None and new_out.state is TransferState.SENDING
    assert storage_version_of(new_out.stored_header) == 2
    assert new_out.sent_header == old_out.sent_header  # what the partner holds is untouched
    assert (frankfurt.ledger.storage_version_users(1), lingang.ledger.storage_version_users(1)) == (
        0,
        0,
    )

    # Idempotent: nothing left to do, nothing done.
    again: list[RewrapProgress] = []
    for side in (frankfurt, lingang):
        assert run(side, again.append) == RewrapReport(to_version=2)
    assert again == []

    for side in (frankfurt, lingang):
        retired = side.ring.retire(Purpose.STORAGE, 1)
        assert (retired.state, retired.retired_at) == (KeyState.RETIRED, int(lb.now[0]))
        assert side.ring.destroy(Purpose.STORAGE, 1).state is KeyState.DESTROYED
        assert side.keys.versions(Purpose.STORAGE) == [2]

    for tid, data in stored.inbox.items():
        assert lb.fetch(tid) == data
    if restarted:
        restart_receiver(lb)
        restart_sender(lb)
    rig = stored.rig
    summary = rig.send(stored.token, stored.data)
    assert rig.last_held == CUT * SEGMENT
    assert rig.last_uploaded == list(range(CUT, 8))
    assert_delivered(lb, PARTIAL, stored.data, summary)


# -- cut short -------------------------------------------------------------------------------


class Crash(Exception):
    """The process died here (not an error the engine knows)."""


@pytest.mark.parametrize("victim", ["dpo_inbox-2", PARTIAL])
@pytest.mark.parametrize("how", ["storage-error", "crash"])
def test_cut_between_the_file_header_and_the_ledger_swap(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, victim: str, how: str
) -> None:
    """The file has the new header, the ledger the old one: retire stays refused, the item
    opens under either, the next run finishes the job, and v1 can go."""
    lb = stored.lb
    frankfurt = lb.frankfurt
    rotate_storage(lb, frankfurt)
    old = stored.stored_in(victim)
    before = on_disk(stored.path(victim), len(old))
    original = frankfurt.ledger.replace_stored_header
    written: list[bytes] = []

    def cut_once(direction: str, transfer_id: str, old_header: bytes, new: bytes) -> bool:
        if transfer_id == victim and not written:
            written.append(new)
            if how == "crash":
                raise Crash("killed before the ledger swap")
            raise StorageError("the ledger is locked")
        return original(direction, transfer_id, old_header, new)

    monkeypatch.setattr(frankfurt.ledger, "replace_stored_header", cut_once)
    if how == "crash":
        with pytest.raises(Crash):
            run(frankfurt)
    else:
        report = run(frankfurt)
        assert report == RewrapReport(
            to_version=2,
            rewrapped=len(EVERY) - 1,
            failed=[(victim, "the ledger is locked")],
            remaining=1,
        )
    left = [tid for _d, tid, _h in frankfurt.ledger.stored_headers_not_under(2)]
    assert victim in left
    if how == "crash":  # the run stopped at the victim: it and all after it are left
        assert left == EVERY[EVERY.index(victim) :]

    [new] = written
    assert storage_version_of(new) == 2
    assert stored.stored_in(victim) == old
    path = stored.path(victim)
    assert path.read_bytes()[: len(new)] == new
    assert on_disk(path, len(new)) == before
    with pytest.raises(KeyLifecycleError) as refused:
        frankfurt.ring.retire(Purpose.STORAGE, 1)
    assert str(refused.value) == retire_refusal(frankfurt, len(left))

    if victim == PARTIAL:  # it resumes and commits with the file and the ledger disagreeing
        summary = stored.rig.send(stored.token, stored.data)
        assert stored.rig.last_held == CUT * SEGMENT
        assert_delivered(lb, PARTIAL, stored.data, summary)
        path = frankfurt.spool.committed_path(PARTIAL)
        assert path.read_bytes()[: len(new)] == new
    else:
        assert lb.fetch(victim) == stored.inbox[victim]

    report = run(frankfurt)
    assert report == RewrapReport(to_version=2, rewrapped=len(left))
    assert stored.stored_in(victim) == path.read_bytes()[: len(new)] == new
    frankfurt.ring.retire(Purpose.STORAGE, 1)
    frankfurt.ring.destroy(Purpose.STORAGE, 1)
    for tid, data in stored.inbox.items():
        assert lb.fetch(tid) == data
    if victim == PARTIAL:
        assert lb.fetch(PARTIAL) == stored.data


@pytest.mark.parametrize("direction", ["in", "out"])
def test_a_busy_transfer_is_reported_and_left_unchanged(stored: Stored, direction: str) -> None:
    lb = stored.lb
    side = lb.frankfurt if direction == "in" else lb.lingang
    rotate_storage(lb, side)
    hold = side.receiver.hold if direction == "in" else side.sender.hold
    old = stored.stored_in(PARTIAL) if direction == "in" else stored.stored_out()
    held = stored.path(PARTIAL).read_bytes()
    seen: list[RewrapProgress] = []

    with hold(PARTIAL):  # an upload (or a send) is at work on it
        report = run(side, seen.append)
    others = len(INBOX) if direction == "in" else 0
    assert report == RewrapReport(to_version=2, rewrapped=others, busy=[PARTIAL], remaining=1)
    assert seen[-1] == RewrapProgress(others + 1, others + 1, PARTIAL)
    assert (stored.stored_in(PARTIAL) if direction == "in" else stored.stored_out()) == old
    assert stored.path(PARTIAL).read_bytes() == held
    with pytest.raises(KeyLifecycleError) as refused:
        side.ring.retire(Purpose.STORAGE, 1)
    assert str(refused.value) == retire_refusal(side, 1)

    assert run(side) == RewrapReport(to_version=2, rewrapped=1)
    side.ring.retire(Purpose.STORAGE, 1)


def test_the_hold_keeps_uploads_away_while_the_header_is_rewritten(stored: Stored) -> None:
    """An upload arriving while its transfer is held is refused at once (the sender resumes
    later); it does not wait, and it does not write under the header being replaced."""
    lb = stored.lb
    frankfurt = lb.frankfurt
    rotate_storage(lb, frankfurt)
    refused: list[BaseException] = []

    @contextmanager
    def hold_and_resume(transfer_id: str) -> Iterator[None]:
        with frankfurt.receiver.hold(transfer_id):
            if transfer_id == PARTIAL:
                with pytest.raises(PartnerError) as raised:
                    stored.rig.send(stored.token, stored.data)
                refused.append(raised.value)
            yield

    report = run(frankfurt, hold_inbound=hold_and_resume)
    assert report == RewrapReport(to_version=2, rewrapped=len(EVERY))
    [error] = refused
    assert_partner_error(
        error,
        "FAILED_PRECONDITION",
        f"transfer {PARTIAL} is busy on another stream; upload again shortly",
    )
    summary = stored.rig.send(stored.token, stored.data)
    assert stored.rig.last_held == CUT * SEGMENT
    assert_delivered(lb, PARTIAL, stored.data, summary)


@pytest.mark.parametrize("foreign", ["another-transfers-header", "not-a-header"])
def test_a_file_that_does_not_start_with_the_ledgers_header_fails_and_is_left_alone(
    stored: Stored, foreign: str
) -> None:
    lb = stored.lb
    frankfurt = lb.frankfurt
    rotate_storage(lb, frankfurt)
    victim = stored.path("dpo_inbox-1")
    old = stored.stored_in("dpo_inbox-1")
    other = stored.stored_in("dpo_inbox-2")
    assert len(other) == len(old)
    with victim.open("r+b") as file:
        file.write(other if foreign == "another-transfers-header" else os.urandom(len(old)))
    content = victim.read_bytes()

    report = run(frankfurt)
    assert report == RewrapReport(
        to_version=2,
        rewrapped=len(EVERY) - 1,
        failed=[
            (
                "dpo_inbox-1",
                f"{victim} does not start with the header the ledger holds for it; left unchanged",
            )
        ],
        remaining=1,
    )
    assert victim.read_bytes() == content
    assert stored.stored_in("dpo_inbox-1") == old
    with pytest.raises(KeyLifecycleError) as refused:
        frankfurt.ring.retire(Purpose.STORAGE, 1)
    assert str(refused.value) == retire_refusal(frankfurt, 1)


# -- the wrapped TLS private key --------------------------------------------------------------


def tls_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def administration(side: Side, key_file: Path) -> KeyAdministration:
    config = replace(side.config, tls=TlsConfig(key_file.with_suffix(".crt"), key_file))
    return gateway_key_administration(
        config=lambda: config,
        ring=side.ring,
        keys=side.keys,
        ledger=side.ledger,
        spool=side.spool,
        hold_inbound=side.receiver.hold,
        hold_outbound=side.sender.hold,
    )


def test_a_wrapped_tls_key_blocks_retire_until_rewrap_moves_it(
    stored: Stored, tmp_path: Path
) -> None:
    lb = stored.lb
    frankfurt = lb.frankfurt
    pem = tls_key_pem()
    key_file = tmp_path / "gateway.xbgw-key"
    v1_ref = KeyRef("frankfurt", Purpose.STORAGE, 1)
    key_file.write_bytes(tlskey.seal_tls_key(pem, frankfurt.keys, v1_ref))
    admin = administration(frankfurt, key_file)
    lb.now[0] += 3600
    [made] = admin.rotate([Purpose.STORAGE])
    assert made.version == 2

    tls_reason = f"the TLS private key {key_file} is wrapped to it (run 'xbgw keys rewrap')"
    expected = retire_refusal(frankfurt, len(EVERY), tls_reason)
    with pytest.raises(KeyLifecycleError) as refused:
        admin.retire(Purpose.STORAGE, 1)
    assert str(refused.value) == expected
    [v1] = [r for r in admin.status() if (r.key.purpose, r.key.version) == (Purpose.STORAGE, 1)]
    assert "; ".join(v1.blockers) == expected.split(": ", 1)[1]

    seen: list[tuple[int, int, str]] = []
    outcome = admin.rewrap(lambda done, total, tid: seen.append((done, total, tid)))
    assert outcome == RewrapOutcome(
        to_version=2, rewrapped=len(EVERY) + 1, already=0, busy=(), failed=(), remaining=0
    )
    assert seen == [(n, len(EVERY), tid) for n, tid in enumerate(EVERY, start=1)]
    assert tlskey.storage_version_of_tls_key(key_file) == 2
    assert tlskey.open_tls_key(key_file.read_bytes(), frankfurt.keys, "frankfurt") == pem

    assert admin.rewrap(lambda *_: None) == RewrapOutcome(2, 0, 1, (), (), 0)
    admin.retire(Purpose.STORAGE, 1)
    admin.destroy(Purpose.STORAGE, 1)
    assert tlskey.open_tls_key(key_file.read_bytes(), frankfurt.keys, "frankfurt") == pem
    for tid, data in stored.inbox.items():
        assert lb.fetch(tid) == data


def test_a_plaintext_tls_key_neither_blocks_nor_counts(stored: Stored, tmp_path: Path) -> None:
    frankfurt = stored.lb.frankfurt
    key_file = tmp_path / "gateway.key"
    key_file.write_bytes(tls_key_pem())
    admin = administration(frankfurt, key_file)
    admin.rotate([Purpose.STORAGE])
    assert admin.rewrap(lambda *_: None) == RewrapOutcome(2, len(EVERY), 0, (), (), 0)
    assert admin.retire(Purpose.STORAGE, 1).state is KeyState.RETIRED


def test_a_tls_key_that_does_not_open_is_failed_and_keeps_blocking(
    stored: Stored, tmp_path: Path
) -> None:
    """Wrapped to frankfurt/storage/1 by another HSM: the rewrap cannot move it; it says so,
    counts it as remaining, and retire keeps waiting for it."""
    frankfurt = stored.lb.frankfurt
    key_file = tmp_path / "gateway.xbgw-key"
    sealed = tlskey.seal_tls_key(
        tls_key_pem(), SoftwareHsm(), KeyRef("frankfurt", Purpose.STORAGE, 1)
    )
    key_file.write_bytes(sealed)
    admin = administration(frankfurt, key_file)
    admin.rotate([Purpose.STORAGE])

    outcome = admin.rewrap(lambda *_: None)
    assert (outcome.rewrapped, outcome.remaining, outcome.busy) == (len(EVERY), 1, ())
    [failure] = outcome.failed
    assert failure.startswith(f"TLS private key {key_file}: ")
    assert "does not unwrap under frankfurt/storage/1" in failure
    assert key_file.read_bytes() == sealed
    with pytest.raises(KeyLifecycleError) as refused:
        admin.retire(Purpose.STORAGE, 1)
    assert str(refused.value) == (
        f"frankfurt/storage/1 cannot be retired: the TLS private key {key_file} is wrapped to "
        "it (run 'xbgw keys rewrap')"
    )


def test_fetch_opens_the_data_key_from_the_ledgers_header_not_the_files(
    stored: Stored,
) -> None:
    """A rewrap cut short can leave an inbox file's header wrapped to a version the ledger does
    not name -- one later retired and destroyed. Fetch opens the data key from the ledger's
    header (what retire decisions are made on) and only checks the file's header core."""
    from gateway.errors import HeaderFormatError, KeyUnwrapError
    from gateway.local import _plaintext

    lb = stored.lb
    side = lb.frankfurt
    transfer_id = "dpo_inbox-1"
    path = stored.path(transfer_id)
    ledger_header = stored.stored_in(transfer_id)
    header = envelope.Header.decode(ledger_header)
    elsewhere = SoftwareHsm()  # a storage key this gateway does not hold
    data_key = envelope.open_header(header, side.id, side.keys)
    foreign = envelope.rewrap_for_storage(
        header, data_key, KeyRef(side.id, Purpose.STORAGE, 1), elsewhere
    ).encode()
    assert len(foreign) == len(ledger_header)
    with path.open("r+b") as handle:
        handle.write(foreign)
    with path.open("rb") as src:
        assert (
            b"".join(_plaintext(src, side.id, side.keys, ledger_header))
            == stored.inbox[transfer_id]
        )
    # Under the file's own header the data key does not open: the fallback is what fetches.
    with path.open("rb") as src, pytest.raises(KeyUnwrapError):
        envelope.read_stream(src, io.BytesIO(), side.id, side.keys)
    other = stored.stored_in("dpo_inbox-2")
    with path.open("rb") as src, pytest.raises(HeaderFormatError, match="does not start with"):
        list(_plaintext(src, side.id, side.keys, other))
