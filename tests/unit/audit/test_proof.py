"""A receipt's commit proof (``check_commit_proof``) and the ``xbgw-receipt/1`` file format.

The proof is built here from first principles -- records, RFC 9162 leaf hashes and inclusion
path (:mod:`gateway.audit.merkle`), a C2SP checkpoint signed with a P-256 key -- exactly as a
receiver would hand it out. The good one passes; every corruption is refused with
:class:`ProofError` and a message that says which check failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.audit import merkle
from gateway.audit.checkpoint import Checkpoint, digest_signer, key_id, sign_note
from gateway.audit.evidence import FORMAT, MAX_EVIDENCE_BYTES, Evidence
from gateway.audit.merkle import ProofError
from gateway.audit.proof import check_commit_proof
from gateway.audit.records import AuditRecord
from gateway.documents import Manifest, Receipt, sign_manifest, sign_receipt
from gateway.errors import UsageError
from gateway.keys import KeyRef, Purpose
from gateway.signed import Signed
from gateway.transfer import CommitProof
from tests.fakes import SoftwareHsm

RECEIVER, SENDER = "frankfurt", "lingang"
TRANSFER = "t-0001"
AT = 1_700_000_000
FRANKFURT, LINGANG = SoftwareHsm(), SoftwareHsm()
FRANKFURT.generate(Purpose.SIGNING)  # version 2: a later key of the same gateway
KEY_1 = FRANKFURT.public_key(Purpose.SIGNING, 1)
KEY_2 = FRANKFURT.public_key(Purpose.SIGNING, 2)
OTHER_KEY = LINGANG.public_key(Purpose.SIGNING, 1)

MANIFEST = sign_manifest(
    LINGANG,
    KeyRef(SENDER, Purpose.SIGNING, 1),
    Manifest(
        transfer_id=TRANSFER,
        sender=SENDER,
        receiver=RECEIVER,
        header_core_digest=hashlib.sha256(b"header").digest(),
        passport_digest=hashlib.sha256(b"passport").digest(),
        plaintext_sha256=hashlib.sha256(b"data").digest(),
        plaintext_size=4,
        segment_count=1,
    ),
)


def receipt(transfer_id: str = TRANSFER, version: int = 1) -> Signed:
    return sign_receipt(
        FRANKFURT,
        KeyRef(RECEIVER, Purpose.SIGNING, version),
        Receipt(
            transfer_id=transfer_id,
            sender=SENDER,
            receiver=RECEIVER,
            manifest_digest=MANIFEST.digest,
            plaintext_sha256=hashlib.sha256(b"data").digest(),
            plaintext_size=4,
            passport_digest=hashlib.sha256(b"passport").digest(),
            committed_at=AT,
        ),
    )


RECEIPT = receipt()


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def commit_record(**changes: Any) -> bytes:
    """The receiver's transfer.committed record for RECEIPT, with ``changes`` made to it."""
    record = AuditRecord(
        "transfer.committed",
        AT,
        {
            "transfer_id": TRANSFER,
            "partner": SENDER,
            "passport_digest": hashlib.sha256(b"passport").hexdigest(),
            "manifest_digest": MANIFEST.digest.hex(),
            "plaintext_sha256": hashlib.sha256(b"data").hexdigest(),
            "plaintext_size": 4,
            "receipt_digest": RECEIPT.digest.hex(),
            "receipt_key": RECEIPT.kid,
        },
    ).encode(RECEIVER)
    return canonical({**json.loads(record), **changes})


def other_record(n: int) -> bytes:
    return AuditRecord("config.reloaded", AT + n, {"config_sha256": f"{n:064x}"}).encode(RECEIVER)


def offer_record(transfer_id: str) -> bytes:
    return AuditRecord(
        "offer.accepted",
        AT,
        {"transfer_id": transfer_id, "partner": SENDER, "passport_digest": "00" * 32, "rules": []},
    ).encode(RECEIVER)


COMMIT_LEAF = 4
SIZE = 7


def log(commit: bytes | None = None) -> list[bytes]:
    """A log of SIZE records with the commit at COMMIT_LEAF (not a perfect tree: paths of
    different lengths)."""
    records = [offer_record(TRANSFER), other_record(1), offer_record("t-0002"), other_record(3)]
    records.append(commit_record() if commit is None else commit)
    records += [other_record(5), other_record(6)]
    assert len(records) == SIZE
    return records


