"""``xbgw receipt export|verify``: a delivered transfer's evidence as a file anyone can check.

``export`` reads the sender's ledger (read-only, while the daemon runs or not) and writes the
``xbgw-receipt/1`` file (:mod:`gateway.audit.evidence`). ``verify`` needs nothing but that
file and public keys: the receiver's signing key (``--key``, one per version that may have
signed) and optionally the sender's (``--sender-key``) -- it checks the receipt's signature,
that the receipt and the manifest agree, and the commit proof: the checkpoint's signature,
the inclusion of the receiver's commit record, and that the record names this receipt.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.audit.evidence import MAX_EVIDENCE_BYTES, Evidence
from gateway.audit.merkle import ProofError
from gateway.audit.proof import check_commit_proof
from gateway.cli.common import EXIT_FAILURE
from gateway.config import load_config
from gateway.documents import read_manifest, read_own_receipt
from gateway.errors import SignatureError, UnknownTransferError, UsageError
from gateway.ledger import Ledger, open_ledger
from gateway.signed import verify
from gateway.transfer import TransferState


def cmd_receipt_export(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ledger = (
        open_ledger(config)
        if config.state.database is not None
        else Ledger.read_only(config.state_dir / "ledger.sqlite3")
    )
    try:
        row = ledger.outbound(args.transfer_id)
    finally:
        ledger.close()
    if row is None or row.state is not TransferState.DELIVERED:
        # Not a mistake on the command line (exit 2) but a lookup that found nothing (exit 1).
        raise UnknownTransferError(
            f"no delivered transfer {args.transfer_id!r} in this gateway's ledger"
        )
    if row.evidence is None:
        raise UsageError(
            f"transfer {args.transfer_id} was delivered before receipts carried evidence"
        )
    out = Path(args.output)
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text(row.evidence + "\n", encoding="utf-8")
    os.replace(temporary, out)
    proof = Evidence.from_json(row.evidence).proof
    where = "no commit proof" if proof is None else f"commit proof at leaf {proof.leaf}"
    print(f"wrote {out}: receipt of {args.transfer_id} from {row.partner}, {where}")
    return 0


def _keys(paths: list[str], what: str) -> list[ec.EllipticCurvePublicKey]:
    keys = []
    for path in paths:
        try:
            key = load_pem_public_key(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{what} {path}: not a readable PEM public key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise UsageError(f"{what} {path}: not an EC public key")
        keys.append(key)
    return keys


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        if path.stat().st_size > MAX_EVIDENCE_BYTES:
            raise UsageError(f"{path}: larger than {MAX_EVIDENCE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read it ({exc})") from None
    evidence = Evidence.from_json(text, str(path))
    receiver_keys = _keys(args.key, "--key")
    problems: list[str] = []
    kid = None
    for key in receiver_keys:
        try:
            kid = verify(evidence.receipt, key, evidence.receiver, "receipt")
            break
        except SignatureError as exc:
            problems.append(str(exc))
    if kid is None:
        print(f"FAILED  receipt signature: {'; '.join(problems) or 'no key given'}")
        return EXIT_FAILURE
    print(f"ok      receipt signed by {kid}")
    receipt = read_own_receipt(evidence.receipt, evidence.receiver)
    manifest = read_manifest(evidence.manifest)
    failed = False
    if not receipt.confirms(manifest, evidence.manifest.digest) or (
        receipt.transfer_id != evidence.transfer_id
    ):
        print("FAILED  the receipt is not for this manifest and transfer")
        failed = True
    else:
        print(
            f"ok      receipt confirms the manifest: {receipt.plaintext_size} bytes, "
            f"sha256 {receipt.plaintext_sha256.hex()}"
        )
    if args.sender_key:
        try:
            for key in _keys(args.sender_key, "--sender-key"):
                verify(evidence.manifest, key, evidence.sender, "manifest")
                print(f"ok      manifest signed by {evidence.manifest.kid}")
                break
        except SignatureError as exc:
            print(f"FAILED  manifest signature: {exc}")
            failed = True
    if evidence.proof is None:
        print("missing commit proof (no checkpoint covered the commit in time)")
        return EXIT_FAILURE if args.require_proof or failed else 0
    try:
        size = check_commit_proof(
            evidence.proof, evidence.receipt, evidence.receiver, evidence.transfer_id, receiver_keys
        )
    except ProofError as exc:
        print(f"FAILED  commit proof: {exc}")
        return EXIT_FAILURE
    print(
        f"ok      commit record at leaf {evidence.proof.leaf} is in {evidence.receiver}'s audit "
        f"log (signed checkpoint of {size} leaves)"
    )
    return EXIT_FAILURE if failed else 0
