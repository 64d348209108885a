"""The checkpointer on a real ledger: what it signs, when, how often, and what survives errors.

A real :class:`Ledger` in a temp directory holds the log; a :class:`SoftwareHsm` subclass
signs and counts its signatures (and can be told to fail or to hold a signature until the
test lets it go), so batching and ordering are observed, not assumed. Every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.audit import merkle
from gateway.audit.checkpoint import EcdsaVerifier, verify_note
from gateway.audit.checkpointer import Checkpointer, SignedCheckpoint
from gateway.audit.records import AuditRecord
from gateway.errors import HsmError
from gateway.keys import Purpose
from gateway.ledger import Ledger
from tests.fakes import SoftwareHsm

GW = "frankfurt"
DEADLINE = 10.0
NEVER = 3600.0  # an interval that never elapses in a test: only wake-ups and stop() sign


class CountingHsm(SoftwareHsm):
    """Counts signatures; ``failures`` makes the next ones raise ``HsmError``; ``hold`` (when
    set) keeps each signature waiting until ``release`` is set; ``before_sign`` runs first."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()
        self.signatures = 0
        self.failures = 0
        self.attempts = 0
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.before_sign: Callable[[], None] | None = None

    def sign_digest(self, version: int, digest: bytes) -> bytes:
        if self.before_sign is not None:
            self.before_sign()
        with self.changed:
            self.attempts += 1
            self.changed.notify_all()
            if self.failures:
                self.failures -= 1
                raise HsmError("the token is not present (CKR_TOKEN_NOT_PRESENT)")
        if self.hold:
            self.entered.set()
            assert self.release.wait(DEADLINE), "the test never released the signature"
        signature = super().sign_digest(version, digest)
        with self.changed:
            self.signatures += 1
            self.changed.notify_all()
        return signature


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    made = Ledger(tmp_path / "ledger.sqlite3")
    yield made
    made.close()


@pytest.fixture
def hsm() -> CountingHsm:
    return CountingHsm()


@pytest.fixture
def started() -> Iterator[list[Checkpointer]]:
    """Checkpointers a test started; each is stopped afterwards, even if the test failed."""
    running: list[Checkpointer] = []
    yield running
    for checkpointer in running:
        checkpointer.stop()


def make(ledger: Ledger, hsm: CountingHsm, interval: float = NEVER) -> Checkpointer:
    return Checkpointer(GW, ledger, hsm, lambda: 1, interval=interval, clock=lambda: 1_700_000_000)


def start(running: list[Checkpointer], checkpointer: Checkpointer) -> Checkpointer:
    checkpointer.start()
    running.append(checkpointer)
    return checkpointer


def append(ledger: Ledger, count: int = 1) -> list[int]:
    """``count`` new records; their leaf indices."""
    leaves = []
    for _ in range(count):
        n = ledger.audit_size()
        record = AuditRecord("config.reloaded", 1_700_000_000 + n, {"config_sha256": f"{n:064x}"})
        leaves.append(ledger.append_audit(record.encode(GW)))
    return leaves


def assert_checkpoint_of_log(signed: SignedCheckpoint, ledger: Ledger, hsm: SoftwareHsm) -> None:
    """The note verifies under the gateway's signing key, as the gateway's log, and states
    exactly the size and the RFC 9162 root of the first ``size`` stored leaves."""
    verifier = EcdsaVerifier(GW, hsm.public_key(Purpose.SIGNING, 1))
    checkpoint = verify_note(signed.note, [verifier], origin=GW)
    records = [record for _, record in ledger.audit_records(0, signed.size)]
    assert len(records) == signed.size
    expected_root = merkle.root([merkle.leaf_hash(record) for record in records])
    assert (checkpoint.origin, checkpoint.size, checkpoint.root_hash) == (
        GW,
        signed.size,
        expected_root,
    )
    assert signed.root == expected_root


def wait_for(condition: Callable[[], bool], what: str, lock: threading.Condition) -> None:
    """Wait on ``lock`` (notified when the HSM signs) until ``condition`` holds."""
    with lock:
        if not lock.wait_for(condition, DEADLINE):
            raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}")


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """For states no condition announces (the checkpointer's own): a deadline, short waits."""
    deadline = time.monotonic() + DEADLINE
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}")
        pause.wait(0.005)