def signed_note(
    records: list[bytes],
    size: int | None = None,
    *,
    origin: str = RECEIVER,
    hsm: SoftwareHsm = FRANKFURT,
    version: int = 1,
) -> str:
    size = len(records) if size is None else size
    root = merkle.root([merkle.leaf_hash(r) for r in records[:size]])
    public = hsm.public_key(Purpose.SIGNING, version)
    signer = digest_signer(hsm, KeyRef(origin, Purpose.SIGNING, version))
    return sign_note(Checkpoint(origin, size, root).body(), origin, key_id(origin, public), signer)


def proof_for(
    records: list[bytes], leaf: int = COMMIT_LEAF, size: int | None = None, **signing: Any
) -> CommitProof:
    size = len(records) if size is None else size
    hashes = [merkle.leaf_hash(r) for r in records]
    path = merkle.inclusion_proof(hashes[:size], leaf, size) if leaf < size else []
    return CommitProof(records[leaf], leaf, signed_note(records, size, **signing), tuple(path))


GOOD = proof_for(log())
ROOT = merkle.root([merkle.leaf_hash(r) for r in log()])


def check(proof: CommitProof, keys: list[ec.EllipticCurvePublicKey] | None = None) -> int:
    return check_commit_proof(proof, RECEIPT, RECEIVER, TRANSFER, [KEY_1] if keys is None else keys)


def refused(
    proof: CommitProof, message: str, keys: list[ec.EllipticCurvePublicKey] | None = None
) -> None:
    """Assert ``proof`` is refused with exactly ``message`` (a regex if it starts with ^)."""
    with pytest.raises(ProofError) as caught:
        check(proof, keys)
    if message.startswith("^"):
        assert re.fullmatch(message[1:], str(caught.value)), str(caught.value)
    else:
        assert str(caught.value) == message


def mismatch(leaf: int, size: int = SIZE) -> str:
    """The message of a path that leads to another root than the checkpoint's."""
    return (
        f"^root mismatch: the inclusion proof for leaf {leaf} of {size} leads to "
        f"[0-9a-f]{{16}}\\.\\.\\., not {ROOT.hex()[:16]}\\.\\.\\."
    )


def checkpoint_refused(reason: str) -> str:
    return f"the checkpoint of {RECEIVER} does not verify: {reason}"


def signature_fails(version: int = 1) -> str:
    kid = key_id(RECEIVER, FRANKFURT.public_key(Purpose.SIGNING, version))
    return checkpoint_refused(f"signature by key {RECEIVER}+{kid:08x} does not verify")


# -- the good proof ----------------------------------------------------------------------------


def test_a_good_proof_passes_and_gives_the_checkpoint_size() -> None:
    assert len(GOOD.inclusion) == 3
    assert check(GOOD) == SIZE


def test_a_proof_under_a_later_checkpoint_passes() -> None:
    records = [*log(), other_record(7), other_record(8)]
    assert check(proof_for(records)) == 9


def test_the_keys_may_hold_every_signing_key_version_in_any_order() -> None:
    assert check(GOOD, [OTHER_KEY, KEY_2, KEY_1]) == SIZE
    by_version_2 = proof_for(log(), version=2)
    assert check(by_version_2, [KEY_1, KEY_2]) == SIZE
    refused(
        by_version_2,
        checkpoint_refused(f"checkpoint of {RECEIVER!r} has no signature by a known log key"),
    )


def test_a_key_given_twice_or_a_key_of_another_curve_is_no_reason_to_refuse() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    assert check(GOOD, [KEY_1, KEY_1]) == SIZE
    assert check(GOOD, [p384, KEY_1]) == SIZE
    refused(
        GOOD,
        checkpoint_refused(f"checkpoint of {RECEIVER!r} has no signature by a known log key"),
        [p384],
    )


def test_the_first_leaf_of_a_one_leaf_log() -> None:
    records = [commit_record()]
    proof = proof_for(records, leaf=0)
    assert proof.inclusion == ()
    assert check(proof) == 1


# -- the leaf and the path ---------------------------------------------------------------------


