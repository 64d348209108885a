"""Incoming segments: verify, enforce the byte limit, spool and hash -- in a worker thread.

The gRPC thread only hands segments over a short bounded queue; AES-GCM, SHA-256 and file
writes release the GIL, so receiving the next message overlaps with processing this one.
The worker is woken once per ``WAKE_AT`` segments (or at the end of the stream) and takes
all that wait: each thread wake-up is a futex round trip, and one per 1 MiB segment was a
measurable share of the receiver's CPU. Ciphertext is read where the gRPC message holds it
(``gateway.wire.ciphertext_view``) and decrypted into one buffer per stream, which the hash
reads; the spool stores the ciphertext, so no plaintext is written.
The resume point moves only after the spool file is fsynced (every ``SYNC_EVERY_SEGMENTS``
and at the end of every stream, clean or broken): what the ledger calls durable is on disk.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable

from gateway import envelope
from gateway.errors import ByteLimitError, OfferMismatchError, TrailingDataError
from gateway.ledger import Ledger
from gateway.spool import PartialFile
from gateway.transfer import SegmentIn
from gateway.wire import ciphertext_view

SYNC_EVERY_SEGMENTS = 32
QUEUE_DEPTH = 4  # segments waiting for the worker, at most
WAKE_AT = 2  # segments waiting before the worker is woken (the end of the stream wakes it too)


class _Handoff:
    """A bounded hand-over from one thread to one other, in batches (see the module
    docstring). ``close`` marks the end: the taker gets what is left, then an empty batch."""

    def __init__(self, depth: int, wake_at: int) -> None:
        self._items: list[SegmentIn] = []
        self._depth = depth
        self._wake_at = min(wake_at, depth)
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: SegmentIn, abandoned: Callable[[], bool]) -> bool:
        """Hand ``item`` over, waiting while ``depth`` wait; False if ``abandoned()`` first
        (the worker failed: it takes nothing more)."""
        with self._cond:
            while len(self._items) >= self._depth:
                if abandoned():
                    return False
                self._cond.wait(0.2)
            self._items.append(item)
            if len(self._items) == self._wake_at:
                self._cond.notify()
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def take(self) -> list[SegmentIn]:
        """Everything waiting, once ``wake_at`` wait or the end came; [] after the end."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) >= self._wake_at or self._closed)
            batch, self._items = self._items, []
            self._cond.notify()  # a putter waiting for room
            return batch