# -- covering ------------------------------------------------------------------------------


def test_covering_returns_a_verified_checkpoint_that_includes_the_leaf(
    ledger: Ledger, hsm: CountingHsm, started: list[Checkpointer]
) -> None:
    checkpointer = start(started, make(ledger, hsm))
    append(ledger, 3)
    signed = checkpointer.covering(2, timeout=DEADLINE)
    assert signed is not None
    assert signed.size == 3 > 2
    assert_checkpoint_of_log(signed, ledger, hsm)
    assert ledger.latest_checkpoint() == (signed.size, signed.root, signed.note)
    assert checkpointer.latest == signed
    assert hsm.signatures == 1

    # A leaf already covered is answered from the newest checkpoint, without signing.
    assert checkpointer.covering(0, timeout=DEADLINE) == signed
    assert hsm.signatures == 1

    # A later leaf gets a later checkpoint, whose root is again that of the stored leaves.
    [leaf] = append(ledger)
    later = checkpointer.covering(leaf, timeout=DEADLINE)
    assert later is not None and later.size == 4
    assert_checkpoint_of_log(later, ledger, hsm)
    assert hsm.signatures == 2


def test_covering_gives_up_at_its_timeout_when_nothing_signs(
    ledger: Ledger, hsm: CountingHsm
) -> None:
    checkpointer = make(ledger, hsm)  # never started: nobody signs
    append(ledger)
    assert checkpointer.covering(0, timeout=0.01) is None
    assert hsm.attempts == 0