@pytest.mark.parametrize("leaf", [i for i in range(SIZE) if i != COMMIT_LEAF])
def test_a_wrong_leaf_index_is_refused(leaf: int) -> None:
    wanted = len(merkle.inclusion_proof([merkle.leaf_hash(r) for r in log()], leaf, SIZE))
    if wanted != len(GOOD.inclusion):
        refused(
            replace(GOOD, leaf=leaf),
            f"inclusion proof for leaf {leaf} of {SIZE} has {len(GOOD.inclusion)} nodes, "
            f"expected {wanted}",
        )
    else:
        refused(replace(GOOD, leaf=leaf), mismatch(leaf))


@pytest.mark.parametrize("leaf", [SIZE, SIZE + 1, 2**64])
def test_a_leaf_beyond_the_checkpoint_is_refused(leaf: int) -> None:
    refused(
        replace(GOOD, leaf=leaf),
        f"leaf {leaf} is not covered by the checkpoint of size {SIZE}",
    )


def test_a_checkpoint_from_before_the_commit_is_refused() -> None:
    early = replace(GOOD, checkpoint=signed_note(log(), COMMIT_LEAF))
    refused(early, f"leaf {COMMIT_LEAF} is not covered by the checkpoint of size {COMMIT_LEAF}")


@pytest.mark.parametrize("node", range(3))
@pytest.mark.parametrize("bit", [0, 7, 128, 255])
def test_a_flipped_bit_in_any_inclusion_node_is_refused(node: int, bit: int) -> None:
    path = [bytearray(h) for h in GOOD.inclusion]
    path[node][bit // 8] ^= 1 << (bit % 8)
    refused(replace(GOOD, inclusion=tuple(bytes(h) for h in path)), mismatch(COMMIT_LEAF))


@pytest.mark.parametrize("where", ["first", "last"])
def test_an_extra_node_is_refused(where: str) -> None:
    extra = hashlib.sha256(b"extra").digest()
    path = (extra, *GOOD.inclusion) if where == "first" else (*GOOD.inclusion, extra)
    refused(
        replace(GOOD, inclusion=path),
        f"inclusion proof for leaf {COMMIT_LEAF} of {SIZE} has 4 nodes, expected 3",
    )


@pytest.mark.parametrize("node", range(3))
def test_a_missing_node_is_refused(node: int) -> None:
    path = GOOD.inclusion[:node] + GOOD.inclusion[node + 1 :]
    refused(
        replace(GOOD, inclusion=path),
        f"inclusion proof for leaf {COMMIT_LEAF} of {SIZE} has 2 nodes, expected 3",
    )


def test_no_nodes_at_all_is_refused() -> None:
    refused(
        replace(GOOD, inclusion=()),
        f"inclusion proof for leaf {COMMIT_LEAF} of {SIZE} has 0 nodes, expected 3",
    )


@pytest.mark.parametrize(("a", "b"), [(0, 1), (1, 2), (0, 2)])
def test_swapped_nodes_are_refused(a: int, b: int) -> None:
    path = list(GOOD.inclusion)
    path[a], path[b] = path[b], path[a]
    refused(replace(GOOD, inclusion=tuple(path)), mismatch(COMMIT_LEAF))


def test_a_truncated_node_is_refused() -> None:
    path = (GOOD.inclusion[0][:31], *GOOD.inclusion[1:])
    refused(replace(GOOD, inclusion=path), "inclusion proof node 0 is 31 bytes, expected 32")


# -- the checkpoint ----------------------------------------------------------------------------


def test_a_checkpoint_signed_by_another_key_is_refused() -> None:
    # Same name, same root: only the key differs (its key ID is not one we know).
    forged = replace(GOOD, checkpoint=signed_note(log(), hsm=LINGANG))
    refused(
        forged,
        checkpoint_refused(f"checkpoint of {RECEIVER!r} has no signature by a known log key"),
    )


def test_a_checkpoint_whose_signature_bytes_changed_is_refused() -> None:
    text, line = GOOD.checkpoint.rstrip("\n").rsplit("\n", 1)
    prefix, blob = line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 0x01  # inside the DER signature, after the 4-byte key ID
    note = f"{text}\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"
    refused(replace(GOOD, checkpoint=note), signature_fails())


def test_a_checkpoint_of_another_origin_is_refused() -> None:
    # Signed by the receiver's own key, but as the log of another gateway.
    other = replace(GOOD, checkpoint=signed_note(log(), origin=SENDER))
    refused(other, checkpoint_refused(f"checkpoint is from {SENDER!r}, expected {RECEIVER!r}"))


def test_an_altered_size_in_the_note_no_longer_verifies() -> None:
    assert f"\n{SIZE}\n" in GOOD.checkpoint
    grown = GOOD.checkpoint.replace(f"\n{SIZE}\n", f"\n{SIZE + 1}\n", 1)
    refused(replace(GOOD, checkpoint=grown), signature_fails())


def test_an_altered_root_in_the_note_no_longer_verifies() -> None:
    # The root of a log whose commit record names another receipt: the path would fit it.
    forged_log = log(commit_record(receipt_digest="ab" * 32))
    forged_root = merkle.root([merkle.leaf_hash(r) for r in forged_log])
    old, new = (base64.b64encode(r).decode() for r in (ROOT, forged_root))
    assert old in GOOD.checkpoint
    forged = CommitProof(
        forged_log[COMMIT_LEAF],
        COMMIT_LEAF,
        GOOD.checkpoint.replace(old, new),
        tuple(merkle.inclusion_proof([merkle.leaf_hash(r) for r in forged_log], COMMIT_LEAF, SIZE)),
    )
    refused(forged, signature_fails())


def test_a_checkpoint_that_is_not_a_note_is_refused() -> None:
    refused(
        replace(GOOD, checkpoint="frankfurt\n7\n"), "^" + re.escape(checkpoint_refused("")) + ".+"
    )


def test_no_keys_at_all_is_refused() -> None:
    refused(
        GOOD,
        checkpoint_refused(f"checkpoint of {RECEIVER!r} has no signature by a known log key"),
        [],
    )


# -- the record --------------------------------------------------------------------------------


def with_record(record: bytes) -> CommitProof:
    """A correct proof (signed checkpoint, right path) for a log holding ``record`` as the
    commit leaf: only the record's content can be wrong."""
    return proof_for(log(record))


def test_a_record_not_in_canonical_form_is_refused() -> None:
    spaced = json.dumps(json.loads(commit_record()), sort_keys=True).encode()
    refused(with_record(spaced), "the commit record: the audit record is not in canonical form")
    reverse = dict(reversed(json.loads(commit_record()).items()))
    unsorted = json.dumps(reverse, separators=(",", ":")).encode()
    assert unsorted != commit_record()
    refused(with_record(unsorted), "the commit record: the audit record is not in canonical form")


def test_a_record_that_is_not_a_json_object_is_refused() -> None:
    refused(with_record(b"[1,2]"), "the commit record: an audit record is a JSON object")
    refused(
        with_record(b"\xff"),
        "^the commit record: not a JSON audit record: .+",
    )


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("kind", "transfer.delivered"),
        ("gw", SENDER),
        ("transfer_id", "t-0002"),
        ("receipt_digest", receipt("t-0002").digest.hex()),
        ("receipt_key", f"{RECEIVER}/signing/2"),
    ],
)
def test_a_record_that_does_not_name_this_commit_is_refused(member: str, value: str) -> None:
    expected = {
        "kind": "transfer.committed",
        "gw": RECEIVER,
        "transfer_id": TRANSFER,
        "receipt_digest": RECEIPT.digest.hex(),
        "receipt_key": RECEIPT.kid,
    }[member]
    refused(
        with_record(commit_record(**{member: value})),
        f"the commit record does not match the receipt: {member} is {value!r}, not {expected!r}",
    )


