"""``xbgw audit verify|tail|proof|export``: the gateway's audit log, offline.

Every verb reads the ledger named by ``-c`` read-only -- while the daemon runs or not; a
reader neither blocks it nor waits for it. ``verify`` recomputes the whole log and checks
every checkpoint (:mod:`gateway.audit.verify`); the signatures with the gateway's signing
public keys, read from the HSM as ``xbgw keys public`` does (every version on the token), or
only the ``--key`` PEM files given. ``tail`` and ``export`` print records as JSON lines;
``proof`` prints one leaf's inclusion proof under a signed checkpoint, which anyone checks
with the checkpoint's public key and RFC 9162 (see the README's audit section).

Imported only when one of these verbs runs.
"""

from __future__ import annotations

import argparse
import calendar
import datetime
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.audit.checkpoint import EcdsaVerifier
from gateway.audit.merkle import leaf_hash
from gateway.audit.records import AuditRecordError, decode
from gateway.audit.verify import AuditLogError, LogReport, prove_leaf, verify_log
from gateway.cli.common import open_hsm
from gateway.config import GatewayConfig, load_config
from gateway.errors import UsageError
from gateway.keys import Purpose
from gateway.ledger import Ledger, open_ledger

LEDGER = "ledger.sqlite3"  # in the state directory, as the daemon names it
FOLLOW_INTERVAL = 0.5  # seconds between two looks at the ledger under ``tail -f``
PAGE = 1000  # records read at a time


def _open(config: GatewayConfig) -> tuple[str, Ledger]:
    """The ledger for reading, and how messages name it: the SQLite file in the state
    directory (read as empty if there is none yet), or the database the nodes share
    (``state.database``), whichever node's config names it."""
    if config.state.database is not None:
        ledger = open_ledger(config)
        return f"ledger database {ledger.store.where}", ledger
    path = config.state_dir / LEDGER
    where = f"ledger {path}, read-only" if path.exists() else f"no ledger yet at {path}"
    return where, Ledger.read_only(path)


def _records(ledger: Ledger, start: int) -> Iterator[tuple[int, bytes]]:
    """Every record from leaf ``start`` on, a page at a time."""
    while True:
        page = ledger.audit_records(start, start + PAGE)
        yield from page
        if len(page) < PAGE:
            return
        start = page[-1][0] + 1


def _document(record: bytes) -> dict[str, object]:
    """The record's members, or what is wrong with it (``audit verify`` says more)."""
    try:
        return decode(record)
    except AuditRecordError as exc:
        return {"error": str(exc), "record_hex": record.hex()}


def _write(out: IO[str], lines: Iterable[str]) -> int | None:
    """Write JSON lines and flush; how many, or None if the reader went away (``| head``),
    which ends the verb quietly."""
    count = 0
    try:
        for line in lines:
            out.write(line + "\n")
            count += 1
        out.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return None
    return count


# --- verify ------------------------------------------------------------------------------------


