"""``xbgw receipt export|verify`` through the real program: a receipt checked with nothing but
files.

One real pair (module scope) delivers one transfer lingang -> frankfurt; lingang exports its
evidence (``xbgw-receipt/1``) from its ledger. Every verify then runs in a fresh process whose
environment is ``PATH`` alone, in an empty directory holding only the exported file and the
public keys -- no config, no ledger, no token, no daemon -- and must pass (four ``ok`` lines)
or fail with exit 1 naming the check that failed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.pair import Gateway, Pair, provision_pair
from tests.system.keys_helpers import send

TIMEOUT = 60.0
SIZE = 150_000


@dataclass(frozen=True)
class Delivered:
    pair: Pair
    transfer_id: str
    sha256: str
    exported: Path  # the file ``xbgw receipt export`` wrote
    export_output: str


def export(gateway: Gateway, transfer_id: str, target: Path) -> subprocess.CompletedProcess[str]:
    """``xbgw receipt export ID -o TARGET -c CONFIG`` (offline: the ledger read-only)."""
    return gateway.cli(
        "receipt", "export", transfer_id, "-o", str(target), "-c", str(gateway.paths.config)
    )


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivered]:
    root = tmp_path_factory.mktemp("receipts")
    pair = provision_pair(root / "pair", segment_size=1 << 16)
    with pair.running():
        transfer_id, sha256 = send(pair, root, SIZE)
        exported = root / "exported" / "receipt.json"
        exported.parent.mkdir()
        done = export(pair.lingang, transfer_id, exported)
        assert done.returncode == 0, done.stderr
        yield Delivered(pair, transfer_id, sha256, exported, done.stdout)


def evidence(delivered: Delivered) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(delivered.exported.read_text(encoding="utf-8"))
    return loaded


def write_like_export(path: Path, doc: dict[str, Any]) -> None:
    """Write a (changed) evidence document as export does: the same layout, byte for byte."""
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def verify_alone(
    delivered: Delivered,
    workdir: Path,
    *,
    doc: dict[str, Any] | None = None,
    key: str = "frankfurt",
    sender_key: str | None = "lingang",
    require_proof: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``xbgw receipt verify`` in a fresh process: ``PATH`` only, cwd an empty directory
    holding only the evidence (as exported, or ``doc``) and the public signing keys."""
    workdir.mkdir()
    if doc is None:
        shutil.copyfile(delivered.exported, workdir / "receipt.json")
    else:
        write_like_export(workdir / "receipt.json", doc)
    for gateway in delivered.pair.gateways:
        shutil.copyfile(gateway.paths.signing_public_key, workdir / f"{gateway.id}.pem")
    assert sorted(p.name for p in workdir.iterdir()) == [
        "frankfurt.pem",
        "lingang.pem",
        "receipt.json",
    ]
    argv = [sys.executable, "-m", "gateway.cli", "receipt", "verify", "receipt.json"]
    argv += ["--key", f"{key}.pem"]
    if sender_key is not None:
        argv += ["--sender-key", f"{sender_key}.pem"]
    if require_proof:
        argv.append("--require-proof")
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=workdir,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=False,
    )


def ok_lines(delivered: Delivered) -> list[str]:
    """The four lines of a receipt that checks, from what the file itself says."""
    doc = evidence(delivered)
    proof = doc["proof"]
    size = int(proof["checkpoint"].split("\n")[1])
    return [
        "ok      receipt signed by frankfurt/signing/1",
        f"ok      receipt confirms the manifest: {SIZE} bytes, sha256 {delivered.sha256}",
        "ok      manifest signed by lingang/signing/1",
        f"ok      commit record at leaf {proof['leaf']} is in frankfurt's audit log "
        f"(signed checkpoint of {size} leaves)",
    ]


def flip_bit(data: bytes, index: int = 0) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


# -- export ------------------------------------------------------------------------------------


