"""Checking that a receipt's commit is in the receiver's audit log -- with nothing but the
receipt, the proof and the receiver's public signing keys.

The proof (``transfer.CommitProof``) is the receiver's ``transfer.committed`` record, its
leaf index, a checkpoint signed by the receiver (C2SP note) and the RFC 9162 inclusion proof
of the record's leaf under the checkpoint's root. Checked in this order, each step only on
what the previous one vouched for:

1. the checkpoint note verifies under one of the receiver's signing keys, origin = receiver;
2. the leaf is below the checkpoint's size, and ``SHA-256(0x00 || record)`` is included under
   its root at that index (the size and root come only from the signed checkpoint);
3. the record is canonical, of kind ``transfer.committed``, from the receiver's log, for this
   transfer, and names the receipt's digest and signing key.

The sender runs this when the proof arrives; ``xbgw receipt verify`` runs it again, offline,
on an exported file.

Step 1 is remembered for the last few notes: one signed checkpoint answers every finish that
waited for it, so under load a sender checks the same note for several receipts in a row. A
note text verifies the same way under the same keys every time, so it is checked once per
(receiver, note, keys); steps 2 and 3 run for every proof.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.audit.checkpoint import Checkpoint, EcdsaVerifier, NoteError, verify_note
from gateway.audit.merkle import ProofError, leaf_hash, verify_inclusion
from gateway.audit.records import AuditRecordError, decode
from gateway.signed import Signed
from gateway.transfer import CommitProof

#: Checkpoint notes verified lately, by (receiver, note text, the log keys' points).
VERIFIED_NOTES = 64
_verified: OrderedDict[tuple[str, str, tuple[bytes, ...]], Checkpoint] = OrderedDict()
_verified_lock = threading.Lock()


def _checkpoint(
    note: str, receiver: str, public_keys: Sequence[ec.EllipticCurvePublicKey]
) -> Checkpoint:
    """The checkpoint of ``note`` if one of ``public_keys`` (P-256 only) signed it as the log
    of ``receiver``; ``NoteError`` if not. Remembered when it verifies (see the module doc)."""
    keys = [key for key in public_keys if isinstance(key.curve, ec.SECP256R1)]
    points = tuple(key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint) for key in keys)
    cache_key = (receiver, note, points)
    with _verified_lock:
        known = _verified.get(cache_key)
    if known is not None:
        return known
    verifiers: dict[int, EcdsaVerifier] = {}
    for key in keys:  # no other curve signs a checkpoint
        verifier = EcdsaVerifier(receiver, key)
        verifiers[verifier.key_id] = verifier  # a key given twice is one verifier
    checkpoint = verify_note(note, verifiers.values(), origin=receiver)
    with _verified_lock:
        _verified[cache_key] = checkpoint
        while len(_verified) > VERIFIED_NOTES:
            _verified.popitem(last=False)
    return checkpoint


def check_commit_proof(
    proof: CommitProof,
    receipt: Signed,
    receiver: str,
    transfer_id: str,
    public_keys: Sequence[ec.EllipticCurvePublicKey],
) -> int:
    """Raise :class:`ProofError` unless ``proof`` shows ``receipt``'s commit in ``receiver``'s
    log (see the module doc); the checkpoint's tree size."""
    try:
        checkpoint = _checkpoint(proof.checkpoint, receiver, public_keys)
    except NoteError as exc:
        raise ProofError(f"the checkpoint of {receiver} does not verify: {exc}") from None
    if proof.leaf >= checkpoint.size:
        raise ProofError(
            f"leaf {proof.leaf} is not covered by the checkpoint of size {checkpoint.size}"
        )
    verify_inclusion(
        leaf_hash(proof.record),
        proof.leaf,
        checkpoint.size,
        list(proof.inclusion),
        checkpoint.root_hash,
    )
    try:
        record = decode(proof.record)
    except AuditRecordError as exc:
        raise ProofError(f"the commit record: {exc}") from None
    expected = {
        "kind": "transfer.committed",
        "gw": receiver,
        "transfer_id": transfer_id,
        "receipt_digest": receipt.digest.hex(),
        "receipt_key": receipt.kid,
    }
    wrong = [
        f"{k} is {record.get(k)!r}, not {v!r}" for k, v in expected.items() if record.get(k) != v
    ]
    if wrong:
        raise ProofError("the commit record does not match the receipt: " + "; ".join(wrong))
    return checkpoint.size
