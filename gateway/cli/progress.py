"""How ``xbgw send`` and ``xbgw fetch`` show a transfer as it goes, to a person or a script.

Four modes, chosen by :func:`mode_for`:

* ``bar`` -- stderr is a terminal: one live line from tqdm, redrawn in place (bytes, percent,
  rate, ETA, and "resumed from N" when the partner already held data); notes (queued,
  waiting for the partner) are printed above it through tqdm, so they do not tear it.
* ``lines`` -- stderr is a file or a pipe (a log, a CI job): a plain line when the transfer
  has moved 10% *and* 10 seconds have passed since the last one (the later of the two, so a
  long transfer writes ten lines, not thousands, and a fast one none), the notes as lines,
  and one line with the average rate at the end.
* ``quiet`` (``--quiet``) -- nothing but the final result on stdout and errors on stderr.
* ``json`` (``--json``) -- for scripts: JSON Lines on stdout, one object per event, the last
  one the result (or ``error``); nothing on stderr but the error line.

The ``--json`` objects; every one has ``event``, sizes are bytes, times Unix seconds::

    {"event": "queued", "position": 2, "running": 4}          (send: waits for a slot)
    {"event": "waiting", "reason": "partner ... unreachable", "attempt": 1,
     "retry_in_ms": 2000, "waited_seconds": 3, "wait_seconds": 60}     (send: partner away)
    {"event": "accepted", "transfer_id": "...", "resume_from": 0}     (send: partner took it)
    {"event": "progress", "bytes_done": 1048576, "bytes_total": 4194304}
        (at most one a second, and one at the end; bytes_total null when not known, as
        for fetch and for a send from a pipe)
    {"event": "delivered", "transfer_id": "...", "partner": "...", "size": 4194304,
     "sha256": "hex", "signed_by": "KID", "committed_at": 1767225600}      (send: the result)
    {"event": "fetched", "transfer_id": "...", "size": 4194304, "path": "/abs/out"}
                                                                          (fetch: the result)
    {"event": "error", "message": "...", "status": "RESOURCE_EXHAUSTED"}
        (instead of a result; the exit status is not 0 and stderr has the message too)

tqdm rather than rich: it does this one job with no dependencies of its own (rich brings
markdown-it-py and pygments for tables and markup the CLI does not use), is kept by a team
that releases often, and is the bar most Python tools already ship with.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any, Literal

from tqdm import tqdm

from gateway.errors import XbgwError

Mode = Literal["bar", "lines", "quiet", "json"]

LINE_STEPS = 10  # a plain line per tenth of the transfer ...
LINE_SECONDS = 10.0  # ... and at most one per 10 seconds (the later of the two)
JSON_PROGRESS_SECONDS = 1.0
_FALLBACK_SIZE = (80, 24)  # a terminal that reports no size (a fresh pty): tqdm draws nothing


def mode_for(quiet: bool, as_json: bool, err: IO[str]) -> Mode:
    """``--json`` and ``--quiet`` as asked; else a bar when stderr is a terminal."""
    if as_json:
        return "json"
    if quiet:
        return "quiet"
    return "bar" if err.isatty() else "lines"


def size_text(count: float) -> str:
    """Bytes in decimal units, as the bar shows them: ``4.2 MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