def test_concurrent_coverings_are_served_by_one_signature(
    ledger: Ledger, hsm: CountingHsm, started: list[Checkpointer]
) -> None:
    waiters = 8
    checkpointer = start(started, make(ledger, hsm))
    appended = threading.Barrier(waiters)
    results: dict[int, SignedCheckpoint | None] = {}
    errors: list[BaseException] = []

    def finish() -> None:
        try:
            [leaf] = append(ledger)
            appended.wait(DEADLINE)  # every leaf is in before anyone asks
            results[leaf] = checkpointer.covering(leaf, timeout=DEADLINE)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish) for _ in range(waiters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not errors
    assert sorted(results) == list(range(waiters))
    for leaf, signed in results.items():
        assert signed is not None and signed.size > leaf
    assert hsm.signatures < waiters
    assert hsm.signatures == 1  # all leaves were in when the first waiter woke the signer
    [signed] = {s for s in results.values() if s is not None}
    assert signed.size == waiters
    assert_checkpoint_of_log(signed, ledger, hsm)


def test_waiters_arriving_during_a_signature_share_the_next_one(
    ledger: Ledger, hsm: CountingHsm, started: list[Checkpointer]
) -> None:
    """Under load: while one checkpoint is at the HSM, every finish that comes meanwhile is
    served by the one signature after it."""
    waiters = 8
    checkpointer = start(started, make(ledger, hsm))
    hsm.hold = True
    results: dict[int, SignedCheckpoint | None] = {}
    appended = threading.Barrier(waiters)  # the late waiters and the test

    def finish(leaf: int) -> None:
        results[leaf] = checkpointer.covering(leaf, timeout=DEADLINE)

    [first] = append(ledger)
    threads = [threading.Thread(target=finish, args=(first,))]
    threads[0].start()
    assert hsm.entered.wait(DEADLINE), "the first checkpoint never reached the HSM"

    def late() -> None:
        [leaf] = append(ledger)
        appended.wait(DEADLINE)
        finish(leaf)

    threads += [threading.Thread(target=late) for _ in range(waiters - 1)]
    for thread in threads[1:]:
        thread.start()
    appended.wait(DEADLINE)  # all their leaves are in ...
    hsm.release.set()  # ... before the first signature returns
    for thread in threads:
        thread.join(DEADLINE)
    assert sorted(results) == list(range(waiters))
    assert [(leaf, s is not None and s.size > leaf) for leaf, s in sorted(results.items())] == [
        (leaf, True) for leaf in range(waiters)
    ]
    assert hsm.signatures == 2 < waiters
    assert [size for size, _, note in ledger.checkpoints() if note] == [1, waiters]


# -- the background thread -------------------------------------------------------------------


def test_the_thread_signs_within_its_interval_after_the_log_grows(
    ledger: Ledger,
    hsm: CountingHsm,
    started: list[Checkpointer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each tick of the thread reads the log's size once: counted, to wait for ticks.
    ticks = threading.Condition()
    looked = [0]
    size = ledger.audit_size

    def audit_size() -> int:
        with ticks:
            looked[0] += 1
            ticks.notify_all()
        return size()

    checkpointer = start(started, make(ledger, hsm, interval=0.05))
    append(ledger, 2)
    monkeypatch.setattr(ledger, "audit_size", audit_size)
    wait_for(lambda: hsm.signatures >= 1, "the first checkpoint", hsm.changed)
    wait_until(lambda: checkpointer.latest is not None, "it to be recorded")
    latest = checkpointer.latest
    assert latest is not None and latest.size == 2
    assert ledger.latest_checkpoint() == (2, latest.root, latest.note)
    assert_checkpoint_of_log(latest, ledger, hsm)

    # It keeps going: the next growth gets the next checkpoint ...
    append(ledger)
    wait_for(lambda: hsm.signatures >= 2, "the second checkpoint", hsm.changed)
    wait_until(lambda: (checkpointer.latest or latest).size == 3, "it to be recorded")
    assert [s for s, _, note in ledger.checkpoints() if note] == [2, 3]
    # ... and ticks without growth sign nothing.
    attempts, seen = hsm.attempts, looked[0]
    wait_for(lambda: looked[0] >= seen + 3, "three more ticks", ticks)
    assert hsm.attempts == attempts == 2


def test_stop_signs_the_leaves_left(
    ledger: Ledger, hsm: CountingHsm, started: list[Checkpointer]
) -> None:
    checkpointer = make(ledger, hsm)
    checkpointer.start()
    append(ledger, 5)
    assert hsm.signatures == 0  # the interval never elapses
    checkpointer.stop()
    latest = checkpointer.latest
    assert latest is not None and latest.size == 5
    assert ledger.latest_checkpoint() == (5, latest.root, latest.note)
    assert_checkpoint_of_log(latest, ledger, hsm)
    assert hsm.signatures == 1


def test_stop_with_nothing_new_signs_nothing(ledger: Ledger, hsm: CountingHsm) -> None:
    append(ledger, 2)
    first = make(ledger, hsm)
    first.sign_now()
    checkpointer = make(ledger, hsm)  # a restart: the newest checkpoint comes from the ledger
    assert checkpointer.latest == first.latest
    checkpointer.start()
    checkpointer.stop()
    assert hsm.signatures == 1


def test_stop_while_a_checkpoint_is_being_signed_still_signs_the_rest(
    ledger: Ledger, hsm: CountingHsm
) -> None:
    """Leaves appended while the thread signs an older size, then stop(): the thread must
    not take that older checkpoint for the last one."""
    checkpointer = make(ledger, hsm)
    checkpointer.start()
    append(ledger)
    hsm.hold = True
    waiter = threading.Thread(target=checkpointer.covering, args=(0, DEADLINE))
    waiter.start()
    assert hsm.entered.wait(DEADLINE), "the thread never started to sign"
    append(ledger, 2)  # after its size was taken (1): not in the checkpoint being signed
    stopper = threading.Thread(target=checkpointer.stop)
    stopper.start()
    # stop() has asked the thread to end (a private flag: nothing public says so) ...
    wait_until(checkpointer._stop.is_set, "stop() to ask the thread to end")
    hsm.hold = False
    hsm.release.set()  # ... and only now does the older signature complete
    stopper.join(DEADLINE)
    waiter.join(DEADLINE)
    assert not stopper.is_alive()
    latest = checkpointer.latest
    assert latest is not None and latest.size == 3
    assert [size for size, _, note in ledger.checkpoints() if note] == [1, 3]


# -- durability and errors -------------------------------------------------------------------


def test_the_checkpoint_row_is_committed_before_the_signature(
    ledger: Ledger, hsm: CountingHsm, tmp_path: Path
) -> None:
    append(ledger, 3)
    seen: list[list[tuple[int, bytes, str | None]]] = []

    def look_from_another_connection() -> None:
        other = sqlite3.connect(tmp_path / "ledger.sqlite3")
        try:
            rows = other.execute("SELECT size, root, note FROM audit_checkpoints").fetchall()
        finally:
            other.close()
        seen.append([(int(s), bytes(r), n) for s, r, n in rows])

    hsm.before_sign = look_from_another_connection
    hsm.failures = 1
    checkpointer = make(ledger, hsm)
    with pytest.raises(HsmError, match="CKR_TOKEN_NOT_PRESENT"):
        checkpointer.sign_now()
    root = ledger.audit_root(3)
    assert seen == [[(3, root, None)]]  # committed (another connection sees it) before signing
    assert ledger.checkpoints() == [(3, root, None)]
    assert ledger.latest_checkpoint() is None
    assert checkpointer.latest is None

    signed = checkpointer.sign_now()
    assert seen[1] == [(3, root, None)]
    assert (signed.size, signed.root) == (3, root)
    assert ledger.checkpoints() == [(3, root, signed.note)]
    assert ledger.latest_checkpoint() == (3, root, signed.note)
    assert_checkpoint_of_log(signed, ledger, hsm)

    # Nothing new: sign_now answers with the newest, no signature.
    assert checkpointer.sign_now() == signed
    assert hsm.signatures == 1


def test_an_hsm_error_in_the_thread_is_logged_once_and_retried(
    ledger: Ledger,
    hsm: CountingHsm,
    started: list[Checkpointer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retried every tick, but logged once per run of the same failure (an HSM outage would
    otherwise log a line a second), and once more when signing works again."""
    caplog.set_level(logging.INFO, logger="xbgw.audit")
    hsm.failures = 2
    checkpointer = start(started, make(ledger, hsm, interval=0.05))
    append(ledger)
    wait_for(lambda: hsm.signatures == 1, "a checkpoint after two failures", hsm.changed)
    wait_until(lambda: checkpointer.latest is not None, "the checkpoint to be recorded")
    assert hsm.attempts == 3
    reason = "the token is not present (CKR_TOKEN_NOT_PRESENT)"
    lines = [r for r in caplog.records if r.name == "xbgw.audit" and r.levelno >= logging.INFO]
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (logging.ERROR, f"audit checkpoint not signed: {reason}"),
        (logging.INFO, f"audit checkpoint signed again after: {reason}"),
    ]
    latest = checkpointer.latest
    assert latest is not None
    assert_checkpoint_of_log(latest, ledger, hsm)
    # Still alive: the next leaf is covered too.
    [leaf] = append(ledger)
    again = checkpointer.covering(leaf, timeout=DEADLINE)
    assert again is not None and again.size == 2


def test_a_malformed_signature_in_the_thread_is_logged_and_retried(
    ledger: Ledger,
    hsm: CountingHsm,
    started: list[Checkpointer],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token that answers with something that is not a P-256 signature must not end the
    thread either (every later Finish would wait out its timeout with no proof)."""
    caplog.set_level(logging.ERROR, logger="xbgw.audit")
    original = hsm.sign_digest
    answers = iter([b"\x00" * 63])

    def sign_digest(version: int, digest: bytes) -> bytes:
        return next(answers, None) or original(version, digest)

    monkeypatch.setattr(hsm, "sign_digest", sign_digest)
    checkpointer = start(started, make(ledger, hsm, interval=0.05))
    append(ledger)
    signed = checkpointer.covering(0, timeout=DEADLINE)
    assert signed is not None and signed.size == 1
    assert_checkpoint_of_log(signed, ledger, hsm)
    assert [r.getMessage() for r in caplog.records if r.name == "xbgw.audit"] == [
        "audit checkpoint not signed: signature is 63 bytes, expected 64 (r || s)"
    ]
