"""Checking a gateway's audit log as stored, and proving one of its leaves: what ``xbgw audit
verify`` and ``xbgw audit proof`` run.

:func:`verify_log` recomputes the whole log from its records, in one read snapshot of the
ledger (so a daemon appending meanwhile is no problem), and never trusts a stored hash it can
recompute:

* every record is canonical JSON of a known kind from this gateway (:mod:`records`), and its
  leaf hash ``SHA-256(0x00 || record)`` is the stored level-0 node;
* the records are leaves 0..n-1 without a gap;
* every stored perfect node equals the one rebuilt from the records, and no node is stored
  that the tree does not have;
* the stored frontier (the right edge appends start from) equals the one rebuilt;
* every checkpoint's root is the rebuilt root at its size, its note (if signed) states the same
  size and root, and, given ``verifiers``, the note's signature verifies with origin = the
  gateway id.

Problems are reported, not raised: a :class:`LogReport` lists every one, ordered so that the
first names the first bad leaf (``"leaf 17: the record does not hash to the stored leaf
hash"``). A change below a node shows once: a node whose stored child already differs is not
reported again, and a checkpoint over a changed leaf says which leaf it is. When the records
cannot say a leaf's hash (a record is missing and so is its stored leaf hash), nothing above
that leaf is compared.

Memory stays O(log n) besides the problems: records and nodes are streamed in index order.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from gateway.audit import checkpoint as notes
from gateway.audit import records as audit_records
from gateway.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    FrontierFormatError,
    ProofError,
    leaf_hash,
    verify_inclusion,
)
from gateway.errors import UsageError, XbgwError
from gateway.ledger import Ledger

__all__ = [
    "AuditLogError",
    "LeafProof",
    "LogReport",
    "NotCoveredError",
    "Problem",
    "prove_leaf",
    "verify_log",
]

_UNKNOWN = b"\x00" * 32  # stands in for a leaf hash nobody can recompute (never compared)


class AuditLogError(XbgwError):
    """The audit log as stored is not what its records, nodes and checkpoints say."""

    grpc_status = "DATA_LOSS"


class NotCoveredError(XbgwError):
    """A leaf that no signed checkpoint covers yet: the daemon signs one within a second."""

    grpc_status = "UNAVAILABLE"


# --- the report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong. ``leaf``: the first leaf it implicates (None: no leaf, e.g. a bad
    signature on a checkpoint whose root is right)."""

    message: str
    leaf: int | None = None
    rank: int = 0  # among problems naming the same leaf: 0 the cause, 1 a consequence

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class LogReport:
    """What :func:`verify_log` found."""

    leaves: int  # leaves recomputed (the records' last index + 1)
    root: bytes  # their root (stored leaf hashes standing in for missing records)
    nodes: int  # stored nodes compared with the rebuilt tree
    checkpoints: int  # checkpoint rows
    signed: int  # rows with a signed note
    signatures_checked: bool  # verifiers were given
    verified: int  # notes whose signature verified
    newest: tuple[int, bytes] | None  # the newest signed checkpoint's (size, root)
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_leaf(self) -> int | None:
        return min((p.leaf for p in self.problems if p.leaf is not None), default=None)


def _leaves(first: int, last: int) -> str:
    return f"leaf {first}" if first == last else f"leaves {first}..{last}"


def _span(level: int, index: int) -> tuple[int, int]:
    return index << level, ((index + 1) << level) - 1


def _node(level: int, index: int) -> str:
    first, last = _span(level, index)
    return f"node at level {level} index {index} ({_leaves(first, last)})"


class _Problems:
    def __init__(self) -> None:
        self._found: list[tuple[int, int, int, Problem]] = []
        self.first_leaf: int | None = None  # the lowest leaf named so far

    def add(self, message: str, leaf: int | None = None, rank: int = 0) -> None:
        problem = Problem(message, leaf, rank)
        order = leaf if leaf is not None else 2**64
        self._found.append((order, rank, len(self._found), problem))
        if leaf is not None and (self.first_leaf is None or leaf < self.first_leaf):
            self.first_leaf = leaf

    def sorted(self) -> tuple[Problem, ...]:
        return tuple(found[-1] for found in sorted(self._found, key=lambda f: f[:3]))


