"""The local gRPC servicer on the Unix socket: send, inbox, fetch, status.

Who may connect is decided by the socket's file permissions (the socket lives in the
gateway's runtime directory, group-accessible to local applications).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import grpc

import gateway
from gateway import envelope
from gateway._proto.xbgw.v1 import local_pb2, local_pb2_grpc
from gateway.audit.records import AuditRecord
from gateway.audit.witness import Witness, Witnessed, WitnessError, WitnessReport
from gateway.config import GatewayConfig, Limits
from gateway.envelope import KeyHolder
from gateway.errors import (
    HeaderFormatError,
    InboxDataDeletedError,
    UnknownTransferError,
    UsageError,
    XbgwError,
)
from gateway.fdpass import FileTickets, HandedFile
from gateway.keyadmin import KeyAdministration, KeyReport
from gateway.keys import KeyRef, KeyState, KeyVersion, Purpose
from gateway.ledger import Inbound, Ledger
from gateway.metrics import Metrics
from gateway.paging import decode_token, encode_token, page_size
from gateway.pipeline import Rereadable
from gateway.reachability import Reach
from gateway.retention import Lifecycle, deleted_message
from gateway.send_queue import REPORT_EVERY, SendQueue, SendQueueFullError, Ticket
from gateway.sender import Progress, ReceiptSummary, Sender
from gateway.spool import Spool
from gateway.status import abort_with, outcome
from gateway.transfer import TransferState
from gateway.wire import state_to_wire, to_blob

log = logging.getLogger("xbgw.local")
FETCH_CHUNK = 1 << 20
#: Concurrent fetches; one more is refused at once (a fetch is quick to retry, and its reads
#: are bounded by the caller's flow control: at most a segment or two in memory each).
FETCH_SLOTS = 8
#: Threads of the local server for everything but sends and fetches (health -- which the
#: systemd watchdog rides on --, status, inbox, keys, witness, and refusing sends at once).
QUICK_WORKERS = 16
#: The most local sends that wait holding a server thread, whatever limits.max_queued_sends
#: says (see gateway.send_queue: a waiting send costs no CPU, and 0.2-0.4 MiB of memory for
#: its thread, its gRPC call and the data gRPC received before the send stopped reading).
MAX_WAITING_SENDS = 1024


#: The least time between two progress events of one ``Send`` (the last one always goes).
PROGRESS_EVERY = 0.1
#: The most data SendSmall calls waiting for a slot may hold together (each holds its whole
#: payload, up to limits.segment_size, where a waiting Send holds only its first message).
WAITING_SMALL_BYTES = 64 << 20


def send_capacity(limits: Limits) -> int:
    """Sends the local server admits at once, running or waiting (the threads it keeps)."""
    return limits.max_concurrent_transfers + min(limits.max_queued_sends, MAX_WAITING_SENDS)


def local_workers(limits: Limits) -> int:
    """Threads of the local server: every admitted send and fetch, and the quick calls."""
    return send_capacity(limits) + FETCH_SLOTS + QUICK_WORKERS


@dataclass(frozen=True)
class DaemonView:
    """What ``Status`` reports beyond the ledger, read from the running daemon at each call;
    ``delivered(partner)`` tells the reachability a partner just answered a whole send."""

    ready: Callable[[], bool]
    listeners: Callable[[], list[tuple[str, str]]]
    partners: Callable[[], list[Reach]]
    keys: Callable[[], list[KeyVersion]]
    delivered: Callable[[str], None]


@dataclass
class _Flight:
    """A local send running now (``Status``'s ``in_flight``); updated by its progress."""

    partner: str
    started_at: int
    total: int
    transfer_id: str = ""
    done: int = 0
    key: object = field(default_factory=object)


def _abort(context: grpc.ServicerContext, error: XbgwError, rpc: str, **fields: str) -> None:
    abort_with(context, error, log, f"local {rpc} failed", rpc=rpc, **fields)


def _abort_send(
    context: grpc.ServicerContext, error: BaseException, rpc: str, partner: str
) -> None:
    """End a failed send (``Send`` or ``SendSmall``) with the status its error maps to: a
    refusal its own, a bad request INVALID_ARGUMENT, anything else INTERNAL (logged)."""
    if isinstance(error, XbgwError):
        _abort(context, error, rpc, partner=partner)
    elif isinstance(error, ValueError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    else:
        log.error("send failed", exc_info=error)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")


@dataclass(frozen=True)
class _Order:
    """What a local send asks for, from either request shape (``SendStart``,
    ``SendSmallRequest``), as ``Sender.send`` takes it."""

    partner: str
    passport: str
    size: int | None  # None: not declared
    wait_seconds: int | None  # None: limits.partner_wait_seconds
    plaintext_sha256: bytes | None  # None: not declared

    @classmethod
    def of(cls, start: local_pb2.SendStart) -> _Order:
        return cls(
            start.partner,
            start.passport,
            start.size or None,
            start.wait_seconds if start.HasField("wait_seconds") else None,
            start.plaintext_sha256 or None,
        )

    @classmethod
    def small(cls, request: local_pb2.SendSmallRequest) -> _Order:
        """The size of a small send is always known: its data's length (0 included)."""
        return cls(
            request.partner,
            request.passport,
            len(request.data),
            request.wait_seconds if request.HasField("wait_seconds") else None,
            request.plaintext_sha256 or None,
        )


class LocalServicer(local_pb2_grpc.LocalGatewayServicer):
    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        sender: Sender,
        ledger: Ledger,
        spool: Spool,
        keys: KeyHolder,
        accepting: Callable[[], bool],
        metrics: Metrics,
        key_admin: KeyAdministration | None = None,
        witness: Witness | None = None,
        send_queue: SendQueue | None = None,
        lifecycle: Lifecycle | None = None,
        file_tickets: FileTickets | None = None,
        view: DaemonView | None = None,
    ) -> None:
        """``send_queue``: admits local sends (by default sized by the configuration as it
        is now; the daemon passes one sized for its server's threads). ``file_tickets``:
        files handed over on the side socket (``gateway.fdpass``); None: a send naming a
        ticket is refused. ``view``: the daemon's listeners, readiness, partners' reachability
        and keys for ``Status`` (None: reported empty)."""
        self._view = view
        self._flights: dict[object, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._file_tickets = file_tickets
        self._key_admin = key_admin
        self._lifecycle = lifecycle  # cancel, inbox ack|delete (gateway.retention)
        self._witness = witness
        self._metrics = metrics
        self._config = config
        self._sender = sender
        self._ledger = ledger
        self._spool = spool
        self._keys = keys
        self._accepting = accepting
        self._started = int(time.time())
        self._send_queue = send_queue
        self._fetches = 0
        self._fetches_lock = threading.Lock()
        self._small_waiting = 0  # bytes held by SendSmall calls waiting for a slot
        self._small_lock = threading.Lock()

    @property
    def _sends(self) -> SendQueue:
        assert self._send_queue is not None, "made by the first Send"
        return self._send_queue

    def _fetch_slot(self, context: grpc.ServicerContext) -> None:
        """Take one of ``FETCH_SLOTS``; refuse at once when all are taken.

        A fetch holds a server thread for its whole length: the cap keeps threads free for
        health checks (the systemd watchdog rides on them), status and inbox.
        """
        with self._fetches_lock:
            if self._fetches >= FETCH_SLOTS:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{FETCH_SLOTS} local fetches are running; retry when one ends",
                )
            self._fetches += 1

    def _release_fetch_slot(self) -> None:
        with self._fetches_lock:
            self._fetches -= 1

    def Send(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[local_pb2.SendRequest], context: grpc.ServicerContext
    ) -> Iterator[local_pb2.SendEvent]:
        """Admit the send (see gateway.send_queue), wait for its slot, then run it.

        Admission comes first, before even the ``start`` message is read, so every thread a
        send can hold is counted; only ``start`` is read while the send waits.
        """
        self._queue_for(self._config().limits)
        try:
            ticket = self._sends.enter()
        except SendQueueFullError as error:
            _abort(context, error, "Send")
            return
        # A caller that goes away (or a server that stops) ends the wait at once.
        if not context.add_callback(lambda: self._sends.leave(ticket)):
            self._sends.leave(ticket)
            return
        handed: HandedFile | None = None
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("kind") != "start":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be 'start'")
                return
            if first.start.file_ticket:
                # Claimed before the wait for a slot: the ticket expires, this call does not.
                # From here the descriptor belongs to this call, closed when it ends.
                handed = self._claim(first.start, context)
            if not self._accepting():
                context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")
                return
            yield from self._wait_for_slot(ticket)
            if ticket.gone:
                return  # the caller went away while waiting
            if not self._accepting():
                context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")
                return
            if handed is None:
                yield from self._send(first.start, request_iterator, context)
            else:
                yield from self._send_file(first.start, handed, request_iterator, context)
        finally:
            if handed is not None:
                handed.close()  # reads hold its lock: none runs on a closed descriptor
            self._sends.leave(ticket)

    def _claim(self, start: local_pb2.SendStart, context: grpc.ServicerContext) -> HandedFile:
        """The file ``start.file_ticket`` names, checked against ``start.size``."""
        if self._file_tickets is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this gateway takes no handed-over files: stream the data",
            )
        assert self._file_tickets is not None
        try:
            handed = self._file_tickets.take(start.file_ticket)
        except XbgwError as error:
            _abort(context, error, "Send", partner=start.partner)
            raise
        if start.size and start.size != handed.size:
            handed.close()
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the send declares {start.size} bytes; the handed-over file has {handed.size}",
            )
        return handed

    def _send_file(
        self,
        start: local_pb2.SendStart,
        handed: HandedFile,
        request_iterator: Iterator[local_pb2.SendRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[local_pb2.SendEvent]:
        """Send a handed-over file: read here with ``pread`` in segment-size reads (so the
        sender never re-cuts them), from offset 0 -- the manifest's SHA-256 covers the whole
        file and a resumed send re-checks the tags of segments the partner holds -- up to
        the size it had at the handover."""
        if next(request_iterator, None) is not None:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a send with a file_ticket carries no 'data' messages: end the request stream "
                "after 'start'",
            )
        size = handed.size
        step = self._config().limits.segment_size
        peer = handed.peer
        log.info(
            "local send of a handed-over file of %d bytes (uid %d, pid %d)",
            size,
            peer.uid,
            peer.pid,
            extra={"partner": start.partner, "bytes": size, "outcome": "fd-handover"},
        )

        def chunks() -> Iterator[bytes]:
            offset = 0
            while offset < size:
                # Nothing else tells a file send that its caller went away (nobody reads the
                # request stream): a send the caller abandoned stops here.
                if not context.is_active():
                    raise ValueError(
                        "the local client went away during the send; nothing was delivered: "
                        "send the same file with the same passport to resume"
                    )
                block = handed.read_at(offset, min(step, size - offset))
                if not block:
                    return  # the file shrank: the sender says by how much (declared size)
                offset += len(block)
                yield block

        declared = local_pb2.SendStart()
        declared.CopyFrom(start)
        declared.size = size
        # ``handed`` too: a resume older than the replay window reads it again by offset.
        yield from self._send(declared, iter(()), context, chunks(), reread=handed)

    def _wait_for_slot(self, ticket: Ticket) -> Iterator[local_pb2.SendEvent]:
        """``queued`` when the send must wait and whenever its place changes, until it runs
        or its caller is gone (the callback taken in ``Send`` wakes it)."""
        reported = None
        while (place := self._sends.place(ticket)) is not None:
            if place != reported:
                reported = place
                yield local_pb2.SendEvent(
                    queued=local_pb2.SendQueued(position=place.position, running=place.running)
                )
            ticket.wait(REPORT_EVERY)
        if reported is not None and ticket.running:
            log.info("local send waited %.1f s for a slot", self._sends.waited(ticket))

    def _send(
        self,
        start: local_pb2.SendStart,
        request_iterator: Iterator[local_pb2.SendRequest],
        context: grpc.ServicerContext,
        source: Iterator[bytes] | None = None,
        reread: Rereadable | None = None,
    ) -> Iterator[local_pb2.SendEvent]:
        """Run the send in its own thread, relaying its events; the data is ``source`` if
        given, else the ``data`` messages of ``request_iterator``. ``reread``: the file
        ``source`` reads, if it can be read again by offset (``Sender.send``)."""
        events: queue.Queue[local_pb2.SendEvent | BaseException | None] = queue.Queue(maxsize=64)

        def chunks() -> Iterator[bytes]:
            # The end of the request stream is no proof that the data ended: gRPC ends it
            # the same way when the client dies. The sender holds the data to a declared
            # size; without one, a stream that ended with the client gone is not the end.
            for message in request_iterator:
                if message.WhichOneof("kind") != "data":
                    raise ValueError("only 'data' messages may follow 'start'")
                data = message.data  # each access copies the bytes out of the message
                del message  # so only the copy stays while the pipeline works on it
                yield data
            if not context.is_active():
                raise ValueError(
                    "the local client went away before the end of its data; nothing was "
                    "delivered: send the same data with the same passport to resume"
                )

        reported = float("-inf")  # when the last progress event was queued (monotonic)

        def on_progress(progress: Progress) -> None:
            nonlocal reported
            if progress.kind == "accepted":
                event = local_pb2.SendEvent(
                    accepted=local_pb2.SendAccepted(
                        transfer_id=progress.transfer_id, resume_from=progress.done_bytes
                    )
                )
            elif progress.waiting is not None:
                waiting = progress.waiting
                event = local_pb2.SendEvent(
                    waiting=local_pb2.SendWaiting(
                        reason=waiting.reason,
                        attempt=waiting.attempt,
                        retry_in_ms=round(waiting.retry_in * 1000),
                        waited_seconds=int(waiting.waited),
                        wait_seconds=int(waiting.wait),
                    )
                )
            else:
                # At most PROGRESS_EVERY apart (and the last one): a client shows a rate, not
                # every segment -- one event per MiB cost the caller ~0.35 CPU-s per GiB.
                now = time.monotonic()
                last = progress.total_bytes > 0 and progress.done_bytes >= progress.total_bytes
                if not last and now - reported < PROGRESS_EVERY:
                    return
                reported = now
                event = local_pb2.SendEvent(
                    progress=local_pb2.SendProgress(
                        bytes_sent=progress.done_bytes, bytes_total=progress.total_bytes
                    )
                )
            with contextlib.suppress(queue.Full):
                events.put_nowait(event)  # progress is advisory: never stall on a slow reader

        def work() -> None:
            try:
                summary = self._run_send(
                    _Order.of(start), chunks() if source is None else source, on_progress, reread
                )
                events.put(local_pb2.SendEvent(done=_summary(summary)))
            except BaseException as exc:
                events.put(exc)
            finally:
                events.put(None)

        worker = threading.Thread(target=work, name="xbgw-send", daemon=True)
        worker.start()
        while True:
            item = events.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                _abort_send(context, item, "Send", start.partner)
            else:
                yield item
        worker.join()

    def _run_send(
        self,
        order: _Order,
        source: Iterable[bytes],
        on_progress: Callable[[Progress], None],
        reread: Rereadable | None = None,
    ) -> ReceiptSummary:
        """Run one send in the calling thread: shown in ``Status``'s ``in_flight`` while it
        runs, counted in the metrics when it ends (delivered, refused or failed). Every local
        send, streamed or unary, goes through here, so they are reported alike."""
        # A label only for configured partners: a client's typo must not mint a series.
        known = {p.id for p in self._config().partners}
        partner = order.partner if order.partner in known else "unknown"
        flight = _Flight(order.partner, int(time.time()), order.size or 0)

        def progressed(progress: Progress) -> None:
            if progress.waiting is None:  # a waiting event carries no byte counts
                with self._flights_lock:
                    flight.transfer_id = progress.transfer_id or flight.transfer_id
                    flight.done = progress.done_bytes
                    flight.total = progress.total_bytes or flight.total
            on_progress(progress)

        began = time.monotonic()
        with self._flights_lock:
            self._flights[flight.key] = flight
        try:
            with self._metrics.stream("out"):
                summary = self._sender.send(
                    order.partner,
                    order.passport,
                    source,
                    order.size,
                    progressed,
                    order.wait_seconds,
                    order.plaintext_sha256,
                    reread,
                )
        except BaseException as exc:
            self._metrics.transfers.labels("out", partner, outcome(exc)).inc()
            self._metrics.refusals.labels(type(exc).__name__, partner).inc()
            self._metrics.transfer_took("out", outcome(exc), time.monotonic() - began)
            raise
        finally:
            with self._flights_lock:
                self._flights.pop(flight.key, None)
        self._metrics.child(self._metrics.transfers, "out", partner, "delivered").inc()
        self._metrics.child(self._metrics.bytes, "out", partner).inc(summary.plaintext_size)
        self._metrics.transfer_took("out", "delivered", time.monotonic() - began)
        if self._view is not None:
            self._view.delivered(order.partner)
        return summary

    def SendSmall(  # noqa: N802 - gRPC method name
        self, request: local_pb2.SendSmallRequest, context: grpc.ServicerContext
    ) -> local_pb2.ReceiptSummary:
        """Send a payload of at most one segment in one unary call, in this server thread.

        Why: a small send through ``Send`` paid for a bidirectional stream, a worker thread
        and an event queue per send -- more than the transfer itself (one Deliver call to the
        partner: ``Sender._deliver``). Here the send runs where the call landed, with no
        thread, no queue and no events: the caller gets the verified receipt or the refusal
        ``Send`` would have given (same statuses, messages, log lines and metrics).

        Admission is ``Send``'s: the call takes a ticket of the same send queue before
        anything else, so it counts against ``limits.max_concurrent_transfers`` and, over
        it, waits in the same line -- blocked on its ticket in this thread. That thread is one
        of those the server keeps for admitted sends (``local_workers``: the queue never
        admits more sends, of either kind, than it has threads for), so waiting small sends
        cannot starve health checks, status or fetches. Unlike a waiting ``Send``, a waiting
        ``SendSmall`` holds its data (gRPC read the whole message before this ran): the bytes
        held by small sends in line are capped (``WAITING_SMALL_BYTES``); past that a small
        send that would wait is refused, and ``Send`` waits without holding its data.
        """
        limits = self._config().limits
        data = request.data
        if len(data) > limits.segment_size:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"SendSmall carries at most limits.segment_size ({limits.segment_size}) "
                f"bytes; this request has {len(data)}: use Send, which streams the data (or "
                "hands a file over)",
            )
        if request.size and request.size != len(data):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the send declares {request.size} bytes; its data has {len(data)}",
            )
        sends = self._queue_for(limits)
        try:
            ticket = sends.enter()
        except SendQueueFullError as error:
            _abort(context, error, "SendSmall", partner=request.partner)
            raise
        # A caller that goes away (or a server that stops) ends the wait at once.
        if not context.add_callback(lambda: sends.leave(ticket)):
            sends.leave(ticket)
            context.abort(grpc.StatusCode.CANCELLED, "the local client went away")
        try:
            self._wait_small(ticket, len(data), context)
            if not self._accepting():
                context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")
            try:
                summary = self._run_send(_Order.small(request), (data,), lambda _: None)
            except BaseException as exc:
                _abort_send(context, exc, "SendSmall", request.partner)
                raise
            return _summary(summary)
        finally:
            sends.leave(ticket)

    def _queue_for(self, limits: Limits) -> SendQueue:
        """The send queue (made by the first send of either kind), with today's limits."""
        if self._send_queue is None:
            self._send_queue = SendQueue(
                limits.max_concurrent_transfers, limits.max_queued_sends, send_capacity(limits)
            )
        self._send_queue.configure(limits.max_concurrent_transfers, limits.max_queued_sends)
        return self._send_queue

    def _wait_small(self, ticket: Ticket, size: int, context: grpc.ServicerContext) -> None:
        """Block this thread until ``ticket`` runs; refuse when the gateway is stopping, the
        caller went away, or small sends in line already hold ``WAITING_SMALL_BYTES``."""
        if not self._accepting():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")
        if self._sends.place(ticket) is None:
            if ticket.gone:
                context.abort(grpc.StatusCode.CANCELLED, "the local client went away")
            return  # running at once: the usual case
        with self._small_lock:
            if self._small_waiting + size > WAITING_SMALL_BYTES:
                held = self._small_waiting
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"every send slot is taken and small sends waiting for one already hold "
                    f"{held} bytes (at most {WAITING_SMALL_BYTES}); retry shortly, or use "
                    "Send, which waits without holding its data",
                )
            self._small_waiting += size
        try:
            while self._sends.place(ticket) is not None:
                ticket.wait(REPORT_EVERY)
        finally:
            with self._small_lock:
                self._small_waiting -= size
        if ticket.gone:
            context.abort(grpc.StatusCode.CANCELLED, "the local client went away")
        log.info("local small send waited %.1f s for a slot", self._sends.waited(ticket))

    def ListInbox(  # noqa: N802
        self, request: local_pb2.ListInboxRequest, context: grpc.ServicerContext
    ) -> local_pb2.ListInboxResponse:
        """One page of the inbox (items whose data is held), oldest commit first."""
        try:
            size = page_size(request.page_size)
            after = decode_token("inbox", request.page_token, (int, str))
            rows = self._ledger.inbox_page(
                size + 1,
                None if after is None else (int(after[0]), str(after[1])),
                request.unacknowledged_only,
            )
        except XbgwError as error:
            _abort(context, error, "ListInbox")
            raise
        more = len(rows) > size
        rows = rows[:size]
        last = rows[-1] if more else None
        return local_pb2.ListInboxResponse(
            items=[self._inbox_item(row) for row in rows],
            next_page_token=""
            if last is None
            else encode_token("inbox", [last.committed_at or 0, last.transfer_id]),
        )

    def Fetch(  # noqa: N802
        self, request: local_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[local_pb2.FetchChunk]:
        self._fetch_slot(context)
        try:
            yield from self._fetch(request, context)
        finally:
            self._release_fetch_slot()

    def _fetch(
        self, request: local_pb2.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[local_pb2.FetchChunk]:
        try:
            row = self._ledger.inbound(request.transfer_id)
            if row is None or row.state is not TransferState.COMMITTED:
                raise UnknownTransferError(
                    f"no committed transfer {request.transfer_id!r} in the inbox"
                )
            if row.deleted_at is not None:
                # NOT_FOUND: the data is not there and never will be again; the transfer's
                # row, receipt and records are, which the message says.
                raise InboxDataDeletedError(deleted_message(row, self._config().retention))
            me = self._config().id
            record = AuditRecord("admin.fetch", int(time.time()), {"transfer_id": row.transfer_id})
            self._ledger.append_audit(record.encode(me))
            with self._spool.open_committed(row.transfer_id) as src:
                chunks = _plaintext(src, me, self._keys, row.stored_header)
                for plaintext in chunks:
                    for offset in range(0, len(plaintext), FETCH_CHUNK):
                        yield local_pb2.FetchChunk(data=plaintext[offset : offset + FETCH_CHUNK])
            # Streamed to the end (a client that went away stops the loop above): retention's
            # "fetched" counts from here.
            self._ledger.mark_fetched(row.transfer_id, int(time.time()))
        except XbgwError as error:
            _abort(context, error, "Fetch", transfer_id=request.transfer_id)

    def Status(  # noqa: N802
        self, request: local_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> local_pb2.StatusResponse:
        config = self._config()
        try:
            size = page_size(request.page_size)
            before = decode_token("transfers", request.page_token, (int, str, str))
            lines = self._ledger.transfers_page(
                size + 1,
                None if before is None else (int(before[0]), str(before[1]), str(before[2])),
            )
        except XbgwError as error:
            _abort(context, error, "Status")
            raise
        more = len(lines) > size
        lines = lines[:size]
        last = lines[-1] if more else None
        return local_pb2.StatusResponse(
            gateway_id=config.id,
            jurisdiction=config.gateway.jurisdiction,
            version=gateway.__version__,
            started_at=self._started,
            queued_sends=self._send_queue.waiting if self._send_queue else 0,
            partners=[p.id for p in config.partners],
            ready=self._view.ready() if self._view else self._accepting(),
            listeners=[
                local_pb2.Listener(name=name, address=address)
                for name, address in (self._view.listeners() if self._view else [])
            ],
            partner_reach=[_reach(r) for r in (self._view.partners() if self._view else [])],
            keys=_keys_in_use(self._view.keys() if self._view else []),
            in_flight=self._in_flight(),
            transfers=[
                local_pb2.TransferSummary(
                    transfer_id=line.transfer_id,
                    direction=line.direction,
                    partner=line.partner,
                    state=state_to_wire(line.state),
                    bytes=line.size,
                )
                for line in lines
            ],
            next_page_token=""
            if last is None
            else encode_token("transfers", [last.created_at, last.direction, last.transfer_id]),
        )

    def _in_flight(self) -> list[local_pb2.TransferInFlight]:
        """Local sends running now, then inbound transfers a partner has not finished (the
        ledger's durable point: their total is not known before the final segment)."""
        with self._flights_lock:
            out = [
                local_pb2.TransferInFlight(
                    transfer_id=f.transfer_id,
                    direction="out",
                    partner=f.partner,
                    bytes_done=f.done,
                    bytes_total=f.total,
                    started_at=f.started_at,
                )
                for f in sorted(self._flights.values(), key=lambda f: f.started_at)
            ]
        inbound = [
            local_pb2.TransferInFlight(
                transfer_id=row.transfer_id,
                direction="in",
                partner=row.sender,
                bytes_done=row.received_bytes,
                bytes_total=row.received_bytes if row.final_received else 0,
                started_at=row.created_at,
            )
            for row in self._ledger.inbound_in_progress()
        ]
        return out + inbound

    # -- key lifecycle -------------------------------------------------------------------

    def _admin(self, context: grpc.ServicerContext) -> KeyAdministration:
        if self._key_admin is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "key administration is not available")
        assert self._key_admin is not None
        return self._key_admin

    def _key_status(
        self, admin: KeyAdministration, changed: list[KeyVersion]
    ) -> local_pb2.KeyStatusResponse:
        return local_pb2.KeyStatusResponse(
            gateway_id=admin.owner,
            keys=[_key_info(report) for report in admin.status()],
            changed=[str(KeyRef(admin.owner, k.purpose, k.version)) for k in changed],
            due=[purpose.value for purpose in admin.due()],
        )

    def KeyStatus(  # noqa: N802
        self, request: local_pb2.KeyStatusRequest, context: grpc.ServicerContext
    ) -> local_pb2.KeyStatusResponse:
        admin = self._admin(context)
        try:
            return self._key_status(admin, [])
        except XbgwError as error:
            _abort(context, error, "KeyStatus")
            raise

    def RotateKeys(  # noqa: N802
        self, request: local_pb2.RotateKeysRequest, context: grpc.ServicerContext
    ) -> local_pb2.KeyStatusResponse:
        admin = self._admin(context)
        try:
            purposes = [_purpose(name) for name in request.purposes] or None
            return self._key_status(admin, admin.rotate(purposes))
        except XbgwError as error:
            _abort(context, error, "RotateKeys")
            raise

    def RetireKey(  # noqa: N802
        self, request: local_pb2.KeyVersionRequest, context: grpc.ServicerContext
    ) -> local_pb2.KeyStatusResponse:
        admin = self._admin(context)
        try:
            done = admin.retire(_purpose(request.purpose), request.version)
            return self._key_status(admin, [done])
        except XbgwError as error:
            _abort(context, error, "RetireKey")
            raise

    def DestroyKey(  # noqa: N802
        self, request: local_pb2.KeyVersionRequest, context: grpc.ServicerContext
    ) -> local_pb2.KeyStatusResponse:
        admin = self._admin(context)
        try:
            done = admin.destroy(_purpose(request.purpose), request.version)
            return self._key_status(admin, [done])
        except XbgwError as error:
            _abort(context, error, "DestroyKey")
            raise

    def RewrapKeys(  # noqa: N802
        self, request: local_pb2.RewrapKeysRequest, context: grpc.ServicerContext
    ) -> Iterator[local_pb2.RewrapEvent]:
        admin = self._admin(context)
        events: queue.Queue[local_pb2.RewrapEvent | BaseException | None] = queue.Queue(64)

        def progress(done: int, total: int, transfer_id: str) -> None:
            with contextlib.suppress(queue.Full):  # advisory: never stall the rewrap
                events.put_nowait(
                    local_pb2.RewrapEvent(
                        progress=local_pb2.RewrapProgress(
                            done=done, total=total, transfer_id=transfer_id
                        )
                    )
                )

        def work() -> None:
            try:
                outcome = admin.rewrap(progress)
                events.put(
                    local_pb2.RewrapEvent(
                        done=local_pb2.RewrapDone(
                            to_version=outcome.to_version,
                            rewrapped=outcome.rewrapped,
                            already=outcome.already,
                            busy=list(outcome.busy),
                            failed=list(outcome.failed),
                            remaining=outcome.remaining,
                        )
                    )
                )
            except BaseException as exc:
                events.put(exc)
            finally:
                events.put(None)

        worker = threading.Thread(target=work, name="xbgw-rewrap", daemon=True)
        worker.start()
        while (item := events.get()) is not None:
            if isinstance(item, XbgwError):
                _abort(context, item, "RewrapKeys")
            elif isinstance(item, BaseException):
                log.error("rewrap failed", exc_info=item)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(item).__name__}")
            else:
                yield item
        worker.join()

    # -- witnessing (gateway.audit.witness) ------------------------------------------------

    def _witnessing(self) -> Witness:
        if self._witness is None:
            raise WitnessError("witnessing is not available in this gateway")
        return self._witness

    def WitnessStatus(  # noqa: N802
        self, request: local_pb2.WitnessStatusRequest, context: grpc.ServicerContext
    ) -> local_pb2.WitnessStatusResponse:
        try:
            return _witness_status(self._witnessing().report(), [])
        except XbgwError as error:
            _abort(context, error, "WitnessStatus")
            raise

    def RunWitness(  # noqa: N802
        self, request: local_pb2.RunWitnessRequest, context: grpc.ServicerContext
    ) -> local_pb2.WitnessStatusResponse:
        """A round now, in this thread (the partner calls have their own timeouts)."""
        try:
            witness = self._witnessing()
            done = witness.round(request.partners)
            return _witness_status(witness.report(), done)
        except XbgwError as error:
            _abort(context, error, "RunWitness")
            raise

    def AcknowledgeWitness(  # noqa: N802
        self, request: local_pb2.AcknowledgeWitnessRequest, context: grpc.ServicerContext
    ) -> local_pb2.WitnessStatusResponse:
        """Close the alarm, then witness the partner at once from its new base (if it is
        still configured), so the answer shows where it stands."""
        try:
            witness = self._witnessing()
            witness.acknowledge(request.partner)
            configured = {p.id for p in self._config().partners}
            done = witness.round([request.partner]) if request.partner in configured else []
            return _witness_status(witness.report(), done)
        except XbgwError as error:
            _abort(context, error, "AcknowledgeWitness", partner=request.partner)
            raise

    # -- data lifecycle (gateway.retention) ------------------------------------------------

    def _lifecycle_of(self, context: grpc.ServicerContext) -> Lifecycle:
        if self._lifecycle is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "the data lifecycle is not available")
        assert self._lifecycle is not None
        return self._lifecycle

    def Cancel(  # noqa: N802
        self, request: local_pb2.CancelRequest, context: grpc.ServicerContext
    ) -> local_pb2.CancelResponse:
        lifecycle = self._lifecycle_of(context)
        try:
            done = lifecycle.cancel(request.transfer_id, request.reason)
        except XbgwError as error:
            _abort(context, error, "Cancel", transfer_id=request.transfer_id)
            raise
        return local_pb2.CancelResponse(
            transfer_id=done.transfer_id,
            direction=done.direction,
            state=state_to_wire(done.state),
            partner_told=done.partner_told,
            detail=done.detail,
        )

    def AcknowledgeInbox(  # noqa: N802
        self, request: local_pb2.InboxItemsRequest, context: grpc.ServicerContext
    ) -> local_pb2.InboxItemsResponse:
        lifecycle = self._lifecycle_of(context)
        try:
            done = lifecycle.acknowledge(request.transfer_ids)
        except XbgwError as error:
            _abort(context, error, "AcknowledgeInbox")
            raise
        return local_pb2.InboxItemsResponse(changed=done.changed, unchanged=done.unchanged)

    def DeleteInbox(  # noqa: N802
        self, request: local_pb2.InboxItemsRequest, context: grpc.ServicerContext
    ) -> local_pb2.InboxItemsResponse:
        lifecycle = self._lifecycle_of(context)
        try:
            done = lifecycle.delete(request.transfer_ids)
        except XbgwError as error:
            _abort(context, error, "DeleteInbox")
            raise
        return local_pb2.InboxItemsResponse(changed=done.changed, unchanged=done.unchanged)

    @staticmethod
    def _inbox_item(row: Inbound) -> local_pb2.InboxItem:
        return local_pb2.InboxItem(
            transfer_id=row.transfer_id,
            sender=row.sender,
            size=row.received_bytes,
            plaintext_sha256=(row.plaintext_sha256 or b"").hex(),
            committed_at=row.committed_at or 0,
            classification=row.classification,
            source_jurisdiction=row.source_jurisdiction,
            fetched_at=row.fetched_at or 0,
            acknowledged_at=row.acknowledged_at or 0,
        )


