"""``xbgw serve`` and the verbs that talk to a running daemon over its local socket.

Imported only when one of these verbs runs (see ``gateway.cli._daemon_verb``): grpc and the
stubs cost a tenth of a second at start-up that ``xbgw keys`` and ``xbgw passport`` need not
pay.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

import grpc

from gateway._proto.xbgw.v1 import local_pb2
from gateway.cli.common import read_token
from gateway.cli.local_socket import connect, hand_over_file
from gateway.cli.local_socket import rpc_error as _rpc_error
from gateway.cli.local_socket import socket_path as _socket_path
from gateway.cli.local_socket import stub as _stub
from gateway.errors import PartnerError, UsageError

READ_CHUNK = 1 << 20
MAX_WAIT_SECONDS = 7 * 86_400  # limits.partner_wait_seconds allows no more


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
        info = os.fstat(src.fileno())
        # A regular file is handed to the daemon open (gateway.fdpass) and read there; a
        # pipe, a FIFO or a device is streamed, as a program producing data on the fly.
        regular = stat.S_ISREG(info.st_mode)
        return _send(args, src, info.st_size, regular)


def _named_digest(token: str) -> str | None:
    """The passport's ``sub``, read unverified and only to decide whether to hash the file
    first: the daemon verifies the passport and compares."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None  # not a passport: the daemon says why
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def _declared_digest(token: str, src: BinaryIO) -> bytes:
    """The file's SHA-256 when the passport names a data set (``sub``), else nothing.

    Declared, the daemon refuses the wrong file before the offer -- nothing crosses and the
    passport stays usable -- and never sends the final segment of data that no longer hashes
    to it. It costs a second read of the file (measured: SHA-256 at about 1.3 GB/s here,
    against about 0.23 GB/s for a send), so only a passport that names a digest pays it; a
    file that cannot be read twice (a pipe) is not hashed, and is checked at the manifest."""
    if _named_digest(token) is None or not src.seekable():
        return b""
    hasher = hashlib.sha256()
    while block := src.read(READ_CHUNK):
        hasher.update(block)
    src.seek(0)
    return hasher.digest()


def _send(args: argparse.Namespace, src: BinaryIO, size: int, regular: bool = False) -> int:
    token = read_token(args.passport)
    start = local_pb2.SendStart(
        partner=args.to,
        passport=token,
        size=size,
        plaintext_sha256=_declared_digest(token, src),
    )
    if args.wait is not None:
        if args.wait > MAX_WAIT_SECONDS:
            raise UsageError(f"--wait {args.wait}s is longer than 7 days")
        start.wait_seconds = args.wait
    if regular:
        # None: the daemon has no file-handover socket (an older one): stream instead.
        start.file_ticket = hand_over_file(args, src.fileno()) or b""

    def requests() -> Iterator[local_pb2.SendRequest]:
        yield local_pb2.SendRequest(start=start)
        if start.file_ticket:
            return  # the daemon reads the file itself; the stream ends after 'start'
        while block := src.read(READ_CHUNK):
            yield local_pb2.SendRequest(data=block)

    bar = ProgressBar(size, sys.stderr) if not args.quiet else None
    summary = None
    with connect(args) as stub:
        # The call is ended here, on every path, not left to the garbage collector: a call
        # still open at interpreter shutdown can hang the exit in grpc's own finaliser.
        call = stub.Send(requests())
        try:
            for event in call:
                kind = event.WhichOneof("kind")
                if kind == "progress" and bar is not None:
                    bar.update(event.progress.bytes_sent)
                elif kind == "done":
                    summary = event.done
                elif not args.quiet and (note := _event_note(event)) is not None:
                    _show(note, bar)
        except grpc.RpcError as exc:
            raise _rpc_error(exc, _socket_path(args)) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # a no-op once the call ended
            del call
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


def _event_note(event: local_pb2.SendEvent) -> str | None:
    """The line a send event is worth on stderr (None: shown otherwise, or not at all)."""
    kind = event.WhichOneof("kind")
    if kind == "accepted" and event.accepted.resume_from:
        return (
            f"resuming {event.accepted.transfer_id}: partner holds "
            f"{event.accepted.resume_from} bytes"
        )
    if kind == "queued":
        return f"queued: position {event.queued.position}, {event.queued.running} sends running"
    if kind == "waiting":
        waiting = event.waiting
        return (
            f"{waiting.reason}; retrying in {waiting.retry_in_ms / 1000:.1f}s, waited "
            f"{waiting.waited_seconds}s of {waiting.wait_seconds}s"
        )
    return None


def _show(note: str, bar: ProgressBar | None) -> None:
    """A line on stderr; over the bar's line on a terminal (the bar redraws on its next
    update)."""
    prefix = "\r\x1b[K" if bar is not None and bar.tty else ""
    print(f"{prefix}{note}", file=sys.stderr, flush=True)


def cmd_fetch(args: argparse.Namespace) -> int:
    target = Path(args.output)
    if target.is_dir():
        raise UsageError(f"-o {target} is a directory; name the file to write")
    partial = target.with_name(f".{target.name}.xbgw-partial")
    channel, stub = _stub(args)
    written = 0
    try:
        # Decrypted data: readable by the caller only (0600, whatever the umask), from the
        # first byte on; os.replace keeps the mode.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover partial file keeps its old mode otherwise
        with os.fdopen(fd, "wb") as dst:
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