def test_a_record_missing_a_member_is_refused() -> None:
    record = json.loads(commit_record())
    del record["receipt_key"]
    refused(
        with_record(canonical(record)),
        f"the commit record does not match the receipt: receipt_key is None, not {RECEIPT.kid!r}",
    )


def test_every_difference_is_named() -> None:
    record = commit_record(kind="offer.accepted", gw=SENDER, transfer_id="t-9")
    refused(
        with_record(record),
        "the commit record does not match the receipt: "
        "kind is 'offer.accepted', not 'transfer.committed'; "
        f"gw is {SENDER!r}, not {RECEIVER!r}; transfer_id is 't-9', not {TRANSFER!r}",
    )


def test_the_proof_of_another_receipt_is_refused() -> None:
    # A sound proof -- of another transfer's commit -- offered for this receipt.
    other = receipt("t-0002")
    with pytest.raises(ProofError) as caught:
        check_commit_proof(GOOD, other, RECEIVER, "t-0002", [KEY_1])
    assert str(caught.value) == (
        "the commit record does not match the receipt: "
        f"transfer_id is {TRANSFER!r}, not 't-0002'; "
        f"receipt_digest is {RECEIPT.digest.hex()!r}, not {other.digest.hex()!r}"
    )
    # And a receipt of this transfer signed with another key version.
    by_2 = receipt(version=2)
    with pytest.raises(
        ProofError, match="receipt_key is 'frankfurt/signing/1', not 'frankfurt/signing/2'"
    ):
        check_commit_proof(GOOD, by_2, RECEIVER, TRANSFER, [KEY_1])


