"""Key administration as the daemon serves it on the local socket, and the state lock.

The local servicer's key RPCs run in process over a real ledger and KeyRing (SoftwareHsm),
with a stand-in gRPC context: what ``xbgw keys status|rotate|retire|destroy|rewrap`` get
back from a running daemon, refusals included (status and reason).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc
import pytest

from gateway._proto.xbgw.v1 import local_pb2
from gateway.config import KeysConfig
from gateway.errors import StateLockedError
from gateway.keyadmin import KeyAdministration, Progress, RewrapOutcome
from gateway.keyring import KeyRing
from gateway.keys import Purpose
from gateway.ledger import Ledger
from gateway.local import LocalServicer
from gateway.metrics import Metrics
from gateway.statelock import StateLock
from tests.fakes import SoftwareHsm

DAY = 86_400


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)


def context() -> grpc.ServicerContext:
    stand_in: Any = Context()
    return cast(grpc.ServicerContext, stand_in)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[LocalServicer, Clock, list[Progress]]]:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    clock = Clock()
    policy = KeysConfig(grace={Purpose.TRANSPORT: DAY, Purpose.SIGNING: DAY, Purpose.STORAGE: 0})
    ring = KeyRing("frankfurt", ledger, SoftwareHsm(), policy, clock=clock)
    calls: list[Progress] = []

    def rewrapper(progress: Progress) -> RewrapOutcome:
        calls.append(progress)
        progress(1, 2, "t-1")
        progress(2, 2, "t-2")
        return RewrapOutcome(ring.storage, 2, 0, ("t-3",), ("t-4: storage v9 is gone",), 1)

    admin = KeyAdministration(ring, rewrapper)
    servicer = LocalServicer(
        lambda: cast(Any, None),
        cast(Any, None),
        ledger,
        cast(Any, None),
        cast(Any, None),
        lambda: True,
        Metrics(),
        admin,
    )
    try:
        yield servicer, clock, calls
    finally:
        ledger.close()


def states(response: local_pb2.KeyStatusResponse) -> dict[str, str]:
    return {f"{k.purpose}/{k.version}": k.state for k in response.keys}


def test_status_lists_every_version_with_its_state(served: Any) -> None:
    servicer, _clock, _calls = served
    response = servicer.KeyStatus(local_pb2.KeyStatusRequest(), context())
    assert response.gateway_id == "frankfurt"
    assert states(response) == {
        "signing/1": "active",
        "storage/1": "active",
        "transport/1": "active",
    }
    assert all(k.activated_at and not k.deactivated_at for k in response.keys)
    assert list(response.changed) == []


def test_rotate_retire_destroy_through_the_servicer(served: Any) -> None:
    servicer, clock, _calls = served
    rotated = servicer.RotateKeys(local_pb2.RotateKeysRequest(purposes=["transport"]), context())
    assert list(rotated.changed) == ["frankfurt/transport/2"]
    assert states(rotated)["transport/1"] == "decrypt-only"
    old = next(k for k in rotated.keys if (k.purpose, k.version) == ("transport", 1))
    assert [b for b in old.retire_blockers if "grace period" in b], old.retire_blockers

    request = local_pb2.KeyVersionRequest(purpose="transport", version=1)
    with pytest.raises(Aborted) as early:
        servicer.RetireKey(request, context())
    assert early.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "frankfurt/transport/1 cannot be retired: its grace period" in early.value.details

    with pytest.raises(Aborted) as not_retired:
        servicer.DestroyKey(request, context())
    assert not_retired.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "only a retired version can be destroyed" in not_retired.value.details

    clock.now += DAY
    retired = servicer.RetireKey(request, context())
    assert states(retired)["transport/1"] == "retired"
    destroyed = servicer.DestroyKey(request, context())
    assert states(destroyed)["transport/1"] == "destroyed"
    assert list(destroyed.changed) == ["frankfurt/transport/1"]


def test_an_unknown_purpose_is_an_invalid_argument(served: Any) -> None:
    servicer, _clock, _calls = served
    with pytest.raises(Aborted) as bad:
        servicer.RotateKeys(local_pb2.RotateKeysRequest(purposes=["colour"]), context())
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "no key purpose 'colour'" in bad.value.details


def test_rotate_with_no_purpose_rotates_only_what_is_due(served: Any) -> None:
    servicer, clock, _calls = served
    nothing = servicer.RotateKeys(local_pb2.RotateKeysRequest(), context())
    assert list(nothing.changed) == [] and list(nothing.due) == []
    clock.now += 31 * DAY  # transport is due after 30 days, the others after a year
    due = servicer.KeyStatus(local_pb2.KeyStatusRequest(), context())
    assert list(due.due) == ["transport"]
    rotated = servicer.RotateKeys(local_pb2.RotateKeysRequest(), context())
    assert list(rotated.changed) == ["frankfurt/transport/2"]


def test_rewrap_streams_progress_then_the_outcome(served: Any) -> None:
    servicer, _clock, calls = served
    events = list(servicer.RewrapKeys(local_pb2.RewrapKeysRequest(), context()))
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds == ["progress", "progress", "done"]
    assert [(e.progress.done, e.progress.total) for e in events[:2]] == [(1, 2), (2, 2)]
    done = events[-1].done
    assert (done.to_version, done.rewrapped, done.remaining) == (1, 2, 1)
    assert list(done.busy) == ["t-3"] and list(done.failed) == ["t-4: storage v9 is gone"]
    assert len(calls) == 1


def test_the_state_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    with StateLock(tmp_path, "xbgw serve (frankfurt)"):
        # Another process (a lock held in this one would be re-entrant for flock per fd,
        # but a second open file description is refused just the same).
        with pytest.raises(StateLockedError, match=r"in use by xbgw serve \(frankfurt\) \(pid"):
            StateLock(tmp_path, "xbgw keys (offline)").acquire()
        script = textwrap.dedent(
            f"""
            from pathlib import Path
            from gateway.statelock import StateLock
            from gateway.errors import StateLockedError
            try:
                StateLock(Path({str(tmp_path)!r}), "other").acquire()
            except StateLockedError as exc:
                print(exc)
            """
        )
        other = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        assert "stop it first (systemctl stop xbgw)" in other.stdout
    # Released: the next holder gets it.
    StateLock(tmp_path, "xbgw keys (offline)").acquire().release()
