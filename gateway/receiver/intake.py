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

**Striped uploads** (a partner with ``connections: N``, for long links): one transfer comes
over N Upload streams at once, each on its own TCP connection, each naming itself in the
``xbgw-stripe`` metadata as ``INDEX/COUNT/ATTEMPT`` (:class:`Stripe`). Segment ``i`` comes on
stripe ``i mod N``, each stripe in increasing order, so every stripe's next index is known
and anything else is refused as a stream out of order is (``SegmentOrderError``). The N
streams of one attempt share one :class:`StripedSession`: still one transfer writer (one
``Intake``, one worker, one decryptor), fed through a :class:`Reorder` buffer that hands the
worker segments strictly in index order -- so hashing, spool writes and the resume point are
exactly as for one stream, and the resume point is always the contiguous prefix.

The buffer is bounded: a stream whose next segment is ``REORDER_PER_STRIPE x N`` or more
indexes ahead of the batch the worker is at does not read it until there is room
(back-pressure through gRPC flow control to that stream's connection). It waits *before*
reading: the unread message stays in gRPC's flow-control window, which holds up to its
size whether the stream reads or not, so a waiting stream holds no segment of ours on top
(the receiver's peak memory with 8 stripes is gRPC's 8 windows plus this buffer). The
window is at least N, so the stripe carrying the missing segment is never the one held
back: no deadlock; once that stripe has ended without it, the others read on. A stream
that waits longer than ``STRIPE_WAIT_SECONDS`` (its peer stripe is dead and keepalive has
not said so yet), a stripe that never arrives, or one that breaks, ends the whole attempt:
every stream of it is ended with ``StripeBrokenError`` (UNAVAILABLE, which the sender
retries: it offers again and resumes from the contiguous point). A refusal (tampered, out
of order, over the byte limit, ...) on any stripe is the refusal of every stripe, as it
would be of the one stream. The session closes -- fsync, resume point, running hash kept
-- once every stripe that joined has ended, and only then does any of them answer: the
sender's Finish follows the last answer, so it always meets durable data.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway import envelope
from gateway.errors import (
    ByteLimitError,
    OfferMismatchError,
    SegmentOrderError,
    TrailingDataError,
    TransferConflictError,
    XbgwError,
)
from gateway.ledger import Ledger
from gateway.spool import PartialFile
from gateway.transfer import SegmentIn, UploadResult
from gateway.wire import ciphertext_len, ciphertext_view

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
        # Started at the first request: a stream shorter than SYNC_EVERY_SEGMENTS (every
        # small transfer) never needs it, and a thread per upload is a cost of its own.
        self._thread: threading.Thread | None = None

    def request(self, point: tuple[int, int, bool]) -> None:
        with self._cond:
            self._pending = point
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="xbgw-sync", daemon=True)
                self._thread.start()
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
        if self._thread is None:
            return
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._busy)
            self._closed = True
            self._cond.notify_all()
        self._thread.join()