def test_export_writes_the_evidence_with_a_commit_proof(delivered: Delivered) -> None:
    doc = evidence(delivered)
    proof = doc["proof"]
    assert proof is not None
    assert delivered.export_output == (
        f"wrote {delivered.exported}: receipt of {delivered.transfer_id} from frankfurt, "
        f"commit proof at leaf {proof['leaf']}\n"
    )
    assert (doc["format"], doc["transfer_id"], doc["sender"], doc["receiver"]) == (
        "xbgw-receipt/1",
        delivered.transfer_id,
        "lingang",
        "frankfurt",
    )
    assert doc["receipt"]["kid"] == "frankfurt/signing/1"
    assert doc["manifest"]["kid"] == "lingang/signing/1"
    record = json.loads(base64.b64decode(proof["record"]))
    assert (record["kind"], record["gw"], record["transfer_id"]) == (
        "transfer.committed",
        "frankfurt",
        delivered.transfer_id,
    )
    assert record["plaintext_sha256"] == delivered.sha256
    assert proof["checkpoint"].startswith("frankfurt\n")
    assert proof["inclusion"], "a commit after the offer's record has a sibling at least"
    # Nothing but the export in its directory (the temporary file was renamed into place).
    assert [p.name for p in delivered.exported.parent.iterdir()] == ["receipt.json"]


def test_export_of_an_unknown_transfer_is_one_line_exit_1(
    delivered: Delivered, tmp_path: Path
) -> None:
    target = tmp_path / "nothing.json"
    done = export(delivered.pair.lingang, "no-such-transfer", target)
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert (
        done.stderr == "xbgw: no delivered transfer 'no-such-transfer' in this gateway's ledger\n"
    )
    assert not target.exists()
    # Frankfurt received it; it did not send it: nothing to export there either.
    done = export(delivered.pair.frankfurt, delivered.transfer_id, target)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"xbgw: no delivered transfer {delivered.transfer_id!r} in this gateway's ledger\n"
    )


# -- verify, alone -----------------------------------------------------------------------------


def test_verify_alone_with_the_public_keys_passes(delivered: Delivered, tmp_path: Path) -> None:
    done = verify_alone(delivered, tmp_path / "alone")
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert done.stdout.splitlines() == ok_lines(delivered)


def test_verify_without_the_sender_key_passes_on_three_lines(
    delivered: Delivered, tmp_path: Path
) -> None:
    done = verify_alone(delivered, tmp_path / "alone", sender_key=None)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = ok_lines(delivered)
    assert done.stdout.splitlines() == [expected[0], expected[1], expected[3]]


def test_verify_with_the_senders_key_as_the_receivers_fails(
    delivered: Delivered, tmp_path: Path
) -> None:
    done = verify_alone(delivered, tmp_path / "wrong-key", key="lingang")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "FAILED  receipt signature: receipt signature does not verify under the pinned key "
        "of frankfurt"
    ]


def test_verify_with_the_receivers_key_as_the_senders_fails(
    delivered: Delivered, tmp_path: Path
) -> None:
    done = verify_alone(delivered, tmp_path / "wrong-sender-key", sender_key="frankfurt")
    assert done.returncode == 1, done.stdout + done.stderr
    expected = ok_lines(delivered)
    assert done.stdout.splitlines() == [
        expected[0],
        expected[1],
        "FAILED  manifest signature: manifest signature does not verify under the pinned key "
        "of lingang",
        expected[3],
    ]


def test_a_flipped_byte_in_the_checkpoint_fails(delivered: Delivered, tmp_path: Path) -> None:
    doc = evidence(delivered)
    origin, size, root, *rest = doc["proof"]["checkpoint"].split("\n")
    flipped = base64.b64encode(flip_bit(base64.b64decode(root), 5)).decode()
    doc["proof"]["checkpoint"] = "\n".join([origin, size, flipped, *rest])
    done = verify_alone(delivered, tmp_path / "checkpoint", doc=doc)
    assert done.returncode == 1, done.stdout + done.stderr
    *passed, failed = done.stdout.splitlines()
    assert passed == ok_lines(delivered)[:3]
    assert re.fullmatch(
        r"FAILED  commit proof: the checkpoint of frankfurt does not verify: "
        r"signature by key frankfurt\+[0-9a-f]{8} does not verify",
        failed,
    ), failed


