"""What must hold after a fault run, checked from outside the daemons.

Each check reads what an operator or auditor could: both ledgers (read-only SQLite, never
touching the daemons' WAL), the spool directory, both audit logs (``xbgw audit export`` and
``xbgw audit verify``, offline and read-only), ``xbgw inbox`` and ``xbgw fetch``. A check
names every transfer it finds wrong, so a failed run says what to replay and look at.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devtools.pair import Gateway
from tests.faults.driver import TransferResult
from tests.faults.plan import Kind
from tests.faults.rig import FaultRig

UNFINISHED = ("sending", "receiving")


@dataclass(frozen=True)
class Check:
    name: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def final_checks(rig: FaultRig, results: list[TransferResult], workdir: Path) -> list[Check]:
    """Every check, in order; the daemons must be running (fetch and inbox go through them)."""
    rig.ensure_running()
    steps: list[tuple[str, Callable[[], list[str]]]] = [
        ("every send ended delivered", lambda: _delivered(results)),
        ("sender ledger: delivered, receipt kept", lambda: _outbound(rig.lingang, results)),
        ("receiver ledger: committed, every byte", lambda: _inbound(rig.frankfurt, results)),
        ("exactly once in both audit logs", lambda: _exactly_once(rig, results)),
        ("xbgw inbox lists each transfer once", lambda: _inbox(rig.frankfurt, results)),
        ("fetched files byte-identical (SHA-256)", lambda: _fetched(rig, results, workdir)),
        ("nothing stuck sending/receiving", lambda: _stuck(rig)),
        ("no partial files in the spool", lambda: _partials(rig, results)),
        ("both audit logs verify", lambda: _audit_verify(rig)),
        ("failures said why (no INTERNAL; disk full is RESOURCE_EXHAUSTED)",
         lambda: _clear_errors(results)),
    ]  # fmt: skip
    checks = []
    for name, step in steps:
        try:
            problems = step()
        except Exception as exc:  # a check that cannot run is a failed check, not a crash
            problems = [f"the check itself failed: {type(exc).__name__}: {exc}"]
        checks.append(Check(name, tuple(problems)))
    return checks


def _ledger(gateway: Gateway) -> contextlib.closing[sqlite3.Connection]:
    path = gateway.paths.state_dir / "ledger.sqlite3"
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10))


def _delivered(results: list[TransferResult]) -> list[str]:
    return [
        f"{r.plan.transfer_id}: {r.problem or 'not delivered'} (last: "
        f"{r.attempts[-1].error if r.attempts else 'no attempt'})"
        for r in results
        if not r.delivered
    ]


def _outbound(lingang: Gateway, results: list[TransferResult]) -> list[str]:
    problems = []
    with _ledger(lingang) as db:
        for r in results:
            row = db.execute(
                "SELECT state, plaintext_size, hex(plaintext_sha256), receipt_body IS NOT NULL "
                "FROM outbound WHERE transfer_id = ?",
                (r.plan.transfer_id,),
            ).fetchone()
            want = ("delivered", r.plan.size, r.sha256.upper(), 1)
            if row is None or tuple(row) != want:
                problems.append(f"{r.plan.transfer_id}: outbound row {row}, wanted {want}")
    return problems


def _inbound(frankfurt: Gateway, results: list[TransferResult]) -> list[str]:
    problems = []
    with _ledger(frankfurt) as db:
        for r in results:
            row = db.execute(
                "SELECT state, received_bytes, final_received, hex(plaintext_sha256) "
                "FROM inbound WHERE transfer_id = ?",
                (r.plan.transfer_id,),
            ).fetchone()
            want = ("committed", r.plan.size, 1, r.sha256.upper())
            if row is None or tuple(row) != want:
                problems.append(f"{r.plan.transfer_id}: inbound row {row}, wanted {want}")
    return problems


def _audit_records(gateway: Gateway, kind: str) -> Counter[str]:
    done = gateway.cli("audit", "export", "-c", str(gateway.paths.config), timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"xbgw audit export on {gateway.id}: {done.stderr.strip()}")
    counts: Counter[str] = Counter()
    for line in done.stdout.splitlines():
        record = json.loads(line)
        if record.get("kind") == kind:
            counts[str(record.get("transfer_id"))] += 1
    return counts


def _exactly_once(rig: FaultRig, results: list[TransferResult]) -> list[str]:
    committed = _audit_records(rig.frankfurt, "transfer.committed")
    delivered = _audit_records(rig.lingang, "transfer.delivered")
    problems = []
    for r in results:
        seen = (committed[r.plan.transfer_id], delivered[r.plan.transfer_id])
        if seen != (1, 1):
            problems.append(
                f"{r.plan.transfer_id}: transfer.committed x{seen[0]} on frankfurt, "
                f"transfer.delivered x{seen[1]} on lingang"
            )
    return problems


def _inbox(frankfurt: Gateway, results: list[TransferResult]) -> list[str]:
    listed = frankfurt.cli("inbox", timeout=60)
    if listed.returncode != 0:
        return [f"xbgw inbox failed: {listed.stderr.strip()}"]
    ids = Counter(line.split()[0] for line in listed.stdout.splitlines() if line.split())
    return [
        f"{r.plan.transfer_id}: listed {ids[r.plan.transfer_id]} times"
        for r in results
        if ids[r.plan.transfer_id] != 1
    ]


def _fetched(rig: FaultRig, results: list[TransferResult], workdir: Path) -> list[str]:
    problems = []
    for r in results:
        target = workdir / f"{r.plan.transfer_id}.fetched"
        done = rig.frankfurt.cli("fetch", r.plan.transfer_id, "-o", str(target), timeout=120)
        if done.returncode != 0:
            problems.append(f"{r.plan.transfer_id}: xbgw fetch failed: {done.stderr.strip()}")
            continue
        digest = _sha256(target)
        target.unlink()
        if digest != r.sha256:
            problems.append(f"{r.plan.transfer_id}: fetched sha256 {digest}, sent {r.sha256}")
    leftovers = sorted(p.name for p in workdir.glob(".*.xbgw-partial"))
    if leftovers:
        problems.append(f"fetch left partial files: {leftovers}")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stuck(rig: FaultRig) -> list[str]:
    problems = []
    for gateway, table in ((rig.lingang, "outbound"), (rig.frankfurt, "inbound")):
        with _ledger(gateway) as db:
            rows = db.execute(
                f"SELECT transfer_id, state FROM {table} WHERE state IN (?, ?)", UNFINISHED
            ).fetchall()
        problems += [f"{gateway.id}: {transfer_id} still {state}" for transfer_id, state in rows]
    return problems


def _partials(rig: FaultRig, results: list[TransferResult]) -> list[str]:
    spool = rig.frankfurt.paths.state_dir / "spool"
    problems = [f"partial file left: {p.name}" for p in sorted((spool / "incoming").iterdir())]
    expected = {f"{r.plan.transfer_id}.xbgw" for r in results}
    for path in sorted((spool / "inbox").iterdir()):
        if path.name not in expected:
            problems.append(f"unexpected file in the inbox: {path.name}")
    return problems


def _audit_verify(rig: FaultRig) -> list[str]:
    problems = []
    for gateway in rig.pair.gateways:
        done = gateway.cli("audit", "verify", "-c", str(gateway.paths.config), timeout=120)
        if done.returncode != 0:
            problems.append(f"{gateway.id}: {(done.stdout + done.stderr).strip()}")
    return problems


def _clear_errors(results: list[TransferResult]) -> list[str]:
    problems = []
    for r in results:
        for attempt in r.attempts:
            if attempt.code in (0, None):
                continue
            if "INTERNAL" in attempt.error or "internal error" in attempt.error:
                problems.append(f"{r.plan.transfer_id}: {attempt.error}")
            elif attempt.during == (Kind.DISK_FULL,) and "RESOURCE_EXHAUSTED" not in attempt.error:
                problems.append(f"{r.plan.transfer_id} (after disk-full): {attempt.error}")
    return problems