def cmd_audit_verify(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    verifiers = [EcdsaVerifier(config.id, key) for key in _public_keys(args)]
    where, ledger = _open(config)
    try:
        report = verify_log(ledger, verifiers, origin=config.id)
    finally:
        ledger.close()
    if report.ok:
        print(f"audit log of {config.id} ({where}): verified")
        for line in _summary(report, len(verifiers)):
            print(f"  {line}")
        return 0
    first = report.first_bad_leaf
    at = f", the first at leaf {first}" if first is not None else ""
    count = f"{len(report.problems)} problem{'s' * (len(report.problems) != 1)}{at}"
    print(f"audit log of {config.id} ({where}): {count}")
    for problem in report.problems:
        print(f"  {problem}")
    raise AuditLogError(f"the audit log of {config.id} does not verify: {count}")


def _summary(report: LogReport, keys: int) -> list[str]:
    lines = [
        f"leaves: {report.leaves}, root {report.root.hex()}",
        f"nodes: {report.nodes} stored, each equal to the one recomputed from the records",
    ]
    signed = f"{report.signed} signed, {report.verified} signatures verified with {keys} "
    signed += f"signing key{'s' * (keys != 1)}"
    text = f"checkpoints: {report.checkpoints} ({signed})"
    if report.newest is None:
        text += "; none signed yet"
    else:
        text += f"; newest: size {report.newest[0]}, root {report.newest[1].hex()}"
    return [*lines, text]


def _public_keys(args: argparse.Namespace) -> list[ec.EllipticCurvePublicKey]:
    """The ``--key`` PEM files, or every signing key version on the gateway's token."""
    if args.keys:
        return [_pem(path) for path in args.keys]
    with open_hsm(args) as hsm:
        keys = [hsm.public_key(Purpose.SIGNING, v) for v in hsm.versions(Purpose.SIGNING)]
    if not keys:
        raise UsageError("the token has no signing key: give the public keys with --key PEM")
    return keys


def _pem(path: str) -> ec.EllipticCurvePublicKey:
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except ValueError as exc:
        raise UsageError(f"--key {path}: not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UsageError(f"--key {path}: not an ECDSA P-256 public key (a gateway signing key)")
    return key


# --- tail --------------------------------------------------------------------------------------


def cmd_audit_tail(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _, ledger = _open(config)
    try:
        size = ledger.audit_size()
        last = ledger.audit_records(max(0, size - args.lines), size)
        if _write(sys.stdout, (_tail_line(i, r) for i, r in last)) is None:
            return 0
        following = size
        while args.follow:
            time.sleep(FOLLOW_INTERVAL)
            if following == 0:  # perhaps no ledger yet (read as empty): open it again
                ledger.close()
                ledger = _open(config)[1]
            fresh = list(_records(ledger, following))
            if fresh:
                if _write(sys.stdout, (_tail_line(i, r) for i, r in fresh)) is None:
                    return 0
                following = fresh[-1][0] + 1
    finally:
        ledger.close()
    return 0


def _tail_line(leaf: int, record: bytes) -> str:
    return json.dumps({"leaf": leaf, "record": _document(record)}, separators=(",", ":"))


# --- proof -------------------------------------------------------------------------------------


def cmd_audit_proof(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _, ledger = _open(config)
    try:
        proof = prove_leaf(ledger, args.leaf, args.size)
    finally:
        ledger.close()
    print(json.dumps({"gateway": config.id, **proof.to_json()}, indent=2))
    if proof.checkpoint is None:
        print(
            f"xbgw: note: no signed checkpoint has size {proof.size}; the root is the log's own",
            file=sys.stderr,
        )
    return 0


# --- export ------------------------------------------------------------------------------------


def cmd_audit_export(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    since = None if args.since is None else _since(args.since)
    _, ledger = _open(config)
    try:
        lines = (
            _export_line(leaf, record)
            for leaf, record in _records(ledger, 0)
            if since is None or _at(record) >= since
        )
        if args.output is None:
            _write(sys.stdout, lines)
            return 0
        out = Path(args.output)
        temporary = out.with_name(f".{out.name}.tmp")
        with temporary.open("w", encoding="utf-8") as file:
            count = _write(file, lines) or 0
        os.replace(temporary, out)
    finally:
        ledger.close()
    after = "" if since is None else f" since {_iso(since)}"
    print(f"wrote {count} record{'s' * (count != 1)}{after} of {config.id} to {out}")
    return 0


def _export_line(leaf: int, record: bytes) -> str:
    document = _document(record)
    at = document.get("at")
    line: dict[str, object] = {"leaf": leaf, "leaf_hash": leaf_hash(record).hex()}
    if type(at) is int:
        line["time"] = _iso(at)
    line.update((k, v) for k, v in document.items() if k not in line)
    return json.dumps(line, separators=(",", ":"))


def _at(record: bytes) -> int:
    at = _document(record).get("at")
    return at if type(at) is int else 0


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


_SINCE_FORMS = (
    "Unix seconds, an ISO date (2026-03-01, 00:00 UTC) or an ISO time with a zone "
    "(2026-03-01T08:00:00+08:00, 2026-03-01T00:00:00Z)"
)


def _since(text: str) -> int:
    """``--since``: Unix seconds, an ISO date (00:00 UTC) or an ISO time with a zone."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        if len(text) == 10:
            return calendar.timegm(datetime.date.fromisoformat(text).timetuple())
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: not a time (give {_SINCE_FORMS})") from None
    if moment.tzinfo is None:
        raise UsageError(f"--since {text!r} has no time zone: add one (Z, +08:00) or give a date")
    return int(moment.timestamp())