# --- reading one snapshot ------------------------------------------------------------------


def _snapshot(ledger: Ledger) -> AbstractContextManager[sqlite3.Connection]:
    """Every query below sees one committed state, whatever the daemon appends meanwhile."""
    return ledger.read_snapshot()


def _blob(value: object) -> bytes | None:
    """A stored BLOB as bytes (text edited in by hand as its UTF-8); None if neither."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return None


class _StoredNodes:
    """The stored nodes, one cursor per level in index order: the rebuilt tree asks for each
    level's nodes in increasing index, so the reads stream."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._cursors: dict[int, Iterator[Any]] = {}
        self._heads: dict[int, tuple[Any, Any] | None] = {}
        self.read = 0

    def _advance(self, level: int) -> None:
        self._heads[level] = next(self._cursors[level], None)
        if self._heads[level] is not None:
            self.read += 1

    def take(self, level: int, index: int, problems: _Problems) -> bytes | None:
        """The stored hash of (level, index), None if absent; nodes skipped on the way (not
        in the tree) are reported."""
        if level not in self._cursors:
            self._cursors[level] = iter(
                self._db.execute(
                    "SELECT idx, hash FROM audit_nodes WHERE level = ? ORDER BY idx", (level,)
                )
            )
            self._advance(level)
        while (head := self._heads[level]) is not None:
            stored_index, stored_hash = head
            if isinstance(stored_index, int) and stored_index >= index:
                if stored_index > index:
                    return None
                self._advance(level)
                return _blob(stored_hash) or b""
            # Below the index asked for (the tree asks 0, 1, 2, ...) or not an integer at all.
            problems.add(
                f"a node is stored at level {level} index {stored_index!r}, which no tree has"
            )
            self._advance(level)
        return None

    def rest(self) -> Iterator[tuple[Any, Any]]:
        """Every stored node not taken yet: (level, index)."""
        for level in sorted(self._cursors):
            while (head := self._heads[level]) is not None:
                yield level, head[0]
                self._advance(level)
        top = max(self._cursors, default=-1)
        # A level that is no integer at all: only SQLite's dynamic types can store one.
        sql = (
            "SELECT level, idx FROM audit_nodes WHERE level < 0 OR level > ? OR "
            "typeof(level) != 'integer' ORDER BY level, idx"
            if isinstance(self._db, sqlite3.Connection)
            else "SELECT level, idx FROM audit_nodes WHERE level < 0 OR level > ? "
            "ORDER BY level, idx"
        )
        rows = self._db.execute(sql, (top,))
        for row in rows:
            self.read += 1
            yield row[0], row[1]


@dataclass
class _Checkpoint:
    size: int
    root: bytes | None
    note: str | None


# --- verification --------------------------------------------------------------------------


@dataclass
class _Walk:
    """The state of one pass over the records."""

    db: sqlite3.Connection
    verifiers: Sequence[notes.NoteVerifier]
    origin: str | None
    problems: _Problems = field(default_factory=_Problems)
    rebuilt: Frontier = field(default_factory=Frontier)
    nodes: _StoredNodes | None = None
    unknown: list[int] = field(default_factory=list)  # leaves whose hash nobody can recompute
    mismatched: set[tuple[int, int]] = field(default_factory=set)
    good_size: int = 0  # the largest checkpoint size whose root matched
    pending: Iterator[_Checkpoint] = field(default_factory=lambda: iter(()))
    upcoming: _Checkpoint | None = None
    unchecked_reported: bool = False
    checkpoints: int = 0
    signed: int = 0
    verified: int = 0
    newest: tuple[int, bytes] | None = None


