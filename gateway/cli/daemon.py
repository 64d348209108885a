"""``xbgw serve`` and the verbs that talk to a running daemon over its local socket.

Imported only when one of these verbs runs (see ``gateway.cli._daemon_verb``): grpc and the
stubs cost a tenth of a second at start-up that ``xbgw keys`` and ``xbgw passport`` need not
pay.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

import grpc

from gateway._proto.xbgw.v1 import local_pb2
from gateway.cli.common import read_token
from gateway.cli.local_socket import rpc_error as _rpc_error
from gateway.cli.local_socket import socket_path as _socket_path
from gateway.cli.local_socket import stub as _stub
from gateway.errors import PartnerError, UsageError
from gateway.wire import state_from_wire

READ_CHUNK = 1 << 20


class ProgressBar:
    """A one-line bar on a terminal; a line per 10% otherwise (logs stay readable)."""

    def __init__(self, total: int, out: IO[str]) -> None:
        self.total = max(total, 1)
        self.out = out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self._last_decile = -1

    def update(self, done: int) -> None:
        fraction = min(done / self.total, 1.0)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed / 1e6
        if self.tty:
            filled = int(fraction * 30)
            self.out.write(
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction:6.1%} "
                f"{done / 2**20:9.1f} MiB  {rate:7.1f} MB/s"
            )
            self.out.flush()
            return
        decile = int(fraction * 10)
        if decile > self._last_decile:
            self._last_decile = decile
            self.out.write(f"sent {fraction:6.1%} ({done / 2**20:.1f} MiB, {rate:.1f} MB/s)\n")
            self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.daemon import serve

    return serve(Path(args.config))


def cmd_send(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        # Opened here, not in the request stream: a file we cannot read is a usage error,
        # not a transfer cancelled halfway.
        src = path.open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    with src:
        return _send(args, src, os.fstat(src.fileno()).st_size)


def _send(args: argparse.Namespace, src: BinaryIO, size: int) -> int:
    token = read_token(args.passport)

    def requests() -> Iterator[local_pb2.SendRequest]:
        yield local_pb2.SendRequest(
            start=local_pb2.SendStart(partner=args.to, passport=token, size=size)
        )
        while block := src.read(READ_CHUNK):
            yield local_pb2.SendRequest(data=block)

    channel, stub = _stub(args)
    bar = ProgressBar(size, sys.stderr) if not args.quiet else None
    summary = None
    try:
        for event in stub.Send(requests()):
            kind = event.WhichOneof("kind")
            if kind == "accepted" and event.accepted.resume_from and not args.quiet:
                print(
                    f"resuming {event.accepted.transfer_id}: partner holds "
                    f"{event.accepted.resume_from} bytes",
                    file=sys.stderr,
                )
            elif kind == "progress" and bar is not None:
                bar.update(event.progress.bytes_sent)
            elif kind == "done":
                summary = event.done
    except grpc.RpcError as exc:
        if bar is not None:
            bar.close()
        raise _rpc_error(exc, _socket_path(args)) from None
    finally:
        channel.close()
    if bar is not None:
        bar.close()
    if summary is None:
        raise PartnerError("the gateway ended the transfer without a receipt")
    committed = datetime.datetime.fromtimestamp(summary.committed_at, datetime.UTC)
    print(f"delivered  {summary.transfer_id} to {summary.partner}")
    print(f"  size     {summary.plaintext_size} bytes")
    print(f"  sha256   {summary.plaintext_sha256}")
    print(f"  receipt  signed by {summary.signed_by} (verified)")
    print(f"  at       {committed:%Y-%m-%d %H:%M:%SZ}")
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    try:
        items = stub.ListInbox(local_pb2.ListInboxRequest(), timeout=30).items
    except grpc.RpcError as exc:
        raise _rpc_error(exc, _socket_path(args)) from None
    finally:
        channel.close()
    if not items:
        print("inbox is empty")
        return 0
    print(f"{'TRANSFER':<34} {'FROM':<12} {'SIZE':>14} {'CLASS':<10} {'COMMITTED':<20} SHA-256")
    for item in items:
        when = datetime.datetime.fromtimestamp(item.committed_at, datetime.UTC)
        print(
            f"{item.transfer_id:<34} {item.sender:<12} {item.size:>14} {item.classification:<10} "
            f"{when:%Y-%m-%d %H:%M:%SZ}  {item.plaintext_sha256[:16]}…"
        )
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    target = Path(args.output)
    if target.is_dir():
        raise UsageError(f"-o {target} is a directory; name the file to write")
    partial = target.with_name(f".{target.name}.xbgw-partial")
    channel, stub = _stub(args)
    written = 0
    try:
        with partial.open("wb") as dst:
            for chunk in stub.Fetch(local_pb2.FetchRequest(transfer_id=args.transfer_id)):
                dst.write(chunk.data)
                written += len(chunk.data)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(partial, target)
    except grpc.RpcError as exc:
        raise _rpc_error(exc, _socket_path(args)) from None
    finally:
        partial.unlink(missing_ok=True)
        channel.close()
    print(f"fetched {args.transfer_id}: {written} bytes to {target}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    try:
        status = stub.Status(local_pb2.StatusRequest(), timeout=10)
    except grpc.RpcError as exc:
        raise _rpc_error(exc, _socket_path(args)) from None
    finally:
        channel.close()
    up = int(time.time()) - status.started_at
    print(f"gateway   {status.gateway_id} ({status.jurisdiction}), xbgw {status.version}, up {up}s")
    print(f"partners  {', '.join(status.partners) or 'none'}")
    for t in status.transfers:
        known = state_from_wire(t.state)
        state = known.value if known is not None else "?"
        arrow = "<-" if t.direction == "in" else "->"
        print(f"  {t.transfer_id:<34} {arrow} {t.partner:<12} {state:<10} {t.bytes} bytes")
    return 0
