"""``verify_log`` and ``prove_leaf`` on a real ledger file, edited behind the ledger's back.

Each test builds a log of 40 records (leaves 0..39) with signed checkpoints at sizes 8, 16,
24, 32 and 40 (P-256 key from ``cryptography``, notes made by ``checkpoint.sign_note``), then
changes the SQLite file directly -- as someone with write access to the state directory
would -- and checks that the report's first problem names the first bad leaf.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from gateway.audit import checkpoint as notes
from gateway.audit.merkle import Frontier, leaf_hash, node_hash, verify_inclusion
from gateway.audit.records import AuditRecord
from gateway.audit.verify import (
    AuditLogError,
    LogReport,
    NotCoveredError,
    prove_leaf,
    verify_log,
)
from gateway.errors import UsageError
from gateway.ledger import Ledger

ME = "lingang"
LEAVES = 40
CHECKPOINT_EVERY = 8


@dataclass
class Log:
    path: Path
    key: ec.EllipticCurvePrivateKey

    @property
    def verifiers(self) -> list[notes.EcdsaVerifier]:
        return [notes.EcdsaVerifier(ME, self.key.public_key())]

    def verify(self, *, signatures: bool = True, origin: str | None = ME) -> LogReport:
        ledger = Ledger.read_only(self.path)
        try:
            return verify_log(ledger, self.verifiers if signatures else (), origin=origin)
        finally:
            ledger.close()

    def problems(self) -> list[str]:
        return [str(p) for p in self.verify().problems]

    def edit(self, sql: str, *args: object) -> None:
        db = sqlite3.connect(self.path)
        try:
            with db:
                db.execute(sql, args)
        finally:
            db.close()

    def one(self, sql: str, *args: object) -> object:
        db = sqlite3.connect(self.path)
        try:
            return db.execute(sql, args).fetchone()[0]
        finally:
            db.close()

    def record(self, index: int) -> bytes:
        value = self.one("SELECT record FROM audit_records WHERE idx = ?", index)
        assert isinstance(value, bytes)
        return value


def _signer(key: ec.EllipticCurvePrivateKey) -> notes.DigestSign:
    def sign(digest: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def _checkpoint(ledger: Ledger, key: ec.EllipticCurvePrivateKey) -> None:
    size, root = ledger.begin_checkpoint()
    body = notes.Checkpoint(ME, size, root).body()
    note = notes.sign_note(body, ME, notes.key_id(ME, key.public_key()), _signer(key))
    ledger.finish_checkpoint(size, note, 1_770_000_000 + size)


def _record(i: int) -> bytes:
    if i % 3 == 0:
        return AuditRecord("admin.fetch", 1_770_000_000 + i, {"transfer_id": f"t-{i:04d}"}).encode(
            ME
        )
    if i % 3 == 1:
        return AuditRecord(
            "config.reloaded", 1_770_000_000 + i, {"config_sha256": f"{i:064x}"}
        ).encode(ME)
    return AuditRecord(
        "key.changed", 1_770_000_000 + i, {"key": f"{ME}/signing/{i}", "state": "active"}
    ).encode(ME)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    try:
        for i in range(LEAVES):
            assert ledger.append_audit(_record(i)) == i
            if (i + 1) % CHECKPOINT_EVERY == 0:
                _checkpoint(ledger, key)
    finally:
        ledger.close()
    yield Log(path, key)


def _rebuild_nodes_and_frontier(log: Log) -> None:
    """What a careful forger does after changing records: every node and the frontier made
    to agree with them again (only the signed checkpoints still remember)."""
    db = sqlite3.connect(log.path)
    try:
        with db:
            rows = db.execute("SELECT record FROM audit_records ORDER BY idx").fetchall()
            db.execute("DELETE FROM audit_nodes")
            frontier = Frontier()
            for (record,) in rows:
                for node in frontier.append(leaf_hash(bytes(record))):
                    db.execute(
                        "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)",
                        (node.level, node.index, node.hash),
                    )
            db.execute(
                "UPDATE audit_frontier SET frontier = ? WHERE id = 0", (frontier.to_bytes(),)
            )
    finally:
        db.close()


# --- a log as written ----------------------------------------------------------------------


def test_an_untouched_log_verifies(log: Log) -> None:
    report = log.verify()
    assert report.ok, report.problems
    assert (report.leaves, report.checkpoints, report.signed, report.verified) == (40, 5, 5, 5)
    assert report.nodes == 40 + 20 + 10 + 5 + 2 + 1  # every perfect subtree of 40 leaves
    assert report.first_bad_leaf is None
    ledger = Ledger.read_only(log.path)
    try:
        assert report.root == ledger.audit_root(LEAVES)
        assert report.newest == (LEAVES, report.root)
    finally:
        ledger.close()


def test_an_empty_or_absent_ledger_is_an_empty_log(tmp_path: Path) -> None:
    ledger = Ledger.read_only(tmp_path / "none.sqlite3")
    try:
        report = verify_log(ledger)
    finally:
        ledger.close()
    assert report.ok
    assert (report.leaves, report.nodes, report.checkpoints, report.newest) == (0, 0, 0, None)


def test_an_unsigned_checkpoint_row_is_checked_by_its_root(log: Log) -> None:
    ledger = Ledger(log.path)
    try:
        ledger.append_audit(_record(LEAVES))
        ledger.begin_checkpoint()  # recorded, not signed yet (the daemon is between the two)
    finally:
        ledger.close()
    report = log.verify()
    assert report.ok, report.problems
    assert (report.checkpoints, report.signed, report.newest is not None) == (6, 5, True)
    log.edit("UPDATE audit_checkpoints SET root = zeroblob(32) WHERE size = 41")
    assert log.problems() == [
        "checkpoint at size 41: root differs from the log's (the log was changed at leaves "
        "40..40, after the good checkpoint at size 40)"
    ]


# --- records -----------------------------------------------------------------------------------


def test_one_byte_of_a_record_changed(log: Log) -> None:
    record = bytearray(log.record(17))
    record[record.index(b"17")] = ord("9")  # still canonical JSON, another value
    log.edit("UPDATE audit_records SET record = ? WHERE idx = 17", bytes(record))
    report = log.verify()
    assert report.first_bad_leaf == 17
    assert [str(p) for p in report.problems] == [
        "leaf 17: the record does not hash to the stored leaf hash",
        "checkpoint at size 24: root differs from the log's (the log was changed below leaf 24, "
        "first at leaf 17)",
        "checkpoint at size 32: root differs from the log's (the log was changed below leaf 32, "
        "first at leaf 17)",
        "checkpoint at size 40: root differs from the log's (the log was changed below leaf 40, "
        "first at leaf 17)",
    ]


def test_a_record_edited_as_text_is_not_canonical(log: Log) -> None:
    log.edit(
        "UPDATE audit_records SET record = replace(record, '\"v\":1', '\"v\": 1') WHERE idx = 5"
    )
    problems = log.problems()
    assert problems[:2] == [
        "leaf 5: the audit record is not in canonical form",
        "leaf 5: the record does not hash to the stored leaf hash",
    ]


def test_a_record_from_another_gateway(log: Log) -> None:
    forged = AuditRecord("admin.fetch", 1, {"transfer_id": "x"}).encode("frankfurt")
    log.edit("UPDATE audit_records SET record = ? WHERE idx = 3", forged)
    assert log.problems()[:2] == [
        "leaf 3: the record is from gateway 'frankfurt', not 'lingang'",
        "leaf 3: the record does not hash to the stored leaf hash",
    ]


def test_a_deleted_record(log: Log) -> None:
    log.edit("DELETE FROM audit_records WHERE idx = 17")
    # Its stored leaf hash stands in: everything above it still checks, so one problem.
    assert log.problems() == ["leaf 17 is missing (the log has leaves 16 and 18)"]
    assert log.verify().first_bad_leaf == 17


def test_deleted_records_and_their_leaf_hashes(log: Log) -> None:
    log.edit("DELETE FROM audit_records WHERE idx IN (17, 18, 19)")
    log.edit("DELETE FROM audit_nodes WHERE level = 0 AND idx = 18")
    assert log.problems() == [
        "leaves 17..19 are missing (the log has leaves 16 and 20)",
        "checkpoints from size 24 on are not checked: leaf 18 has neither a record nor a "
        "stored leaf hash",
    ]


def test_the_first_records_deleted(log: Log) -> None:
    log.edit("DELETE FROM audit_records WHERE idx < 2")
    assert log.problems() == ["leaves 0..1 are missing (the records start at leaf 2)"]


def test_two_records_swapped(log: Log) -> None:
    three, five = log.record(3), log.record(5)
    log.edit("UPDATE audit_records SET record = ? WHERE idx = 3", five)
    log.edit("UPDATE audit_records SET record = ? WHERE idx = 5", three)
    assert log.problems() == [
        "leaf 3: the record does not hash to the stored leaf hash",
        "checkpoint at size 8: root differs from the log's (the log was changed below leaf 8, "
        "first at leaf 3)",
        "checkpoint at size 16: root differs from the log's (the log was changed below leaf 16, "
        "first at leaf 3)",
        "checkpoint at size 24: root differs from the log's (the log was changed below leaf 24, "
        "first at leaf 3)",
        "checkpoint at size 32: root differs from the log's (the log was changed below leaf 32, "
        "first at leaf 3)",
        "checkpoint at size 40: root differs from the log's (the log was changed below leaf 40, "
        "first at leaf 3)",
        "leaf 5: the record does not hash to the stored leaf hash",
    ]


def test_indices_reordered(log: Log) -> None:
    log.edit("UPDATE audit_records SET idx = -1 WHERE idx = 10")
    log.edit("UPDATE audit_records SET idx = 10 WHERE idx = 11")
    log.edit("UPDATE audit_records SET idx = 11 WHERE idx = -1")
    problems = log.problems()
    assert problems[0] == "leaf 10: the record does not hash to the stored leaf hash"
    assert "leaf 11: the record does not hash to the stored leaf hash" in problems
    assert len(problems) == 6  # and the four checkpoints at sizes 16 to 40


def test_a_record_moved_past_the_end(log: Log) -> None:
    log.edit("UPDATE audit_records SET idx = 40 WHERE idx = 20")
    assert log.problems() == [
        "leaf 20 is missing (the log has leaves 19 and 21)",
        "leaf 40: its leaf hash is not among the stored nodes",
        "leaf 40 lies beyond the frontier's 40 leaves (records added behind the log's back)",
    ]


def test_a_record_at_a_negative_index(log: Log) -> None:
    log.edit("UPDATE audit_records SET idx = -5 WHERE idx = 0")
    assert log.problems() == [
        "a record is stored at index -5, which no leaf has",
        "leaf 0 is missing (the records start at leaf 1)",
    ]


# --- the tail ----------------------------------------------------------------------------------


def test_the_tail_cut(log: Log) -> None:
    log.edit("DELETE FROM audit_records WHERE idx >= 35")
    log.edit("DELETE FROM audit_nodes WHERE ((idx + 1) << level) > 35")
    report = log.verify()
    assert report.first_bad_leaf == 35
    assert [str(p) for p in report.problems] == [
        "leaves 35..39 are missing: the frontier counts 40 leaves but the records end at leaf 34 "
        "(the log was cut)",
        "checkpoint at size 40 covers leaves 35..39, which the log no longer has (it has 35 "
        "leaves: the log was cut)",
    ]


def test_the_tail_cut_and_the_frontier_rewritten(log: Log) -> None:
    log.edit("DELETE FROM audit_records WHERE idx >= 35")
    _rebuild_nodes_and_frontier(log)
    assert log.problems() == [
        "checkpoint at size 40 covers leaves 35..39, which the log no longer has (it has 35 "
        "leaves: the log was cut)"
    ]


def test_the_tail_cut_with_its_checkpoints_only_a_witness_can_see(log: Log) -> None:
    log.edit("DELETE FROM audit_records WHERE idx >= 32")
    log.edit("DELETE FROM audit_checkpoints WHERE size > 32")
    _rebuild_nodes_and_frontier(log)
    assert log.verify().ok  # a consistent shorter log: partners' checkpoints catch this


# --- a careful forger --------------------------------------------------------------------------


def test_a_record_changed_and_the_tree_rebuilt_is_caught_by_the_checkpoints(log: Log) -> None:
    forged = AuditRecord("admin.fetch", 1, {"transfer_id": "forged"}).encode(ME)
    log.edit("UPDATE audit_records SET record = ? WHERE idx = 19", forged)
    _rebuild_nodes_and_frontier(log)
    report = log.verify()
    assert report.first_bad_leaf == 16
    assert str(report.problems[0]) == (
        "checkpoint at size 24: root differs from the log's (the log was changed at leaves "
        "16..23, after the good checkpoint at size 16)"
    )
    assert len(report.problems) == 3  # sizes 24, 32 and 40


# --- nodes and the frontier --------------------------------------------------------------------


def test_a_node_altered(log: Log) -> None:
    log.edit("UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 2 AND idx = 1")
    assert log.problems() == [
        "node at level 2 index 1 (leaves 4..7): the stored hash is not the one recomputed "
        "from the records"
    ]


def test_a_leaf_hash_and_its_record_changed_together(log: Log) -> None:
    forged = AuditRecord("admin.fetch", 1, {"transfer_id": "forged"}).encode(ME)
    log.edit("UPDATE audit_records SET record = ? WHERE idx = 13", forged)
    log.edit("UPDATE audit_nodes SET hash = ? WHERE level = 0 AND idx = 13", leaf_hash(forged))
    problems = log.problems()
    assert problems[0] == (
        "node at level 1 index 6 (leaves 12..13): the stored hash is not the one recomputed "
        "from the records"
    )
    assert problems[1] == (
        "checkpoint at size 16: root differs from the log's (the log was changed below leaf 16, "
        "first at leaf 12)"
    )


def test_a_node_missing_and_one_added(log: Log) -> None:
    log.edit("DELETE FROM audit_nodes WHERE level = 3 AND idx = 2")
    log.edit("INSERT INTO audit_nodes (level, idx, hash) VALUES (0, 45, zeroblob(32))")
    assert log.problems() == [
        "node at level 3 index 2 (leaves 16..23) is not among the stored nodes",
        "node at level 0 index 45 (leaf 45) is stored beyond the log's 40 leaves",
    ]


def test_a_node_at_a_level_no_tree_has(log: Log) -> None:
    log.edit("INSERT INTO audit_nodes (level, idx, hash) VALUES (9, 0, zeroblob(32))")
    log.edit("INSERT INTO audit_nodes (level, idx, hash) VALUES (1, -1, zeroblob(32))")
    assert log.problems() == [
        "node at level 9 index 0 (leaves 0..511) is stored beyond the log's 40 leaves",
        "a node is stored at level 1 index -1, which no tree has",
    ]


def test_the_frontier_altered(log: Log) -> None:
    ledger = Ledger.read_only(log.path)
    try:
        stored = ledger.audit_size()
    finally:
        ledger.close()
    assert stored == LEAVES
    other = Frontier()  # a well-formed frontier of 40 leaves, but not of these
    other.extend(leaf_hash(log.record(i)) for i in range(LEAVES - 1))
    other.append(leaf_hash(b"another record"))
    log.edit("UPDATE audit_frontier SET frontier = ?", other.to_bytes())
    assert log.problems() == [
        "the stored frontier differs from the records at node at level 3 index 4 (leaves 32..39)"
    ]
    log.edit("UPDATE audit_frontier SET frontier = ?", b"junk")
    (problem,) = log.problems()
    assert problem.startswith("the stored frontier is damaged (")


# --- checkpoints -------------------------------------------------------------------------------


def test_a_checkpoint_root_altered(log: Log) -> None:
    log.edit("UPDATE audit_checkpoints SET root = zeroblob(32) WHERE size = 16")
    assert log.problems() == [
        "checkpoint at size 16: the stored root differs from the log's and from its signed note "
        "(the checkpoint row was edited)"
    ]


def test_a_note_signature_altered(log: Log) -> None:
    note = log.one("SELECT note FROM audit_checkpoints WHERE size = 24")
    assert isinstance(note, str)
    body, (signature,) = notes.parse_note(note)
    forged = bytearray(signature.signature)
    forged[-1] ^= 1
    bad = notes.NoteSignature(signature.name, signature.key_id, bytes(forged))
    log.edit(
        "UPDATE audit_checkpoints SET note = ? WHERE size = 24",
        body.decode() + "\n" + bad.line() + "\n",
    )
    (problem,) = log.verify().problems
    assert problem.leaf is None
    assert str(problem) == (
        f"checkpoint at size 24: the note does not verify: signature by key {signature} does "
        "not verify"
    )
    assert log.verify(signatures=False).ok  # without keys the signature is not checked


def test_a_note_for_another_tree(log: Log) -> None:
    other = log.one("SELECT note FROM audit_checkpoints WHERE size = 32")
    log.edit("UPDATE audit_checkpoints SET note = ? WHERE size = 24", other)
    assert log.problems() == [
        "checkpoint at size 24: its note is for size 32",
        "checkpoint at size 24: its note states another root than the log's",
    ]


def test_checkpoints_signed_by_an_unknown_key(log: Log) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    ledger = Ledger.read_only(log.path)
    try:
        report = verify_log(ledger, [notes.EcdsaVerifier(ME, stranger)], origin=ME)
    finally:
        ledger.close()
    assert len(report.problems) == 5
    own = notes.key_id(ME, log.key.public_key())
    assert str(report.problems[0]) == (
        f"checkpoint at size 8: signed by {ME}+{own:08x}, none of the keys given (a destroyed "
        "signing key? give its public key with --key)"
    )


def test_the_log_of_another_gateway(log: Log) -> None:
    report = log.verify(signatures=False, origin="frankfurt")
    assert (
        str(report.problems[0]) == "leaf 0: the record is from gateway 'lingang', not 'frankfurt'"
    )
    assert "checkpoint at size 8: the note is from 'lingang', not 'frankfurt'" in map(
        str, report.problems
    )


# --- proofs ------------------------------------------------------------------------------------


def test_a_proof_checks_with_nothing_but_the_note_and_the_key(log: Log) -> None:
    ledger = Ledger.read_only(log.path)
    try:
        proof = prove_leaf(ledger, 17)
    finally:
        ledger.close()
    assert proof.size == LEAVES
    assert proof.checkpoint is not None
    checkpoint = notes.verify_note(proof.checkpoint, log.verifiers, origin=ME)
    document = proof.to_json()
    path = document["inclusion_proof"]
    assert isinstance(path, list)
    verify_inclusion(
        leaf_hash(str(document["leaf_input"]).encode("ascii")),
        17,
        checkpoint.size,
        [bytes.fromhex(h) for h in path],
        checkpoint.root_hash,
    )
    assert document["record"] == {
        "v": 1,
        "gw": ME,
        "kind": "key.changed",
        "at": 1_770_000_017,
        "key": f"{ME}/signing/17",
        "state": "active",
    }


def test_a_proof_at_a_given_size(log: Log) -> None:
    ledger = Ledger.read_only(log.path)
    try:
        signed = prove_leaf(ledger, 3, 8)
        unsigned = prove_leaf(ledger, 3, 9)
        with pytest.raises(UsageError, match="needs a tree size from 4 to 40, not 3"):
            prove_leaf(ledger, 3, 3)
        with pytest.raises(UsageError, match="leaf 40 is not in the log: it has 40 leaves"):
            prove_leaf(ledger, 40)
    finally:
        ledger.close()
    assert (signed.size, signed.checkpoint is not None) == (8, True)
    assert (unsigned.size, unsigned.checkpoint) == (9, None)
    verify_inclusion(unsigned.leaf_hash, 3, 9, unsigned.inclusion, unsigned.root)


def test_a_leaf_not_covered_yet(log: Log, tmp_path: Path) -> None:
    ledger = Ledger(log.path)
    try:
        ledger.append_audit(_record(LEAVES))
        with pytest.raises(
            NotCoveredError, match=r"leaf 40 is not covered .* covers leaves 0\.\.39"
        ):
            prove_leaf(ledger, 40)
    finally:
        ledger.close()
    empty = Ledger(tmp_path / "new.sqlite3")
    try:
        empty.append_audit(_record(0))
        with pytest.raises(NotCoveredError, match="there is no signed checkpoint yet"):
            prove_leaf(empty, 0)
    finally:
        empty.close()


def test_a_proof_from_a_damaged_log_is_refused(log: Log) -> None:
    log.edit("UPDATE audit_nodes SET hash = zeroblob(32) WHERE level = 0 AND idx = 16")
    ledger = Ledger.read_only(log.path)
    try:
        with pytest.raises(AuditLogError, match="does not prove leaf 17 at size 40"):
            prove_leaf(ledger, 17)
    finally:
        ledger.close()


def test_a_snapshot_sees_one_state_while_the_log_grows(log: Log) -> None:
    """The read-only ledger and a writer at once: every verify sees a whole log."""
    writer = Ledger(log.path)
    reader = Ledger.read_only(log.path)
    try:
        for i in range(LEAVES, LEAVES + 20):
            writer.append_audit(_record(i))
            if i % 5 == 0:
                _checkpoint(writer, log.key)
            report = verify_log(reader, log.verifiers, origin=ME)
            assert report.ok, report.problems
            assert report.leaves == i + 1
    finally:
        reader.close()
        writer.close()


def test_a_node_hash_is_what_the_rfc_says(log: Log) -> None:
    """The check compares with RFC 9162 hashes, not with whatever the store computes."""
    left, right = leaf_hash(log.record(0)), leaf_hash(log.record(1))
    assert log.one("SELECT hash FROM audit_nodes WHERE level = 1 AND idx = 0") == node_hash(
        left, right
    )