def verify_log(
    ledger: Ledger, verifiers: Iterable[notes.NoteVerifier] = (), *, origin: str | None = None
) -> LogReport:
    """Recompute ``ledger``'s audit log and check every checkpoint (see the module doc).

    ``verifiers``: the gateway's signing keys as :class:`~checkpoint.EcdsaVerifier` (name =
    the gateway id); without them notes are parsed and compared but their signatures are not
    checked. ``origin``: the gateway id, which every record and note must name.
    """
    with _snapshot(ledger) as db:
        walk = _Walk(db, list(verifiers), origin)
        walk.nodes = _StoredNodes(db)
        walk.pending = _checkpoint_rows(db)
        walk.upcoming = next(walk.pending, None)
        return _verify(walk)


def _verify(walk: _Walk) -> LogReport:
    db, problems, rebuilt = walk.db, walk.problems, walk.rebuilt
    assert walk.nodes is not None
    stored_frontier = _stored_frontier(db, problems)
    _reached(walk)
    last_present = -1
    for raw_index, raw_record in db.execute("SELECT idx, record FROM audit_records ORDER BY idx"):
        index = int(raw_index)
        if index < 0:
            problems.add(f"a record is stored at index {index}, which no leaf has", 0)
            continue
        if index > rebuilt.size:
            _gap(walk, last_present, index)
        record = _blob(raw_record) or b""
        _check_record(walk, index, record)
        _append(walk, leaf_hash(record))
        _reached(walk)
        last_present = index
    size = rebuilt.size
    _reached(walk, final=True)
    _check_frontier(walk, stored_frontier)
    _extra_nodes(walk, stored_frontier)
    return LogReport(
        leaves=size,
        root=rebuilt.root(),
        nodes=walk.nodes.read,
        checkpoints=walk.checkpoints,
        signed=walk.signed,
        signatures_checked=bool(walk.verifiers),
        verified=walk.verified,
        newest=walk.newest,
        problems=problems.sorted(),
    )


def _reached(walk: _Walk, *, final: bool = False) -> None:
    """Check the checkpoints of the size the rebuilt tree has now (``final``: and every larger
    one, which the records no longer reach)."""
    while walk.upcoming is not None and (final or walk.upcoming.size <= walk.rebuilt.size):
        _check_checkpoint(walk, walk.upcoming)
        walk.upcoming = next(walk.pending, None)


def _stored_frontier(db: sqlite3.Connection, problems: _Problems) -> Frontier | None:
    row = db.execute("SELECT frontier FROM audit_frontier WHERE id = 0").fetchone()
    if row is None:
        return Frontier()
    try:
        return Frontier.from_bytes(_blob(row[0]) or b"")
    except FrontierFormatError as exc:
        problems.add(f"the stored frontier is damaged ({exc}): appends would go wrong")
        return None


def _checkpoint_rows(db: sqlite3.Connection) -> Iterator[_Checkpoint]:
    for size, root, note in db.execute(
        "SELECT size, root, note FROM audit_checkpoints ORDER BY size"
    ):
        yield _Checkpoint(int(size), _blob(root), note if isinstance(note, str) else None)


def _gap(walk: _Walk, last_present: int, index: int) -> None:
    """Leaves ``rebuilt.size .. index - 1`` have no record: reported once; their stored leaf
    hashes stand in so that the rest of the tree is still checked."""
    first, last = walk.rebuilt.size, index - 1
    where = (
        f"the log has leaves {last_present} and {index}"
        if last_present >= 0
        else f"the records start at leaf {index}"
    )
    verb = "is" if first == last else "are"
    walk.problems.add(f"{_leaves(first, last)} {verb} missing ({where})", first)
    for missing in range(first, index):
        assert walk.nodes is not None
        stored = walk.nodes.take(0, missing, walk.problems)
        if stored is None:
            walk.unknown.append(missing)
            _append(walk, _UNKNOWN, taken={(0, missing)})
        else:
            _append(walk, stored, taken={(0, missing)}, stored_leaf=stored)
        _reached(walk)


def _unknown_in(walk: _Walk, first: int, last: int) -> bool:
    """Whether a leaf of ``first..last`` has a hash nobody can recompute."""
    at = bisect.bisect_left(walk.unknown, first)
    return at < len(walk.unknown) and walk.unknown[at] <= last


