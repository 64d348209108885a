"""The sender's data path: segment, hash and encrypt, record tags, release to the network.

Three stages in their own threads, so hashing, encryption, the ledger's fsync and the
network overlap (``hashlib`` and AES-GCM release the GIL): the producer (cut into segments,
hash, encrypt), the committer (record each segment's GCM tag durably, then release the batch)
and the caller's upload, which pulls :meth:`Pipeline.segments`.

Why memory stays bounded whatever the number of sends: encrypted segments waiting for the
network are the sender's biggest buffers (a slow partner fills every pipeline to its bound).
Each pipeline holds at most ``AHEAD_BYTES`` (or ``SEGMENTS_AHEAD`` segments) of them, and all
pipelines of the process together at most ``BUFFER_BUDGET`` bytes (:class:`Budget`): the
producer reserves room for a segment before it reads the segment's data, and room comes
back as the upload takes segments. A producer that finds no room while it holds part of a
batch hands that part on at once instead of waiting (its tags are committed, its segments
can leave and give their room back): no pipeline waits for room while holding some that
only it could free, so sends cannot deadlock each other. A send waiting for room has read
nothing it would have to hold: its data stays in the local client, held back by gRPC flow
control.

The replay window of released segments (``gateway.retry.SegmentReplay``, see
:meth:`Pipeline.replay`) is paid out of the same budget: a released segment's room passes
to the window instead of coming back, and a producer short of room makes its own window shed
first. Measured (``bench.load``, 64 sends of 8 MiB, 16 running): with a window of 4 MiB per
send outside the budget the sending daemon peaked at 212-272 MiB; inside it, 178-196 MiB.

Why tags are recorded before ciphertext leaves (resume safety): segment ``i`` of a
transfer always has the same nonce, so it must always carry the same plaintext. Same key and
nonce give the same GCM tag only for the same plaintext, so a resumed send whose source
changed is refused (``SourceChangedError``) before a reused nonce can leave the process. The
tag stands in for a per-segment SHA-256 at no extra cost.

A source that can be read again by offset (a handed-over regular file, :class:`Rereadable`)
makes any resume possible within the send: when the partner resumes from a segment the
replay window no longer holds, the window asks :meth:`Pipeline._made_again` for it, which
reads the segment at its offset, seals it again and passes it through the same tag check --
so only the bytes sent before go again, and a file changed in place is refused before its
segment leaves. Why here and not a second iterator from an offset: the pipeline has hashed
the whole source already (the manifest's digest), and the window already knows which
segments it let go; re-reading single segments needs no second producer, no new hash and no
seek shared with the first pass (``pread``). A segment made again is held by no window and
paid by no budget: one at a time per upload stream, taken by the network before the next.
Streams cannot be read again and keep the window's reach.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from gateway import envelope
from gateway.errors import DatasetMismatchError, SourceChangedError
from gateway.ledger import Ledger
from gateway.retry import REPLAY_BYTES, SegmentReplay
from gateway.transfer import SegmentIn
from gateway.wire import WireSegment, ciphertext_len, segment_head

DIGEST_BATCH = 8  # segments whose tags are committed together before they are sent
SEGMENTS_AHEAD = 32  # the most encrypted segments one pipeline holds ahead of the network
AHEAD_BYTES = 12 << 20  # ... and the most bytes of them
BUFFER_BUDGET = 16 << 20  # bytes of segments all pipelines of the process hold together
_LOOK_EVERY = 0.5  # a producer waiting for room looks at its stop flag this often

log = logging.getLogger("xbgw.pipeline")


class Rereadable(Protocol):
    """A send's source that can be read again at any offset (``gateway.fdpass.HandedFile``):
    ``size`` is its size when the send started."""

    @property
    def size(self) -> int: ...

    def size_now(self) -> int:
        """The size the source has now (a file may have been changed meanwhile)."""
        ...

    def read_at(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end)."""
        ...


