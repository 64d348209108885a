"""One line per event: JSON for journald and files, readable text on a terminal.

Only the fields named in ``FIELDS`` are carried from ``extra=``: identifiers and outcomes,
never a PIN, a key or a payload byte.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from types import TracebackType

FIELDS = (
    "transfer_id",
    "partner",
    "outcome",
    "status",
    "reason",
    "bytes",
    "rpc",
    "peer",
    "key_ref",
    "rule",  # compliance: the rules that refused
    "trail",  # compliance: every rule that applied (ids, articles, facts read, outcomes)
)


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # The time up to the second, formatted once per second rather than once per line.
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                entry[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(entry, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{name}={getattr(record, name)}"
            for name in FIELDS
            if getattr(record, name, None) not in (None, "")
        )
        line = f"{record.levelname.lower():<7} {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f" ({record.exc_info[0].__name__}: {record.exc_info[1]})"
        return f"{line}  {fields}" if fields else line


def setup(level: str = "info", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Neither formatter shows the caller's file and line, the thread or the process: not
    # collecting them spares every line a walk up the stack and a few lookups (a small
    # transfer logs several lines on each side).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # An exception nobody caught is still one line in the journal, not a multi-line traceback.
    threading.excepthook = _thread_exception
    sys.excepthook = _uncaught


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("xbgw").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def _uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("xbgw").error("uncaught exception", exc_info=(kind, value, traceback))