def _check_record(walk: _Walk, index: int, record: bytes) -> None:
    problems = walk.problems
    try:
        document = audit_records.decode(record)
    except audit_records.AuditRecordError as exc:
        problems.add(f"leaf {index}: {exc}", index)
        return
    kind = document.get("kind")
    if document.get("v") != audit_records.VERSION:
        problems.add(f"leaf {index}: record version {document.get('v')!r} is unknown", index)
    elif not isinstance(kind, str) or kind not in audit_records.KINDS:
        problems.add(f"leaf {index}: record kind {kind!r} is unknown", index)
    else:
        members = set(document) - {"v", "gw", "kind", "at"}
        if members != set(audit_records.KINDS[kind]):
            problems.add(f"leaf {index}: a {kind} record with other members than its kind's", index)
    if walk.origin is not None and document.get("gw") != walk.origin:
        problems.add(
            f"leaf {index}: the record is from gateway {document.get('gw')!r}, not {walk.origin!r}",
            index,
        )


def _append(
    walk: _Walk,
    leaf: bytes,
    *,
    taken: set[tuple[int, int]] | None = None,
    stored_leaf: bytes | None = None,
) -> None:
    """Add one leaf hash to the rebuilt tree and compare each node it completes with the
    stored one (``taken``: nodes already read, e.g. a missing record's leaf hash)."""
    assert walk.nodes is not None
    problems = walk.problems
    for node in walk.rebuilt.append(leaf):
        first, last = _span(node.level, node.index)
        if taken and (node.level, node.index) in taken:
            stored: bytes | None = stored_leaf
        else:
            stored = walk.nodes.take(node.level, node.index, problems)
        if _unknown_in(walk, first, last):
            continue  # its hash cannot be recomputed: nothing to compare with
        if node.level == 0:
            if stored is None:
                problems.add(f"leaf {first}: its leaf hash is not among the stored nodes", first)
            elif stored != node.hash:
                walk.mismatched.add((0, node.index))
                problems.add(
                    f"leaf {first}: the record does not hash to the stored leaf hash", first
                )
            continue
        if stored is None:
            problems.add(f"{_node(node.level, node.index)} is not among the stored nodes", first)
            continue
        if stored == node.hash:
            continue
        walk.mismatched.add((node.level, node.index))
        children = {(node.level - 1, 2 * node.index), (node.level - 1, 2 * node.index + 1)}
        if not children & walk.mismatched:  # not the echo of a change below it
            problems.add(
                f"{_node(node.level, node.index)}: the stored hash is not the one recomputed "
                "from the records",
                first,
            )


def _check_checkpoint(walk: _Walk, row: _Checkpoint) -> None:
    problems, size = walk.problems, row.size
    walk.checkpoints += 1
    what = f"checkpoint at size {size}"
    last = size - 1
    note_root = _check_note(walk, row)
    known = not _unknown_in(walk, 0, last)
    if size > walk.rebuilt.size:  # only after every record was read
        have = walk.rebuilt.size
        problems.add(
            f"{what} covers {_leaves(have, last)}, which the log no longer has (it has {have} "
            "leaves: the log was cut)",
            have,
            rank=1,
        )
        return
    if not known:
        if not walk.unchecked_reported:
            walk.unchecked_reported = True
            problems.add(
                f"checkpoints from size {size} on are not checked: leaf {walk.unknown[0]} has "
                "neither a record nor a stored leaf hash",
                walk.unknown[0],
                rank=1,
            )
        return
    assert size == walk.rebuilt.size
    log_root = walk.rebuilt.root()
    if row.root == log_root and (note_root is None or note_root == log_root):
        walk.good_size = max(walk.good_size, size)
        return
    if row.root != log_root and note_root == log_root:
        problems.add(
            f"{what}: the stored root differs from the log's and from its signed note "
            "(the checkpoint row was edited)",
            None,
            rank=1,
        )
        return
    if row.root == log_root:  # the note disagrees with its row and the log
        problems.add(f"{what}: its note states another root than the log's", None, rank=1)
        return
    first = walk.problems.first_leaf
    if first is not None and first < size:
        why = f"the log was changed below leaf {size}, first at leaf {first}"
    else:
        first = walk.good_size
        why = (
            f"the log was changed below leaf {size}"
            if first == 0
            else f"the log was changed at leaves {first}..{last}, after the good checkpoint "
            f"at size {first}"
        )
    problems.add(f"{what}: root differs from the log's ({why})", first, rank=1)