class _Syncer:
    """fdatasync and resume-point updates in the background, coalesced.

    The worker keeps verifying and appending while the disk flushes: a requested point
    covers only bytes appended before the request, and fdatasync flushes at least those.
    """

    def __init__(self, partial: PartialFile, ledger: Ledger, transfer_id: str) -> None:
        self._partial = partial
        self._ledger = ledger
        self._transfer_id = transfer_id
        self._cond = threading.Condition()
        self._pending: tuple[int, int, bool] | None = None
        self._busy = False
        self._closed = False
        self.durable: tuple[int, int, bool] | None = None
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="xbgw-sync", daemon=True)
        self._thread.start()

    def request(self, point: tuple[int, int, bool]) -> None:
        with self._cond:
            self._pending = point
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                point, self._pending = self._pending, None
                self._busy = True
            try:
                if self.failure is None:
                    self._partial.sync()
                    self._ledger.record_progress(self._transfer_id, *point)
                    self.durable = point
            except BaseException as exc:
                self.failure = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def close(self) -> None:
        """Finish the requested syncs and stop the thread."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._busy)
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


class Intake:
    """The state of one upload stream into one partial spool file."""

    def __init__(
        self,
        ledger: Ledger,
        transfer_id: str,
        decryptor: envelope.StreamDecryptor,
        hasher: hashlib._Hash,
        partial: PartialFile,
        received: int,
        byte_limit: int,
        in_time: Callable[[], None] | None = None,
    ) -> None:
        """``in_time``: raises once the transfer's passport has run out; asked before each
        segment is taken, so no segment is accepted after it."""
        self._ledger = ledger
        self._in_time = in_time
        self.transfer_id = transfer_id
        self.decryptor = decryptor
        self.hasher = hasher
        self._partial = partial
        self.received = received
        self._byte_limit = byte_limit
        self._durable = (decryptor.next_index, received)
        # The point of the bytes appended to the spool file. The decryptor advances before
        # the byte-limit check and the append, so it can be one segment ahead of the file.
        self._appended = (decryptor.next_index, received, decryptor.done)
        self._unsynced = 0
        self._syncer = _Syncer(partial, ledger, transfer_id)
        self.failure: BaseException | None = None
        #: Each segment's plaintext, decrypted to be hashed (made at the first segment).
        self._plain: bytearray | None = None

    def run(self, segments: Iterable[SegmentIn]) -> None:
        """Consume ``segments`` (from the gRPC thread) with the work done in a worker thread."""
        work = _Handoff(QUEUE_DEPTH, WAKE_AT)
        worker = threading.Thread(target=self._work, args=(work,), name="xbgw-intake")
        worker.start()
        try:
            for segment in segments:
                if self.failure is not None:
                    break
                if not work.put(segment, lambda: self.failure is not None):
                    break
        finally:
            work.close()
            worker.join()
        if self.failure is not None:
            raise self.failure

    def _work(self, work: _Handoff) -> None:
        while batch := work.take():
            for item in batch:
                if self.failure is not None:
                    break  # take the rest, until the end
                try:
                    self._take(item)
                except BaseException as exc:
                    self.failure = exc

    def _take(self, segment: SegmentIn) -> None:
        if segment.transfer_id != self.transfer_id:
            raise OfferMismatchError(
                f"segment for {segment.transfer_id!r} inside the upload of {self.transfer_id!r}"
            )
        if self.decryptor.done:
            raise TrailingDataError(f"segment {segment.index} arrived after the final segment")
        if self._in_time is not None:
            self._in_time()
        ciphertext = ciphertext_view(segment)
        if self._plain is None:
            self._plain = bytearray(self.decryptor.header.segment_size)
        plaintext = self.decryptor.decrypt_segment_into(
            segment.index, ciphertext, segment.final, self._plain
        )
        if self.received + len(plaintext) > self._byte_limit:
            raise ByteLimitError(
                f"transfer {self.transfer_id} exceeds its limit of {self._byte_limit} bytes "
                "(passport byte_limit or partner limit)"
            )
        self._partial.append(ciphertext)
        self.received += len(plaintext)
        self.hasher.update(plaintext)
        self._appended = (self.decryptor.next_index, self.received, self.decryptor.done)
        self._unsynced += 1
        if self._unsynced >= SYNC_EVERY_SEGMENTS:
            self._syncer.request(self._appended)
            self._unsynced = 0

    @property
    def next_index(self) -> int:
        """The index after the last segment appended to the spool (the resume point)."""
        return self._appended[0]

    @property
    def done(self) -> bool:
        """True once the final segment is appended to the spool."""
        return self._appended[2]

    def save_point(self) -> None:
        """Wait for background syncs, then fsync the rest and move the resume point to it."""
        self._syncer.close()
        if self._syncer.failure is not None:
            raise self._syncer.failure
        next_index, received, done = self._appended
        point = (next_index, received)
        durable = self._syncer.durable
        if durable is not None:
            self._durable = (durable[0], durable[1])
        if point == self._durable and not done:
            return
        self._partial.sync()
        self._ledger.record_progress(self.transfer_id, next_index, received, done)
        self._durable = point

    def close(self) -> None:
        """Make the resume point durable (even after a failure) and close the file."""
        try:
            self.save_point()
        finally:
            self._partial.close()

    def discard(self) -> None:
        self._syncer.close()
        self._partial.close()