class OneCall(list[SegmentIn]):
    """The segments of a whole transfer that came in one call (``Deliver``'s one segment).

    Why a type of its own: such an upload needs no save point of its own. Its data is in
    the partial file (not yet fsynced) and its resume point only in memory, and the finish of
    the same call makes both durable together -- the commit fsyncs the file before it moves
    into the inbox, and the ledger records the resume point in the transaction that commits
    the transfer (``finish(one_call=...)``). That is one fsync and one ledger transaction less
    per small transfer, and the resume point still never runs ahead of durable data: until
    the commit the ledger keeps the point from before the call, and the next upload cuts the
    file back to it."""


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
        #: A whole transfer taken from a ``OneCall`` from segment 0: its save point is the
        #: commit's (see :class:`OneCall`).
        self._deferred = False

    def run(self, segments: Iterable[SegmentIn]) -> None:
        """Consume ``segments`` (from the gRPC thread) with the work done in a worker thread.

        A list (Deliver's one segment) is taken in this thread: it is in memory already, so
        there is no receiving to overlap with, and a thread would cost more than the work."""
        if isinstance(segments, list):
            for segment in segments:
                self._take(segment)
            self._deferred = isinstance(segments, OneCall) and self._durable == (0, 0)
            return
        work = _Handoff(QUEUE_DEPTH, WAKE_AT)
        worker = self.start(work)
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

    def start(self, work: _Handoff | Reorder) -> threading.Thread:
        """The worker, taking batches from ``work`` (in index order) until it ends."""
        worker = threading.Thread(target=self._work, args=(work,), name="xbgw-intake")
        worker.start()
        return worker

    def _work(self, work: _Handoff | Reorder) -> None:
        while batch := work.take():
            for item in batch:
                if self.failure is not None:
                    break  # take the rest, until the end
                try:
                    self._take(item)
                except BaseException as exc:
                    self.failure = exc
                    if isinstance(work, Reorder):
                        work.fail(exc)  # the other streams stop feeding at once

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

    @property
    def deferred(self) -> bool:
        """Whether the whole transfer is appended and its save point left to the commit
        (:class:`OneCall`): the ledger's resume point is still the one from before."""
        return self._deferred and self.done

    def save_point(self) -> None:
        """Wait for background syncs, then fsync the rest and move the resume point to it
        (a :class:`OneCall`'s whole transfer: nothing -- the commit does both)."""
        self._syncer.close()
        if self._syncer.failure is not None:
            raise self._syncer.failure
        if self.deferred:
            return
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


# --- striped uploads (see the module docstring) ----------------------------------------------

#: The gRPC metadata key naming a stream's stripe: ``INDEX/COUNT/ATTEMPT``.
STRIPE_METADATA = "xbgw-stripe"
#: The most streams one transfer may be striped over (``partners[].connections`` allows 16).
MAX_STRIPES = 16
#: Segments the reorder buffer accepts ahead of the worker, per stripe (at least 1: see the
#: module docstring); the buffer's bytes are at most this x N x (segment size + tag). 1:
#: gRPC's window (at least 4 MiB per stream) already buffers each stream, and 2 cost N MiB
#: of peak memory with no gain measured at 200 ms.
REORDER_PER_STRIPE = 1
#: How long a stripe may wait for room in the reorder buffer, or for the other stripes of its
#: attempt to arrive, before the attempt is given up (a backstop: keepalive ends a dead
#: connection's stream in about twice ``limits.keepalive_seconds``). A module value so tests
#: can shorten it.
STRIPE_WAIT_SECONDS = 60.0

_ATTEMPT = re.compile(r"[0-9a-f]{8,64}")


class StripeBrokenError(XbgwError):
    """Another stream of a striped upload broke or stalled: this attempt is over; offering
    again tells the sender where to resume."""

    grpc_status = "UNAVAILABLE"


@dataclass(frozen=True)
class Stripe:
    """Which stream of a striped upload one Upload call is: ``index`` of ``count``, all of
    one ``attempt`` (a random hex token the sender draws per upload attempt, so streams of
    an older attempt still draining on the receiver never mix with a new one)."""

    index: int
    count: int
    attempt: str

    def encode(self) -> str:
        return f"{self.index}/{self.count}/{self.attempt}"

    @classmethod
    def decode(cls, value: str) -> Stripe:
        """Read the metadata value; a malformed one is refused with what it must be."""
        parts = value.split("/")
        if (
            len(parts) == 3
            and parts[0].isdigit()
            and parts[1].isdigit()
            and _ATTEMPT.fullmatch(parts[2])
        ):
            index, count = int(parts[0]), int(parts[1])
            if 0 <= index < count <= MAX_STRIPES:
                return cls(index, count, parts[2])
        raise OfferMismatchError(
            f"the {STRIPE_METADATA} metadata {value[:80]!r} must be INDEX/COUNT/ATTEMPT with "
            f"0 <= INDEX < COUNT <= {MAX_STRIPES} and ATTEMPT 8-64 lowercase hex digits"
        )

    def first(self, start: int) -> int:
        """The first index this stripe carries when the upload resumes at ``start``."""
        return start + (self.index - start) % self.count


