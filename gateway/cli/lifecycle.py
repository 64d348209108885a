"""``xbgw keys status|rotate|retire|destroy|rewrap``: the key lifecycle verbs.

Each verb acts where the keys are in use: against the running daemon through its local
socket (the daemon does the work in its own HSM session; transfers keep flowing), or, when
no daemon answers and ``-c CONFIG`` is given, offline on the same HSM token and state
directory -- holding the state-directory lock, so it refuses if a daemon owns it after all.
Both print the same thing: see :func:`_print_status`.

Imported only when one of these verbs runs (grpc is not cheap to import).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Protocol

import grpc

from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc
from gateway.cli.local_socket import rpc_error, socket_path, stub
from gateway.errors import DaemonUnavailableError, UsageError
from gateway.keyadmin import KeyAdministration, KeyReport, Progress, RewrapOutcome
from gateway.keys import KeyRef, KeyState, KeyVersion, Purpose

RPC_TIMEOUT = 60.0


@dataclass(frozen=True)
class Status:
    owner: str
    keys: list[KeyReport]
    changed: list[str]
    due: list[str]


class Admin(Protocol):
    where: str

    def status(self) -> Status: ...

    def rotate(self, purposes: list[Purpose] | None) -> Status: ...

    def retire(self, purpose: Purpose, version: int) -> Status: ...

    def destroy(self, purpose: Purpose, version: int) -> Status: ...

    def rewrap(self, progress: Progress) -> RewrapOutcome: ...


# --- the two places a verb can act ------------------------------------------------------------


class _Daemon:
    """The running daemon, through its local socket."""

    def __init__(self, stub_: local_pb2_grpc.LocalGatewayStub, socket: str) -> None:
        self._stub, self._socket = stub_, socket
        self.where = f"the daemon at {socket}"

    def _status(self, call: object) -> Status:
        try:
            response: local_pb2.KeyStatusResponse = call()  # type: ignore[operator]
        except grpc.RpcError as exc:
            raise rpc_error(exc, self._socket) from None
        return Status(
            response.gateway_id,
            [_report(info) for info in response.keys],
            list(response.changed),
            list(response.due),
        )

    def status(self) -> Status:
        return self._status(
            lambda: self._stub.KeyStatus(local_pb2.KeyStatusRequest(), timeout=RPC_TIMEOUT)
        )

    def rotate(self, purposes: list[Purpose] | None) -> Status:
        request = local_pb2.RotateKeysRequest(purposes=[p.value for p in purposes or []])
        return self._status(lambda: self._stub.RotateKeys(request, timeout=RPC_TIMEOUT))

    def retire(self, purpose: Purpose, version: int) -> Status:
        request = local_pb2.KeyVersionRequest(purpose=purpose.value, version=version)
        return self._status(lambda: self._stub.RetireKey(request, timeout=RPC_TIMEOUT))

    def destroy(self, purpose: Purpose, version: int) -> Status:
        request = local_pb2.KeyVersionRequest(purpose=purpose.value, version=version)
        return self._status(lambda: self._stub.DestroyKey(request, timeout=RPC_TIMEOUT))

    def rewrap(self, progress: Progress) -> RewrapOutcome:
        try:
            for event in self._stub.RewrapKeys(local_pb2.RewrapKeysRequest()):
                if event.WhichOneof("kind") == "progress":
                    p = event.progress
                    progress(p.done, p.total, p.transfer_id)
                else:
                    d = event.done
                    return RewrapOutcome(
                        d.to_version,
                        d.rewrapped,
                        d.already,
                        tuple(d.busy),
                        tuple(d.failed),
                        d.remaining,
                    )
        except grpc.RpcError as exc:
            raise rpc_error(exc, self._socket) from None
        raise DaemonUnavailableError(f"the daemon at {self._socket} ended the rewrap unfinished")


class _Offline:
    """The daemon is stopped: the same service, on the same token and state directory."""

    def __init__(self, admin: KeyAdministration, where: str) -> None:
        self._admin = admin
        self.where = where

    def _status(self, changed: list[KeyVersion]) -> Status:
        owner = self._admin.owner
        return Status(
            owner,
            self._admin.status(),
            [str(KeyRef(owner, k.purpose, k.version)) for k in changed],
            [p.value for p in self._admin.due()],
        )

    def status(self) -> Status:
        return self._status([])

    def rotate(self, purposes: list[Purpose] | None) -> Status:
        return self._status(self._admin.rotate(purposes))

    def retire(self, purpose: Purpose, version: int) -> Status:
        return self._status([self._admin.retire(purpose, version)])

    def destroy(self, purpose: Purpose, version: int) -> Status:
        return self._status([self._admin.destroy(purpose, version)])

    def rewrap(self, progress: Progress) -> RewrapOutcome:
        return self._admin.rewrap(progress)


def _daemon_answers(channel: grpc.Channel) -> bool:
    try:
        grpc.channel_ready_future(channel).result(timeout=5)
    except grpc.FutureTimeoutError:
        return False
    return True


@contextlib.contextmanager
def _admin(args: argparse.Namespace) -> Iterator[Admin]:
    path = socket_path(args)
    if os.path.exists(path):
        channel, local = stub(args)
        try:
            if _daemon_answers(channel):
                yield _Daemon(local, path)
                return
        finally:
            channel.close()
    if not args.config:
        raise DaemonUnavailableError(
            f"no gateway answers at {path}; to act on the keys while the daemon is stopped, "
            "give -c CONFIG"
        )
    with _offline(args.config) as offline:
        yield offline


@contextlib.contextmanager
def _offline(config_path: str) -> Iterator[_Offline]:
    from gateway.config import load_config
    from gateway.hsm import Hsm
    from gateway.keyadmin import gateway_key_administration
    from gateway.keyring import KeyRing
    from gateway.ledger import open_ledger
    from gateway.spool import Spool
    from gateway.statelock import StateLock

    config = load_config(config_path)
    if config.hsm.softhsm_conf is not None:
        # The config wins over an inherited value, as in the daemon.
        os.environ["SOFTHSM2_CONF"] = str(config.hsm.softhsm_conf)
    with StateLock(config.state_dir, "xbgw keys (offline)"):
        ledger = open_ledger(config)
        try:
            with Hsm.open(str(config.hsm.module), config.hsm.token, config.hsm.pin.read()) as hsm:
                ring = KeyRing(config.id, ledger, hsm, config.keys, pinned=config.hsm.key_versions)
                admin = gateway_key_administration(
                    config=lambda: config,
                    ring=ring,
                    keys=hsm,
                    ledger=ledger,
                    spool=Spool(config.state_dir / "spool"),
                    hold_inbound=lambda _id: contextlib.nullcontext(),
                    hold_outbound=lambda _id: contextlib.nullcontext(),
                )
                where = f"offline (daemon stopped), state directory {config.state_dir}"
                yield _Offline(admin, where)
        finally:
            ledger.close()


def _report(info: local_pb2.KeyVersionInfo) -> KeyReport:
    def optional(value: int) -> int | None:
        return value or None

    return KeyReport(
        KeyVersion(
            purpose=Purpose(info.purpose),
            version=info.version,
            state=KeyState(info.state),
            created_at=info.created_at,
            activated_at=optional(info.activated_at),
            deactivated_at=optional(info.deactivated_at),
            retired_at=optional(info.retired_at),
            destroyed_at=optional(info.destroyed_at),
        ),
        tuple(info.retire_blockers),
    )


# --- the verbs ----------------------------------------------------------------------------------


def cmd_keys_status(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        status = admin.status()
        _print_status(status, args.json, admin.where)
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    purposes: list[Purpose] | None
    if args.all:
        if args.purposes:
            raise UsageError("give purposes or --all, not both")
        purposes = list(Purpose)
    elif args.purposes:
        purposes = [Purpose(p) for p in dict.fromkeys(args.purposes)]
    else:
        purposes = None  # what is due (keys.rotate_every): the scheduled run
    with _admin(args) as admin:
        status = admin.rotate(purposes)
    if not status.changed:
        print("nothing is due for rotation (keys.rotate_every); 'xbgw keys status' shows ages")
        return 0
    for ref in status.changed:
        purpose = Purpose(ref.split("/")[1])
        replaced = [
            r.ref(status.owner)
            for r in status.keys
            if r.key.purpose is purpose and r.key.state is KeyState.replaced(purpose)
        ]
        before = f"; {replaced[-1]} is now {KeyState.replaced(purpose).value}" if replaced else ""
        print(f"rotated   {ref} is active{before}")
        if purpose is Purpose.STORAGE:
            print("          next: 'xbgw keys rewrap' moves stored data keys to it")
    return 0


def cmd_keys_retire(args: argparse.Namespace) -> int:
    purpose = Purpose(args.purpose)
    with _admin(args) as admin:
        status = admin.retire(purpose, args.version)
    print(f"retired   {status.changed[0]}: it opens and verifies nothing from now on")
    print(f"          'xbgw keys destroy {purpose.value} {args.version}' deletes it from the HSM")
    return 0


def cmd_keys_destroy(args: argparse.Namespace) -> int:
    purpose = Purpose(args.purpose)
    with _admin(args) as admin:
        owner = admin.status().owner
        ref = str(KeyRef(owner, purpose, args.version))
        if not args.yes:
            _confirm(ref)
        status = admin.destroy(purpose, args.version)
    print(f"destroyed {status.changed[0]}: the HSM object is gone")
    return 0


def _confirm(ref: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError(f"destroying {ref} cannot be undone: confirm with --yes")
    answer = input(f"Destroying {ref} cannot be undone. Type its name to go on: ")
    if answer.strip() != ref:
        raise UsageError(f"not confirmed; {ref} is kept")


def cmd_keys_rewrap(args: argparse.Namespace) -> int:
    out = sys.stderr
    shown = [-1]

    def progress(done: int, total: int, transfer_id: str) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth > shown[0] or done == total:
            shown[0] = tenth
            out.write(f"rewrap {done}/{total} ({transfer_id})\n")
            out.flush()

    with _admin(args) as admin:
        outcome = admin.rewrap(progress)
    print(
        f"rewrapped {outcome.rewrapped} stored data key(s) to storage v{outcome.to_version} "
        f"({outcome.already} already there)"
    )
    for transfer_id in outcome.busy:
        print(f"  busy    {transfer_id}: in use right now; run 'xbgw keys rewrap' again")
    for failure in outcome.failed:
        print(f"  failed  {failure}")
    if outcome.remaining:
        print(f"  {outcome.remaining} still under older storage versions")
        return 1
    print("  none remains under an older storage version: older versions can be retired")
    return 0


def _when(epoch: int | None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch)) if epoch else "-"


def _print_status(status: Status, as_json: bool, where: str, out: IO[str] = sys.stdout) -> None:
    if as_json:
        out.write(
            json.dumps(
                {
                    "gateway": status.owner,
                    "due": status.due,
                    "keys": [
                        {
                            "key": r.ref(status.owner),
                            "state": r.key.state.value,
                            "created_at": r.key.created_at,
                            "activated_at": r.key.activated_at,
                            "deactivated_at": r.key.deactivated_at,
                            "retired_at": r.key.retired_at,
                            "destroyed_at": r.key.destroyed_at,
                            "retire_blockers": list(r.blockers),
                        }
                        for r in status.keys
                    ],
                },
                indent=2,
            )
            + "\n"
        )
        return
    out.write(f"keys of {status.owner}, from {where}\n")
    out.write(
        f"{'KEY':<28} {'STATE':<13} {'CREATED':<10} {'ACTIVE':<10} {'REPLACED':<10} "
        f"{'RETIRED':<10} NOTE\n"
    )
    for r in status.keys:
        k = r.key
        if k.state is KeyState.ACTIVE:
            note = "rotation due" if k.purpose.value in status.due else "in use for new work"
        elif k.state.in_service:
            note = "; ".join(r.blockers) or "can be retired"
        else:
            note = ""
        out.write(
            f"{r.ref(status.owner):<28} {k.state.value:<13} {_when(k.created_at):<10} "
            f"{_when(k.activated_at):<10} {_when(k.deactivated_at):<10} "
            f"{_when(k.retired_at or k.destroyed_at):<10} {note}\n"
        )
