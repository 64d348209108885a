"""The harness as a local application: ``LocalGateway.Send`` over the daemon's Unix socket.

Three ways in: :meth:`LocalClient.send` streams the data through the socket (a program
producing data on the fly), :meth:`LocalClient.send_file` hands the open file to the daemon
(``gateway.fdpass``), which reads it itself, and :meth:`LocalClient.send_small` sends a
payload of at most one segment in one unary ``SendSmall`` call (what
:meth:`LocalClient.send_bytes` uses whenever the payload fits: the small-transfer figures).

A transfer is timed from the moment the call is made (for ``Send`` the ``start`` message and
the first data chunks are handed to gRPC then) until the ``done`` event arrives, or the
``SendSmall`` answer: the daemon gives either only after the partner's signed receipt has
verified against its pinned key and matched what was sent. The harness also checks the
receipt summary's size and SHA-256 against the bytes it submitted.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc
from gateway.fdpass import fd_socket_path, hand_over


@dataclass(frozen=True)
class SendResult:
    seconds: float
    bytes: int
    transfer_id: str

    @property
    def mbps(self) -> float:
        return self.bytes / self.seconds / 1e6


def file_chunks(path: Path, size: int, chunk_size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``path`` in ``chunk_size`` reads."""
    left = size
    with path.open("rb") as src:
        while left > 0:
            block = src.read(min(chunk_size, left))
            if not block:
                raise RuntimeError(f"{path} is shorter than {size} bytes")
            left -= len(block)
            yield block


class LocalClient:
    """One channel to a daemon's local socket, shared by any number of threads."""

    def __init__(
        self, socket_path: Path, max_message_bytes: int, segment_size: int | None = None
    ) -> None:
        """``segment_size``: the daemon's ``limits.segment_size``, the most ``SendSmall``
        carries (None: :meth:`send_bytes` always streams)."""
        self._segment_size = segment_size
        self._fd_socket = fd_socket_path(socket_path)
        self._channel = grpc.insecure_channel(
            f"unix:{socket_path}",
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._stub = local_pb2_grpc.LocalGatewayStub(self._channel)

    def send(
        self,
        partner: str,
        passport: str,
        chunks: Iterable[bytes],
        size: int,
        sha256: bytes,
        timeout: float | None = None,
    ) -> SendResult:
        """Send ``size`` bytes from ``chunks``; return the time to the verified receipt."""
        start = local_pb2.SendStart(partner=partner, passport=passport, size=size)
        return self._run(start, chunks, sha256, time.perf_counter(), timeout)

    def send_file(
        self,
        partner: str,
        passport: str,
        path: Path,
        sha256: bytes,
        timeout: float | None = None,
    ) -> SendResult:
        """Send the file at ``path`` by handing its open descriptor to the daemon; the time
        counts from the handover to the verified receipt."""
        with path.open("rb") as src:
            size = os.fstat(src.fileno()).st_size
            started = time.perf_counter()
            ticket = hand_over(self._fd_socket, src.fileno())
        start = local_pb2.SendStart(
            partner=partner, passport=passport, size=size, file_ticket=ticket
        )
        return self._run(start, [], sha256, started, timeout)

    def _run(
        self,
        start: local_pb2.SendStart,
        chunks: Iterable[bytes],
        sha256: bytes,
        started: float,
        timeout: float | None,
    ) -> SendResult:
        """One ``Send``: ``start``, then ``chunks`` as data; checks the receipt summary."""
        size = start.size

        def requests() -> Iterator[local_pb2.SendRequest]:
            yield local_pb2.SendRequest(start=start)
            for block in chunks:
                yield local_pb2.SendRequest(data=block)

        summary = None
        seconds = 0.0
        for event in self._stub.Send(requests(), timeout=timeout):
            if event.WhichOneof("kind") == "done":
                seconds = time.perf_counter() - started
                summary = event.done
        if summary is None:
            raise RuntimeError("the gateway ended the transfer without a receipt")
        return _checked(summary, size, sha256, seconds)

    def send_small(
        self,
        partner: str,
        passport: str,
        data: bytes,
        sha256: bytes,
        timeout: float | None = None,
    ) -> SendResult:
        """Send ``data`` (at most one segment) in one unary ``SendSmall`` call."""
        request = local_pb2.SendSmallRequest(
            partner=partner, passport=passport, size=len(data), data=data
        )
        started = time.perf_counter()
        summary = self._stub.SendSmall(request, timeout=timeout)
        return _checked(summary, len(data), sha256, time.perf_counter() - started)

    def send_bytes(self, partner: str, passport: str, data: bytes) -> SendResult:
        """``SendSmall`` when ``data`` fits one segment, else the streaming ``Send``."""
        sha256 = hashlib.sha256(data).digest()
        if self._segment_size is not None and len(data) <= self._segment_size:
            return self.send_small(partner, passport, data, sha256)
        return self.send(partner, passport, [data], len(data), sha256)

    def close(self) -> None:
        self._channel.close()


def _checked(
    summary: local_pb2.ReceiptSummary, size: int, sha256: bytes, seconds: float
) -> SendResult:
    """The result of a send whose receipt summary names the bytes submitted and a key."""
    if summary.plaintext_size != size or summary.plaintext_sha256 != sha256.hex():
        raise RuntimeError(
            f"receipt for {summary.transfer_id} says {summary.plaintext_size} bytes, "
            f"sha256 {summary.plaintext_sha256}; sent {size} bytes, sha256 {sha256.hex()}"
        )
    if not summary.signed_by:
        raise RuntimeError(f"receipt for {summary.transfer_id} names no verifying key")
    return SendResult(seconds, size, summary.transfer_id)