class Budget:
    """Room for encrypted segments, shared by pipelines."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.room = threading.Condition()


class Lease:
    """One pipeline's share of a :class:`Budget`: room for segments ahead of the network
    (at most ``limit`` bytes) and for the released segments its replay window keeps
    (bounded by the window). :meth:`close` returns what it still holds; every way a
    pipeline ends calls it.

    Kept room is the first to go under pressure: a pipeline that needs room for its next
    segment and finds the budget spent asks its own window to shed (``shed_with``) before
    it waits. Segments ahead are data the send cannot move without; kept ones only spare a
    resumed stream a resend."""

    def __init__(self, budget: Budget, limit: int) -> None:
        self._budget = budget
        self._limit = limit
        self._held = 0
        self._kept = 0
        self._closed = False
        self._shed: Callable[[], bool] | None = None

    @property
    def held(self) -> int:
        return self._held

    @property
    def kept(self) -> int:
        return self._kept

    def shed_with(self, shed: Callable[[], bool]) -> None:
        """``shed`` gives kept room back (through :meth:`drop`), False when it has none to
        give; it is called without the budget's lock held."""
        self._shed = shed

    def take(self, size: int, stop: threading.Event, wait: bool = True) -> bool:
        """Wait for ``size`` bytes of room; False once ``stop`` is set or the lease closed,
        or at once when there is no room and not ``wait``.

        A request larger than the limit or the whole budget is granted once the lease holds
        nothing and the budget is all free, so even a huge segment moves.
        """
        budget = self._budget
        while True:
            with budget.room:
                if self._closed or stop.is_set():
                    return False
                alone = self._held == 0
                mine = self._held + size <= self._limit or alone
                shared = size <= budget.free or (alone and budget.free == budget.total)
                if mine and shared:
                    self._held += size
                    budget.free -= size
                    return True
                shed = self._shed if mine and self._kept > 0 else None
                if shed is None:
                    if not wait:
                        return False
                    budget.room.wait(_LOOK_EVERY)
                    continue
            if not shed():
                with budget.room:
                    budget.room.wait(_LOOK_EVERY)

    def give(self, size: int) -> None:
        """Room ahead back to the budget (a segment the network took, or one not sent)."""
        budget = self._budget
        with budget.room:
            size = min(size, self._held)
            self._held -= size
            budget.free += size
            budget.room.notify_all()

    def keep(self, slot: int, size: int) -> None:
        """A segment of ``size`` bytes, held in a ``slot`` of room ahead, is released to the
        network and kept by the window: its room moves to the window (the rest of the slot
        goes back)."""
        budget = self._budget
        with budget.room:
            slot = min(slot, self._held)
            size = min(size, slot)
            self._held -= slot
            self._kept += size
            budget.free += slot - size
            budget.room.notify_all()

    def drop(self, size: int) -> None:
        """The window let go of ``size`` bytes it kept."""
        budget = self._budget
        with budget.room:
            size = min(size, self._kept)
            self._kept -= size
            budget.free += size
            budget.room.notify_all()

    def close(self) -> None:
        """Return all room; forget the window (it and this lease would otherwise keep each
        other, and the window's segments, alive until the cyclic collector runs)."""
        budget = self._budget
        with budget.room:
            self._closed = True
            self._shed = None
            budget.free += self._held + self._kept
            self._held = self._kept = 0
            budget.room.notify_all()


#: Shared by every send of the process (a daemon has one sender).
BUDGET = Budget(BUFFER_BUDGET)


