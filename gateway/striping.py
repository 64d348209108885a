"""Striped uploads: one upload attempt over N streams at once, for long links.

Why apart from the sender: the dealing of one ordered segment source to N streams, the
threads that run them and the choice of which failure to report are their own concern; the
sender only decides when to stripe (``partners[].connections``) and what to do when an
attempt fails (see ``gateway.sender``'s module docstring, "Striping").

Segment ``i`` goes on stream ``i mod N``, each stream in increasing order (:class:`Stripes`),
fed through one slot per stream, so no stream runs more than N segments ahead of the slowest
and the memory outside the pipeline's budget is at most one segment per stream. The first
failure of any stream stops the feed and cancels the others; each attempt carries a fresh
random token, so the receiver never mixes its streams with a late one of an older attempt.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from gateway.config import PartnerConfig
from gateway.errors import PartnerError
from gateway.receiver.intake import Stripe
from gateway.transfer import SegmentIn, UploadResult, transient

#: The words of a partner's busy refusal when another of its nodes holds the transfer's
#: lease (``gateway.receiver.context.Context._take_lease``): a stripe that reached the wrong
#: node behind a balancer.
HELD_BY_ANOTHER_NODE = "another node of this gateway is writing it"


class StripedLink(Protocol):
    """A link that can upload one stripe of a striped upload (``partner_link``, loopback)."""

    def upload_stripe(
        self,
        partner: PartnerConfig,
        segments: Iterator[SegmentIn],
        stripe: Stripe,
        on_abort: Callable[[Callable[[], object]], None],
    ) -> UploadResult: ...


def upload_striped(
    link: StripedLink, partner: PartnerConfig, segments: Iterator[SegmentIn], lanes: int
) -> None:
    """One upload attempt over ``lanes`` streams at once (see the module docstring).

    Stripe 0 runs in this thread, the others in threads of their own that end with the
    attempt. The first failure stops the feed and cancels every other stream; the error
    raised is the most telling one: a failure of our own (the source), else a refusal (the
    same on every stripe), else the first transient failure, which the caller retries.

    An attempt with fewer segments left than ``lanes`` (a small file, or a resume near the
    end) runs on as many streams as it has segments: a stream names its transfer in its
    first segment, so an empty one could not join the attempt, and the partner refuses it."""
    attempt = secrets.token_hex(8)
    head = list(itertools.islice(segments, lanes))
    lanes = max(1, len(head))
    stripes = Stripes(itertools.chain(head, segments), lanes)
    lock = threading.Lock()
    cancels: list[Callable[[], object]] = []
    failures: list[BaseException] = []

    def on_abort(cancel: Callable[[], object]) -> None:
        with lock:
            if not failures:
                cancels.append(cancel)
                return
        cancel()

    def run(index: int) -> None:
        try:
            link.upload_stripe(
                partner, stripes.stream(index), Stripe(index, lanes, attempt), on_abort
            )
        except BaseException as exc:
            with lock:
                failures.append(exc)
                first, pending = len(failures) == 1, list(cancels)
            if first:
                stripes.stop()
                for cancel in pending:
                    cancel()

    threads = [
        threading.Thread(target=run, args=(index,), name=f"xbgw-stripe-{index}", daemon=True)
        for index in range(1, lanes)
    ]
    for thread in threads:
        thread.start()
    run(0)
    for thread in threads:
        thread.join()
    if failures:
        own = [e for e in failures if not isinstance(e, PartnerError)]
        refusals = [e for e in failures if isinstance(e, PartnerError) and not transient(e)]
        elsewhere = [
            e for e in failures if isinstance(e, PartnerError) and HELD_BY_ANOTHER_NODE in str(e)
        ]
        if elsewhere and not own and not refusals:
            raise StripesSplitError(str(elsewhere[0]), elsewhere[0].grpc_status)
        busy = [
            e
            for e in failures
            if isinstance(e, PartnerError)
            and e.grpc_status == "RESOURCE_EXHAUSTED"
            and transient(e)
        ]
        if busy and not own and not refusals:
            raise StripesBusyError(
                f"{busy[0]} -- {len(busy)} of {lanes} stripes were refused as busy: "
                f"lower partners[{partner.id}].connections to what it takes at once, or send "
                "with --wait to go on over fewer",
                busy[0].grpc_status,
                lanes - len(busy),
            )
        raise (own or refusals or failures)[0]


class StripesSplitError(PartnerError):
    """Stripes of one upload attempt were refused as held by another node of the partner
    (a balancer placed their connections on different nodes): the attempt cannot succeed
    striped. Transient like the busy refusal it carries, for a caller that does not stripe
    again (``Sender._upload`` goes on over one stream)."""


class StripesBusyError(PartnerError):
    """Some stripes of an upload attempt were refused as busy: the partner had no room for
    that many uploads of ours at once (its ``limits.max_concurrent_transfers`` is below our
    ``connections``, or other uploads hold its slots). ``admitted`` is how many were not
    refused; after its pause the caller goes on over that many (at least one), rather than
    being refused the same way again. Transient like the busy refusal it carries."""

    def __init__(self, message: str, grpc_status: str, admitted: int) -> None:
        super().__init__(message, grpc_status)
        self.admitted = admitted


class Stripes:
    """One ordered segment source dealt round robin to N streams: segment ``i`` to stream
    ``i mod N``. Whichever stream needs a segment reads the source (one reader at a time) and
    leaves each segment that is not its own in its owner's single slot, waiting while that
    slot is still full -- so a stream that falls behind holds everyone back (at most one
    segment per stream waits here), and the source is never read ahead unboundedly."""

    def __init__(self, source: Iterator[SegmentIn], count: int) -> None:
        self._source = source
        self._count = count
        self._slots: list[SegmentIn | None] = [None] * count
        self._reading = False
        self._ended = False
        self._stopped = False
        self._cond = threading.Condition()

    def stop(self) -> None:
        """End every stream at its next segment (the attempt failed)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def stream(self, index: int) -> Iterator[SegmentIn]:
        while (segment := self._next(index)) is not None:
            yield segment

    def _next(self, index: int) -> SegmentIn | None:
        with self._cond:
            while True:
                if self._stopped:
                    return None
                mine = self._slots[index]
                if mine is not None:
                    self._slots[index] = None
                    self._cond.notify_all()
                    return mine
                if self._ended:
                    return None
                if not self._reading:
                    self._reading = True
                    break
                self._cond.wait()
        try:
            return self._read_for(index)
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()

    def _read_for(self, index: int) -> SegmentIn | None:
        """Read the source (outside the lock: it may wait for the pipeline) until the next
        segment is ``index``'s own."""
        while True:
            segment = next(self._source, None)
            with self._cond:
                if segment is None:
                    self._ended = True
                    return None
                owner = segment.index % self._count
                if owner == index:
                    return None if self._stopped else segment
                while self._slots[owner] is not None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return None
                self._slots[owner] = segment
                self._cond.notify_all()