def test_a_proof_of_another_receiver_is_refused() -> None:
    # Everything names frankfurt; the sender checks it as lingang's proof.
    with pytest.raises(ProofError) as caught:
        check_commit_proof(GOOD, RECEIPT, SENDER, TRANSFER, [KEY_1])
    assert str(caught.value) == (
        f"the checkpoint of {SENDER} does not verify: "
        f"checkpoint is from {RECEIVER!r}, expected {SENDER!r}"
    )


# -- the xbgw-receipt/1 file ---------------------------------------------------------------------


EVIDENCE = Evidence(TRANSFER, SENDER, RECEIVER, MANIFEST, RECEIPT, GOOD)


def document(evidence: Evidence = EVIDENCE) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(evidence.to_json())
    return loaded


def test_evidence_round_trips() -> None:
    assert Evidence.from_json(EVIDENCE.to_json()) == EVIDENCE
    assert Evidence.from_json(EVIDENCE.to_json().encode()) == EVIDENCE
    bare = replace(EVIDENCE, proof=None)
    assert Evidence.from_json(bare.to_json()) == bare
    assert document(bare)["proof"] is None


def test_evidence_format_is_as_documented() -> None:
    doc = document()
    assert doc == {
        "format": "xbgw-receipt/1",
        "transfer_id": TRANSFER,
        "sender": SENDER,
        "receiver": RECEIVER,
        "manifest": {
            "body": base64.b64encode(MANIFEST.body).decode(),
            "signature": base64.b64encode(MANIFEST.signature).decode(),
            "kid": "lingang/signing/1",
        },
        "receipt": {
            "body": base64.b64encode(RECEIPT.body).decode(),
            "signature": base64.b64encode(RECEIPT.signature).decode(),
            "kid": "frankfurt/signing/1",
        },
        "proof": {
            "record": base64.b64encode(commit_record()).decode(),
            "leaf": COMMIT_LEAF,
            "checkpoint": GOOD.checkpoint,
            "inclusion": [h.hex() for h in GOOD.inclusion],
        },
    }
    assert FORMAT == "xbgw-receipt/1"
    # The checkpoint travels as the note's text, checkable as it stands.
    assert doc["proof"]["checkpoint"].startswith(f"{RECEIVER}\n{SIZE}\n")
    # What was read back still checks.
    parsed = Evidence.from_json(EVIDENCE.to_json())
    assert parsed.proof is not None
    assert check_commit_proof(parsed.proof, parsed.receipt, RECEIVER, TRANSFER, [KEY_1]) == SIZE


def not_evidence(doc: object, reason: str, source: str = "evidence") -> None:
    text = json.dumps(doc)
    with pytest.raises(UsageError) as caught:
        Evidence.from_json(text, source)
    assert str(caught.value) == f"{source}: not an xbgw-receipt/1 file ({reason})"


@pytest.mark.parametrize("version", ["xbgw-receipt/2", "xbgw-receipt/0", "", None, 1])
def test_evidence_of_another_format_version_is_refused(version: object) -> None:
    doc = document()
    doc["format"] = version
    not_evidence(doc, f"format is {version!r}, expected 'xbgw-receipt/1'", "r.json")
    del doc["format"]
    not_evidence(doc, "format is None, expected 'xbgw-receipt/1'", "r.json")


MEMBERS = [
    ("transfer_id",),
    ("sender",),
    ("receiver",),
    ("manifest",),
    ("receipt",),
    ("proof",),
    ("manifest", "body"),
    ("manifest", "signature"),
    ("manifest", "kid"),
    ("receipt", "body"),
    ("receipt", "signature"),
    ("receipt", "kid"),
    ("proof", "record"),
    ("proof", "leaf"),
    ("proof", "checkpoint"),
    ("proof", "inclusion"),
]