class Pipeline:
    """One send attempt's stages; see the module docstring."""

    _END = object()

    def __init__(
        self,
        ledger: Ledger,
        transfer_id: str,
        encryptor: envelope.StreamEncryptor,
        start: int,
        on_bytes: Callable[[int], None],
        budget: Budget = BUDGET,
        expect_sha256: bytes | None = None,
        reread: Rereadable | None = None,
    ) -> None:
        """``expect_sha256``: the SHA-256 the caller declared for all the data; the final
        segment is not released unless the data hashes to it (checked here, on the hash the
        manifest needs anyway, so a declared digest costs no second pass). ``reread``: the
        source the segments are cut from, if it can be read again by offset (see the module
        docstring); None for a stream."""
        self._expect_sha256 = expect_sha256
        self._reread = reread
        self._reread_next: int | None = None  # after the last segment made again (its log)
        self._ledger = ledger
        self._transfer_id = transfer_id
        self._encryptor = encryptor
        self._start = start
        self._on_bytes = on_bytes
        # Room is counted per segment slot: a whole segment and its tag (the last may be
        # shorter; it still counts whole, which only errs on the safe side).
        self._slot = encryptor.header.segment_size + envelope.TAG_LEN
        ahead = max(min(AHEAD_BYTES, SEGMENTS_AHEAD * self._slot), 2 * DIGEST_BATCH * self._slot)
        self._lease = Lease(budget, ahead)
        # Unbounded by count: the lease bounds what can be in them.
        self._queue: queue.Queue[object] = queue.Queue()
        self._batches: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._abandoned = threading.Event()
        self._committer: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._buffer = bytearray()  # the producer's, for :meth:`_seal`
        self.hasher = hashlib.sha256()
        self.size = 0
        self.segment_count = 0

    def start(self, segments: Iterator[tuple[int, bool, bytes]]) -> None:
        self._thread = threading.Thread(
            target=self._produce, args=(segments,), name="xbgw-encrypt", daemon=True
        )
        self._committer = threading.Thread(target=self._commit, name="xbgw-tags", daemon=True)
        self._thread.start()
        self._committer.start()

    def _put(self, target: queue.Queue[object], item: object) -> None:
        while not self._stop.is_set():
            try:
                target.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _produce(self, segments: Iterator[tuple[int, bool, bytes]]) -> None:
        """Hash and encrypt; hand batches to the committer (which may be waiting on fsync).

        Room for a segment is taken before it is read from the source; with no room, a
        part-filled batch is handed on rather than held while waiting (see the module
        docstring)."""
        try:
            batch: list[WireSegment] = []
            while True:
                if not self._lease.take(self._slot, self._stop, wait=not batch):
                    if not batch:
                        return  # stopped
                    self._put(self._batches, (batch, self.size))
                    batch = []
                    continue
                item = next(segments, None)
                if item is None or self._stop.is_set():
                    return  # the source always ends with a final segment
                index, final, plaintext = item
                self.hasher.update(plaintext)
                self.size += len(plaintext)
                if final:
                    self._check_digest()
                self.segment_count = index + 1
                batch.append(self._seal(index, final, plaintext))
                if len(batch) >= DIGEST_BATCH or final:
                    self._put(self._batches, (batch, self.size))
                    batch = []
                if final:
                    return
        except BaseException as exc:
            self._failure = exc
        finally:
            self._put(self._batches, self._END)

    def _seal(self, index: int, final: bool, plaintext: bytes) -> WireSegment:
        """Segment ``index`` encrypted straight into its Upload message (``segment_head``
        then ciphertext): encrypted into this pipeline's one reused buffer, then copied once
        into the immutable ``bytes`` gRPC sends (it takes nothing else) and the replay window
        may keep. The buffer is reused safely because nothing outside this thread ever sees
        it; the copy is what the window and the network hold."""
        length = len(plaintext) + envelope.TAG_LEN
        head = segment_head(self._transfer_id, index, final, length)
        need = len(head) + length
        if len(self._buffer) < need:
            self._buffer = bytearray(need)
        view = memoryview(self._buffer)[:need]
        view[: len(head)] = head
        into = getattr(self._encryptor, "encrypt_segment_into", None)
        if into is not None:
            into(index, plaintext, final, view[len(head) :])
        else:  # a stand-in encryptor (tests) with only encrypt_segment
            view[len(head) :] = self._encryptor.encrypt_segment(index, plaintext, final)
        return WireSegment(self._transfer_id, index, final, bytes(view), len(head), need)

    def _check_digest(self) -> None:
        """Before the final segment is encrypted: the data must be what the caller declared
        (a file changed between its hashing and its sending, or a wrong digest declared).
        Raised here the error ends the stream without a final segment: nothing commits."""
        expected = self._expect_sha256
        if expected is None:
            return
        streamed = self.hasher.digest()
        if streamed != expected:
            raise DatasetMismatchError(
                f"the data of transfer {self._transfer_id} does not hash to the SHA-256 "
                f"declared for it (declared {expected.hex()[:16]}..., streamed "
                f"{streamed.hex()[:16]}...): the final segment was not sent and nothing was "
                "delivered; if the file changed while it was sent, send it again"
            )

    def _commit(self) -> None:
        """Record tags durably, then release the batch's ciphertext to the network."""
        try:
            while True:
                item = self._get(self._batches)
                if item is self._END or self._failure is not None:
                    return
                assert isinstance(item, tuple)
                batch, done_bytes = item
                self._check_tags(batch)
                released = [segment for segment in batch if segment.index >= self._start]
                for _ in range(len(batch) - len(released)):
                    self._lease.give(self._slot)  # the partner holds it: not sent
                if released:
                    self._put(self._queue, released)  # one wake-up of the upload per batch
                self._on_bytes(done_bytes)
        except BaseException as exc:
            self._failure = exc
            self._stop.set()
            _drain(self._batches)  # a producer blocked on a full queue sees the stop now
        finally:
            self._end_queue()

    def _get(self, source: queue.Queue[object]) -> object:
        """Next item, or the end marker once the pipeline is stopped."""
        while not self._stop.is_set():
            try:
                return source.get(timeout=0.2)
            except queue.Empty:
                continue
        return self._END

    def _end_queue(self) -> None:
        while True:
            try:
                self._queue.put(self._END, timeout=0.5)
                return
            except queue.Full:
                if self._abandoned.is_set():
                    return

    def _check_tags(self, batch: list[WireSegment]) -> None:
        first, last = batch[0].index, batch[-1].index + 1
        recorded = self._ledger.segment_tags(self._transfer_id, first, last)
        tags = [(s.index, s.wire[s.end - envelope.TAG_LEN : s.end]) for s in batch]
        for index, tag in tags:
            known = recorded.get(index)
            if known is not None and known != tag:
                raise SourceChangedError(
                    f"segment {index} of transfer {self._transfer_id} differs from what was "
                    "sent before; resend the original data or use a new passport"
                )
        self._ledger.record_segment_tags(
            self._transfer_id, [(i, tag) for i, tag in tags if i not in recorded]
        )

    def segments(self) -> Iterator[SegmentIn]:
        """The ciphertext released to the network, from the resume point, in order.

        A segment's room comes back when the next one is asked for: the upload has taken
        it by then."""
        return self._release(keep=False)

    def replay(self, keep_bytes: int = REPLAY_BYTES) -> SegmentReplay:
        """:meth:`segments` through a replay window whose room comes out of the shared
        budget: each released segment's room passes to the window, and comes back when the
        window lets the segment go (past ``keep_bytes``, or shed when this pipeline needs
        room for its next segment). All sends' windows together then hold no more than the
        budget, whatever their number -- the data in flight that a window exists to replay
        shares one connection's windows too -- and a lone send keeps the whole window."""
        window = SegmentReplay(
            self._release(keep=True),
            keep_bytes,
            room=self._lease,
            reread=self._made_again if self._reread is not None else None,
            first=self._start,
        )
        self._lease.shed_with(window.shed)
        return window

    def _made_again(self, index: int) -> SegmentIn | None:
        """Segment ``index`` read again from the source and sealed again, for a resume from
        a segment the replay window let go; None if that was refused (the error is this
        pipeline's failure, raised by :meth:`raise_failure`; the pipeline stops, so the
        upload's stream ends without a final segment and nothing commits).

        Refused unless the source still has the size it had when the send started and the
        segment still has the tag recorded when it first left (:meth:`_check_tags`, as for
        every segment the producer seals): nothing but the bytes sent before goes again, and
        a changed segment's reused nonce never leaves the process."""
        source = self._reread
        assert source is not None
        try:
            length = self._encryptor.header.segment_size
            count = max(1, -(-source.size // length))
            offset = index * length
            want = max(0, min(length, source.size - offset))
            now = source.size_now()
            plaintext = source.read_at(offset, want) if now == source.size else b""
            if len(plaintext) != want:  # cut short while read: fstat tells by how much
                now = source.size_now()
            if now != source.size or len(plaintext) != want:
                raise SourceChangedError(
                    f"the file of transfer {self._transfer_id} is {now} bytes now, "
                    f"{source.size} when the send started: segment {index} cannot be read "
                    "again as it was sent; resend the original data or use a new passport"
                )
            final = index == count - 1
            # A fresh buffer: the producer's (``_seal``) may be in use in its thread.
            ciphertext = self._encryptor.encrypt_segment(index, plaintext, final)
            head = segment_head(self._transfer_id, index, final, len(ciphertext))
            end = len(head) + len(ciphertext)
            segment = WireSegment(
                self._transfer_id, index, final, head + ciphertext, len(head), end
            )
            self._check_tags([segment])
            if index != self._reread_next:  # once per resume, not per segment
                log.info(
                    "the partner resumes from segment %d, older than the replay window "
                    "holds: reading the file again from there",
                    index,
                    extra={"transfer_id": self._transfer_id, "outcome": "reread"},
                )
            self._reread_next = index + 1
        except Exception as exc:
            if self._failure is None:
                self._failure = exc
            self._stop.set()
            _drain(self._batches)  # a producer blocked on a full queue sees the stop now
            return None
        return segment

    def _release(self, keep: bool) -> Iterator[SegmentIn]:
        item: object = None
        try:
            while True:
                item = self._queue.get()
                if item is self._END:
                    return
                assert isinstance(item, list)
                for segment in item:
                    if keep:
                        self._lease.keep(self._slot, ciphertext_len(segment))
                    yield segment
                    if not keep:
                        self._lease.give(self._slot)
        finally:
            # A window still holds its segments (a last stream may be cut and resumed):
            # their room goes back when the send ends (raise_failure or abandon).
            if item is self._END and not keep:
                self._lease.close()

    def abandon(self) -> None:
        """The upload failed: tell both threads to stop; never wait on the local client.

        The producer may be blocked reading the local stream; it ends when that stream does
        (the caller's error ends it), so only the committer is joined.
        """
        self._stop.set()
        self._abandoned.set()
        _drain(self._queue)
        self._lease.close()  # a producer waiting for room sees the stop now
        if self._committer is not None:
            self._committer.join(timeout=10)

    def raise_failure(self) -> None:
        """Raise the producer's or committer's error, if any (after the stream completed)."""
        if not self._abandoned.is_set():
            for thread in (self._thread, self._committer):
                if thread is not None:
                    thread.join()
        self._lease.close()
        if self._failure is not None:
            raise self._failure


def _drain(target: queue.Queue[object]) -> None:
    """Empty ``target`` so that a thread blocked putting into it wakes at once."""
    while True:
        try:
            target.get_nowait()
        except queue.Empty:
            return
