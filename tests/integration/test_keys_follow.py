"""Key states shared by several nodes, on the real PostgreSQL: two ledgers on one database
(two nodes), each with its own key ring over one token (the shared token files, as a list
of versions). A change made through one ring is followed by the other -- by its follower
thread, or at once when a message names a version it does not know -- and the key verbs
take the ledger's key-state lock, so two rotations at once make two successive versions.
On SQLite the lock is nothing at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import ledger_keys
from gateway.config import DAY, KeysConfig
from gateway.errors import KeyLifecycleError
from gateway.keyring import KeyFollower, KeyRing
from gateway.keys import KeyState, Purpose
from gateway.ledger import Ledger
from gateway.store.postgres import PostgresDatabase
from tests.postgres import PASSWORD, Cluster, postgres  # noqa: F401
from tests.system.harness import wait_until

TRANSPORT, SIGNING, STORAGE = Purpose.TRANSPORT, Purpose.SIGNING, Purpose.STORAGE
ME = "frankfurt"
DEADLINE = 10.0


class SharedToken:
    """The token both nodes open: its versions, every key made, and a gate that can hold a
    ``generate`` until the test opens it (to catch a second rotation mid-way)."""

    def __init__(self) -> None:
        self.held = {purpose: [1] for purpose in Purpose}
        self.generated: list[tuple[Purpose, int]] = []
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None
        self.inside = threading.Event()  # a generate is waiting at the gate

    def versions(self, purpose: Purpose) -> list[int]:
        with self.lock:
            return sorted(self.held[purpose])

    def generate(self, purpose: Purpose, version: int | None = None) -> int:
        if self.gate is not None:
            self.inside.set()
            assert self.gate.wait(DEADLINE), "the test never opened the gate"
        with self.lock:
            assert version is not None and version not in self.held[purpose], version
            self.held[purpose].append(version)
            self.generated.append((purpose, version))
        return version

    def destroy(self, purpose: Purpose, version: int) -> None:
        with self.lock:
            self.held[purpose].remove(version)


@pytest.fixture
def nodes(postgres: Cluster) -> Iterator[tuple[KeyRing, KeyRing, SharedToken]]:  # noqa: F811
    url = postgres.database("keys_follow")
    a, b = Ledger(PostgresDatabase(url, PASSWORD)), Ledger(PostgresDatabase(url, PASSWORD))
    token = SharedToken()
    try:
        yield KeyRing(ME, a, token), KeyRing(ME, b, token), token
    finally:
        a.close()
        b.close()


def _waiting_for_advisory_lock(ledger: Ledger) -> bool:
    row = ledger.store.one(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return int(row[0]) > 0


def test_a_rotation_on_one_node_is_followed_by_the_other(
    nodes: tuple[KeyRing, KeyRing, SharedToken], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, _ = nodes
    a.rotate(TRANSPORT)
    assert (a.transport, b.transport) == (2, 1)  # b has not looked yet
    with caplog.at_level(logging.INFO, logger="xbgw.keys"):
        assert b.follow() == ["transport v2 active", "transport v1 decrypt-only"]
        assert b.follow() == []  # nothing new: nothing logged again
    followed = [r.getMessage() for r in caplog.records if "another node" in r.getMessage()]
    assert followed == [
        "key states changed on another node: transport v2 active, transport v1 decrypt-only"
    ]
    assert b.transport == 2
    assert b.find(TRANSPORT, 1) == a.find(TRANSPORT, 1)


def test_an_unknown_newer_version_is_asked_of_the_ledger_at_once(
    nodes: tuple[KeyRing, KeyRing, SharedToken],
) -> None:
    a, b, _ = nodes
    a.rotate(STORAGE)
    # A stored header (or a partner's offer) names v2: b asks now, not at its next beat.
    assert b.opens(STORAGE, 2)
    assert b.storage == 2
    assert not b.opens(STORAGE, 7)  # still unknown after asking: refused
    assert not b.opens(TRANSPORT, 0)


def test_the_follower_thread_picks_changes_up_within_its_period(
    nodes: tuple[KeyRing, KeyRing, SharedToken],
) -> None:
    a, b, _ = nodes
    follower = KeyFollower(b, period=0.05)
    follower.start()
    try:
        a.rotate(SIGNING)
        wait_until(lambda: b.signing == 2, DEADLINE, "node b to follow the signing rotation")
        assert b.find(SIGNING, 1) is not None
        assert b.find(SIGNING, 1).state is KeyState.VERIFY_ONLY  # type: ignore[union-attr]
    finally:
        follower.stop(DEADLINE)


def test_two_nodes_rotating_at_once_make_successive_versions(
    nodes: tuple[KeyRing, KeyRing, SharedToken],
) -> None:
    """Node a is held inside its rotation (making the key on the token); node b's rotation
    must wait for the key-state lock -- without it, both would make v2."""
    a, b, token = nodes
    token.gate = threading.Event()
    errors: list[BaseException] = []

    def rotate(ring: KeyRing) -> None:
        try:
            ring.rotate(TRANSPORT)
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=rotate, args=(a,))
    first.start()
    assert token.inside.wait(DEADLINE)
    second = threading.Thread(target=rotate, args=(b,))
    second.start()
    wait_until(
        lambda: _waiting_for_advisory_lock(a._ledger),
        DEADLINE,
        "node b's rotation to wait for the key-state lock",
    )
    assert token.generated == []
    token.gate.set()
    first.join(DEADLINE)
    second.join(DEADLINE)
    assert not errors, errors
    assert token.generated == [(TRANSPORT, 2), (TRANSPORT, 3)]
    states = {v.version: v.state for v in a._ledger.key_versions() if v.purpose is TRANSPORT}
    assert states == {1: KeyState.DECRYPT_ONLY, 2: KeyState.DECRYPT_ONLY, 3: KeyState.ACTIVE}
    a.follow()
    assert (a.transport, b.transport) == (3, 3)


def test_a_verb_waiting_too_long_for_the_lock_says_why(
    nodes: tuple[KeyRing, KeyRing, SharedToken], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _ = nodes
    a.rotate(TRANSPORT)
    monkeypatch.setattr(ledger_keys, "KEY_STATES_LOCK_SECONDS", 1)
    # Node a is mid-change (holds the lock); node b waits, then gives up and says why.
    with a._ledger.key_states_locked(), pytest.raises(KeyLifecycleError) as refused:
        b.retire(TRANSPORT, 1)
    assert str(refused.value) == (
        "the key states' lock was not granted: another node has been changing key states "
        "for more than 1 s; try again when it is done"
    )
    assert b.rotate(TRANSPORT).version == 3  # the lock is free again: the verb goes through


def test_on_sqlite_the_lock_is_nothing(tmp_path: Path) -> None:
    """One node owns a SQLite ledger: no lock is taken, so even a verb inside the block
    (which on PostgreSQL would wait for itself) goes through."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ring = KeyRing(ME, ledger, SharedToken())
        with ledger.key_states_locked():
            assert ring.rotate(STORAGE).version == 2
        assert ring.follow() == []
    finally:
        ledger.close()


def test_the_schedule_on_two_nodes_at_once_rotates_once(
    nodes: tuple[KeyRing, KeyRing, SharedToken],
) -> None:
    """``xbgw keys rotate`` without purposes (the timer) on both nodes: each judged what is
    due under the lock, so the second finds nothing due any more."""
    a, b, _ = nodes
    a.policy = b.policy = KeysConfig(rotate_every={purpose: DAY for purpose in Purpose})
    now = time.time() + 2 * DAY  # every purpose is due for both rings
    a._clock = b._clock = lambda: now
    assert [v.version for v in a.rotate_due()] == [2, 2, 2]
    assert b.rotate_due() == []  # it judged on the states as a left them
    assert (b.transport, b.signing, b.storage) == (2, 2, 2)
