"""``xbgw audit verify|tail|proof|export`` through the real program, on a running demo pair.

One pair, one test (the steps depend on each other and share the daemons): two transfers
lingang -> frankfurt while ``audit tail -f`` follows lingang's log; the records on both sides
(and none of the data's bytes in them); ``audit verify`` on both, with the keys from the
token and with ``--key``; ``audit proof`` of frankfurt's commit record, checked in a fresh
process with nothing but the proof, the public key and the RFC 9162 / signed-note checks;
``audit export``; then lingang stopped, a record of its ledger changed on disk, and ``audit
verify`` failing on that leaf.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devtools.pair import Gateway, Pair, provision_pair
from gateway.ledger import Ledger
from tests.system.harness import wait_until
from tests.system.keys_helpers import ok

TIMEOUT = 60.0
LEDGER = "ledger.sqlite3"

# Checks a proof with nothing but the file, a PEM public key and the two published checks:
# RFC 9162 inclusion (merkle.verify_inclusion) and the C2SP signed note (verify_note).
FRESH_CHECK = """
import hashlib, json, sys
from pathlib import Path
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from gateway.audit.checkpoint import EcdsaVerifier, verify_note
from gateway.audit.merkle import verify_inclusion

proof = json.loads(Path(sys.argv[1]).read_text())
key = load_pem_public_key(Path(sys.argv[2]).read_bytes())
origin = proof["gateway"]
checkpoint = verify_note(proof["checkpoint"], [EcdsaVerifier(origin, key)], origin=origin)
leaf = hashlib.sha256(b"\\x00" + proof["leaf_input"].encode("ascii")).digest()
assert leaf.hex() == proof["leaf_hash"]
verify_inclusion(leaf, proof["leaf"], checkpoint.size,
                 [bytes.fromhex(h) for h in proof["inclusion_proof"]], checkpoint.root_hash)