def _check_note(walk: _Walk, row: _Checkpoint) -> bytes | None:
    """Parse (and with verifiers, verify) the row's note; the root it states, if it parses."""
    if row.note is None:
        return None
    walk.signed += 1
    problems, what = walk.problems, f"checkpoint at size {row.size}"
    try:
        checkpoint, signatures = notes.parse(row.note)
    except notes.NoteError as exc:
        problems.add(f"{what}: the note is malformed: {exc}", None, rank=1)
        return None
    if walk.origin is not None and checkpoint.origin != walk.origin:
        problems.add(f"{what}: the note is from {checkpoint.origin!r}, not {walk.origin!r}")
    if checkpoint.size != row.size:
        problems.add(f"{what}: its note is for size {checkpoint.size}", None, rank=1)
    elif walk.newest is None or row.size >= walk.newest[0]:
        walk.newest = (row.size, checkpoint.root_hash)
    if walk.verifiers:
        known = {(v.name, v.key_id) for v in walk.verifiers}
        if not any((s.name, s.key_id) in known for s in signatures):
            by = ", ".join(str(s) for s in signatures)
            problems.add(
                f"{what}: signed by {by}, none of the keys given (a destroyed signing key? "
                "give its public key with --key)",
                None,
                rank=1,
            )
        else:
            try:
                notes.open_checkpoint(row.note, walk.verifiers, origin=walk.origin)
            except notes.NoteError as exc:
                problems.add(f"{what}: the note does not verify: {exc}", None, rank=1)
            else:
                walk.verified += 1
    return checkpoint.root_hash


def _check_frontier(walk: _Walk, stored: Frontier | None) -> None:
    if stored is None:
        return
    rebuilt, problems = walk.rebuilt, walk.problems
    if stored.size > rebuilt.size:
        have = rebuilt.size
        end = f"the records end at leaf {have - 1}" if have else "there are no records"
        problems.add(
            f"{_leaves(have, stored.size - 1)} {'is' if stored.size - have == 1 else 'are'} "
            f"missing: the frontier counts {stored.size} leaves but {end} (the log was cut)",
            have,
        )
        return
    if stored.size < rebuilt.size:
        verb = "lies" if rebuilt.size - stored.size == 1 else "lie"
        problems.add(
            f"{_leaves(stored.size, rebuilt.size - 1)} {verb} beyond the frontier's "
            f"{stored.size} leaves (records added behind the log's back)",
            stored.size,
        )
        return
    assert walk.nodes is not None
    for mine, theirs in zip(rebuilt.nodes, stored.nodes, strict=True):
        first, last = _span(mine.level, mine.index)
        if _unknown_in(walk, first, last):
            continue
        if mine.hash != theirs.hash and (mine.level, mine.index) not in walk.mismatched:
            problems.add(
                f"the stored frontier differs from the records at {_node(mine.level, mine.index)}",
                first,
            )


def _extra_nodes(walk: _Walk, stored: Frontier | None) -> None:
    """Stored nodes the rebuilt tree does not have; those a cut tail left are explained by
    the cut (reported above)."""
    assert walk.nodes is not None
    size = walk.rebuilt.size
    cut_to = stored.size if stored is not None else size
    for level, index in walk.nodes.rest():
        if not isinstance(level, int) or not isinstance(index, int) or level < 0 or index < 0:
            walk.problems.add(f"a node is stored at level {level!r} index {index!r}, which no "
                              "tree has")  # fmt: skip
            continue
        if level > 63:
            walk.problems.add(f"a node is stored at level {level}, which no log reaches")
            continue
        first, last = _span(level, index)
        if last < cut_to and first >= size:
            continue
        walk.problems.add(f"{_node(level, index)} is stored beyond the log's {size} leaves", first)