def test_a_flipped_byte_in_the_checkpoints_size_fails(delivered: Delivered, tmp_path: Path) -> None:
    doc = evidence(delivered)
    origin, size, *rest = doc["proof"]["checkpoint"].split("\n")
    doc["proof"]["checkpoint"] = "\n".join([origin, str(int(size) ^ 1), *rest])
    done = verify_alone(delivered, tmp_path / "size", doc=doc)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.fullmatch(
        r"FAILED  commit proof: the checkpoint of frankfurt does not verify: "
        r"signature by key frankfurt\+[0-9a-f]{8} does not verify",
        done.stdout.splitlines()[-1],
    ), done.stdout


@pytest.mark.parametrize("at", [0, -3])
def test_a_flipped_byte_in_the_record_fails(delivered: Delivered, tmp_path: Path, at: int) -> None:
    doc = evidence(delivered)
    proof = doc["proof"]
    record = base64.b64decode(proof["record"])
    proof["record"] = base64.b64encode(flip_bit(record, at % len(record))).decode()
    done = verify_alone(delivered, tmp_path / "record", doc=doc)
    assert done.returncode == 1, done.stdout + done.stderr
    *passed, failed = done.stdout.splitlines()
    assert passed == ok_lines(delivered)[:3]
    size = int(proof["checkpoint"].split("\n")[1])
    assert re.fullmatch(
        rf"FAILED  commit proof: root mismatch: the inclusion proof for leaf {proof['leaf']} "
        rf"of {size} leads to [0-9a-f]{{16}}\.\.\., not [0-9a-f]{{16}}\.\.\.",
        failed,
    ), failed


def test_a_flipped_byte_in_each_inclusion_node_fails(delivered: Delivered, tmp_path: Path) -> None:
    nodes = evidence(delivered)["proof"]["inclusion"]
    for n in range(len(nodes)):
        doc = evidence(delivered)
        proof = doc["proof"]
        proof["inclusion"][n] = flip_bit(bytes.fromhex(nodes[n]), 31).hex()
        done = verify_alone(delivered, tmp_path / f"node-{n}", doc=doc)
        assert done.returncode == 1, done.stdout + done.stderr
        size = int(proof["checkpoint"].split("\n")[1])
        assert re.fullmatch(
            rf"FAILED  commit proof: root mismatch: the inclusion proof for leaf "
            rf"{proof['leaf']} of {size} leads to [0-9a-f]{{16}}\.\.\., not [0-9a-f]{{16}}\.\.\.",
            done.stdout.splitlines()[-1],
        ), done.stdout


def test_a_missing_inclusion_node_fails(delivered: Delivered, tmp_path: Path) -> None:
    doc = evidence(delivered)
    proof = doc["proof"]
    count = len(proof["inclusion"])
    proof["inclusion"] = proof["inclusion"][:-1]
    done = verify_alone(delivered, tmp_path / "short", doc=doc)
    assert done.returncode == 1, done.stdout + done.stderr
    size = int(proof["checkpoint"].split("\n")[1])
    assert done.stdout.splitlines()[-1] == (
        f"FAILED  commit proof: inclusion proof for leaf {proof['leaf']} of {size} has "
        f"{count - 1} nodes, expected {count}"
    )


def test_a_file_without_its_proof_fails_only_when_a_proof_is_required(
    delivered: Delivered, tmp_path: Path
) -> None:
    doc = evidence(delivered)
    doc["proof"] = None
    missing = "missing commit proof (no checkpoint covered the commit in time)"
    required = verify_alone(delivered, tmp_path / "required", doc=doc)
    assert required.returncode == 1, required.stdout + required.stderr
    assert required.stdout.splitlines() == [*ok_lines(delivered)[:3], missing]
    optional = verify_alone(delivered, tmp_path / "optional", doc=doc, require_proof=False)
    assert optional.returncode == 0, optional.stdout + optional.stderr
    assert optional.stdout.splitlines() == [*ok_lines(delivered)[:3], missing]
