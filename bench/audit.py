"""What the audit log costs a transfer, measured in process on the ledger it lives in.

Per transfer the receiver appends two records (``offer.accepted`` in the offer's own
transaction, ``transfer.committed`` in the commit's) and the sender one (``transfer.delivered``);
every batch of commits waits for one checkpoint (a durable root, one ECDSA signature, the
note). This times the same ledger calls with and without their records, and a checkpoint, on
a ledger already holding ``HISTORY`` records; the difference is what the audit log adds.
The runner turns it into a share of the measured small-transfer time and of the bulk time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.audit.checkpoint import Checkpoint, key_id, sign_note
from gateway.audit.records import AuditRecord
from gateway.ledger import Ledger
from gateway.signed import Signed

HISTORY = 10_000
BATCH = 8  # transfers one checkpoint serves at the small phase's concurrency


def _record(kind: str, n: int) -> bytes:
    digest = bytes(32).hex()
    members: dict[str, Any] = {"transfer_id": f"t-{n}", "partner": "lingang"}
    if kind == "offer.accepted":
        members |= {"passport_digest": digest, "rules": ["baseline-passport-src:allowed"]}
    else:
        members |= {
            "passport_digest": digest,
            "manifest_digest": digest,
            "plaintext_sha256": digest,
            "plaintext_size": 4096,
            "receipt_digest": digest,
            "receipt_key": "frankfurt/signing/1",
        }
    return AuditRecord(kind, 1_780_000_000, members).encode("frankfurt")


def _transfers(ledger: Ledger, start: int, count: int, audited: bool) -> float:
    """Seconds for ``count`` transfers' ledger work on both sides (one ledger stands in)."""
    receipt = Signed(b"body", b"sig", "frankfurt/signing/1")
    begun = time.perf_counter()
    for n in range(start, start + count):
        ledger.create_inbound(
            transfer_id=f"t-{n}", sender="lingang", passport="p", passport_digest=bytes(32),
            offered_header_digest=bytes(32), stored_header=b"h", byte_limit=1,
            classification="general", source_jurisdiction="CN-SH", dataset_sha256=None,
            audit=_record("offer.accepted", n) if audited else None,
        )  # fmt: skip
        ledger.commit_inbound(
            f"t-{n}", bytes(32), receipt, 1, _record("transfer.committed", n) if audited else None
        )
        ledger.create_outbound(
            transfer_id=f"t-{n}", partner="frankfurt", passport_digest=bytes(32),
            sent_header=b"s", stored_header=b"h",
        )  # fmt: skip
        ledger.deliver_outbound(
            f"t-{n}", 1, bytes(32), receipt, _record("transfer.delivered", n) if audited else None
        )
    return time.perf_counter() - begun


def bench_audit(transfers: int) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())

    def sign(digest: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    with tempfile.TemporaryDirectory(prefix="xbgw-bench-audit-") as scratch:
        ledger = Ledger(Path(scratch) / "ledger.sqlite3")
        try:
            for n in range(HISTORY // 3):
                ledger.append_audit(_record("transfer.committed", -1 - n))
            _transfers(ledger, -2 * transfers, transfers, audited=True)  # warm-up
            plain = _transfers(ledger, 0, transfers, audited=False)
            audited = _transfers(ledger, transfers, transfers, audited=True)
            checkpoints = max(1, transfers // BATCH)
            begun = time.perf_counter()
            for _ in range(checkpoints):
                ledger.append_audit(_record("transfer.committed", -HISTORY))
                size, root = ledger.begin_checkpoint()
                body = Checkpoint("frankfurt", size, root).body()
                note = sign_note(body, "frankfurt", key_id("frankfurt", key.public_key()), sign)
                ledger.finish_checkpoint(size, note, 1)
            checkpoint_s = (time.perf_counter() - begun) / checkpoints
        finally:
            ledger.close()
    records_ms = (audited - plain) / transfers * 1000
    per_transfer_ms = records_ms + checkpoint_s * 1000 / BATCH
    return {
        "transfers": transfers,
        "records_ms_per_transfer": records_ms,
        "checkpoint_ms": checkpoint_s * 1000,
        "per_transfer_ms": per_transfer_ms,
        "source": (
            "measured in process: the ledger calls of a transfer (both sides) with and without "
            f"their audit records, on a ledger of {HISTORY} records, plus one checkpoint per "
            f"{BATCH} transfers (a software P-256 key standing in for the HSM's signature)"
        ),
    }