@pytest.mark.parametrize("path", MEMBERS, ids=".".join)
def test_evidence_missing_a_member_is_refused(path: tuple[str, ...]) -> None:
    doc = document()
    where = doc
    for step in path[:-1]:
        where = where[step]
    del where[path[-1]]
    not_evidence(doc, repr(path[-1]))


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("manifest", "body"), "not base64!", "Only base64 data is allowed"),
        (("receipt", "signature"), "abc", "Incorrect padding"),
        (("proof", "record"), "%%%%", "Only base64 data is allowed"),
        (
            ("proof", "inclusion"),
            ["zz" * 32],
            "non-hexadecimal number found in fromhex() arg at position 0",
        ),
        (
            ("proof", "inclusion"),
            ["abc"],
            "non-hexadecimal number found in fromhex() arg at position 3",
        ),
        (("proof", "leaf"), -1, "expected a non-negative integer, got -1"),
        (("proof", "leaf"), True, "expected a non-negative integer, got True"),
        (("proof", "leaf"), 4.0, "expected a non-negative integer, got 4.0"),
        (("proof", "leaf"), "4", "expected a non-negative integer, got '4'"),
        (("proof", "checkpoint"), 7, "expected a string, got int"),
        (("proof", "inclusion"), [1], "expected a string, got int"),
        (("transfer_id",), None, "expected a string, got NoneType"),
        (("receipt", "kid"), ["frankfurt/signing/1"], "expected a string, got list"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None,
)
def test_evidence_with_a_malformed_member_is_refused(
    path: tuple[str, ...], value: object, reason: str
) -> None:
    doc = document()
    where = doc
    for step in path[:-1]:
        where = where[step]
    where[path[-1]] = value
    not_evidence(doc, reason)


def test_evidence_that_is_not_json_or_not_an_object_is_refused() -> None:
    with pytest.raises(UsageError) as caught:
        Evidence.from_json("{", "r.json")
    assert str(caught.value).startswith("r.json: not an xbgw-receipt/1 file (Expecting")
    others: list[object] = [[], "text", 3, None]
    for doc in others:
        with pytest.raises(UsageError, match=r"^evidence: not an xbgw-receipt/1 file \("):
            Evidence.from_json(json.dumps(doc))


def test_oversize_evidence_is_refused_before_parsing() -> None:
    for big in ("{" + " " * MAX_EVIDENCE_BYTES, b"[" * (MAX_EVIDENCE_BYTES + 1)):
        with pytest.raises(UsageError) as caught:
            Evidence.from_json(big, "big.json")
        assert str(caught.value) == f"big.json: larger than {MAX_EVIDENCE_BYTES} bytes"
    # Right at the limit it is read (unknown members are ignored).
    text = EVIDENCE.to_json()
    doc = document()
    doc["padding"] = ""
    filler = MAX_EVIDENCE_BYTES - len(json.dumps(doc))
    doc["padding"] = "x" * filler
    assert len(json.dumps(doc)) == MAX_EVIDENCE_BYTES
    assert Evidence.from_json(json.dumps(doc)) == Evidence.from_json(text)


def test_a_note_is_verified_once_under_the_same_keys_and_for_no_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sender checks one checkpoint for every receipt that waited for it: the note's
    signature is verified once per (receiver, note, keys); every other step runs each time,
    and a remembered note vouches for nothing under other keys."""
    from gateway.audit import checkpoint as checkpoint_module
    from gateway.audit import proof as proof_module

    monkeypatch.setattr(proof_module, "_verified", type(proof_module._verified)())
    verified: list[str] = []
    real = checkpoint_module.verify_note

    def counting(text: str, *args: Any, **kwargs: Any) -> Checkpoint:
        verified.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(proof_module, "verify_note", counting)
    fresh = proof_for(log())  # its own note: ECDSA signatures differ from GOOD's
    assert check(fresh) == SIZE and check(fresh) == SIZE and len(verified) == 1
    refused(replace(fresh, leaf=1), mismatch(1))  # the later steps still run
    assert len(verified) == 1
    refused(
        fresh,
        checkpoint_refused(f"checkpoint of {RECEIVER!r} has no signature by a known log key"),
        [OTHER_KEY],
    )
    assert check(fresh, [KEY_2, KEY_1]) == SIZE  # other keys: verified again
    assert len(verified) == 3
    with pytest.raises(ProofError):  # another receiver: not served from what was remembered
        check_commit_proof(fresh, RECEIPT, SENDER, TRANSFER, [KEY_1])
