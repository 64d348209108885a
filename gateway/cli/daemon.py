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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from gateway._proto.xbgw.v1 import local_pb2
from gateway.cli.common import read_token
from gateway.cli.local_socket import connect, hand_over_file
from gateway.cli.local_socket import rpc_error as _rpc_error
from gateway.cli.local_socket import socket_path as _socket_path
from gateway.cli.local_socket import stub as _stub
from gateway.cli.progress import Mode, Progress, mode_for
from gateway.errors import PartnerError, UsageError

READ_CHUNK = 1 << 20
MAX_WAIT_SECONDS = 7 * 86_400  # limits.partner_wait_seconds allows no more


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
    token = read_token(args.passport, "--passport")
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

    with Progress(_mode(args), "sent", size or None) as progress:
        summary = _stream_send(args, requests(), progress)
        committed = datetime.datetime.fromtimestamp(summary.committed_at, datetime.UTC)
        progress.finish(
            "delivered",
            {
                "transfer_id": summary.transfer_id,
                "partner": summary.partner,
                "size": summary.plaintext_size,
                "sha256": summary.plaintext_sha256,
                "signed_by": summary.signed_by,
                "committed_at": summary.committed_at,
            },
            [
                f"delivered  {summary.transfer_id} to {summary.partner}",
                f"  size     {summary.plaintext_size} bytes",
                f"  sha256   {summary.plaintext_sha256}",
                f"  receipt  signed by {summary.signed_by} (verified)",
                f"  at       {committed:%Y-%m-%d %H:%M:%SZ}",
            ],
            size=summary.plaintext_size,
        )
    return 0


def _mode(args: argparse.Namespace) -> Mode:
    return mode_for(bool(args.quiet), bool(getattr(args, "json", False)), sys.stderr)


def _stream_send(
    args: argparse.Namespace, requests: Iterator[local_pb2.SendRequest], progress: Progress
) -> local_pb2.ReceiptSummary:
    """Run the Send call, relaying its events to ``progress``; the receipt summary."""
    summary = None
    with connect(args) as stub:
        # The call is ended here, on every path, not left to the garbage collector: a call
        # still open at interpreter shutdown can hang the exit in grpc's own finaliser.
        call = stub.Send(requests)
        try:
            for event in call:
                kind = event.WhichOneof("kind")
                if kind == "progress":
                    progress.update(event.progress.bytes_sent, event.progress.bytes_total)
                elif kind == "accepted":
                    progress.accepted(event.accepted.transfer_id, event.accepted.resume_from)
                elif kind == "done":
                    summary = event.done
                elif (note := _event_note(event)) is not None:
                    progress.note(kind, *note)
        except grpc.RpcError as exc:
            raise _rpc_error(exc, _socket_path(args)) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # a no-op once the call ended
            del call
    if summary is None:
        raise PartnerError(
            "the gateway ended the transfer without a receipt: see its log "
            "(journalctl -u xbgw), then repeat the command (a send resumes where it stopped)"
        )
    return summary


def _event_note(event: local_pb2.SendEvent) -> tuple[dict[str, Any], str] | None:
    """A queued or waiting event as ``--json`` fields and the line a person reads."""
    kind = event.WhichOneof("kind")
    if kind == "queued":
        queued = event.queued
        return (
            {"position": queued.position, "running": queued.running},
            f"queued: position {queued.position}, {queued.running} sends running",
        )
    if kind == "waiting":
        waiting = event.waiting
        return (
            {
                "reason": waiting.reason,
                "attempt": waiting.attempt,
                "retry_in_ms": waiting.retry_in_ms,
                "waited_seconds": waiting.waited_seconds,
                "wait_seconds": waiting.wait_seconds,
            },
            f"{waiting.reason}; retrying in {waiting.retry_in_ms / 1000:.1f}s, waited "
            f"{waiting.waited_seconds}s of {waiting.wait_seconds}s",
        )
    return None


def cmd_fetch(args: argparse.Namespace) -> int:
    target = Path(args.output)
    if target.is_dir():
        raise UsageError(f"-o {target} is a directory; name the file to write")
    partial = target.with_name(f".{target.name}.xbgw-partial")
    with Progress(_mode(args), "fetched", None) as progress:
        try:
            written = _fetch_into(args, partial, progress)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        progress.finish(
            "fetched",
            {"transfer_id": args.transfer_id, "size": written, "path": str(target.absolute())},
            [f"fetched {args.transfer_id}: {written} bytes to {target}"],
            size=written,
        )
    return 0


def _fetch_into(args: argparse.Namespace, partial: Path, progress: Progress) -> int:
    """Stream the plaintext into ``partial``, synced; the bytes written."""
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
                progress.update(written)
            dst.flush()
            os.fsync(dst.fileno())
    except grpc.RpcError as exc:
        raise _rpc_error(exc, _socket_path(args)) from None
    finally:
        channel.close()
    return written
