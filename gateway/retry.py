"""Waiting for a partner that is unreachable or busy: capped exponential backoff with jitter,
within one deadline the operator sets.

Why a module of its own: the sender decides *what* is worth retrying (see
``gateway.transfer.transient``); this decides *when* and *for how long*, with a clock and a
sleep passed in, so unit tests run hours of backoff in microseconds and a real send and a
test follow the same schedule.

The wait is a budget for one outage, not for the whole send: once an attempt moves the
transfer forward (:meth:`Patience.progressed`), the next outage gets the whole wait again --
a long transfer over a flaky link keeps going for as long as each outage is shorter than the
wait, and a partner that never comes back is given up on after exactly the wait.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from gateway.transfer import SegmentIn
from gateway.wire import ciphertext_len


class Timer(Protocol):
    """A monotonic clock and a way to let time pass on it."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class RealTimer:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


REAL_TIMER: Timer = RealTimer()


@dataclass(frozen=True)
class Backoff:
    """``initial`` doubling (``factor``) up to ``cap`` seconds; each delay is drawn from
    [1 - jitter, 1] of its step, so senders cut off together do not come back together."""

    initial: float = 0.2
    factor: float = 2.0
    cap: float = 5.0
    jitter: float = 0.5

    def delay(self, attempt: int, draw: float) -> float:
        """The pause after the ``attempt``-th failure (1-based); ``draw`` in [0, 1)."""
        step = min(self.cap, self.initial * self.factor ** max(attempt - 1, 0))
        return step * (1.0 - self.jitter * draw)


@dataclass(frozen=True)
class Waiting:
    """One wait, as the caller is told of it (``xbgw send`` shows it; the local API sends it
    as ``SendWaiting``)."""

    reason: str  # what the last attempt met, for a person
    attempt: int  # failed attempts in this outage so far
    retry_in: float  # seconds until the next attempt
    waited: float  # seconds this outage has lasted so far
    wait: float  # the budget: the send gives up once an outage lasts this long