def _witness_status(
    report: WitnessReport, done: list[Witnessed]
) -> local_pb2.WitnessStatusResponse:
    outcomes = {w.partner: w for w in done}
    partners = []
    for state in report.partners:
        entry = local_pb2.WitnessedPartner(partner=state.partner)
        if state.checkpoint is not None:
            entry.size = state.checkpoint.size
            entry.root = state.checkpoint.root.hex()
            entry.seen_at = state.checkpoint.seen_at
        if state.alarm is not None:
            entry.alarm.CopyFrom(
                local_pb2.WitnessAlarm(
                    raised_at=state.alarm.raised_at,
                    reason=state.alarm.reason,
                    size=state.alarm.size,
                )
            )
        witnessed = outcomes.get(state.partner)
        if witnessed is not None:
            entry.outcome = witnessed.outcome.value
            entry.detail = witnessed.detail
        partners.append(entry)
    return local_pb2.WitnessStatusResponse(
        gateway_id=report.gateway,
        partners=partners,
        cosignatures=[
            local_pb2.WitnessCosignature(witness=c.witness, size=c.size, at=c.at)
            for c in report.cosignatures
        ],
        cosigned_checkpoint=report.cosigned_checkpoint,
    )


def _reach(reach: Reach) -> local_pb2.PartnerReach:
    state = "unknown" if reach.up is None else "up" if reach.up else "down"
    return local_pb2.PartnerReach(
        partner=reach.partner,
        endpoint=reach.endpoint,
        state=state,
        last_contact=int(reach.last_contact or 0),
        checked_at=int(reach.checked_at or 0),
        detail=reach.detail,
    )