class Progress:
    """One transfer's progress, in one of the four modes (see the module's docstring).

    ``verb`` is the past tense the lines use ("sent", "fetched"). ``total`` is the size if
    known (None or 0: not known; a ``progress`` event may tell it later). ``clock`` is
    ``time.monotonic`` but for tests of the line cadence."""

    def __init__(
        self,
        mode: Mode,
        verb: str,
        total: int | None,
        *,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode: Mode = mode
        self.verb = verb
        self.total = total or None
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.clock = clock
        self.done = 0
        self.resumed_from = 0
        self._bar: tqdm[Any] | None = None
        self._began: float | None = None  # the first byte count: the rate counts from here
        self._line_at = (0.0, 0)  # (time, bytes done) at the last plain line
        self._json_at = 0.0
        self._json_done = -1

    # --- events ---------------------------------------------------------------------------

    def note(self, event: str, fields: dict[str, Any], text: str) -> None:
        """An event a person should see as a line (queued, waiting): through the bar."""
        if self.mode == "json":
            self._emit({"event": event, **fields})
        elif self.mode == "bar" and self._bar is not None:
            self._bar.write(text, file=self.err)
        elif self.mode != "quiet":
            print(text, file=self.err, flush=True)

    def accepted(self, transfer_id: str, resume_from: int) -> None:
        """The partner took the transfer, holding ``resume_from`` bytes of it already."""
        if self.mode == "json":
            self._emit(
                {"event": "accepted", "transfer_id": transfer_id, "resume_from": resume_from}
            )
        if resume_from and self._began is None:
            self.resumed_from = resume_from
        if resume_from and self.mode in ("bar", "lines"):
            text = f"resuming {transfer_id}: partner holds {resume_from} bytes"
            if self._bar is not None:
                self._bar.write(text, file=self.err)
            else:
                print(text, file=self.err, flush=True)
        self._start(resume_from)

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` bytes of the transfer are through (counted from its first byte)."""
        if total:
            self.total = total
            if self._bar is not None and self._bar.total != total:
                self._bar.total = total
        self._start(done)
        step, self.done = done - self.done, done
        if self.mode == "bar" and self._bar is not None:
            self._bar.update(step)
        elif self.mode == "lines":
            self._maybe_line()
        elif self.mode == "json" and self.clock() - self._json_at >= JSON_PROGRESS_SECONDS:
            self._json_progress()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """On every way out the bar ends where it stands, so that the error starts a line;
        a failure reaches a script as an ``error`` object (main prints it for everyone)."""
        if isinstance(error, XbgwError) and self.mode == "json":
            self._emit({"event": "error", "message": str(error), "status": error.grpc_status})
        self.close()

    def finish(
        self, event: str, fields: dict[str, Any], lines: list[str], size: int | None = None
    ) -> None:
        """The transfer is done (``size`` bytes in all): the bar at its end (lines: the
        average rate), then the result -- ``lines`` on stdout for a person, one ``event``
        object for a script."""
        if size is not None and size >= self.done:
            self.update(size)
        if self.mode == "json":
            if self._json_done != self.done:
                self._json_progress()
            self._emit({"event": event, **fields})
            return
        if self.mode == "lines" and self._began is not None:
            moved = self.done - self.resumed_from
            elapsed = max(self.clock() - self._began, 1e-6)
            resumed = f", resumed from {size_text(self.resumed_from)}" if self.resumed_from else ""
            print(
                f"{self.verb} {size_text(moved)} in {elapsed:.1f}s, "
                f"{size_text(moved / elapsed)}/s{resumed}",
                file=self.err,
                flush=True,
            )
        self.close()
        for line in lines:
            print(line, file=self.out)

    def close(self) -> None:
        """End the bar where it stands (on failure too), so what follows starts a line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # --- inside -----------------------------------------------------------------------------

    def _start(self, done: int) -> None:
        """The first byte count: the rate and the bar start here (not while queued)."""
        if self._began is not None:
            return
        self._began = self.clock()
        self._line_at = (self._began, done)
        self.done = done
        if self.mode == "bar":
            self._bar = self._new_bar(done)

    def _new_bar(self, done: int) -> tqdm[Any]:
        try:
            columns, rows = os.get_terminal_size(self.err.fileno())
        except (OSError, ValueError):  # not a terminal after all: tqdm's own guess
            columns, rows = 0, 0
        bar: tqdm[Any] = tqdm(
            total=self.total,
            initial=done,  # the rate counts what moves now, not what the partner held
            desc=self.verb.replace("sent", "sending").replace("fetched", "fetching"),
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            file=self.err,
            ncols=columns or _FALLBACK_SIZE[0],
            nrows=rows or _FALLBACK_SIZE[1],
            dynamic_ncols=bool(columns),
            leave=True,
        )
        if self.resumed_from:
            bar.set_postfix_str(f"resumed from {size_text(self.resumed_from)}", refresh=True)
        return bar

    def _fraction(self, done: int) -> float:
        return min(done / self.total, 1.0) if self.total else 0.0

    def _maybe_line(self) -> None:
        now, fraction = self.clock(), self._fraction(self.done)
        at, at_done = self._line_at
        if now - at < LINE_SECONDS or (
            self.total and (self.done - at_done) * LINE_STEPS < self.total
        ):
            return
        self._line_at = (now, self.done)
        began = self._began if self._began is not None else now
        rate = (self.done - self.resumed_from) / max(now - began, 1e-6)
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else None
            eta = f", {left:.0f}s left" if left is not None else ""
            text = (
                f"{self.verb} {fraction:.0%}: {size_text(self.done)} of "
                f"{size_text(self.total)}, {size_text(rate)}/s{eta}"
            )
        else:
            text = f"{self.verb} {size_text(self.done)}, {size_text(rate)}/s"
        print(text, file=self.err, flush=True)

    def _json_progress(self) -> None:
        self._json_at, self._json_done = self.clock(), self.done
        self._emit({"event": "progress", "bytes_done": self.done, "bytes_total": self.total})

    def _emit(self, document: dict[str, Any]) -> None:
        print(json.dumps(document), file=self.out, flush=True)