# --- proving one leaf ----------------------------------------------------------------------


@dataclass(frozen=True)
class LeafProof:
    """Leaf ``leaf`` (its ``record``) is in the tree of ``size`` leaves with ``root``:
    anyone checks it with :func:`merkle.verify_inclusion` and the ``checkpoint`` note's
    signature (:func:`checkpoint.verify_note`) -- the size and root to trust are the note's."""

    leaf: int
    record: bytes
    size: int
    root: bytes
    inclusion: tuple[bytes, ...]
    checkpoint: str | None  # the signed note at this size (None: no signed one there)

    @property
    def leaf_hash(self) -> bytes:
        return leaf_hash(self.record)

    def to_json(self) -> dict[str, object]:
        try:
            document: object = audit_records.decode(self.record)
        except audit_records.AuditRecordError:
            document = None
        return {
            "leaf": self.leaf,
            "record": document,
            "leaf_input": self.record.decode("utf-8", "replace"),
            "leaf_hash": self.leaf_hash.hex(),
            "tree_size": self.size,
            "root_hash": self.root.hex(),
            "inclusion_proof": [h.hex() for h in self.inclusion],
            "checkpoint": self.checkpoint,
        }


def prove_leaf(ledger: Ledger, leaf: int, size: int | None = None) -> LeafProof:
    """The inclusion proof of ``leaf`` at ``size`` (default: the newest signed checkpoint),
    checked against the checkpoint's root before it is returned.

    :class:`NotCoveredError` if no signed checkpoint covers the leaf yet; ``UsageError`` for a
    leaf or size the log does not have; :class:`AuditLogError` if the stored log cannot prove
    what its checkpoint says (run :func:`verify_log`).
    """
    if leaf < 0:
        raise UsageError(f"leaf {leaf} is negative")
    have = ledger.audit_size()
    if leaf >= have:
        raise UsageError(f"leaf {leaf} is not in the log: it has {have} leaves")
    note: str | None
    if size is None:
        latest = ledger.latest_checkpoint()
        if latest is None or latest[0] <= leaf:
            newest = (
                "there is no signed checkpoint yet"
                if latest is None
                else f"the newest signed checkpoint covers leaves 0..{latest[0] - 1}"
            )
            raise NotCoveredError(
                f"leaf {leaf} is not covered by a signed checkpoint yet ({newest}): the daemon "
                "signs one within about a second of a change -- try again in a moment"
            )
        size, root, note = latest
    else:
        if not leaf < size <= have:
            raise UsageError(
                f"a proof of leaf {leaf} needs a tree size from {leaf + 1} to {have}, not {size}"
            )
        rows = [row for row in ledger.checkpoints() if row[0] == size]
        root = rows[0][1] if rows else ledger.audit_root(size)
        note = rows[0][2] if rows else None
    records = ledger.audit_records(leaf, leaf + 1)
    if not records:
        raise AuditLogError(f"leaf {leaf} has no record: run 'xbgw audit verify'")
    record = records[0][1]
    proof = ledger.audit_inclusion(leaf, size)
    try:
        if note is not None:
            stated = notes.parse(note)[0]
            if (stated.size, stated.root_hash) != (size, root):
                raise ProofError(f"the checkpoint note at size {size} states another tree")
        if root == EMPTY_ROOT and size:
            raise ProofError("the stored root is the empty tree's")
        verify_inclusion(leaf_hash(record), leaf, size, proof, root)
    except (ProofError, notes.NoteError) as exc:
        raise AuditLogError(
            f"the stored log does not prove leaf {leaf} at size {size} ({exc}): "
            "run 'xbgw audit verify'"
        ) from None
    return LeafProof(leaf, record, size, root, tuple(proof), note)