class Patience:
    """The backoff schedule of one send; see the module docstring."""

    def __init__(
        self,
        wait_seconds: float,
        timer: Timer = REAL_TIMER,
        backoff: Backoff | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.wait = max(float(wait_seconds), 0.0)
        self._timer = timer
        self._backoff = backoff or Backoff()
        self._draw = draw
        self._attempt = 0
        self._since: float | None = None

    def progressed(self) -> None:
        """The transfer moved forward: the next outage starts a fresh wait."""
        self._attempt = 0
        self._since = None

    def pause(self, reason: str, report: Callable[[Waiting], None]) -> bool:
        """After a transient failure: report the wait and sleep it, then True (try again);
        False, without sleeping, if the wait is spent (give up with the failure's error).

        The last pause is shortened to end at the deadline, so the last attempt is made at
        it rather than after it."""
        now = self._timer.monotonic()
        if self._since is None:
            self._since = now
        self._attempt += 1
        waited = now - self._since
        remaining = self.wait - waited
        if remaining <= 0:
            return False
        delay = min(self._backoff.delay(self._attempt, self._draw()), remaining)
        report(Waiting(reason, self._attempt, delay, waited, self.wait))
        self._timer.sleep(delay)
        return True


#: Ciphertext a send keeps after releasing it, so a stream cut mid-upload can resume within
#: the same send from the partner's resume point: what was in flight (HTTP/2 windows, socket
#: buffers, a proxy) when the stream broke. Bounded per send, and in the daemon paid out of
#: the pipelines' shared budget (``gateway.pipeline``: under load each send keeps less); a
#: partner that lost more than this (killed before its periodic sync) is resumed by sending
#: again -- unless the send's source can be read again (a handed-over file: ``reread``).
REPLAY_BYTES = 4 << 20


class ReplayLostError(Exception):
    """The partner resumes from a segment this send no longer holds."""


class ReplayRoom(Protocol):
    """Where a window's kept bytes are paid for (``gateway.pipeline.Lease``): the source
    already paid for each segment it hands over; the window returns it with :meth:`drop`."""

    def drop(self, size: int) -> None: ...


class SegmentReplay:
    """One send's released segments, readable again from any kept index.

    Each upload attempt reads through :meth:`attempt`. A failed gRPC call may leave its
    request thread pulling one more segment after the call ended; that segment is kept here
    and the thread's stream stops at once (a newer attempt exists), so nothing is lost and no
    two attempts interleave on the wire.

    The source is read outside the window's lock (it may block on the pipeline), so
    :meth:`shed` -- called by the pipeline's producer when it needs room -- never waits for
    the upload.

    ``reread``: for a source that can be read again (a handed-over file), segment ``i``
    made again -- or None when that failed (the pipeline keeps the error, and the attempt's
    stream ends there, without a final segment). With it, an attempt may start before the
    oldest kept segment (the partner's point went back further than the window reaches:
    stripes split behind a balancer, a node that took over from an older durable point):
    every segment the source gave and the window let go is made again, one at a time, and
    not kept. Without it, such an attempt raises ``ReplayLostError``. ``first``: the index
    the source starts at, if known -- an attempt before it is such a resume too.
    """

    def __init__(
        self,
        source: Iterator[SegmentIn],
        keep_bytes: int = REPLAY_BYTES,
        room: ReplayRoom | None = None,
        reread: Callable[[int], SegmentIn | None] | None = None,
        first: int | None = None,
    ) -> None:
        self._source = source
        self._keep_bytes = keep_bytes
        self._room = room
        self._reread = reread
        self._kept: deque[SegmentIn] = deque()
        self._kept_bytes = 0
        #: The newest kept segment when its room was shed: it stays kept (see shed) unpaid.
        self._unpaid: SegmentIn | None = None
        self._next_index: int | None = first  # index of the next segment the source gives
        self._ended = False
        self._generation = 0
        self._lock = threading.Lock()  # the window's state
        self._pulling = threading.Lock()  # one reader of the source at a time

    def attempt(self, start: int) -> Iterator[SegmentIn]:
        """The segments from index ``start`` on: kept ones first, then the source's."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            oldest = self._kept[0].index if self._kept else self._next_index
            if oldest is not None and start < oldest and self._reread is None:
                raise ReplayLostError(
                    f"the partner resumes from segment {start}; this send keeps segments "
                    f"from {oldest} on"
                )
        return self._read(generation, start)

    def shed(self) -> bool:
        """Give kept room back under pressure: the oldest kept segment, or else the room of
        the newest, which stays kept unpaid (a failed call's thread may just have taken it,
        and the next attempt starts there). False when there is nothing to give, or the
        window is busy this instant (the caller looks again).

        So a window never makes a pipeline wait for room only it holds: beyond the budget
        each send holds at most the one segment its upload is sending."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if len(self._kept) > 1:
                self._forget_oldest()
                return True
            if self._kept and self._kept[0] is not self._unpaid:
                self._unpaid = self._kept[0]
                self._pay_back(self._unpaid)
                return True
            return False
        finally:
            self._lock.release()

    def _read(self, generation: int, position: int) -> Iterator[SegmentIn]:
        while True:
            segment = self._next(generation, position)
            if segment is None:
                return
            if segment.index < position:
                continue  # the source starts before this attempt (the partner has these)
            position = segment.index + 1
            yield segment

    def _next(self, generation: int, position: int) -> SegmentIn | None:
        """The kept segment at ``position``; else, if the window let it go, the segment made
        again (``reread``); else the source's next. None once the source ended (or could not
        be read again) or a newer attempt exists."""
        with self._lock:
            if generation != self._generation:
                return None
            segment = self._kept_at(position)
            let_go = self._next_index is not None and position < self._next_index
        if segment is not None:
            return segment
        if let_go and self._reread is not None:
            return self._reread(position)  # outside the lock: it reads and seals
        with self._pulling:
            with self._lock:  # another reader may have pulled it meanwhile
                if generation != self._generation:
                    return None
                segment = self._kept_at(position)
                if segment is not None or self._ended:
                    return segment
            return self._pull()

    def _kept_at(self, index: int) -> SegmentIn | None:
        if not self._kept or not self._kept[0].index <= index <= self._kept[-1].index:
            return None
        return self._kept[index - self._kept[0].index]

    def _pull(self) -> SegmentIn | None:
        """The source's next segment, kept (called holding ``_pulling`` only)."""
        segment = next(self._source, None)
        with self._lock:
            if segment is None:
                self._ended = True
                return None
            self._next_index = segment.index + 1
            self._kept.append(segment)
            self._kept_bytes += ciphertext_len(segment)
            while len(self._kept) > 1 and self._kept_bytes > self._keep_bytes:
                self._forget_oldest()
            return segment

    def _forget_oldest(self) -> None:
        segment = self._kept.popleft()
        self._kept_bytes -= ciphertext_len(segment)
        if segment is self._unpaid:
            self._unpaid = None
        else:
            self._pay_back(segment)

    def _pay_back(self, segment: SegmentIn) -> None:
        if self._room is not None:
            self._room.drop(ciphertext_len(segment))
