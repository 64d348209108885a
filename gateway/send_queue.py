"""Local sends over the limit wait their turn instead of being refused.

``limits.max_concurrent_transfers`` sends run at once; up to ``limits.max_queued_sends``
more wait in arrival order (first in, first out); beyond that a send is refused with
RESOURCE_EXHAUSTED saying how many wait. A waiting send has read only its ``start`` message:
its data stays in the client until its slot is granted.

Why waiting holds a server thread, and what bounds that: grpcio's sync server runs each
call's handler in a thread of its pool for the whole call, and a streaming call cannot hand
its thread back while it stays open (grpc.aio could, at the price of another server model for
the whole local API; a client that polls for its turn would need a different protocol). A
waiting send therefore blocks its thread on an event -- no CPU; 0.2-0.4 MiB of memory
measured for the thread, the gRPC call and the 64 KiB window of data gRPC accepted before the
send stopped reading (the local server does not grow windows: ``gateway.daemon``) -- and the
local server's pool is sized for every send it may admit, running plus waiting, on top of
threads kept for health, status and fetch (it starts threads only as calls come).
``capacity`` is that many sends: admission never goes past it, even when a reload raises the
limits, so waiting sends cannot take the threads the watchdog's health checks need.

Waiters are not woken on every change of the line (that would wake all of them at each
grant): a grant or a departure wakes the one ticket it concerns, and a waiter looks at its
place again every ``REPORT_EVERY`` seconds to tell its caller -- a changed place is reported
within that time, and a full line of 1024 costs about a thousand wake-ups a second.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import XbgwError

#: How often a waiting send looks at its place in line (and reports a change).
REPORT_EVERY = 1.0


class SendQueueFullError(XbgwError):
    """Every send slot is taken and the line of waiting sends is full."""

    grpc_status = "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class Place:
    """Where a waiting send stands: ``position`` 1 is next to start."""

    position: int
    running: int


class Ticket:
    """One local send's claim on a slot: waiting, then running, then gone."""

    def __init__(self, number: int, entered_at: float) -> None:
        self.number = number
        self.entered_at = entered_at
        self.running = False
        self.gone = False
        #: Set when the ticket is granted a slot or leaves: what a waiter blocks on.
        self.changed = threading.Event()

    def wait(self, timeout: float) -> None:
        """Block until granted or gone, or ``timeout`` seconds (time to look at the place)."""
        self.changed.wait(timeout)


class SendQueue:
    """Slots for running sends and a first-in-first-out line for the rest."""

    def __init__(
        self,
        slots: int,
        max_waiting: int,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``capacity``: the most sends (running plus waiting) ever admitted at once, whatever
        ``slots`` and ``max_waiting`` become (the threads the server has for them)."""
        if slots < 1 or max_waiting < 0 or capacity < 1:
            raise ValueError("a send queue needs a slot, a line of 0 or more, a capacity")
        self._slots = slots
        self._max_waiting = max_waiting
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._running = 0
        self._waiting: list[int] = []  # ticket numbers in arrival order (so: sorted)
        self._tickets: dict[int, Ticket] = {}

    def configure(self, slots: int, max_waiting: int) -> None:
        """New limits (a reload): more slots start waiting sends at once; fewer slots stop
        none that run, they only start the next ones later; a shorter line turns nobody away
        who waits already."""
        with self._lock:
            self._slots = max(1, slots)
            self._max_waiting = max(0, max_waiting)
            self._grant()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def enter(self) -> Ticket:
        """A ticket, running at once if a slot is free, else last in line.

        ``SendQueueFullError`` when the line is full (or the server holds all it can).
        """
        with self._lock:
            admitted = self._running + len(self._waiting)
            line_full = self._running >= self._slots and len(self._waiting) >= self._max_waiting
            if admitted >= self._capacity or line_full:
                raise SendQueueFullError(
                    f"{self._running} local sends are running and {len(self._waiting)} are "
                    f"waiting for a slot, the most this gateway queues "
                    f"(limits.max_concurrent_transfers {self._slots}, limits.max_queued_sends "
                    f"{self._max_waiting}); retry when fewer wait"
                )
            ticket = Ticket(next(self._numbers), self._clock())
            self._tickets[ticket.number] = ticket
            self._waiting.append(ticket.number)
            self._grant()
            return ticket

    def place(self, ticket: Ticket) -> Place | None:
        """Where ``ticket`` waits; None once it runs or is gone."""
        with self._lock:
            if ticket.running or ticket.gone:
                return None
            position = bisect.bisect_left(self._waiting, ticket.number) + 1
            return Place(position, self._running)

    def waited(self, ticket: Ticket) -> float:
        """Seconds since ``ticket`` entered."""
        return self._clock() - ticket.entered_at

    def leave(self, ticket: Ticket) -> None:
        """The send ended or its caller went away: free its slot or its place (idempotent)."""
        with self._lock:
            if ticket.gone:
                return
            ticket.gone = True
            del self._tickets[ticket.number]
            if ticket.running:
                self._running -= 1
            else:
                del self._waiting[bisect.bisect_left(self._waiting, ticket.number)]
            ticket.changed.set()
            self._grant()

    def _grant(self) -> None:
        while self._waiting and self._running < self._slots:
            ticket = self._tickets[self._waiting.pop(0)]
            ticket.running = True
            self._running += 1
            ticket.changed.set()