record = json.loads(proof["leaf_input"])
print(f"ok {record['kind']} {record['transfer_id']} leaf {proof['leaf']} of {checkpoint.size}")
"""


def config(gateway: Gateway) -> str:
    return str(gateway.paths.config)


def send(pair: Pair, tmp_path: Path, data: bytes) -> str:
    """Send ``data`` lingang -> frankfurt as ``keys_helpers.send`` does; the transfer id."""
    source = tmp_path / f"data-{os.urandom(4).hex()}.bin"
    source.write_bytes(data)
    token = pair.passport(byte_limit=len(data) + 1)
    out = ok(pair.lingang, "send", str(source), "--to", "frankfurt", "--passport", token, "-q")
    source.unlink()
    return next(line.split()[1] for line in out.splitlines() if line.startswith("delivered"))


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def kinds(tail: list[dict[str, Any]], transfer_id: str) -> list[str]:
    return [
        entry["record"]["kind"]
        for entry in tail
        if entry["record"].get("transfer_id") == transfer_id
    ]


def no_payload(text: str, data: bytes) -> None:
    """None of the data in ``text``: no 16-byte piece, raw, in hex or in base64."""
    raw = text.encode("utf-8", "surrogateescape")
    for start in range(0, len(data) - 16, 16):
        piece = data[start : start + 16]
        assert piece not in raw
        assert piece.hex() not in text
    assert base64.b64encode(data[:48]).decode() not in text


class Follower:
    """``xbgw audit tail -f`` in the background; its output lines collected by a thread."""

    def __init__(self, gateway: Gateway, *args: str) -> None:
        self.process = gateway.cli_background("audit", "tail", "-c", config(gateway), "-f", *args)
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def stop(self) -> None:
        self.process.kill()  # by its PID
        self.process.wait(TIMEOUT)
        self._reader.join(TIMEOUT)


def test_audit_verbs_on_a_running_pair(tmp_path: Path) -> None:
    pair = provision_pair(tmp_path / "pair")
    lingang, frankfurt = pair.lingang, pair.frankfurt
    first_data, second_data = os.urandom(3000), os.urandom(5000)
    with pair.running():
        first = send(pair, tmp_path, first_data)

        # --- tail -f: it prints the newest record at once, then each one as it comes
        follower = Follower(lingang, "-n", "1")
        try:
            wait_until(lambda: len(follower.lines) >= 1, TIMEOUT, "audit tail -f to start")
            assert kinds(follower.lines, first) == ["transfer.delivered"]
            second = send(pair, tmp_path, second_data)
            wait_until(
                lambda: "transfer.delivered" in kinds(follower.lines, second),
                TIMEOUT,
                "audit tail -f to show the second delivery",
            )
        finally:
            follower.stop()
        followed = [entry["leaf"] for entry in follower.lines]
        assert followed == sorted(set(followed))  # in order, none twice

        # --- tail: what each side recorded of the transfers, and none of the data
        sent = ok(lingang, "audit", "tail", "-c", config(lingang), "-n", "50")
        received = ok(frankfurt, "audit", "tail", "-c", config(frankfurt), "-n", "50")
        for transfer_id, data in ((first, first_data), (second, second_data)):
            assert kinds(lines(sent), transfer_id) == ["transfer.delivered"]
            assert kinds(lines(received), transfer_id) == ["offer.accepted", "transfer.committed"]
            for text in (sent, received):
                no_payload(text, data)
        delivered = next(e for e in lines(sent) if e["record"].get("transfer_id") == first)
        assert delivered["record"]["plaintext_sha256"] == hashlib.sha256(first_data).hexdigest()
        assert delivered["record"]["gw"] == "lingang"
        commit = next(
            e
            for e in lines(received)
            if e["record"].get("transfer_id") == second
            and e["record"]["kind"] == "transfer.committed"
        )

        # --- verify, on both, while the daemons run (the keys read from each token)
        for gateway in (lingang, frankfurt):
            path = gateway.paths.state_dir / LEDGER
            wait_until(covered(path), TIMEOUT, f"a checkpoint covering {gateway.id}'s whole log")
            report = ok(gateway, "audit", "verify", "-c", config(gateway))
            assert report.startswith(f"audit log of {gateway.id} (ledger "), report
            assert ": verified\n" in report
            count = checkpoints(path)
            assert f"checkpoints: {count} ({count} signed, {count} signatures verified" in report

        # --- proof of frankfurt's commit record, checked in a fresh process
        proof_text = ok(frankfurt, "audit", "proof", str(commit["leaf"]), "-c", config(frankfurt))
        proof = json.loads(proof_text)
        assert (proof["gateway"], proof["leaf"]) == ("frankfurt", commit["leaf"])
        assert proof["record"] == commit["record"]
        assert proof["tree_size"] > commit["leaf"]
        assert proof["checkpoint"].startswith(f"frankfurt\n{proof['tree_size']}\n")
        proof_file, key_file = tmp_path / "proof.json", tmp_path / "frankfurt-signing.pem"
        proof_file.write_text(proof_text, encoding="utf-8")
        ok(frankfurt, "keys", "public", "-c", config(frankfurt), "-o", str(key_file))
        checked = subprocess.run(
            [sys.executable, "-c", FRESH_CHECK, str(proof_file), str(key_file)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout == (
            f"ok transfer.committed {second} leaf {commit['leaf']} of {proof['tree_size']}\n"
        )
        with_key = ok(frankfurt, "audit", "verify", "-c", config(frankfurt), "--key", str(key_file))
        assert ": verified\n" in with_key

        # --- proof of a leaf the log does not have yet: a usage error, one line
        too_far = frankfurt.cli("audit", "proof", "100000", "-c", config(frankfurt))
        assert (too_far.returncode, too_far.stdout) == (2, "")
        assert too_far.stderr.startswith("xbgw: leaf 100000 is not in the log: it has ")

        # --- export, for a SIEM
        exported = tmp_path / "lingang-audit.jsonl"
        said = ok(lingang, "audit", "export", "-c", config(lingang), "-o", str(exported))
        rows = lines(exported.read_text(encoding="utf-8"))
        assert said == f"wrote {len(rows)} records of lingang to {exported}\n"
        assert [row["leaf"] for row in rows] == list(range(len(rows)))
        mine = [row for row in rows if row.get("transfer_id") in (first, second)]
        assert [row["kind"] for row in mine] == ["transfer.delivered", "transfer.delivered"]
        for row in mine:
            assert len(row["leaf_hash"]) == 64
            assert row["time"].endswith("Z")
        no_payload(exported.read_text(encoding="utf-8"), first_data)
        later = ok(lingang, "audit", "export", "-c", config(lingang), "--since", "4000000000")
        assert later == ""
        since = ok(lingang, "audit", "export", "-c", config(lingang), "--since", str(rows[0]["at"]))
        assert len(lines(since)) == len(rows)

    # --- lingang stopped, one of its records changed on disk: verify names the leaf
    leaf = delivered["leaf"]
    path = lingang.paths.state_dir / LEDGER
    db = sqlite3.connect(path)
    try:
        with db:
            (record,) = db.execute(
                "SELECT record FROM audit_records WHERE idx = ?", (leaf,)
            ).fetchone()
            changed = bytes(record).replace(first.encode(), first[:-1].encode() + b"X")
            assert changed != bytes(record)
            db.execute("UPDATE audit_records SET record = ? WHERE idx = ?", (changed, leaf))
    finally:
        db.close()
    done = lingang.cli("audit", "verify", "-c", config(lingang))
    assert done.returncode == 1, done
    said_lines = done.stdout.splitlines()
    assert said_lines[0].endswith(f", the first at leaf {leaf}"), said_lines
    assert said_lines[1] == f"  leaf {leaf}: the record does not hash to the stored leaf hash"
    assert done.stderr.startswith("xbgw: the audit log of lingang does not verify: ")
    assert done.stderr.endswith(f"the first at leaf {leaf}\n")
    assert done.stderr.count("\n") == 1


def covered(path: Path) -> Callable[[], bool]:
    """Whether a signed checkpoint covers the whole log (the daemon signs within ~1 s)."""

    def check() -> bool:
        ledger = Ledger.read_only(path)
        try:
            latest = ledger.latest_checkpoint()
            return latest is not None and latest[0] >= ledger.audit_size()
        finally:
            ledger.close()

    return check


def checkpoints(path: Path) -> int:
    ledger = Ledger.read_only(path)
    try:
        return len(ledger.checkpoints())
    finally:
        ledger.close()