class Reorder:
    """Segments from several streams, handed to the intake worker in index order.

    The same ``take`` as the one-stream hand-over (so :meth:`Intake._work` is shared). The
    room rule counts from the first segment of the batch the worker is still processing, so
    ``bytes`` -- the segments held here plus that batch -- never exceeds ``window`` segments.
    """

    def __init__(self, start: int, window: int, stripes: int = 1) -> None:
        """``stripes``: how many streams feed it (segment ``i`` comes on stream ``i mod
        stripes``), for :meth:`room` to know when the segment the worker needs can no
        longer come."""
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the worker waits here
        self._room = threading.Condition(self._lock)  # the streams wait here
        self._next = start  # the index the worker takes next
        self._floor = start  # the first index of the batch the worker is processing
        self._window = window
        self._held: dict[int, SegmentIn] = {}
        self._stripes = stripes
        self._ended: set[int] = set()  # the streams that ended (see stream_ended)
        self._batch_bytes = 0
        self.bytes = 0
        self.peak_bytes = 0
        self.peak_segments = 0
        #: Streams waiting for room now (a segment too far ahead of the worker).
        self.waiting = 0
        self._closed = False
        self.failure: BaseException | None = None

    @property
    def window(self) -> int:
        return self._window

    def room(self, index: int, wait_seconds: float) -> bool:
        """Wait until segment ``index`` would be taken without waiting, or until the stream
        carrying the segment the worker needs has ended without it (then waiting is no use:
        the caller reads on, and :meth:`put` decides as it would have); False once the
        session failed or closed. Raises ``StripeBrokenError`` after waiting
        ``wait_seconds`` (the stream carrying the segment the worker needs is stuck).

        A stream asks this *before* it reads its next message from gRPC: a message not yet
        read stays in gRPC's flow-control window, which holds its bytes whether the stream
        reads it or not, so a stream waiting here holds no segment of its own on top."""
        deadline = time.monotonic() + wait_seconds
        with self._lock:
            return self._room_for(index, deadline, wait_seconds, self._needed_gone)

    def stream_ended(self, stripe: int) -> None:
        """Stream ``stripe`` ended cleanly: it brings no more segments."""
        with self._lock:
            self._ended.add(stripe)
            self._room.notify_all()

    def _needed_gone(self) -> bool:
        """Under the lock: the segment the worker needs next can no longer come."""
        return self._next not in self._held and self._next % self._stripes in self._ended

    def put(self, segment: SegmentIn, wait_seconds: float) -> bool:
        """Hold ``segment`` until the worker reaches it, waiting while it is too far ahead
        (as :meth:`room`); False once the session failed or closed."""
        index = segment.index
        deadline = time.monotonic() + wait_seconds
        with self._lock:
            if not self._room_for(index, deadline, wait_seconds):
                return False
            self._held[index] = segment
            self.bytes += ciphertext_len(segment)
            self.peak_bytes = max(self.peak_bytes, self.bytes)
            self.peak_segments = max(self.peak_segments, len(self._held))
            if index == self._next:
                self._ready.notify()
            return True

    def _room_for(
        self,
        index: int,
        deadline: float,
        wait_seconds: float,
        no_use: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Under the lock: wait while ``index`` is too far ahead, unless ``no_use()``;
        False once failed/closed."""
        while index >= self._floor + self._window and not no_use():
            if self.failure is not None or self._closed:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise StripeBrokenError(
                    f"segment {index} waited {wait_seconds:.0f} s for segment {self._next}, "
                    "which has not arrived on its stream; this upload attempt is ended: "
                    "offer again to resume"
                )
            self.waiting += 1
            try:
                self._room.wait(left)
            finally:
                self.waiting -= 1
        return self.failure is None and not self._closed

    def take(self) -> list[SegmentIn]:
        """The contiguous run from the next index, waiting for its first segment; [] once
        closed or failed (segments held beyond a gap are dropped: the resume point is the
        contiguous prefix)."""
        with self._lock:
            self.bytes -= self._batch_bytes  # the worker is done with the previous batch
            self._batch_bytes = 0
            self._floor = self._next
            self._room.notify_all()
            while self._next not in self._held:
                if self._closed or self.failure is not None:
                    self._held.clear()
                    self.bytes = 0
                    return []
                self._ready.wait()
            batch = []
            while self._next in self._held:
                segment = self._held.pop(self._next)
                batch.append(segment)
                self._batch_bytes += ciphertext_len(segment)
                self._next += 1
            return batch

    def highest(self) -> int:
        """The highest index held (-1: none)."""
        with self._lock:
            return max(self._held, default=-1)

    def close(self) -> None:
        """No more segments: the worker takes what is contiguous, then ends."""
        with self._lock:
            self._closed = True
            self._ready.notify_all()
            self._room.notify_all()

    def fail(self, error: BaseException) -> None:
        """The attempt is over (the first error is kept): every waiter wakes."""
        with self._lock:
            if self.failure is None:
                self.failure = error
            self._ready.notify_all()
            self._room.notify_all()


class StripedSession:
    """The N streams of one striped upload attempt of one transfer (module docstring).

    The stream that creates it calls :meth:`setup` (the checks and the intake, as for one
    stream); every stream, the creator too, then calls :meth:`feed`. The last stream to end
    closes the session through ``settle`` (what one stream does at its end: durable resume
    point, kept hash, or the refusal of the transfer) and every stream answers with its
    result -- or, if the attempt failed, with the failure."""

    def __init__(self, transfer_id: str, stripe: Stripe) -> None:
        self.transfer_id = transfer_id
        self.attempt = stripe.attempt
        self.count = stripe.count
        self._cond = threading.Condition()
        self._joined: set[int] = set()
        self._ended: set[int] = set()
        self._ready = False
        self._closing = False
        self._done = False
        self._created = time.monotonic()
        self._intake: Intake | None = None
        self._worker: threading.Thread | None = None
        self._settle: Callable[[Intake, BaseException | None], UploadResult] | None = None
        self._result: UploadResult | None = None
        self._failure: BaseException | None = None  # setup's, or what the settling raised
        self._final: int | None = None
        self._start = 0
        self.reorder: Reorder | None = None
        #: Called once by the stream that closes the session, before any stream answers
        #: (the context's registry forgets the session: the next offer must not meet it).
        self.on_closed: Callable[[], None] = lambda: None

    def join(self, index: int) -> None:
        """Called under the context's registry lock (never waits)."""
        with self._cond:
            if self._closing:
                raise TransferConflictError(
                    f"transfer {self.transfer_id} is busy on another stream; its striped "
                    "upload is ending -- upload again shortly"
                )
            if index in self._joined:
                raise OfferMismatchError(
                    f"stripe {index} of {self.count} of upload attempt {self.attempt} of "
                    f"transfer {self.transfer_id} is already running; each stripe comes once"
                )
            self._joined.add(index)

    def setup(
        self,
        open_intake: Callable[[], Intake],
        settle: Callable[[Intake, BaseException | None], UploadResult],
    ) -> None:
        """Make the one intake (the creator only); its failure is every stream's."""
        try:
            intake = open_intake()
        except BaseException as exc:
            with self._cond:
                self._failure = exc
                self._ready = True
                self._cond.notify_all()
            return
        self._start = intake.next_index
        reorder = Reorder(self._start, max(REORDER_PER_STRIPE, 1) * self.count, self.count)
        with self._cond:
            self._intake, self._settle, self.reorder = intake, settle, reorder
            self._worker = intake.start(reorder)
            self._ready = True
            self._cond.notify_all()

    def feed(self, stripe: Stripe, segments: Iterable[SegmentIn]) -> UploadResult:
        """Stream ``stripe``'s segments into the reorder buffer; when it ends, wait for the
        session's end and answer as the session does."""
        with self._cond:
            self._cond.wait_for(lambda: self._ready)
        own: BaseException | None = None
        reorder = self.reorder
        if reorder is not None:
            try:
                self._feed(stripe, segments, reorder)
            except BaseException as exc:
                own = exc
                reorder.fail(exc)
            else:
                reorder.stream_ended(stripe.index)
        return self._leave(stripe.index, own)

    def _feed(self, stripe: Stripe, segments: Iterable[SegmentIn], reorder: Reorder) -> None:
        expected = stripe.first(self._start)
        iterator = iter(segments)
        # Room first, then read: a stream waiting for the worker leaves its next message in
        # gRPC's window (see Reorder.room). The index it would carry is known (``expected``);
        # a stream sending anything else is refused below, as it is otherwise.
        while reorder.room(expected, STRIPE_WAIT_SECONDS):
            segment = next(iterator, None)
            if segment is None or reorder.failure is not None:
                return
            index = segment.index
            if segment.transfer_id != self.transfer_id:
                raise OfferMismatchError(
                    f"segment for {segment.transfer_id!r} inside the upload of {self.transfer_id!r}"
                )
            with self._cond:
                final = self._final
                if final is not None and index > final:
                    raise TrailingDataError(
                        f"segment {index} arrived after the final segment {final}"
                    )
                if index != expected:
                    what = (
                        "a repeat or a replay"
                        if index < expected
                        else "an earlier segment is missing or out of order"
                    )
                    raise SegmentOrderError(
                        f"expected segment {expected} on stripe {stripe.index} of "
                        f"{stripe.count}, got {index} ({what})"
                    )
                if segment.final:
                    self._final = index
            if segment.final and reorder.highest() > index:
                raise TrailingDataError(
                    f"segment {reorder.highest()} arrived after the final segment {index}"
                )
            expected += stripe.count
            if not reorder.put(segment, STRIPE_WAIT_SECONDS):
                return

    def _leave(self, index: int, own: BaseException | None) -> UploadResult:
        with self._cond:
            self._ended.add(index)
            self._cond.notify_all()
            while not self._closing:
                if self._ended == self._joined and (
                    len(self._joined) == self.count or self._gave_up()
                ):
                    self._closing = True
                    break
                if self._gave_up():
                    # Answer the failure now rather than at the close: the sender, told,
                    # ends its other stripes -- which may be waiting for this one's slot.
                    return self._answer(own)
                late = self._created + STRIPE_WAIT_SECONDS - time.monotonic()
                if len(self._joined) < self.count and late <= 0 and self.reorder is not None:
                    missing = sorted(set(range(self.count)) - self._joined)
                    self.reorder.fail(
                        StripeBrokenError(
                            f"stripes {missing} of {self.count} of this upload never arrived "
                            f"within {STRIPE_WAIT_SECONDS:.0f} s; offer again to resume"
                        )
                    )
                    continue
                # A failure is recorded in the reorder buffer, which does not wake this
                # condition: look again at least every 0.2 s.
                self._cond.wait(min(max(late, 0.05), 0.2))
            else:
                self._cond.wait_for(lambda: self._done)
                return self._answer(own)
        try:
            self._close()
        finally:
            self.on_closed()
        with self._cond:
            self._done = True
            self._cond.notify_all()
        return self._answer(own)

    def _gave_up(self) -> bool:
        """The attempt failed (no stripe still missing is waited for) or never started."""
        return self.reorder is None or self.reorder.failure is not None

    def _close(self) -> None:
        """The last stream out: the worker finishes what is contiguous, then ``settle``."""
        reorder, worker, intake, settle = self.reorder, self._worker, self._intake, self._settle
        if reorder is None or worker is None or intake is None or settle is None:
            return  # setup failed: nothing was opened
        reorder.close()
        worker.join()
        failure = reorder.failure or intake.failure
        try:
            self._result = settle(intake, failure)
        except BaseException as exc:
            self._failure = exc

    def _answer(self, own: BaseException | None) -> UploadResult:
        if own is not None:
            raise own
        failure = self._failure
        if failure is None and self.reorder is not None:
            failure = self.reorder.failure
            if failure is not None and not isinstance(failure, XbgwError):
                failure = StripeBrokenError(
                    f"another stripe of this upload of transfer {self.transfer_id} broke "
                    f"({type(failure).__name__}); offer again to resume"
                )
        if failure is not None:
            raise failure
        assert self._result is not None
        return self._result

    @property
    def joined(self) -> int:
        with self._cond:
            return len(self._joined)
