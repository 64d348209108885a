"""The audit log's storage: leaves, perfect subtree nodes and checkpoints, in the ledger's
SQLite database.

Why in the ledger's database and not a file of its own: a committed transfer and its audit
record must never exist one without the other, across kill -9 and power loss. Appending
inside the same transaction that commits the transfer gives that for free, with the
ledger's fsync discipline (see ``Ledger._tx``). The functions here therefore take the
caller's open transaction (a ``gateway.store.Tx``: SQLite inside ``BEGIN IMMEDIATE``, or
PostgreSQL) and never commit themselves. Where several nodes share the database, an append
holds the log's lock (``gateway.store.serialise``) from reading the frontier to its commit:
one log per gateway identity, with no gap and no fork.

Tables (created by the ledger's schema):

* ``audit_records (idx, record)``: leaf ``idx`` (0, 1, 2, ... without gaps) and its canonical
  record (``gateway.audit.records``); the leaf hash is ``SHA-256(0x00 || record)``.
* ``audit_nodes (level, idx, hash)``: every perfect subtree root, written once when its last
  leaf is appended (``Frontier.append`` says which); level 0 are the leaf hashes. Any root,
  inclusion or consistency proof then needs O(log n) reads.
* ``audit_frontier``: the serialised right edge of the tree (one row), so that an append needs
  neither earlier leaves nor a scan.
* ``audit_checkpoints (size, root, note, signed_at)``: checkpoints in signed-note text. A row
  is written with its root *before* it is signed, in a durable transaction: that commit
  fsyncs the write-ahead log with every leaf before it, so a signed checkpoint never covers a
  leaf that a power loss could take back (transfers committed without fsync included).

Witnessing (``gateway.audit.witness``) keeps, beside our own log:

* ``partner_checkpoints (partner, size, root, note, seen_at)``: the newest checkpoint of each
  partner's log this gateway verified (one row per partner); the next must be consistent.
* ``witness_alarms (partner, raised_at, reason, size, root, note, acknowledged_at)``: a fork
  or rollback seen, with the checkpoint that showed it; at most one open (not acknowledged)
  per partner, and while it is open that partner's offers are refused.
* ``cosignatures (size, witness, line, at)``: partners' verified cosignatures of our own
  checkpoints (``line``: the signature line, ``at``: the time the witness states in it).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    HashAt,
    leaf_hash,
    subtree_nodes,
    subtree_root,
)
from gateway.store import Tx, serialise

#: Nodes read by one query of :func:`hash_reader` (two parameters each, far below the
#: limits of SQLite and PostgreSQL; a proof of a log of 2^63 leaves reads at most ~126).
NODES_PER_QUERY = 128

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    idx INTEGER PRIMARY KEY,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_frontier (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    frontier BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    note TEXT,
    signed_at INTEGER
);
CREATE TABLE IF NOT EXISTS partner_checkpoints (
    partner TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    seen_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS witness_alarms (
    partner TEXT NOT NULL,
    raised_at INTEGER NOT NULL,
    reason TEXT NOT NULL,
    size INTEGER NOT NULL,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    acknowledged_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS witness_alarms_open
    ON witness_alarms (partner) WHERE acknowledged_at IS NULL;
CREATE TABLE IF NOT EXISTS cosignatures (
    size INTEGER NOT NULL,
    witness TEXT NOT NULL,
    line TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (size, witness)
) WITHOUT ROWID;
"""


def frontier(db: Tx) -> Frontier:
    row = db.execute("SELECT frontier FROM audit_frontier WHERE id = 0").fetchone()
    return Frontier() if row is None else Frontier.from_bytes(bytes(row[0]))


def append(db: Tx, record: bytes) -> int:
    """Append one canonical record inside the caller's transaction; its leaf index."""
    serialise(db, "audit-log")
    edge = frontier(db)
    index = edge.size
    completed = edge.append(leaf_hash(record))
    db.execute("INSERT INTO audit_records (idx, record) VALUES (?, ?)", (index, record))
    db.executemany(
        "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)",
        [(node.level, node.index, node.hash) for node in completed],
    )
    db.execute(
        "INSERT INTO audit_frontier (id, frontier) VALUES (0, ?) "
        "ON CONFLICT (id) DO UPDATE SET frontier = excluded.frontier",
        (edge.to_bytes(),),
    )
    return index


def size(db: Tx) -> int:
    return frontier(db).size


def hash_reader(db: Tx, wanted: Sequence[tuple[int, int]] = ()) -> HashAt:
    """A ``HashAt`` over the stored nodes (the caller holds the connection's lock).

    ``wanted``: the (level, index) of the nodes the caller is about to ask for (``merkle``'s
    ``inclusion_nodes`` and the like), read up front in one query per ``NODES_PER_QUERY``;
    any other node is read when asked. Why: a proof reads one node per level of the tree,
    and one query per node made a receipt's commit proof cost ~log2(size) statements --
    more as the log grows, and a network round trip each on a shared database."""
    known: dict[tuple[int, int], bytes] = {}
    unique = list(dict.fromkeys(wanted))
    for at in range(0, len(unique), NODES_PER_QUERY):
        chunk = unique[at : at + NODES_PER_QUERY]
        where = " OR ".join(["(level = ? AND idx = ?)"] * len(chunk))
        rows = db.execute(
            f"SELECT level, idx, hash FROM audit_nodes WHERE {where}",  # noqa: S608 - constant parts only
            tuple(value for node in chunk for value in node),
        ).fetchall()
        known.update(((int(row[0]), int(row[1])), bytes(row[2])) for row in rows)

    def hash_at(level: int, index: int) -> bytes:
        found = known.get((level, index))
        if found is not None:
            return found
        row = db.execute(
            "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise LookupError(f"the audit log has no node at level {level} index {index}")
        return bytes(row[0])

    return hash_at


def root(db: Tx, tree_size: int) -> bytes:
    """The root of the first ``tree_size`` leaves."""
    if tree_size == 0:
        return EMPTY_ROOT
    return subtree_root(hash_reader(db, subtree_nodes(0, tree_size)), 0, tree_size)