def _keys_in_use(versions: list[KeyVersion]) -> list[local_pb2.KeyInUse]:
    """Per purpose: the active version, and every version still in service."""
    keys = []
    for purpose in Purpose:
        mine = [v for v in versions if v.purpose is purpose]
        active = [v.version for v in mine if v.state is KeyState.ACTIVE]
        if mine:
            keys.append(
                local_pb2.KeyInUse(
                    purpose=purpose.value,
                    active=active[0] if active else 0,
                    in_service=sorted(v.version for v in mine if v.state.in_service),
                )
            )
    return keys


def _purpose(name: str) -> Purpose:
    try:
        return Purpose(name)
    except ValueError:
        raise UsageError(
            f"no key purpose {name!r}; one of {', '.join(p.value for p in Purpose)}"
        ) from None


def _key_info(report: KeyReport) -> local_pb2.KeyVersionInfo:
    key = report.key
    return local_pb2.KeyVersionInfo(
        purpose=key.purpose.value,
        version=key.version,
        state=key.state.value,
        created_at=key.created_at,
        activated_at=key.activated_at or 0,
        deactivated_at=key.deactivated_at or 0,
        retired_at=key.retired_at or 0,
        destroyed_at=key.destroyed_at or 0,
        retire_blockers=list(report.blockers),
    )


def _plaintext(src: BinaryIO, me: str, keys: KeyHolder, stored_header: bytes) -> Iterator[bytes]:
    """Verify and decrypt a committed spool file segment by segment (at-rest tamper check).

    The data key is opened from the ledger's header, the one retire decisions are made on:
    a rewrap cut short may have left the file's header wrapped to a newer version than the
    ledger's (``gateway.rewrap``). The file's header must have the same core.
    """
    on_disk = envelope.read_header(src)
    header = envelope.Header.decode(stored_header)
    if on_disk.core() != header.core():
        raise HeaderFormatError(
            f"the inbox file of {header.context.transfer_id} does not start with its header"
        )
    decryptor = envelope.StreamDecryptor(header, envelope.open_header(header, me, keys))
    yield from envelope.decrypt_segments(src, decryptor)


def _summary(summary: ReceiptSummary) -> local_pb2.ReceiptSummary:
    return local_pb2.ReceiptSummary(
        transfer_id=summary.transfer_id,
        partner=summary.partner,
        plaintext_sha256=summary.plaintext_sha256.hex(),
        plaintext_size=summary.plaintext_size,
        committed_at=summary.committed_at,
        signed_by=summary.signed_by,
        receipt=to_blob(summary.receipt),
    )
